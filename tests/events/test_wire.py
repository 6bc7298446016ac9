"""The event format and its frame (``events.wire``): Celery's fields in Celery's order,
Kombu's JSON bytes, the exchange per broker, one event or a batch read back."""

from __future__ import annotations

import json

import pytest

from wiretask.codecs import default_registry
from wiretask.errors import DecodeError, ValidationError
from wiretask.events.wire import (
    decode_events,
    encode_event,
    event,
    event_exchange,
    group_of,
    receiver_queue,
    routing_key,
    utcoffset_hours,
)
from wiretask.protocol.frame import Frame

REGISTRY = default_registry()


def make(type_: str = "task-started", **fields: object) -> dict[str, object]:
    return event(type_, fields, hostname="w@h", utcoffset=-1, pid=42, clock=7,
                 timestamp=1700000000.5)


def test_an_event_has_celerys_fields_in_celerys_order() -> None:
    body = make("task-succeeded", uuid="id-1", result="4", runtime=0.5)
    assert list(body) == ["hostname", "utcoffset", "pid", "clock", "uuid", "result",
                          "runtime", "timestamp", "type"]
    assert body["type"] == "task-succeeded" and body["timestamp"] == 1700000000.5


def test_a_timestamp_given_in_the_fields_is_kept() -> None:
    body = make("worker-heartbeat", timestamp=12.0)
    assert body["timestamp"] == 12.0 and list(body)[-1] == "type"


@pytest.mark.parametrize("bad", ["", "nogroup", "-x", 3])
def test_a_type_needs_a_group(bad: object) -> None:
    with pytest.raises(ValidationError, match="type"):
        # ``bad`` is of the wrong type on purpose (3): what the check refuses.
        event(bad, {}, hostname="h", utcoffset=0, pid=1, clock=0,  # type: ignore[arg-type]
              timestamp=0.0)


def test_groups_and_routing_keys_are_celerys() -> None:
    assert group_of("task-sent") == "task" and group_of("worker-heartbeat") == "worker"
    assert group_of("custom-my-event") == "custom"
    assert routing_key("task-succeeded") == "task.succeeded"
    assert routing_key("worker-heartbeat") == "worker.heartbeat"


def test_utcoffset_has_celerys_sign() -> None:
    # time.timezone is seconds west of UTC: Central Europe is -3600 (winter), -7200 (DST).
    assert utcoffset_hours(-3600, -7200, isdst=False) == -1
    assert utcoffset_hours(-3600, -7200, isdst=True) == -2
    assert utcoffset_hours(18000, 14400, isdst=False) == 5  # New York
    assert utcoffset_hours(0, 0, isdst=False) == 0


@pytest.mark.parametrize(("scheme", "kind"), [
    ("redis", "fanout"), ("rediss", "fanout"), ("redis+socket", "fanout"),
    ("sentinel", "fanout"), ("amqp", "topic"), ("pyamqp", "topic"), ("amqps", "topic"),
    ("memory", "topic"), ("sqlite", "topic"),
])
def test_the_exchange_is_fanout_on_redis_topic_elsewhere(scheme: str, kind: str) -> None:
    exchange = event_exchange(scheme)
    assert (exchange.name, exchange.type, exchange.durable) == ("celeryev", kind, True)
    assert event_exchange(scheme, "myev").name == "myev"


def test_a_receiver_queue_is_named_and_bound_as_celerys() -> None:
    queue = receiver_queue("abc", expires=60.0, message_ttl=5.0)
    assert (queue.name, queue.binding_key, queue.expires, queue.message_ttl,
            queue.exclusive) == ("celeryev.abc", "#", 60.0, 5.0, False)
    assert receiver_queue("x", prefix="p", binding_key="task.#", exclusive=True).name == "p.x"


def test_the_frame_is_kombus() -> None:
    body = make("task-received", uuid="id-1", name="t", args="(1,)", kwargs="{}")
    frame = encode_event(body, REGISTRY)
    assert frame.body == json.dumps(body).encode()  # Kombu's json.dumps: default separators
    assert (frame.content_type, frame.content_encoding) == ("application/json", "utf-8")
    assert dict(frame.headers) == {"hostname": "w@h"}
    assert dict(frame.properties) == {"delivery_mode": 1, "priority": 0}
    assert decode_events(frame, REGISTRY) == [body]


def test_msgpack_events_round_trip() -> None:
    body = make("task-failed", uuid="id-2", exception="ValueError('x')", traceback="tb")
    frame = encode_event(body, REGISTRY, "msgpack")
    assert frame.content_type == "application/x-msgpack"
    assert decode_events(frame, REGISTRY) == [body]


def test_a_batch_is_read_as_its_events() -> None:
    batch = [make("task-started", uuid="a"), make("task-started", uuid="b")]
    frame = Frame(body=json.dumps(batch).encode(), content_type="application/json",
                  content_encoding="utf-8")
    assert [e["uuid"] for e in decode_events(frame, REGISTRY)] == ["a", "b"]


@pytest.mark.parametrize("body", [b"[1]", b'{"no": "type"}', b'"text"', b'[{"type": 3}]'])
def test_a_body_that_is_not_events_is_refused(body: bytes) -> None:
    with pytest.raises(DecodeError, match="event"):
        decode_events(Frame(body=body, content_type="application/json",
                            content_encoding="utf-8"), REGISTRY)


def test_an_unencodable_field_is_an_encode_error() -> None:
    from wiretask.errors import EncodeError  # noqa: PLC0415

    with pytest.raises(EncodeError, match="event"):
        encode_event(make("task-succeeded", result=object()), REGISTRY)
