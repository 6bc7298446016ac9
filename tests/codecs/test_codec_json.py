"""JSON in Kombu's dialect: same JSON values as Kombu writes, and reads everything Kombu writes."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu import serialization as kombu_serialization
from kombu.utils import json as kombu_json
from strategies import json_values

from wiretask.codecs import JSON_CONTENT_TYPE, default_registry
from wiretask.codecs.serializers import json_dumps, json_loads
from wiretask.errors import DecodeError, EncodeError

REGISTRY = default_registry()


def kombu_tree(value: Any) -> Any:
    """The JSON value (no markers decoded) that Kombu writes for ``value``."""
    return json.loads(kombu_json.dumps(value))


def wiretask_tree(value: Any) -> Any:
    return json.loads(json_dumps(value))


def kombu_loads(data: bytes) -> Any:
    return kombu_serialization.loads(data, JSON_CONTENT_TYPE, "utf-8")


def wiretask_loads(data: bytes) -> Any:
    return REGISTRY.loads(data, JSON_CONTENT_TYPE, "utf-8")


# -- the dialect, value by value --------------------------------------------------------------

MARKED = [
    (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "datetime", "2024-01-02T03:04:05+00:00"),
    (datetime(2024, 1, 2, 3, 4, 5, 6), "datetime", "2024-01-02T03:04:05.000006"),
    (datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=-5))), "datetime",
     "2024-01-02T00:00:00-05:00"),
    (date(2024, 1, 2), "date", "2024-01-02"),
    (time(3, 4, 5, 600), "time", "03:04:05.000600"),
    (Decimal("1.10"), "decimal", "1.10"),
    (uuid.UUID(int=1), "uuid", {"hex": "00000000000000000000000000000001"}),
    (b"text", "bytes", "text"),
    (b"\xff\x00", "base64", "/wA="),
]


@pytest.mark.parametrize(("value", "type_name", "wire"), MARKED)
def test_markers_are_written_as_kombu_writes_them(value: Any, type_name: str, wire: Any) -> None:
    expected = {"__type__": type_name, "__value__": wire}
    assert wiretask_tree(value) == expected == kombu_tree(value)
    assert wiretask_tree([value]) == [expected]
    assert wiretask_loads(json_dumps({"k": value})) == {"k": value}
    assert kombu_loads(json_dumps({"k": value})) == {"k": value}


class Point(collections.namedtuple("Point", "x y")):
    pass


class WithJSON:
    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __json__(self) -> Any:
        return self.payload


class Colour(enum.IntEnum):
    RED = 1


class Flavour(enum.StrEnum):
    SWEET = "sweet"


class Money(float):
    pass


class Name(str):
    pass


class Bag(dict[str, Any]):
    pass


NATIVE_QUIRKS = [
    pytest.param((1, (2, 3)), id="tuples-become-arrays"),
    pytest.param(Point(1, 2), id="namedtuple"),
    pytest.param({1: "a", False: "b", None: "c"}, id="int-bool-none-keys"),
    pytest.param({1.5: "a", -0.0: "b", 1e16: "c"}, id="float-keys"),
    pytest.param(2**64, id="int-beyond-64-bits"),
    pytest.param(-(2**63) - 1, id="negative-int-beyond-64-bits"),
    pytest.param(10**40, id="huge-int"),
    pytest.param([math.inf, -math.inf], id="infinities"),
    pytest.param("lone \ud800 surrogate", id="lone-surrogate"),
    pytest.param("unicode é ☃ 𝄞", id="non-ascii"),
    pytest.param(WithJSON({"a": uuid.UUID(int=5)}), id="__json__-returning-uuid"),
    pytest.param(WithJSON(math.inf), id="__json__-returning-inf"),
    pytest.param(WithJSON([1, WithJSON(date(2020, 1, 1))]), id="nested-__json__"),
    pytest.param([uuid.uuid4(), "x"], id="uuid"),
    pytest.param({"u": type("U", (uuid.UUID,), {})(int=7)}, id="uuid-subclass"),
    pytest.param([Colour.RED, Flavour.SWEET], id="int-and-str-enums"),
    pytest.param([Money(1.5)], id="float-subclass"),
    pytest.param({Name("k"): Name("v")}, id="str-subclass"),
    pytest.param(Bag(a=Bag(b=1)), id="dict-subclass"),
    pytest.param(datetime(2020, 1, 1, tzinfo=UTC), id="top-level-marker"),
    pytest.param({"__type__": "x", "__value__": 1, "extra": 2}, id="marker-like-with-extra-key"),
    pytest.param([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], id="nested"),
]


@pytest.mark.parametrize("value", NATIVE_QUIRKS)
def test_same_json_value_as_kombu(value: Any) -> None:
    assert wiretask_tree(value) == kombu_tree(value)


def test_deep_nesting_beyond_orjson_limit_matches_kombu() -> None:
    value: Any = 1
    for _ in range(400):  # orjson stops at 254 levels; the exact path takes over
        value = [value]
    data = json_dumps(value)
    assert json.loads(data) == kombu_tree(value)
    assert wiretask_loads(data) == value


def test_nan_survives_like_kombu() -> None:
    data = json_dumps({"x": math.nan})
    assert b"NaN" in data  # orjson alone would have written null
    assert math.isnan(wiretask_loads(data)["x"])
    assert math.isnan(kombu_loads(data)["x"])


@dataclasses.dataclass
class Record:
    x: int


class PlainEnum(enum.Enum):
    A = 1


REFUSED = [
    pytest.param({1, 2}, id="set"),
    pytest.param(frozenset({1}), id="frozenset"),
    pytest.param(PlainEnum.A, id="plain-enum"),
    pytest.param([PlainEnum.A], id="plain-enum-in-list"),
    pytest.param(Record(1), id="dataclass"),
    pytest.param(object(), id="object"),
    pytest.param({(1, 2): "x"}, id="tuple-key"),
    pytest.param({date(2020, 1, 1): "x"}, id="date-key"),
    pytest.param({uuid.UUID(int=1): "x"}, id="uuid-key"),
    pytest.param({PlainEnum.A: "x"}, id="enum-key"),
    pytest.param(bytearray(b"x"), id="bytearray"),
    pytest.param(WithJSON({1, 2}), id="__json__-returning-set"),
]


@pytest.mark.parametrize("value", REFUSED)
def test_refuses_what_kombu_refuses(value: Any) -> None:
    with pytest.raises(kombu_serialization.EncodeError):
        kombu_serialization.dumps(value, "json")
    with pytest.raises(EncodeError) as info:
        REGISTRY.dumps(value, "json")
    assert info.value.field == "body"
    assert info.value.content_type == JSON_CONTENT_TYPE


def test_circular_reference_is_encode_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match=r"[Cc]ircular"):
        REGISTRY.dumps(loop, "json")


# -- decoding ---------------------------------------------------------------------------------


def test_kombu_5_2_plain_iso_strings_stay_strings() -> None:
    # kombu <= 5.2 wrote datetimes as bare ISO strings (UTC as "Z"), Decimals/UUIDs as str.
    old = (
        b'[["2024-01-02T03:04:05Z", "2024-01-02T00:00:00", "1.10", '
        b'"6f1ad8b4-3a4c-4c43-9d62-0ad1f8e7b0a6"], {}, {"callbacks": null}]'
    )
    assert wiretask_loads(old) == kombu_loads(old) == json.loads(old)


@pytest.mark.parametrize(
    "text",
    [
        b'{"__type__": "bogus", "__value__": 1}',
        b'[{"__type__": "bogus", "__value__": 1}]',
        b'{"__type__": "datetime", "__value__": "not a date"}',
        b'{"__type__": "uuid", "__value__": "no-dict"}',
        b'{"__type__": "decimal", "__value__": "x"}',
        b'{"__type__": "bytes", "__value__": 1}',
        b'{"__type__": "decimal", "__value__": {"__type__": "bytes", "__value__": "1"}}',
        b'{"__type__": {"__type__": "bytes", "__value__": "x"}, "__value__": 1}',
        b'{"\\u005f_type__": "bogus", "__value__": 1}',
        b"[1, 2",
        b"\xff",
        b"NaN NaN",
        b'"\\ud800',
    ],
)
def test_bad_documents_fail_as_decode_error_where_kombu_fails(text: bytes) -> None:
    with pytest.raises(kombu_serialization.DecodeError):
        kombu_loads(text)
    with pytest.raises(DecodeError) as info:
        wiretask_loads(text)
    assert info.value.field == "body"


@pytest.mark.parametrize(
    "text",
    [
        b'{"__type__": "datetime", "__value__": "2024-01-02T03:04:05Z", "x": 1}',
        b'{"\\u005f_type__": "date", "__value__": "2024-01-02"}',
        b'{"__typ\\u0065__": "date", "__value__": "2024-01-02"}',
        b'{"__type__": "decimal", "__value__": 1.5}',
        b'{"__type__": "uuid", "__value__": {"int": 5}}',
        b'{"__type__": "base64", "__value__": "/w=="}',
        b'{"__type__": "date", "__value__": "2024-01-02T05:06:07"}',
        b'[{"a": {"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}}}]',
        b"[NaN, Infinity, -Infinity, 1e400]",
        b'["\\ud800", "\\udc00x"]',
        b"[18446744073709551615, 18446744073709551616, -9223372036854775809, 1e19]",
        b"123456789012345678901234567890",
        b'"12345678901234567890 digits in a string"',
        b'{"a": 1, "a": 2}',
        b' \n{"spaces": [1, 2]} \n',
        b'"\\u00e9t\\u00e9"',
    ],
)
def test_reads_like_kombu(text: bytes) -> None:
    expected = kombu_loads(text)
    got = wiretask_loads(text)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, and int vs float must not differ


@given(json_values())
def test_round_trip(value: Any) -> None:
    assert wiretask_loads(json_dumps(value)) == value


@given(json_values())
def test_kombu_reads_wiretask(value: Any) -> None:
    assert kombu_loads(json_dumps(value)) == value


@given(json_values())
def test_wiretask_reads_kombu(value: Any) -> None:
    content_type, encoding, payload = kombu_serialization.dumps(value, "json")
    data = payload.encode() if isinstance(payload, str) else payload
    assert REGISTRY.loads(data, content_type, encoding) == value


@given(json_values())
def test_same_json_value_as_kombu_for_any_value(value: Any) -> None:
    assert wiretask_tree(value) == kombu_tree(value)


@given(st.tuples(st.integers(), st.text()), st.dictionaries(st.integers(), st.integers()))
def test_tuples_and_int_keys_decode_as_kombu_decodes(args: Any, kwargs: Any) -> None:
    value = [args, kwargs]
    assert wiretask_loads(json_dumps(value)) == kombu_loads(kombu_json.dumps(value).encode())


def test_json_loads_is_usable_without_registry() -> None:
    assert json_loads(b'{"__type__": "date", "__value__": "2024-01-02"}') == date(2024, 1, 2)
