"""TaskMessage <-> Celery task protocol 2 frames (and read-only protocol 1).

:func:`encode` turns a :class:`~wiretask.protocol.envelope.TaskMessage` into the
:class:`~wiretask.protocol.frame.Frame` a Celery 5.7 producer would publish: the same
header set in the same order, the same properties, the same ``[args, kwargs, embed]``
body. :func:`decode` reads what any Celery >= 4 producer (or wiretask) publishes, in
three shapes, detected as Celery's worker detects them:

* **protocol 2**: a ``task`` header; the body is ``[args, kwargs, embed]``;
* **hybrid**: a ``task`` header and a protocol-1 style mapping body with ``args``
  (``celery.worker.strategy.hybrid_to_proto2``);
* **protocol 1**: no ``task`` header; the body is a mapping that names the task
  (``celery.worker.strategy.proto1_to_proto2``).

Receiving is ordered so that untrusted bytes are touched as late as possible: the
content type is checked against the accept policy first, then the body is
decompressed (bounded by the registry's size cap), then deserialised, then its shape
is validated. Every problem is a :class:`~wiretask.errors.DecodeError` naming where it
sits (``"headers.eta"``, ``"body"``, ``"embed.callbacks[0].task"``), never a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from wiretask.codecs import MAX_DEPTH, Registry, normalize_content_type
from wiretask.codecs.nesting import exceeds, too_deep
from wiretask.errors import EncodeError, MalformedMessage, MessageTooLarge
from wiretask.protocol.envelope import (
    CONTENT_ENCODINGS,
    EMBED_KEYS,
    PROPERTY_NAMES,
    RESERVED_HEADERS,
    TaskMessage,
)
from wiretask.protocol.frame import Frame
from wiretask.protocol.signature import Signature
from wiretask.protocol.timing import EPOCH, format_iso, parse_iso, to_aware

#: ``json.dumps`` of a string, as its C encoder writes it (quoted, ASCII, escaped).
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii

__all__ = ["decode", "decode_raw", "encode"]


# -- encode ---------------------------------------------------------------------------


def encode(
    message: TaskMessage,
    registry: Registry,
    *,
    compress_threshold: int | None = None,
) -> Frame:
    """Encode a task message as the frame Celery 5.7 would publish for it.

    * Headers: the 19 protocol-2 headers in Celery's order, every one present (``null``
      where unset, as Celery sends), then ``compression`` when the body is compressed,
      then :attr:`~TaskMessage.extra_headers`. ``eta``/``expires`` are ISO 8601 with an
      offset; ``timelimit`` is the list ``[hard, soft]``.
    * Properties: ``correlation_id`` (the task id unless set), ``reply_to`` (``""`` when
      unset, as Celery sends), ``delivery_mode``, then ``expiration`` and ``priority``
      when set, then :attr:`~TaskMessage.extra_properties`.
    * Body: ``[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]`` serialised
      with the serializer for :attr:`~TaskMessage.content_type`, then compressed with
      :attr:`~TaskMessage.compression` if set.

    Args:
        message: The message.
        registry: Where the serializer and compressor are looked up.
        compress_threshold: Compress only bodies of at least this many bytes (the
            ``compression`` header is then left out of smaller ones). ``None`` uses the
            registry's own threshold, which by default compresses every body.

    Raises:
        UnknownCodec: The content type or compression is not registered.
        EncodeError: An argument cannot be serialised (``field="body"``), or the
            message's ``content_encoding`` is not the one its serializer writes.
    """
    m = message
    callbacks, errbacks, chain, chord = m.callbacks, m.errbacks, m.chain, m.chord
    embed: dict[str, Any]
    if callbacks is None and errbacks is None and chain is None and chord is None \
            and not m.extra_embed:
        embed = _NO_EMBED  # most messages: nothing to build (the serializer only reads it)
    else:
        try:
            embed = {
                "callbacks": None if callbacks is None else [s.to_dict() for s in callbacks],
                "errbacks": None if errbacks is None else [s.to_dict() for s in errbacks],
                "chain": None if chain is None else [s.to_dict() for s in chain],
                "chord": None if chord is None else chord.to_dict(),
            }
        except RecursionError:  # a signature's data nests past Python's stack
            raise EncodeError("embed", too_deep(MAX_DEPTH)) from None
        if m.extra_embed:
            embed.update(m.extra_embed)
    # The body document nests at most MAX_DEPTH deep (spec §9): what is sent decodes.
    encoded = registry.dumps([list(m.args), m.kwargs, embed], m.content_type,
                             max_depth=MAX_DEPTH)
    if (
        encoded.content_encoding != m.content_encoding
        and encoded.content_encoding.lower() != m.content_encoding.lower()
    ):
        raise EncodeError(
            "content_encoding",
            f"the message says {m.content_encoding!r} but the {m.content_type} serializer "
            f"writes {encoded.content_encoding!r}",
            content_type=m.content_type,
        )
    hard, soft = m.timelimit
    headers: dict[str, Any] = {
        "lang": m.lang,
        "task": m.task,
        "id": m.id,
        "shadow": m.shadow,
        "eta": None if m.eta is None else format_iso(m.eta),
        "expires": None if m.expires is None else format_iso(m.expires),
        "group": m.group,
        "group_index": m.group_index,
        "retries": m.retries,
        "timelimit": [hard, soft],
        "root_id": m.root_id,
        "parent_id": m.parent_id,
        "argsrepr": m.argsrepr,
        "kwargsrepr": m.kwargsrepr,
        "origin": m.origin,
        "ignore_result": m.ignore_result,
        "replaced_task_nesting": m.replaced_task_nesting,
        "stamped_headers": None if m.stamped_headers is None else list(m.stamped_headers),
        "stamps": dict(m.stamps) if m.stamps else {},
    }
    body = encoded.data
    text = None
    if m.compression is not None:
        body, header = registry.maybe_compress(body, m.compression, compress_threshold)
        if header is not None:
            headers["compression"] = header
    if m.extra_headers:
        _within("headers", m.extra_headers, EncodeError)
        headers.update(m.extra_headers)
    elif len(headers) == _PROTOCOL_HEADERS:
        text = _headers_json(m, headers)
    if m.stamps:
        _within("headers", {"stamps": m.stamps}, EncodeError)
    properties: dict[str, Any] = {
        "correlation_id": m.id if m.correlation_id is None else m.correlation_id,
        "reply_to": "" if m.reply_to is None else m.reply_to,
        "delivery_mode": m.delivery_mode,
    }
    if m.expiration is not None:
        properties["expiration"] = m.expiration
    if m.priority is not None:
        properties["priority"] = m.priority
    if m.extra_properties:
        _within("properties", m.extra_properties, EncodeError)
        properties.update(m.extra_properties)
    return Frame.adopt(body, encoded.content_type, encoded.content_encoding, headers, properties,
                       text)


#: The embed of a message without callbacks, errbacks, chain or chord (never mutated).
_NO_EMBED: Final[dict[str, Any]] = {"callbacks": None, "errbacks": None, "chain": None,
                                    "chord": None}

#: How many headers ``encode`` always writes (the protocol-2 set, Celery's order).
_PROTOCOL_HEADERS = 19

#: The JSON text of the headers that messages of one task and options share, cut where
#: the per-message values go (``_headers_json``), by those shared values (with their
#: types: ``1`` and ``1.0`` are written differently). Bounded: emptied when full.
_HEADER_TEMPLATES: dict[tuple[Any, ...], tuple[str, ...]] = {}
_HEADER_TEMPLATES_MAX = 256


def _headers_json(m: TaskMessage, headers: Mapping[str, Any]) -> str | None:
    """``json.dumps(headers)`` (default separators, ASCII) for the protocol-2 headers of
    ``m``, written from a template: what every message of a task sent with the same
    options shares is written once, per message only its own strings (ids, reprs,
    times, origin) are escaped into it. ``None`` for a message the template does not
    cover (stamps, a value of an unusual type): the transport writes those in full.

    Why: the publish hot path. The standard library's encoder walks all 19 headers of
    every message, which was a tenth of a publish's CPU (bench/README.md, "Where
    wiretask's time goes"); tests/protocol/test_header_json.py holds this to
    ``json.dumps``'s exact text.
    """
    hard, soft = m.timelimit
    retries, nesting, index = m.retries, m.replaced_task_nesting, m.group_index
    if (
        m.stamps or m.stamped_headers is not None
        or type(retries) is not int or type(nesting) is not int
        or (index is not None and type(index) is not int)
    ):
        return None
    key = (m.lang, m.task, m.shadow, type(hard), hard, type(soft), soft, m.ignore_result,
           retries, nesting, index)
    parts = _HEADER_TEMPLATES.get(key)
    if parts is None:
        made = _header_template(headers)
        if made is None:
            return None
        if len(_HEADER_TEMPLATES) >= _HEADER_TEMPLATES_MAX:
            _HEADER_TEMPLATES.clear()
        parts = _HEADER_TEMPLATES[key] = made
    q = _json_string
    eta, expires = headers["eta"], headers["expires"]
    group, root_id, parent_id = m.group, m.root_id, m.parent_id
    argsrepr, kwargsrepr, origin = m.argsrepr, m.kwargsrepr, m.origin
    return "".join((
        parts[0], q(m.id),
        parts[1], "null" if eta is None else q(eta),
        parts[2], "null" if expires is None else q(expires),
        parts[3], "null" if group is None else q(group),
        parts[4], "null" if root_id is None else q(root_id),
        parts[5], "null" if parent_id is None else q(parent_id),
        parts[6], "null" if argsrepr is None else q(argsrepr),
        parts[7], "null" if kwargsrepr is None else q(kwargsrepr),
        parts[8], "null" if origin is None else q(origin),
        parts[9],
    ))


#: The headers ``_headers_json`` writes per message, in their order among the others.
_OWN_HEADERS = ("id", "eta", "expires", "group", "root_id", "parent_id", "argsrepr",
                "kwargsrepr", "origin")


def _header_template(headers: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The JSON text of ``headers`` cut before each value of ``_OWN_HEADERS``: ten
    pieces, with each message's own values to go between them. ``None`` if a shared
    value is not JSON (``json.dumps`` refuses it, or it is not a finite number): the
    transport's encoder then reports it, as for any header."""
    parts: list[str] = []
    text = "{"
    for key, value in headers.items():
        if len(text) > 1 or parts:
            text += ", "
        text += f"{_json_string(key)}: "
        if key in _OWN_HEADERS:
            parts.append(text)
            text = ""
            continue
        try:
            text += json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return None
    parts.append(text + "}")
    return tuple(parts)


