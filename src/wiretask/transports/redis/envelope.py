"""Kombu's virtual-transport envelope: the JSON text a Redis list entry holds.

Pure functions (no I/O, no clock) shared by the Redis transport. They write exactly what
``kombu.transport.virtual.Channel.prepare_message`` + ``_inplace_augment_message`` write
(key order included, ``json.dumps`` with its default separators, as ``kombu.utils.json``
does) and read anything Kombu/Celery writes, following ``virtual.Message.__init__``.

A captured Celery 5.7 entry (re-indented; the stored text is one line)::

    {"body": "<base64>", "content-encoding": "utf-8", "content-type": "application/json",
     "headers": {...},
     "properties": {"correlation_id": ..., "reply_to": ..., "delivery_mode": 2,
                    "expiration": "3600000",
                    "delivery_info": {"exchange": "", "routing_key": "celery"},
                    "priority": 7, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
"""

from __future__ import annotations

import binascii
import functools
import json
import math
import re
from bisect import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import attrs
import orjson

from wiretask._redis.keys import PRIORITY_STEPS  # with the key names it shapes
from wiretask.errors import EncodeError
from wiretask.protocol.frame import Frame

__all__ = [
    "DUE_AT",
    "PRIORITY_STEPS",
    "PUBLISHED_AT",
    "SEP",
    "BadEntry",
    "Received",
    "binding_member",
    "bucket_for",
    "clamp_priority",
    "decode",
    "encode",
    "frame_or_none",
    "mark_redelivered",
    "matches_binding",
    "queue_key",
    "ready_at",
    "route",
    "topic_pattern",
]

#: Kombu's ``sep`` transport option: joins queue and priority bucket, and binding fields.
SEP = "\x06\x16"
#: Kombu clamps priorities to this range (``virtual.Channel.min/max_priority``).
MIN_PRIORITY, MAX_PRIORITY = 0, 9

#: wiretask's own envelope properties (after Kombu's, which ignores them): when the
#: message was published, and, for a message held broker-side, when it falls due (Unix
#: seconds). Celery's wire has no publish time; queue statistics read these.
PUBLISHED_AT = "x-wiretask-published"
DUE_AT = "x-wiretask-due"
#: Properties the transport owns: written per publish, never part of a Frame.
TRANSPORT_PROPERTIES = frozenset({
    "delivery_info", "delivery_tag", "body_encoding", PUBLISHED_AT, DUE_AT,
})
#: Properties Kombu writes at fixed positions (after the caller's own properties).
_PLACED = TRANSPORT_PROPERTIES | {"delivery_mode", "expiration", "priority"}


