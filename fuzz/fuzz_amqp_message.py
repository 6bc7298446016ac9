"""Coverage-guided fuzzing of the AMQP message -> frame mapping (atheris).

The entry point: one message as RabbitMQ delivers it to a consumer, the content header
(property flags and list, with the ``application_headers`` table) and the body, read the
way the AMQP transport reads it: the frames go through ``wire.tolerant_frame_handler``
(py-amqp's reader, made to survive a header it cannot read) and the message becomes a
frame with ``wire.to_frame``. No socket: the frames are handed to the handler as the
connection would. The property:

* reading never raises, and the message always arrives: either as a frame, or marked
  unreadable (``wire.unreadable_of``) with its raw property bytes kept in the frame;
* a frame that reads either writes back (``wire.encode`` and ``wire.publish_frames``)
  to a content header that reads again with the same header names, or raises
  ``EncodeError`` (the dead letter then leaves the headers out, TRANSPORTS.md §6.8);
* so does its dead-letter copy (the reason headers added);
* the frame then decodes as a task message (which encodes again) or raises
  ``DecodeError`` (spec §11.3).

Anything else is a bug. Each input is split deterministically, so a crash replays
without atheris::

    byte 0        even: the rest is raw bytes; odd: the rest drives a structured build
    raw:          bytes 1-2: n, big-endian; n bytes of content header properties;
                  the rest is the body
    structured:   atheris's FuzzedDataProvider (``fuzz.structured``) builds the basic
                  properties and an application_headers table of every type py-amqp
                  writes (str, bytes, int of every size, float, bool, None, Decimal,
                  datetime, lists, nested tables), written by py-amqp's own writer

Run: ``python fuzz/fuzz_amqp_message.py --make-corpus fuzz/corpus-amqp`` then
``python fuzz/fuzz_amqp_message.py fuzz/corpus-amqp -max_total_time=600`` (README.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

try:
    import atheris
except ImportError:
    atheris = None

_instrument = (atheris.instrument_imports(include=["wiretask"]) if atheris is not None
               else contextlib.nullcontext())
with _instrument:
    from wiretask._amqp import wire
    from wiretask.codecs import default_registry
    from wiretask.errors import DecodeError, EncodeError, WiretaskError
    from wiretask.protocol import Frame, decode, encode

from _harness import VECTORS, run, vector_frames  # noqa: E402
from amqp import spec  # noqa: E402 - after the instrumented imports
from amqp.basic_message import Message  # noqa: E402
from amqp.serialization import dumps  # noqa: E402

REGISTRY = default_registry(max_decompressed_size=1 << 20)
FRAME_MAX = 131072
CHANNEL = 1
#: ``basic.deliver`` (consumer tag, delivery tag, redelivered, exchange, routing key).
DELIVER = struct.pack(">HH", *spec.Basic.Deliver) + dumps("sLbss", ("ctag", 1, False, "", "q"))


class _Connection:
    """What py-amqp's frame handler touches on its connection."""

    bytes_recv = 0


def receive(properties: bytes, body: bytes) -> Message:
    """The message a consumer gets for this content header and body, read frame by
    frame as the transport's connection reads them."""
    got: list[Any] = []

    def on_method(channel: int, method: Any, args: Any, message: Any) -> None:
        got.append(message)

    handle = wire.tolerant_frame_handler(_Connection(), on_method)
    handle((1, CHANNEL, DELIVER))
    handle((2, CHANNEL, struct.pack(">HHQ", spec.Basic.CLASS_ID, 0, len(body)) + properties))
    for start in range(0, len(body), FRAME_MAX - 8):
        handle((3, CHANNEL, body[start:start + FRAME_MAX - 8]))
    if len(got) != 1 or got[0] is None:
        raise AssertionError(f"the message did not arrive whole: {got!r}")
    message: Message = got[0]
    return message


def check_written_back(frame: Frame) -> None:
    """``frame`` writes back to a content header that reads with the same header names,
    or raises ``EncodeError``."""
    try:
        encoded = wire.encode(frame)
        wire.publish_frames(encoded, "", "q", channel=CHANNEL, frame_max=FRAME_MAX)
    except EncodeError:
        return
    again = receive(encoded.properties, frame.body)
    if wire.unreadable_of(again) is not None:
        raise AssertionError(f"written back unreadable: {wire.unreadable_of(again)}")
    read = wire.to_frame(again)
    if list(read.headers) != list(frame.headers):
        raise AssertionError(f"headers written back as {list(read.headers)!r}, "
                             f"were {list(frame.headers)!r}")


def test_one_input(data: bytes) -> None:
    properties, body = split(data)
    message = receive(properties, body)
    frame = wire.to_frame(message)
    if wire.unreadable_of(message) is not None:
        if frame.headers.get(wire.RAW_PROPERTIES) != properties[:wire.RAW_KEPT]:
            raise AssertionError("an unreadable message lost its raw properties")
        return
    check_written_back(frame)
    dead = Frame.adopt(frame.body, frame.content_type, frame.content_encoding,
                       {**frame.headers, "x-wiretask-dead-reason": "DecodeError: " + "x" * 200,
                        "x-wiretask-dead-queue": "q", "x-wiretask-dead-at": 1.5},
                       dict(frame.properties))
    check_written_back(dead)
    try:
        task = decode(frame, REGISTRY)
    except DecodeError:
        return
    with contextlib.suppress(WiretaskError):
        encode(task, REGISTRY)