# -- decode ---------------------------------------------------------------------------

#: The keys a hybrid message's body contributes to the headers, as in Celery's
#: ``hybrid_to_proto2`` (the message's own headers are merged over them).
_HYBRID_HEADER_KEYS = (
    "lang", "task", "id", "root_id", "parent_id", "group", "meth", "shadow", "eta",
    "expires", "retries", "timelimit", "argsrepr", "kwargsrepr", "origin",
)


def decode(
    frame: Frame,
    registry: Registry,
    *,
    accept: Collection[str] | None = None,
    max_size: int | None = None,
) -> TaskMessage:
    """Decode a received frame into a task message.

    Args:
        frame: The frame, as the transport delivered it.
        registry: Serializers, compressors, the accept policy and the size cap.
        accept: Content types (or serializer names) to accept instead of the registry's
            policy.
        max_size: Cap on the body (decompressed, or as received when it is not
            compressed) instead of the registry's ``max_decompressed_size``.

    Raises:
        ContentDisallowed: The content type is not accepted. Raised before the body is
            decompressed or parsed.
        MessageTooLarge: The body (once decompressed, when it is compressed) is larger
            than the cap; nothing of it is parsed.
        DecodeError: The body cannot be decompressed or deserialised.
        MalformedMessage: The message does not have the shape of a task message; the
            error's ``field`` says where.
    """
    return decode_raw(
        frame.body,
        frame.headers,
        frame.properties,
        frame.content_type,
        frame.content_encoding,
        registry,
        accept=accept,
        max_size=max_size,
    )


