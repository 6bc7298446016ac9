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
    ImproperlyConfigured,
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


# -- accept policy ---------------------------------------------------------------------------


def test_accept_takes_names_and_mime_types() -> None:
    registry = default_registry(accept=["msgpack", "Application/JSON", "application/x-custom"])
    assert registry.accept == {MSGPACK_CONTENT_TYPE, JSON_CONTENT_TYPE, "application/x-custom"}
    assert default_registry(accept="json").accept == {JSON_CONTENT_TYPE}


def test_accept_unknown_name_is_unknown_codec() -> None:
    with pytest.raises(UnknownCodec):
        default_registry(accept=["json", "yaml"])
    with pytest.raises(UnknownCodec):
        default_registry().check_accept(JSON_CONTENT_TYPE, accept=["yaml"])


def test_check_accept_per_call_override() -> None:
    registry = default_registry(accept=["json"])
    registry.check_accept(JSON_CONTENT_TYPE)
    with pytest.raises(ContentDisallowed):
        registry.check_accept(MSGPACK_CONTENT_TYPE)
    registry.check_accept(MSGPACK_CONTENT_TYPE, accept=["msgpack"])
    with pytest.raises(ContentDisallowed) as info:
        registry.check_accept(JSON_CONTENT_TYPE, accept=["msgpack"], field="properties")
    assert info.value.field == "properties"


def test_content_type_parameters_and_case_are_ignored() -> None:
    registry = default_registry()
    assert registry.loads(b"[1]", "Application/JSON; charset=utf-8", "utf-8") == [1]
    registry.check_accept(b"application/json")  # type: ignore[arg-type]  # AMQP drivers


def test_empty_structured_body_is_a_decode_error() -> None:
    # Kombu returns b"" unchanged here; wiretask says what is wrong instead.
    with pytest.raises(DecodeError, match="empty json body"):
        default_registry().loads(b"", JSON_CONTENT_TYPE, "utf-8")


def test_loads_accepts_bytes_like_and_refuses_other_types() -> None:
    registry = default_registry()
    assert registry.loads(bytearray(b"[1]"), JSON_CONTENT_TYPE) == [1]  # type: ignore[arg-type]
    assert registry.loads(memoryview(b"[2]"), JSON_CONTENT_TYPE) == [2]  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="expected bytes"):
        registry.loads("[3]", JSON_CONTENT_TYPE)  # type: ignore[arg-type]


def test_refused_content_is_never_decompressed() -> None:
    # A zstd frame that claims 1 GiB, and a corrupt stream: both labelled with a refused
    # content type. decode() checks the policy first, so neither is touched.
    huge_header = bytes.fromhex("28b52ffd") + bytes([0xA0]) + (1 << 30).to_bytes(4, "little")
    registry = default_registry(accept=["json"], max_decompressed_size=1024)
    for body, compression in [(huge_header, "zstd"), (b"\x78\x9cgarbage", "zlib")]:
        with pytest.raises(ContentDisallowed):
            registry.decode(body, PICKLE_CONTENT_TYPE, "binary", compression)
        with pytest.raises(ContentDisallowed):
            registry.decode(body, MSGPACK_CONTENT_TYPE, "binary", compression)
        # ...while an accepted type gets as far as the decompressor, which objects:
        with pytest.raises(DecodeError) as info:
            registry.decode(body, JSON_CONTENT_TYPE, "utf-8", compression)
        assert not isinstance(info.value, ContentDisallowed)


def test_decode_bounds_decompression() -> None:
    registry = default_registry(max_decompressed_size=100)
    encoded, header = registry.encode(list(range(100)), "json", "zlib")
    with pytest.raises(MessageTooLarge):
        registry.decode(encoded.data, encoded.content_type, encoded.content_encoding, header)
    value = registry.decode(
        encoded.data, encoded.content_type, encoded.content_encoding, header, max_size=1000
    )
    assert value == list(range(100))


# -- compression entry points ----------------------------------------------------------------


def test_decompress_unknown_header_is_a_decode_error_not_unknown_codec() -> None:
    # Received bytes are at fault, not the caller: DecodeError, naming the field.
    with pytest.raises(DecodeError) as info:
        default_registry().decompress(b"x", "application/x-snappy")
    assert info.value.field == "compression"
    assert not isinstance(info.value, UnknownCodec)
    assert "application/x-snappy" in info.value.problem


