"""Read an AMQP 0-9-1 content header's basic properties into a *typed* tree, keeping the
field type of every value: ``{"content_type": ["s", "application/json"],
"application_headers": ["F", {"lang": ["S", "py"], "retries": ["I", 0], ...}], ...}``.

Written from the AMQP 0-9-1 specification and RabbitMQ's errata (field types ``t b B s u
I i l L f d D S A T F V x``, with ``s`` a signed 16-bit int and ``l`` a signed 64-bit int
as RabbitMQ writes them; ``L`` is read as a signed 64-bit int, as py-amqp writes it). It
imports neither wiretask nor py-amqp, so that a vector records what was on the wire, not
what either library makes of it. Byte arrays (``x``) are base64 text.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

__all__ = ["PROPERTIES", "read_properties", "untyped"]

#: The basic properties, in flag order, with their property types.
PROPERTIES = (
    ("content_type", "shortstr"), ("content_encoding", "shortstr"),
    ("application_headers", "table"), ("delivery_mode", "octet"), ("priority", "octet"),
    ("correlation_id", "shortstr"), ("reply_to", "shortstr"), ("expiration", "shortstr"),
    ("message_id", "shortstr"), ("timestamp", "timestamp"), ("type", "shortstr"),
    ("user_id", "shortstr"), ("app_id", "shortstr"), ("cluster_id", "shortstr"),
)
_LETTER = {"shortstr": "s", "octet": "o", "timestamp": "T", "table": "F"}


def read_properties(data: bytes) -> dict[str, list[Any]]:
    """The properties of a content header (the bytes after class id, weight and body
    size), each as ``[type, value]``; shortstr properties have the type ``"s"`` (a short
    string here, not a table's 16-bit int), octets ``"o"``."""
    flags, offset = _read_flags(data)
    result: dict[str, list[Any]] = {}
    for index, (name, kind) in enumerate(PROPERTIES):
        if not flags & (1 << (15 - index)):
            continue
        if kind == "shortstr":
            size = data[offset]
            value: Any = data[offset + 1:offset + 1 + size].decode("utf-8")
            offset += 1 + size
        elif kind == "octet":
            value = data[offset]
            offset += 1
        elif kind == "timestamp":
            (value,) = struct.unpack_from(">Q", data, offset)
            offset += 8
        else:
            result[name], offset = _read_table(data, offset)
            continue
        result[name] = [_LETTER[kind], value]
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes left after the properties")
    return result


def untyped(node: list[Any]) -> Any:
    """The plain value of a ``[type, value]`` node (tables and arrays recursively)."""
    kind, value = node
    if kind == "F":
        return {key: untyped(item) for key, item in value.items()}
    if kind == "A":
        return [untyped(item) for item in value]
    return value


def _read_flags(data: bytes) -> tuple[int, int]:
    (flags,) = struct.unpack_from(">H", data, 0)
    if flags & 1:
        raise ValueError("continued property flags are not used by the basic class")
    return flags, 2


def _read_table(data: bytes, offset: int) -> tuple[list[Any], int]:
    (size,) = struct.unpack_from(">I", data, offset)
    offset += 4
    end = offset + size
    table: dict[str, list[Any]] = {}
    while offset < end:
        key_size = data[offset]
        key = data[offset + 1:offset + 1 + key_size].decode("utf-8")
        offset += 1 + key_size
        table[key], offset = _read_field(data, offset)
    return ["F", table], end


def _read_field(data: bytes, offset: int) -> tuple[list[Any], int]:
    kind = chr(data[offset])
    offset += 1
    simple = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
              "l": ">q", "L": ">q", "f": ">f", "d": ">d", "T": ">Q"}
    if kind in simple:
        (value,) = struct.unpack_from(simple[kind], data, offset)
        offset += struct.calcsize(simple[kind])
        return [kind, bool(value) if kind == "t" else value], offset
    if kind == "D":
        scale, digits = struct.unpack_from(">Bi", data, offset)
        return [kind, [scale, digits]], offset + 5
    if kind in "Sx":
        (size,) = struct.unpack_from(">I", data, offset)
        raw = data[offset + 4:offset + 4 + size]
        text = raw.decode("utf-8") if kind == "S" else base64.b64encode(raw).decode("ascii")
        return [kind, text], offset + 4 + size
    if kind == "V":
        return [kind, None], offset
    if kind == "F":
        return _read_table(data, offset)
    if kind == "A":
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        end = offset + size
        items: list[Any] = []
        while offset < end:
            item, offset = _read_field(data, offset)
            items.append(item)
        return ["A", items], end
    raise ValueError(f"unknown field type {kind!r} at byte {offset - 1}")
