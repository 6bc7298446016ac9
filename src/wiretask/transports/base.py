"""The transport contract: what a broker implements, and what every broker may offer.

A transport moves ``Frame`` values between processes. It never decodes a body; it knows
queues, routes, delivery times and priorities, and nothing about tasks. The calling API
(publish, with its retry policy) and the worker (receive, ack) sit on top of it.

**Two layers.** The public methods of ``Transport`` (``declare_queue``, ``publish``,
``publish_many``, ``receive``, ``receive_many``, ``ack_many``, ``ack_and_receive``) and
of ``Delivery`` (``ack``, ``reject``, ``dead_letter``) are concrete here: they check
their arguments once (queue names, timeout, limit, ``Frame`` and ``Route`` types, an
aware ``not_before``, the priority against ``capabilities``) and keep the settle-once
rule, then call small protected *hooks* that a broker implements:

=============================== ========= ==========================================
hook                            required  default
=============================== ========= ==========================================
``connect()`` / ``close()``     yes       (public; nothing to check)
``_publish(messages)``          yes       (one hook for one message and for batches)
``_receive(queues, timeout)``   yes
``_settle(delivery, how, why)`` yes
``_declare(queue)``             no        nothing (brokers without declarations)
``_receive_many(...)``          no        ``_receive`` in a loop
``_ack_many(deliveries)``       no        ``Delivery.ack`` of each
``_ack_and_receive(...)``       no        ``_ack_many``, then ``_receive_many``
=============================== ========= ==========================================

A hook is called only with checked values (a non-empty list of non-empty queue names, a
finite timeout >= 0, a limit >= 1, ``Prepared`` messages), so a transport author never
calls a validation helper. ``docs/writing-a-transport.md`` walks through writing one.

**Optional capabilities** are separate typed protocols at the end of this module
(``QueueAdmin``, ``Inspection``, ``QueueStatistics``, ``BrokerDelay``,
``FusedSettlement``, ``Broadcast``): a transport offers one by having its methods, and
the worker, the CLI and the conformance kit detect it with ``isinstance`` (never
``getattr``).

Rules every transport follows (``wiretask.testing.check_transport`` checks them):

* **Errors are translated at this boundary.** A driver exception never escapes: a lost,
  refused or timed-out connection becomes ``ConnectionLost`` (recoverable, so the publish
  retry policy may reconnect and try again); anything else becomes ``TransportError``.
  The original is chained with ``from``. URLs in messages never contain a password.
* **At least once.** A received message stays owned by its ``Delivery`` until ``ack()``,
  ``reject()`` or ``dead_letter()``. If the consumer dies first, the message comes back
  (with ``redelivered=True``). A message that is still being worked on is never handed
  to a second consumer.
* **Delayed delivery.** A message published with ``not_before`` is not delivered before
  that time. Transports with ``capabilities.native_delay`` hold it broker-side.
* **Nothing is lost.** ``Delivery.dead_letter(reason)`` moves a message that cannot be
  processed to the transport's dead-letter place, with the reason (where
  ``QueueAdmin.dead_letters()`` can read it back, if the transport offers it).
"""

from __future__ import annotations

import abc
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Literal,
    NamedTuple,
    Protocol,
    Self,
    final,
    runtime_checkable,
)

import attrs

from wiretask.errors import TransportError, ValidationError
from wiretask.protocol.frame import Frame, Outgoing, Route

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState
    from wiretask.transports.aio import AsyncTransport

