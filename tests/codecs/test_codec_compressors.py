"""Compressors: Kombu's labels and bytes, interop both ways, and the decompressed-size cap."""

from __future__ import annotations

import bz2
import gzip
import lzma
import time
import tracemalloc
import zlib
from collections.abc import Callable
from functools import cache

import brotli
import pytest
import zstandard
from backports import zstd as backports_zstd
from hypothesis import given
from hypothesis import strategies as st
from kombu import compression as kombu_compression

from wiretask.codecs import (
    BROTLI,
    BZ2,
    LZMA,
    ZLIB,
    ZSTD,
    Compressor,
    available_compressors,
    default_registry,
)
from wiretask.errors import DecodeError, MessageTooLarge

REGISTRY = default_registry()
COMPRESSORS = available_compressors()
IDS = [c.name for c in COMPRESSORS]
MIB = 1 << 20
GIB = 1 << 30


def test_labels_and_aliases_match_kombu() -> None:
    expected = {
        "application/x-gzip": {"zlib", "gzip"},
        "application/x-bz2": {"bzip2", "bzip"},
        "application/x-lzma": {"lzma", "xz"},
        "application/zstd": {"zstd", "zstandard"},
        "application/x-brotli": {"brotli"},
    }
    assert {c.content_type: set(c.aliases) for c in COMPRESSORS} == expected
    assert BROTLI is not None  # the test environment has the brotli extra
    for content_type, aliases in expected.items():
        assert set(kombu_compression.encoders()) >= {content_type}
        for alias in aliases:
            assert kombu_compression.get_encoder(alias)[1] == content_type
            assert REGISTRY.compressor(alias).content_type == content_type


def test_zlib_writes_a_zlib_stream_not_a_gzip_file() -> None:
    data, header = REGISTRY.compress(b"payload" * 10, "gzip")
    assert header == "application/x-gzip"
    assert data[:2] == b"\x78\x9c"  # RFC 1950 header, as kombu's zlib.compress writes
    assert zlib.decompress(data) == b"payload" * 10


def test_zlib_also_reads_a_real_gzip_file() -> None:
    assert REGISTRY.decompress(gzip.compress(b"hello"), "application/x-gzip") == b"hello"