def decode_raw(
    body: bytes,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any] | None,
    content_type: str | bytes | None,
    content_encoding: str | bytes | None,
    registry: Registry,
    *,
    accept: Collection[str] | None = None,
    max_size: int | None = None,
) -> TaskMessage:
    """Decode a message from its parts, for transports that do not build a Frame.

    Same rules and errors as :func:`decode`. ``headers`` and ``properties`` may be
    ``None`` (read as empty); the content labels may be bytes, as AMQP drivers give them.
    """
    if headers is None:
        headers = {}
    elif not isinstance(headers, Mapping):
        raise MalformedMessage("headers", f"must be a mapping, got {_kind(headers)}")
    if properties is None:
        properties = {}
    elif not isinstance(properties, Mapping):
        raise MalformedMessage("properties", f"must be a mapping, got {_kind(properties)}")
    content_type = _label(content_type, "content_type")
    content_encoding = _label(content_encoding, "content_encoding")

    # 1. The accept policy, before anything looks at the body.
    registry.check_accept(content_type, accept=accept)
    # 2. Decompress, bounded. Kombu accepts the MIME value or any alias in the header.
    compression = headers.get("compression")
    canonical: str | None = None
    if compression is not None:
        if not isinstance(compression, str) or not compression:
            raise MalformedMessage("headers.compression", "must be a compression name")
        body = registry.decompress(body, compression, max_size=max_size)
        canonical = registry.compressor(compression).content_type
    else:
        # The same cap on a body that came uncompressed: nothing is parsed past it.
        limit = registry.max_decompressed_size if max_size is None else max_size
        if len(body) > limit:
            raise MessageTooLarge("body", limit, len(body))
    # 3. Deserialise, refusing a document nested deeper than MAX_DEPTH (which every
    #    encoder writes and every walk handles), checked as cheaply as the body allows.
    payload = registry.loads(body, content_type, content_encoding, accept=accept,
                             max_depth=MAX_DEPTH)
    # 4. Shape.
    fields: dict[str, Any] = {}
    if content_type:
        fields["content_type"] = normalize_content_type(content_type)
        if not fields["content_type"]:
            raise MalformedMessage("content_type", f"{content_type!r} names no type")
        fields["content_encoding"] = (
            content_encoding.lower()
            if content_encoding
            else CONTENT_ENCODINGS.get(fields["content_type"], "utf-8")
        )
    if canonical is not None:
        fields["compression"] = canonical

    if "task" in headers:
        if isinstance(payload, Mapping) and "args" in payload:
            # Hybrid: Celery builds the headers from the body, then merges the real ones.
            merged = {key: payload[key] for key in _HYBRID_HEADER_KEYS if key in payload}
            merged.update(headers)
            _read_headers(merged, fields, where="headers")
            _read_legacy_body(payload, fields)
        else:
            _read_headers(headers, fields, where="headers")
            _read_body(payload, fields)
    elif isinstance(payload, Mapping) and "task" in payload:
        _read_protocol1(payload, headers, fields)
    else:
        raise MalformedMessage(
            "headers.task",
            "missing: no task header (protocol 2) and the body is not a protocol-1 task mapping",
        )
    _read_properties(properties, fields)
    return _build(fields)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    """A value from the wire in an error message: its ``repr``, cut to 100 characters;
    a container nested deeper than 3 levels, or a value whose ``repr`` fails (an int
    past Python's digit limit), by its type alone (never a ``RecursionError``, whatever
    its depth)."""
    if isinstance(value, list | tuple | dict) and exceeds(value, 3):
        return f"<a {type(value).__name__} nested deeper than 3 levels>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:97] + "..."


