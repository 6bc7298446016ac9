"""The transport interface: the only thing a broker has to implement.

A transport moves ``Frame`` values between processes. It never decodes a body; it knows
queues, routes, delivery times and priorities, and nothing about tasks. The calling API
(publish, with its retry policy) and the worker (receive, ack) sit on top of it.

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
  processed to the transport's dead-letter place, with the reason, where
  ``dead_letters()`` can read it back.
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

import attrs

from wiretask.errors import DecodeError, EncodeError, TransportError, ValidationError
from wiretask.protocol.frame import Frame, Outgoing, Route

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState

__all__ = [
    "BrokerDelay",
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "FusedSettlement",
    "Inspection",
    "Peeked",
    "Settlement",
    "Transport",
    "TransportDelivery",
    "dump_json_mapping",
    "load_json_mapping",
    "not_before_timestamp",
    "priority_of",
    "queue_names",
    "receive_arguments",
    "receive_limit",
    "route_queue",
]


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a transport can do. The calling API validates options against it (a priority
    outside ``0..max_priority`` is refused before anything is sent)."""

    #: The broker holds delayed messages itself (no consumer holds them unacked).
    native_delay: bool
    #: Per-message priorities are honoured.
    priorities: bool
    #: ``"higher-first"`` (AMQP: 9 beats 0) or ``"lower-first"`` (Kombu's Redis: 0 beats 9).
    priority_order: Literal["higher-first", "lower-first"] = "higher-first"
    #: Largest priority value accepted (0 is always the smallest).
    max_priority: int = 9
    #: The broker drops messages whose ``expiration`` property (ms) has passed.
    per_message_ttl: bool = False
    #: Unacked messages of a dead consumer come back after this many seconds
    #: (``None``: they come back when the broker notices the consumer is gone).
    visibility_timeout: float | None = None
    #: Several processes can share the broker (False only for in-process transports).
    multi_process: bool = True


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
    """A message seen by ``Transport.peek`` without being consumed."""

    frame: Frame
    queue: str
    #: ``"ready"`` (deliverable now) or ``"scheduled"`` (waiting for ``not_before``).
    state: Literal["ready", "scheduled"]
    not_before: datetime | None = None


