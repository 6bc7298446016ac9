"""The AMQP wire mapping (``wiretask._amqp.wire``) without a broker: the frames are
py-amqp's (and so Kombu's) byte for byte, values AMQP cannot carry are refused by name
before anything is sent, and what comes back is the frame that was sent."""

from __future__ import annotations

import struct
from typing import Any

import amqp
import pytest
from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from hypothesis import given
from hypothesis import strategies as st

from amqp_support import celery_like_frame
from wiretask._amqp import topology, wire
from wiretask.errors import EncodeError, ValidationError
from wiretask.protocol.frame import Frame


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: Any) -> None:
        self.data += bytes(data)


class _FakeConnection:
    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0
        self.bytes_recv = 0


def kombu_bytes(frame: Frame, exchange: str, routing_key: str, *, frame_max: int,
                mandatory: bool, channel: int = 1) -> bytes:
    """What py-amqp writes for Kombu's ``basic_publish`` of ``frame`` (Kombu's
    ``prepare_message`` builds exactly this ``amqp.Message``)."""
    sink = _Sink()
    write = frame_writer(_FakeConnection(frame_max), sink)
    message = amqp.Message(
        frame.body, content_type=frame.content_type, content_encoding=frame.content_encoding,
        application_headers=dict(frame.headers), **dict(frame.properties),
    )
    arguments = dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
    write(1, channel, spec.Basic.Publish, arguments, message)
    return sink.data


def received(data: bytes) -> amqp.Message:
    """Read publish frames back into the message a consumer gets: the content header's
    properties and the body, as py-amqp parses them."""
    frames = []
    offset = 0
    while offset < len(data):
        kind, _, size = struct.unpack_from(">BHI", data, offset)
        assert data[offset + 7 + size] == 0xCE
        frames.append((kind, data[offset + 7:offset + 7 + size]))
        offset += 8 + size
    assert [kind for kind, _ in frames[:2]] == [1, 2]
    message = amqp.Message()
    message.inbound_header(frames[1][1])
    for kind, payload in frames[2:]:
        assert kind == 3
        message.inbound_body(payload)
    return message


@pytest.mark.parametrize("frame_max", [131072, 4096])
@pytest.mark.parametrize("mandatory", [True, False])
def test_publish_frames_are_py_amqps_bytes(frame_max: int, mandatory: bool) -> None:
    frame = celery_like_frame(body=b"[[2, 2], {}, {}]" * 1000)

    ours = wire.publish_frames(wire.encode(frame), "", "celery", channel=1,
                               frame_max=frame_max, mandatory=mandatory)

    assert ours == kombu_bytes(frame, "", "celery", frame_max=frame_max, mandatory=mandatory)


def test_an_empty_body_has_no_body_frame_and_comes_back_empty() -> None:
    frame = celery_like_frame(body=b"")
    ours = wire.publish_frames(wire.encode(frame), "x", "y", channel=3, frame_max=131072)
    assert ours == kombu_bytes(frame, "x", "y", frame_max=131072, mandatory=True, channel=3)

    assert wire.to_frame(received(ours)) == frame


def test_a_frame_comes_back_as_it_was_sent() -> None:
    frame = celery_like_frame(body=bytes(range(256)))
    data = wire.publish_frames(wire.encode(frame), "", "q", channel=1, frame_max=4096)

    back = wire.to_frame(received(data))

    assert back == frame
    assert list(back.headers) == list(frame.headers)  # the order of the wire


def test_non_amqp_properties_travel_in_a_header_and_come_back() -> None:
    frame = celery_like_frame(properties={"correlation_id": "c", "custom": {"k": [1, None]}})
    message = received(wire.publish_frames(wire.encode(frame), "", "q", channel=1,
                                           frame_max=131072))

    assert message.properties["application_headers"][wire.PROPERTIES_HEADER] == {
        "custom": {"k": [1, None]}}
    assert wire.to_frame(message) == frame


def test_a_frame_with_only_amqp_properties_carries_no_extra_header() -> None:
    frame = celery_like_frame()
    message = received(wire.publish_frames(wire.encode(frame), "", "q", channel=1,
                                           frame_max=131072))
    assert wire.PROPERTIES_HEADER not in message.properties["application_headers"]