def _within(
    where: str, values: Mapping[str, Any], error: type[EncodeError] | type[MalformedMessage]
) -> None:
    """Refuse a header or property value that would make its mapping nest deeper than
    ``MAX_DEPTH`` (the value's own containers, plus the mapping's level). Only free-form
    values (stamps, custom headers and properties) are checked: the others have a fixed,
    flat shape."""
    for key, value in values.items():
        if isinstance(value, list | tuple | dict) and value and exceeds(value, MAX_DEPTH - 1):
            raise error(f"{where}.{key}", too_deep(MAX_DEPTH - 1))


def _label(value: str | bytes | None, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):  # AMQP drivers may hand labels over as bytes
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedMessage(field, "is not ASCII") from None
    if not isinstance(value, str):
        raise MalformedMessage(field, f"must be a string, got {_kind(value)}")
    return value


def _build(fields: dict[str, Any]) -> TaskMessage:
    # Every field was checked while reading, at least as strictly as TaskMessage's own
    # checks, and is in its stored form: the message is not checked a second time.
    # (tests/protocol/test_celery.py rebuilds decoded messages through the checking
    # constructor to hold this to account.)
    return TaskMessage._from_checked(fields)


# -- headers --------------------------------------------------------------------------


def _optional_str(headers: Mapping[str, Any], key: str, where: str) -> str | None:
    value = headers.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedMessage(f"{where}.{key}", f"must be a string or null, got {_kind(value)}")