def test_lzma_writes_an_xz_container() -> None:
    assert LZMA.compress(b"x")[:6] == b"\xfd7zXZ\x00"


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@given(data=st.binary(max_size=4096))
def test_round_trip(compressor: Compressor, data: bytes) -> None:
    compressed, header = REGISTRY.compress(data, compressor.name)
    assert header == compressor.content_type
    assert REGISTRY.decompress(compressed, header) == data
    assert REGISTRY.decompress(compressed, compressor.aliases[-1]) == data


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@given(data=st.binary(max_size=4096))
def test_kombu_reads_wiretask(compressor: Compressor, data: bytes) -> None:
    compressed, header = REGISTRY.compress(data, compressor.name)
    assert kombu_compression.decompress(compressed, header) == data


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@given(data=st.binary(max_size=4096))
def test_wiretask_reads_kombu(compressor: Compressor, data: bytes) -> None:
    compressed, header = kombu_compression.compress(data, compressor.aliases[0])
    assert header == compressor.content_type
    assert REGISTRY.decompress(compressed, header) == data


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
def test_limit_is_inclusive(compressor: Compressor) -> None:
    data = bytes(range(256)) * 40
    compressed = compressor.compress(data)
    assert compressor.decompress(compressed, len(data)) == data
    with pytest.raises(MessageTooLarge) as info:
        compressor.decompress(compressed, len(data) - 1)
    assert info.value.limit == len(data) - 1
    assert info.value.field == "body"


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
def test_empty_payload(compressor: Compressor) -> None:
    assert compressor.decompress(compressor.compress(b""), 0) == b""


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
def test_truncated_stream_is_decode_error(compressor: Compressor) -> None:
    compressed = compressor.compress(bytes(range(256)) * 100)
    with pytest.raises(DecodeError) as info:
        compressor.decompress(compressed[: len(compressed) // 2], 1 << 20)
    assert info.value.field == "compression"
    assert type(info.value) is DecodeError


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@pytest.mark.parametrize("junk", [b"", b"\x00", b"not compressed at all"])
def test_garbage_is_decode_error(compressor: Compressor, junk: bytes) -> None:
    with pytest.raises(DecodeError):
        compressor.decompress(junk, 1 << 20)


# -- trailing data: the same answer as the library function Kombu calls ----------------------

KOMBU_FUNCTIONS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": zlib.decompress,
    "bzip2": bz2.decompress,
    "lzma": lzma.decompress,
    "zstd": backports_zstd.decompress,
    "brotli": brotli.decompress,
}


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
@pytest.mark.parametrize(
    "suffix",
    [pytest.param("same", id="second-stream"), b"garbage!", b"\x00" * 20],
)
def test_trailing_data_handled_like_the_library_kombu_calls(
    compressor: Compressor, suffix: bytes | str
) -> None:
    first = compressor.compress(b"first")
    tail = compressor.compress(b"second") if suffix == "same" else suffix
    assert isinstance(tail, bytes)
    try:
        expected: bytes | None = KOMBU_FUNCTIONS[compressor.name](first + tail)
    except Exception:
        expected = None
    if expected is None:
        with pytest.raises(DecodeError):
            compressor.decompress(first + tail, 1 << 20)
    else:
        assert compressor.decompress(first + tail, 1 << 20) == expected


# -- zstd frames of every shape ---------------------------------------------------------------


def test_zstd_frame_without_content_size() -> None:
    payload = b"abc" * 10_000
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
    assert zstandard.frame_content_size(no_size) == -1
    assert ZSTD.decompress(no_size, len(payload)) == payload
    with pytest.raises(MessageTooLarge):
        ZSTD.decompress(no_size, len(payload) - 1)


def test_zstd_streamed_by_backports_zstd() -> None:
    # kombu 5.7's library, in streaming mode (no content size in the header, several blocks).
    payload = bytes(range(256)) * 4096
    compressor = backports_zstd.ZstdCompressor()
    streamed = compressor.compress(payload) + compressor.flush()
    assert ZSTD.decompress(streamed, len(payload)) == payload


def test_zstd_checksummed_frames() -> None:
    payload = b"hello world" * 100
    checked = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    assert ZSTD.decompress(checked, 1 << 20) == payload
    corrupt = bytearray(checked)
    corrupt[-1] ^= 0xFF
    with pytest.raises(DecodeError):
        ZSTD.decompress(bytes(corrupt), 1 << 20)


def test_zstd_multiple_and_skippable_frames() -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    data = skippable + ZSTD.compress(b"one") + skippable + ZSTD.compress(b"two")
    assert ZSTD.decompress(data, 100) == b"onetwo" == backports_zstd.decompress(data)
    with pytest.raises(DecodeError):
        ZSTD.decompress(skippable, 100)  # no real frame at all


def test_zstd_refuses_from_header_before_decompressing() -> None:
    # The frame header says 1 GiB; nothing is decompressed to find out.
    bomb = zstd_bomb(with_size=True)
    started = time.perf_counter()
    with pytest.raises(MessageTooLarge) as info:
        ZSTD.decompress(bomb, MIB)
    assert info.value.size == GIB
    assert time.perf_counter() - started < 0.1


# -- bombs: 1 GiB of zeros --------------------------------------------------------------------


def zlib_zero_bomb(mebibytes: int) -> bytes:
    """A valid zlib stream of ``mebibytes`` MiB of zeros, built without compressing it all.

    After a full flush the deflate state is reset, so every further MiB of zeros compresses
    to the same bytes; the trailer is the Adler-32 of n zeros, (n mod 65521) << 16 | 1.
    """
    chunk = b"\0" * MIB
    compressor = zlib.compressobj(9)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_empty_block = b"\x03\x00"
    adler = ((mebibytes * MIB) % 65521) << 16 | 1
    return first + repeat * (mebibytes - 1) + final_empty_block + adler.to_bytes(4, "big")


def test_zlib_bomb_builder_is_a_valid_stream() -> None:
    assert zlib.decompress(zlib_zero_bomb(3)) == b"\0" * 3 * MIB


def concatenated(compress: Callable[[bytes], bytes], streams: int, mebibytes: int) -> bytes:
    # bz2/xz/zstd decoders read concatenated streams; Kombu's library functions do too.
    return compress(b"\0" * mebibytes * MIB) * streams


@cache
def zstd_bomb(*, with_size: bool) -> bytes:
    # Streamed, so that 1 GiB never sits in memory; size=... pledges the content size, which
    # then appears in the frame header.
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=GIB if with_size else -1)
    chunk = b"\0" * (16 * MIB)
    return b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()


