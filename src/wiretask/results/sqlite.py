"""The SQLite result backend: ``sqlite:///relative.db`` and ``sqlite:////absolute.db``.

Nothing to install, and several processes can share one file: an app in one process
reads and streams what a worker in another stored. The file may be the one the SQLite
broker uses; this backend's tables are its own (``wiretask_result*``).

Layout:

* ``wiretask_results``: one row per task (``task_id`` primary key) with the serialized
  meta, its content type, the status (so the ready-state rule needs no decoding), the
  expiry time and the ``seq`` of the event that wrote it.
* ``wiretask_result_events``: append-only, one row per applied store, numbered by an
  ``AUTOINCREMENT`` ``seq`` that never goes back. A subscription remembers the last
  ``seq`` it delivered and reads newer rows of its task, so a subscriber in another
  process sees every state change in order and none twice.
* ``wiretask_result_groups``: saved groups (``GroupResult.save``), one row per group
  id with the serialized ``{"result": <tuple>}`` and its expiry time.

A store is one ``BEGIN IMMEDIATE`` transaction (read the current state, apply the
ready-state rule, append the event, upsert the row), so concurrent writers in several
processes cannot both win. The database runs in WAL mode with a busy timeout, so
readers never block the writer.

Subscriptions poll with a short backoff (5 ms doubling to 100 ms, reset by every
event): no busy spin, and a state change is seen within about 100 ms in another
process. Subscribers in the *same* process are woken at once by the store itself.

Housekeeping (at most every few seconds, piggybacked on stores): expired results are
deleted, and so are events older than ``event_retention`` seconds and events of tasks
that have been ready for a few seconds. A subscription that fell behind a pruning still
receives the task's current state from the results row, so it never misses the final
one.

sqlite3 errors are translated by ``wiretask._sqlite.SQLITE_ERRORS``, the table the SQLite
transport uses too: a busy or locked database, a file that cannot be opened or written
now, a full disk become ``ConnectionLost`` (recoverable), anything else
``TransportError``; both chained with ``from``. After the errors that make a connection
suspect (``must_reopen``) the thread's connection is closed and the next call opens a
new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from wiretask._sqlite import SQLITE_ERRORS, must_reopen, open_database
from wiretask._url import mask_url
from wiretask.errors import DecodeError, ImproperlyConfigured, TransportError
from wiretask.protocol import states
from wiretask.results.aio import AsyncResultBackend, AsyncSubscription
from wiretask.results.base import (
    DEFAULT_EXPIRES,
    MetaCodec,
    ResultBackend,
    Subscription,
    check_meta,
    resolve_expires,
)

if TYPE_CHECKING:
    from wiretask.codecs import Registry

__all__ = [
    "AsyncSQLiteBackend",
    "AsyncSQLiteSubscription",
    "SQLiteBackend",
    "SQLiteSubscription",
    "path_from_url",
]

#: Poll backoff of a subscription: first wait, and the cap it doubles up to.
POLL_MIN: Final = 0.005
POLL_MAX: Final = 0.1
#: Housekeeping runs at most this often per backend instance.
PRUNE_INTERVAL: Final = 5.0
#: Events of a task that is ready are kept this long (a live subscriber reads them
#: within ``POLL_MAX``); older ones of any task after ``event_retention``.
READY_EVENT_GRACE: Final = 5.0
DEFAULT_EVENT_RETENTION: Final = 300.0

_READY: Final = tuple(sorted(states.READY_STATES))

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS wiretask_results (
        task_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        meta BLOB NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        expires_at REAL,
        seq INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS wiretask_results_expires
        ON wiretask_results (expires_at) WHERE expires_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS wiretask_result_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        meta BLOB NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS wiretask_result_events_task
        ON wiretask_result_events (task_id, seq)""",
    """CREATE INDEX IF NOT EXISTS wiretask_result_events_created
        ON wiretask_result_events (created_at)""",
    # Saved groups (GroupResult.save): one row per group id.
    """CREATE TABLE IF NOT EXISTS wiretask_result_groups (
        group_id TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        expires_at REAL
    )""",
)


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite://`` URL (SQLAlchemy's slashes, as the broker).

    Raises:
        ImproperlyConfigured: not a ``sqlite://`` URL, no path, or ``:memory:`` (a
            private in-memory database cannot be shared; use ``memory://``).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ImproperlyConfigured(
            f"expected sqlite:///relative.db or sqlite:////absolute.db, got {url!r}",
            setting="result_backend",
        )
    path = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path or path == ":memory:":
        raise ImproperlyConfigured(
            f"the SQLite result backend needs a file path, got {url!r} "
            "(use memory:// for an in-process store)",
            setting="result_backend",
        )
    return path


