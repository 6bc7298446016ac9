"""A ``Frame`` on AMQP 0-9-1: the basic properties, the header table, the publish frames.

The mapping is Kombu's (``kombu.transport.pyamqp``), so the bytes are what Celery sends:

* the body goes as it is (no base64, nothing added);
* ``content_type`` and ``content_encoding`` are the basic properties of those names;
* the headers are ``application_headers``, written by py-amqp's table writer, as Kombu
  writes them (``str`` as ``S``, ``int`` as ``I`` or ``L``, ``bool`` as ``t``, ``None`` as
  ``V``, lists as ``A``, dicts as ``F``...);
* the AMQP properties (``delivery_mode``, ``priority``, ``correlation_id``, ``reply_to``,
  ``expiration``, ``message_id``, ``timestamp``, ``type``, ``user_id``, ``app_id``,
  ``cluster_id``) are the basic properties of those names. A frame property that is not
  one of them (Kombu would drop it without a word) travels in the header
  ``x-wiretask-properties`` and is restored on receipt; Celery's frames have none, so
  their bytes are unchanged.

``encode`` serializes every message of a batch before anything is written (a value the
table writer cannot encode is an ``EncodeError`` naming it, raised before the first
message is sent), and ``publish_frames`` lays out the ``basic.publish`` frames, so that a
whole batch goes out in one write.

On receipt, ``tolerant_frame_handler`` reads the frames of a connection as py-amqp does,
except that a content header py-amqp cannot read (a header table nested past Python's
recursion limit, a timestamp no ``datetime`` holds, a short string that is not UTF-8)
does not break the connection: the message arrives with no properties and is marked
(``unreadable_of``), so that its consumer can dead-letter it instead of getting it back
for ever (TRANSPORTS.md §6.8).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
from amqp import spec
from amqp.basic_message import Message
from amqp.exceptions import FrameSyntaxError
from amqp.method_framing import frame_handler
from amqp.serialization import decode_properties_basic, dumps

from wiretask._amqp import topology
from wiretask.errors import EncodeError, ValidationError
from wiretask.protocol.frame import Frame

__all__ = [
    "AMQP_PROPERTIES",
    "PROPERTIES_HEADER",
    "RAW_PROPERTIES",
    "Encoded",
    "ack_frames",
    "check_name",
    "declaration_frames",
    "declaration_method",
    "encode",
    "header_problem",
    "publish_frames",
    "to_frame",
    "tolerant_frame_handler",
    "unreadable_of",
]

#: The basic properties other than the content labels and the header table.
AMQP_PROPERTIES = frozenset({
    "delivery_mode", "priority", "correlation_id", "reply_to", "expiration", "message_id",
    "timestamp", "type", "user_id", "app_id", "cluster_id",
})
#: Carries a frame's non-AMQP properties (see the module doc).
PROPERTIES_HEADER = "x-wiretask-properties"

_SHORT_STRINGS = frozenset({
    "correlation_id", "reply_to", "expiration", "message_id", "type", "user_id", "app_id",
    "cluster_id",
})
_OCTETS = frozenset({"delivery_mode", "priority"})
_PUBLISH = struct.pack(">HH", *spec.Basic.Publish)
_HEADER_PREFIX = struct.pack(">HH", spec.Basic.CLASS_ID, 0)
_FRAME_END = b"\xce"
#: The header that keeps, in a frame made of an unreadable message, the raw property
#: bytes of its content header (at most ``RAW_KEPT`` of them).
RAW_PROPERTIES = "x-wiretask-raw-properties"
#: The most raw property bytes kept (32 KiB): a dead letter with them and its reason fits
#: one frame of RabbitMQ's default ``frame_max`` (128 KiB); with a smaller one the dead
#: letter leaves them out (and says so).
RAW_KEPT = 1 << 15
#: Basic class content headers: class id (2), weight (2), body size (8), then properties.
_CONTENT_HEADER_PREFIX = 12
#: The attribute of a py-amqp ``Message`` that marks it unreadable: (problem, raw bytes).
_UNREADABLE = "_wiretask_unreadable"


def to_frame(message: Message) -> Frame:
    """The frame of a received py-amqp message (read from a channel opened with
    ``auto_decode=False``, so ``body`` is the bytes as they came). Takes the message's
    property dict over: the message must not be used afterwards."""
    properties: dict[str, Any] = message.properties
    unreadable = unreadable_of(message)
    if unreadable is not None:  # no properties were read: keep the raw ones
        return Frame.adopt(_body_of(message), "", "", {RAW_PROPERTIES: unreadable[1][:RAW_KEPT]},
                           {})
    content_type = properties.pop("content_type", "")
    content_encoding = properties.pop("content_encoding", "")
    headers = properties.pop("application_headers", None)
    if headers is None:
        headers = {}
    elif PROPERTIES_HEADER in headers:
        extra = headers.pop(PROPERTIES_HEADER)
        if isinstance(extra, dict):
            properties.update(extra)
        else:  # not ours after all: leave it where it was
            headers[PROPERTIES_HEADER] = extra
    return Frame.adopt(_body_of(message), content_type, content_encoding, headers, properties)


def _body_of(message: Message) -> bytes:
    body = message.body
    if not isinstance(body, bytes):
        # py-amqp leaves its default '' when the body is empty (no body frame).
        body = b"" if isinstance(body, str) else bytes(body)
    return body


def unreadable_of(message: Message) -> tuple[str, bytes] | None:
    """``(problem, raw property bytes)`` of a message whose content header py-amqp
    could not read (``tolerant_frame_handler``), else ``None``."""
    found: tuple[str, bytes] | None = getattr(message, _UNREADABLE, None)
    return found


def header_problem(payload: bytes) -> str | None:
    """Why py-amqp cannot read the basic content header ``payload`` (a content header
    frame's payload), or ``None`` if it can."""
    try:
        class_id = struct.unpack_from(">H", payload, 0)[0]
        if class_id != spec.Basic.CLASS_ID:
            return f"a content header of class {class_id}, not basic (60)"
        decode_properties_basic(payload, _CONTENT_HEADER_PREFIX)
    except Exception as exc:  # whatever py-amqp's reader raises on bad bytes
        text = str(exc)
        return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"
    return None


def tolerant_frame_handler(connection: Any, callback: Any) -> Any:
    """py-amqp's frame handler for ``connection`` (``amqp.Connection(frame_handler=...)``),
    made to survive a content header it cannot read.

    py-amqp reads a message's properties when its content header frame arrives; if that
    raises, the exception leaves ``drain_events`` with the message half read, the next
    body frame is unexpected and the connection is lost: the broker requeues the
    message, which comes back, and fails again, for ever. Here such a header is
    replaced by one with the same body size and no properties (so the frames that follow
    are read as usual) and the message is marked with the problem and the raw property
    bytes (``unreadable_of``). Only a failing header costs anything: a header that reads
    is handled by py-amqp alone, once."""
    marks: dict[int, tuple[str, bytes]] = {}

    def on_method(channel: int, method: Any, args: Any, message: Message | None) -> Any:
        if message is not None and marks:
            mark = marks.pop(channel, None)
            if mark is not None:
                setattr(message, _UNREADABLE, mark)
        return callback(channel, method, args, message)

    handle = frame_handler(connection, on_method)

    def on_frame(frame: tuple[int, int, bytes]) -> Any:
        try:
            return handle(frame)
        except Exception:
            kind, channel, payload = frame
            if kind != 2 or channel in marks or len(payload) < _CONTENT_HEADER_PREFIX:
                raise
            problem = header_problem(payload)
            if problem is None:  # the header reads: what failed is something else
                raise
            marks[channel] = (problem, bytes(payload[_CONTENT_HEADER_PREFIX:]))
            empty = bytes(payload[:_CONTENT_HEADER_PREFIX]) + b"\x00\x00"  # no properties
            return handle((kind, channel, empty))

    return on_frame


def check_name(field: str, value: str) -> bytes:
    """An exchange name or routing key as the short string AMQP carries (at most 255
    bytes of UTF-8).

    Raises:
        ValidationError: longer than 255 bytes.
    """
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > 255:
        raise ValidationError(
            field, f"at most 255 bytes in AMQP, got {len(raw)}: {value[:60]!r}...", value=value
        )
    return raw


@attrs.frozen
class Encoded:
    """A message's content header fields, serialized, and its body: what
    ``publish_frames`` frames. Made before any connection is touched, so that an
    unencodable value fails the whole batch before anything is sent."""

    properties: bytes
    body: bytes


def encode(frame: Frame) -> Encoded:
    """Serialize ``frame``'s properties and headers as py-amqp (and so Kombu) does.

    Raises:
        EncodeError: a header or property AMQP cannot carry (the field is named).
    """
    try:
        properties = _serialize_properties(frame)
    except (FrameSyntaxError, struct.error, TypeError, ValueError, OverflowError) as exc:
        raise _encode_error(frame, exc) from exc
    return Encoded(properties, frame.body)


def publish_frames(
    encoded: Encoded, exchange: str, routing_key: str, *, channel: int, frame_max: int,
    mandatory: bool = True,
) -> bytes:
    """The ``basic.publish`` method, content header and body frames of one message, as
    py-amqp's frame writer lays them out (body frames of at most ``frame_max - 8``
    bytes, none for an empty body).

    Raises:
        ValidationError: ``exchange`` or ``routing_key`` over 255 bytes.
        EncodeError: the content header (properties and headers) does not fit one
            frame of ``frame_max`` bytes, as AMQP requires (RabbitMQ would close the
            connection with ``FRAME_ERROR``).
    """
    if len(encoded.properties) + _CONTENT_HEADER_PREFIX + 8 > frame_max:
        raise EncodeError(
            "headers", f"the properties and headers take {len(encoded.properties)} bytes: "
            f"more than one AMQP frame holds (frame_max {frame_max})")
    check_name("exchange", exchange)
    check_name("routing_key", routing_key)
    arguments = dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
    body = encoded.body
    method = _PUBLISH + arguments
    header = _HEADER_PREFIX + struct.pack(">Q", len(body)) + encoded.properties
    parts = [
        struct.pack(">BHI", 1, channel, len(method)), method, _FRAME_END,
        struct.pack(">BHI", 2, channel, len(header)), header, _FRAME_END,
    ]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        parts += (struct.pack(">BHI", 3, channel, len(piece)), piece, _FRAME_END)
    return b"".join(parts)


_ACK = struct.pack(">HH", *spec.Basic.Ack)


def ack_frames(channel: int, tags: list[int]) -> bytes:
    """``basic.ack`` (single, not ``multiple``) of each delivery tag, as py-amqp's
    ``basic_ack`` writes it, for one write."""
    parts: list[bytes] = []
    for tag in tags:
        method = _ACK + dumps("Lb", (tag, False))
        parts += (struct.pack(">BHI", 1, channel, len(method)), method, _FRAME_END)
    return b"".join(parts)


def declaration_method(item: topology.Declaration) -> tuple[tuple[int, int], str, tuple[Any, ...]]:
    """The method (its class and method ids), py-amqp's argument signature and the
    arguments of a declaration, sent with ``nowait`` (the broker answers none of them;
    a failure closes the channel), exactly as py-amqp's ``exchange_declare``,
    ``queue_declare``, ``queue_bind`` and ``exchange_bind`` write them with the
    arguments the transport and ``rpc://`` give (queues are never exclusive)."""
    if isinstance(item, topology.Exchange):
        return (spec.Exchange.Declare, "BssbbbbbF",
                (0, item.name, item.type, False, item.durable, item.auto_delete, False, True,
                 None))
    if isinstance(item, topology.Queue):
        return (spec.Queue.Declare, "BsbbbbbF",
                (0, item.name, False, item.durable, False, item.auto_delete, True,
                 item.arguments))
    if isinstance(item, topology.Bind):
        return (spec.Queue.Bind, "BsssbF",
                (0, item.queue, item.exchange, item.routing_key, True, None))
    return (spec.Exchange.Bind, "BsssbF",
            (0, item.destination, item.source, item.routing_key, True, None))


def declaration_frames(channel: int, declarations: Iterable[topology.Declaration]) -> bytes:
    """The method frames of ``declarations`` (``declaration_method``) on ``channel``,
    for one write: what py-amqp writes for them, for a driver whose own table writer
    is not py-amqp's (Kombu's)."""
    parts: list[bytes] = []
    for item in declarations:
        method_sig, signature, arguments = declaration_method(item)
        method = struct.pack(">HH", *method_sig) + dumps(signature, arguments)
        parts += (struct.pack(">BHI", 1, channel, len(method)), method, _FRAME_END)
    return b"".join(parts)


def _serialize_properties(frame: Frame) -> bytes:
    headers = _headers_with_extra(frame)
    try:
        return _fast_properties(frame, headers)
    except _Unusual:
        pass
    message = Message(
        content_type=frame.content_type, content_encoding=frame.content_encoding,
        application_headers=headers,
    )
    table = message.properties
    for name, value in frame.properties.items():
        if name in AMQP_PROPERTIES:
            table[name] = value
    result: bytes = message._serialize_properties()
    return result


# -- the hot path: py-amqp's property and table writer, for the types messages carry ----
#
# py-amqp's writer makes a BytesIO per table and sends every value through a chain of
# isinstance tests: it was half the cost of a batch publish. This one makes the same
# bytes (``test_amqp_wire`` checks it against py-amqp's on generated trees) for str,
# bool, int, float, None, lists, tuples and dicts with str keys, and gives anything else
# (bytes, Decimal, datetime, subclasses) to py-amqp's own writer, so that the bytes and
# the errors stay py-amqp's.


class _Unusual(Exception):
    """A value the fast writer leaves to py-amqp's."""


_pack = struct.pack
#: (property, its basic-property flag bit, its AMQP type), in py-amqp's order.
_PROPERTY_LAYOUT = tuple(
    (name, 1 << (15 - index), kind) for index, (name, kind) in enumerate(Message.PROPERTIES)
)


def _fast_properties(frame: Frame, headers: Mapping[str, Any]) -> bytes:
    properties = frame.properties
    values: dict[str, Any] = {"content_type": frame.content_type,
                              "content_encoding": frame.content_encoding,
                              "application_headers": headers}
    flags = 0
    parts: list[bytes] = []
    for name, bit, kind in _PROPERTY_LAYOUT:
        value = values[name] if name in values else properties.get(name)
        if value is None:
            continue
        flags |= bit
        parts.append(_property(kind, value))
    return _pack(">H", flags) + b"".join(parts)


def _property(kind: str, value: Any) -> bytes:
    if kind == "s":
        if type(value) is not str:
            raise _Unusual
        raw = value.encode("utf-8", "surrogatepass")
        return _pack("B", len(raw)) + raw
    if kind == "o":
        return _pack("B", value)
    if kind == "F":
        if type(value) is not dict:
            raise _Unusual
        return _table(value)
    return _pack(">Q", value)  # "L": the timestamp


def _table(table: dict[str, Any]) -> bytes:
    parts: list[bytes] = []
    for key, value in table.items():
        if type(key) is not str:
            raise _Unusual
        raw = key.encode("utf-8", "surrogatepass")
        if len(raw) > 255:
            raise _Unusual
        parts += (_pack("B", len(raw)), raw)
        _item(value, parts)
    data = b"".join(parts)
    return _pack(">I", len(data)) + data


def _item(value: Any, parts: list[bytes]) -> None:
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8", "surrogatepass")
        parts += (_pack(">cI", b"S", len(raw)), raw)
    elif kind is bool:
        parts.append(b"t\x01" if value else b"t\x00")
    elif kind is int:
        if value > 2147483647 or value < -2147483647:  # py-amqp's bounds, as they are
            parts.append(_pack(">cq", b"L", value))
        else:
            parts.append(_pack(">ci", b"I", value))
    elif value is None:
        parts.append(b"V")
    elif kind is float:
        parts.append(_pack(">cd", b"d", value))
    elif kind is dict:
        parts += (b"F", _table(value))
    elif kind is list or kind is tuple:
        items: list[bytes] = []
        for item in value:
            _item(item, items)
        data = b"".join(items)
        parts += (b"A", _pack(">I", len(data)), data)
    else:
        raise _Unusual


def _headers_with_extra(frame: Frame) -> Mapping[str, Any]:
    headers = frame.headers
    if PROPERTIES_HEADER in headers:
        raise EncodeError(f"headers[{PROPERTIES_HEADER!r}]",
                          "this header name is reserved for the transport")
    properties = frame.properties
    if properties.keys() <= AMQP_PROPERTIES:
        return headers
    extra = {k: v for k, v in properties.items() if k not in AMQP_PROPERTIES}
    return {**headers, PROPERTIES_HEADER: extra}


def _encode_error(frame: Frame, cause: BaseException) -> EncodeError:
    """Find what py-amqp could not encode, and name it."""
    for name, value in frame.properties.items():
        found = _property_problem(name, value)
        if found is not None:
            return EncodeError(*found)
    for name, value in (("content_type", frame.content_type),
                        ("content_encoding", frame.content_encoding)):
        problem = _short_string_problem(value)
        if problem is not None:
            return EncodeError(name, problem)
    found = _table_value_problem("headers", dict(frame.headers))
    if found is not None:
        return EncodeError(*found)
    return EncodeError("message", f"py-amqp could not encode it: {cause}")


def _property_problem(name: str, value: Any) -> tuple[str, str] | None:
    where = f"properties[{name!r}]"
    if name in _SHORT_STRINGS:
        problem = _short_string_problem(value)
    elif name in _OCTETS:
        fits = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255
        problem = None if fits else f"must be an int within 0..255, got {value!r}"
    elif name == "timestamp":
        fits = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64
        problem = None if fits else f"must be an int of seconds >= 0, got {value!r}"
    else:  # carried in the properties header: a table value
        return _table_value_problem(where, value)
    return None if problem is None else (where, problem)


def _short_string_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value.encode("utf-8", "surrogatepass")) > 255:
        return "an AMQP short string holds at most 255 bytes"
    return None


def _table_value_problem(path: str, value: Any) -> tuple[str, str] | None:
    """(path, problem) of the first value py-amqp's table writer refuses, or None."""
    if isinstance(value, Mapping):
        return _table_problem(path, value)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _table_value_problem(f"{path}[{index}]", item)
            if found is not None:
                return found
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value < 2**63:
            return None
        return path, f"{value} does not fit AMQP's signed 64-bit integer"
    if value is None or isinstance(value, str | bytes | bool | float | Decimal | datetime):
        return None
    return path, (f"a {type(value).__name__} value cannot be carried in an AMQP table "
                  "(use str, int, float, bool, None, lists and string-keyed dicts)")


def _table_problem(path: str, table: Mapping[Any, Any]) -> tuple[str, str] | None:
    for key, item in table.items():
        where = f"{path}[{key!r}]"
        if not isinstance(key, str):
            return where, f"table keys must be strings, got {type(key).__name__}"
        if len(key.encode("utf-8", "surrogatepass")) > 255:
            return where, "a table key holds at most 255 bytes"
        found = _table_value_problem(where, item)
        if found is not None:
            return found
    return None