@cache
def bomb(name: str) -> bytes:
    """Each format's compression of 1 GiB of zeros."""
    if name == "zlib":
        return zlib_zero_bomb(1024)
    if name == "bzip2":
        return concatenated(lambda data: bz2.compress(data, 1), 64, 16)
    if name == "lzma":
        return concatenated(lambda data: lzma.compress(data, preset=0), 64, 16)
    if name == "zstd":
        return zstd_bomb(with_size=False)
    compressor = brotli.Compressor(quality=1)
    chunk = b"\0" * (16 * MIB)
    return b"".join(compressor.process(chunk) for _ in range(64)) + compressor.finish()


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
def test_bomb_is_refused_quickly_in_bounded_memory(compressor: Compressor) -> None:
    data = bomb(compressor.name)
    assert len(data) < 2 * MIB  # a real bomb: at least ~1000:1
    registry = default_registry(max_decompressed_size=MIB)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(MessageTooLarge) as info:
            registry.decompress(data, compressor.content_type)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.limit == MIB
    assert elapsed < 2.0
    # The output buffer, one copy of it, and brotli's 32 KiB of slack: nowhere near 1 GiB.
    assert peak < 4 * MIB


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=IDS)
def test_default_limit_stops_a_bomb(compressor: Compressor) -> None:
    registry = default_registry()
    with pytest.raises(MessageTooLarge) as info:
        registry.decompress(bomb(compressor.name), compressor.aliases[0])
    assert info.value.limit == registry.max_decompressed_size == 64 * MIB


def test_single_stream_bombs_are_bounded_too() -> None:
    # The bz2/lzma bombs above are concatenations; one long stream is stopped the same way.
    zeros = b"\0" * (64 * MIB)
    for compressor, data in [(BZ2, bz2.compress(zeros, 1)), (LZMA, lzma.compress(zeros, preset=0))]:
        with pytest.raises(MessageTooLarge):
            compressor.decompress(data, MIB)
    with pytest.raises(MessageTooLarge):
        ZLIB.decompress(zlib.compress(zeros), MIB)


def test_lzma_dictionary_larger_than_allowed_is_refused() -> None:
    # A header may ask for a huge dictionary; the decoder's memory limit refuses it. The
    # legacy .lzma header (read by FORMAT_AUTO, like lzma.decompress) stores the dictionary
    # size as bytes 1-4, so patch a tiny stream to ask for 1.5 GiB.
    data = bytearray(lzma.compress(b"tiny", format=lzma.FORMAT_ALONE))
    data[1:5] = (1536 * MIB).to_bytes(4, "little")
    assert lzma.LZMADecompressor().decompress(bytes(data)) == b"tiny"  # valid, just greedy
    with pytest.raises(DecodeError) as info:
        LZMA.decompress(bytes(data), MIB)
    assert "emory" in info.value.problem
