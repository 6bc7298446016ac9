"""Broadcast on the SQLite broker (``base.Broadcast``): one table that listeners poll.

Kept apart from ``SQLiteTransport`` (which only delegates to ``broadcast`` and ``listen``
here). Its tables are a schema component of their own (``broadcast`` in
``wiretask_schema``), created the first time a process broadcasts or listens, so files
of brokers that never use it are unchanged and older wiretask versions still open them.

* ``broadcast`` inserts **one row** per message: exchange, routing key, the time, the
  frame. Rows older than ``RETENTION`` seconds are deleted by the next ``broadcast``.
* ``listen`` takes the newest row id as the inbox's cursor; ``Inbox.get`` polls for rows
  of its exchange past the cursor (one range scan of the primary key per poll, every 5
  ms at first, backing off to 50 ms while nothing comes) and keeps those the exchange
  routes to its binding (``base.routes_to``: fanout all, direct the exact key, topic the
  pattern), dropping those older than the queue's ``message_ttl``.

So a message reaches every inbox listening when it was inserted, and no other: the
semantics of an exchange, for any number of processes on the file. Nothing is deleted on
read (each inbox has its own cursor) and nothing is acknowledged. The row ids never go
back (``AUTOINCREMENT``), so a cursor never skips a row that reuses an old id.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from typing import TYPE_CHECKING, Final

from wiretask.errors import DecodeError, TransportError
from wiretask.protocol.frame import Frame
from wiretask.transports._json import dump_json_mapping, load_json_mapping
from wiretask.transports.base import (
    BoundQueue,
    Exchange,
    check_broadcast,
    check_listen,
    check_wait,
    routes_to,
)

if TYPE_CHECKING:
    from wiretask.transports.sqlite import SQLiteTransport

__all__ = ["RETENTION", "SCHEMA_VERSION", "SQLiteInbox", "broadcast", "listen"]

#: Version of the tables of the ``broadcast`` component.
SCHEMA_VERSION: Final = 1
#: Seconds a broadcast row is kept (Celery's ``control_queue_ttl``, the longest a
#: control message waits anywhere).
RETENTION: Final = 300.0
#: Rows read per poll.
_BATCH: Final = 100
_POLL_MIN: Final = 0.005
_POLL_MAX: Final = 0.05

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS wiretask_broadcast (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    at REAL NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS wiretask_broadcast_exchange ON wiretask_broadcast (exchange, id);
CREATE INDEX IF NOT EXISTS wiretask_broadcast_at ON wiretask_broadcast (at);
CREATE TABLE IF NOT EXISTS wiretask_exchanges (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL
);
"""

def _ensure_schema(transport: SQLiteTransport, conn: sqlite3.Connection) -> None:
    """Create the component's tables if missing (under the caller's write transaction),
    refusing a newer version. One indexed read when they exist."""
    row = conn.execute(
        "SELECT version FROM wiretask_schema WHERE component='broadcast'"
    ).fetchone()
    if row is not None and row[0] > SCHEMA_VERSION:
        raise TransportError(
            f"the broker database was written by a newer wiretask (broadcast schema {row[0]}; "
            f"this version reads {SCHEMA_VERSION})", url=transport.url,
        )
    if row is None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO wiretask_schema (component, version) "
                     "VALUES ('broadcast', ?)", (SCHEMA_VERSION,))


def _declare(transport: SQLiteTransport, conn: sqlite3.Connection, exchange: Exchange) -> None:
    """Record the exchange's type; one declared with another type is refused."""
    conn.execute("INSERT OR IGNORE INTO wiretask_exchanges (name, type) VALUES (?, ?)",
                 (exchange.name, exchange.type))
    (known,) = conn.execute("SELECT type FROM wiretask_exchanges WHERE name=?",
                            (exchange.name,)).fetchone()
    if known != exchange.type:
        raise TransportError(
            f"exchange {exchange.name!r} is a {known} exchange, not {exchange.type}",
            url=transport.url,
        )


def broadcast(transport: SQLiteTransport, exchange: Exchange, frame: Frame,
              routing_key: str) -> None:
    """``Broadcast.broadcast`` on SQLite (see the module docstring)."""
    check_broadcast(exchange, frame, routing_key)
    row = (exchange.name, routing_key, time.time(), frame.content_type,
           frame.content_encoding, dump_json_mapping("headers", frame.headers),
           dump_json_mapping("properties", frame.properties), bytes(frame.body))
    with transport._session("broadcasting", write=True) as conn:
        _ensure_schema(transport, conn)
        _declare(transport, conn, exchange)
        conn.execute("DELETE FROM wiretask_broadcast WHERE at < ?", (row[2] - RETENTION,))
        conn.execute(
            "INSERT INTO wiretask_broadcast (exchange, routing_key, at, content_type, "
            "content_encoding, headers, properties, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )


def listen(transport: SQLiteTransport, exchange: Exchange, queue: BoundQueue) -> SQLiteInbox:
    """``Broadcast.listen`` on SQLite (see the module docstring)."""
    check_listen(exchange, queue)
    with transport._session("listening", write=True) as conn:
        _ensure_schema(transport, conn)
        _declare(transport, conn, exchange)
        (cursor,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name='wiretask_broadcast'"
        ).fetchone()
    return SQLiteInbox(transport, exchange, queue, int(cursor))


class SQLiteInbox:
    """A listener's cursor into the broadcast table."""

    def __init__(self, transport: SQLiteTransport, exchange: Exchange, queue: BoundQueue,
                 cursor: int) -> None:
        self.queue = queue.name
        self._transport = transport
        self._exchange = exchange
        self._spec = queue
        self._cursor = cursor
        self._ready: collections.deque[Frame] = collections.deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteInbox {self.queue} on {self._exchange.name} after {self._cursor}>"

    def get(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + check_wait(timeout)
        pause = _POLL_MIN
        while True:
            if self._closed:
                raise TransportError(f"inbox {self.queue!r} is closed", url=self._transport.url)
            if self._ready:
                return self._ready.popleft()
            self._poll()
            if self._ready:
                return self._ready.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(max(min(pause, remaining), 0.001))
            pause = min(pause * 2, _POLL_MAX)

    def _poll(self) -> None:
        with self._transport._session("reading broadcasts") as conn:
            rows = conn.execute(
                "SELECT id, routing_key, at, content_type, content_encoding, headers, "
                "properties, body FROM wiretask_broadcast WHERE exchange=? AND id > ? "
                "ORDER BY id LIMIT ?", (self._exchange.name, self._cursor, _BATCH),
            ).fetchall()
        ttl = self._spec.message_ttl
        now = time.time()
        for row_id, routing_key, at, ctype, cenc, headers, properties, body in rows:
            self._cursor = row_id
            if not routes_to(self._exchange, self._spec.binding_key, routing_key):
                continue
            if ttl is not None and now - at > ttl:
                continue
            try:
                self._ready.append(Frame(
                    body=bytes(body), content_type=ctype, content_encoding=cenc,
                    headers=load_json_mapping("headers", headers),
                    properties=load_json_mapping("properties", properties),
                ))
            except DecodeError:
                continue  # a row that cannot be read is nobody's message

    def close(self) -> None:
        self._closed = True
        self._ready.clear()
