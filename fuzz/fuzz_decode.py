"""Coverage-guided fuzzing of the task-message decoder (atheris).

The property: for any input, ``decode_raw`` either returns a valid ``TaskMessage`` (which
then encodes again) or raises ``DecodeError`` (or a subclass: ``ContentDisallowed``,
``MessageTooLarge``, ``MalformedMessage``), as ``spec/PROTOCOL.md`` §11.3 promises.
Anything else (another ``WiretaskError``, a ``KeyError``, a ``TypeError``, a hang, a
crash) is a bug.

Each fuzz input is split deterministically, so a crashing input can be replayed without
atheris::

    byte 0        content type (index into CONTENT_TYPES)
    byte 1        compression header (index into COMPRESSIONS; past the end = no header)
    bytes 2-3     n, big-endian: length of the headers JSON that follows
    n bytes       headers, as JSON text (any JSON value; non-objects are fed as they are)
    bytes         m (2 bytes) then m bytes of properties JSON, the same way
    the rest      the body bytes

Run ``python fuzz/fuzz_decode.py -atheris_runs=100000 fuzz/corpus`` (see README.md), or
``python fuzz/fuzz_decode.py --make-corpus fuzz/corpus`` to seed a corpus from the golden
vectors, or ``python fuzz/fuzz_decode.py --replay FILE...`` to re-run saved inputs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

try:
    import atheris
except ImportError:  # the harness still imports, replays and builds corpora without it
    atheris = None

_instrument = (atheris.instrument_imports(include=["wiretask"]) if atheris is not None
               else contextlib.nullcontext())
with _instrument:
    from wiretask.codecs import default_registry
    from wiretask.errors import DecodeError, WiretaskError
    from wiretask.protocol import TaskMessage, decode_raw, encode

REGISTRY = default_registry(max_decompressed_size=1 << 20)
CONTENT_TYPES = [
    "application/json",
    "application/x-msgpack",
    "application/data",
    "application/x-python-serialize",
    "text/plain",
    "",
]
COMPRESSIONS = [
    "application/x-gzip", "zlib", "application/x-bz2", "application/x-lzma",
    "application/zstd", "application/x-brotli", "brotli", "unknown/thing",
]
VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"


def split(data: bytes) -> tuple[bytes, Any, Any, str, str | None]:
    """Cut one fuzz input into (body, headers, properties, content type, compression)."""
    content_type = CONTENT_TYPES[data[0] % len(CONTENT_TYPES)] if data else ""
    compression = None
    if len(data) > 1 and data[1] < len(COMPRESSIONS):
        compression = COMPRESSIONS[data[1]]
    rest = data[2:]
    parsed: list[Any] = []
    for _ in range(2):
        size = int.from_bytes(rest[:2], "big")
        chunk, rest = rest[2:2 + size], rest[2 + size:]
        try:
            parsed.append(json.loads(chunk.decode("utf-8", "replace")))
        except ValueError:
            parsed.append({})
    return rest, parsed[0], parsed[1], content_type, compression


def join(body: bytes, headers: Any, properties: Any, content_type: str,
         compression: str | None) -> bytes:
    """The inverse of :func:`split`, for building seed inputs."""
    header_json = json.dumps(headers).encode()
    property_json = json.dumps(properties).encode()
    comp_index = COMPRESSIONS.index(compression) if compression in COMPRESSIONS else 255
    return (
        bytes([CONTENT_TYPES.index(content_type), comp_index])
        + len(header_json).to_bytes(2, "big") + header_json
        + len(property_json).to_bytes(2, "big") + property_json
        + body
    )


def test_one_input(data: bytes) -> None:
    """The fuzz target: decode, and re-encode what decodes."""
    body, headers, properties, content_type, compression = split(data)
    if compression is not None and isinstance(headers, dict):
        headers["compression"] = compression
    try:
        message = decode_raw(body, headers, properties, content_type, "utf-8", REGISTRY)
    except DecodeError:
        return
    if not isinstance(message, TaskMessage):
        raise TypeError(f"decode_raw returned {type(message).__name__}")
    with contextlib.suppress(WiretaskError):
        encode(message, REGISTRY)


def make_corpus(folder: Path) -> int:
    """Write one seed input per golden vector into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(VECTORS.rglob("*.json")):
        frame = json.loads(path.read_text(encoding="utf-8")).get("frame")
        if frame is None:  # a canvas vector (spec/vectors/canvas): decoded messages
            continue
        if frame["content_type"] not in CONTENT_TYPES:
            continue
        headers = dict(frame["headers"])
        compression = headers.pop("compression", None)
        seed = join(base64.b64decode(frame["body"]), headers, frame["properties"],
                    frame["content_type"], compression)
        (folder / f"{path.stem}.bin").write_bytes(seed)
        count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--make-corpus":
        folder = Path(argv[2] if len(argv) > 2 else "fuzz/corpus")
        print(f"wrote {make_corpus(folder)} seeds to {folder}")
        return 0
    if len(argv) > 1 and argv[1] == "--replay":
        for name in argv[2:]:
            test_one_input(Path(name).read_bytes())
            print(f"ok {name}")
        return 0
    if atheris is None:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
