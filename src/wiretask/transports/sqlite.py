"""The embedded broker: one SQLite file shared by any number of processes.

``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's slashes), with
options in the query string or as keyword arguments (the URL wins, as for Redis: the
keywords are app-wide defaults, the URL names this broker)::

    sqlite:////var/lib/app/broker.db?visibility_timeout=60&busy_timeout=5&synchronous=normal

How it works, and what it guarantees:

* **One table of messages.** A message is a row: queue, priority, ``visible_at`` (the
  time from which it may be delivered), a lease (``owner``, ``lease``) while a consumer
  holds it, and the frame (body as a BLOB, headers and properties as JSON text). The
  file is in WAL mode, so readers never block the writer, and every connection waits up
  to ``busy_timeout`` for the write lock before giving up with ``ConnectionLost``.
* **Atomic receive.** Taking a message is one ``BEGIN IMMEDIATE`` transaction holding
  SQLite's single write lock: pick the row (``SELECT … ORDER BY priority DESC, id LIMIT
  1``), lease it (``UPDATE``) and read it (the body in place, ``blobopen``). Two
  consumers, in any processes, can never take the same row.
* **Broker-side delays.** ``not_before`` is stored as ``visible_at``; the row is
  invisible until then (``native_delay=True``, nothing is held by a worker).
* **Priorities** 0..255, higher first, FIFO (by insertion id) within a priority; the
  same order across the queues of one ``receive``.
* **Leases, not a blind visibility timeout.** A received row is leased until
  ``now + visibility_timeout``. While the delivery is unsettled, the transport's
  heartbeat thread extends the lease every ``visibility_timeout / 3``, so a task that
  runs for an hour is never handed to a second consumer (the Redis ``visibility_timeout``
  duplicate problem of Celery does not exist here). If the consumer process dies, the
  heartbeats stop and the row is delivered again, ``redelivered=True``, once the lease
  runs out. Closing a transport returns its unsettled rows at once.
* **Publish is one transaction.** ``publish`` returns only after the row is committed;
  a crash before the commit means the call never returned and the row does not exist
  (the caller saw no success, so nothing acknowledged is lost). ``publish_many`` is one
  transaction too: all rows or none. With ``synchronous=normal`` (the default; in WAL
  mode it is safe against application crashes and never corrupts the file) a power loss
  or OS crash may roll back the last commits; ``synchronous=full`` makes every commit
  survive those too, at the cost of an fsync per commit *while holding the write lock*
  (measured here: ~5-8x fewer messages/s, and under contention from several processes
  waiters can starve past ``busy_timeout``).
* **Nothing is lost.** ``dead_letter(reason)`` moves the row to a dead-letter table in
  the same transaction; a stored row that can no longer be read as a frame is moved
  there too (with its raw body) rather than blocking the queue.
* **Errors.** A busy/locked database past ``busy_timeout``, a file that cannot be opened,
  disk I/O errors and the like become ``ConnectionLost`` (recoverable: the publish retry
  policy reconnects and retries); every other sqlite3 error becomes ``TransportError``;
  both chained ``from`` the sqlite3 exception. One table says which is which, row by row
  (``wiretask._sqlite.SQLITE_ERRORS``), for this transport and the SQLite result backend.
* **Schema versioning.** The schema version is kept in a ``wiretask_schema`` table
  (component ``"transport"``) rather than in ``PRAGMA user_version``, because the same
  file may also hold the result store, which versions its own tables. A file written by
  a newer wiretask is refused rather than misread.

One connection per transport instance, guarded by a lock: SQLite admits one writer at a
time anyway, so per-thread connections would only move the queueing from a Python lock
into SQLite's busy handler (and leak connections of finished threads). A transport
inherited through ``fork()`` is reset in the child by an at-fork hook (its inherited
connection closed, a fresh one opened on first use, its own leases), so parent and child
can both use it; see ``_after_fork_in_child`` for the one case that stays unsafe.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from wiretask._ids import new_id
from wiretask._sqlite import SQLITE_ERRORS, must_reopen, open_database
from wiretask.errors import (
    DecodeError,
    ImproperlyConfigured,
    TransportError,
    ValidationError,
)
from wiretask.protocol.frame import Frame
from wiretask.transports import _sqlite_broadcast
from wiretask.transports._json import dump_json_mapping, load_json_mapping
from wiretask.transports.base import (
    BoundQueue,
    Capabilities,
    DeadLetter,
    Delivery,
    Exchange,
    Peeked,
    Prepared,
    QueueStats,
    Settlement,
    Transport,
    queue_names,
)

__all__ = ["SCHEMA_VERSION", "SQLiteDelivery", "SQLiteTransport"]

log = logging.getLogger(__name__)

#: Version of the tables this module reads and writes.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wiretask_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wiretask_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    -- 0: ready. Otherwise the time the row becomes deliverable: its not_before while
    -- scheduled, the end of its lease while a consumer holds it. Receive first resets
    -- rows whose time has passed to 0 ("promotes" them), so the hot path only ever
    -- searches the small partial index of ready rows.
    visible_at REAL NOT NULL,
    not_before REAL,
    owner TEXT,
    lease TEXT,
    redelivered INTEGER NOT NULL DEFAULT 0,
    published_at REAL NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS wiretask_messages_ready
    ON wiretask_messages (queue, priority DESC, id) WHERE visible_at = 0;
CREATE INDEX IF NOT EXISTS wiretask_messages_due
    ON wiretask_messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS wiretask_messages_owner
    ON wiretask_messages (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS wiretask_dead_letters (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    content_type TEXT,
    content_encoding TEXT,
    headers TEXT,
    properties TEXT,
    body BLOB
);
CREATE INDEX IF NOT EXISTS wiretask_dead_letters_queue
    ON wiretask_dead_letters (queue, id);
"""