class _Notifier:
    """Wakes same-process subscribers of one database file when a store commits: the
    threads waiting on ``cond``, and the ``watchers`` (asyncio subscriptions, which wake
    their loops)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0
        self.watchers: set[Callable[[], None]] = set()

    def notify(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()
            watchers = list(self.watchers)
        for watcher in watchers:
            watcher()

    def wait(self, generation: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.generation != generation, timeout)


_notifiers_lock = threading.Lock()
_notifiers: weakref.WeakValueDictionary[str, _Notifier] = weakref.WeakValueDictionary()


def _notifier_for(path: str) -> _Notifier:
    key = os.path.realpath(path)
    with _notifiers_lock:
        notifier = _notifiers.get(key)
        if notifier is None:
            notifier = _Notifier()
            _notifiers[key] = notifier
        return notifier


class _Connection:
    """A thread's connection. Held by a ``threading.local`` (closed when its thread
    ends and it is collected) and weakly by the backend (closed by ``close()``)."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class SQLiteBackend(ResultBackend):
    """Results in an SQLite file, shared by every process that opens it.

    Args:
        url: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.
        serializer: the result serializer (``json``).
        expires: ``result_expires`` in seconds (default one day; ``None`` = never).
        registry: the codec registry (default: ``wiretask.codecs.default_registry()``).
        compression: compress stored values as Celery 5.7's ``result_compression``.
        busy_timeout: seconds a statement waits for another process's write lock.
        event_retention: seconds state-change events are kept for subscribers.
    """

    def __init__(
        self,
        url: str,
        *,
        serializer: str = "json",
        expires: float | timedelta | None = DEFAULT_EXPIRES,
        registry: Registry | None = None,
        compression: str | None = None,
        busy_timeout: float = 5.0,
        event_retention: float = DEFAULT_EVENT_RETENTION,
    ) -> None:
        self.path = path_from_url(url)
        self.url = mask_url(url)
        self.expires = resolve_expires(expires)
        if registry is None:
            from wiretask.codecs import default_registry  # noqa: PLC0415 - avoid a cycle

            registry = default_registry()
        self.codec = MetaCodec(registry, serializer, compression)
        self.busy_timeout = float(busy_timeout)
        self.event_retention = float(event_retention)
        self._notifier = _notifier_for(self.path)
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._schema_ready = False
        self._closed = False
        self._last_prune = 0.0

    # -- connections ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate sqlite3 (and file system) errors raised inside the block by
        ``SQLITE_ERRORS``; drop this thread's connection after one that makes it
        suspect."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            if must_reopen(exc):
                self._drop_thread_connection()
            error = SQLITE_ERRORS.translate(exc, action, url=self.url)
            assert error is not None  # the table has a row for every sqlite3.Error, OSError
            raise error from exc

    def _drop_thread_connection(self) -> None:
        held: _Connection | None = getattr(self._local, "held", None)
        if held is None:
            return
        self._local.held = None
        with self._lock:
            self._connections.discard(held)
        with contextlib.suppress(sqlite3.Error):
            held.conn.close()

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise TransportError("the result backend is closed", url=self.url)
        held: _Connection | None = getattr(self._local, "held", None)
        if held is not None:
            return held.conn
        with self._errors("connect"):
            # One connection per thread; check_same_thread=False only so that close()
            # may close it.
            conn = open_database(self.path, busy_timeout=self.busy_timeout)
            try:
                self._ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
        held = _Connection(conn)
        self._local.held = held
        with self._lock:
            self._connections.add(held)
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if self._schema_ready:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._schema_ready = True

    @contextlib.contextmanager
    def _transaction(self, action: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` for writes (take the write lock before
        reading, so read-check-write is atomic across processes), ``BEGIN`` for reads
        (one consistent snapshot for several SELECTs)."""
        with self._errors(action):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- the interface --------------------------------------------------------------------

    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        status = check_meta(task_id, meta)
        encoded = self.codec.encode(meta)
        now = time.time()
        expires_at = None if self.expires is None else now + self.expires
        with self._transaction("store", write=True) as conn:
            row = conn.execute(
                "SELECT status, expires_at FROM wiretask_results WHERE task_id = ?", (task_id,)
            ).fetchone()
            live = row is not None and (row[1] is None or row[1] > now)
            if live and not states.may_follow(row[0], status):
                return
            cursor = conn.execute(
                "INSERT INTO wiretask_result_events"
                " (task_id, meta, content_type, content_encoding, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (task_id, encoded.data, encoded.content_type, encoded.content_encoding, now),
            )
            conn.execute(
                "INSERT INTO wiretask_results"
                " (task_id, status, meta, content_type, content_encoding, expires_at, seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET status = excluded.status,"
                " meta = excluded.meta, content_type = excluded.content_type,"
                " content_encoding = excluded.content_encoding,"
                " expires_at = excluded.expires_at, seq = excluded.seq",
                (task_id, status, encoded.data, encoded.content_type,
                 encoded.content_encoding, expires_at, cursor.lastrowid),
            )
            self._maybe_prune(conn, now)
        self._notifier.notify()

    def _maybe_prune(self, conn: sqlite3.Connection, now: float) -> None:
        """Housekeeping inside a write transaction, at most every ``PRUNE_INTERVAL``."""
        if now - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = now
        conn.execute(
            "DELETE FROM wiretask_result_events WHERE task_id IN (SELECT task_id FROM"
            " wiretask_results WHERE expires_at IS NOT NULL AND expires_at <= ?)", (now,),
        )
        conn.execute(
            "DELETE FROM wiretask_results WHERE expires_at IS NOT NULL AND expires_at <= ?",
            (now,),
        )
        conn.execute(
            "DELETE FROM wiretask_result_groups WHERE expires_at IS NOT NULL"
            " AND expires_at <= ?", (now,),
        )
        conn.execute(
            "DELETE FROM wiretask_result_events WHERE created_at < ?",
            (now - self.event_retention,),
        )
        conn.execute(
            "DELETE FROM wiretask_result_events WHERE created_at < ? AND task_id IN"
            " (SELECT task_id FROM wiretask_results WHERE status IN (?, ?, ?))",
            (now - READY_EVENT_GRACE, *_READY),
        )

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._errors("get"):
            row = self._conn().execute(
                "SELECT meta, content_type, content_encoding FROM wiretask_results"
                " WHERE task_id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (task_id, time.time()),
            ).fetchone()
        if row is None:
            return None
        return self.codec.decode(row[0], row[1], row[2])

    def forget(self, task_id: str) -> None:
        with self._transaction("forget", write=True) as conn:
            conn.execute("DELETE FROM wiretask_results WHERE task_id = ?", (task_id,))
            conn.execute("DELETE FROM wiretask_result_events WHERE task_id = ?", (task_id,))

    # -- groups (GroupStore) -----------------------------------------------------------

    def save_group(self, group_id: str, value: Mapping[str, Any]) -> None:
        encoded = self.codec.encode_value(dict(value))
        expires_at = None if self.expires is None else time.time() + self.expires
        with self._transaction("save group", write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO wiretask_result_groups"
                " (group_id, value, content_type, content_encoding, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (group_id, encoded.data, encoded.content_type, encoded.content_encoding,
                 expires_at),
            )

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        with self._errors("restore group"):
            row = self._conn().execute(
                "SELECT value, content_type, content_encoding FROM wiretask_result_groups"
                " WHERE group_id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (group_id, time.time()),
            ).fetchone()
        if row is None:
            return None
        value = self.codec.decode_value(row[0], row[1], row[2])
        if not isinstance(value, dict):
            raise DecodeError("group", f"a saved group must be a mapping, got {value!r:.100}")
        return value

    def delete_group(self, group_id: str) -> None:
        with self._transaction("delete group", write=True) as conn:
            conn.execute("DELETE FROM wiretask_result_groups WHERE group_id = ?", (group_id,))

    def subscribe(self, task_id: str) -> SQLiteSubscription:
        with self._transaction("subscribe", write=False) as conn:
            row = conn.execute(
                "SELECT meta, content_type, content_encoding, seq FROM wiretask_results"
                " WHERE task_id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (task_id, time.time()),
            ).fetchone()
            if row is None:
                # Nothing live: only events written from now on count. (Events of an
                # expired result that are still around have older numbers.)
                top = conn.execute("SELECT MAX(seq) FROM wiretask_result_events").fetchone()
                last_seq = int(top[0] or 0)
        subscription = SQLiteSubscription(self, task_id, row[3] if row else last_seq)
        if row is not None:
            subscription._pending.append(self.codec.decode(row[0], row[1], row[2]))
        return subscription

    def close(self) -> None:
        with self._lock:
            self._closed = True
            held = list(self._connections)
            self._connections.clear()
        for connection in held:
            with contextlib.suppress(sqlite3.Error):
                connection.conn.close()
        self._notifier.notify()  # wake this process's subscribers so they see the close

    def async_twin(self) -> AsyncSQLiteBackend:
        """The asyncio twin: every statement in a thread of the twin's own."""
        return AsyncSQLiteBackend(self)


class SQLiteSubscription(Subscription):
    """Polls the events table for one task (see the module doc)."""

    def __init__(self, backend: SQLiteBackend, task_id: str, last_seq: int) -> None:
        self._backend = backend
        self.task_id = task_id
        self.last_seq = last_seq
        self._pending: list[dict[str, Any]] = []
        self._closed = False

    def _poll(self) -> None:
        """Read events newer than ``last_seq`` into ``_pending``."""
        backend = self._backend
        with backend._transaction("poll", write=False) as conn:
            rows = conn.execute(
                "SELECT seq, meta, content_type, content_encoding FROM wiretask_result_events"
                " WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT 256",
                (self.task_id, self.last_seq),
            ).fetchall()
            if not rows:
                # In the same snapshot: a newer row without events means the events
                # were pruned; deliver the current state so the final one is not missed.
                current = conn.execute(
                    "SELECT seq, meta, content_type, content_encoding FROM wiretask_results"
                    " WHERE task_id = ? AND seq > ? AND (expires_at IS NULL OR expires_at > ?)",
                    (self.task_id, self.last_seq, time.time()),
                ).fetchone()
                rows = [current] if current is not None else []
        for seq, data, content_type, content_encoding in rows:
            self._pending.append(backend.codec.decode(data, content_type, content_encoding))
            self.last_seq = seq

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        backoff = POLL_MIN
        notifier = self._backend._notifier
        while not (self.finished or self._closed or self._backend._closed):
            # Read the generation before polling: a store committed after the poll
            # bumps it, and the wait below returns at once.
            generation = notifier.generation
            if not self._pending:
                self._poll()
            if self._pending:
                meta = self._pending.pop(0)
                if meta["status"] in states.READY_STATES:
                    self.finished = True
                    self._pending.clear()
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            notifier.wait(generation, backoff if remaining is None else min(backoff, remaining))
            backoff = min(backoff * 2, POLL_MAX)
        return None

    def close(self) -> None:
        self._closed = True
        self._pending.clear()


class AsyncSQLiteBackend(AsyncResultBackend):
    """The asyncio twin of an ``SQLiteBackend`` (which it owns). Every statement runs in
    one thread of the twin's own, on that thread's connection, so the event loop never
    waits for the file's lock (``busy_timeout``) or the disk; subscriptions poll the
    events table from that thread and wait on the loop, woken at once by a store made
    in this process (the sync subscriptions' notifier) and otherwise by their backoff
    (5 ms doubling to 100 ms), as sync subscriptions are."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self.backend = backend
        self.url = backend.url
        self.expires = backend.expires
        self.codec = backend.codec
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="wiretask-aio-sqlite-results"
        )
        self._subscriptions: weakref.WeakSet[AsyncSQLiteSubscription] = weakref.WeakSet()

    async def run(self, function: Callable[..., Any], *args: object) -> Any:
        """``function(*args)`` in the twin's thread."""
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    async def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        await self.run(self.backend.store, task_id, meta)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        meta: dict[str, Any] | None = await self.run(self.backend.get, task_id)
        return meta

    async def forget(self, task_id: str) -> None:
        await self.run(self.backend.forget, task_id)

    async def subscribe(self, task_id: str) -> AsyncSQLiteSubscription:
        subscription = AsyncSQLiteSubscription(self, await self.run(self.backend.subscribe,
                                                                    task_id))
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        try:
            await self.run(self.backend.close)
        finally:
            self._executor.shutdown(wait=False)


class AsyncSQLiteSubscription(AsyncSubscription):
    """A ``SQLiteSubscription`` read by a coroutine (see ``AsyncSQLiteBackend``)."""

    def __init__(self, backend: AsyncSQLiteBackend, subscription: SQLiteSubscription) -> None:
        self._backend = backend
        self._subscription = subscription
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._notifier = notifier = backend.backend._notifier
        with notifier.cond:
            notifier.watchers.add(self._notified)
        #: A poll whose ``await`` was cancelled: what it read is in ``_pending`` after.
        self._polling: asyncio.Future[None] | None = None

    def _notified(self) -> None:
        # From the thread that stored.
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def _poll(self) -> None:
        polling = self._polling
        if polling is None:
            polling = self._polling = asyncio.wrap_future(
                self._backend._executor.submit(self._subscription._poll)
            )
        try:
            await asyncio.shield(polling)  # cancelled: the poll goes on, its rows are kept
        finally:
            if polling.done():
                self._polling = None

    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        subscription = self._subscription
        loop = self._loop
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        backoff = POLL_MIN
        while not (subscription.finished or subscription._closed or self.closed
                   or self._backend.backend._closed):
            # Cleared before polling: a store committed after the poll sets it, and the
            # wait below returns at once.
            self._wakeup.clear()
            if not subscription._pending:
                await self._poll()
            if subscription._pending:
                meta = subscription._pending.pop(0)
                if meta["status"] in states.READY_STATES:
                    subscription.finished = self.finished = True
                    subscription._pending.clear()
                return meta
            wait = backoff
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                wait = min(backoff, remaining)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            backoff = min(backoff * 2, POLL_MAX)
        return None

    async def close(self) -> None:
        self.closed = True
        with self._notifier.cond:
            self._notifier.watchers.discard(self._notified)
        self._subscription.close()
