"""Properties over every codec: round trips, and decoding that fails only in the wiretask tree."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import json_values, msgpack_values

from wiretask.codecs import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    PICKLE_CONTENT_TYPE,
    RAW_CONTENT_TYPE,
    Compressor,
    available_compressors,
    default_registry,
)
from wiretask.errors import DecodeError

REGISTRY = default_registry()
COMPRESSORS = available_compressors()
IDS = [c.name for c in COMPRESSORS]

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "json": json_values(max_leaves=10),
    "msgpack": msgpack_values(max_leaves=10),
    "raw": st.binary(),
}


@pytest.mark.parametrize("compression", [*IDS, None])
@pytest.mark.parametrize("serializer", sorted(VALUES))
@given(data=st.data())
def test_every_serializer_round_trips_through_every_compressor(
    serializer: str, compression: str | None, data: st.DataObject
) -> None:
    value = data.draw(VALUES[serializer])
    encoded, header = REGISTRY.encode(value, serializer, compression)
    if compression is None:
        assert header is None
    else:
        assert header == REGISTRY.compressor(compression).content_type
    decoded = REGISTRY.decode(
        encoded.data, encoded.content_type, encoded.content_encoding, header
    )
    assert decoded == value


@given(value=json_values(max_leaves=10), threshold=st.integers(0, 200))
def test_threshold_only_changes_whether_bytes_are_compressed(value: Any, threshold: int) -> None:
    encoded, header = REGISTRY.encode(value, "json", "zstd", threshold=threshold)
    plain = REGISTRY.dumps(value, "json")
    if len(plain.data) < threshold:
        assert (encoded, header) == (plain, None)
    else:
        assert header == "application/zstd"
    assert REGISTRY.decode(encoded.data, JSON_CONTENT_TYPE, "utf-8", header) == value


def _decodes_or_raises_decode_error(call: Any) -> None:
    # Received bytes raise DecodeError (ContentDisallowed, MessageTooLarge and
    # MalformedMessage are DecodeErrors) and nothing else, as the spec promises (§11.3).
    try:
        call()
    except DecodeError:
        pass


CONTENT_TYPES = [
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    RAW_CONTENT_TYPE,
    PICKLE_CONTENT_TYPE,
    "text/plain",
    "application/x-yaml",
    None,
]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@given(
    data=st.binary(max_size=512),
    encoding=st.sampled_from([None, "utf-8", "binary", "latin-1", "bogus", "utf-16"]),
)
@example(data=b'{"__type__": "uuid", "__value__": {"x": 1}}', encoding="utf-8")
@example(data=b'{"__type__": "decimal", "__value__": [1, [2], 3]}', encoding="utf-8")
@example(data=b'{"__type__": [], "__value__": 1}', encoding="utf-8")
@example(data=b"[" * 5000 + b"]" * 5000, encoding="utf-8")
@example(data=b"\x91" * 5000, encoding=None)
def test_loads_succeeds_or_raises_only_decode_errors(
    content_type: str | None, data: bytes, encoding: str | None
) -> None:
    # accept everything, so the decoders themselves (not the policy) face the bytes
    registry = default_registry(pickle=True)
    accept = [JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE, "text/plain", "application/x-yaml"]
    _decodes_or_raises_decode_error(lambda: registry.loads(data, content_type, encoding,
                                                              accept=accept))


@given(
    data=json_values(max_leaves=10).map(lambda v: REGISTRY.dumps(v, "json").data),
    flip=st.data(),
)
def test_json_decoder_on_mutated_documents(data: bytes, flip: st.DataObject) -> None:
    mutated = bytearray(data)
    for _ in range(flip.draw(st.integers(1, 3))):
        index = flip.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = flip.draw(st.integers(0, 255))
    _decodes_or_raises_decode_error(lambda: REGISTRY.loads(bytes(mutated), JSON_CONTENT_TYPE))


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@given(data=st.binary(max_size=512))
def test_decompress_arbitrary_bytes(compressor: Compressor, data: bytes) -> None:
    _decodes_or_raises_decode_error(
        lambda: REGISTRY.decompress(data, compressor.content_type, max_size=1 << 16)
    )


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@given(payload=st.binary(min_size=1, max_size=2048), flip=st.data())
def test_decompress_mutated_streams(
    compressor: Compressor, payload: bytes, flip: st.DataObject
) -> None:
    # Random bytes rarely get past a header; flipping bytes of a valid stream reaches the
    # block decoders, checksums and trailers.
    stream = bytearray(compressor.compress(payload))
    for _ in range(flip.draw(st.integers(1, 4))):
        index = flip.draw(st.integers(0, len(stream) - 1))
        stream[index] = flip.draw(st.integers(0, 255))
    cut = flip.draw(st.integers(0, len(stream)))
    _decodes_or_raises_decode_error(
        lambda: REGISTRY.decompress(bytes(stream[:cut]), compressor.content_type, max_size=4096)
    )


@given(data=st.binary(max_size=64), compression=st.text(max_size=20))
def test_decompress_unknown_header_is_a_decode_error(data: bytes, compression: str) -> None:
    _decodes_or_raises_decode_error(lambda: REGISTRY.decompress(data, compression))