__all__ = [
    "BoundQueue",
    "Broadcast",
    "BrokerDelay",
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "Exchange",
    "FusedSettlement",
    "Inbox",
    "Inspection",
    "Peeked",
    "Prepared",
    "QueueAdmin",
    "QueueStatistics",
    "QueueStats",
    "Settlement",
    "Transport",
    "check_broadcast",
    "check_listen",
    "check_wait",
    "prepare",
    "prepare_many",
    "queue_name",
    "queue_names",
    "routes_to",
    "topic_matches",
]


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a transport can do. The calling API validates options against it (a priority
    outside ``0..max_priority`` is refused before anything is sent)."""

    #: The broker holds delayed messages itself (no consumer holds them unacked):
    #: ``publish(not_before=...)`` waits broker-side, and the worker hands an early
    #: message back that way instead of holding it.
    native_delay: bool
    #: Per-message priorities are honoured.
    priorities: bool
    #: ``"higher-first"`` (AMQP: 9 beats 0) or ``"lower-first"`` (Kombu's Redis: 0 beats 9).
    priority_order: Literal["higher-first", "lower-first"] = "higher-first"
    #: Largest priority value accepted (0 is always the smallest).
    max_priority: int = 9
    #: What ``publish`` does with an int priority outside ``0..max_priority``:
    #: ``"refuse"`` it (``ValidationError``), or ``"clamp"`` it into the range for
    #: delivery order while the frame keeps its value, as Kombu's Redis transport does
    #: (a worker re-publishing a Celery frame with priority 15 must not fail there).
    out_of_range_priority: Literal["refuse", "clamp"] = "refuse"
    #: The broker drops messages whose ``expiration`` property (ms) has passed.
    per_message_ttl: bool = False
    #: Unacked messages of a dead consumer come back after this many seconds
    #: (``None``: they come back when the broker notices the consumer is gone).
    visibility_timeout: float | None = None
    #: Several processes can share the broker (False only for in-process transports).
    multi_process: bool = True
    #: Whether the calling API sends an eta through ``native_delay`` (``not_before``).
    #: False where the peers on the broker expect Celery's own form (the ``eta`` header,
    #: deliverable at once, held by the consumer): AMQP classic queues, on which Celery
    #: does not use its delay ladder. The worker still hands early messages back.
    native_delay_on_send: bool = True


@attrs.frozen(kw_only=True)
class DeadLetter:
    """A message that could not be processed, with the reason. ``frame`` is ``None`` when
    the raw entry could not even be read as a frame (then ``raw`` holds its bytes)."""

    queue: str
    reason: str
    frame: Frame | None = None
    raw: bytes | None = None
    #: Unix time at which the message was dead-lettered.
    at: float = 0.0


@attrs.frozen(kw_only=True)
class Peeked:
    """A message seen by ``Inspection.peek`` without being consumed."""

    frame: Frame
    queue: str
    #: ``"ready"`` (deliverable now) or ``"scheduled"`` (waiting for ``not_before``).
    state: Literal["ready", "scheduled"]
    not_before: datetime | None = None


def _count_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(
            attribute.name, f"must be an int >= 0 or None, got {value!r}", value=value
        )


def _time_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ValidationError(
            attribute.name, f"must be a finite Unix time or None, got {value!r}", value=value
        )


@attrs.frozen(kw_only=True)
class QueueStats:
    """The numbers of one queue at one instant, read by ``QueueStatistics.queue_stats``.

    Every number is exact, read from the broker's own counters and indexes. ``None``
    means the broker cannot tell that number (it never stands for zero); each transport
    says in its docstring which numbers it gives. Times are Unix seconds.
    """

    queue: str = attrs.field()
    #: When the numbers were read (the reader's clock; ages are measured against it).
    at: float = attrs.field(validator=_time_or_none)
    #: Messages a consumer could take now (not in flight, not waiting for a time).
    ready: int = attrs.field()
    #: Messages the broker holds until their ``not_before``.
    scheduled: int | None = attrs.field(default=None, validator=_count_or_none)
    #: When the first scheduled message falls due (``None`` when none is scheduled).
    next_due: float | None = attrs.field(default=None, validator=_time_or_none)
    #: Messages delivered to a consumer and not settled yet.
    in_flight: int | None = attrs.field(default=None, validator=_count_or_none)
    #: Dead letters kept for this queue.
    dead: int | None = attrs.field(default=None, validator=_count_or_none)
    #: Since when the longest-waiting ready message has been ready: the later of its
    #: publish time and its ``not_before``. ``None`` when nothing is ready, or (with
    #: ``ready > 0``) when the broker cannot tell. Which message counts is the
    #: transport's to say (the exact oldest, or the oldest of the heads of its
    #: priority lanes, which in a FIFO lane is the same message).
    oldest_ready_at: float | None = attrs.field(default=None, validator=_time_or_none)
    #: Totals since the broker started counting (monotonic, for rates): messages
    #: published to the queue, deliveries to consumers (redeliveries included), acks,
    #: and dead letters. ``None`` where the broker keeps no such counter.
    published: int | None = attrs.field(default=None, validator=_count_or_none)
    delivered: int | None = attrs.field(default=None, validator=_count_or_none)
    acked: int | None = attrs.field(default=None, validator=_count_or_none)
    dead_lettered: int | None = attrs.field(default=None, validator=_count_or_none)

    @queue.validator
    def _check_queue(self, attribute: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str) or not value:
            raise ValidationError("queue", f"must be a non-empty string, got {value!r}")

    @ready.validator
    def _check_ready(self, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationError("ready", f"must be an int >= 0, got {value!r}", value=value)

    def __attrs_post_init__(self) -> None:
        if self.ready == 0 and self.oldest_ready_at is not None:
            raise ValidationError(
                "oldest_ready_at", "must be None when no message is ready",
                value=self.oldest_ready_at,
            )
        if self.scheduled == 0 and self.next_due is not None:
            raise ValidationError(
                "next_due", "must be None when no message is scheduled", value=self.next_due
            )

    @property
    def oldest_age(self) -> float | None:
        """Seconds the longest-waiting ready message has been ready (``at`` minus
        ``oldest_ready_at``, never below 0), or ``None`` (see ``oldest_ready_at``)."""
        if self.oldest_ready_at is None:
            return None
        return max(0.0, self.at - self.oldest_ready_at)

    @property
    def waiting(self) -> int | None:
        """Ready plus scheduled: what ``QueueAdmin.size`` counts (``None`` if the
        scheduled number is unknown)."""
        return None if self.scheduled is None else self.ready + self.scheduled


class Prepared(NamedTuple):
    """A message checked by ``publish``/``publish_many``, as the ``_publish`` hook gets it.

    A named tuple rather than an attrs class: one is built per message on the publish
    hot path, and a tuple costs a fraction of a validating constructor.
    """

    frame: Frame
    route: Route
    #: Where the message lands on a broker without exchange bindings (memory, SQLite):
    #: on the default exchange (``""``) the queue named by the routing key, as AMQP
    #: does; on a named exchange the route's queue, which is the queue Celery would have
    #: declared and bound to that exchange under its own name. A non-empty string.
    queue: str
    #: The ``priority`` property: 0 when unset, else an int within
    #: ``0..capabilities.max_priority`` (clamped into it when the transport says so).
    priority: int
    #: The aware datetime before which the message must not be delivered, or ``None``.
    not_before: datetime | None
    #: ``not_before`` as a Unix timestamp (``None`` without one).
    due: float | None


#: How a delivery is settled: the ``how`` argument of ``Transport._settle``.
Settlement = Literal["ack", "reject", "requeue", "dead_letter"]

_VERB: Final[dict[str, str]] = {
    "ack": "ack", "reject": "reject", "requeue": "requeue", "dead_letter": "dead-letter",
}
_OUTCOME: Final[dict[str, str]] = {
    "ack": "acked", "reject": "rejected", "requeue": "requeued", "dead_letter": "dead-lettered",
}


class Delivery:
    """A received message and the right to settle it. Exactly one of ``ack``, ``reject``
    or ``dead_letter`` takes effect; settling twice raises ``TransportError``.

    The settle-once rule lives here: each verb takes this delivery's lock, refuses if it
    was settled already, and hands the work to its transport's ``_settle`` hook; only if
    that returns is the delivery settled. A transport subclasses ``Delivery`` to carry
    its handle (a row id, a delivery tag) and builds one per received message.

    Args:
        transport: the transport whose ``_settle`` settles it.
        frame: the message.
        queue: the queue it was received from.
        redelivered: it was delivered before and not acked (crash, requeue).
    """

    frame: Frame
    queue: str
    #: True if this message was delivered before and not acked (crash, requeue).
    redelivered: bool

    def __init__(
        self, transport: Transport, frame: Frame, queue: str, redelivered: bool
    ) -> None:
        self.frame = frame
        self.queue = queue
        self.redelivered = redelivered
        self._transport = transport
        self._lock = threading.Lock()
        #: Why this delivery can no longer be settled (``"acked"``, ``"returned to the
        #: queue when its transport closed"``), or None while it can. Set under
        #: ``_lock``: by the verbs, by a transport's ``close()`` that gives the message
        #: back, or by a ``_settle`` hook that finds the message is no longer this
        #: delivery's to settle (a lapsed lease) just before it raises.
        self._settled: str | None = None

    def ack(self) -> None:
        """The message was processed: remove it for good.

        Raises:
            TransportError: settled already, or the broker refused.
            ConnectionLost: the broker cannot be reached; the delivery stays unsettled
                (ack again later, or the message comes back).
        """
        self._settle_once("ack")

    def reject(self, *, requeue: bool = False) -> None:
        """Give the message up. ``requeue=True`` makes it deliverable again (marked
        redelivered); ``requeue=False`` drops it.

        Raises:
            TransportError: settled already, or the broker refused.
            ConnectionLost: the broker cannot be reached; the delivery stays unsettled.
        """
        self._settle_once("requeue" if requeue else "reject")

    def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter place with ``reason``.

        Raises:
            ValidationError: ``reason`` is not a non-empty string (nothing is settled).
            TransportError: settled already, or the broker refused.
            ConnectionLost: the broker cannot be reached; the delivery stays unsettled.
        """
        if not isinstance(reason, str) or not reason:
            raise ValidationError("reason", f"must be a non-empty string, got {reason!r}")
        self._settle_once("dead_letter", reason)

    def _settle_once(self, how: Settlement, reason: str = "") -> None:
        with self._lock:
            if self._settled is not None:
                raise TransportError(
                    f"cannot {_VERB[how]} a delivery that was already {self._settled} "
                    f"(queue {self.queue!r}, task {self.frame.task_id!r})",
                    url=self._transport.url,
                )
            self._transport._settle(self, how, reason)
            self._settled = _OUTCOME[how]

    def _give_back(self, why: str, action: Callable[[], object]) -> bool:
        """For a transport's ``close()``: if this delivery is still unsettled, run
        ``action`` (which returns the message to its queue) and mark the delivery with
        ``why``; return whether it was unsettled. If ``action`` raises, the delivery
        stays unsettled and the error propagates."""
        with self._lock:
            if self._settled is not None:
                return False
            action()
            self._settled = why
            return True

    def __repr__(self) -> str:
        state = self._settled or "unsettled"
        return (
            f"<{type(self).__name__} queue={self.queue!r} task_id={self.frame.task_id!r} {state}>"
        )


