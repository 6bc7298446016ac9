"""``RedisDelivery``: a message received from Redis, with the handle that settles it."""

from __future__ import annotations

from wiretask.protocol.frame import Frame
from wiretask.transports.base import Delivery, Transport

__all__ = ["RedisDelivery"]


class RedisDelivery(Delivery):
    """A message received from Redis; settle it with ``ack``/``reject``/``dead_letter``."""

    def __init__(
        self, transport: Transport, *, frame: Frame, queue: str, redelivered: bool,
        delivery_tag: str, entry: str, exchange: str, routing_key: str,
    ) -> None:
        super().__init__(transport, frame, queue, redelivered)
        #: Kombu's ``properties.delivery_tag``: the field in ``unacked`` and ``unacked_index``.
        self.delivery_tag = delivery_tag
        #: The list entry text as received.
        self.entry = entry
        self.exchange = exchange
        self.routing_key = routing_key
