"""The SQLite plumbing (``wiretask._sqlite``): connection set-up, WAL, and the one error
table that the SQLite transport and the SQLite result backend both translate with, each
row tested: through both modules' public API where SQLite can be made to fail that way
for real, on the table where it cannot (LOCKED, READONLY in WAL mode, IOERR, FULL,
PROTOCOL, driver misuse)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wiretask._errormap import Row
from wiretask._sqlite import SQLITE_ERRORS, must_reopen, open_database, use_wal
from wiretask.errors import ConnectionLost, TransportError
from wiretask.protocol.frame import Frame, Route
from wiretask.protocol.states import make_meta
from wiretask.results.sqlite import SQLiteBackend
from wiretask.transports.sqlite import SQLiteTransport


def row(prefix: str) -> Row:
    """The row of ``SQLITE_ERRORS`` whose reason starts with ``prefix``."""
    (found,) = [r for r in SQLITE_ERRORS.rows if r.why.startswith(prefix)]
    return found


def sqlite_error(kind: type[sqlite3.Error], code: int | None, name: str) -> sqlite3.Error:
    """An exception as sqlite3 raises it for result ``code`` (an extended code keeps
    its primary code in the low byte)."""
    exc = kind("simulated failure")
    if code is not None:
        vars(exc).update(sqlite_errorcode=code, sqlite_errorname=name)
    return exc


OP = sqlite3.OperationalError

#: One sample per row, in the table's order, and what it becomes.
SAMPLES: list[tuple[BaseException, type[TransportError], str]] = [
    (sqlite_error(OP, 5, "SQLITE_BUSY"), ConnectionLost, "SQLITE_BUSY"),
    (sqlite_error(OP, 6 | (1 << 8), "SQLITE_LOCKED_SHAREDCACHE"), ConnectionLost,
     "SQLITE_LOCKED"),
    (sqlite_error(OP, 8 | (4 << 8), "SQLITE_READONLY_DBMOVED"), ConnectionLost,
     "SQLITE_READONLY"),
    (sqlite_error(OP, 10 | (3 << 8), "SQLITE_IOERR_WRITE"), ConnectionLost, "SQLITE_IOERR"),
    (sqlite_error(OP, 13, "SQLITE_FULL"), ConnectionLost, "SQLITE_FULL"),
    (sqlite_error(OP, 14, "SQLITE_CANTOPEN"), ConnectionLost, "SQLITE_CANTOPEN"),
    (sqlite_error(OP, 15, "SQLITE_PROTOCOL"), ConnectionLost, "SQLITE_PROTOCOL"),
    (sqlite_error(sqlite3.DatabaseError, 26, "SQLITE_NOTADB"), TransportError, "every other"),
    (sqlite_error(sqlite3.InterfaceError, None, ""), TransportError, "the driver's own"),
    (FileExistsError(17, "File exists"), ConnectionLost, "the file's directory"),
]


def test_every_row_has_a_sample_and_a_reason() -> None:
    assert [row(prefix) for _, _, prefix in SAMPLES] == list(SQLITE_ERRORS.rows)
    assert all(r.why for r in SQLITE_ERRORS.rows)


@pytest.mark.parametrize(("exc", "error", "prefix"), SAMPLES,
                         ids=[prefix.split(":")[0] for _, _, prefix in SAMPLES])
def test_each_row_translates_its_errors(exc: BaseException, error: type[TransportError],
                                        prefix: str) -> None:
    assert SQLITE_ERRORS.row_for(exc) is row(prefix)
    translated = SQLITE_ERRORS.translate(exc, "publishing", url="sqlite:///x.db")
    assert type(translated) is error
    assert translated.recoverable is (error is ConnectionLost)
    assert str(translated).startswith("SQLite publishing failed: ")
    assert str(translated).endswith("[sqlite:///x.db]")
    name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    assert f"({name})" in str(translated)


def test_other_operational_errors_are_not_recoverable() -> None:
    exc = sqlite_error(OP, 1, "SQLITE_ERROR")  # "no such table", a syntax error, ...
    assert SQLITE_ERRORS.row_for(exc) is row("every other")
    assert sqlite3.ProgrammingError.__mro__[1] is sqlite3.DatabaseError  # same row


def test_connections_are_reopened_after_the_errors_that_make_them_suspect() -> None:
    reopen = {"SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL"}
    for exc, _, prefix in SAMPLES:
        assert must_reopen(exc) is (prefix in reopen), prefix


# -- the shared connection set-up --------------------------------------------------------


def test_open_database_sets_wal_synchronous_and_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.db"
    conn = open_database(str(path), busy_timeout=1, synchronous="full")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.isolation_level is None  # transactions are the caller's
    finally:
        conn.close()
    with pytest.raises(sqlite3.OperationalError):
        open_database(str(tmp_path / "missing" / "x.db"), busy_timeout=1,
                      create_directory=False)


def test_switching_to_wal_waits_for_a_lock_sqlite_would_not_wait_for(tmp_path: Path) -> None:
    """Whoever opens a new database while another connection switches it to WAL is told
    "database is locked" at once, without SQLite's busy handler (many workers starting
    on one new file): ``use_wal`` retries until its timeout instead."""
    path = tmp_path / "wal.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            use_wal(conn, 0.05)  # gives up after its timeout
        release = threading.Timer(0.2, holder.execute, ("COMMIT",))
        release.start()
        started = time.monotonic()
        use_wal(conn, 5)
        assert 0.15 < time.monotonic() - started < 4
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        release.join()
    finally:
        conn.close()
        holder.close()


# -- every row SQLite can produce, through both modules ---------------------------------


class Target:
    """The broker or the result backend on one database file, by its public API."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.module: SQLiteTransport | SQLiteBackend | None = None

    def open(self) -> None:
        if self.kind == "broker":
            self.module = SQLiteTransport(self.path, busy_timeout=0.05)
        else:
            self.module = SQLiteBackend(f"sqlite:///{self.path}", busy_timeout=0.05)

    def write(self) -> None:
        if isinstance(self.module, SQLiteTransport):
            self.module.publish(Frame(body=b"x", content_type="application/json",
                                      content_encoding="utf-8", headers={"id": "1"}),
                                Route("q"))
        else:
            assert self.module is not None
            self.module.store("t", make_meta("t", "PROGRESS", 1))

    def close(self) -> None:
        if self.module is not None:
            self.module.close()


