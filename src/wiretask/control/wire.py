"""The control channel's wire: Kombu's pidbox messages, as Celery sends and answers them.

Pure: values, and functions from values to ``Frame``s and back (no I/O, no clock: the
caller passes ``clock`` and ``expires``). ``spec/control.md`` is the normative text;
``spec/vectors/control/`` holds messages captured from Celery 5.7 that these functions
read and write byte for byte.

A **request** is published on the fanout exchange ``<namespace>.pidbox`` (Celery's
``control_exchange`` setting names the namespace, ``celery`` by default)::

    body     {"method": "ping", "arguments": {}, "destination": null, "pattern": null,
              "matcher": null, "ticket": "<uuid>", "reply_to": {"exchange":
              "reply.celery.pidbox", "routing_key": "<the caller's oid>"}}
    headers  {"clock": <Lamport clock>, "expires": <unix time, 0 without a timeout>}
    properties {"delivery_mode": 2, "priority": 0}

``ticket`` and ``reply_to`` are present only when replies are wanted (Kombu's ``call``;
a ``cast`` has neither). A **reply** goes to the direct exchange named by
``reply_to.exchange`` with ``reply_to.routing_key``, which routes it to the caller's
queue ``<oid>.reply.<namespace>.pidbox``::

    body     {"<worker hostname>": <the command's result>}
    headers  {"ticket": "<the request's ticket>", "clock": <Lamport clock>}
    properties {"delivery_mode": 1, "priority": 0}

Bodies are serialized with the sender's ``task_serializer`` (JSON by default, written as
Kombu's ``json.dumps`` writes it, so the bytes are Celery's) and read under the
receiver's ``accept_content``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from wiretask.codecs import Registry
from wiretask.errors import DecodeError, EncodeError, ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Exchange

__all__ = [
    "DEFAULT_NAMESPACE",
    "LamportClock",
    "Reply",
    "ReplyTo",
    "Request",
    "control_exchange",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "matches",
    "node_queue",
    "nok",
    "ok",
    "reply_exchange",
    "reply_queue",
]

#: Celery's ``control_exchange`` default: the pidbox namespace.
DEFAULT_NAMESPACE: Final = "celery"
#: Kombu's ``Mailbox.reply_queue_expires`` and ``Celery``'s ``control_queue_expires``.
DEFAULT_QUEUE_EXPIRES: Final = 10.0
#: Celery's ``control_queue_ttl`` (seconds a control message may wait in a queue).
DEFAULT_QUEUE_TTL: Final = 300.0

_JSON: Final = "application/json"
#: The delivery modes Kombu's mailbox uses: requests persistent (the Producer default),
#: replies transient (the reply exchange's ``delivery_mode``).
_REQUEST_DELIVERY_MODE: Final = 2
_REPLY_DELIVERY_MODE: Final = 1


def ok(value: Any) -> dict[str, Any]:
    """A command's success reply, as Celery's ``ok()``: ``{"ok": value}``."""
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    """A command's refusal, as Celery's ``nok()``: ``{"error": value}``."""
    return {"error": value}


# -- exchanges and queues ---------------------------------------------------------------


def control_exchange(namespace: str = DEFAULT_NAMESPACE) -> Exchange:
    """The fanout exchange requests are published on (Kombu's ``<namespace>.pidbox``)."""
    return Exchange(name=f"{namespace}.pidbox", type="fanout", durable=False)


def reply_exchange(namespace: str = DEFAULT_NAMESPACE) -> Exchange:
    """The direct exchange replies are routed by (``reply.<namespace>.pidbox``)."""
    return Exchange(name=f"reply.{namespace}.pidbox", type="direct", durable=False)


def node_queue(
    hostname: str, namespace: str = DEFAULT_NAMESPACE, *,
    expires: float | None = DEFAULT_QUEUE_EXPIRES, message_ttl: float | None = DEFAULT_QUEUE_TTL,
) -> BoundQueue:
    """A worker's control queue, ``<hostname>.<namespace>.pidbox`` (Kombu's
    ``Mailbox.get_queue``), bound to the control exchange."""
    return BoundQueue(name=f"{hostname}.{namespace}.pidbox", expires=expires,
                      message_ttl=message_ttl, exclusive=True)


def reply_queue(
    oid: str, namespace: str = DEFAULT_NAMESPACE, *,
    expires: float | None = DEFAULT_QUEUE_EXPIRES, message_ttl: float | None = DEFAULT_QUEUE_TTL,
) -> BoundQueue:
    """A caller's reply queue, ``<oid>.reply.<namespace>.pidbox``, bound to the reply
    exchange with its ``oid`` (Kombu's ``Mailbox.get_reply_queue``)."""
    return BoundQueue(name=f"{oid}.reply.{namespace}.pidbox", binding_key=oid,
                      expires=expires, message_ttl=message_ttl, exclusive=True)


# -- the clock --------------------------------------------------------------------------


class LamportClock:
    """Kombu's ``LamportClock``: ``forward()`` before sending, ``adjust(received)`` on
    receipt. Thread-safe."""

    def __init__(self, initial: int = 0) -> None:
        self.value = initial
        self._lock = threading.Lock()

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: object) -> int:
        """Move past a received clock value (anything that is not an int counts as 0)."""
        received = other if isinstance(other, int) and not isinstance(other, bool) else 0
        with self._lock:
            self.value = max(self.value, received) + 1
            return self.value


