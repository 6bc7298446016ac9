"""The result backend interface, and what every backend shares.

A result backend stores the meta dict of each task (``wiretask.protocol.states.make_meta``,
Celery's shape, ``spec/PROTOCOL.md`` §18.1), reads it back, and streams state changes of
one task to subscribers (``AsyncResult.get(on_message=...)``).

Rules every backend follows (``wiretask.testing.check_backend`` checks each of them, and
``DeferredStore`` when a backend offers it):

* **First final outcome wins.** A store is ignored when the stored state may not be
  followed by the new one (``states.may_follow``): once a task is ``SUCCESS``,
  ``FAILURE`` or ``REVOKED`` nothing replaces it until the result expires or is
  forgotten. Celery's key-value backends do this for ``SUCCESS`` only; wiretask for
  every ready state. The check and the write are atomic.
* **Results expire** ``expires`` seconds after the last store (Celery's
  ``result_expires``, default one day; ``None`` or ``0`` = never, as in Celery, which
  writes a plain ``SET`` when expiry is off). An expired result reads as unknown.
* **Subscriptions never miss the final state.** A subscription started before the task
  is published sees every state change. A *late* subscription first receives the
  current state, then every later change (Celery's late subscriber silently reads the
  current state and never passes it to ``on_message``; wiretask delivers it). Every
  stored state is delivered once, in store order; after a ready state the
  subscription is finished.
* **Errors are translated.** A driver exception never escapes: a lost connection is
  ``ConnectionLost``, anything else ``TransportError``, chained with ``from``; URLs in
  messages never contain a password.
* Meta dicts are **serialized with the result serializer** (``json`` by default, Kombu's
  dialect) by every backend, the in-memory one included, so a value that a Redis
  backend would refuse is refused everywhere.

``rpc://`` (``wiretask.results.rpc``) keeps no shared store: its states are messages to
the client that sent the task (``ReplyRouted``), and ``spec/TRANSPORTS.md`` §4.3 says
where these rules differ for it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    NamedTuple,
    Protocol,
    Self,
    runtime_checkable,
)

import attrs

# One masking rule for broker and backend URLs (passwords and secret query values).
from wiretask._url import mask_url
from wiretask.errors import DecodeError, ImproperlyConfigured, ValidationError

if TYPE_CHECKING:
    from wiretask.codecs import Encoded, Registry
    from wiretask.protocol.states import PendingState
    from wiretask.results.aio import AsyncResultBackend

__all__ = [
    "COMPRESSED_PAYLOAD_MAGIC",
    "DEFAULT_EXPIRES",
    "ChordCounter",
    "ChordProgress",
    "DeferredStore",
    "GroupStore",
    "MetaCodec",
    "ReplyRouted",
    "ResultBackend",
    "Subscription",
    "ViaBroker",
    "check_meta",
    "mask_url",
    "resolve_expires",
]

#: Celery's default ``result_expires``: one day (observed TTL 86400 on Redis).
DEFAULT_EXPIRES: Final = 86400.0

#: Celery 5.7 prefixes a compressed result (``result_compression``) with this marker,
#: then the compression MIME type and a NUL, then the compressed payload (§D).
COMPRESSED_PAYLOAD_MAGIC: Final = b"\x00celery-compressed\x00"


def resolve_expires(value: float | timedelta | None) -> float | None:
    """Normalize ``result_expires``: seconds as a float, or ``None`` for never.

    ``0`` means never, like Celery (its Redis backend writes ``SETEX`` only ``if
    expires``); a ``timedelta`` is taken in seconds.

    Raises:
        ImproperlyConfigured: a negative, infinite or NaN value, or a wrong type.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ImproperlyConfigured(
            f"result_expires must be seconds, a timedelta or None, got {value!r}",
            setting="result_expires",
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ImproperlyConfigured(
            f"result_expires must be >= 0 seconds, got {value!r}", setting="result_expires"
        )
    return seconds or None


def check_meta(task_id: str, meta: Mapping[str, Any]) -> str:
    """Validate a meta dict handed to ``ResultBackend.store`` and return its status.

    Raises:
        ValidationError: ``meta`` is not a mapping with a non-empty string ``status``
            and a ``task_id`` equal to ``task_id``.
    """
    if not isinstance(task_id, str) or not task_id:
        raise ValidationError("task_id", "must be a non-empty string", value=task_id)
    if not isinstance(meta, Mapping):
        raise ValidationError("meta", f"must be a mapping, got {type(meta).__name__}")
    status = meta.get("status")
    if not isinstance(status, str) or not status:
        raise ValidationError("meta.status", "must be a non-empty string", value=status)
    if meta.get("task_id") != task_id:
        raise ValidationError(
            "meta.task_id", f"must be {task_id!r} (build it with make_meta)",
            value=meta.get("task_id"),
        )
    return status


class MetaCodec:
    """Meta dict ⇄ stored bytes, with the result serializer of a codec registry.

    With ``compression`` (Celery 5.7's ``result_compression``) values are written as
    Celery 5.7 writes them: ``COMPRESSED_PAYLOAD_MAGIC + MIME + b"\\x00" + compressed``
    (§D); only Celery 5.7 and later read that. Reading undoes such a prefix whatever this
    side's own setting, as Celery does, through the registry's decompressors (so the
    registry's decompressed-size cap applies).
    """

    def __init__(
        self, registry: Registry, serializer: str = "json", compression: str | None = None
    ) -> None:
        """Resolve ``serializer`` (and ``compression``) in ``registry``.

        Raises:
            UnknownCodec: the registry has no such serializer or compressor.
        """
        self.registry = registry
        self.serializer = serializer
        self.compression = compression
        if compression is not None:
            registry.compressor(compression)
        # A probe resolves the name (and its aliases) to the content type that readers
        # of key-value stores need: Celery stores no content type next to the value.
        probe = registry.dumps({}, serializer)
        self.content_type: str = probe.content_type
        self.content_encoding: str = probe.content_encoding

    def encode(self, meta: Mapping[str, Any]) -> Encoded:
        """Serialize ``meta``.

        Raises:
            EncodeError: the result (or another field) cannot be serialized.
        """
        return self.encode_value(dict(meta))

    def encode_value(self, value: Any) -> Encoded:
        """Serialize any value as a result is (Celery's ``Backend.encode``: a saved
        group, a chord header task's entry).

        Raises:
            EncodeError: the value cannot be serialized.
        """
        encoded = self.registry.dumps(value, self.serializer, field="result")
        if self.compression is None:
            return encoded
        body, mime = self.registry.compress(encoded.data, self.compression)
        return attrs.evolve(
            encoded, data=b"".join([COMPRESSED_PAYLOAD_MAGIC, mime.encode("ascii"), b"\x00", body])
        )

    def decode(
        self,
        data: bytes | str,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> dict[str, Any]:
        """Deserialize stored bytes into a meta dict.

        Args:
            data: what the store holds (possibly Celery-compressed).
            content_type: the content type stored with it; the result serializer's
                when the store keeps none (Redis, as Celery).
            content_encoding: likewise.

        Raises:
            DecodeError: the bytes do not decode, or not to a meta dict with a string
                ``status``.
            ContentDisallowed: the content type is not in the registry's accept policy.
        """
        value = self.decode_value(data, content_type, content_encoding)
        if not isinstance(value, dict) or not isinstance(value.get("status"), str):
            raise DecodeError(
                "result", f"stored value is not a meta dict with a status: {type(value).__name__}"
            )
        return value

    def decode_value(
        self,
        data: bytes | str,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> Any:
        """Deserialize any stored value (see ``encode_value``).

        Raises:
            DecodeError: the bytes do not decode.
            ContentDisallowed: the content type is not in the registry's accept policy.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if raw.startswith(COMPRESSED_PAYLOAD_MAGIC):
            mime, sep, body = raw[len(COMPRESSED_PAYLOAD_MAGIC):].partition(b"\x00")
            if not sep:
                raise DecodeError("result", "compressed result without a content type")
            raw = self.registry.decompress(body, mime.decode("ascii", "replace"))
        return self.registry.loads(
            raw,
            content_type or self.content_type,
            content_encoding or (None if content_type else self.content_encoding),
        )


class Subscription(abc.ABC):
    """The state changes of one task, in order, from the moment of subscribing.

    A subscription first delivers the task's current state (if any is stored), then
    every later one, each once; after a ready state it is finished and ``next`` returns
    ``None`` at once. Use one subscription from one thread at a time.
    """

    #: True once a ready state was delivered.
    finished: bool = False

    @abc.abstractmethod
    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next meta dict, or ``None`` when ``timeout`` seconds pass without one
        (``None``: wait as long as it takes) or the subscription is finished.

        Raises:
            ConnectionLost: the backend connection was lost.
            TransportError: any other backend failure.
            DecodeError: a stored value does not decode.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening and free the resources. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ResultBackend(abc.ABC):
    """Stores, reads and streams task results. Instances are thread-safe.

    ``url`` is the backend URL with any password masked.
    """

    url: str
    #: Seconds a result is kept after its last store; ``None``: forever.
    expires: float | None
    codec: MetaCodec
    #: The backend sends states through the broker (``rpc://``): ``backend_from_url``
    #: gives it the app's broker (``ViaBroker``) as ``via=``.
    sends_through_broker: ClassVar[bool] = False

    @abc.abstractmethod
    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        """Store ``meta`` (from ``make_meta``) as the task's state and notify subscribers.

        Ignored when the stored state is final (see the module doc). Resets the result's
        expiry to ``expires`` seconds from now.

        Raises:
            ValidationError: ``meta`` is not a meta dict for ``task_id``.
            EncodeError: ``meta`` cannot be serialized with the result serializer.
            ConnectionLost, TransportError: the store failed.
        """

    def store_reply(
        self, task_id: str, meta: Mapping[str, Any], *, reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        """Store a state on behalf of a received task message, whose ``reply_to`` and
        ``correlation_id`` properties say where its sender listens: what the worker and
        ``Task.update_state`` call. A backend that keeps states in a shared store (every
        one but ``rpc://``) ignores the address and stores as ``store`` does; ``rpc://``
        sends the state there (``ReplyRouted``).

        Raises:
            as ``store``.
        """
        del reply_to, correlation_id
        self.store(task_id, meta)

    @abc.abstractmethod
    def get(self, task_id: str) -> dict[str, Any] | None:
        """The stored meta dict, or ``None`` if nothing is stored (the task reads as
        ``PENDING``) or the result expired.

        Raises:
            ConnectionLost, TransportError: the read failed.
            DecodeError: the stored value does not decode.
        """

    @abc.abstractmethod
    def forget(self, task_id: str) -> None:
        """Remove the stored result (a later store starts afresh).

        Raises:
            ConnectionLost, TransportError: the delete failed.
        """

    @abc.abstractmethod
    def subscribe(self, task_id: str) -> Subscription:
        """Start listening to the task's state changes (see ``Subscription``).

        Raises:
            ConnectionLost, TransportError: subscribing failed (a backend may instead
                report it from the subscription's first ``next``).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent; open subscriptions stop working, and what
        was stored stays stored."""

    def async_twin(self) -> AsyncResultBackend:
        """This backend's asyncio twin (``wiretask.results.aio``), for
        ``AsyncResult.aget()``/``astates()``; the app makes one per event loop from a
        fresh backend, which the twin owns (closing it closes this one). The default
        runs the methods in threads of the twin's own; the bundled backends return
        their own twins."""
        from wiretask.results.aio import ThreadedBackend  # noqa: PLC0415 - its base

        return ThreadedBackend(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


@runtime_checkable
class DeferredStore(Protocol):
    """Capability: a state can be checked and encoded now and written later, by the
    backend (``store_pending``) or by a broker that writes it in the step that acks the
    task's message (``transports.base.FusedSettlement``)."""

    def pending(self, task_id: str, meta: Mapping[str, Any]) -> PendingState:
        """Check and encode ``meta`` for ``task_id`` without writing it.

        Raises:
            ValidationError: a malformed meta dict.
            EncodeError: the result serializer refuses it.
        """
        ...

    def store_pending(self, pending: PendingState) -> None:
        """Write what ``pending`` prepared, under the rules of ``store``.

        Raises:
            ConnectionLost: the backend cannot be reached.
            TransportError: any other failure.
        """
        ...


@runtime_checkable
class GroupStore(Protocol):
    """Capability: group results stored by id (Celery's ``save_group``,
    ``restore_group``, ``delete_group``), for ``GroupResult.save``/``restore``. The
    value is ``{"result": <the group's result tuple>}``, serialized like a result; it
    expires like one. Every bundled backend has it (Redis in Celery's
    ``celery-taskset-meta-<group_id>`` key)."""

    def save_group(self, group_id: str, value: Mapping[str, Any]) -> None:
        """Store ``value`` under ``group_id`` (replacing what was there).

        Raises:
            EncodeError: the value cannot be serialized.
            ConnectionLost, TransportError: the store failed.
        """
        ...

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        """What ``save_group`` stored, or ``None``.

        Raises:
            DecodeError: the stored value does not decode to a mapping.
            ConnectionLost, TransportError: the read failed.
        """
        ...

    def delete_group(self, group_id: str) -> None:
        """Remove it (nothing happens if there is nothing).

        Raises:
            ConnectionLost, TransportError: the delete failed.
        """
        ...


class ChordProgress(NamedTuple):
    """Where a chord stands once a header task's part was counted."""

    #: Parts recorded so far (each header task once).
    ready: int
    #: The chord's size (``None``: not set, the chord is not counted here).
    size: int | None
    #: Celery's ``.t`` adjustment to the size (tasks added to the chord while it runs).
    diff: int
    #: This call, and no other, completed the chord and may send its body.
    claimed: bool

    @property
    def complete(self) -> bool:
        return self.size is not None and self.ready == self.size + self.diff


@runtime_checkable
class ChordCounter(Protocol):
    """Capability: the backend counts the header tasks of a chord itself, so that the
    worker running the last one sends the body (Celery's ``on_chord_part_return`` on
    its Redis backend). Backends without it are polled by ``celery.chord_unlock``
    instead, as Celery's are. See ``spec/PROTOCOL.md`` §19.4 for the Redis keys."""

    #: Seconds the chord's keys are kept (``result_chord_expires``, else the results').
    chord_expires: float | None

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Record the chord's size before its last header task is sent (a new run of
        a chord with the same group id starts afresh)."""
        ...

    def save_chord_header(self, group_id: str, value: Mapping[str, Any]) -> None:
        """Keep the header's result tuple (``{"result": ...}``) when it nests groups,
        so the body gets their results in their structure."""
        ...

    def add_chord_part(
        self, group_id: str, task_id: str, index: int | None, part: bytes,
        *, claim_seconds: int, token: str,
    ) -> ChordProgress | None:
        """Count one header task's outcome (``part``: the encoded ``[1, task_id, state,
        result]``) at its ``index``, once per task and index. When that completes the
        chord, claim the right to send the body for ``claim_seconds`` under ``token``.
        ``None`` when the chord was already finished."""
        ...

    def chord_parts(self, group_id: str) -> list[bytes]:
        """The recorded parts, in header order."""
        ...

    def extend_chord_claim(self, group_id: str, token: str, seconds: int) -> bool:
        """Keep the claim (or take it again if it lapsed and the chord is unfinished);
        False if another worker holds it."""
        ...

    def finish_chord(self, group_id: str, token: str, done_seconds: int) -> bool:
        """Drop the chord's keys and mark it done for ``done_seconds`` (so a late copy
        of a header task does not start it again), if ``token`` still holds the claim."""
        ...

    def drop_chord_size(self, group_id: str) -> None:
        """Forget the size of a chord that failed, so a late copy of a header task does
        not fail it again."""
        ...
@attrs.frozen(kw_only=True)
class ViaBroker:
    """What a backend that sends states through the broker (``rpc://``) needs from the
    app: the broker, and the app's reply queue."""

    #: The app's broker URL (``broker_url``).
    url: str
    #: The transport options the app's broker is opened with (``broker_transport_options``
    #: and the broker settings they come from).
    options: Mapping[str, Any]
    #: The app's reply queue name (its ``oid``, sent as every message's ``reply_to``); a
    #: function, because the oid of a forked child is not its parent's.
    oid: Callable[[], str]
    #: ``result_persistent``: send states as persistent messages (delivery mode 2).
    persistent: bool = False


@runtime_checkable
class ReplyRouted(Protocol):
    """Capability: a task's states travel as messages to the reply queue of the client
    that sent it (Celery's ``rpc://``), not to a store every process can read. So the
    app tells the backend of every send before publishing (``track``: the reply queue
    must exist when the worker answers), the worker stores with the message's reply
    address (``ResultBackend.store_reply``), and ``AsyncResult.get`` asks first whether
    the task's states can reach this client at all (``check_wait``), instead of waiting
    for states that go elsewhere."""

    def track(self, sent: Sequence[tuple[str, str | None]]) -> None:
        """Note tasks about to be sent, as ``(task id, reply_to)`` pairs, and declare
        this client's reply queue if one of them names it.

        Raises:
            ConnectionLost, TransportError: the declaration failed.
        """
        ...

    def check_wait(self, task_id: str) -> None:
        """Return if this client receives the task's states; else raise.

        Raises:
            ValidationError: the task was not sent by this client (another app, another
                process), was sent with another ``reply_to``, or its states were
                forgotten: waiting would never end. The message says which.
        """
        ...
