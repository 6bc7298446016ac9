"""A transport that forwards everything to another one, for tests and instrumentation."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from wiretask.errors import ValidationError
from wiretask.protocol.frame import Frame, Outgoing
from wiretask.transports.base import (
    BoundQueue,
    Broadcast,
    BrokerDelay,
    DeadLetter,
    Delivery,
    Exchange,
    FusedSettlement,
    Inbox,
    Inspection,
    Peeked,
    Prepared,
    QueueAdmin,
    QueueStatistics,
    QueueStats,
    Settlement,
    Transport,
)

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState

__all__ = ["ForwardedDelivery", "ForwardingTransport"]


class ForwardedDelivery(Delivery):
    """A delivery of a ``ForwardingTransport``: ``inner`` is the wrapped transport's.

    Every settlement goes through the wrapper's ``_settle`` hook (where a subclass can
    watch or fail it) to ``inner``, whose own settle-once rule applies: the inner
    delivery's state is this delivery's state.
    """

    def __init__(self, transport: ForwardingTransport, inner: Delivery) -> None:
        super().__init__(transport, inner.frame, inner.queue, inner.redelivered)
        self.inner = inner

    def _settle_once(self, how: Settlement, reason: str = "") -> None:
        self._transport._settle(self, how, reason)

    def __repr__(self) -> str:
        return f"<ForwardedDelivery of {self.inner!r}>"


class ForwardingTransport(Transport):
    """A transport that forwards everything to ``inner``: for tests and instrumentation.

    Subclass it and override a hook (``_publish``, ``_receive``, ``_receive_many``,
    ``_ack_many``, ``_ack_and_receive``, ``_settle``, ``_declare``), ``connect`` or
    ``close`` to watch or break one operation; call ``super()`` to forward it. The
    public methods check their arguments before any hook runs, as for every transport.

    It offers exactly the optional capabilities ``inner`` offers (``QueueAdmin``,
    ``Inspection``, ``QueueStatistics``, ``BrokerDelay``, ``FusedSettlement``,
    ``Broadcast``), forwarded too:
    ``__init__`` turns the instance into one of a subclass of its class that adds the
    forwarding methods of each (cached per class and set of capabilities), so
    ``isinstance(wrapper, Inspection)``
    is ``isinstance(inner, Inspection)``. A subclass may build ``inner`` in its own
    ``__init__``; its methods come first, so it can watch a capability method too and
    reach the forwarder with ``super()``.

    Deliveries are wrapped (``ForwardedDelivery``) so that single settlements reach
    ``_settle``; they are unwrapped on the way back to ``inner`` (``ack_many``, the
    fused path). ``url`` and ``capabilities`` are ``inner``'s.

    Args:
        inner: the transport to wrap (the first argument of every subclass too).

    Raises:
        ValidationError: ``inner`` is not a ``Transport``.
    """

    inner: Transport

    def __init__(self, inner: Transport) -> None:
        if not isinstance(inner, Transport):
            raise ValidationError(
                "inner", f"must be a Transport to forward to, got {type(inner).__name__}"
            )
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        offered: tuple[type[ForwardingTransport], ...] = ()
        for capability, mixin in _FORWARDERS:
            if isinstance(inner, capability) and not any(issubclass(m, mixin) for m in offered):
                offered += (mixin,)
        # Now that ``inner`` is known (a subclass may build it in its own __init__), this
        # instance becomes one of its class plus the forwarders of what ``inner`` offers.
        self.__class__ = _forwarding_class(type(self), offered)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.inner!r}>"

    def connect(self) -> None:
        self.inner.connect()

    def close(self) -> None:
        self.inner.close()

    def _declare(self, queue: str) -> None:
        self.inner.declare_queue(queue)

    def _publish(self, messages: Sequence[Prepared]) -> None:
        if len(messages) == 1:
            [one] = messages
            self.inner.publish(one.frame, one.route, not_before=one.not_before)
        else:
            self.inner.publish_many([Outgoing(m.frame, m.route, m.not_before) for m in messages])

    def _receive(self, queues: list[str], timeout: float) -> Delivery | None:
        delivery = self.inner.receive(queues, timeout=timeout)
        return None if delivery is None else ForwardedDelivery(self, delivery)

    def _receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> Sequence[Delivery]:
        taken = self.inner.receive_many(queues, limit=limit, timeout=timeout)
        return [ForwardedDelivery(self, d) for d in taken]

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        inner = self._unwrap(delivery)
        if how == "ack":
            inner.ack()
        elif how in ("reject", "requeue"):
            inner.reject(requeue=how == "requeue")
        else:
            inner.dead_letter(reason)

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        self.inner.ack_many([self._unwrap(d) for d in deliveries])

    def _ack_and_receive(
        self, deliveries: list[Delivery], queues: list[str], limit: int
    ) -> Sequence[Delivery]:
        taken = self.inner.ack_and_receive(
            [self._unwrap(d) for d in deliveries], queues, limit=limit
        )
        return [ForwardedDelivery(self, d) for d in taken]

    def _unwrap(self, delivery: Delivery) -> Delivery:
        """The inner transport's delivery behind one of ours; others as they are."""
        if isinstance(delivery, ForwardedDelivery) and delivery._transport is self:
            return delivery.inner
        return delivery


