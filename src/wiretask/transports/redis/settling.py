"""Settling: ack, reject, requeue and dead-letter deliveries, one at a time or in batches.

Acknowledging is Kombu's ``_remove_from_indices`` (``ZREM`` + ``HDEL`` of the delivery
tag), done by the ``ACK`` script for any number of deliveries at once, or inside ``POP``
when acks ride on the next receive (``Consumer.store_ack_and_receive``). A requeue is
a restore by tag (``Restorer.restore_tag``, to the back of the line); a dead letter moves
the entry to ``<queue>.dead`` with its reason. Every path keeps the settle-once rule of
``Delivery``: a delivery's lock is held while it is settled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import cast

from wiretask._redis import scripts
from wiretask.errors import TransportError
from wiretask.transports.base import Delivery, Settlement, Transport
from wiretask.transports.redis.database import Database
from wiretask.transports.redis.delivery import RedisDelivery
from wiretask.transports.redis.leases import LeaseKeeper, Restorer

__all__ = ["Settler"]

#: Given the unsettled deliveries of a batch, writes their acknowledgement and returns
#: the ones it left unacknowledged.
Write = Callable[[list[RedisDelivery]], list[RedisDelivery]]


class Settler:
    """Settles the deliveries of one transport (``transport``: the one whose deliveries
    these are; any other transport's are settled by their own ``ack()``)."""

    def __init__(
        self, transport: Transport, database: Database, leases: LeaseKeeper,
        restorer: Restorer,
    ) -> None:
        self._transport = transport
        self._db = database
        self._leases = leases
        self._restorer = restorer
        self._acking = database.errors("ack")

    def settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        """The ``_settle`` hook: one delivery of this transport, its lock held."""
        held = cast(RedisDelivery, delivery)
        if how in ("ack", "reject"):
            self.forget(held)
        elif how == "requeue":
            self._restorer.restore_tag(held.delivery_tag, leftmost=True)
        else:
            self._dead_letter(held, reason)
        self._leases.release(held)

    def forget(self, *deliveries: RedisDelivery) -> None:
        """ack / reject(requeue=False): Kombu's ``_remove_from_indices`` (ZREM + HDEL),
        one ``ACK`` script call for any number of deliveries."""
        with self._acking:
            self._db.commands.script(
                scripts.ack(self._db.keys, [d.delivery_tag for d in deliveries]))

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge several deliveries in one round trip (one ``ACK`` script call).
        Each is settled as by its own ``ack()``; one that was settled already raises
        ``TransportError`` after the others were acknowledged. Deliveries of another
        transport are acknowledged one by one."""

        def write(pending: list[RedisDelivery]) -> list[RedisDelivery]:
            if pending:
                self.forget(*pending)
            return []

        self.settle_many(deliveries, write, strict=False)

    def settle_many(self, deliveries: Sequence[Delivery], write: Write, *, strict: bool) -> None:
        """Acknowledge ``deliveries`` through ``write`` (given this transport's unsettled
        ones; it returns those it left unacknowledged), holding each one's lock across
        it, as ``ack()`` does. Others' deliveries are acked by their own ``ack()`` first.
        An already settled one raises ``TransportError``: before anything is done when
        ``strict``, else after."""
        ours, first = self._sort_out(deliveries)
        stale, acked = self._write_locked(ours, write, strict=strict)
        for delivery in acked:
            self._leases.release(delivery)
        if stale:
            d = stale[0]
            raise TransportError(
                f"delivery {d.delivery_tag} from {d.queue!r} was already {d._settled}",
                url=self._db.url,
            )
        if first is not None:
            raise first

    def _sort_out(
        self, deliveries: Sequence[Delivery]
    ) -> tuple[list[RedisDelivery], TransportError | None]:
        """This transport's deliveries, in the one global order their locks are taken in
        (so that two calls cannot deadlock), after acking the others by their own
        ``ack()``; and the first error of those acks."""
        ours: dict[int, RedisDelivery] = {}
        first: TransportError | None = None
        for delivery in deliveries:
            if isinstance(delivery, RedisDelivery) and delivery._transport is self._transport:
                ours[id(delivery)] = delivery
            else:
                try:
                    delivery.ack()
                except TransportError as exc:
                    first = first or exc
        return sorted(ours.values(), key=lambda d: (d.delivery_tag, id(d))), first

    @staticmethod
    def _write_locked(
        ours: list[RedisDelivery], write: Write, *, strict: bool
    ) -> tuple[list[RedisDelivery], list[RedisDelivery]]:
        """Under the locks of ``ours``: the ones settled already (stale), and the ones
        ``write`` acknowledged, now marked acked (none if ``strict`` and any is stale)."""
        stale: list[RedisDelivery] = []
        acked: list[RedisDelivery] = []
        taken: list[RedisDelivery] = []
        try:
            for delivery in ours:
                delivery._lock.acquire()
                taken.append(delivery)
            stale = [d for d in ours if d._settled is not None]
            if not (strict and stale):
                pending = [d for d in ours if d._settled is None]
                kept = {id(d) for d in write(pending)}
                acked = [d for d in pending if id(d) not in kept]
                for delivery in acked:
                    delivery._settled = "acked"
        finally:
            for delivery in taken:
                delivery._lock.release()
        return stale, acked

    def _dead_letter(self, delivery: RedisDelivery, reason: str) -> None:
        """Move the entry Redis holds for ``delivery`` to ``<queue>.dead`` (``DEAD_LETTER``:
        the consumer keeps no copy of it).

        Raises:
            TransportError: the delivery is not recorded any more (its lease ran out and
                it was restored to its queue, so it comes back); it is marked settled.
        """
        db = self._db
        call = scripts.dead_letter(db.keys, delivery.delivery_tag, queue=delivery.queue,
                                   reason=reason, at=time.time(),
                                   entry_size=delivery.entry_size)
        with db.errors("dead-letter"):
            moved = db.commands.script(call)
        if not moved:
            delivery._settled = "lost its lease"
            self._leases.release(delivery)
            raise TransportError(
                f"cannot dead-letter {delivery.delivery_tag}: its lease ran out and the "
                "message was restored to its queue (it will be delivered again)",
                url=db.url,
            )
