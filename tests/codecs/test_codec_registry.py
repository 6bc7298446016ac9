"""The registry: lookup, accept policy, dumps/loads plumbing, compression entry points."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from wiretask.codecs import (
    DEFAULT_ACCEPT,
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    JSON,
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    PICKLE_CONTENT_TYPE,
    RAW_CONTENT_TYPE,
    ZLIB,
    ZLIB_CONTENT_TYPE,
    Compressor,
    Encoded,
    Registry,
    Serializer,
    default_registry,
    enable_pickle,
)
from wiretask.errors import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    MessageTooLarge,
    UnknownCodec,
)


def test_default_registry_is_fresh_each_call() -> None:
    first, second = default_registry(), default_registry()
    assert first is not second
    first.register_serializer(
        Serializer("shout", "text/x-shout", "utf-8", lambda v: str(v).upper().encode(), bytes)
    )
    assert "shout" in first.serializer_names()
    assert "shout" not in second.serializer_names()


def test_default_accept_is_json_and_msgpack() -> None:
    registry = default_registry()
    assert registry.accept == DEFAULT_ACCEPT == {JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE}
    assert registry.max_decompressed_size == DEFAULT_MAX_DECOMPRESSED_SIZE


@pytest.mark.parametrize("name", ["json", "JSON", "application/json", "Application/JSON"])
def test_serializer_lookup_by_name_or_type(name: str) -> None:
    assert default_registry().serializer(name) is JSON


def test_unknown_serializer_names_what_is_known() -> None:
    with pytest.raises(UnknownCodec) as info:
        default_registry().serializer("yaml")
    assert info.value.kind == "serializer"
    assert info.value.name == "yaml"
    assert "json" in info.value.known


@pytest.mark.parametrize("name", ["zlib", "gzip", "GZIP", "application/x-gzip"])
def test_compressor_lookup_by_alias_or_type(name: str) -> None:
    assert default_registry().compressor(name) is ZLIB


def test_unknown_compressor() -> None:
    with pytest.raises(UnknownCodec) as info:
        default_registry().compressor("snappy")
    assert info.value.kind == "compressor"


def test_dumps_returns_encoded_with_properties() -> None:
    encoded = default_registry().dumps({"a": 1}, "json")
    assert encoded == Encoded(b'{"a":1}', "application/json", "utf-8")
    encoded = default_registry().dumps([1], "msgpack")
    assert (encoded.content_type, encoded.content_encoding) == ("application/x-msgpack", "binary")


def test_dumps_error_names_field_and_problem() -> None:
    with pytest.raises(EncodeError) as info:
        default_registry().dumps({1, 2}, "json", field="args")
    assert info.value.field == "args"
    assert info.value.content_type == JSON_CONTENT_TYPE
    assert "set" in info.value.problem


def test_compress_writes_canonical_header_even_for_alias() -> None:
    data, header = default_registry().compress(b"x" * 100, "zlib")
    assert header == ZLIB_CONTENT_TYPE
    assert zlib.decompress(data) == b"x" * 100


def test_loads_refuses_before_decoding() -> None:
    registry = default_registry()
    with pytest.raises(ContentDisallowed) as info:
        registry.loads(b"\x80\x04garbage", PICKLE_CONTENT_TYPE, "binary")
    assert info.value.content_type == PICKLE_CONTENT_TYPE
    assert info.value.field == "content_type"


def test_decode_failure_is_decode_error_naming_body() -> None:
    with pytest.raises(DecodeError) as info:
        default_registry().loads(b"{nope", "application/json", "utf-8")
    assert info.value.field == "body"
    assert type(info.value) is DecodeError


def test_decompress_limit() -> None:
    registry = default_registry(max_decompressed_size=1000)
    data, header = registry.compress(b"\0" * 1001, "zlib")
    with pytest.raises(MessageTooLarge) as info:
        registry.decompress(data, header)
    assert info.value.limit == 1000
    assert registry.decompress(data, header, max_size=1001) == b"\0" * 1001


def test_custom_compressor_registers_on_instance() -> None:
    def rot(data: bytes) -> bytes:
        return bytes((b + 1) % 256 for b in data)

    def unrot(data: bytes, max_size: int) -> bytes:
        if len(data) > max_size:
            raise MessageTooLarge("body", max_size, len(data))
        return bytes((b - 1) % 256 for b in data)

    registry = Registry(serializers=[JSON], accept=["json"])
    registry.register_compressor(Compressor("rot", "application/x-rot", rot, unrot, ("rot1",)))
    data, header = registry.compress(b"abc", "rot1")
    assert (data, header) == (b"bcd", "application/x-rot")
    assert registry.decompress(data, "ROT1") == b"abc"
    assert "rot" not in default_registry().compressor_names()


def test_pickle_needs_explicit_opt_in() -> None:
    registry = default_registry()
    with pytest.raises(UnknownCodec):
        registry.dumps(1, "pickle")
    with pytest.raises(UnknownCodec):
        default_registry(accept=["json", "pickle"])
    opted = default_registry(pickle=True)
    encoded = opted.dumps({"a": (1, 2)}, "pickle")
    assert PICKLE_CONTENT_TYPE not in opted.accept
    with pytest.raises(ContentDisallowed):
        opted.loads(encoded.data, encoded.content_type, encoded.content_encoding)
    value: Any = opted.loads(
        encoded.data, encoded.content_type, encoded.content_encoding, accept=["pickle"]
    )
    assert value == {"a": (1, 2)}
    accepting = enable_pickle(default_registry(), accept=True)
    assert PICKLE_CONTENT_TYPE in accepting.accept


def test_missing_content_type_is_raw_and_trusted() -> None:
    registry = default_registry()
    assert registry.loads(b"\xff", None, "binary") == b"\xff"
    assert registry.loads(b"abc", "", None) == "abc"
    assert registry.loads(b"abc", RAW_CONTENT_TYPE, "utf-8") == "abc"