def split(data: bytes) -> tuple[bytes, bytes]:
    """One input as (content header properties, body)."""
    if data[:1] and data[0] % 2 == 1:
        return structured(data[1:]), b"[[1, 2], {}, null]"
    rest = data[1:]
    size = int.from_bytes(rest[:2], "big")
    return rest[2:2 + size], rest[2 + size:]


def join(properties: bytes, body: bytes) -> bytes:
    """The inverse of the raw form of :func:`split`, for seeds."""
    return b"\x00" + len(properties).to_bytes(2, "big") + properties + body


# -- the structured build -------------------------------------------------------------

_PROPERTY_NAMES = [name for name, _ in Message.PROPERTIES]


class _Provider:
    """atheris's FuzzedDataProvider when atheris is there; the same few calls over the
    bytes otherwise (for the replay and the hypothesis tests), deterministic either way."""

    def __init__(self, data: bytes) -> None:
        self._fdp = atheris.FuzzedDataProvider(data) if atheris is not None else None
        self._data = data
        self._at = 0

    def byte(self) -> int:
        if self._fdp is not None:
            return int(self._fdp.ConsumeIntInRange(0, 255))
        if self._at >= len(self._data):
            return 0
        self._at += 1
        return self._data[self._at - 1]

    def integer(self, nbytes: int) -> int:
        value = 0
        for _ in range(nbytes):
            value = value << 8 | self.byte()
        return value - (1 << (8 * nbytes - 1)) if nbytes else 0

    def text(self, limit: int) -> str:
        raw = bytes(self.byte() for _ in range(self.byte() % (limit + 1)))
        return raw.decode("utf-8", "replace")

    def blob(self, limit: int) -> bytes:
        return bytes(self.byte() for _ in range(self.byte() % (limit + 1)))


def _value(source: _Provider, depth: int) -> Any:
    kind = source.byte() % 13
    if kind == 0:
        return source.text(40)
    if kind == 1:
        return source.blob(20)  # valid UTF-8 or not: py-amqp writes bytes as 'S'
    if kind == 2:
        return source.integer(4)
    if kind == 3:
        return source.integer(8)
    if kind == 4:
        return struct.unpack(">d", struct.pack(">q", source.integer(8)))[0]
    if kind == 5:
        return bool(source.byte() % 2)
    if kind == 6:
        return None
    if kind == 7:
        return Decimal(source.integer(4)).scaleb(-(source.byte() % 12))
    if kind == 8:
        # Naive UTC, as py-amqp reads a timestamp.
        return datetime.fromtimestamp(source.integer(4) & 0x7FFFFFFF, tz=UTC).replace(tzinfo=None)
    if kind in (9, 10) and depth < 6:
        return [_value(source, depth + 1) for _ in range(source.byte() % 5)]
    if kind in (11, 12) and depth < 6:
        return _table(source, depth + 1)
    return source.text(8)


_KNOWN = ["id", "task", "lang", "eta", "expires", "retries", "timelimit", "argsrepr",
          "kwargsrepr", "origin", "root_id", "parent_id", "group", "shadow", "stamps",
          "compression", "ignore_result", "x-wiretask-properties"]


def _table(source: _Provider, depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for _ in range(source.byte() % 8):
        pick = source.byte()
        key = _KNOWN[pick % len(_KNOWN)] if pick < 200 else source.text(12)
        table[key] = _value(source, depth)
    return table


def structured(data: bytes) -> bytes:
    """Basic properties built from ``data``, with py-amqp's writer: the bytes another
    py-amqp client (or Kombu) could send."""
    source = _Provider(data)
    properties: dict[str, Any] = {"application_headers": _table(source, 0)}
    for name in _PROPERTY_NAMES:
        if source.byte() % 3:
            continue
        if name in ("delivery_mode", "priority"):
            properties[name] = source.byte()
        elif name == "timestamp":
            properties[name] = source.integer(8) & 0x7FFFFFFFFFFFFFFF
        elif name != "application_headers":
            properties[name] = source.text(30)
    with contextlib.suppress(Exception):
        written: bytes = Message(**properties)._serialize_properties()
        return written
    return b"\x00\x00"  # nothing py-amqp could write: no properties at all


# -- seeds ----------------------------------------------------------------------------


def seeds() -> Iterator[tuple[str, bytes]]:
    """The content headers recorded from Celery on RabbitMQ (``spec/vectors/amqp/``), and
    every golden vector's frame as wiretask writes it."""
    for path in sorted((VECTORS / "amqp").glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if "content_header" in document:
            yield f"amqp-{path.stem}", join(base64.b64decode(document["content_header"]),
                                            base64.b64decode(document["body"]))
    for name, frame, body in vector_frames():
        made = Frame(body=body, content_type=frame["content_type"],
                     content_encoding=frame["content_encoding"], headers=frame["headers"],
                     properties=frame["properties"])
        with contextlib.suppress(EncodeError):
            yield name, join(wire.encode(made).properties, body)


if __name__ == "__main__":
    sys.exit(run(sys.argv, test_one_input, seeds))