# -- values -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReplyTo:
    """Where a request's replies go: the reply exchange and the caller's routing key."""

    exchange: str
    routing_key: str


def _destination(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(
        isinstance(name, str) for name in value
    ):
        raise ValidationError("destination", f"must be a list of node names, got {value!r}",
                              value=value)
    return tuple(value)


@attrs.frozen(kw_only=True)
class Request:
    """A control request (Kombu's pidbox message body and its headers).

    Attributes:
        method: the command (``ping``, ``revoke``, ``active``, ...).
        arguments: its keyword arguments.
        destination: the node names that should act, or None for every node.
        pattern, matcher: instead of ``destination``, a pattern the node name must
            match, with Kombu's matcher (``glob``, the default, or ``pcre``).
        ticket: the id replies carry; None when no reply is wanted.
        reply_to: where replies go; None when no reply is wanted.
        clock: the sender's Lamport clock.
        expires: the unix time after which the caller stops collecting replies (0 when
            it set no timeout).
    """

    method: str = attrs.field(validator=attrs.validators.instance_of(str))
    arguments: Mapping[str, Any] = attrs.field(factory=dict)
    destination: tuple[str, ...] | None = attrs.field(default=None, converter=_destination)
    pattern: str | None = None
    matcher: str | None = None
    ticket: str | None = None
    reply_to: ReplyTo | None = None
    clock: int = 0
    expires: float = 0


@attrs.frozen(kw_only=True)
class Reply:
    """One node's reply: ``{hostname: result}`` and the request's ``ticket``."""

    hostname: str
    result: Any
    ticket: str | None
    clock: int = 0


# -- bodies -----------------------------------------------------------------------------


def _dumps(value: Any, registry: Registry, serializer: str, field: str) -> tuple[bytes, str, str]:
    """``(body, content_type, content_encoding)``. JSON is written as Kombu's
    ``json.dumps`` writes it (``", "`` and ``": "``, ASCII escapes), so a control body
    is byte for byte Celery's; other serializers come from the registry."""
    codec = registry.serializer(serializer)
    if codec.content_type == _JSON:
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(field, f"json: {exc}", content_type=_JSON) from exc
        return text.encode("utf-8"), _JSON, "utf-8"
    encoded = registry.dumps(value, serializer, field=field)
    return encoded.data, encoded.content_type, encoded.content_encoding


def _loads(frame: Frame, registry: Registry, what: str) -> dict[str, Any]:
    if not isinstance(frame, Frame):
        raise ValidationError("frame", f"must be a Frame, got {type(frame).__name__}")
    compression = frame.headers.get("compression")
    body = registry.decode(
        frame.body, frame.content_type, frame.content_encoding,
        compression if isinstance(compression, str) else None,
    )
    if not isinstance(body, dict):
        raise DecodeError("body", f"a control {what} must be a mapping, got "
                                  f"{type(body).__name__}")
    return body


def encode_request(request: Request, registry: Registry, serializer: str = "json") -> Frame:
    """The frame of ``request``, as Kombu's ``Mailbox._publish`` writes it.

    Raises:
        EncodeError: an argument the serializer cannot write.
        UnknownCodec: an unknown serializer.
    """
    body: dict[str, Any] = {
        "method": request.method,
        "arguments": dict(request.arguments),
        "destination": list(request.destination) if request.destination is not None else None,
        "pattern": request.pattern,
        "matcher": request.matcher,
    }
    if request.ticket is not None:
        body["ticket"] = request.ticket
    if request.reply_to is not None:
        body["reply_to"] = {"exchange": request.reply_to.exchange,
                            "routing_key": request.reply_to.routing_key}
    data, content_type, content_encoding = _dumps(body, registry, serializer, "arguments")
    return Frame(
        body=data, content_type=content_type, content_encoding=content_encoding,
        headers={"clock": request.clock, "expires": request.expires},
        properties={"delivery_mode": _REQUEST_DELIVERY_MODE, "priority": 0},
    )


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"body.{key}", f"must be a string or null, got {value!r}")
    return value


