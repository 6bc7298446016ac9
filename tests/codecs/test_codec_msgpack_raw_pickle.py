"""msgpack with Kombu's options, raw bodies, and pickle behind its opt-in."""

from __future__ import annotations

import datetime
import pickle
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu import serialization as kombu_serialization
from strategies import msgpack_values

from wiretask.codecs import (
    MSGPACK_CONTENT_TYPE,
    PICKLE_CONTENT_TYPE,
    RAW_CONTENT_TYPE,
    default_registry,
)
from wiretask.errors import ContentDisallowed, DecodeError, EncodeError

REGISTRY = default_registry()


def kombu_msgpack_loads(data: bytes) -> Any:
    # msgpack is disabled in kombu's global registry; an explicit accept set enables it.
    return kombu_serialization.loads(
        data, MSGPACK_CONTENT_TYPE, "binary", accept={MSGPACK_CONTENT_TYPE}
    )


@given(msgpack_values())
def test_msgpack_round_trip(value: Any) -> None:
    encoded = REGISTRY.dumps(value, "msgpack")
    assert (encoded.content_type, encoded.content_encoding) == (MSGPACK_CONTENT_TYPE, "binary")
    assert REGISTRY.loads(encoded.data, encoded.content_type, encoded.content_encoding) == value


@given(msgpack_values())
def test_kombu_reads_wiretask_msgpack(value: Any) -> None:
    encoded = REGISTRY.dumps(value, "msgpack")
    assert kombu_msgpack_loads(encoded.data) == value


@given(msgpack_values())
def test_wiretask_reads_kombu_msgpack(value: Any) -> None:
    content_type, encoding, payload = kombu_serialization.dumps(value, "msgpack")
    assert REGISTRY.loads(payload, content_type, encoding) == value
    assert payload == REGISTRY.dumps(value, "msgpack").data  # same options, same bytes


def test_msgpack_tuples_become_lists_and_bytes_stay_bytes() -> None:
    encoded = REGISTRY.dumps({"t": (1, 2), "b": b"\x00\xff"}, "msgpack")
    assert REGISTRY.loads(encoded.data, MSGPACK_CONTENT_TYPE) == {"t": [1, 2], "b": b"\x00\xff"}


def test_msgpack_int_keys_are_refused_both_ways_like_kombu() -> None:
    # Kombu 5.7 calls unpackb(raw=False), whose strict_map_key=True refuses non-str keys, so a
    # Celery peer cannot read {1: ...}; wiretask refuses to write it and to read it.
    packed = msgpack.packb({1: "a"}, use_bin_type=True)
    with pytest.raises(kombu_serialization.DecodeError):
        kombu_msgpack_loads(packed)
    with pytest.raises(DecodeError):
        REGISTRY.loads(packed, MSGPACK_CONTENT_TYPE)
    with pytest.raises(EncodeError) as info:
        REGISTRY.dumps([{"ok": {2: "nested"}}], "msgpack")
    assert info.value.content_type == MSGPACK_CONTENT_TYPE


@pytest.mark.parametrize(
    "value",
    [datetime.datetime(2020, 1, 1), {1, 2}, object(), 2**64, -(2**63) - 1, "\ud800"],
    ids=["datetime", "set", "object", "too-big", "too-small", "surrogate"],
)
def test_msgpack_refuses_unpackable_values(value: Any) -> None:
    with pytest.raises(kombu_serialization.EncodeError):
        kombu_serialization.dumps(value, "msgpack")
    with pytest.raises(EncodeError) as info:
        REGISTRY.dumps(value, "msgpack", field="kwargs")
    assert info.value.field == "kwargs"


