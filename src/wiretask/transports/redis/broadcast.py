"""Broadcast on Redis (``base.Broadcast``), exactly as Kombu 5.7's Redis transport does it.

A part of the transport (``RedisTransport.broadcast`` and ``listen`` delegate to
``Broadcaster``), on the shared ``Database``.

* **fanout** exchanges go over pub/sub: ``PUBLISH <prefix>/<db>.<exchange>`` (with
  ``/<routing_key>`` appended when the key is not empty: Kombu's ``fanout_patterns``),
  and a listener ``PSUBSCRIBE``\\ s the same string with ``#`` in its binding key turned
  into ``*``. The payload is Kombu's list-entry envelope. Nobody subscribed: the message
  is gone, as with Kombu.
* **direct** and **topic** exchanges go through Kombu's binding table: the sender reads
  ``_kombu.binding.<exchange>`` and ``LPUSH``\\ es the envelope to each queue whose
  binding matches (the priority-0 list); a listener ``BRPOP``\\ s its queue's lists.
  Nothing bound: the message is dropped, as Kombu drops it.
* A listener **binds** its queue as Kombu's ``_queue_bind`` does: the member
  ``routing_key\\x06\\x16pattern\\x06\\x16queue`` goes into ``_kombu.binding.<exchange>``;
  for a queue with ``expires`` (Celery's control queues), by Kombu's ``REFRESH_BINDING``
  script, which also raises the exchange's deadline in ``_kombu.binding_deadlines`` (Kombu
  5.7's sweeper deletes a table whose deadline passed), refreshed while the listener
  reads; without, into ``_kombu.binding_permanent.<exchange>`` too. Closing deletes the
  member from both and the queue's lists (Kombu's ``queue_delete``).

``global_keyprefix`` applies to every key and pub/sub channel, as in Kombu.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from wiretask._ids import new_id
from wiretask.errors import TransportError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import (
    BoundQueue,
    Exchange,
    check_broadcast,
    check_listen,
    check_wait,
)
from wiretask.transports.redis.database import Database, text
from wiretask.transports.redis.envelope import (
    BadEntry,
    binding_member,
    decode,
    encode,
    matches_binding,
    queue_key,
    topic_pattern,
)

if TYPE_CHECKING:
    from redis.client import PubSub

__all__ = ["BINDING_DEADLINES", "MIN_BINDING_TTL", "REFRESH_BINDING", "Broadcaster",
           "RedisInbox", "channel"]

log = logging.getLogger(__name__)

#: Kombu's sorted set of binding-table deadlines (ms), one member per exchange.
BINDING_DEADLINES = "_kombu.binding_deadlines"
#: Kombu 5.7: a binding table lives at least this long (ms) past its last refresh, and
#: twice its queue's ``x-expires`` otherwise (``BINDING_EXPIRES_FACTOR``).
MIN_BINDING_TTL = 60 * 60 * 1000
BINDING_EXPIRES_FACTOR = 2

#: Kombu 5.7's ``REFRESH_BINDING``, word for word: add member ARGV[1] to the table KEYS[1]
#: and raise exchange ARGV[2]'s deadline in KEYS[2] to ARGV[3] ms from now (server clock).
REFRESH_BINDING = """
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"""


def channel(prefix: str, db: int, exchange: str, routing_key: str) -> str:
    """The pub/sub channel of a fanout message (Kombu's ``_get_publish_topic``)."""
    base = f"{prefix}/{db}.{exchange}"
    return f"{base}/{routing_key}" if routing_key else base


def _member(exchange: Exchange, queue: BoundQueue) -> str:
    pattern = topic_pattern(queue.binding_key) if exchange.type == "topic" else ""
    return binding_member(queue.binding_key, pattern, queue.name)


class Broadcaster:
    """``Broadcast`` on one Redis database (see the module docstring)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def broadcast(self, exchange: Exchange, frame: Frame, routing_key: str) -> None:
        check_broadcast(exchange, frame, routing_key)
        db = self._db
        entry = encode(frame, exchange=exchange.name, routing_key=routing_key,
                       delivery_tag=new_id())
        with db.errors("broadcast"):
            if exchange.type == "fanout":
                db.client.publish(channel(db.keys.prefix, db.target.db, exchange.name,
                                          routing_key), entry)
                return
            members = cast(set[bytes], db.client.smembers(db.keys.binding(exchange.name)))
            queues = sorted({q for m in members if (q := matches_binding(text(m), routing_key))})
            if not queues:
                log.debug("broadcast on %s/%r reached no queue (none bound)",
                          exchange.name, routing_key)
                return
            pipe = db.client.pipeline(transaction=False)
            for name in queues:
                pipe.lpush(db.keys.p(name), entry)
            pipe.execute()

    def listen(self, exchange: Exchange, queue: BoundQueue) -> RedisInbox:
        check_listen(exchange, queue)
        inbox = RedisInbox(self._db, exchange, queue)
        try:
            inbox._open()
        except BaseException:
            inbox.close()
            raise
        return inbox


class RedisInbox:
    """A listener's bound queue on Redis: a pub/sub subscription for a fanout exchange,
    the queue's lists otherwise."""

    def __init__(self, database: Database, exchange: Exchange, queue: BoundQueue) -> None:
        self.queue = queue.name
        self._db = database
        self._exchange = exchange
        self._spec = queue
        self._member = _member(exchange, queue)
        self._pubsub: PubSub | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._lists = [database.keys.p(queue_key(queue.name, step))
                       for step in database.steps]
        self._refreshed = 0.0
        # Kombu refreshes an expiring binding every third of its lifetime.
        self._refresh_every = (self._binding_ttl() or 0) / 1000 / 3

    def __repr__(self) -> str:
        return f"<RedisInbox {self.queue} on {self._exchange.name}>"

    def _binding_ttl(self) -> int | None:
        expires = self._spec.expires
        if expires is None:
            return None
        return max(int(expires * 1000) * BINDING_EXPIRES_FACTOR, MIN_BINDING_TTL)

    def _bind(self) -> None:
        keys = self._db.keys
        table = keys.binding(self._exchange.name)
        ttl = self._binding_ttl()
        if ttl is None:
            pipe = self._db.client.pipeline(transaction=False)
            pipe.sadd(table, self._member)
            pipe.sadd(keys.binding_permanent(self._exchange.name), self._member)
            pipe.execute()
        else:
            self._db.client.eval(REFRESH_BINDING, 2, table, keys.p(BINDING_DEADLINES),
                              self._member, self._exchange.name, ttl)
        self._refreshed = time.monotonic()

    def _open(self) -> None:
        db = self._db
        with db.errors("listen"):
            self._bind()
            if self._exchange.type != "fanout":
                return
            pattern = channel(db.keys.prefix, db.target.db,
                              self._exchange.name, self._spec.binding_key.replace("#", "*"))
            pubsub = self._db.client.pubsub()
            self._pubsub = pubsub
            pubsub.psubscribe(pattern)
            # Wait for the server's confirmation: a message published after this returns
            # must reach the subscription.
            deadline = time.monotonic() + (db.socket_timeout or 15.0)
            while True:
                reply = pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
                if reply is not None and text(reply["type"]) == "psubscribe":
                    return
                if time.monotonic() >= deadline:
                    raise TransportError(f"no PSUBSCRIBE confirmation for {pattern!r}",
                                         url=db.url)

    def get(self, timeout: float) -> Frame | None:
        wait = check_wait(timeout)
        if self._closed:
            raise TransportError(f"inbox {self.queue!r} is closed", url=self._db.url)
        deadline = time.monotonic() + wait
        with self._db.errors("listen"):
            if self._refresh_every and time.monotonic() - self._refreshed > self._refresh_every:
                self._bind()
            while True:
                raw = self._next(max(deadline - time.monotonic(), 0.0))
                if raw is not None:
                    try:
                        return decode(raw, queue=self.queue).frame
                    except BadEntry as exc:
                        # Kombu logs a message it cannot read on a fanout channel and goes on.
                        log.warning("inbox %s: unreadable message skipped: %s",
                                    self.queue, exc.reason)
                if time.monotonic() >= deadline:
                    return None

    def _next(self, wait: float) -> bytes | None:
        # One blocking read stays well inside the socket timeout (15 s by default), or
        # the client would take a long wait for a dead server; get() loops to its end.
        wait = min(wait, max((self._db.socket_timeout or 15.0) / 2, 0.1))
        pubsub = self._pubsub
        if pubsub is not None:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is None or text(message["type"]) != "pmessage":
                return None
            return cast(bytes, message["data"])
        if wait <= 0:
            for key in self._lists:
                value = self._db.client.rpop(key)
                if value is not None:
                    return cast(bytes, value)
            return None
        # BRPOP takes whole milliseconds' worth of a float timeout; 0 would block forever.
        popped = cast(Sequence[Any] | None,
                      self._db.client.brpop(self._lists, timeout=max(wait, 0.001)))
        return None if popped is None else cast(bytes, popped[1])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        pubsub, self._pubsub = self._pubsub, None
        try:
            if pubsub is not None:
                pubsub.close()
            keys = self._db.keys
            pipe = self._db.client.pipeline(transaction=False)
            pipe.srem(keys.binding(self._exchange.name), self._member)
            pipe.srem(keys.binding_permanent(self._exchange.name), self._member)
            pipe.delete(*self._lists)
            pipe.execute()
        except Exception as exc:  # never raises: the binding's deadline lets it go
            log.debug("inbox %s: could not delete its queue and binding: %r", self.queue, exc)
