"""encode/decode: round trips, the wire layout, decode errors, and hostile input."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretask.codecs import default_registry
from wiretask.errors import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    MalformedMessage,
    MessageTooLarge,
    UnknownCodec,
    WiretaskError,
)
from wiretask.protocol import Frame, Signature, TaskMessage
from wiretask.protocol.celery import decode, decode_raw, encode
from wiretask.protocol.envelope import PROTOCOL_HEADERS

from .strategies import arbitrary_frames, task_messages

REGISTRY = default_registry()
SERIALIZERS = ["application/json", "application/x-msgpack"]
COMPRESSIONS = [
    None, "application/x-gzip", "application/x-bz2", "application/x-lzma", "application/zstd",
    "application/x-brotli",
]


def small(**fields: Any) -> TaskMessage:
    return TaskMessage(**{"task": "proj.add", "id": "id-1", "args": (2, 3), **fields})


def test_every_compressor_is_available() -> None:
    """The round trips below would silently cover less if a compressor went missing."""
    for compression in COMPRESSIONS[1:]:
        assert compression is not None
        assert REGISTRY.compressor(compression).content_type == compression


@pytest.mark.parametrize("content_type", SERIALIZERS)
@pytest.mark.parametrize("compression", COMPRESSIONS)
@settings(max_examples=30)
@given(data=st.data())
def test_round_trip(content_type: str, compression: str | None, data: st.DataObject) -> None:
    """Every serializer x compressor: the body-bearing fields survive encode -> decode."""
    message = attrs.evolve(
        data.draw(task_messages(content_type=content_type, rich=False)), compression=compression
    )
    frame = encode(message, REGISTRY)
    assert decode(frame, REGISTRY) == message
    assert frame.content_type == content_type
    assert frame.headers.get("compression") == compression


@pytest.mark.parametrize("content_type", SERIALIZERS)
@given(data=st.data())
def test_round_trip_of_every_field(content_type: str, data: st.DataObject) -> None:
    message = data.draw(task_messages(content_type=content_type))
    frame = encode(message, REGISTRY)
    assert decode(frame, REGISTRY) == message
    assert_checked(decode(frame, REGISTRY))
    # ... and encoding is a function of the message: the same frame again.
    assert encode(decode(frame, REGISTRY), REGISTRY) == frame


def test_header_layout_matches_celery() -> None:
    frame = encode(small(extra_headers={"x-custom": "v"}, compression="application/x-gzip"),
                   REGISTRY)
    assert list(frame.headers) == [*PROTOCOL_HEADERS, "compression", "x-custom"]
    assert frame.headers["timelimit"] == [None, None]
    assert frame.headers["stamps"] == {}
    assert frame.headers["compression"] == "application/x-gzip"


def test_properties_layout() -> None:
    frame = encode(small(), REGISTRY)
    assert frame.properties == {"correlation_id": "id-1", "reply_to": "", "delivery_mode": 2}
    frame = encode(small(priority=0, expiration="60000", reply_to="oid", correlation_id="c",
                         extra_properties={"app_id": "x"}), REGISTRY)
    assert list(frame.properties.items()) == [
        ("correlation_id", "c"), ("reply_to", "oid"), ("delivery_mode", 2),
        ("expiration", "60000"), ("priority", 0), ("app_id", "x"),
    ]


def test_body_layout() -> None:
    sig = Signature(task="cb")
    frame = encode(small(callbacks=(sig,), chord=sig), REGISTRY)
    assert json.loads(frame.body) == [
        [2, 3], {}, {"callbacks": [sig.to_dict()], "errbacks": None, "chain": None,
                     "chord": sig.to_dict()},
    ]


def test_times_are_iso_with_offset() -> None:
    eta = datetime(2030, 1, 1, 12, 0, 0, 5, tzinfo=UTC)
    frame = encode(small(eta=eta, expires=eta), REGISTRY)
    assert frame.headers["eta"] == "2030-01-01T12:00:00.000005+00:00"
    assert frame.headers["expires"] == "2030-01-01T12:00:00.000005+00:00"


def test_compress_threshold() -> None:
    message = small(compression="application/zstd")
    frame = encode(message, REGISTRY, compress_threshold=10_000)
    assert "compression" not in frame.headers
    assert decode(frame, REGISTRY) == attrs.evolve(message, compression=None)
    frame = encode(message, REGISTRY, compress_threshold=1)
    assert frame.headers["compression"] == "application/zstd"


def test_unknown_compression_is_refused_at_encode() -> None:
    with pytest.raises(UnknownCodec):
        encode(small(compression="application/x-nope"), REGISTRY)


def test_content_encoding_must_match_the_serializer() -> None:
    message = attrs.evolve(small(), content_type="application/x-msgpack")  # keeps "utf-8"
    with pytest.raises(EncodeError) as info:
        encode(message, REGISTRY)
    assert info.value.field == "content_encoding"


def test_unserializable_argument_is_an_encode_error() -> None:
    with pytest.raises(EncodeError) as info:
        encode(small(args=({1, 2},)), REGISTRY)
    assert info.value.field == "body"


class TestDecode:
    def frame(self, body: Any, headers: dict[str, Any] | None = None,
              **props: Any) -> Frame:
        return Frame(
            body=json.dumps(body).encode(), content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "t", "id": "i"} if headers is None else headers,
            properties=props,
        )

    def test_defaults_for_a_minimal_message(self) -> None:
        message = decode(self.frame([[2, 3], {}, None]), REGISTRY)
        assert message == TaskMessage(task="t", id="i", args=(2, 3))

    def test_correlation_and_reply_to_defaults(self) -> None:
        message = decode(self.frame([[], {}, None], correlation_id="i", reply_to=""), REGISTRY)
        assert message.correlation_id is None and message.reply_to is None
        message = decode(self.frame([[], {}, None], correlation_id="x", reply_to="q"), REGISTRY)
        assert message.correlation_id == "x" and message.reply_to == "q"

    def test_unknown_headers_and_properties_are_kept(self) -> None:
        frame = self.frame([[], {}, {"future": 1}], {"task": "t", "id": "i", "x-a": [1]},
                           app_id="svc")
        message = decode(frame, REGISTRY)
        assert message.extra_headers == {"x-a": [1]}
        assert message.extra_properties == {"app_id": "svc"}
        assert message.extra_embed == {"future": 1}
        assert decode(encode(message, REGISTRY), REGISTRY) == message

    def test_empty_eta_means_not_set(self) -> None:
        frame = self.frame([[], {}, None], {"task": "t", "id": "i", "eta": "", "expires": None})
        assert decode(frame, REGISTRY).eta is None

    def test_amqp_datetime_headers(self) -> None:
        naive = datetime(2030, 1, 1)
        frame = self.frame([[], {}, None], {"task": "t", "id": "i", "eta": naive})
        assert decode(frame, REGISTRY).eta == datetime(2030, 1, 1, tzinfo=UTC)

    def test_content_type_parameters_and_case(self) -> None:
        frame = attrs.evolve(self.frame([[], {}, None]),
                             content_type="Application/JSON; charset=utf-8",
                             content_encoding="UTF-8")
        message = decode(frame, REGISTRY)
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")

    def test_accept_argument_overrides_the_registry(self) -> None:
        frame = encode(small(content_type="application/x-msgpack"), REGISTRY)
        assert decode(frame, REGISTRY).args == (2, 3)
        with pytest.raises(ContentDisallowed):
            decode(frame, REGISTRY, accept=["json"])

    def test_accept_is_checked_before_decompressing(self) -> None:
        frame = Frame(body=b"not zlib", content_type="application/x-msgpack",
                      content_encoding="binary",
                      headers={"task": "t", "id": "i", "compression": "application/x-gzip"})
        with pytest.raises(ContentDisallowed):
            decode(frame, REGISTRY, accept=["json"])
        with pytest.raises(DecodeError) as info:
            decode(frame, REGISTRY)
        assert info.value.field == "compression"

    def test_decompressed_size_cap(self) -> None:
        body = zlib.compress(json.dumps([["x" * 100_000], {}, None]).encode())
        frame = Frame(body=body, content_type="application/json", content_encoding="utf-8",
                      headers={"task": "t", "id": "i", "compression": "zlib"})
        with pytest.raises(MessageTooLarge):
            decode(frame, REGISTRY, max_size=1000)
        # The registry's own cap applies when decode is given none. (This once used a
        # registry that accepted nothing, so it passed on ContentDisallowed, cap or not.)
        small_registry = default_registry(max_decompressed_size=1000)
        with pytest.raises(MessageTooLarge) as info:
            decode(frame, small_registry)
        assert (info.value.field, info.value.limit) == ("body", 1000)
        assert decode(frame, REGISTRY).args == ("x" * 100_000,)

    def test_decode_raw_accepts_none_maps_and_bytes_labels(self) -> None:
        message = decode_raw(b'[[1], {}, null]', {"task": "t", "id": "i"}, None,
                             b"application/json", b"utf-8", REGISTRY)
        assert message.args == (1,)
        with pytest.raises(MalformedMessage) as info:
            decode_raw(b"[]", None, None, "application/json", "utf-8", REGISTRY)
        assert info.value.field == "headers.task"
        with pytest.raises(MalformedMessage) as info:
            decode_raw(b"[]", ["task"], None, "application/json", "utf-8",  # type: ignore[arg-type]
                       REGISTRY)
        assert info.value.field == "headers"
        with pytest.raises(MalformedMessage) as info:
            decode_raw(b"[]", {}, None, 5, "utf-8", REGISTRY)  # type: ignore[arg-type]
        assert info.value.field == "content_type"

    @pytest.mark.parametrize(
        ("body", "headers", "props", "field"),
        [
            ([[1], {}], None, {}, "body"),
            ([[1], {}, None, None], None, {}, "body"),
            ({"kwargs": {}}, None, {}, "body"),
            (["a", {}, None], None, {}, "body.args"),
            ([[], {"a": 1}, "x"], None, {}, "embed"),
            ([[], {}, {"chain": [1]}], None, {}, "embed.chain[0]"),
            ([[], {}, {"chord": {"task": 1}}], None, {}, "embed.chord.task"),
            ([[], {}, None], {"task": "t"}, {}, "headers.id"),
            ([[], {}, None], {"task": 1, "id": "i"}, {}, "headers.task"),
            ([[], {}, None], {"task": "t", "id": "i", "lang": 3}, {}, "headers.lang"),
            ([[], {}, None], {"task": "t", "id": "i", "shadow": 3}, {}, "headers.shadow"),
            ([[], {}, None], {"task": "t", "id": "i", "group_index": -1}, {},
             "headers.group_index"),
            ([[], {}, None], {"task": "t", "id": "i", "ignore_result": "yes"}, {},
             "headers.ignore_result"),
            ([[], {}, None], {"task": "t", "id": "i", "stamped_headers": "ab"}, {},
             "headers.stamped_headers"),
            ([[], {}, None], {"task": "t", "id": "i", "timelimit": [1, float("nan")]}, {},
             "headers.timelimit"),
            ([[], {}, None], {"task": "t", "id": "i", "compression": 7}, {},
             "headers.compression"),
            ([[], {}, None], None, {"reply_to": 5}, "properties.reply_to"),
            ([[], {}, None], None, {"priority": True}, "properties.priority"),
            ({"task": "t", "id": "i", "args": "x"}, {}, {}, "body.args"),
            ({"task": "t", "id": "i", "eta": "x"}, {}, {}, "body.eta"),
            ({"task": "t"}, {}, {}, "body.id"),
            ({"task": "t", "id": "i", "args": [], "kwargs": 1}, {"task": "t"}, {},
             "body.kwargs"),
        ],
    )
    def test_malformed_messages_name_the_field(
        self, body: Any, headers: dict[str, Any] | None, props: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(MalformedMessage) as info:
            decode(self.frame(body, headers, **props), REGISTRY)
        assert info.value.field == field

    def test_non_string_header_names(self) -> None:
        frame = self.frame([[], {}, None], {"task": "t", "id": "i", 5: "x"})  # type: ignore[dict-item]
        with pytest.raises(MalformedMessage) as info:
            decode(frame, REGISTRY)
        assert info.value.field == "headers"


class TestLegacyShapes:
    def test_protocol1_taskset_wins_and_chain_is_absent(self) -> None:
        body = {"task": "t", "id": "i", "args": [1], "kwargs": {}, "group": "a",
                "taskset": None, "utc": False, "chord": {"task": "c"}}
        frame = Frame(body=json.dumps(body).encode(), content_type="application/json",
                      content_encoding="utf-8")
        message = decode(frame, REGISTRY)
        assert message.group is None  # Celery: body['group'] = body['taskset']
        assert message.chord == Signature(task="c")
        assert message.chain is None

    def test_hybrid_headers_override_the_body(self) -> None:
        body = {"task": "old", "id": "old-id", "args": [1], "retries": 4, "eta": None}
        frame = Frame(body=json.dumps(body).encode(), content_type="application/json",
                      content_encoding="utf-8", headers={"task": "new", "retries": 1})
        message = decode(frame, REGISTRY)
        assert (message.task, message.id, message.retries) == ("new", "old-id", 1)

    def test_protocol1_defaults_args_and_kwargs(self) -> None:
        frame = Frame(body=b'{"task": "t", "id": "i"}', content_type="application/json",
                      content_encoding="utf-8")
        message = decode(frame, REGISTRY)
        assert message.args == () and message.kwargs == {}


def assert_checked(message: TaskMessage) -> None:
    """``decode`` builds its message without TaskMessage's field checks (it checked every
    field while reading): the checking constructor must accept the same fields and
    make the same message of them."""
    assert type(message) is TaskMessage
    assert TaskMessage(**message.__dict__) == message


@given(arbitrary_frames())
def test_decode_of_arbitrary_frames_never_crashes(frame: Frame) -> None:
    try:
        message = decode(frame, REGISTRY)
    except DecodeError:  # the spec's promise (§11.3): decode raises DecodeError or a subclass
        return
    assert_checked(message)
    try:
        encode(message, REGISTRY)
    except WiretaskError:
        pass


@given(task_messages(rich=False), st.data())
def test_decode_of_corrupted_valid_frames_never_crashes(
    message: TaskMessage, data: st.DataObject
) -> None:
    """Start from a real frame and break one part of it: deeper paths than random bytes."""
    frame = encode(message, REGISTRY)
    payload = json.loads(frame.body)
    part = data.draw(st.sampled_from(["header", "property", "body-item", "embed", "bytes"]))
    junk = data.draw(st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(),
                                                                                 max_size=3)
                     | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    headers, properties = dict(frame.headers), dict(frame.properties)
    body = frame.body
    if part == "header":
        headers[data.draw(st.sampled_from(sorted(headers)))] = junk
    elif part == "property":
        properties[data.draw(st.sampled_from(sorted(properties)))] = junk
    elif part == "body-item":
        payload[data.draw(st.integers(min_value=0, max_value=2))] = junk
        body = json.dumps(payload).encode()
    elif part == "embed":
        payload[2][data.draw(st.sampled_from(["callbacks", "errbacks", "chain", "chord"]))] = junk
        body = json.dumps(payload).encode()
    else:
        cut = data.draw(st.integers(min_value=0, max_value=len(body)))
        body = body[:cut] + data.draw(st.binary(max_size=4)) + body[cut + 1:]
    broken = attrs.evolve(frame, body=body, headers=headers, properties=properties)
    try:
        decoded = decode(broken, REGISTRY)
    except DecodeError:
        return
    assert_checked(decoded)


_HOSTILE_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    | st.binary(max_size=5) | st.datetimes() | st.datetimes(timezones=st.timezones())
)
_HOSTILE = st.recursive(
    _HOSTILE_LEAVES,
    lambda children: st.lists(children, max_size=3)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=3) | st.integers(), children, max_size=3),
    max_leaves=8,
)
_HOSTILE_SIGNATURE = st.fixed_dictionaries(
    {"task": st.just("s")},
    optional=dict.fromkeys(
        ("args", "kwargs", "options", "subtask_type", "immutable", "chord_size", "x"), _HOSTILE
    ),
)


@given(
    st.tuples(
        _HOSTILE,
        _HOSTILE,
        st.none() | st.dictionaries(
            st.sampled_from(["callbacks", "errbacks", "chain", "chord", "other"]),
            _HOSTILE | _HOSTILE_SIGNATURE | st.lists(_HOSTILE_SIGNATURE | _HOSTILE, max_size=2),
            max_size=4,
        ),
    ),
    st.dictionaries(st.sampled_from(PROTOCOL_HEADERS) | st.text(max_size=4), _HOSTILE,
                    max_size=4),
    st.dictionaries(st.sampled_from(["correlation_id", "reply_to", "priority", "delivery_mode",
                                     "expiration", "other"]), _HOSTILE, max_size=3),
)
def test_decode_raw_of_hostile_python_values_raises_only_decode_errors(
    body: tuple[Any, Any, Any], headers: dict[str, Any], properties: dict[str, Any]
) -> None:
    """An AMQP header table can carry datetimes, tuples and bytes that JSON cannot, and a
    well-formed id and body let the values reach every field check: each check raises
    DecodeError (MalformedMessage) or accepts, never anything else (§11.3)."""
    headers = {**headers, "task": "t", "id": "i"}
    data = REGISTRY.dumps(list(body), "msgpack").data if _packable(body) else b"[[], {}, null]"
    try:
        message = decode_raw(data, headers, properties, "application/x-msgpack", "binary",
                             REGISTRY)
    except DecodeError:
        return
    assert_checked(message)


def _packable(value: Any) -> bool:
    try:
        REGISTRY.dumps(value, "msgpack")
    except WiretaskError:
        return False
    return True


def test_a_received_time_outside_the_utc_range_is_malformed() -> None:
    frame = Frame(body=b"[[], {}, null]", content_type="application/json",
                  content_encoding="utf-8",
                  headers={"task": "t", "id": "i", "expires": "9999-12-31T23:59:59-01:00"})
    with pytest.raises(MalformedMessage) as info:
        decode(frame, REGISTRY)
    assert info.value.field == "headers.expires"


@pytest.mark.parametrize("content_type", [" ", ";charset=utf-8"])
def test_a_content_type_that_names_no_type_is_malformed(content_type: str) -> None:
    frame = Frame(body=b"[[], {}, null]", content_type=content_type,
                  content_encoding="utf-8", headers={"task": "t", "id": "i"})
    with pytest.raises(MalformedMessage) as info:
        decode(frame, REGISTRY)
    assert info.value.field == "content_type"
    assert "names no type" in str(info.value)


def test_an_integer_time_limit_of_any_size_is_read() -> None:
    """An int is finite: ``math.isfinite`` of a huge one raised OverflowError."""
    frame = Frame(body=b"[[], {}, null]", content_type="application/json",
                  content_encoding="utf-8",
                  headers={"task": "t", "id": "i", "timelimit": [10**400, None]})
    message = decode(frame, REGISTRY)
    assert message.timelimit == (10**400, None)
    assert_checked(message)