def _required_str(headers: Mapping[str, Any], key: str, where: str) -> str:
    value = headers.get(key)
    if isinstance(value, str) and value:
        return value
    if value is None:
        raise MalformedMessage(f"{where}.{key}", "missing")
    raise MalformedMessage(f"{where}.{key}",
                           f"must be a non-empty string, got {_show(value)}")


def _time(headers: Mapping[str, Any], key: str, where: str) -> datetime | None:
    value = headers.get(key)
    # Celery's worker reads these with ``maybe_iso8601``, for which "" means not set.
    if value is None or value == "":
        return None
    field = f"{where}.{key}"
    if isinstance(value, datetime):  # AMQP header tables can carry timestamps
        result = to_aware(value)
    else:
        result = parse_iso(value, field=field, decoding=True)
    if result.year in (1, 9999):
        # At the ends of datetime's range an offset can push the UTC instant out of it;
        # every comparison with it would then fail.
        try:
            result.astimezone(UTC)
        except OverflowError:
            raise MalformedMessage(field, f"{value!r} is outside the representable range") \
                from None
    if key == "eta" and result < EPOCH:
        raise MalformedMessage(field, f"{value!r} is before 1970")
    return result


def _count(headers: Mapping[str, Any], key: str, where: str, *, optional: bool) -> int | None:
    value = headers.get(key)
    if value is None:
        return None if optional else 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise MalformedMessage(f"{where}.{key}",
                           f"must be a non-negative integer, got {_show(value)}")


def _timelimit(value: Any, field: str) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise MalformedMessage(field, f"must be a [hard, soft] pair, got {_show(value)}")
    for limit in value:
        if limit is None:
            continue
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int | float)
            or (type(limit) is float and not math.isfinite(limit))  # an int is finite
            or limit < 0
        ):
            raise MalformedMessage(
                field, f"limits must be non-negative numbers or null: {_show(value)}"
            )
    return (value[0], value[1])