class Transport(abc.ABC):
    """A connection to one broker. Instances are safe to use from several threads.

    ``url`` is the broker URL with any password masked; ``capabilities`` says what the
    broker can do (a class or instance attribute). Construction does no I/O;
    ``connect()`` does (and the hooks may connect lazily when needed).
    """

    url: str
    capabilities: Capabilities

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a transport from its broker URL (what ``transport_from_url`` calls).
        The default passes the URL as the first argument; transports whose constructor
        takes parsed values override it.

        Raises:
            ImproperlyConfigured: a URL or option the transport does not accept.
        """
        # The interface declares no constructor, so type the call through Callable.
        construct: Callable[..., Self] = cls
        return construct(url, **options)

    #: Celery settings (``app.conf`` names) this transport turns into options
    #: (``options_from_settings``); the app refuses a setting that only another broker
    #: honours (``wiretask.config.BROKER_ONLY``) unless it is named here.
    honoured_settings: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def options_from_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The options that Celery's settings (``app.conf``) mean for this broker, for
        ``from_url``; the app puts ``broker_transport_options`` over them. The default:
        none.

        Raises:
            ImproperlyConfigured: a setting's value this broker cannot honour (named).
        """
        del settings
        return {}

    # -- life cycle (public, implemented by each broker) ------------------------------

    @abc.abstractmethod
    def connect(self) -> None:
        """Open (or re-open) the connection. The publish retry policy calls it before
        trying again after a ``ConnectionLost``.

        Raises:
            ConnectionLost: the broker cannot be reached (recoverable).
            TransportError: any other failure (bad credentials, an unusable broker).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection. Unsettled deliveries held by this transport become
        deliverable again (``redelivered``), and settling them afterwards raises
        ``TransportError``. Idempotent; a broker that cannot be reached is not an
        error here (its messages come back by the broker's own rules)."""

    def async_twin(self) -> AsyncTransport:
        """This transport's asyncio twin (``wiretask.transports.aio``), for the asyncio
        calling API, which makes one per event loop from a fresh transport. The twin owns
        this transport (closing it closes this one). The default runs the hooks in a
        thread of the twin's own; a broker with an asyncio driver returns a native twin,
        an in-process one runs its hooks inline."""
        from wiretask.transports.aio import ThreadedTransport  # noqa: PLC0415 - its base

        return ThreadedTransport.around(self)

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- producing --------------------------------------------------------------------

    @final
    def declare_queue(self, queue: str) -> None:
        """Make sure ``queue`` exists (a no-op where queues need no declaration).

        Raises:
            ValidationError: ``queue`` is not a non-empty string.
            ConnectionLost: the broker cannot be reached (recoverable).
            TransportError: any other broker failure.
        """
        self._declare(queue_name(queue))

    @final
    def publish(self, frame: Frame, route: Route, *, not_before: datetime | None = None) -> None:
        """Send one message. With ``not_before`` (aware datetime) it must not be
        delivered before that time.

        Raises:
            ValidationError: not a ``Frame`` or ``Route``, an empty queue name, a naive
                ``not_before``, or a priority that is not an int within
                ``0..capabilities.max_priority`` (unless the transport clamps).
            EncodeError: the broker cannot carry a header or property value.
            ConnectionLost: recoverable; the publish retry policy may retry (with the
                same ``frame`` object: brokers that can tell a retry use that).
            TransportError: not recoverable.
        """
        self._publish((prepare(self.capabilities, frame, route, not_before),))

    @final
    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Send several messages, in order, in as few round trips as the broker allows.
        Every message is checked before any is sent; an empty batch sends nothing.

        Raises:
            ValidationError: an entry that is not an ``Outgoing``, or as ``publish``
                (nothing is sent).
            EncodeError, ConnectionLost, TransportError: as ``publish``; whether part
                of the batch was sent depends on the broker (``_publish`` says).
        """
        prepared = prepare_many(self.capabilities, messages)
        if prepared:
            self._publish(prepared)


    # -- consuming --------------------------------------------------------------------

    @final
    def receive(self, queues: Sequence[str], *, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for a message from any of ``queues`` (in
        priority order, then FIFO). Returns ``None`` when nothing arrived in time.

        Raises:
            ValidationError: no queue, an empty queue name, or a timeout that is not a
                finite number >= 0.
            ConnectionLost: the broker cannot be reached (reconnect and receive again).
            TransportError: any other broker failure.
        """
        return self._receive(queue_names(queues, required=True), _timeout(timeout))

    @final
    def receive_many(
        self, queues: Sequence[str], *, limit: int, timeout: float
    ) -> Sequence[Delivery]:
        """Up to ``limit`` messages from ``queues``: the ones ``limit`` consecutive
        ``receive`` calls would return, in that order. Waits up to ``timeout`` seconds
        for the first one and never for more; returns an empty list when nothing
        arrived in time.

        Raises:
            ValidationError: as ``receive``, or ``limit`` is not an int >= 1.
            ConnectionLost, TransportError: as ``receive``, when nothing was taken
                (what was taken is returned; the error shows again on the next call).
        """
        return self._receive_many(
            queue_names(queues, required=True), _limit(limit), _timeout(timeout)
        )

    @final
    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge several deliveries, each as its own ``ack()`` would, in as few
        round trips as the broker allows. Every one is tried; the first failure is
        raised after that.

        Raises:
            ValidationError: an entry that is not a ``Delivery`` (nothing is acked).
            TransportError: one was settled already, or the broker refused.
            ConnectionLost: the broker cannot be reached; what was not acked stays
                unsettled (ack it again later).
        """
        self._ack_many(_deliveries(deliveries))

    @final
    def ack_and_receive(
        self, deliveries: Sequence[Delivery], queues: Sequence[str], *, limit: int
    ) -> Sequence[Delivery]:
        """Acknowledge ``deliveries`` (as ``ack_many``), then take up to ``limit``
        messages from ``queues`` without waiting (as ``receive_many`` with timeout 0): a
        consumer that finished some messages and has room for more, in as few round
        trips as the broker allows. If the acknowledgement fails, it raises and takes
        nothing.

        Raises:
            ValidationError: as ``ack_many`` and ``receive_many`` (nothing is done).
            ConnectionLost, TransportError: as ``ack_many``; nothing was taken.
        """
        return self._ack_and_receive(
            _deliveries(deliveries), queue_names(queues, required=True), _limit(limit)
        )

    # -- hooks: what a broker implements ------------------------------------------------

    def _declare(self, queue: str) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Hook of ``declare_queue`` (``queue`` is a non-empty string). The default does
        nothing, for brokers whose queues need no declaration.

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: any other broker failure.
        """

    @abc.abstractmethod
    def _publish(self, messages: Sequence[Prepared]) -> None:
        """Hook of ``publish`` (one message) and ``publish_many`` (one or more): send
        ``messages`` in order, each to ``message.queue`` (or through the broker's
        bindings for ``message.route``), not deliverable before ``message.due`` (a Unix
        time) when that is set, at ``message.priority``. Store them all or none where the
        broker can, and say in the docstring what happens otherwise.

        Raises:
            EncodeError: the broker cannot carry a header or property value (then nothing
                was sent).
            ConnectionLost: the broker cannot be reached; nothing is known to be sent.
            TransportError: any other broker failure.
        """

    @abc.abstractmethod
    def _receive(self, queues: list[str], timeout: float) -> Delivery | None:
        """Hook of ``receive``: the next message of ``queues`` (at least one non-empty
        name), waiting up to ``timeout`` seconds (finite, >= 0; 0 means "look once"),
        or ``None``. The message is held by the returned delivery until it is settled.

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: any other broker failure.
        """

    def _receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> Sequence[Delivery]:
        """Hook of ``receive_many`` (``limit`` >= 1). The default makes the ``_receive``
        calls that ``receive_many`` promises (the later ones with timeout 0); brokers
        that take several messages in one round trip override it.

        Raises:
            ConnectionLost, TransportError: as ``_receive``, and only when nothing was
                taken.
        """
        delivery = self._receive(queues, timeout)
        if delivery is None:
            return []
        taken = [delivery]
        while len(taken) < limit:
            try:
                delivery = self._receive(queues, 0.0)
            except Exception:
                # What was taken is held by this transport: hand it over, or it would
                # stay leased to nobody (its lease renewed for ever). The next call sees
                # the error again, if any; that includes a bug in a transport's hook.
                break
            if delivery is None:
                break
            taken.append(delivery)
        return taken

    @abc.abstractmethod
    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        """Hook of ``Delivery.ack/reject/dead_letter``: settle ``delivery`` (one this
        transport handed out and that is not settled yet; its lock is held).
        ``"ack"`` and ``"reject"`` remove the message, ``"requeue"`` makes it deliverable
        again (``redelivered``), ``"dead_letter"`` moves it to the dead-letter place with
        ``reason``. Return normally only if that happened.

        Raises:
            ConnectionLost: the broker cannot be reached (the delivery stays unsettled).
            TransportError: any other failure; if the message is no longer this
                delivery's to settle (its lease lapsed), set ``delivery._settled`` to
                say why before raising.
        """

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        """Hook of ``ack_many``. The default acknowledges them one by one with
        ``Delivery.ack`` (deliveries of another transport included), raising the first
        failure after trying all; brokers that ack several in one round trip override
        it, keeping the settle-once rule (``Delivery._lock``/``_settled``).

        Raises:
            TransportError: as ``ack_many``.
        """
        first: TransportError | None = None
        for delivery in deliveries:
            try:
                delivery.ack()
            except TransportError as exc:
                first = first or exc
        if first is not None:
            raise first

    def _ack_and_receive(
        self, deliveries: list[Delivery], queues: list[str], limit: int
    ) -> Sequence[Delivery]:
        """Hook of ``ack_and_receive``. The default is ``_ack_many`` then
        ``_receive_many`` with timeout 0.

        Raises:
            TransportError: as ``ack_and_receive``.
        """
        self._ack_many(deliveries)
        return self._receive_many(queues, limit, 0.0)