@pytest.fixture(params=["broker", "backend"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    made = Target(request.param, tmp_path / "db" / "x.db")
    made.open()
    yield made
    made.close()


def _busy(target: Target) -> Callable[[], None]:
    target.write()  # the file and its tables exist
    locker = sqlite3.connect(target.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")

    def undo() -> None:
        locker.execute("ROLLBACK")
        locker.close()

    return undo


def _cantopen(target: Target) -> Callable[[], None]:
    target.path.mkdir(parents=True)  # a directory where the file should be
    return target.path.rmdir


def _not_a_directory(target: Target) -> Callable[[], None]:
    target.path.parent.write_text("in the way")  # a file where the directory should be
    return target.path.parent.unlink


def _not_a_database(target: Target) -> Callable[[], None]:
    target.path.parent.mkdir(parents=True)
    target.path.write_bytes(b"not an sqlite database, just some text" * 100)
    return target.path.unlink


def _missing_table(target: Target) -> Callable[[], None]:
    target.write()
    with sqlite3.connect(target.path) as conn:
        conn.execute("DROP TABLE wiretask_messages" if target.kind == "broker"
                     else "DROP TABLE wiretask_results")
    conn.close()
    return lambda: None


REAL: list[tuple[Callable[[Target], Callable[[], None]], type[TransportError], str, str]] = [
    (_busy, ConnectionLost, "SQLITE_BUSY", "locked"),
    (_cantopen, ConnectionLost, "SQLITE_CANTOPEN", "SQLITE_CANTOPEN"),
    (_not_a_directory, ConnectionLost, "the file's directory", "FileExistsError"),
    (_not_a_database, TransportError, "every other", "SQLITE_NOTADB"),
    (_missing_table, TransportError, "every other", "no such table"),
]


@pytest.mark.parametrize(("make", "error", "prefix", "text"), REAL,
                         ids=[make.__name__.strip("_") for make, *_ in REAL])
def test_real_failures_translate_the_same_in_the_broker_and_the_backend(
        target: Target, make: Callable[[Target], Callable[[], None]],
        error: type[TransportError], prefix: str, text: str) -> None:
    undo = make(target)
    try:
        with pytest.raises(TransportError) as info:
            target.write()
    finally:
        undo()
    cause = info.value.__cause__
    assert type(info.value) is error and cause is not None
    assert SQLITE_ERRORS.row_for(cause) is row(prefix)
    assert text in str(info.value)
    assert info.value.url is not None and str(target.path) in info.value.url
    if error is ConnectionLost:
        target.write()  # the same object works once the cause is gone: recoverable


def test_the_backend_replaces_a_connection_after_an_error_that_makes_it_suspect(
        tmp_path: Path) -> None:
    # SQLITE_IOERR cannot be produced on demand: raised inside the backend's boundary.
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        backend.store("t", make_meta("t", "PROGRESS", 1))
        first = backend._conn()
        for exc, kept in [(sqlite_error(OP, 5, "SQLITE_BUSY"), True),
                          (sqlite_error(OP, 10 | (3 << 8), "SQLITE_IOERR_WRITE"), False)]:
            with pytest.raises(ConnectionLost), backend._errors("get"):
                raise exc
            assert (backend._conn() is first) is kept
        assert backend.get("t") == make_meta("t", "PROGRESS", 1)  # on a new connection
        with pytest.raises(sqlite3.ProgrammingError):
            first.execute("SELECT 1")  # the suspect one was closed
    finally:
        backend.close()