class BadEntry(Exception):
    """A list entry that is not a Kombu envelope; ``reason`` says why (dead-letter text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen(kw_only=True)
class Received:
    """A decoded list entry: the frame plus the transport fields around it."""

    frame: Frame
    delivery_tag: str
    exchange: str
    routing_key: str
    redelivered: bool


def clamp_priority(properties: Mapping[str, Any]) -> int:
    """The clamped 0..9 priority of a message, as ``virtual.Channel._get_message_priority``:
    ``int()`` of the value, clamped; anything ``int()`` refuses counts as 0."""
    try:
        value = int(properties["priority"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return MIN_PRIORITY
    return max(min(value, MAX_PRIORITY), MIN_PRIORITY)


def bucket_for(priority: int, steps: Sequence[int] = PRIORITY_STEPS) -> int:
    """The priority step a clamped priority falls into (``Channel.priority``)."""
    return steps[bisect(steps, priority) - 1]


def queue_key(queue: str, bucket: int) -> str:
    """The list name of ``queue``'s ``bucket`` (``Channel._q_for_pri``): bucket 0 is the
    plain queue name, so a priority-less consumer still sees the common case."""
    return f"{queue}{SEP}{bucket}" if bucket else queue


def encode(
    frame: Frame, *, exchange: str, routing_key: str, delivery_tag: str,
    published: float | None = None, due: float | None = None,
) -> str:
    """The list entry for ``frame``, byte-for-byte as Kombu 5.7 writes it, followed by
    wiretask's own ``published`` and ``due`` times when given.

    The caller's own properties come first in their order (Kombu passes them as
    ``**properties``), then ``delivery_mode``, ``expiration``, ``delivery_info``,
    ``priority`` (the raw value, not the bucket), ``body_encoding`` and ``delivery_tag``,
    then ``x-wiretask-published`` and ``x-wiretask-due``. Transport-owned keys in
    ``frame.properties`` are ignored.

    One deliberate difference: Kombu always writes ``delivery_mode`` (default 2) and
    ``priority`` (default 0); here they are written only when the frame has them, so a
    frame comes back exactly as it was sent. Kombu and Celery read an absent one as
    those same defaults (``_get_message_priority``, ``properties.get('priority')``), and
    wiretask's Celery encoder always sets ``delivery_mode``.

    Raises:
        EncodeError: a header or property is not JSON-serializable.
    """
    given = frame.properties
    properties: dict[str, Any] = {k: v for k, v in given.items() if k not in _PLACED}
    for key in ("delivery_mode", "expiration"):
        if given.get(key) is not None:
            properties[key] = given[key]
    properties["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    if given.get("priority") is not None:
        properties["priority"] = given["priority"]
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = delivery_tag
    _stamp(properties, published, due)
    headers = frame.headers
    # Refuse what JSON would not carry faithfully, as the other transports do
    # (``_json.dump_json_mapping``): json.dumps quietly turns a key 1 into "1", and writes
    # NaN, which is not JSON. This check is the cheap part of that rule; json.dumps
    # refuses the rest (bytes, datetimes, sets). orjson refuses a non-string key at any
    # depth in a fraction of the time of the Python walk; when it refuses anything at
    # all (a key, or a value json may still take, such as a 70-bit int), the walk
    # decides.
    # A frame's ``headers_json`` (protocol.celery.encode writes it from a template) is
    # exactly json.dumps(headers) of headers with a fixed, checked shape: only the
    # properties are left to check and write.
    headers_json = frame.headers_json
    try:
        orjson.dumps(given if headers_json is not None else (headers, given))
    except TypeError:
        for field, mapping in (("headers", headers), ("properties", given)):
            try:
                ok = _string_keys(mapping)
            except RecursionError:
                raise EncodeError(field, "nests too deep, or contains itself") from None
            if not ok:
                raise EncodeError(field, "mapping keys must be strings at every level") from None
    # The envelope's text written around the JSON of its two mappings, in the order and
    # with the separators ``json.dumps`` gives the whole dict (the publish hot path: the
    # encoder's walk of the outer dict and its five keys costs more than this).
    try:
        return "".join((
            # binascii: what base64.b64encode calls, without its Python frame
            '{"body": "', binascii.b2a_base64(frame.body, newline=False).decode("ascii"),
            '", "content-encoding": ', _string_text(frame.content_encoding),
            ', "content-type": ', _string_text(frame.content_type),
            ', "headers": ', headers_json if headers_json is not None else _dumps(
                headers if type(headers) is dict else dict(headers)),
            ', "properties": ', _dumps(properties), "}",
        ))
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError("envelope", f"headers/properties are not JSON: {exc}") from exc


@functools.lru_cache(maxsize=64, typed=True)  # a hit is no Python call: two per message
def _string_text(value: str) -> str:
    """A content label as ``json.dumps`` writes it (a frame's labels are strings)."""
    if type(value) is not str:
        return _dumps(value)
    return encode_basestring_ascii(value)


def _stamp(properties: dict[str, Any], published: float | None, due: float | None) -> None:
    """Add wiretask's publish and due times (after everything Kombu writes)."""
    if published is not None:
        properties[PUBLISHED_AT] = published
    if due is not None:
        properties[DUE_AT] = due


def _unserializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_dumps() -> Callable[[Any], str]:
    """``json.dumps(value, allow_nan=False)``, the same text, without building an encoder
    per call: the C encoder is stateless without the circular check (a cycle raises
    RecursionError instead of ValueError)."""
    if c_make_encoder is None:  # pragma: no cover - CPython always has the accelerator
        return json.JSONEncoder(allow_nan=False).encode
    encoder = c_make_encoder(None, _unserializable, encode_basestring_ascii, None,
                             ": ", ", ", False, False, False)

    def dumps(value: Any) -> str:
        return "".join(encoder(value, 0))

    return dumps


_dumps = _make_dumps()


#: Values that hold no mapping: skipped by exact type before any isinstance test.
_FLAT: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _string_keys(value: Any) -> bool:
    # Recurse into containers only: headers are mostly flat scalars, and this runs on
    # every publish (the exact-type test skips those at the cost of one set lookup).
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                return False
            if type(item) in _FLAT:
                continue
            if isinstance(item, dict | list | tuple) and not _string_keys(item):
                return False
        return True
    for item in value:
        if type(item) in _FLAT:
            continue
        if isinstance(item, dict | list | tuple) and not _string_keys(item):
            return False
    return True


def decode(raw: bytes | str, *, queue: str) -> Received:
    """Read a list entry written by Kombu, Celery or wiretask.

    ``body`` is base64-decoded when ``properties.body_encoding`` is ``base64``; when it is
    absent or ``utf-8`` the text body is used as UTF-8 bytes (``virtual.Message``). Stricter
    than Kombu on purpose: base64 must be valid (Kombu's decoder skips stray characters)
    and ``body`` must be present. ``headers.redelivered``, Kombu's restore flag, becomes
    ``Received.redelivered`` and is not part of the frame.

    Raises:
        BadEntry: the entry cannot be read; the reason is meant for the dead-letter list.
    """
    split = _split_body(raw)
    if split is not None:
        try:
            return _read(split[0], split[1], queue)
        except BadEntry:
            pass  # the full parse decides, and says why
    return _read(_parse(raw), None, queue)


def _read(envelope: Any, base64_body: memoryview | None, queue: str) -> Received:
    """``decode`` of a parsed entry (``base64_body``: its body's text, when it was read
    apart, ``_split_body``)."""
    if not isinstance(envelope, dict):
        raise BadEntry(f"entry is a JSON {type(envelope).__name__}, not an object")
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        raise BadEntry("entry has no 'properties' object")
    tag = _tag(properties)
    if base64_body is None:
        body = _body(envelope, properties)
    elif properties.get("body_encoding") == "base64":
        body = _base64(base64_body)
    else:  # a text body: JSON's own rules decide, in the full parse
        raise BadEntry("body is not base64")
    headers = envelope.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise BadEntry("entry 'headers' is not an object")
    content_type = _label(envelope, "content-type")
    content_encoding = _label(envelope, "content-encoding")
    info = properties.get("delivery_info")
    info = info if isinstance(info, dict) else {}
    exchange = info.get("exchange")
    routing_key = info.get("routing_key")
    redelivered = bool(headers.get("redelivered") or info.get("redelivered"))
    if "redelivered" in headers:
        headers = {k: v for k, v in headers.items() if k != "redelivered"}
    # Both dicts are fresh from the parser (or just filtered) and nobody else holds them.
    frame = Frame.adopt(
        body, content_type, content_encoding, headers,
        {k: v for k, v in properties.items() if k not in TRANSPORT_PROPERTIES},
    )
    return Received(
        frame=frame,
        delivery_tag=tag,
        exchange=exchange if isinstance(exchange, str) else "",
        routing_key=routing_key if isinstance(routing_key, str) else queue,
        redelivered=redelivered,
    )


#: How Kombu (and wiretask) begin every entry: the body first.
_BODY_FIRST = b'{"body": "'


def _split_body(raw: bytes | str) -> tuple[dict[str, Any], memoryview] | None:
    """The entry without its body, and the body's text, read without building a
    string of the body: ``(envelope, body text)``, or None when the entry does not
    have that shape (then the full parse decides).

    This is the receive path's memory bound (spec TRANSPORTS.md §1.6): a body of N bytes is an
    entry of 4N/3 base64 characters, and parsing it whole makes a string of those,
    then bytes of them, then the body; read straight from the entry's bytes, the
    base64 text costs nothing and only the body is made. Kombu writes the body first,
    as a base64 string (no escapes: base64 has no quote or backslash); the rest of the
    entry, small, is parsed as an object on its own. An entry with another "body" after
    the first, or any escape in the body string, takes the full parse."""
    if not isinstance(raw, bytes) or not raw.startswith(_BODY_FIRST):
        return None
    start = len(_BODY_FIRST)
    end = raw.find(b'"', start)
    if end < 0 or raw.find(b"\\", start, end) >= 0:
        return None
    tail = raw[end + 1:].lstrip()
    if tail.startswith(b","):
        rest = b"{" + tail[1:]
    elif tail.startswith(b"}"):
        rest = b"{" + tail
    else:
        return None
    try:
        envelope = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict) or "body" in envelope:
        return None
    return envelope, memoryview(raw)[start:end]