def prepare(
    capabilities: Capabilities, frame: Frame, route: Route, not_before: datetime | None
) -> Prepared:
    """Check one outgoing message against ``capabilities`` and lay it out for a
    ``_publish`` hook: what ``publish`` does for every transport, sync or asyncio
    (``wiretask.transports.aio``).

    Raises:
        ValidationError: as ``Transport.publish``.
    """
    # The one place where a message is checked on its way out (the publish hot path:
    # keep it to type checks and arithmetic).
    if not isinstance(frame, Frame):
        raise ValidationError("frame", f"must be a Frame, got {type(frame).__name__}")
    if not isinstance(route, Route):
        raise ValidationError("route", f"must be a Route, got {type(route).__name__}")
    queue = route.key if route.exchange == "" else route.queue
    if not isinstance(queue, str) or not queue:
        raise ValidationError("queue", f"queue names must be non-empty strings, got {queue!r}")
    priority = frame.properties.get("priority")
    if priority is None:
        priority = 0
    elif type(priority) is not int:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError(
                "priority", f"must be an int, got {priority!r}", value=priority
            )
        priority = int(priority)
    caps = capabilities
    if not 0 <= priority <= caps.max_priority:
        if caps.out_of_range_priority != "clamp":
            raise ValidationError(
                "priority", f"must be within 0..{caps.max_priority}, got {priority}",
                value=priority,
            )
        priority = min(max(priority, 0), caps.max_priority)
    due = None
    if not_before is not None:
        if not isinstance(not_before, datetime):
            raise ValidationError(
                "not_before", f"must be an aware datetime, got {not_before!r}",
                value=not_before,
            )
        if not_before.tzinfo is None or not_before.utcoffset() is None:
            raise ValidationError(
                "not_before", f"must be timezone-aware, got naive {not_before!r}",
                value=not_before,
            )
        due = not_before.timestamp()
    return Prepared(frame, route, queue, priority, not_before, due)