class Delivery(abc.ABC):
    """A received message and the right to settle it. Exactly one of ``ack``, ``reject``
    or ``dead_letter`` takes effect; settling twice raises ``TransportError``."""

    frame: Frame
    queue: str
    #: True if this message was delivered before and not acked (crash, requeue).
    redelivered: bool

    @abc.abstractmethod
    def ack(self) -> None:
        """The message was processed: remove it for good."""

    @abc.abstractmethod
    def reject(self, *, requeue: bool = False) -> None:
        """Give the message up. ``requeue=True`` makes it deliverable again (marked
        redelivered); ``requeue=False`` drops it."""

    @abc.abstractmethod
    def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter place with ``reason``."""


#: How a delivery was settled: the ``how`` argument of ``SettlingTransport._settle``.
Settlement = Literal["ack", "reject", "requeue", "dead_letter"]


class TransportDelivery(Delivery):
    """A ``Delivery`` that hands every settlement to its transport's ``_settle``.

    The embedded transports keep the settle rules (exactly once, what each verb does to
    the stored message) in one place on the transport; their deliveries only carry the
    frame and a handle. ``_settled`` holds why the delivery can no longer be settled
    (``None`` while it can); the transport sets it.
    """

    frame: Frame
    queue: str
    redelivered: bool
    _settled: str | None

    @abc.abstractmethod
    def _settle(self, how: Settlement, reason: str = "") -> None:
        """Settle through the transport (implemented by each transport's delivery)."""

    def ack(self) -> None:
        self._settle("ack")

    def reject(self, *, requeue: bool = False) -> None:
        self._settle("requeue" if requeue else "reject")

    def dead_letter(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason:
            raise ValidationError("reason", f"must be a non-empty string, got {reason!r}")
        self._settle("dead_letter", reason)

    def __repr__(self) -> str:
        state = self._settled or "unsettled"
        return (
            f"<{type(self).__name__} queue={self.queue!r} task_id={self.frame.task_id!r} {state}>"
        )


class Transport(abc.ABC):
    """A connection to one broker. Instances are safe to use from several threads.

    ``url`` is the broker URL with any password masked. Construction does no I/O;
    ``connect()`` does (and is called lazily by the other methods when needed).
    """

    url: str
    capabilities: Capabilities

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a transport from its broker URL (what ``transport_from_url`` calls).
        The default passes the URL as the first argument; transports whose constructor
        takes parsed values override it."""
        # The interface declares no constructor, so type the call through Callable.
        construct: Callable[..., Self] = cls
        return construct(url, **options)

    # -- life cycle -----------------------------------------------------------------

    @abc.abstractmethod
    def connect(self) -> None:
        """Open (or re-open) the connection.

        Raises:
            ConnectionLost: the broker cannot be reached (recoverable).
            TransportError: any other failure (bad credentials, bad URL).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection. Unsettled deliveries held by this transport become
        deliverable again. Idempotent."""

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

    # -- producing ------------------------------------------------------------------

    @abc.abstractmethod
    def declare_queue(self, queue: str) -> None:
        """Make sure ``queue`` exists (a no-op where queues need no declaration)."""

    @abc.abstractmethod
    def publish(self, frame: Frame, route: Route, *, not_before: datetime | None = None) -> None:
        """Send one message. With ``not_before`` (aware datetime) it must not be
        delivered before that time.

        Raises:
            ConnectionLost: recoverable; the publish retry policy may retry.
            TransportError: not recoverable.
        """

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Send several messages, in order, in as few round trips as the broker allows.
        The default sends them one by one; brokers with pipelines override it."""
        for message in messages:
            self.publish(message.frame, message.route, not_before=message.not_before)

    # -- consuming ------------------------------------------------------------------

    @abc.abstractmethod
    def receive(self, queues: Sequence[str], *, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for a message from any of ``queues`` (in
        priority order, then FIFO). Returns ``None`` when nothing arrived in time."""

    def receive_many(
        self, queues: Sequence[str], *, limit: int, timeout: float
    ) -> Sequence[Delivery]:
        """Up to ``limit`` messages from ``queues``: the ones ``limit`` consecutive
        ``receive`` calls would return, in that order. Waits up to ``timeout`` seconds
        for the first one and never for more; returns an empty list when nothing
        arrived in time. The default makes those ``receive`` calls (the later ones
        with timeout 0); brokers that can take several in one round trip override it."""
        limit = receive_limit(limit)
        delivery = self.receive(queues, timeout=timeout)
        if delivery is None:
            return []
        taken = [delivery]
        while len(taken) < limit:
            try:
                delivery = self.receive(queues, timeout=0)
            except TransportError:
                # What was taken is held by this transport: hand it over, or it would
                # stay leased to nobody. The next call sees the error again, if any.
                break
            if delivery is None:
                break
            taken.append(delivery)
        return taken

    def ack_and_receive(
        self, deliveries: Sequence[Delivery], queues: Sequence[str], *, limit: int
    ) -> Sequence[Delivery]:
        """Acknowledge ``deliveries`` (as ``ack_many``), then take up to ``limit``
        messages from ``queues`` without waiting (as ``receive_many`` with timeout 0): a
        consumer that finished some messages and has room for more, in as few round
        trips as the broker allows. If the acknowledgement fails, it raises and takes
        nothing. The default makes the two calls."""
        self.ack_many(deliveries)
        return self.receive_many(queues, limit=limit, timeout=0)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge several deliveries, each as its own ``ack()`` would, in as few
        round trips as the broker allows. Every one is tried; the first failure is
        raised after that. The default acknowledges them one by one."""
        first: TransportError | None = None
        for delivery in deliveries:
            try:
                delivery.ack()
            except TransportError as exc:
                first = first or exc
        if first is not None:
            raise first

    # -- inspecting and housekeeping ------------------------------------------------

    @abc.abstractmethod
    def size(self, queue: str) -> int:
        """Number of messages waiting in ``queue``: ready and scheduled, not in flight."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Remove every waiting message of ``queue`` (not in-flight ones); return how many."""

    @abc.abstractmethod
    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        """Waiting messages of ``queue`` (ready first, then scheduled by time), without
        consuming them."""

    @abc.abstractmethod
    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Messages dead-lettered from ``queue``, oldest first."""

    def due(self) -> int:
        """Move delayed messages whose time has come into their queues; return how many.
        Transports that deliver due messages on their own return 0 (the default)."""
        return 0


def receive_arguments(queues: Iterable[str], timeout: object) -> tuple[list[str], float]:
    """Validate ``Transport.receive``'s arguments: at least one queue name, and a finite
    ``timeout`` >= 0. Returns the queue names and the deadline (``time.monotonic()``)."""
    names = queue_names(queues)
    if not names:
        raise ValidationError("queues", "at least one queue name is needed")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        math.isfinite(timeout) and timeout >= 0
    ):
        raise ValidationError("timeout", f"must be a number >= 0, got {timeout!r}")
    return names, time.monotonic() + timeout


def receive_limit(limit: object) -> int:
    """Validate ``Transport.receive_many``'s ``limit``: an int >= 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError("limit", f"must be an int >= 1, got {limit!r}")
    return limit


def queue_names(queues: Iterable[str]) -> list[str]:
    """Validate a list of queue names (non-empty strings) and return it as a list."""
    names = list(queues)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValidationError("queue", f"queue names must be non-empty strings, got {name!r}")
    return names


def dump_json_mapping(field: str, value: Mapping[str, Any]) -> str:
    """Headers or properties as compact JSON text, for brokers that store them as JSON.

    Only values that JSON carries faithfully are accepted: ``str`` keys; ``str``,
    ``int``, finite ``float``, ``bool``, ``None``, lists/tuples (read back as lists) and
    string-keyed dicts as values. Anything else (``bytes``, ``datetime``, a set, an
    ``int`` key that ``json`` would quietly turn into ``"1"``, ``NaN``) raises, so a
    message is refused at publish instead of arriving different from what was sent.

    Raises:
        EncodeError: ``field`` is the path of the offending value (``headers['a'][2]``).
    """
    _check_json(field, value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def load_json_mapping(field: str, text: str | bytes) -> dict[str, Any]:
    """Read back what ``dump_json_mapping`` wrote.

    Raises:
        DecodeError: the text is not a JSON object.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DecodeError(field, f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError(field, f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_json(path: str, value: Any) -> None:
    # An explicit walk rather than json.dumps(default=...): json converts int/float/bool
    # keys to strings and has no hook for them, and the walk can name the exact path.
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodeError(path, f"{value!r} is not representable in JSON")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(f"{path}[{index}]", item)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodeError(
                    f"{path}[{key!r}]", f"keys must be strings, got {type(key).__name__}"
                )
            _check_json(f"{path}[{key!r}]", item)
        return
    raise EncodeError(
        path,
        f"a {type(value).__name__} value cannot be carried as JSON "
        "(use str, int, float, bool, None, lists and string-keyed dicts)",
    )


def priority_of(frame: Frame, capabilities: Capabilities) -> int:
    """The frame's ``priority`` property checked against ``capabilities``; 0 if unset.

    Raises:
        ValidationError: the priority is not an int within ``0..max_priority``.
    """
    value = frame.properties.get("priority")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("priority", f"must be an int, got {value!r}", value=value)
    if not 0 <= value <= capabilities.max_priority:
        raise ValidationError(
            "priority", f"must be within 0..{capabilities.max_priority}, got {value}", value=value
        )
    return value


def not_before_timestamp(not_before: datetime | None) -> float | None:
    """``not_before`` as a Unix timestamp (``None`` stays ``None``).

    Raises:
        ValidationError: a naive datetime (whose meaning would depend on the host's zone).
    """
    if not_before is None:
        return None
    if not isinstance(not_before, datetime):
        raise ValidationError(
            "not_before", f"must be an aware datetime, got {not_before!r}", value=not_before
        )
    if not_before.tzinfo is None or not_before.utcoffset() is None:
        raise ValidationError(
            "not_before", f"must be timezone-aware, got naive {not_before!r}", value=not_before
        )
    return not_before.timestamp()


def route_queue(route: Route) -> str:
    """The queue a message on ``route`` lands in, for brokers without exchange bindings
    (memory, SQLite): on the default exchange (``""``) the queue named by the routing key,
    as AMQP does; on a named exchange the route's queue, which is the queue Celery would
    have declared and bound to that exchange under its own name."""
    return route.key if route.exchange == "" else route.queue


# -- optional capabilities -------------------------------------------------------------
#
# What a transport may offer beyond the core contract. Each is a small protocol that the
# worker, the CLI and the conformance kit detect with ``isinstance`` (never ``getattr``),
# so a transport author sees what there is to implement and ``mypy`` checks the calls.


@runtime_checkable
class Inspection(Protocol):
    """Look at queues without consuming: what ``wiretask inspect`` and ``purge`` use.
    Brokers that cannot count or list without consuming (AMQP's dead letters) leave it
    out, and the CLI says so."""

    def size(self, queue: str) -> int:
        """Number of messages waiting in ``queue``: ready and scheduled, not in flight."""
        ...

    def purge(self, queue: str) -> int:
        """Remove every waiting message of ``queue`` (not in-flight ones); return how many."""
        ...

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        """Waiting messages of ``queue`` (ready first, then scheduled by time), without
        consuming them."""
        ...

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Messages dead-lettered from ``queue``, oldest first."""
        ...


@runtime_checkable
class BrokerDelay(Protocol):
    """Delayed messages wait broker-side and someone must move them when due: the worker
    calls ``due()`` every half second (``wiretask scheduler`` does for fleets of other
    workers)."""

    def due(self) -> int:
        """Move delayed messages whose time has come into their queues; return how many."""
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
            ConnectionLost: the broker cannot be reached; nothing is known to be written.
            TransportError: any other failure.
        """
        ...
