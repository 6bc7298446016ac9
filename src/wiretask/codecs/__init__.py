"""Codecs: serializers and compressors, pure functions from bytes to bytes.

Everything goes through a :class:`Registry` instance; :func:`default_registry` builds one with
the built-in codecs and a safe accept policy (JSON and msgpack)::

    from wiretask.codecs import default_registry

    registry = default_registry()
    encoded = registry.dumps({"x": 1}, "json")
    body, header = registry.compress(encoded.data, "zstd")

    registry.check_accept(encoded.content_type)        # refuse before touching the body
    data = registry.decompress(body, header)           # bounded by max_decompressed_size
    value = registry.loads(data, encoded.content_type, encoded.content_encoding)
"""

from __future__ import annotations

from wiretask.codecs.compressors import (
    BROTLI,
    BROTLI_CONTENT_TYPE,
    BZ2,
    BZ2_CONTENT_TYPE,
    LZMA,
    LZMA_CONTENT_TYPE,
    ZLIB,
    ZLIB_CONTENT_TYPE,
    ZSTD,
    ZSTD_CONTENT_TYPE,
    Compressor,
    available_compressors,
)
from wiretask.codecs.nesting import MAX_DEPTH
from wiretask.codecs.registry import (
    DEFAULT_ACCEPT,
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    TRUSTED_CONTENT,
    Encoded,
    Registry,
    default_registry,
    enable_pickle,
    normalize_content_type,
)
from wiretask.codecs.serializers import (
    JSON,
    JSON_CONTENT_TYPE,
    MSGPACK,
    MSGPACK_CONTENT_TYPE,
    PICKLE,
    PICKLE_CONTENT_TYPE,
    RAW,
    RAW_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Serializer,
)

__all__ = [
    "BROTLI",
    "BROTLI_CONTENT_TYPE",
    "BZ2",
    "BZ2_CONTENT_TYPE",
    "DEFAULT_ACCEPT",
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "JSON",
    "JSON_CONTENT_TYPE",
    "LZMA",
    "LZMA_CONTENT_TYPE",
    "MAX_DEPTH",
    "MSGPACK",
    "MSGPACK_CONTENT_TYPE",
    "PICKLE",
    "PICKLE_CONTENT_TYPE",
    "RAW",
    "RAW_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "TRUSTED_CONTENT",
    "ZLIB",
    "ZLIB_CONTENT_TYPE",
    "ZSTD",
    "ZSTD_CONTENT_TYPE",
    "Compressor",
    "Encoded",
    "Registry",
    "Serializer",
    "available_compressors",
    "default_registry",
    "enable_pickle",
    "normalize_content_type",
]