def prepare_many(capabilities: Capabilities, messages: Sequence[Outgoing]) -> list[Prepared]:
    """``prepare`` for each of ``messages`` (``Outgoing`` values): what ``publish_many``
    checks before sending anything.

    Raises:
        ValidationError: an entry that is not an ``Outgoing``, or as ``prepare``.
    """
    prepared = []
    for message in messages:
        if not isinstance(message, Outgoing):
            raise ValidationError(
                "messages", f"must hold Outgoing values, got {type(message).__name__}"
            )
        prepared.append(prepare(capabilities, message.frame, message.route, message.not_before))
    return prepared


def queue_name(queue: object) -> str:
    """Check one queue name (what ``declare_queue`` does).

    Raises:
        ValidationError: not a non-empty string.
    """
    if not isinstance(queue, str) or not queue:
        raise ValidationError("queue", f"queue names must be non-empty strings, got {queue!r}")
    return queue


def queue_names(queues: Iterable[str], *, required: bool = False) -> list[str]:
    """Check a list of queue names (non-empty strings) and return it as a list.

    Raises:
        ValidationError: a single string instead of a list, a name that is not a
            non-empty string, or no name at all when ``required``.
    """
    if isinstance(queues, str):  # list("celery") would be six queue names
        raise ValidationError("queues", f"must be a list of queue names, got the string {queues!r}")
    names = list(queues)
    if required and not names:
        raise ValidationError("queues", "at least one queue name is needed")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValidationError("queue", f"queue names must be non-empty strings, got {name!r}")
    return names


