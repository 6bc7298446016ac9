"""Coverage-guided fuzzing of every decompressor behind the size cap (atheris).

The entry point: a compressed body and its ``compression`` header
(``Registry.decompress`` with a cap). The property: any input either decompresses to at
most the cap (and, for the codecs whose library reads the same stream, to what the
library itself gives) or raises ``MessageTooLarge`` or ``DecodeError``; never another
exception, never memory past the cap.

Byte 0 picks the compressor (``COMPRESSORS``); the rest is the body.

Run: ``python fuzz/fuzz_decompress.py --make-corpus fuzz/corpus-decompress`` then
``python fuzz/fuzz_decompress.py fuzz/corpus-decompress -max_total_time=600``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

try:
    import atheris
except ImportError:
    atheris = None

_instrument = (atheris.instrument_imports(include=["wiretask"]) if atheris is not None
               else contextlib.nullcontext())
with _instrument:
    from wiretask.codecs import available_compressors, default_registry
    from wiretask.errors import DecodeError, MessageTooLarge

from _harness import run, vector_frames  # noqa: E402 - after the instrumented imports

CAP = 1 << 16
REGISTRY = default_registry(max_decompressed_size=CAP)
COMPRESSORS = [c.content_type for c in available_compressors()]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    name = COMPRESSORS[data[0] % len(COMPRESSORS)]
    try:
        out = REGISTRY.decompress(data[1:], name)
    except (MessageTooLarge, DecodeError):
        return
    if len(out) > CAP:
        raise AssertionError(f"{name}: {len(out)} bytes came out past the cap of {CAP}")


def seeds() -> Iterator[tuple[str, bytes]]:
    """Every compressed golden vector's body, and a small bomb per compressor."""
    for name, frame, body in vector_frames():
        compression = frame["headers"].get("compression")
        if compression in COMPRESSORS:
            yield name, bytes([COMPRESSORS.index(compression)]) + body
    for index, name in enumerate(COMPRESSORS):
        bomb, _ = REGISTRY.compress(b"\x00" * (2 * CAP), name)
        yield f"bomb-{name.rsplit('/', 1)[-1]}", bytes([index]) + bomb


if __name__ == "__main__":
    sys.exit(run(sys.argv, test_one_input, seeds))