_SYNCHRONOUS = ("normal", "full", "extra")

# Blocking receive polls the file: start quick (a message published right after an empty
# poll is picked up in ~5 ms), back off to a ceiling so idle consumers cost little.
_POLL_MIN = 0.005
_POLL_MAX = 0.05

# The body is not among them: a large one is read on its own (``_read_body``).
_COLUMNS = ("id, queue, redelivered, content_type, content_encoding, headers, properties, "
            "typeof(body)")


class SQLiteDelivery(Delivery):
    """A message received from an ``SQLiteTransport``, leased to it until settled."""

    def __init__(
        self, transport: SQLiteTransport, *, row_id: int, lease: str, frame: Frame,
        queue: str, redelivered: bool,
    ) -> None:
        super().__init__(transport, frame, queue, redelivered)
        self._row_id = row_id
        self._lease = lease


class SQLiteTransport(Transport):
    """A transport to the SQLite broker file at ``path``.

    Args:
        path: the database file (created if missing).
        visibility_timeout: seconds a lease lasts without a heartbeat: how long after a
            consumer dies its messages come back.
        busy_timeout: seconds to wait for the write lock before ``ConnectionLost``.
        synchronous: SQLite's ``PRAGMA synchronous`` (``"normal"``, ``"full"``,
            ``"extra"``); see the module docs for the durability trade.
        heartbeat_interval: seconds between lease extensions (default
            ``visibility_timeout / 3``).
        create_directory: create the file's parent directories on connect.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        visibility_timeout: float = 30.0,
        busy_timeout: float = 5.0,
        synchronous: str = "normal",
        heartbeat_interval: float | None = None,
        create_directory: bool = True,
    ) -> None:
        raw = os.fspath(path)
        if isinstance(raw, str) and raw.startswith("sqlite:"):
            raise ImproperlyConfigured(
                f"{raw!r} is a URL, not a file path: use SQLiteTransport.from_url() (or "
                "App(broker=...)), which reads its path and options",
                setting="broker_url",
            )
        if not isinstance(raw, str) or not raw or raw == ":memory:" or raw.startswith("file:"):
            raise ImproperlyConfigured(
                f"the SQLite broker needs a file path, got {raw!r} (an in-memory database "
                "cannot be shared; use memory:// for an in-process broker)",
                setting="broker_url",
            )
        _positive("visibility_timeout", visibility_timeout)
        _positive("busy_timeout", busy_timeout, allow_zero=True)
        if heartbeat_interval is not None:
            _positive("heartbeat_interval", heartbeat_interval)
            if heartbeat_interval >= visibility_timeout:
                raise ImproperlyConfigured(
                    f"heartbeat_interval ({heartbeat_interval:g} s) must be shorter than "
                    f"visibility_timeout ({visibility_timeout:g} s), or leases lapse",
                    setting="heartbeat_interval",
                )
        if synchronous not in _SYNCHRONOUS:
            raise ImproperlyConfigured(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}",
                setting="synchronous",
            )
        # Resolved now, without I/O, so a later chdir does not move the broker.
        self.path = os.path.abspath(raw)
        self.url = f"sqlite:///{self.path}"
        self.visibility_timeout = float(visibility_timeout)
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous
        self.heartbeat_interval = (
            float(heartbeat_interval) if heartbeat_interval is not None
            else self.visibility_timeout / 3
        )
        self.create_directory = create_directory
        self.capabilities = Capabilities(
            native_delay=True,
            priorities=True,
            priority_order="higher-first",
            max_priority=255,
            per_message_ttl=False,
            visibility_timeout=self.visibility_timeout,
            multi_process=True,
        )
        # Identifies this transport's leases; the heartbeat extends rows with this owner.
        self.owner = new_id()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._unsettled: dict[str, SQLiteDelivery] = {}
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        _INSTANCES.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteTransport:
        """Build from ``sqlite:///relative.db`` / ``sqlite:////abs.db`` plus options.

        Query options: ``visibility_timeout``, ``busy_timeout``, ``heartbeat_interval``
        (seconds), ``synchronous``, ``create_directory`` (true/false). They override
        the same keyword ``options``, which act as defaults.

        Raises:
            ImproperlyConfigured: not an sqlite URL, no path, an unknown option or a bad
                value.
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ImproperlyConfigured(f"not an sqlite:// URL: {url!r}", setting="broker_url")
        if parts.netloc:
            raise ImproperlyConfigured(
                f"sqlite URLs have no host: use sqlite:///relative.db or "
                f"sqlite:////absolute.db, got {url!r}", setting="broker_url",
            )
        # SQLAlchemy's rule: the path is what follows "sqlite:///"; a fourth slash makes
        # it absolute.
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not path:
            raise ImproperlyConfigured(
                f"sqlite URL without a file path: {url!r}", setting="broker_url"
            )
        merged: dict[str, Any] = dict(options)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            merged[key] = _parse_option(key, value)
        known = {"visibility_timeout", "busy_timeout", "heartbeat_interval", "synchronous",
                 "create_directory"}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ImproperlyConfigured(
                f"unknown sqlite transport option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})",
                setting="broker_transport_options",
            )
        return cls(path, **merged)

    def __repr__(self) -> str:
        return f"<SQLiteTransport {self.url}>"

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open a fresh connection (closing the old one), set WAL mode and create or
        check the schema. Unsettled deliveries keep their leases.

        Raises:
            ConnectionLost: the file cannot be opened or the database stays locked.
            TransportError: the file is not a wiretask database of a known version.
        """
        with self._lock:
            self._drop_connection()
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = open_database(self.path, busy_timeout=self.busy_timeout,
                                 synchronous=self.synchronous,
                                 create_directory=self.create_directory)
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc, "opening the database") from exc
        try:
            self._ensure_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, "opening the database") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='wiretask_schema'"
        ).fetchone()
        if exists:
            row = conn.execute(
                "SELECT version FROM wiretask_schema WHERE component='transport'"
            ).fetchone()
            if row is not None and row[0] == SCHEMA_VERSION:
                return
            if row is not None and row[0] > SCHEMA_VERSION:
                raise TransportError(
                    f"the broker database was written by a newer wiretask (transport schema "
                    f"{row[0]}; this version reads {SCHEMA_VERSION})", url=self.url,
                )
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO wiretask_schema (component, version) "
                "VALUES ('transport', ?)", (SCHEMA_VERSION,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _after_fork_in_child(self) -> None:
        """Make a transport inherited through ``fork()`` usable in the child.

        The inherited connection is *closed*, not merely dropped: SQLite keeps one
        lock-bookkeeping record per file per process, shared by every connection to it,
        and the inherited record claims locks the child does not hold (POSIX locks are
        not inherited). Any connection the child opens would trust that record, and the
        parent could then checkpoint and delete the WAL under it ("disk I/O error").
        Closing is safe only if no parent thread was inside SQLite with this connection
        at the moment of the fork (our lock was free); otherwise the connection is left
        alone and the child should not use this file.

        The parent's deliveries, heartbeat thread and owner id stay the parent's: the
        child gets its own owner id, or the parent's heartbeat and ``close()`` would act
        on the child's leases.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._lock.acquire(blocking=False):
                try:
                    conn.close()
                except sqlite3.Error:
                    log.debug("closing the inherited SQLite connection failed", exc_info=True)
            else:
                log.warning(
                    "fork() while a thread was using the SQLite broker %s: the child "
                    "cannot use this database safely", self.url,
                )
        self.owner = new_id()
        self._lock = threading.RLock()
        self._unsettled = {}
        self._heartbeat = None
        self._stop_heartbeat = threading.Event()

    def _connection(self) -> sqlite3.Connection:
        # Called with the lock held.
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except sqlite3.Error:
                log.debug("closing a broken SQLite connection failed", exc_info=True)

    def _translate(self, exc: sqlite3.Error | OSError, doing: str) -> TransportError:
        """``exc`` by ``SQLITE_ERRORS``, the table the SQLite result backend uses too."""
        error = SQLITE_ERRORS.translate(exc, doing, url=self.url)
        assert error is not None  # the table has a row for every sqlite3.Error and OSError
        return error

    @contextmanager
    def _session(self, doing: str, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, inside ``BEGIN IMMEDIATE … COMMIT`` if
        ``write``; sqlite3 errors are rolled back and translated."""
        with self._lock:
            conn = self._connection()
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
                if write:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                if must_reopen(exc):
                    self._drop_connection()
                raise self._translate(exc, doing) from exc
            except BaseException:
                self._rollback(conn)
                raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                # The transaction is already gone (SQLite rolls back on some errors by
                # itself); a connection in doubt is replaced.
                self._drop_connection()

    def close(self) -> None:
        """Stop the heartbeat, return unsettled deliveries to their queues at once
        (``redelivered``), and close the connection. Idempotent; if the database cannot
        be reached, the leases simply run out after ``visibility_timeout``."""
        self._stop_heartbeat.set()
        heartbeat = self._heartbeat
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join(timeout=self.busy_timeout + 1)
        with self._lock:
            self._heartbeat = None
            unsettled = list(self._unsettled.values())
        # Each delivery's own lock, then the transport's: the order ``ack`` takes them.
        # Once marked, none of them can be settled; then their rows go back at once.
        returned = [
            d for d in unsettled
            if d._give_back("returned to the queue when its transport closed", _nothing)
        ]
        with self._lock:
            if returned and self._conn is not None:
                try:
                    with self._session("returning unsettled messages", write=True) as conn:
                        conn.execute(
                            "UPDATE wiretask_messages SET owner=NULL, lease=NULL, "
                            "visible_at=0, redelivered=1 WHERE owner=?", (self.owner,),
                        )
                except TransportError:
                    log.warning(
                        "could not return %d unsettled message(s) on close; they come "
                        "back after the visibility timeout", len(returned),
                        exc_info=True,
                    )
            for delivery in unsettled:
                self._unsettled.pop(delivery._lease, None)
            self._drop_connection()

    # -- producing ----------------------------------------------------------------------

    def _declare(self, queue: str) -> None:
        """Queues need no declaration here; this connects."""
        with self._lock:
            self._connection()

    @staticmethod
    def _row(message: Prepared, now: float) -> tuple[Any, ...]:
        frame = message.frame
        return (
            message.queue, message.priority, message.due if message.due is not None else 0.0,
            message.due, now, frame.content_type, frame.content_encoding,
            dump_json_mapping("headers", frame.headers),
            dump_json_mapping("properties", frame.properties),
            bytes(frame.body),
        )

    _INSERT = (
        "INSERT INTO wiretask_messages (queue, priority, visible_at, not_before, "
        "published_at, content_type, content_encoding, headers, properties, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def _publish(self, messages: Sequence[Prepared]) -> None:
        """Store the messages in one transaction: all of them or (on any error) none;
        returns once they are committed. Every row is built before the transaction
        starts."""
        now = time.time()
        rows = [self._row(m, now) for m in messages]
        with self._session("publishing", write=True) as conn:
            if len(rows) == 1:
                conn.execute(self._INSERT, rows[0])
            else:
                conn.executemany(self._INSERT, rows)

    # -- consuming ----------------------------------------------------------------------

    def _receive(self, queues: list[str], timeout: float) -> SQLiteDelivery | None:
        """Take the best visible message of ``queues`` (highest priority, then oldest),
        polling the file until ``timeout``."""
        names, deadline = queues, time.monotonic() + timeout
        pause = _POLL_MIN
        while True:
            delivery, next_visible = self._take(names)
            if delivery is not None:
                return delivery
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(pause, remaining)
            if next_visible is not None:
                # A delayed message (or an expiring lease) becomes visible soon: wake
                # for it rather than at the next backoff step.
                wait = min(wait, max(next_visible - time.time(), 0.0))
            time.sleep(max(wait, 0.001))
            pause = min(pause * 2, _POLL_MAX)

    def _take(self, names: list[str]) -> tuple[SQLiteDelivery | None, float | None]:
        marks = ",".join("?" * len(names))
        # Built per queue and combined, so that each part is one index lookup: with
        # "queue IN (...)" SQLite cannot use its min() shortcut, and would sort every
        # ready row of the queues for "ORDER BY priority DESC, id".
        earliest = " UNION ALL ".join(
            ["SELECT MIN(visible_at) AS v FROM wiretask_messages WHERE queue=?"] * len(names)
        )
        candidates = " UNION ALL ".join(
            ["SELECT * FROM (SELECT id, priority FROM wiretask_messages "
             "INDEXED BY wiretask_messages_ready WHERE queue=? AND visible_at = 0 "
             "ORDER BY priority DESC, id LIMIT 1)"] * len(names)
        )
        while True:
            now = time.time()
            # A read first, outside any write transaction: an idle poll must not take
            # the write lock that producers need.
            with self._session("polling") as conn:
                (first,) = conn.execute(
                    f"SELECT MIN(v) FROM ({earliest})", names  # noqa: S608 - placeholders only
                ).fetchone()
            if first is None:
                return None, None
            if first > now:
                return None, float(first)
            lease = new_id()
            with self._session("receiving", write=True) as conn:
                # Promote: due delayed rows and rows whose lease lapsed (their consumer
                # died or stalled) become ready; a lapsed lease means a redelivery.
                conn.execute(
                    "UPDATE wiretask_messages SET visible_at=0, owner=NULL, lease=NULL, "  # noqa: S608
                    "redelivered = (redelivered OR lease IS NOT NULL) "
                    f"WHERE queue IN ({marks}) AND visible_at > 0 AND visible_at <= ?",
                    (*names, now),
                )
                # Pick, lease, read: three statements under the write lock (atomic as
                # one). Not one UPDATE ... RETURNING: SQLite buffers the returned row
                # whole, which for a large message costs its size again.
                picked = conn.execute(
                    f"SELECT id FROM ({candidates}) ORDER BY priority DESC, id LIMIT 1",  # noqa: S608
                    names,
                ).fetchone()
                if picked is None:
                    # Another consumer took it between the read and the write.
                    return None, None
                conn.execute(
                    "UPDATE wiretask_messages SET owner=?, lease=?, visible_at=? WHERE id=?",
                    (self.owner, lease, now + self.visibility_timeout, picked[0]),
                )
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM wiretask_messages WHERE id=?", picked  # noqa: S608
                ).fetchone()
                row_id, queue, redelivered, ctype, cenc, headers, properties, kind = row
                try:
                    frame = _stored_frame(ctype, cenc, headers, properties,
                                          _read_body(conn, row_id, kind))
                except DecodeError as exc:
                    # A row that does not read as a frame would be first again on every
                    # receive and stop the queue for good: dead-letter it, raw, with
                    # the reason, in this same transaction, and look again.
                    log.warning("dead-lettering row %d of %r: %s", row_id, queue, exc)
                    self._move_to_dead_letters(conn, row_id, f"unreadable stored frame: {exc}")
                    continue
                delivery = SQLiteDelivery(
                    self, row_id=row_id, lease=lease, frame=frame, queue=queue,
                    redelivered=bool(redelivered),
                )
                self._unsettled[lease] = delivery
                self._start_heartbeat()
                return delivery, None

    @staticmethod
    def _move_to_dead_letters(conn: sqlite3.Connection, row_id: int, reason: str) -> int:
        moved = conn.execute(
            "INSERT INTO wiretask_dead_letters (queue, reason, at, content_type, "
            "content_encoding, headers, properties, body) SELECT queue, ?, ?, content_type, "
            "content_encoding, headers, properties, body FROM wiretask_messages WHERE id=?",
            (reason, time.time(), row_id),
        ).rowcount
        conn.execute("DELETE FROM wiretask_messages WHERE id=?", (row_id,))
        return moved

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        held = cast(SQLiteDelivery, delivery)
        verb = how.replace("_", "-")
        with self._lock:
            with self._session(f"settling a delivery ({verb})", write=True) as conn:
                # Every statement matches the lease too: if our lease lapsed and another
                # consumer holds the row now, we must not touch its delivery.
                owned = conn.execute(
                    "SELECT 1 FROM wiretask_messages WHERE id=? AND lease=?",
                    (held._row_id, held._lease),
                ).fetchone()
                if owned is not None:
                    if how in ("ack", "reject"):
                        conn.execute(
                            "DELETE FROM wiretask_messages WHERE id=?", (held._row_id,)
                        )
                    elif how == "requeue":
                        conn.execute(
                            "UPDATE wiretask_messages SET owner=NULL, lease=NULL, "
                            "visible_at=0, redelivered=1 WHERE id=?", (held._row_id,),
                        )
                    else:
                        self._move_to_dead_letters(conn, held._row_id, reason)
            self._unsettled.pop(held._lease, None)
            if owned is None:
                held._settled = "lost its lease"
                raise TransportError(
                    f"cannot {verb}: the lease on this delivery lapsed (no heartbeat for "
                    f"{self.visibility_timeout:g} s) and the message was or will be "
                    "delivered again", url=self.url,
                )

    # -- leases -------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        # Called with the lock held; ``_beat`` clears ``_heartbeat`` under the same lock
        # when it exits, so a thread is never counted on after it decided to stop.
        if self._heartbeat is None:
            self._stop_heartbeat = threading.Event()
            self._heartbeat = threading.Thread(
                target=self._beat, args=(self._stop_heartbeat,),
                name=f"wiretask-sqlite-heartbeat-{self.owner[:8]}", daemon=True,
            )
            self._heartbeat.start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            with self._lock:
                if not self._unsettled:
                    # Nothing held: end the thread (the next receive starts a new one)
                    # rather than keep a thread and the transport alive for nothing.
                    if self._heartbeat is threading.current_thread():
                        self._heartbeat = None
                    return
                self.extend_leases()

    def extend_leases(self) -> int:
        """Extend the leases of this transport's unsettled deliveries to
        ``now + visibility_timeout``; return how many rows were extended. The heartbeat
        thread calls this; a failure is logged and retried at the next beat."""
        with self._lock:
            if not self._unsettled or self._conn is None:
                return 0
            try:
                with self._session("extending leases", write=True) as conn:
                    return conn.execute(
                        "UPDATE wiretask_messages SET visible_at=? WHERE owner=? "
                        "AND lease IS NOT NULL",
                        (time.time() + self.visibility_timeout, self.owner),
                    ).rowcount
            except TransportError:
                log.warning("could not extend SQLite leases; retrying at the next beat",
                            exc_info=True)
                return 0

    # -- inspecting and housekeeping ----------------------------------------------------

    # A row is "waiting" (counted, purged, peeked) unless a live lease holds it.
    _WAITING = "queue=? AND (owner IS NULL OR visible_at <= ?)"

    def size(self, queue: str) -> int:
        queue_names([queue])
        with self._session("counting") as conn:
            (count,) = conn.execute(
                f"SELECT COUNT(*) FROM wiretask_messages WHERE {self._WAITING}",  # noqa: S608
                (queue, time.time()),
            ).fetchone()
        return int(count)

    def purge(self, queue: str) -> int:
        queue_names([queue])
        with self._session("purging", write=True) as conn:
            return conn.execute(
                f"DELETE FROM wiretask_messages WHERE {self._WAITING}",  # noqa: S608
                (queue, time.time()),
            ).rowcount

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        queue_names([queue])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", f"must be an int >= 0, got {limit!r}")
        now = time.time()
        with self._session("peeking") as conn:
            rows = conn.execute(
                "SELECT visible_at > ? AS scheduled, not_before, content_type, "  # noqa: S608
                "content_encoding, headers, properties, body FROM wiretask_messages "
                f"WHERE {self._WAITING} ORDER BY scheduled, "
                "CASE WHEN visible_at > ? THEN visible_at END, priority DESC, id LIMIT ?",
                (now, queue, now, now, limit),
            ).fetchall()
        peeked = []
        for scheduled, not_before, ctype, cenc, headers, properties, body in rows:
            try:
                frame = _stored_frame(ctype, cenc, headers, properties, body)
            except DecodeError:
                continue  # receive dead-letters it; there is no frame to show
            peeked.append(Peeked(
                frame=frame, queue=queue, state="scheduled" if scheduled else "ready",
                not_before=None if not_before is None
                else datetime.fromtimestamp(not_before, UTC),
            ))
        return peeked

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        queue_names([queue])
        with self._session("reading dead letters") as conn:
            rows = conn.execute(
                "SELECT reason, at, content_type, content_encoding, headers, properties, body "
                "FROM wiretask_dead_letters WHERE queue=? ORDER BY id", (queue,),
            ).fetchall()
        letters = []
        for reason, at, ctype, cenc, headers, properties, body in rows:
            try:
                frame: Frame | None = _stored_frame(ctype, cenc, headers, properties, body)
            except DecodeError:
                frame = None
            raw = None
            if frame is None and body is not None:
                raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) \
                    else bytes(body) if isinstance(body, bytes | memoryview) \
                    else str(body).encode()
            letters.append(DeadLetter(queue=queue, reason=reason, frame=frame, raw=raw, at=at))
        return letters

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """``QueueStatistics``: ready, scheduled (and the next due time), in flight and
        dead, exact, each queue in one statement (one snapshot of the file), every part
        an index search (``_STATS``): a queue of a million rows reads in tens of
        milliseconds, not seconds (``bench/queue_stats.py``).

        ``oldest_ready_at`` is the oldest ``ready_at`` (the later of ``published_at``
        and ``not_before``) among the head of each priority lane (the row the next
        receive of that priority takes), the due rows not promoted yet (the first by
        due time) and rows whose lease lapsed. In a FIFO lane the head is the oldest
        row; a delayed row promoted to the ready index keeps its place by id, ahead of
        rows published after it but before it fell due, so while it waits at the head
        the lane reads as young as that row. An exact minimum over every ready row
        would need an index on the ready time, which would cost every publish and
        receive an index update.

        The broker keeps no counters (``published``, ``delivered``, ``acked``,
        ``dead_lettered`` are ``None``): one would add a write to every publish and
        receive transaction.
        """
        names = queue_names(queues)
        found: list[QueueStats] = []
        with self._session("reading queue statistics") as conn:
            for name in names:
                now = time.time()
                (ready, later, in_flight, next_due, heads, due_head, lapsed,
                 dead) = conn.execute(_STATS, (name, now)).fetchone()
                starts = [t for t in (heads, due_head, lapsed) if t is not None]
                found.append(QueueStats(
                    queue=name, at=now, ready=ready, scheduled=later - in_flight,
                    next_due=next_due, in_flight=in_flight, dead=dead,
                    oldest_ready_at=min(starts) if starts and ready else None,
                ))
        return found

    # -- broadcast (``base.Broadcast``; the table and the polling: _sqlite_broadcast) ---

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        """One row in ``wiretask_broadcast``, read by every inbox listening now."""
        _sqlite_broadcast.broadcast(self, exchange, frame, routing_key)

    def listen(self, exchange: Exchange, queue: BoundQueue) -> _sqlite_broadcast.SQLiteInbox:
        """A cursor into ``wiretask_broadcast`` that polls for rows routed to ``queue``."""
        return _sqlite_broadcast.listen(self, exchange, queue)


#: ``SQLiteTransport.queue_stats``: one statement per queue (one snapshot), each part one
#: index search. ?1 is the queue, ?2 the time of the reading. A row is ready when its
#: ``visible_at`` has passed (0: promoted or fresh; else a due delayed row, or a lapsed
#: lease, that the next receive promotes), later otherwise: in flight if a consumer owns
#: it, else scheduled. The ready count and the later count are ranges of the covering
#: ``(queue, visible_at)`` index; the in-flight rows are found through the small ``owner``
#: index; ``lanes`` walks the distinct priorities of the ready index (one search each)
#: to read the head of each priority lane, the row the next receive of that priority
#: takes.

_STATS = """
WITH RECURSIVE lanes(p) AS (
    SELECT MAX(priority) FROM wiretask_messages INDEXED BY wiretask_messages_ready
    WHERE queue = ?1 AND visible_at = 0
    UNION ALL
    SELECT (SELECT MAX(priority) FROM wiretask_messages INDEXED BY wiretask_messages_ready
            WHERE queue = ?1 AND visible_at = 0 AND priority < lanes.p)
    FROM lanes WHERE lanes.p IS NOT NULL
)
SELECT
    (SELECT COUNT(*) FROM wiretask_messages INDEXED BY wiretask_messages_due
     WHERE queue = ?1 AND visible_at <= ?2),
    (SELECT COUNT(*) FROM wiretask_messages INDEXED BY wiretask_messages_due
     WHERE queue = ?1 AND visible_at > ?2),
    (SELECT COUNT(*) FROM wiretask_messages INDEXED BY wiretask_messages_owner
     WHERE owner IS NOT NULL AND queue = ?1 AND visible_at > ?2),
    (SELECT visible_at FROM wiretask_messages INDEXED BY wiretask_messages_due
     WHERE queue = ?1 AND visible_at > ?2 AND owner IS NULL ORDER BY visible_at LIMIT 1),
    (SELECT MIN((SELECT MAX(published_at, COALESCE(not_before, 0))
                 FROM wiretask_messages INDEXED BY wiretask_messages_ready
                 WHERE queue = ?1 AND visible_at = 0 AND priority = lanes.p
                 ORDER BY id LIMIT 1))
     FROM lanes WHERE lanes.p IS NOT NULL),
    (SELECT MAX(published_at, COALESCE(not_before, 0))
     FROM wiretask_messages INDEXED BY wiretask_messages_due
     WHERE queue = ?1 AND visible_at > 0 AND visible_at <= ?2 AND owner IS NULL
     ORDER BY visible_at LIMIT 1),
    (SELECT MIN(MAX(published_at, COALESCE(not_before, 0)))
     FROM wiretask_messages INDEXED BY wiretask_messages_owner
     WHERE owner IS NOT NULL AND queue = ?1 AND visible_at <= ?2),
    (SELECT COUNT(*) FROM wiretask_dead_letters WHERE queue = ?1)
"""


def _read_body(conn: sqlite3.Connection, row_id: int, kind: str) -> object:
    """The body of row ``row_id``: a BLOB read in place (``blobopen``), into exactly one
    copy. ``UPDATE ... RETURNING body`` of a large row costs six times its size (SQLite
    buffers the returned row, rebuilds the record, copies the value twice), which is
    the worker's memory bound (spec §9); anything but a BLOB (a wrong writer's TEXT) is
    read as it is, for the caller to dead-letter."""
    if kind == "blob":
        with conn.blobopen("wiretask_messages", "body", row_id, readonly=True) as blob:
            return blob.read()
    (body,) = conn.execute("SELECT body FROM wiretask_messages WHERE id=?", (row_id,)).fetchone()
    return body


def _stored_frame(
    content_type: object, content_encoding: object, headers: object, properties: object,
    body: object,
) -> Frame:
    """The frame a ``wiretask_messages`` row holds.

    Raises:
        DecodeError: the row does not hold one: a body that is not a BLOB (stored as
            TEXT by another writer), a label that is not text, or headers or properties
            that are not a JSON object (whatever else they are, however deeply nested).
    """
    if not isinstance(body, bytes):
        raise DecodeError("body", f"stored as {type(body).__name__}, not as a BLOB")
    if not isinstance(content_type, str):
        raise DecodeError("content_type", f"stored as {type(content_type).__name__}, not text")
    if not isinstance(content_encoding, str):
        raise DecodeError("content_encoding",
                          f"stored as {type(content_encoding).__name__}, not text")
    for field, text in (("headers", headers), ("properties", properties)):
        if not isinstance(text, str | bytes):
            raise DecodeError(field, f"stored as {type(text).__name__}, not as JSON text")
    return Frame(
        body=body, content_type=content_type, content_encoding=content_encoding,
        headers=load_json_mapping("headers", cast(str, headers)),
        properties=load_json_mapping("properties", cast(str, properties)),
    )


# Every live transport, so that a fork can reset the copies the child inherits.
_INSTANCES: weakref.WeakSet[SQLiteTransport] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for transport in list(_INSTANCES):
        transport._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork()
    os.register_at_fork(after_in_child=_reset_after_fork)


def _nothing() -> None:
    """What ``close()`` does per delivery under its lock: the rows go back in one
    statement afterwards."""


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
        value
    ) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ImproperlyConfigured(
            f"{name} must be a finite number {bound} (seconds), got {value!r}", setting=name
        )


def _parse_option(key: str, value: str) -> Any:
    if key in ("visibility_timeout", "busy_timeout", "heartbeat_interval"):
        try:
            return float(value)
        except ValueError:
            raise ImproperlyConfigured(
                f"{key} must be a number of seconds, got {value!r}", setting=key
            ) from None
    if key == "create_directory":
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ImproperlyConfigured(f"{key} must be true or false, got {value!r}", setting=key)
    return value