@pytest.mark.parametrize(
    "data", [b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa2\xff\xfe", b"\xdd\xff\xff\xff\xff"]
)
def test_msgpack_garbage_is_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        REGISTRY.loads(data, MSGPACK_CONTENT_TYPE)


# -- raw -------------------------------------------------------------------------------------


def test_raw_bytes_like_kombu() -> None:
    encoded = REGISTRY.dumps(b"\x00\xff", "raw")
    content_type, encoding, payload = kombu_serialization.dumps(b"\x00\xff", "raw")
    assert (encoded.content_type, encoded.content_encoding, encoded.data) == (
        content_type,
        encoding,
        payload,
    )
    assert REGISTRY.loads(encoded.data, encoded.content_type, encoded.content_encoding) == (
        b"\x00\xff"
    )


def test_raw_text_like_kombu() -> None:
    encoded = REGISTRY.dumps("héllo", "raw")
    content_type, encoding, payload = kombu_serialization.dumps("héllo", "raw")
    assert (encoded.content_type, encoded.content_encoding, encoded.data) == (
        content_type,
        encoding,
        payload,
    )
    assert REGISTRY.loads(encoded.data, encoded.content_type, encoded.content_encoding) == "héllo"
    assert kombu_serialization.loads(payload, content_type, encoding) == "héllo"


def test_raw_refuses_other_values() -> None:
    with pytest.raises(EncodeError):
        REGISTRY.dumps({"a": 1}, "raw")


@given(st.binary(), st.sampled_from(["binary", "ascii-8bit", "BINARY"]))
def test_raw_binary_is_returned_as_is(data: bytes, encoding: str) -> None:
    assert REGISTRY.loads(data, RAW_CONTENT_TYPE, encoding) == data
    assert kombu_serialization.loads(data, RAW_CONTENT_TYPE, encoding) == data


def test_raw_and_application_text_are_trusted_like_kombu() -> None:
    registry = default_registry(accept=["json"])
    for content_type in (RAW_CONTENT_TYPE, "application/text"):
        assert registry.loads(b"abc", content_type, "utf-8") == "abc"
        assert kombu_serialization.loads(b"abc", content_type, "utf-8", accept={"x/y"}) == "abc"
    strict = registry.copy(trusted=())
    with pytest.raises(ContentDisallowed):
        strict.loads(b"abc", RAW_CONTENT_TYPE, "utf-8")


def test_text_plain_is_not_trusted_like_kombu() -> None:
    with pytest.raises(ContentDisallowed):
        REGISTRY.loads(b"abc", "text/plain", "utf-8")
    assert REGISTRY.loads(b"abc", "text/plain", "utf-8", accept=["text/plain"]) == "abc"


def test_raw_bad_charset_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        REGISTRY.loads(b"\xff", RAW_CONTENT_TYPE, "utf-8")
    with pytest.raises(DecodeError):
        REGISTRY.loads(b"abc", RAW_CONTENT_TYPE, "no-such-charset")


# -- pickle ----------------------------------------------------------------------------------


def test_pickle_is_opt_in_and_kombu_compatible() -> None:
    registry = default_registry(pickle=True, accept=["json", "pickle"])
    value = {"when": datetime.date(2020, 1, 2), "t": (1, 2), "s": {1}}
    encoded = registry.dumps(value, "pickle")
    assert (encoded.content_type, encoded.content_encoding) == (PICKLE_CONTENT_TYPE, "binary")
    assert registry.loads(encoded.data, PICKLE_CONTENT_TYPE, "binary") == value
    assert kombu_serialization.loads(encoded.data, PICKLE_CONTENT_TYPE, "binary", force=True) == (
        value
    )
    _, _, payload = kombu_serialization.dumps(value, "pickle")
    assert registry.loads(payload, PICKLE_CONTENT_TYPE, "binary") == value
    assert pickle.loads(encoded.data) == value


def test_pickle_is_refused_by_default_even_when_labelled() -> None:
    with pytest.raises(ContentDisallowed):
        REGISTRY.loads(pickle.dumps(1), PICKLE_CONTENT_TYPE, "binary")
    # Accepting the MIME type on a registry without the pickle serializer decodes nothing:
    # like Kombu with no decoder for a type, the body comes back as bytes, never unpickled.
    data = pickle.dumps(1)
    assert REGISTRY.loads(data, PICKLE_CONTENT_TYPE, "binary", accept=[PICKLE_CONTENT_TYPE]) == (
        data
    )
