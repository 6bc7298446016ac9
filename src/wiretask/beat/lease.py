"""Beat's lease on the broker: one beat sends, the others wait.

A lease is a lock with an expiry, held by one beat (its ``owner`` id) and renewed by it
while it lives; a beat that finds it held waits as a standby and takes it once it is
free (released on a clean stop, or expired after ``ttl`` when its holder died). Beside
the lock the broker keeps the *runs* of the schedule: for each entry, when it was last
sent and how many times. The holder records a run **before** it sends, and only while
it holds the lease (the record checks the owner, and that the run count is the one the
holder last saw, in one atomic step), so:

* two beats never send the same run: a beat that lost its lease (paused past the
  expiry, cut off from the broker) fails its next record and goes back to standby
  without sending; a beat that takes over reads the runs its predecessor recorded;
* a holder killed between recording a run and sending it leaves that one run unsent
  (at most once, like Celery's ``reserve`` before ``apply_async``).

One kind of lease per broker, chosen by the app's transport:

* Redis: a key set with ``SET NX PX`` semantics and a hash of runs, each changed by a
  Lua script that first compares the owner (``_wiretask.beat.<name>`` and
  ``_wiretask.beat.<name>.runs``, behind ``global_keyprefix``);
* SQLite: a row with an expiry time in ``wiretask_beat_lease`` and rows in
  ``wiretask_beat_runs``, changed in ``BEGIN IMMEDIATE`` transactions;
* memory: an in-process record per broker name (beats in one process, ``-B``).
"""

from __future__ import annotations

import abc
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from wiretask._errormap import map_exceptions
from wiretask._sqlite import SQLITE_ERRORS, must_reopen, open_database
from wiretask._url import mask_url
from wiretask.beat.store import Run, run_from_json, run_to_json
from wiretask.errors import ImproperlyConfigured

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = ["Lease", "MemoryLease", "Outcome", "RedisLease", "SQLiteLease", "lease_for"]

log = logging.getLogger("wiretask.beat")


class Outcome(Enum):
    """What ``Lease.record`` did."""

    RECORDED = "recorded"
    #: The caller does not hold the lease (it expired, another beat took it).
    LOST = "lost"
    #: The run count on the broker is not the one the caller expected.
    CONFLICT = "conflict"


def _encode(run: Run, timezone: str) -> str:
    return json.dumps({**run_to_json(run), "tz": timezone}, sort_keys=True)


def _decode(runs: Mapping[str, str], timezone: str, where: str) -> dict[str, Run]:
    """Stored runs of ``timezone``; those of another zone are dropped (Celery's reset
    when the time zone changes) and unreadable ones are logged and skipped."""
    found: dict[str, Run] = {}
    zones: set[Any] = set()
    for name, text in runs.items():
        try:
            value = json.loads(text)
            run = run_from_json(value)
        except (ValueError, KeyError, TypeError):
            log.warning("beat: ignoring an unreadable run of %r on %s: %r", name, where, text)
            continue
        if value.get("tz") != timezone:
            zones.add(value.get("tz"))
            continue
        found[name] = run
    for zone in zones:
        log.warning("Reset: Timezone changed from %r to %r (runs on %s)", zone, timezone, where)
    return found