def test_maybe_compress_threshold() -> None:
    registry = default_registry(compress_threshold=10)
    assert registry.maybe_compress(b"short", "zlib") == (b"short", None)
    data, header = registry.maybe_compress(b"long enough!", "zlib")
    assert header == ZLIB_CONTENT_TYPE
    assert zlib.decompress(data) == b"long enough!"
    assert registry.maybe_compress(b"short", "zlib", threshold=0)[1] == ZLIB_CONTENT_TYPE
    assert registry.maybe_compress(b"long enough!", None) == (b"long enough!", None)
    assert default_registry().maybe_compress(b"", "zlib")[1] == ZLIB_CONTENT_TYPE
    with pytest.raises(UnknownCodec):
        registry.maybe_compress(b"short", "snappy")


def test_compressor_failure_is_encode_error() -> None:
    def broken(data: bytes) -> bytes:
        raise RuntimeError("disk on fire")

    registry = Registry(compressors=[Compressor("broken", "application/x-broken", broken,
                                                ZLIB.decompress)])
    with pytest.raises(EncodeError) as info:
        registry.compress(b"x", "broken")
    assert info.value.field == "compression"
    assert "disk on fire" in info.value.problem


def test_custom_decompressor_that_ignores_the_limit_is_still_capped() -> None:
    def lying(data: bytes, max_size: int) -> bytes:
        return data * 10

    def crashing(data: bytes, max_size: int) -> bytes:
        raise IndexError("oops")

    registry = Registry(
        compressors=[
            Compressor("lying", "application/x-lying", bytes, lying),
            Compressor("crashing", "application/x-crashing", bytes, crashing),
        ],
        max_decompressed_size=50,
    )
    with pytest.raises(MessageTooLarge) as too_large:
        registry.decompress(b"0123456789", "lying")
    assert too_large.value.size == 100
    with pytest.raises(DecodeError) as corrupt:
        registry.decompress(b"x", "crashing")
    assert corrupt.value.field == "compression"


# -- custom serializers, copies --------------------------------------------------------------


def test_custom_serializer_registers_and_is_accepted_by_name() -> None:
    csv = Serializer(
        name="csv",
        content_type="text/csv",
        content_encoding="utf-8",
        dumps=lambda rows: "\n".join(",".join(map(str, r)) for r in rows).encode(),
        loads=lambda data: [line.split(",") for line in data.decode().splitlines()],
        aliases=("comma",),
    )
    registry = default_registry()
    registry.register_serializer(csv)
    encoded = registry.dumps([[1, 2], [3, 4]], "comma")
    assert encoded == Encoded(b"1,2\n3,4", "text/csv", "utf-8")
    with pytest.raises(ContentDisallowed):
        registry.loads(encoded.data, encoded.content_type)
    accepting = registry.copy(accept=["json", "csv"])
    assert accepting.loads(encoded.data, "text/csv") == [["1", "2"], ["3", "4"]]
    with pytest.raises(DecodeError):
        accepting.loads(b"\xff", "text/csv")


def test_copy_changes_only_what_is_asked() -> None:
    registry = default_registry(accept=["json"], compress_threshold=5)
    smaller = registry.copy(max_decompressed_size=10)
    assert smaller.max_decompressed_size == 10
    assert registry.max_decompressed_size == DEFAULT_MAX_DECOMPRESSED_SIZE
    assert smaller.accept == registry.accept == {JSON_CONTENT_TYPE}
    assert smaller.compress_threshold == 5
    assert smaller.serializer_names() == registry.serializer_names()
    assert smaller.compressor_names() == registry.compressor_names()
    smaller.register_serializer(Serializer("x", "x/x", "binary", bytes, bytes))
    assert "x" not in registry.serializer_names()
    with pytest.raises(TypeError, match="unknown settings: bogus"):
        registry.copy(bogus=1)


@pytest.mark.parametrize(
    "settings", [{"max_decompressed_size": -1}, {"compress_threshold": -1}]
)
def test_negative_limits_are_refused(settings: dict[str, int]) -> None:
    with pytest.raises(ImproperlyConfigured, match="negative") as info:
        Registry(**settings)
    assert info.value.setting in settings


def test_repr_names_the_configuration() -> None:
    text = repr(default_registry(accept=["json"]))
    assert "accept=['application/json']" in text
    assert "zstd" in text