class _ForwardQueueAdmin(ForwardingTransport):
    def size(self, queue: str) -> int:
        return cast(QueueAdmin, self.inner).size(queue)

    def purge(self, queue: str) -> int:
        return cast(QueueAdmin, self.inner).purge(queue)

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        return cast(QueueAdmin, self.inner).dead_letters(queue)


class _ForwardInspection(_ForwardQueueAdmin):
    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        return cast(Inspection, self.inner).peek(queue, limit=limit)


class _ForwardStatistics(ForwardingTransport):
    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        return cast(QueueStatistics, self.inner).queue_stats(queues)


class _ForwardDelay(ForwardingTransport):
    def due(self) -> int:
        return cast(BrokerDelay, self.inner).due()


class _ForwardFused(ForwardingTransport):
    def stores_results_of(self, backend: object) -> bool:
        return cast(FusedSettlement, self.inner).stores_results_of(backend)

    def store_ack_and_receive(
        self,
        results: Sequence[tuple[Delivery, PendingState]],
        deliveries: Sequence[Delivery],
        queues: Sequence[str],
        *,
        limit: int,
    ) -> tuple[Sequence[Delivery], list[int]]:
        taken, skipped = cast(FusedSettlement, self.inner).store_ack_and_receive(
            [(self._unwrap(d), pending) for d, pending in results],
            [self._unwrap(d) for d in deliveries], queues, limit=limit,
        )
        return [ForwardedDelivery(self, d) for d in taken], skipped


class _ForwardBroadcast(ForwardingTransport):
    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        cast(Broadcast, self.inner).broadcast(exchange, frame, routing_key=routing_key)

    def listen(self, exchange: Exchange, queue: BoundQueue) -> Inbox:
        return cast(Broadcast, self.inner).listen(exchange, queue)


#: (capability, the class that forwards it), in the order their names are shown. A
#: capability whose forwarder is already there through a larger one (``QueueAdmin``
#: through ``Inspection``) is not added again.
_FORWARDERS: tuple[tuple[type, type[ForwardingTransport]], ...] = (
    (Inspection, _ForwardInspection),
    (QueueAdmin, _ForwardQueueAdmin),
    (QueueStatistics, _ForwardStatistics),
    (BrokerDelay, _ForwardDelay),
    (FusedSettlement, _ForwardFused),
    (Broadcast, _ForwardBroadcast),
)
ForwardingTransportT = TypeVar("ForwardingTransportT", bound=ForwardingTransport)


_FORWARDING_CLASSES: dict[tuple[type, tuple[type, ...]], type] = {}
_FORWARDING_LOCK = threading.Lock()


def _forwarding_class(
    cls: type[ForwardingTransportT], mixins: tuple[type[ForwardingTransport], ...]
) -> type[ForwardingTransportT]:
    """``cls`` plus the forwarders of ``mixins`` (``cls`` itself without any); cached."""
    if not mixins:
        return cls
    with _FORWARDING_LOCK:
        made = _FORWARDING_CLASSES.get((cls, mixins))
        if made is None:
            names = ", ".join(
                capability.__name__ for capability, mixin in _FORWARDERS if mixin in mixins
            )
            # The forwarders subclass ForwardingTransport: listing it first as well
            # would leave no consistent method order.
            bases = mixins if cls is ForwardingTransport else (cls, *mixins)
            made = type(f"{cls.__name__}[{names}]", bases, {"__module__": cls.__module__})
            _FORWARDING_CLASSES[(cls, mixins)] = made
    return cast(type[ForwardingTransportT], made)