class Lease(abc.ABC):
    """The lock and the runs of one schedule (``name``) on one broker (``url``, masked).

    Methods raise ``TransportError`` (``ConnectionLost`` when the broker cannot be
    reached); the service waits those out.
    """

    def __init__(self, name: str, url: str) -> None:
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(f"the beat lock name must be a non-empty string, got "
                                       f"{name!r}")
        self.name = name
        self.url = url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.url}>"

    @abc.abstractmethod
    def acquire(self, owner: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds if it is free (or already ``owner``'s)."""

    @abc.abstractmethod
    def renew(self, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s lease to ``ttl`` seconds from now; False if not its."""

    @abc.abstractmethod
    def release(self, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""

    @abc.abstractmethod
    def holder(self) -> str | None:
        """Who holds the lease (None: nobody)."""

    @abc.abstractmethod
    def runs(self, timezone: str) -> dict[str, Run]:
        """The recorded runs, by entry name (those recorded in ``timezone``)."""

    @abc.abstractmethod
    def replace_runs(self, owner: str, runs: Mapping[str, Run], timezone: str) -> bool:
        """Make ``runs`` the recorded runs (entries not in it are forgotten), if
        ``owner`` holds the lease; whether it did."""

    @abc.abstractmethod
    def record(self, owner: str, entry: str, expected_count: int, run: Run,
               timezone: str) -> Outcome:
        """Record ``run`` for ``entry`` if ``owner`` holds the lease and the recorded
        run count of ``entry`` is ``expected_count`` (0 when none is recorded)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (not the lease)."""


# -- memory ------------------------------------------------------------------------------


@attrs.define
class _MemoryRecord:
    owner: str | None = None
    expires: float = 0.0
    runs: dict[str, str] = attrs.Factory(dict)


_MEMORY: dict[tuple[str, str], _MemoryRecord] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryLease(Lease):
    """The lease of the in-process broker ``memory://broker`` (beats in one process)."""

    def __init__(self, name: str, broker: str = "default") -> None:
        super().__init__(name, "memory://" if broker == "default" else f"memory://{broker}")
        with _MEMORY_LOCK:
            self._record = _MEMORY.setdefault((broker, name), _MemoryRecord())

    def close(self) -> None:
        """Nothing to release: the record lives as long as the process."""

    def _held_by(self, owner: str) -> bool:
        record = self._record
        return record.owner == owner and record.expires > time.monotonic()

    def acquire(self, owner: str, ttl: float) -> bool:
        with _MEMORY_LOCK:
            record = self._record
            if record.owner not in (None, owner) and record.expires > time.monotonic():
                return False
            record.owner, record.expires = owner, time.monotonic() + ttl
            return True

    def renew(self, owner: str, ttl: float) -> bool:
        with _MEMORY_LOCK:
            if not self._held_by(owner):
                return False
            self._record.expires = time.monotonic() + ttl
            return True

    def release(self, owner: str) -> None:
        with _MEMORY_LOCK:
            if self._record.owner == owner:
                self._record.owner = None

    def holder(self) -> str | None:
        with _MEMORY_LOCK:
            record = self._record
            return record.owner if record.expires > time.monotonic() else None

    def runs(self, timezone: str) -> dict[str, Run]:
        with _MEMORY_LOCK:
            stored = dict(self._record.runs)
        return _decode(stored, timezone, self.url)

    def replace_runs(self, owner: str, runs: Mapping[str, Run], timezone: str) -> bool:
        with _MEMORY_LOCK:
            if not self._held_by(owner):
                return False
            self._record.runs = {name: _encode(run, timezone) for name, run in runs.items()}
            return True

    def record(self, owner: str, entry: str, expected_count: int, run: Run,
               timezone: str) -> Outcome:
        with _MEMORY_LOCK:
            if not self._held_by(owner):
                return Outcome.LOST
            current = self._record.runs.get(entry)
            count = 0 if current is None else int(json.loads(current)["total_run_count"])
            if count != expected_count:
                return Outcome.CONFLICT
            self._record.runs[entry] = _encode(run, timezone)
            return Outcome.RECORDED


# -- SQLite ------------------------------------------------------------------------------

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS wiretask_schema (
        component TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS wiretask_beat_lease (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS wiretask_beat_runs (
        name TEXT NOT NULL,
        entry TEXT NOT NULL,
        run TEXT NOT NULL,
        PRIMARY KEY (name, entry)
    )""",
    "INSERT OR IGNORE INTO wiretask_schema (component, version) VALUES ('beat', 1)",
)


class SQLiteLease(Lease):
    """The lease in the SQLite broker file at ``path``: a row with an expiry time (the
    wall clock of the processes sharing the file, one machine)."""

    def __init__(self, name: str, path: str, *, busy_timeout: float = 5.0) -> None:
        super().__init__(name, f"sqlite:///{path}")
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @contextmanager
    def _session(self, doing: str, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock, map_exceptions(SQLITE_ERRORS, f"beat lease: {doing}", url=self.url):
            if self._conn is None:
                conn = open_database(self.path, busy_timeout=self.busy_timeout)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in _SQLITE_SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
            conn = self._conn
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
                if write:
                    conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error) and must_reopen(exc):
                    self._conn = None
                    conn.close()
                raise

    def _held_by(self, conn: sqlite3.Connection, owner: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM wiretask_beat_lease WHERE name = ? AND owner = ? AND expires_at > ?",
            (self.name, owner, time.time()),
        ).fetchone()
        return row is not None

    def acquire(self, owner: str, ttl: float) -> bool:
        with self._session("acquire", write=True) as conn:
            now = time.time()
            cursor = conn.execute(
                "INSERT INTO wiretask_beat_lease (name, owner, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at "
                "WHERE wiretask_beat_lease.owner = excluded.owner "
                "OR wiretask_beat_lease.expires_at <= ?",
                (self.name, owner, now + ttl, now),
            )
            return cursor.rowcount == 1

    def renew(self, owner: str, ttl: float) -> bool:
        with self._session("renew", write=True) as conn:
            now = time.time()
            cursor = conn.execute(
                "UPDATE wiretask_beat_lease SET expires_at = ? "
                "WHERE name = ? AND owner = ? AND expires_at > ?",
                (now + ttl, self.name, owner, now),
            )
            return cursor.rowcount == 1

    def release(self, owner: str) -> None:
        with self._session("release", write=True) as conn:
            conn.execute("DELETE FROM wiretask_beat_lease WHERE name = ? AND owner = ?",
                         (self.name, owner))

    def holder(self) -> str | None:
        with self._session("read the holder") as conn:
            row = conn.execute(
                "SELECT owner FROM wiretask_beat_lease WHERE name = ? AND expires_at > ?",
                (self.name, time.time()),
            ).fetchone()
        return None if row is None else str(row[0])

    def runs(self, timezone: str) -> dict[str, Run]:
        with self._session("read the runs") as conn:
            rows = conn.execute("SELECT entry, run FROM wiretask_beat_runs WHERE name = ?",
                                (self.name,)).fetchall()
        return _decode(dict(rows), timezone, self.url)

    def replace_runs(self, owner: str, runs: Mapping[str, Run], timezone: str) -> bool:
        with self._session("replace the runs", write=True) as conn:
            if not self._held_by(conn, owner):
                return False
            conn.execute("DELETE FROM wiretask_beat_runs WHERE name = ?", (self.name,))
            conn.executemany(
                "INSERT INTO wiretask_beat_runs (name, entry, run) VALUES (?, ?, ?)",
                [(self.name, entry, _encode(run, timezone)) for entry, run in runs.items()],
            )
            return True

    def record(self, owner: str, entry: str, expected_count: int, run: Run,
               timezone: str) -> Outcome:
        with self._session("record a run", write=True) as conn:
            if not self._held_by(conn, owner):
                return Outcome.LOST
            row = conn.execute(
                "SELECT run FROM wiretask_beat_runs WHERE name = ? AND entry = ?",
                (self.name, entry),
            ).fetchone()
            count = 0 if row is None else int(json.loads(row[0])["total_run_count"])
            if count != expected_count:
                return Outcome.CONFLICT
            conn.execute(
                "INSERT OR REPLACE INTO wiretask_beat_runs (name, entry, run) VALUES (?, ?, ?)",
                (self.name, entry, _encode(run, timezone)),
            )
            return Outcome.RECORDED

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# -- Redis -------------------------------------------------------------------------------

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 0
"""

_REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local current = redis.call('HGET', KEYS[2], ARGV[2])
local count = 0
if current then
    count = tonumber(cjson.decode(current)['total_run_count'])
end
if count ~= tonumber(ARGV[3]) then
    return -1
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
"""


class RedisLease(Lease):
    """The lease on the Redis broker at ``url`` (with the transport's options:
    ``global_keyprefix`` and redis-py's connection options apply). The key expires in
    Redis itself (its clock), so holders on different machines agree."""

    def __init__(self, name: str, url: str, **options: Any) -> None:
        import redis  # noqa: PLC0415 - only Redis brokers need the driver
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        from wiretask._redis.errors import Boundaries  # noqa: PLC0415
        from wiretask._redis.options import parse  # noqa: PLC0415

        config = parse(url, options)
        super().__init__(name, config.masked_url)
        try:
            # No retries inside redis-py: a script retried after a timeout could record a
            # run twice; the service retries on its own schedule.
            pool = redis.ConnectionPool.from_url(
                config.redis_url, **{**config.redis_kwargs, "retry": Retry(NoBackoff(), 0)})
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"bad Redis connection option for {self.url}: {exc}", setting="broker_url"
            ) from exc
        self._client = redis.Redis(connection_pool=pool)
        # The error boundary the Redis transport and result backend use: REDIS_ERRORS,
        # the password scrubbed, and a pool reconnected after a failover's wrong server.
        self._errors = Boundaries(pool, url=self.url,
                                  secret=pool.connection_kwargs.get("password"))
        prefix = config.keys.prefix
        self.lock_key = f"{prefix}_wiretask.beat.{name}"
        self.runs_key = f"{prefix}_wiretask.beat.{name}.runs"
        self._scripts = {
            text: self._client.register_script(text)
            for text in (_ACQUIRE, _RENEW, _RELEASE, _REPLACE, _RECORD)
        }

    def _call(self, doing: str, script: str, keys: list[str], args: list[Any]) -> int:
        with self._errors(f"beat lease: {doing}"):
            return int(self._scripts[script](keys=keys, args=args))

    def acquire(self, owner: str, ttl: float) -> bool:
        return self._call("acquire", _ACQUIRE, [self.lock_key], [owner, _ms(ttl)]) == 1

    def renew(self, owner: str, ttl: float) -> bool:
        return self._call("renew", _RENEW, [self.lock_key], [owner, _ms(ttl)]) == 1

    def release(self, owner: str) -> None:
        self._call("release", _RELEASE, [self.lock_key], [owner])

    def holder(self) -> str | None:
        with self._errors("beat lease: read the holder"):
            value = self._client.get(self.lock_key)
        return None if value is None else _text(value)

    def runs(self, timezone: str) -> dict[str, Run]:
        with self._errors("beat lease: read the runs"):
            stored = self._client.hgetall(self.runs_key)
        return _decode({_text(k): _text(v) for k, v in stored.items()}, timezone, self.url)

    def replace_runs(self, owner: str, runs: Mapping[str, Run], timezone: str) -> bool:
        pairs: list[Any] = [owner]
        for entry, run in runs.items():
            pairs += [entry, _encode(run, timezone)]
        return self._call("replace the runs", _REPLACE, [self.lock_key, self.runs_key],
                          pairs) == 1

    def record(self, owner: str, entry: str, expected_count: int, run: Run,
               timezone: str) -> Outcome:
        done = self._call("record a run", _RECORD, [self.lock_key, self.runs_key],
                          [owner, entry, expected_count, _encode(run, timezone)])
        return {1: Outcome.RECORDED, 0: Outcome.LOST}.get(done, Outcome.CONFLICT)

    def close(self) -> None:
        self._client.close()
        self._client.connection_pool.disconnect()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# -- choosing -----------------------------------------------------------------------------


def lease_for(app: App, name: str) -> Lease:
    """The lease named ``name`` on the app's broker, by its transport.

    Raises:
        ImproperlyConfigured: a broker whose transport has no lease here (wiretask's own
            memory, SQLite and Redis transports do), naming it.
    """
    from wiretask.transports.memory import MemoryTransport  # noqa: PLC0415
    from wiretask.transports.sqlite import SQLiteTransport  # noqa: PLC0415

    transport = app.new_transport()
    try:
        if isinstance(transport, MemoryTransport):
            return MemoryLease(name, transport.name)
        if isinstance(transport, SQLiteTransport):
            return SQLiteLease(name, transport.path, busy_timeout=transport.busy_timeout)
        url = app.broker_url
        if urlsplit(url).scheme.lower() in ("redis", "rediss"):
            from wiretask.transports.redis import RedisTransport  # noqa: PLC0415

            if isinstance(transport, RedisTransport):
                options = app.conf.get("broker_transport_options") or {}
                return RedisLease(name, url, **options)
        raise ImproperlyConfigured(
            f"wiretask beat keeps a lease on the broker so that two beats never send the "
            f"same run, and has none for {type(transport).__name__} ({transport.url}): use a "
            f"memory://, sqlite:// or redis:// broker for beat (broker_url {mask_url(url)})",
            setting="broker_url",
        )
    finally:
        transport.close()
