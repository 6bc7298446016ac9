"""``RedisDelivery``: a message received from Redis, with the handle that settles it."""

from __future__ import annotations

from wiretask.protocol.frame import Frame
from wiretask.transports.base import Delivery, Transport

__all__ = ["KEPT_ENTRY", "RedisDelivery"]

#: The largest list entry a delivery keeps a copy of (``RedisDelivery.entry``), in bytes.
KEPT_ENTRY = 64 * 1024


class RedisDelivery(Delivery):
    """A message received from Redis; settle it with ``ack``/``reject``/``dead_letter``."""

    def __init__(
        self, transport: Transport, *, frame: Frame, queue: str, redelivered: bool,
        delivery_tag: str, entry: str | None, entry_size: int, exchange: str,
        routing_key: str,
    ) -> None:
        super().__init__(transport, frame, queue, redelivered)
        #: Kombu's ``properties.delivery_tag``: the field in ``unacked`` and ``unacked_index``.
        self.delivery_tag = delivery_tag
        #: The list entry text as received; ``None`` for an entry over ``KEPT_ENTRY``
        #: bytes, which is not kept twice in memory (Redis holds it in ``unacked``, and
        #: a dead letter is moved from there).
        self.entry = entry
        #: The size in bytes of the list entry as received.
        self.entry_size = entry_size
        self.exchange = exchange
        self.routing_key = routing_key
