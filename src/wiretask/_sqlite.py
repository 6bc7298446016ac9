"""SQLite plumbing shared by the SQLite transport and the SQLite result backend.

* ``open_database``: a connection set up the way both want it (explicit transactions,
  usable from any thread under the caller's own locking, a busy timeout, WAL mode).
* ``use_wal``: WAL mode, waiting out the lock that switching a new file takes.
* ``SQLITE_ERRORS``: the one table that translates sqlite3's exceptions (and the file
  system's, from creating the file's directory), by SQLite result code, and
  ``must_reopen``: after which errors a connection is not to be used again.

Nothing here imports ``wiretask.transports`` or ``wiretask.results``; both import this.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from wiretask._errormap import ErrorTable, Row
from wiretask.errors import ConnectionLost, TransportError

__all__ = [
    "SQLITE_ERRORS",
    "must_reopen",
    "open_database",
    "primary_code",
    "use_wal",
]

# Primary result codes (sqlite3.h).
BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL = 5, 6, 8, 10, 11, 13, 14, 15
NOTADB = 26


def primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of a sqlite3 exception (the low byte of its
    extended code), or ``None``."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _code(code: int) -> Callable[[BaseException], bool]:
    def when(exc: BaseException) -> bool:
        return primary_code(exc) == code

    return when


def _detail(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return f"{exc} ({name})"


#: Recoverable (``ConnectionLost``) are the failures that say "the database is not
#: usable right now" rather than "this statement is wrong": the publish retry policy
#: reconnects (``must_reopen``) and tries again, within its own time budget.
SQLITE_ERRORS = ErrorTable("SQLite", (
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_BUSY: another connection held the write lock past busy_timeout",
        when=_code(BUSY)),
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_LOCKED: a conflicting lock inside this process (shared cache); it goes "
        "when that statement ends",
        when=_code(LOCKED)),
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_READONLY: the file cannot be written through this connection now (the "
        "file was moved or replaced under it, a read-only remount); a new connection "
        "sees the file as it is",
        when=_code(READONLY)),
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_IOERR: the operating system failed a read or write (a flaky disk or "
        "network file system); a new connection tries again",
        when=_code(IOERR)),
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_FULL: the disk is full; consumers deleting rows free pages for reuse "
        "(Redis's OOM is recoverable too)",
        when=_code(FULL)),
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_CANTOPEN: the file cannot be opened now (its directory is missing, "
        "renamed or unmounted), as a broker that is down",
        when=_code(CANTOPEN)),
    Row(sqlite3.OperationalError, ConnectionLost,
        "SQLITE_PROTOCOL: a race on the WAL's lock protocol between processes; the next "
        "attempt wins it",
        when=_code(PROTOCOL)),
    Row(sqlite3.DatabaseError, TransportError,
        "every other database error: the file is not a database (SQLITE_NOTADB) or is "
        "corrupt, a table is missing, a constraint failed, a statement or its use is "
        "wrong (ProgrammingError: e.g. a closed connection); the same call fails again"),
    Row(sqlite3.Error, TransportError,
        "the driver's own complaints (InterfaceError: a parameter it cannot bind): a "
        "fault of this client, not an outage"),
    Row(OSError, ConnectionLost,
        "the file's directory cannot be created now (a file in the way, a missing "
        "mount), as a broker that is down"),
), detail=_detail)

# After these the connection itself is suspect: drop it and open a new one next time.
_REOPEN = frozenset({IOERR, CANTOPEN, PROTOCOL, READONLY})


def must_reopen(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` must be closed and replaced."""
    return primary_code(exc) in _REOPEN


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode (it stays so; each connection asks once).

    Switching a new file to WAL takes an exclusive lock, and SQLite answers "database
    is locked" at once, without its busy handler, to the others opening it at that
    moment: those retry here, for up to ``timeout`` seconds, instead of failing.

    Raises:
        sqlite3.OperationalError: still locked after ``timeout``, or another failure.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if primary_code(exc) not in (BUSY, LOCKED) \
                    or time.monotonic() + delay > deadline:
                raise
        else:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def open_database(
    path: str, *, busy_timeout: float, synchronous: str = "normal",
    create_directory: bool = True,
) -> sqlite3.Connection:
    """A connection to the database file at ``path`` (created if missing, with its
    directory when ``create_directory``), in WAL mode, waiting up to ``busy_timeout``
    seconds for another connection's write lock, with ``PRAGMA synchronous`` set.

    ``isolation_level=None``: the caller issues ``BEGIN``/``COMMIT`` itself (``BEGIN
    IMMEDIATE`` for writes, so that a write takes the lock up front and never fails on
    upgrade). ``check_same_thread=False``: the caller serializes its use (a lock, or one
    connection per thread that ``close()`` may close from another).

    Raises:
        sqlite3.Error, OSError: translate them with ``SQLITE_ERRORS``.
    """
    if create_directory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        use_wal(conn, busy_timeout)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except BaseException:
        conn.close()
        raise
    return conn
