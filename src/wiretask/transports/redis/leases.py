"""Leases and restore: who holds a message, and how it comes back when nobody does.

A received message is recorded in ``unacked`` (the message) and ``unacked_index`` (its
delivery tag, scored with the time of delivery or of its last lease renewal), exactly
as Kombu records it, and, when a wiretask consumer took it, in ``_wiretask.leases``
(its tag, scored with the time its lease runs out). Two parts look after those records:

* ``LeaseKeeper`` owns the deliveries this process holds and the heartbeat thread that
  renews them every ``lease_interval`` seconds: a fresh ``unacked_index`` score (so
  that neither wiretask's nor Celery's ``restore_visible`` hands a running message to a
  second consumer) and a lease running ``lease_timeout`` from now (both ``ZADD XX``).
  When the transport closes, it gives back what is still held.
* ``Restorer`` puts messages back in their queues: Kombu's ``QoS.restore_visible``
  (every message whose score is older than ``visibility_timeout``, under the
  ``unacked_mutex`` lock), plus every message whose wiretask lease ran out, and
  ``QoS.restore_by_tag`` (one message: a requeue, a give back on close, or one found by
  the scan). So a message whose wiretask consumer died (or never got the reply of the
  pop that took it) comes back after ``lease_timeout``, while a message a Celery worker
  holds (Celery renews nothing) is left alone for Kombu's whole ``visibility_timeout``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import cast

from redis.client import Pipeline
from redis.exceptions import LockError

from wiretask.errors import TransportError
from wiretask.transports.redis.database import Database, text
from wiretask.transports.redis.deadletters import dead_entry
from wiretask.transports.redis.delivery import RedisDelivery
from wiretask.transports.redis.envelope import (
    bucket_for,
    clamp_priority,
    mark_redelivered,
    queue_key,
    route,
)

__all__ = ["LeaseKeeper", "Restorer"]

log = logging.getLogger(__name__)

#: Why a delivery that was held when its transport closed can no longer be settled.
RETURNED = "returned to its queue when the transport closed"


class Restorer:
    """Puts unacknowledged messages back in their queues, as Kombu's ``QoS`` does.

    Args:
        database: the Redis database.
        visibility_timeout: seconds after which a message whose lease was not renewed
            is restored.
        interval: least seconds between two scans that ``maybe_restore`` runs.
        limit: most messages restored per scan (``None``: all).
        mutex_expire: seconds the ``unacked_mutex`` lock lives (a scan's upper bound).
    """

    def __init__(
        self, database: Database, *, visibility_timeout: float, interval: float,
        limit: int | None, mutex_expire: float,
    ) -> None:
        self._db = database
        self._visibility_timeout = visibility_timeout
        self._interval = interval
        self._limit = limit
        self._mutex_expire = mutex_expire
        self._lock = threading.Lock()
        self._next = 0.0

    @property
    def interval(self) -> float:
        """Least seconds between two scans that ``maybe_restore`` runs."""
        return self._interval

    def maybe_restore(self) -> None:
        """``restore_visible`` if the last scan this process ran is ``interval`` ago."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return
            self._next = now + self._interval
        self.restore_visible()

    def restore_visible(self) -> int:
        """Kombu's ``QoS.restore_visible``: under the non-blocking ``unacked_mutex`` lock,
        restore (RPUSH, flagged redelivered) every message whose ``unacked_index`` score
        is older than ``visibility_timeout``, and every message whose wiretask lease ran
        out (at most ``limit`` of each). Returns how many were restored; 0 when another
        process holds the mutex."""
        db, keys = self._db, self._db.keys
        now = time.time()
        ceiling = now - self._visibility_timeout
        with db.errors("restore_visible"):
            lock = db.client.lock(keys.unacked_mutex, timeout=self._mutex_expire)
            if not lock.acquire(blocking=False):
                return 0
            try:
                offset = None if self._limit is None else 0
                stale = cast(list[bytes], db.client.zrange(
                    keys.unacked_index, ceiling, 0, desc=True, byscore=True,
                    offset=offset, num=self._limit,
                ))
                lapsed = cast(list[bytes], db.client.zrange(
                    keys.leases, "-inf", now, byscore=True, offset=offset, num=self._limit,
                ))
                tags = dict.fromkeys(text(tag) for tag in [*stale, *lapsed])
                return sum(self.restore_tag(tag, leftmost=False) for tag in tags)
            finally:
                try:
                    lock.release()
                except LockError:  # expired meanwhile; Kombu ignores LockNotOwnedError
                    pass

    def restore_tag(self, tag: str, *, leftmost: bool) -> bool:
        """Kombu's ``QoS.restore_by_tag``: under WATCH of ``unacked``, remove the tag from
        both indices and push the stored message, flagged redelivered, with the same
        delivery tag, to every queue its exchange and routing key reach now. RPUSH
        (next in line) for visibility and close restores, LPUSH (back of the line) for
        ``reject(requeue=True)``. Returns whether a message was stored under ``tag``."""
        keys = self._db.keys
        found = [False]  # set by the last (successful) attempt of the transaction

        def transaction(pipe: Pipeline) -> None:
            stored = cast(bytes | None, pipe.hget(keys.unacked, tag))
            pushes: list[tuple[str, str]] = []
            dead: tuple[str, str] | None = None
            if stored is not None:
                pushes, dead = self._restorable(pipe, stored)
            pipe.multi()
            pipe.zrem(keys.unacked_index, tag)
            pipe.hdel(keys.unacked, tag)
            pipe.zrem(keys.leases, tag)
            for key, entry in pushes:
                (pipe.lpush if leftmost else pipe.rpush)(key, entry)
            if dead is not None:
                pipe.rpush(*dead)
            found[0] = stored is not None

        with self._db.errors("restore"):
            self._db.client.transaction(transaction, keys.unacked)
        return found[0]

    def _restorable(
        self, reader: Pipeline, stored: bytes
    ) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
        """(list, text) pushes for an ``unacked`` value, or a dead letter if it cannot be
        restored (Kombu would drop it, or fail the whole restore scan)."""
        keys = self._db.keys
        try:
            message, exchange, routing_key = json.loads(stored)
        except (ValueError, TypeError):
            message = exchange = routing_key = None
        if not (isinstance(message, dict) and isinstance(exchange, str)
                and isinstance(routing_key, str)):
            reason = "unacked entry is not [message, exchange, routing_key] JSON"
            return [], (keys.dead("unacked"),
                        dead_entry("unacked", reason, stored, at=time.time()))
        mark_redelivered(message)
        entry = json.dumps(message)
        queues = self._lookup(reader, exchange, routing_key)
        if not queues:
            reason = f"unroutable on restore: exchange {exchange!r}, key {routing_key!r}"
            queue = routing_key or "unacked"
            return [], (keys.dead(queue),
                        dead_entry(queue, reason, entry.encode(), at=time.time()))
        properties = message.get("properties")
        priority = clamp_priority(properties if isinstance(properties, dict) else {})
        bucket = bucket_for(priority, self._db.steps)
        return [(keys.p(queue_key(q, bucket)), entry) for q in queues], None

    def _lookup(self, reader: Pipeline, exchange: str, routing_key: str) -> list[str]:
        """The queues a message reaches (``virtual.Channel._lookup``): the default
        exchange routes to the queue named by the routing key; a named one through its
        binding table."""
        if not exchange:
            return [routing_key] if routing_key else []
        members = cast(set[bytes], reader.smembers(self._db.keys.binding(exchange)))
        return route(sorted(text(m) for m in members), routing_key)


class LeaseKeeper:
    """The deliveries this process holds, and the heartbeat thread that renews their
    leases every ``interval`` seconds (started with the first hold, ended when nothing
    is held, restarted on demand)."""

    def __init__(
        self, database: Database, interval: float, timeout: float,
        restorer: Restorer | None = None,
    ) -> None:
        self._db = database
        self._interval = interval
        self._timeout = timeout
        #: Scans for lapsed leases at each beat too (``maybe_restore``), so a worker
        #: too busy to receive still brings back what a dead consumer held.
        self._restorer = restorer
        self._lock = threading.Lock()
        self._held: dict[str, RedisDelivery] = {}
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    def hold(self, delivery: RedisDelivery) -> None:
        """Keep renewing ``delivery``'s lease until it is released."""
        with self._lock:
            self._held[delivery.delivery_tag] = delivery
            if self._heartbeat is None:
                self._stop = threading.Event()
                self._heartbeat = threading.Thread(
                    target=self._renew, args=(self._stop,),
                    name="wiretask-redis-leases", daemon=True,
                )
                self._heartbeat.start()

    def release(self, delivery: RedisDelivery) -> None:
        """Stop renewing ``delivery``'s lease (it was settled)."""
        with self._lock:
            if self._held.get(delivery.delivery_tag) is delivery:
                del self._held[delivery.delivery_tag]

    def close(self, restorer: Restorer) -> None:
        """Stop the heartbeat and return every delivery still held to the front of its
        queue (RPUSH, flagged redelivered, like Kombu's ``restore_unacked``); settling
        one afterwards raises ``TransportError``. A message that cannot be returned (Redis
        unreachable) stays in ``unacked`` and comes back after ``visibility_timeout``."""
        self._stop.set()
        with self._lock:
            held = list(self._held.values())
            thread, self._heartbeat = self._heartbeat, None
        if thread is not None:
            thread.join(timeout=5)
        for delivery in held:
            try:
                delivery._give_back(RETURNED, functools.partial(
                    restorer.restore_tag, delivery.delivery_tag, leftmost=False))
            except TransportError as exc:
                log.warning("could not return %s on close: %s", delivery.delivery_tag, exc)
            self.release(delivery)

    def _renew(self, stop: threading.Event) -> None:
        """Heartbeat thread: ``ZADD XX`` the current time for every held tag, so a
        restorer (ours or Kombu's) sees a fresh score, and the end of a new lease. XX
        never re-adds a tag that an ack removed meanwhile. Exits when nothing is held
        (restarted on demand)."""
        db = self._db
        while not stop.wait(self._interval):
            with self._lock:
                tags = list(self._held)
                if not tags:
                    if self._heartbeat is threading.current_thread():
                        self._heartbeat = None
                    return
            now = time.time()
            try:
                with db.errors("lease renewal"):
                    db.commands.transaction([
                        ("ZADD", db.keys.unacked_index, "XX",
                         *(x for tag in tags for x in (repr(now), tag))),
                        ("ZADD", db.keys.leases, "XX",
                         *(x for tag in tags for x in (repr(now + self._timeout), tag))),
                    ])
            except TransportError as exc:
                log.warning("could not renew %d lease(s): %s", len(tags), exc)
                continue
            if self._restorer is not None:
                try:
                    self._restorer.maybe_restore()
                except TransportError as exc:
                    log.warning("could not restore lapsed messages: %s", exc)