def decode_request(frame: Frame, registry: Registry) -> Request:
    """Read a request, as Kombu's ``Node.handle_message`` does (keys it does not use are
    ignored; ``arguments`` may be null).

    Raises:
        DecodeError: a body that cannot be read under the accept policy (its subclasses
            ``ContentDisallowed`` and ``MessageTooLarge`` included), or that is not a
            request.
    """
    body = _loads(frame, registry, "request")
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise DecodeError("body.method", f"must be a non-empty string, got {method!r}")
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
        raise DecodeError("body.arguments", f"must be a mapping, got {arguments!r}")
    try:
        destination = _destination(body.get("destination"))
    except ValidationError as exc:
        raise DecodeError("body.destination", exc.problem) from None
    reply_to = body.get("reply_to")
    target: ReplyTo | None = None
    if reply_to is not None:
        if not (isinstance(reply_to, dict) and isinstance(reply_to.get("exchange"), str)
                and isinstance(reply_to.get("routing_key"), str)):
            raise DecodeError("body.reply_to", "must be {exchange, routing_key} strings, got "
                                               f"{reply_to!r}")
        target = ReplyTo(exchange=reply_to["exchange"], routing_key=reply_to["routing_key"])
    clock = frame.headers.get("clock")
    expires = frame.headers.get("expires")
    return Request(
        method=method, arguments=arguments, destination=destination,
        pattern=_optional_str(body, "pattern"), matcher=_optional_str(body, "matcher"),
        ticket=_optional_str(body, "ticket"), reply_to=target,
        clock=clock if isinstance(clock, int) and not isinstance(clock, bool) else 0,
        expires=float(expires) if isinstance(expires, int | float)
        and not isinstance(expires, bool) else 0,
    )


def encode_reply(reply: Reply, registry: Registry, serializer: str = "json") -> Frame:
    """The frame of ``reply``, as Kombu's ``Mailbox._publish_reply`` writes it.

    Raises:
        EncodeError: a result the serializer cannot write.
        UnknownCodec: an unknown serializer.
    """
    data, content_type, content_encoding = _dumps(
        {reply.hostname: reply.result}, registry, serializer, "result"
    )
    return Frame(
        body=data, content_type=content_type, content_encoding=content_encoding,
        headers={"ticket": reply.ticket, "clock": reply.clock},
        properties={"delivery_mode": _REPLY_DELIVERY_MODE, "priority": 0},
    )


def decode_reply(frame: Frame, registry: Registry) -> list[Reply]:
    """Read a reply frame: one ``Reply`` per node in its body (Celery's has one).

    Raises:
        DecodeError: as ``decode_request``.
    """
    body = _loads(frame, registry, "reply")
    ticket = frame.headers.get("ticket")
    clock = frame.headers.get("clock")
    return [
        Reply(hostname=str(hostname), result=result,
              ticket=ticket if isinstance(ticket, str) else None,
              clock=clock if isinstance(clock, int) and not isinstance(clock, bool) else 0)
        for hostname, result in body.items()
    ]


# -- who a request is for ---------------------------------------------------------------

#: Kombu's matchers (``kombu.matcher``): ``glob`` (``fnmatch(name, pattern)``, the
#: default) and ``pcre`` (``re.match(pattern, name)``).
_MATCHERS: Final = ("glob", "pcre")


def matches(hostname: str, request: Request) -> bool:
    """Whether the node ``hostname`` should act on ``request`` (Kombu's
    ``Node.handle_message``): listed in ``destination``; else matching ``pattern`` with
    ``matcher`` (both needed); else every node.

    Raises:
        ValidationError: an unknown matcher (Kombu raises ``MatcherNotInstalled`` and the
            node does not act).
    """
    if request.destination:
        return hostname in request.destination
    if request.pattern and request.matcher:
        if request.matcher not in _MATCHERS:
            raise ValidationError(
                "matcher", f"unknown matcher {request.matcher!r} (known: glob, pcre)",
                value=request.matcher,
            )
        if request.matcher == "pcre":
            try:
                return re.match(request.pattern, hostname) is not None
            except re.error as exc:
                raise ValidationError("pattern", f"not a regular expression: {exc}",
                                      value=request.pattern) from None
        return fnmatch.fnmatch(hostname, request.pattern)
    return True