def _base64(text: memoryview | str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadEntry("entry 'body' is not valid base64") from None


def _parse(raw: bytes | str) -> Any:
    """The entry's JSON value."""
    try:
        # orjson reads what json reads into the same values; what it refuses (a lone
        # surrogate escape, NaN, a huge int, bad UTF-8) goes to json for the verdict.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text)
    except UnicodeDecodeError:
        raise BadEntry("entry is not UTF-8 text") from None
    except RecursionError:  # orjson reads 1024 levels, json less than Python's stack
        raise BadEntry("entry is JSON nested too deep to read") from None
    except ValueError as exc:
        raise BadEntry(f"entry is not JSON: {exc}") from None


def _tag(properties: Mapping[str, Any]) -> str:
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        raise BadEntry("entry has no 'properties.delivery_tag' string")
    if not tag.isascii():  # a lone surrogate (a JSON escape) cannot be a Redis field name
        try:
            tag.encode("utf-8")
        except UnicodeEncodeError:
            raise BadEntry("entry 'properties.delivery_tag' is not UTF-8 text") from None
    return tag


def frame_or_none(raw: bytes | str, *, queue: str) -> Frame | None:
    """The frame of a list entry, or ``None`` when it is not an envelope (what
    inspection shows of a queue leaves those out)."""
    try:
        return decode(raw, queue=queue).frame
    except BadEntry:
        return None


def ready_at(raw: bytes | str) -> float | None:
    """Since when a list entry is ready: the later of its ``x-wiretask-published`` and
    ``x-wiretask-due`` times, or ``None`` when it carries no publish time (Celery and
    Kombu write none) or cannot be read. For queue statistics: one entry per list."""
    try:
        properties = orjson.loads(raw)["properties"]
        published = properties[PUBLISHED_AT]
        due = properties.get(DUE_AT)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    if not _is_time(published):
        return None
    return max(float(published), float(due)) if _is_time(due) else float(published)


def _is_time(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _body(envelope: Mapping[str, Any], properties: Mapping[str, Any]) -> bytes:
    if "body" not in envelope or envelope["body"] is None:
        raise BadEntry("entry has no 'body'")
    body = envelope["body"]
    if not isinstance(body, str):
        raise BadEntry(f"entry 'body' is a JSON {type(body).__name__}, not a string")
    encoding = properties.get("body_encoding")
    if encoding is None or (isinstance(encoding, str) and encoding.lower() == "utf-8"):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:
            raise BadEntry("entry 'body' is not valid Unicode text") from None
    if isinstance(encoding, str) and encoding.lower() == "base64":
        if not body.isascii():
            raise BadEntry("entry 'body' is not valid base64")
        return _base64(body)
    raise BadEntry(f"unknown properties.body_encoding {encoding!r}")


def _label(envelope: Mapping[str, Any], key: str) -> str:
    # Kombu treats a missing content label as None ("trusted raw data"); a Frame needs a
    # string, so absence becomes "" and the codec layer decides what to do with it.
    value = envelope.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadEntry(f"entry {key!r} is not a string")
    return value


def mark_redelivered(envelope: Any) -> None:
    """Set both flags Kombu's restore sets (``Channel._do_restore_message``) in place:
    ``headers.redelivered`` and ``properties.delivery_info.redelivered``."""
    try:
        envelope["headers"]["redelivered"] = True
        envelope["properties"]["delivery_info"]["redelivered"] = True
    except (KeyError, TypeError):
        # Kombu skips the flags of an envelope without these parts (KeyError); the
        # message is still restored.
        pass


def topic_pattern(routing_key: str) -> str:
    """The regex Kombu stores for a topic binding (``TopicExchange.key_to_pattern``):
    ``*`` is one word, ``#`` any number of words, other non-alphanumerics escaped."""
    escaped = "".join(
        c if c.isalnum() or c in ".#*" else ("\\000" if c == "\000" else "\\" + c)
        for c in routing_key
    )
    words = {"*": r"[^\.]+", "#": r".*?"}
    return "^" + r"\.".join(words.get(w, w) for w in escaped.split(".")) + "$"


def binding_member(routing_key: str, pattern: str, queue: str) -> str:
    """A ``_kombu.binding.<exchange>`` set member: ``routing_key SEP pattern SEP queue``."""
    return SEP.join((routing_key, pattern, queue))


def matches_binding(member: str, routing_key: str) -> str | None:
    """The queue of binding ``member`` if ``routing_key`` routes to it, else ``None``.

    The exchange type is read off the member: Kombu stores a regex only for topic
    bindings, so a non-empty pattern means topic matching (``re.match``, as
    ``TopicExchange._match``) and an empty one means direct (exact key). Kombu instead
    uses the publisher's in-process exchange type, which counts an undeclared exchange
    as direct; reading it from the table gives the same answer for tables Kombu wrote.
    """
    parts = member.split(SEP, 2)
    if len(parts) != 3:
        return None
    key, pattern, queue = parts
    if pattern:
        try:
            return queue if re.match(pattern, routing_key) else None
        except re.error:
            return None
    return queue if key == routing_key else None


def route(members: Iterable[str], routing_key: str) -> list[str]:
    """The queues, sorted, that binding ``members`` of one exchange route
    ``routing_key`` to (``virtual.Channel._lookup`` over the table's members)."""
    return sorted({q for m in members if (q := matches_binding(m, routing_key)) is not None})