@pytest.mark.parametrize(
    ("headers", "properties", "field"),
    [
        ({"bad": {1, 2}}, {}, "headers['bad']"),
        ({"deep": {"list": [1, object()]}}, {}, "headers['deep']['list'][1]"),
        ({"huge": 2**70}, {}, "headers['huge']"),
        ({"keys": {1: "x"}}, {}, "headers['keys'][1]"),
        ({}, {"correlation_id": "x" * 256}, "properties['correlation_id']"),
        ({}, {"priority": 300}, "properties['priority']"),
        ({}, {"delivery_mode": "2"}, "properties['delivery_mode']"),
        ({}, {"custom": {3.5j}}, "properties['custom']"),
        ({wire.PROPERTIES_HEADER: {}}, {}, f"headers[{wire.PROPERTIES_HEADER!r}]"),
    ],
)
def test_values_amqp_cannot_carry_are_refused_by_name(
    headers: dict[str, Any], properties: dict[str, Any], field: str
) -> None:
    frame = Frame(body=b"{}", content_type="application/json", content_encoding="utf-8",
                  headers={"id": "x", **headers}, properties=properties)

    with pytest.raises(EncodeError) as raised:
        wire.encode(frame)

    assert raised.value.field == field


def test_names_over_255_bytes_are_refused() -> None:
    encoded = wire.encode(celery_like_frame())
    with pytest.raises(ValidationError, match="255 bytes") as raised:
        wire.publish_frames(encoded, "", "é" * 128, channel=1, frame_max=131072)
    assert raised.value.field == "routing_key"


# -- the fast writer makes py-amqp's bytes ------------------------------------------------

_leaves = (st.none() | st.booleans() | st.floats(allow_nan=False)
           | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.sampled_from([2**31 - 1, 2**31, -(2**31) + 1, -(2**31), 0, -1])
           | st.text(max_size=20) | st.binary(max_size=8))
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(
    headers=st.dictionaries(st.text(max_size=12), _values, max_size=8),
    correlation_id=st.none() | st.text(max_size=40),
    priority=st.none() | st.integers(min_value=0, max_value=255),
    timestamp=st.none() | st.integers(min_value=0, max_value=2**40),
    content_type=st.text(max_size=30),
)
def test_the_fast_writer_makes_py_amqps_bytes(
    headers: dict[str, Any], correlation_id: str | None, priority: int | None,
    timestamp: int | None, content_type: str,
) -> None:
    properties = {k: v for k, v in (("correlation_id", correlation_id),
                                    ("priority", priority), ("timestamp", timestamp),
                                    ("delivery_mode", 2)) if v is not None}
    frame = Frame(body=b"", content_type=content_type, content_encoding="utf-8",
                  headers=headers, properties=properties)
    message = amqp.Message(b"", content_type=content_type, content_encoding="utf-8",
                           application_headers=headers, **properties)

    assert wire.encode(frame).properties == message._serialize_properties()


def test_a_buffered_frame_is_readable_only_when_whole() -> None:
    from wiretask._amqp.link import _whole_frame  # noqa: PLC0415 - a private helper

    frame = struct.pack(">BHI", 1, 1, 4) + b"abcd" + b"\xce"
    assert _whole_frame(frame)
    assert _whole_frame(frame + frame[:3])
    assert not _whole_frame(frame[:-1])
    assert not _whole_frame(frame[:6])
    assert not _whole_frame(b"")


def test_declarations_are_framed_as_py_amqp_frames_them() -> None:
    """``declaration_frames`` (what the asyncio twin writes through aiormq) is what
    py-amqp's channel methods write for the same declarations (the sync driver)."""
    declarations: list[topology.Declaration] = [
        topology.Exchange("e", "topic"),
        topology.Queue("q", {"x-max-priority": 10, "x-queue-type": "classic"}),
        topology.Bind("q", "e", "k.#"),
        topology.BindExchange("d", "s", "0.#"),
    ]
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes | memoryview) -> None:
            written.append(bytes(data))

    class Connection:
        transport = Transport()
        bytes_sent = 0
        frame_max = 131072

    writer = frame_writer(Connection(), Transport())
    for item in declarations:
        method_sig, signature, arguments = wire.declaration_method(item)
        writer(1, 3, method_sig, dumps(signature, arguments), None)
    assert wire.declaration_frames(3, declarations) == b"".join(written)
