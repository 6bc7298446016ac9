"""Consuming: taking messages off the lists and recording them as unacked.

``receive`` first runs the ``POP`` script, which moves the due delayed messages of the
queues it consumes, then pops *and* records each message in ``unacked``/
``unacked_index`` in one atomic step (Kombu's BRPOP + MULTI leaves a gap);
``receive_many`` pops up to ``limit`` of them in the same script run, exactly those that
as many single receives would get. Only when every bucket is empty does the consumer
block in BRPOP (Redis cannot block and move from several lists at once); a message that
arrives during that wait is recorded right after the pop, so a consumer killed (or a
connection lost) in that one round trip loses that message, as with Kombu (kombu#305,
celery#4354). With ``poll_interval`` it never blocks in BRPOP: it runs ``POP`` again
every ``poll_interval`` seconds. Entries that are not envelopes are popped by ``POP``
without being recorded and then written to ``<queue>.dead``.

Acknowledgements and result states can ride on a ``POP`` (``store_ack_and_receive``):
one round trip per batch for the worker.

This is the hot path of a worker: one ``POP`` round trip and the decode of what it
returned; keep it that way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from wiretask._redis import scripts
from wiretask._redis.client import Pieces
from wiretask.errors import ConnectionLost, TransportError
from wiretask.transports.base import Delivery, Transport
from wiretask.transports.redis.database import Database, text
from wiretask.transports.redis.deadletters import dead_entry
from wiretask.transports.redis.delivery import KEPT_ENTRY, RedisDelivery
from wiretask.transports.redis.envelope import BadEntry, decode
from wiretask.transports.redis.leases import LeaseKeeper, Restorer
from wiretask.transports.redis.settling import Settler

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState

__all__ = ["Consumer"]

log = logging.getLogger(__name__)

#: Most due delayed messages one ``receive`` moves per queue before it pops (bounds the
#: time the ``POP`` script blocks Redis; the rest move on the next call).
_PROMOTE_LIMIT = 100


class Consumer:
    """Receives the messages of one transport (``transport``: whose deliveries they
    become), in priority order, then queue order rotated round-robin after each
    delivery (Kombu's default ``queue_order_strategy``), FIFO within a list.

    Args:
        poll_interval: seconds between ``POP`` attempts while the queues are empty,
            instead of blocking in BRPOP (``None``: BRPOP).
        lease_timeout: seconds a received message stays leased without a renewal.
    """

    def __init__(
        self, transport: Transport, database: Database, *, leases: LeaseKeeper,
        restorer: Restorer, settler: Settler, poll_interval: float | None,
        lease_timeout: float,
    ) -> None:
        self._transport = transport
        self._db = database
        self._keys = database.keys
        self._commands = database.commands
        self._receiving = database.errors("receive")
        self._leases = leases
        self._restorer = restorer
        self._settler = settler
        self._poll_interval = poll_interval
        self._lease_timeout = lease_timeout
        self._lock = threading.Lock()
        #: The current round-robin order of each list of queues consumed together.
        self._cycles: dict[tuple[str, ...], list[str]] = {}
        #: Entries a BRPOP took that could not be recorded in ``unacked`` yet (Redis
        #: went away right after answering): recorded, and delivered, first thing at
        #: the next receive. Only in this process's memory meanwhile.
        self._unrecorded: list[tuple[str, bytes]] = []

    def receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> list[RedisDelivery]:
        """Up to ``limit`` messages in one round trip: exactly those that ``limit``
        consecutive ``receive`` calls would return (same priority and queue order, same
        round robin), each recorded in ``unacked`` by the same ``POP`` script. Waits up
        to ``timeout`` seconds for the first one, never for more, and never past the
        next delayed message of ``queues`` (so that ``POP`` can move it)."""
        deadline = time.monotonic() + timeout
        if self._unrecorded:
            return self._record_unrecorded(queues)
        while True:
            # Each turn (a turn blocks at most restore_interval): a lapsed lease is
            # brought back while this consumer waits, and it may be the one to take it.
            self._restorer.maybe_restore()
            deliveries, popped, next_due, _ = self.pop(queues, limit, (), ())
            if deliveries:
                return deliveries
            if popped:
                continue  # only dead letters came out: look again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if next_due is not None:  # never sleep past the next delayed message here
                remaining = min(remaining, max(next_due - time.time(), 0.0))
            if self._poll_interval is not None:
                time.sleep(min(remaining, self._poll_interval))
                continue
            deliveries = self._block(queues, remaining)
            if deliveries:
                return deliveries

    def store_ack_and_receive(
        self, results: Sequence[tuple[Delivery, PendingState]], deliveries: Sequence[Delivery],
        names: list[str], limit: int,
    ) -> tuple[list[RedisDelivery], list[int]]:
        """One ``POP`` run that writes each of ``results`` and acknowledges its delivery
        (if the task has no state stored yet), acknowledges ``deliveries`` and takes up
        to ``limit`` messages; see ``RedisTransport.store_ack_and_receive``."""
        self._restorer.maybe_restore()
        by_delivery = {id(d): p for d, p in results}
        received: list[RedisDelivery] = []
        not_stored: list[int] = []

        def write(pending: list[RedisDelivery]) -> list[RedisDelivery]:
            plain = [d.delivery_tag for d in pending if id(d) not in by_delivery]
            stores = [(d, by_delivery[id(d)]) for d in pending if id(d) in by_delivery]
            got, _, _, skipped = self.pop(names, limit, plain, stores)
            received.extend(got)
            skipped_ids = {id(stores[i][0]) for i in skipped}
            not_stored.extend(i for i, (d, _) in enumerate(results) if id(d) in skipped_ids)
            # Those stay unsettled: the caller stores them under the full rules first.
            return [d for d in pending if id(d) in skipped_ids]

        self._settler.settle_many([*deliveries, *(d for d, _ in results)], write, strict=True)
        return received, not_stored

    def pop(
        self, names: list[str], limit: int, ack: Sequence[str],
        results: Sequence[tuple[RedisDelivery, PendingState]],
    ) -> tuple[list[RedisDelivery], int, float | None, list[int]]:
        """One ``POP`` run (writing ``results`` and acknowledging the tags in ``ack``
        first): the deliveries, how many entries were popped (dead letters included),
        the due time of the next delayed message of these queues when none was, and
        the positions of the results that were not written."""
        order = self._order(names)
        now = time.time()
        call = scripts.pop(self._keys, queues=order, lists=self._db.lists(order),
                           now=now, promote_limit=_PROMOTE_LIMIT, limit=limit,
                           lease_until=now + self._lease_timeout, ack_tags=ack,
                           results=[(d.delivery_tag, p) for d, p in results] if results else ())
        with self._receiving:
            reply = scripts.read_pop(self._commands.script(call), order)
        if not reply.taken:
            return [], 0, reply.next_due, reply.not_stored
        try:
            taken = self._take_all(names, reply.entries)
        except TransportError:
            if not (ack or results):
                raise
            # The script ran: its results are stored and its acks done. A failure to
            # take what it popped must not read as a failure of those (the entries are
            # in ``unacked`` and come back by restore, or were dead letters).
            log.exception("could not take what a receive popped after acknowledging")
            taken = []
        return taken, reply.taken, None, reply.not_stored

    def _block(self, names: list[str], remaining: float) -> list[RedisDelivery]:
        """BRPOP on every bucket list of ``names`` for up to ``remaining`` seconds."""
        order = self._order(names)
        lists = self._db.lists(order)
        owners = dict(zip(lists, [q for _ in self._db.steps for q in order], strict=True))
        with self._receiving:
            blocked = self._commands.call("BRPOP", *lists, self._block_for(remaining))
        if not blocked:
            return []
        key, raw = cast(list[bytes], blocked)
        queue = owners[text(key)]
        try:
            return self._take_all(names, [(queue, raw, "")])
        except ConnectionLost:
            # Popped, and only here now: keep it, record it when Redis answers again
            # (a Redis restart between the pop and its record would otherwise lose it).
            self._unrecorded.append((queue, raw))
            raise

    def _record_unrecorded(self, names: list[str]) -> list[RedisDelivery]:
        """Record and deliver what a BRPOP took while Redis went away.

        Raises:
            ConnectionLost: Redis is still away (they stay kept).
        """
        kept, self._unrecorded = self._unrecorded, []
        deliveries: list[RedisDelivery] = []
        for index, (queue, raw) in enumerate(kept):
            try:
                delivery = self._take(queue, raw, None)
            except ConnectionLost:
                self._unrecorded = kept[index:] + self._unrecorded
                if deliveries:
                    return deliveries
                raise
            if delivery is not None:
                self._rotate(names, queue)
                deliveries.append(delivery)
        log.info("recorded %d message(s) taken just before Redis went away", len(kept))
        return deliveries

    def _take_all(
        self, names: list[str], popped: list[tuple[str, bytes, str]]
    ) -> list[RedisDelivery]:
        """Deliveries for popped ``(queue, entry, tag)``s, rotating the round robin for
        each, as ``POP`` did. Every entry is handled whatever happens to another: one
        that is not a readable envelope is dead-lettered and the others are delivered,
        so none is left recorded in ``unacked`` without a delivery (its lease renewed
        for nobody). A failure to record or dead-letter one is raised only when no
        delivery came out (the caller sees the broker error); otherwise it is logged."""
        deliveries: list[RedisDelivery] = []
        error: TransportError | None = None
        for queue, raw, tag in popped:
            try:
                delivery = self._take(queue, raw, tag or None)
            except TransportError as exc:
                error = error or exc
                continue
            if delivery is not None:
                self._rotate(names, queue)
                deliveries.append(delivery)
        if error is not None:
            if not deliveries:
                raise error
            log.warning("receive: %s", error)
        return deliveries

    def _block_for(self, remaining: float) -> float:
        # One BRPOP must answer before the socket timeout: block at most half of it
        # (and receive loops). Nor past the next restore scan: a message whose lease
        # lapsed comes back within lease_timeout + restore_interval while anyone waits.
        # Never 0, which means "forever" to Redis; its timeout resolution is a
        # millisecond, 10 ms keeps the number exact.
        if self._db.socket_timeout:
            remaining = min(remaining, self._db.socket_timeout / 2)
        if self._restorer.interval > 0:
            remaining = min(remaining, self._restorer.interval)
        return max(round(remaining, 3), 0.01)

    def _order(self, names: list[str]) -> list[str]:
        with self._lock:
            return list(self._cycles.get(tuple(names), names))

    def _rotate(self, names: list[str], served: str) -> None:
        if len(names) < 2:
            return
        with self._lock:
            order = [q for q in self._cycles.get(tuple(names), names) if q != served]
            self._cycles[tuple(names)] = [*order, served]

    def _take(self, queue: str, raw: bytes, tag: str | None) -> RedisDelivery | None:
        """Turn a popped entry into a delivery; dead-letter it if it is not an envelope.
        ``tag`` is set when ``POP`` already recorded it in ``unacked``."""
        try:
            received = decode(raw, queue=queue)
        except BadEntry as exc:
            self._dead_letter_entry(queue, raw, tag, exc.reason)
            return None
        except Exception as exc:  # a bug in the decoder must not lose the entry
            log.exception("unexpected error reading an entry of %r", queue)
            self._dead_letter_entry(queue, raw, tag, f"unreadable entry: {exc!r}")
            return None
        if tag is not None and tag != received.delivery_tag:
            # Lua's cjson read the tag differently (a lone surrogate escape): the entry
            # was recorded under a tag no ack of ours could name.
            self._dead_letter_entry(queue, raw, tag, "entry 'properties.delivery_tag' is "
                                    "not UTF-8 text")
            return None
        if tag is None:  # BRPOP path: Kombu's QoS.append (MULTI ZADD + HSET)
            # Written in pieces, not joined: a large entry is not copied again.
            stored = Pieces((b"[", raw, f", {json.dumps(received.exchange)}, "
                             f"{json.dumps(received.routing_key)}]".encode()))
            now = time.time()
            with self._receiving:
                self._commands.run([
                    ("MULTI",),
                    ("ZADD", self._keys.unacked_index, repr(now), received.delivery_tag),
                    ("HSET", self._keys.unacked, received.delivery_tag, stored),
                    ("ZADD", self._keys.leases, repr(now + self._lease_timeout),
                     received.delivery_tag),
                    ("EXEC",),
                ])
        delivery = RedisDelivery(
            self._transport, frame=received.frame, queue=queue,
            redelivered=received.redelivered, delivery_tag=received.delivery_tag,
            entry=raw.decode("utf-8") if len(raw) <= KEPT_ENTRY else None,
            entry_size=len(raw), exchange=received.exchange, routing_key=received.routing_key,
        )
        self._leases.hold(delivery)
        return delivery

    def _dead_letter_entry(self, queue: str, raw: bytes, tag: str | None, reason: str) -> None:
        """Move a popped entry that is not an envelope to ``<queue>.dead`` (and out of
        ``unacked`` if ``POP`` recorded it)."""
        log.warning("dead-lettering an entry of %r: %s", queue, reason)
        db = self._db
        with db.errors("dead-letter"):
            pipe = db.client.pipeline()
            pipe.rpush(db.keys.dead(queue), dead_entry(queue, reason, raw, at=time.time()))
            if tag is not None:
                name = tag.encode("utf-8", "surrogateescape")  # the bytes POP recorded
                pipe.zrem(db.keys.unacked_index, name)
                pipe.hdel(db.keys.unacked, name)
                pipe.zrem(db.keys.leases, name)
            pipe.execute()
