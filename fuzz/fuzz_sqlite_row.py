"""Coverage-guided fuzzing of the SQLite transport's row reader (atheris).

The entry point: the columns of one ``wiretask_messages`` row as a consumer reads them
(``wiretask.transports.sqlite._stored_frame``), written by anyone who can write the
file. The property: any row either reads as a frame or raises ``DecodeError`` (which
the consumer dead-letters, raw); a frame that reads then either decodes as a task
message (which encodes again) or raises ``DecodeError`` (spec §11.3). Anything else is a bug.

Each input is split deterministically, so a crash replays without atheris::

    byte 0        what the body column holds: even a BLOB, odd TEXT (a wrong writer)
    bytes 1-2     n, big-endian: length of the headers text that follows
    n bytes       the headers column (UTF-8, invalid bytes replaced)
    bytes         m (2 bytes) then m bytes: the properties column, the same way
    the rest      the body

Run: ``python fuzz/fuzz_sqlite_row.py --make-corpus fuzz/corpus-sqlite`` then
``python fuzz/fuzz_sqlite_row.py fuzz/corpus-sqlite -max_total_time=600``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

try:
    import atheris
except ImportError:
    atheris = None

_instrument = (atheris.instrument_imports(include=["wiretask"]) if atheris is not None
               else contextlib.nullcontext())
with _instrument:
    from wiretask.codecs import default_registry
    from wiretask.errors import DecodeError, WiretaskError
    from wiretask.protocol import decode, encode
    from wiretask.transports.sqlite import _stored_frame

from _harness import run, vector_frames  # noqa: E402 - after the instrumented imports

REGISTRY = default_registry(max_decompressed_size=1 << 20)


def split(data: bytes) -> tuple[bytes | str, str, str]:
    """One input as (body column, headers column, properties column)."""
    as_text = bool(data[:1]) and data[0] % 2 == 1
    rest = data[1:]
    columns = []
    for _ in range(2):
        size = int.from_bytes(rest[:2], "big")
        columns.append(rest[2:2 + size].decode("utf-8", "replace"))
        rest = rest[2 + size:]
    body: bytes | str = rest.decode("utf-8", "replace") if as_text else rest
    return body, columns[0], columns[1]


def join(body: bytes, headers: str, properties: str) -> bytes:
    """The inverse of :func:`split` for a BLOB body, for seeds."""
    out = b"\x00"
    for text in (headers, properties):
        raw = text.encode()
        out += len(raw).to_bytes(2, "big") + raw
    return out + body


def test_one_input(data: bytes) -> None:
    body, headers, properties = split(data)
    try:
        frame = _stored_frame("application/json", "utf-8", headers, properties, body)
    except DecodeError:
        return
    try:
        message = decode(frame, REGISTRY)
    except DecodeError:
        return
    with contextlib.suppress(WiretaskError):
        encode(message, REGISTRY)


def seeds() -> Iterator[tuple[str, bytes]]:
    """Every golden vector's frame as the row the SQLite transport stores."""
    for name, frame, body in vector_frames():
        if frame["content_type"] != "application/json":
            continue
        yield name, join(body, json.dumps(frame["headers"]), json.dumps(frame["properties"]))


if __name__ == "__main__":
    sys.exit(run(sys.argv, test_one_input, seeds))