def _timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        math.isfinite(timeout) and timeout >= 0
    ):
        raise ValidationError("timeout", f"must be a number >= 0, got {timeout!r}")
    return float(timeout)


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError("limit", f"must be an int >= 1, got {limit!r}")
    return limit


def _deliveries(deliveries: Iterable[Delivery]) -> list[Delivery]:
    checked = list(deliveries)
    for delivery in checked:
        if not isinstance(delivery, Delivery):
            raise ValidationError(
                "deliveries", f"must hold Delivery values, got {type(delivery).__name__}"
            )
    return checked


# -- optional capabilities -------------------------------------------------------------
#
# What a transport may offer beyond the core contract. Each is a small protocol that the
# worker, the CLI and the conformance kit detect with ``isinstance`` (never ``getattr``),
# so a transport author sees what there is to implement and ``mypy`` checks the calls.
# A transport offers one by defining its methods (subclassing the protocol is optional).


@runtime_checkable
class QueueAdmin(Protocol):
    """Count, empty and read the dead letters of queues without consuming their
    messages: what ``wiretask purge`` and the counting part of ``wiretask queue show`` use.
    Every broker that can count offers it, AMQP included (which cannot ``peek``, so it
    offers this and not ``Inspection``). Each method refuses an empty queue name with
    ``ValidationError`` and translates broker errors as the core methods do."""

    def size(self, queue: str) -> int:
        """Number of messages waiting in ``queue``: ready and scheduled, not in flight
        (a transport that cannot count its scheduled messages per queue says so in its
        docstring: AMQP counts the ready ones).

        Raises:
            ValidationError: an empty queue name.
            ConnectionLost, TransportError: the broker failed.
        """
        ...

    def purge(self, queue: str) -> int:
        """Remove every waiting message of ``queue`` (not in-flight ones); return how many.

        Raises:
            ValidationError: an empty queue name.
            ConnectionLost, TransportError: the broker failed.
        """
        ...

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Messages dead-lettered from ``queue``, oldest first.

        Raises:
            ValidationError: an empty queue name.
            ConnectionLost, TransportError: the broker failed.
        """
        ...


@runtime_checkable
class Inspection(QueueAdmin, Protocol):
    """``QueueAdmin`` plus ``peek``: look at a queue's messages without consuming them,
    what ``wiretask queue show`` needs to list them. Brokers that cannot show messages
    without taking them from their consumers (AMQP) leave it out and offer
    ``QueueAdmin`` alone; the CLI then shows the counts and says why it lists no
    message."""

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        """Waiting messages of ``queue`` (ready first, then scheduled by time), without
        consuming them.

        Raises:
            ValidationError: an empty queue name, or ``limit`` not an int >= 0.
            ConnectionLost, TransportError: the broker failed.
        """
        ...


@runtime_checkable
class QueueStatistics(Protocol):
    """Exact numbers of queues without consuming anything: what ``wiretask stats``,
    ``wiretask queue show``, the Munin plugin and the Prometheus exporter read.

    Rules for an implementation:

    * **Exact, without walking the messages.** Numbers come from the broker's own
      counters and indexes (a list length, a sorted-set cardinality, an SQL ``COUNT``
      over an index, the head of a list), never from a loop over messages in Python:
      on Redis a queue of a million messages reads as fast as an empty one, on SQLite
      the index scan inside SQLite takes tens of milliseconds (``bench/queue_stats.py``;
      the numbers are in ``bench/README.md``).
    * **One instant per queue.** The numbers of one queue are read in one atomic step
      where the broker allows (a script, a read transaction, a lock), so that they add
      up; say so where they cannot.
    * **Unknown is None, never 0.** A broker that cannot tell a number returns ``None``
      for it: AMQP 0-9-1, whose passive ``queue.declare`` tells only the ready count
      (``message_count``), returns ``ready`` and ``None`` for the rest, and a broker
      that keeps no counters returns ``None`` for ``published``, ``delivered``,
      ``acked`` and ``dead_lettered``. The docstring of ``queue_stats`` says which
      numbers the transport gives and how it reads each.
    * A queue nobody has used reads as empty (all known numbers 0), not as an error.

    Each method refuses an empty queue name with ``ValidationError`` and translates
    broker errors as the core methods do.
    """

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """The numbers of each of ``queues``, in that order (one round trip where the
        broker allows).

        Raises:
            ValidationError: a single string instead of a list, or an empty queue name.
            ConnectionLost, TransportError: the broker failed.
        """
        ...


@runtime_checkable
class BrokerDelay(Protocol):
    """Delayed messages wait broker-side and someone must move them when due: the worker
    calls ``due()`` every half second (``wiretask scheduler`` does for fleets of other
    workers). Brokers that deliver due messages on their own leave it out."""

    def due(self) -> int:
        """Move delayed messages whose time has come into their queues; return how many.

        Raises:
            ConnectionLost, TransportError: the broker failed.
        """
        ...


@runtime_checkable
class FusedSettlement(Protocol):
    """The broker can write a task's result in the same atomic step that acknowledges
    its message, and take the next messages in that step too (Redis, with the result
    backend on the same database): one round trip per batch for the worker."""

    def stores_results_of(self, backend: object) -> bool:
        """Whether ``backend``'s results live where this transport can write them."""
        ...

    def store_ack_and_receive(
        self,
        results: Sequence[tuple[Delivery, PendingState]],
        deliveries: Sequence[Delivery],
        queues: Sequence[str],
        *,
        limit: int,
    ) -> tuple[Sequence[Delivery], list[int]]:
        """Write each of ``results`` (if its task has no state stored yet) and ack its
        delivery, ack ``deliveries``, and take up to ``limit`` messages (never waiting).
        Returns what was taken and the positions in ``results`` that were not written
        (a state was stored already): those deliveries stay unsettled, for the caller
        to store under the backend's full rules and then ack.

        Raises:
            ValidationError: no queue, or ``limit`` not an int >= 0.
            ConnectionLost: the broker cannot be reached; nothing is known to be written.
            TransportError: any other failure (a delivery settled already: nothing done).
        """
        ...


