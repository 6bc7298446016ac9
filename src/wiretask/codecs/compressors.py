"""Compressors: body bytes in, body bytes out, with a hard cap on decompressed size.

Each compressor is a :class:`Compressor` record named by the MIME value that Kombu writes to the
``compression`` message header (``application/x-gzip``), with Kombu's aliases (``zlib``,
``gzip``). The records are immutable constants; a
:class:`~wiretask.codecs.registry.Registry` decides which ones are in use.

Kombu decompresses with the one-shot library functions and no limit, so a few kilobytes of
zeros can expand to gigabytes inside a worker. Every decompressor here streams instead and
stops as soon as the output would pass ``max_size``, raising
:class:`~wiretask.errors.MessageTooLarge` without having allocated past the limit (brotli can
overshoot by one internal output buffer; see :data:`BROTLI`).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs
import zstandard

from wiretask.errors import DecodeError, MessageTooLarge

__all__ = [
    "BROTLI",
    "BROTLI_CONTENT_TYPE",
    "BZ2",
    "BZ2_CONTENT_TYPE",
    "LZMA",
    "LZMA_CONTENT_TYPE",
    "ZLIB",
    "ZLIB_CONTENT_TYPE",
    "ZSTD",
    "ZSTD_CONTENT_TYPE",
    "Compressor",
    "available_compressors",
]

#: Kombu's header value for zlib. The name says gzip, but the bytes are a zlib (RFC 1950)
#: stream, not a gzip (RFC 1952) file: Kombu registers zlib.compress under this label, and
#: every Celery peer depends on the label, so it is kept as it is.
ZLIB_CONTENT_TYPE: Final = "application/x-gzip"
BZ2_CONTENT_TYPE: Final = "application/x-bz2"
#: The bytes are an .xz container (``lzma.compress`` defaults), whatever the label says.
LZMA_CONTENT_TYPE: Final = "application/x-lzma"
ZSTD_CONTENT_TYPE: Final = "application/zstd"
BROTLI_CONTENT_TYPE: Final = "application/x-brotli"

#: The field named in errors about the decompressed body.
_BODY: Final = "body"
#: The field named in errors about the compressed bytes themselves.
_FIELD: Final = "compression"


@attrs.frozen
class Compressor:
    """A compression format, named by its ``compression`` header value.

    Attributes:
        name: The canonical short name (``"zlib"``).
        content_type: The value written to the ``compression`` header (``"application/x-gzip"``).
        compress: Compresses bytes.
        decompress: ``decompress(data, max_size)`` returns at most ``max_size`` bytes; larger
            output raises :class:`~wiretask.errors.MessageTooLarge` before it is allocated, and
            malformed input raises :class:`~wiretask.errors.DecodeError` (field
            ``"compression"``).
        aliases: Other names accepted in ``compression=`` options and, when reading, in the
            header (a Celery worker accepts ``"compression": "zlib"`` too).
    """

    name: str
    content_type: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    aliases: tuple[str, ...] = ()


def _too_large(limit: int) -> MessageTooLarge:
    return MessageTooLarge(_BODY, limit)


# -- zlib ------------------------------------------------------------------------------------

# wbits=MAX_WBITS|32 auto-detects a zlib *or* gzip header. wiretask writes zlib streams, as
# Kombu does; reading real gzip files as well costs nothing and helps non-Python peers that
# took the "x-gzip" label literally.
_ZLIB_AUTO_HEADER: Final = zlib.MAX_WBITS | 32


def _zlib_compress(data: bytes) -> bytes:
    return zlib.compress(data)


def _zlib_decompress(data: bytes, max_size: int) -> bytes:
    decompressor = zlib.decompressobj(_ZLIB_AUTO_HEADER)
    try:
        # max_length bounds the output buffer itself: zlib stops writing there.
        out = decompressor.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise DecodeError(_FIELD, f"corrupt zlib data: {exc}") from exc
    if len(out) > max_size:
        raise _too_large(max_size)
    if not decompressor.eof:
        # zlib.decompress (Kombu) raises "incomplete or truncated stream" here too.
        raise DecodeError(_FIELD, "truncated zlib stream")
    # Like zlib.decompress, bytes after the end of the stream are ignored.
    return out


ZLIB: Final = Compressor(
    name="zlib",
    content_type=ZLIB_CONTENT_TYPE,
    compress=_zlib_compress,
    decompress=_zlib_decompress,
    aliases=("zlib", "gzip"),
)


# -- bz2 and lzma: the standard library's incremental decompressors ---------------------------


class _StreamDecompressor(Protocol):
    """What bz2.BZ2Decompressor and lzma.LZMADecompressor have in common."""

    @property
    def eof(self) -> bool: ...  # pragma: no cover - protocol

    @property
    def needs_input(self) -> bool: ...  # pragma: no cover - protocol

    @property
    def unused_data(self) -> bytes: ...  # pragma: no cover - protocol

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...  # pragma: no cover


def _decompress_streams(
    new: Callable[[], _StreamDecompressor],
    errors: tuple[type[Exception], ...],
    label: str,
    data: bytes,
    max_size: int,
) -> bytes:
    """Bounded version of ``bz2.decompress`` / ``lzma.decompress``.

    Like those functions it reads concatenated streams and ignores trailing bytes that do not
    start a valid stream, once at least one stream was read; a truncated stream is an error.
    """
    out = bytearray()
    first = True
    while True:
        stream_start = len(out)
        decompressor = new()
        chunk_input = data
        try:
            while True:
                out += decompressor.decompress(chunk_input, max_size + 1 - len(out))
                if len(out) > max_size:
                    raise _too_large(max_size)
                if decompressor.eof:
                    break
                if decompressor.needs_input:
                    raise DecodeError(_FIELD, f"truncated {label} stream")
                chunk_input = b""  # more output is pending for the input already given
        except errors as exc:
            if first:
                raise DecodeError(_FIELD, f"corrupt {label} data: {exc}") from exc
            # The standard library drops a garbage trailer (and what it produced) silently.
            del out[stream_start:]
            break
        first = False
        data = decompressor.unused_data
        if not data:
            break
    return bytes(out)


def _bz2_decompress(data: bytes, max_size: int) -> bytes:
    return _decompress_streams(bz2.BZ2Decompressor, (OSError, ValueError), "bzip2", data, max_size)


BZ2: Final = Compressor(
    name="bzip2",
    content_type=BZ2_CONTENT_TYPE,
    compress=bz2.compress,
    decompress=_bz2_decompress,
    aliases=("bzip2", "bzip"),
)

#: The most memory the LZMA decoder may use, whatever the limit on output. A header can ask
#: for a dictionary of up to 1.5 GiB; ``lzma.compress``'s default preset 6 needs about 9 MiB and
#: preset 9 about 65 MiB, so 96 MiB reads everything the presets write.
_LZMA_MIN_MEMLIMIT: Final = 96 * 1024 * 1024


def _lzma_decompress(data: bytes, max_size: int) -> bytes:
    memlimit = max(_LZMA_MIN_MEMLIMIT, max_size)

    def new() -> lzma.LZMADecompressor:
        # FORMAT_AUTO, as lzma.decompress: .xz (what Kombu writes) or legacy .lzma.
        return lzma.LZMADecompressor(memlimit=memlimit)

    return _decompress_streams(new, (lzma.LZMAError, ValueError), "lzma", data, max_size)


def _lzma_compress(data: bytes) -> bytes:
    return lzma.compress(data)


LZMA: Final = Compressor(
    name="lzma",
    content_type=LZMA_CONTENT_TYPE,
    compress=_lzma_compress,
    decompress=_lzma_decompress,
    aliases=("lzma", "xz"),
)


# -- zstd ------------------------------------------------------------------------------------
#
# Kombu 5.7 uses backports.zstd / compression.zstd (both wrap libzstd's one-shot API); wiretask
# uses the `zstandard` package. Both write and read standard frames (RFC 8878). The streaming
# reader of `zstandard` bounds output, but at the end of the input it returns a truncated
# frame's partial output without complaint, so frame boundaries are found first by walking the
# block headers (cheap: no decompression). That also gives multi-frame input and trailing
# garbage the same treatment as libzstd's ZSTD_decompress: all frames are read, skippable
# frames are skipped, and anything else is an error.

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE_MASK: Final = 0xFFFFFFF0
_ZSTD_SKIPPABLE_MAGIC: Final = 0x184D2A50
_ZSTD_BLOCK_RLE: Final = 1
_ZSTD_BLOCK_RESERVED: Final = 3
#: Smallest decoder window accepted whatever the output limit: zstd's levels 1-19 use at most
#: 8 MiB, so everything a default-configured peer writes is read. Larger windows (levels
#: 20-22 in streaming mode) are refused when they exceed the output limit, since a window
#: larger than the output is never needed and costs memory before any output exists.
_ZSTD_MIN_WINDOW: Final = 8 * 1024 * 1024
#: libzstd's largest window (ZSTD_WINDOWLOG_MAX_64 is 31).
_ZSTD_MAX_WINDOW: Final = 1 << 31
_ZSTD_READ_CHUNK: Final = 1024 * 1024


@attrs.frozen
class _ZstdFrame:
    start: int
    end: int
    content_size: int | None  # None: not in the header


def _zstd_frames(data: bytes) -> list[_ZstdFrame]:
    """Split ``data`` into zstd frames by their headers, without decompressing."""
    frames: list[_ZstdFrame] = []
    pos = 0
    size = len(data)
    if size == 0:
        raise DecodeError(_FIELD, "empty zstd data")
    while pos < size:
        if size - pos < 8:
            raise DecodeError(_FIELD, "truncated zstd frame header")
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
            pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            if pos > size:
                raise DecodeError(_FIELD, "truncated zstd skippable frame")
            continue
        if data[pos : pos + 4] != _ZSTD_MAGIC:
            raise DecodeError(_FIELD, "not a zstd frame (bad magic number)")
        start = pos
        descriptor = data[pos + 4]
        fcs_flag = descriptor >> 6
        single_segment = bool(descriptor & 0x20)
        if descriptor & 0x08:
            raise DecodeError(_FIELD, "zstd frame header has the reserved bit set")
        has_checksum = bool(descriptor & 0x04)
        dict_id_size = (0, 1, 2, 4)[descriptor & 0x03]
        fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        pos += 5 + (0 if single_segment else 1) + dict_id_size
        if pos + fcs_size > size:
            raise DecodeError(_FIELD, "truncated zstd frame header")
        content_size: int | None = None
        if fcs_size:
            content_size = int.from_bytes(data[pos : pos + fcs_size], "little")
            if fcs_size == 2:
                content_size += 256  # RFC 8878 3.1.1.1.4: the 2-byte form is offset by 256
        pos += fcs_size
        while True:
            if pos + 3 > size:
                raise DecodeError(_FIELD, "truncated zstd frame (block header)")
            header = int.from_bytes(data[pos : pos + 3], "little")
            last = header & 1
            block_type = (header >> 1) & 3
            if block_type == _ZSTD_BLOCK_RESERVED:
                raise DecodeError(_FIELD, "corrupt zstd frame (reserved block type)")
            pos += 3 + (1 if block_type == _ZSTD_BLOCK_RLE else header >> 3)
            if pos > size:
                raise DecodeError(_FIELD, "truncated zstd frame (block)")
            if last:
                break
        if has_checksum:
            pos += 4
            if pos > size:
                raise DecodeError(_FIELD, "truncated zstd frame (checksum)")
        frames.append(_ZstdFrame(start, pos, content_size))
    if not frames:
        raise DecodeError(_FIELD, "zstd data holds no frame, only skippable ones")
    return frames


def _zstd_compress(data: bytes) -> bytes:
    # One frame with the content size in its header, as libzstd's one-shot API writes.
    return zstandard.ZstdCompressor().compress(data)


def _zstd_decompress(data: bytes, max_size: int) -> bytes:
    frames = _zstd_frames(data)
    window = min(max(_ZSTD_MIN_WINDOW, max_size), _ZSTD_MAX_WINDOW)
    decompressor = zstandard.ZstdDecompressor(max_window_size=window)
    out = bytearray()
    try:
        for frame in frames:
            remaining = max_size - len(out)
            chunk = data[frame.start : frame.end]
            if frame.content_size is not None:
                # The header states the size: refuse before decompressing, or decompress into
                # a buffer of exactly that size (libzstd checks the size is right).
                if frame.content_size > remaining:
                    raise MessageTooLarge(_BODY, max_size, len(out) + frame.content_size)
                if frame.content_size:
                    out += decompressor.decompress(chunk)
                continue
            # No size in the header (streamed frames): read in bounded steps.
            with decompressor.stream_reader(chunk) as reader:
                while True:
                    piece = reader.read(min(_ZSTD_READ_CHUNK, max_size + 1 - len(out)))
                    if not piece:
                        break
                    out += piece
                    if len(out) > max_size:
                        raise _too_large(max_size)
    except zstandard.ZstdError as exc:
        raise DecodeError(_FIELD, f"corrupt zstd data: {exc}") from exc
    return bytes(out)


ZSTD: Final = Compressor(
    name="zstd",
    content_type=ZSTD_CONTENT_TYPE,
    compress=_zstd_compress,
    decompress=_zstd_decompress,
    aliases=("zstd", "zstandard"),
)


# -- brotli (optional) -----------------------------------------------------------------------

_brotli: Any
try:
    import brotli

    _brotli = brotli
except ImportError:  # pragma: no cover - the `brotli` extra is installed in the test env
    _brotli = None


def _brotli_compress(data: bytes) -> bytes:
    result: bytes = _brotli.compress(data)
    return result


def _brotli_decompress(data: bytes, max_size: int) -> bytes:
    decompressor = _brotli.Decompressor()
    out = bytearray()
    try:
        chunk_input = data
        while True:
            # output_buffer_limit stops the output buffer from growing once it reaches the
            # limit; the library's smallest buffer is about 32 KiB, so one call can return
            # up to that much past the limit. That is the residual overshoot.
            out += decompressor.process(chunk_input, output_buffer_limit=max_size + 1 - len(out))
            if len(out) > max_size:
                raise _too_large(max_size)
            if decompressor.can_accept_more_data():
                break
            chunk_input = b""  # output is pending: only empty input is allowed now
    except _brotli.error as exc:
        raise DecodeError(_FIELD, f"corrupt brotli data: {exc}") from exc
    if not decompressor.is_finished():
        raise DecodeError(_FIELD, "truncated brotli stream")
    return bytes(out)


#: ``None`` when the ``brotli`` package is not installed (the ``wiretask[brotli]`` extra).
BROTLI: Final[Compressor | None] = (
    None
    if _brotli is None
    else Compressor(
        name="brotli",
        content_type=BROTLI_CONTENT_TYPE,
        compress=_brotli_compress,
        decompress=_brotli_decompress,
        aliases=("brotli",),
    )
)


def available_compressors() -> tuple[Compressor, ...]:
    """The built-in compressors whose libraries are importable here."""
    builtin = (ZLIB, BZ2, LZMA, ZSTD, BROTLI)
    return tuple(compressor for compressor in builtin if compressor is not None)