def _read_headers(headers: Mapping[str, Any], fields: dict[str, Any], *, where: str) -> None:
    """Read protocol-2 headers (or a protocol-1 body used as headers) into ``fields``."""
    fields["task"] = _required_str(headers, "task", where)
    fields["id"] = _required_str(headers, "id", where)
    lang = headers.get("lang")
    if lang is not None:
        if not isinstance(lang, str) or not lang:
            raise MalformedMessage(f"{where}.lang",
                                   f"must be a non-empty string, got {_show(lang)}")
        fields["lang"] = lang
    for key in ("shadow", "group", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin"):
        value = _optional_str(headers, key, where)
        if value is not None:
            fields[key] = value
    for key in ("eta", "expires"):
        when = _time(headers, key, where)
        if when is not None:
            fields[key] = when
    group_index = _count(headers, "group_index", where, optional=True)
    if group_index is not None:
        fields["group_index"] = group_index
    fields["retries"] = _count(headers, "retries", where, optional=False)
    fields["replaced_task_nesting"] = _count(headers, "replaced_task_nesting", where,
                                             optional=False)
    fields["timelimit"] = _timelimit(headers.get("timelimit"), f"{where}.timelimit")
    ignore_result = headers.get("ignore_result")
    if ignore_result is not None:
        if not isinstance(ignore_result, bool):
            raise MalformedMessage(
                f"{where}.ignore_result", f"must be a boolean, got {_show(ignore_result)}"
            )
        fields["ignore_result"] = ignore_result
    stamped = headers.get("stamped_headers")
    if stamped is not None:
        if not isinstance(stamped, list | tuple) or not all(isinstance(s, str) for s in stamped):
            raise MalformedMessage(
                f"{where}.stamped_headers", f"must be a list of strings, got {_show(stamped)}"
            )
        fields["stamped_headers"] = tuple(stamped)
    stamps = headers.get("stamps")
    if stamps is not None:
        if not isinstance(stamps, Mapping) or not all(isinstance(k, str) for k in stamps):
            raise MalformedMessage(f"{where}.stamps", f"must be a mapping, got {_kind(stamps)}")
        if stamps:
            _within(where, {"stamps": stamps}, MalformedMessage)
        fields["stamps"] = dict(stamps)
    if where == "headers":
        extra = _unknown(headers, RESERVED_HEADERS, "headers", "header")
        if extra:
            _within("headers", extra, MalformedMessage)
            fields["extra_headers"] = extra


def _unknown(
    mapping: Mapping[Any, Any], known: Collection[str], field: str, what: str
) -> dict[str, Any]:
    """The entries of ``mapping`` whose keys are not in ``known``: kept and round-tripped
    untouched (spec §11.4), as long as their names are strings."""
    extra: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in known:
            continue
        if not isinstance(key, str):
            raise MalformedMessage(field, f"{what} names must be strings, got {_show(key)}")
        extra[key] = value
    return extra


# -- body -----------------------------------------------------------------------------


def _args(value: Any, field: str) -> tuple[Any, ...]:
    if isinstance(value, list | tuple):
        return tuple(value)
    raise MalformedMessage(field, f"must be a list, got {_kind(value)}")


def _kwargs(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedMessage(field, f"must be a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise MalformedMessage(field, f"keys must be strings, got {_show(key)}")
    return dict(value)


def _signatures(value: Any, field: str) -> tuple[Signature, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise MalformedMessage(field, f"must be a list of signatures or null, got {_kind(value)}")
    return tuple(Signature.from_dict(item, field=f"{field}[{i}]") for i, item in enumerate(value))


def _read_embed(embed: Mapping[str, Any], fields: dict[str, Any], *, chain: bool) -> None:
    for key in ("callbacks", "errbacks"):
        sigs = _signatures(embed.get(key), f"embed.{key}")
        if sigs is not None:
            fields[key] = sigs
    if chain:
        sigs = _signatures(embed.get("chain"), "embed.chain")
        if sigs is not None:
            fields["chain"] = sigs
    chord = embed.get("chord")
    if chord is not None:
        fields["chord"] = Signature.from_dict(chord, field="embed.chord")


def _read_body(payload: Any, fields: dict[str, Any]) -> None:
    """A protocol-2 body: exactly ``[args, kwargs, embed]``."""
    # A 2-element body kills a Celery worker ("not enough values to unpack"); refuse it.
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        shape = f"{len(payload)} elements" if isinstance(payload, list | tuple) else _kind(payload)
        raise MalformedMessage("body", f"must be [args, kwargs, embed], got {shape}")
    args, kwargs, embed = payload
    fields["args"] = _args(args, "body.args")
    fields["kwargs"] = _kwargs(kwargs, "body.kwargs")
    if embed is None:  # Celery's worker accepts a null embed
        return
    if not isinstance(embed, Mapping):
        raise MalformedMessage("embed", f"must be a mapping or null, got {_kind(embed)}")
    _read_embed(embed, fields, chain=True)
    extra = {}
    for key, value in embed.items():
        if key in EMBED_KEYS:
            continue
        if not isinstance(key, str):
            raise MalformedMessage("embed", f"keys must be strings, got {_show(key)}")
        extra[key] = value
    if extra:
        fields["extra_embed"] = extra


def _read_legacy_body(payload: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """The args, kwargs and embed of a protocol-1 (or hybrid) mapping body.

    As in Celery: ``args`` defaults to ``()``, ``kwargs`` to ``{}``; callbacks, errbacks
    and chord are read from the mapping; there is no chain in protocol 1.
    """
    fields["args"] = _args(payload.get("args", ()), "body.args")
    fields["kwargs"] = _kwargs(payload.get("kwargs", {}), "body.kwargs")
    _read_embed(payload, fields, chain=False)


def _read_protocol1(
    payload: Mapping[str, Any], headers: Mapping[str, Any], fields: dict[str, Any]
) -> None:
    """A protocol-1 message: the body mapping carries the task's metadata.

    Celery's ``proto1_to_proto2`` uses the body itself as the request headers, with
    ``group`` taken from ``taskset`` when that key is present. The ``utc`` flag is not
    used: naive times are UTC, as a Celery 5 worker reads them too.
    """
    as_headers = dict(payload)
    if "taskset" in as_headers:
        as_headers["group"] = as_headers["taskset"]
    _read_headers(as_headers, fields, where="body")
    _read_legacy_body(payload, fields)
    extra: dict[str, Any] = {}
    for key, value in headers.items():
        if key == "compression":
            continue
        if key in RESERVED_HEADERS:
            raise MalformedMessage(
                f"headers.{key}", "a protocol-2 header in a message without a task header"
            )
        if not isinstance(key, str):
            raise MalformedMessage("headers",
                                   f"header names must be strings, got {_show(key)}")
        extra[key] = value
    if extra:
        _within("headers", extra, MalformedMessage)
        fields["extra_headers"] = extra


# -- properties -----------------------------------------------------------------------


def _read_properties(properties: Mapping[str, Any], fields: dict[str, Any]) -> None:
    correlation_id = properties.get("correlation_id")
    if correlation_id is not None:
        if not isinstance(correlation_id, str):
            raise MalformedMessage(
                "properties.correlation_id", f"must be a string, got {_kind(correlation_id)}"
            )
        if correlation_id != fields["id"]:  # equal to the id is the default
            fields["correlation_id"] = correlation_id
    reply_to = properties.get("reply_to")
    if reply_to:  # Celery sends "" for "no reply queue"
        if not isinstance(reply_to, str):
            raise MalformedMessage("properties.reply_to",
                                   f"must be a string, got {_show(reply_to)}")
        fields["reply_to"] = reply_to
    priority = properties.get("priority")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
            raise MalformedMessage(
                "properties.priority",
                f"must be an integer from 0 to 255, got {_show(priority)}",
            )
        fields["priority"] = priority
    delivery_mode = properties.get("delivery_mode")
    if delivery_mode is not None:
        if isinstance(delivery_mode, bool) or delivery_mode not in (1, 2):
            raise MalformedMessage(
                "properties.delivery_mode", f"must be 1 or 2, got {_show(delivery_mode)}"
            )
        fields["delivery_mode"] = int(delivery_mode)
    expiration = properties.get("expiration")
    if expiration is not None:
        if not isinstance(expiration, str) or not expiration.isascii() or not expiration.isdigit():
            raise MalformedMessage(
                "properties.expiration",
                f"must be milliseconds as a decimal string, got {_show(expiration)}",
            )
        fields["expiration"] = expiration
    extra = _unknown(properties, PROPERTY_NAMES, "properties", "property")
    if extra:
        _within("properties", extra, MalformedMessage)
        fields["extra_properties"] = extra