# -- broadcast: exchanges and transient queues ----------------------------------------
#
# Celery's remote control (Kombu's "pidbox": a fanout exchange every worker listens on,
# replies routed by a direct exchange to the caller's own queue) and its events (an
# exchange monitors bind to) are not task messages: nobody acknowledges them, they live
# in short-lived queues, and a message nobody listens for is gone. ``Broadcast`` is that
# part of a broker, in AMQP's terms so that an AMQP transport maps it one to one
# (``exchange_declare``, ``queue_declare`` with ``x-expires``/``x-message-ttl``,
# ``queue_bind``, ``basic_publish``, ``basic_consume`` without acks).


def _name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"must be a non-empty string, got {value!r}", value=value)
    return value


def _exchange_name(value: object) -> str:
    return _name("exchange", value)


def _queue_name(value: object) -> str:
    return _name("queue", value)


def _optional_seconds(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValidationError(field, f"must be a number of seconds > 0, got {value!r}",
                              value=value)
    return float(value)


def _expires(value: object) -> float | None:
    return _optional_seconds("expires", value)


def _message_ttl(value: object) -> float | None:
    return _optional_seconds("message_ttl", value)


@attrs.frozen(kw_only=True)
class Exchange:
    """A named exchange that broadcast messages are published to.

    ``type`` routes as AMQP does: ``fanout`` to every bound queue whatever the routing
    key, ``direct`` to the queues bound with exactly the routing key, ``topic`` to those
    whose binding key matches it (``*`` one word, ``#`` any number). ``durable`` is
    AMQP's exchange flag (an AMQP broker refuses a redeclaration that differs); brokers
    without declarations ignore it.

    Celery's: the control exchange ``celery.pidbox`` (fanout), the reply exchange
    ``reply.celery.pidbox`` (direct), the event exchange ``celeryev`` (topic on AMQP,
    fanout on Redis).

    Raises:
        ValidationError: an empty name or an unknown type.
    """

    name: str = attrs.field(converter=_exchange_name)
    type: Literal["fanout", "direct", "topic"] = "fanout"
    durable: bool = False

    def __attrs_post_init__(self) -> None:
        if self.type not in ("fanout", "direct", "topic"):
            raise ValidationError(
                "exchange_type", f"must be 'fanout', 'direct' or 'topic', got {self.type!r}",
                value=self.type,
            )


@attrs.frozen(kw_only=True)
class BoundQueue:
    """A transient queue to listen on, and how it is bound to its exchange.

    Attributes:
        name: the queue's name (Celery's control queue of a worker is
            ``<hostname>.celery.pidbox``, a caller's reply queue
            ``<oid>.reply.celery.pidbox``).
        binding_key: the binding's routing key: ignored by fanout exchanges, the exact
            key for direct ones, a pattern for topic ones.
        expires: seconds the queue may stay unused before the broker deletes it (AMQP's
            ``x-expires``; Celery's ``control_queue_expires``, 10 s). None: never.
        message_ttl: seconds a message may wait in the queue before it is dropped
            (``x-message-ttl``; Celery's ``control_queue_ttl``, 300 s). None: no limit.
        exclusive: only this connection may use the queue (AMQP's flag; Celery's
            control queues are exclusive).

    Raises:
        ValidationError: an empty name, or a time that is not a number > 0.
    """

    name: str = attrs.field(converter=_queue_name)
    binding_key: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    expires: float | None = attrs.field(default=None, converter=_expires)
    message_ttl: float | None = attrs.field(default=None, converter=_message_ttl)
    exclusive: bool = True


class Inbox(Protocol):
    """The messages arriving at one ``BoundQueue`` (``Broadcast.listen``). Used by one
    thread at a time; ``close`` may be called from any thread."""

    #: The bound queue's name.
    queue: str

    def get(self, timeout: float) -> Frame | None:
        """The next message, waiting up to ``timeout`` seconds (0: look once); None
        when nothing arrived in time. Messages come in the order they were sent.

        Raises:
            ValidationError: a timeout that is not a finite number >= 0.
            ConnectionLost: the broker cannot be reached (listen again: messages sent
                meanwhile may be lost, as broadcast messages are).
            TransportError: any other failure, or the inbox is closed.
        """
        ...

    def close(self) -> None:
        """Stop listening: delete the queue and its binding. Idempotent; never raises
        (an unreachable broker deletes it by itself after ``expires``)."""
        ...


@runtime_checkable
class Broadcast(Protocol):
    """Exchanges and transient queues, for messages that are not tasks: Celery's remote
    control (the pidbox: requests on a fanout exchange, replies on a direct one) and its
    events. Nothing is acknowledged and nothing is redelivered: a message reaches the
    queues bound when it is sent and nobody else (a broker that cannot route one drops
    it, as AMQP and Kombu do). Brokers that cannot broadcast leave it out; the control
    client and the worker then say so instead of pretending.

    ``spec/control.md`` says what each bundled broker puts on the wire.
    """

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        """Publish ``frame`` on ``exchange`` with ``routing_key``: it reaches every queue
        the exchange routes that key to at this moment (see ``Exchange``).

        Raises:
            ValidationError: not an ``Exchange`` or ``Frame``, or a routing key that is
                not a string.
            EncodeError: the broker cannot carry a header or property value.
            ConnectionLost: the broker cannot be reached (nothing is known to be sent).
            TransportError: any other failure (an exchange declared with another type).
        """
        ...

    def listen(self, exchange: Exchange, queue: BoundQueue) -> Inbox:
        """Declare ``queue``, bind it to ``exchange`` and return its inbox: every message
        routed to it from when this returns until the inbox is closed (or expires).

        Raises:
            ValidationError: not an ``Exchange`` or ``BoundQueue``.
            ConnectionLost: the broker cannot be reached.
            TransportError: any other failure.
        """
        ...


def check_broadcast(exchange: object, frame: object, routing_key: object) -> None:
    """The argument checks every ``Broadcast.broadcast`` makes first.

    Raises:
        ValidationError: as ``Broadcast.broadcast``.
    """
    if not isinstance(exchange, Exchange):
        raise ValidationError("exchange", f"must be an Exchange, got {type(exchange).__name__}")
    if not isinstance(frame, Frame):
        raise ValidationError("frame", f"must be a Frame, got {type(frame).__name__}")
    if not isinstance(routing_key, str):
        raise ValidationError("routing_key", f"must be a string, got {routing_key!r}",
                              value=routing_key)


def check_listen(exchange: object, queue: object) -> None:
    """The argument checks every ``Broadcast.listen`` makes first.

    Raises:
        ValidationError: as ``Broadcast.listen``.
    """
    if not isinstance(exchange, Exchange):
        raise ValidationError("exchange", f"must be an Exchange, got {type(exchange).__name__}")
    if not isinstance(queue, BoundQueue):
        raise ValidationError("queue", f"must be a BoundQueue, got {type(queue).__name__}")


def check_wait(timeout: object) -> float:
    """An inbox's ``get`` timeout, checked (a finite number >= 0).

    Raises:
        ValidationError: anything else.
    """
    return _timeout(timeout)


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP's topic rule: words are separated by ``.``; ``*`` in the binding key matches
    exactly one word, ``#`` zero or more."""
    return _topic(tuple(binding_key.split(".")), tuple(routing_key.split(".")))


def _topic(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _topic(rest, words[1:])


def routes_to(exchange: Exchange, binding_key: str, routing_key: str) -> bool:
    """Whether ``exchange`` routes a message with ``routing_key`` to a queue bound with
    ``binding_key`` (for brokers that route broadcast messages themselves)."""
    if exchange.type == "fanout":
        return True
    if exchange.type == "direct":
        return binding_key == routing_key
    return topic_matches(binding_key, routing_key)
