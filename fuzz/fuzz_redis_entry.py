"""Coverage-guided fuzzing of the Redis transport's entry decoder (atheris).

The entry point: the bytes of one Redis list entry, as a consumer pops them
(``wiretask.transports.redis.envelope.decode``). The property: any input either reads
as a frame or raises ``BadEntry`` (which the consumer dead-letters); a frame that reads
is written back by ``envelope.encode`` to an entry that reads as the same frame; and
the frame then either decodes as a task message (which encodes again) or raises
``DecodeError`` (spec §11.3). Anything else is a bug.

Run: ``python fuzz/fuzz_redis_entry.py --make-corpus fuzz/corpus-redis`` then
``python fuzz/fuzz_redis_entry.py fuzz/corpus-redis -max_total_time=600`` (see README.md).
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
    from wiretask.codecs import default_registry
    from wiretask.errors import DecodeError, EncodeError, WiretaskError
    from wiretask.protocol import Frame, decode, encode
    from wiretask.transports.redis import envelope

from _harness import run, vector_frames  # noqa: E402 - after the instrumented imports

REGISTRY = default_registry(max_decompressed_size=1 << 20)


def test_one_input(data: bytes) -> None:
    try:
        received = envelope.decode(data, queue="q")
    except envelope.BadEntry:
        return
    try:
        again = envelope.encode(received.frame, exchange=received.exchange,
                                routing_key=received.routing_key,
                                delivery_tag=received.delivery_tag)
    except EncodeError:
        return  # a header JSON reads but Kombu's dialect does not write back (NaN)
    if envelope.decode(again, queue="q").frame != received.frame:
        raise AssertionError("an entry read back differs from the frame it wrote")
    try:
        message = decode(received.frame, REGISTRY)
    except DecodeError:
        return
    with contextlib.suppress(WiretaskError):
        encode(message, REGISTRY)


def seeds() -> Iterator[tuple[str, bytes]]:
    """Every golden vector's frame as the entry Kombu would push."""
    for name, frame, body in vector_frames():
        made = Frame(body=body, content_type=frame["content_type"],
                     content_encoding=frame["content_encoding"], headers=frame["headers"],
                     properties=frame["properties"])
        with contextlib.suppress(EncodeError):
            yield name, envelope.encode(made, exchange="", routing_key="celery",
                                        delivery_tag=f"tag-{name}").encode()


if __name__ == "__main__":
    sys.exit(run(sys.argv, test_one_input, seeds))
