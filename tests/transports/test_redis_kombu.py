"""Wire compatibility of RedisTransport with the real Kombu 5.7 and Celery 5.7 libraries
on one real Redis server: envelopes, priorities, ack emulation and key prefixes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import celery
import kombu
import pytest
import redis

from wiretask.protocol.frame import Frame, Route
from wiretask.transports.redis import RedisDelivery, RedisTransport

SEP = "\x06\x16"
TRANSPORT_PROPERTIES = {"delivery_info", "delivery_tag", "body_encoding"}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def transport(redis_url: str) -> Iterator[RedisTransport]:
    # Native: a delayed message is held broker-side whether or not a mover is alive.
    t = RedisTransport(redis_url, delay_mode="native")
    yield t
    t.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[celery.Celery]:
    a = celery.Celery("interop", broker=redis_url, set_as_current=False)
    yield a
    a.close()


def take(transport: RedisTransport, queues: list[str], timeout: float = 2) -> RedisDelivery:
    delivery = transport.receive(queues, timeout=timeout)
    assert delivery is not None, f"nothing arrived on {queues} within {timeout} s"
    return delivery


def frame_as_kombu_wrote_it(raw: bytes) -> Frame:
    """The frame an entry carries, read field by field from Kombu's envelope."""
    entry = json.loads(raw)
    props = entry["properties"]
    return Frame(body=base64.b64decode(entry["body"]), content_type=entry["content-type"],
                 content_encoding=entry["content-encoding"], headers=entry["headers"],
                 properties={k: v for k, v in props.items() if k not in TRANSPORT_PROPERTIES})


def kombu_get(url: str, queue: str, **transport_options: Any) -> kombu.Message:
    with kombu.Connection(url, transport_options=transport_options) as conn:
        q = conn.SimpleQueue(queue)
        try:
            message = q.get(timeout=2)
            message.ack()
            return message
        finally:
            q.close()


# -- (a) wiretask -> Kombu ---------------------------------------------------------------


def test_kombu_reads_what_wiretask_publishes(transport: RedisTransport, redis_url: str) -> None:
    sent = Frame(body=b'{"x": [1, 2]}', content_type="application/json",
                 content_encoding="utf-8", headers={"task": "t", "id": "i", "n": None},
                 properties={"correlation_id": "i", "reply_to": "r", "priority": 4,
                             "delivery_mode": 2, "expiration": "60000"})
    transport.publish(sent, Route("sq"))
    message = kombu_get(redis_url, "sq")
    assert message.payload == {"x": [1, 2]}
    assert message.body == sent.body
    assert message.headers == dict(sent.headers)
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    props = message.properties
    assert (props["correlation_id"], props["reply_to"], props["priority"]) == ("i", "r", 4)
    assert props["expiration"] == "60000" and props["delivery_mode"] == 2
    assert message.delivery_info == {"exchange": "", "routing_key": "sq"}

    binary = Frame(body=bytes(range(256)), content_type="application/data",
                   content_encoding="binary")
    transport.publish(binary, Route("sq"))
    message = kombu_get(redis_url, "sq")
    assert message.body == bytes(range(256))
    assert "priority" not in message.properties  # absent stays absent; Kombu defaults it


def test_kombu_reads_a_due_delayed_message(transport: RedisTransport, redis_url: str) -> None:
    sent = Frame(body=b"[[], {}, {}]", content_type="application/json",
                 content_encoding="utf-8", headers={"eta": "2030-01-01T00:00:00+00:00"})
    transport.publish(sent, Route("sq"),
                      not_before=datetime.now(UTC) + timedelta(seconds=0.3))
    time.sleep(0.4)
    assert transport.due() == 1
    message = kombu_get(redis_url, "sq")
    assert message.headers == {"eta": "2030-01-01T00:00:00+00:00"}
    assert message.body == sent.body


# -- (b) Kombu/Celery -> wiretask --------------------------------------------------------------


def test_wiretask_reads_celerys_send_task(app: celery.Celery, transport: RedisTransport,
                                          client: redis.Redis) -> None:
    result = app.send_task("tasks.add", args=(2, 3), kwargs={"z": 1}, countdown=30,
                           expires=600, headers={"x-custom": [1, "a"]})
    raw = client.lindex("celery", 0)
    expected = frame_as_kombu_wrote_it(raw)
    delivery = take(transport, ["celery"])
    assert delivery.frame == expected
    assert delivery.delivery_tag == json.loads(raw)["properties"]["delivery_tag"]
    assert not delivery.redelivered
    headers = delivery.frame.headers
    assert headers["task"] == "tasks.add" and headers["id"] == result.id
    assert headers["eta"] is not None and headers["x-custom"] == [1, "a"]
    assert json.loads(delivery.frame.body) == [[2, 3], {"z": 1}, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    props = delivery.frame.properties
    assert props["correlation_id"] == result.id and props["priority"] == 0
    assert props["expiration"] == "600000"
    delivery.ack()
    assert client.hlen("unacked") == 0


def test_wiretask_reads_kombu_producer_messages(redis_url: str,
                                                transport: RedisTransport,
                                                client: redis.Redis) -> None:
    with kombu.Connection(redis_url) as conn:
        conn.Producer().publish(b"\x00\x01raw", routing_key="kq", content_type="application/data",
                                content_encoding="binary", headers={"h": "v"},
                                correlation_id="cid", priority=6, custom_prop="zz")
    raw = client.lindex(f"kq{SEP}6", 0)
    delivery = take(transport, ["kq"])
    assert delivery.frame == frame_as_kombu_wrote_it(raw)
    assert delivery.frame.body == b"\x00\x01raw"
    assert delivery.frame.properties["custom_prop"] == "zz"
    delivery.ack()


# -- (c) priorities ----------------------------------------------------------------------------


def test_celery_priorities_land_in_the_same_buckets_and_order(
        app: celery.Celery, transport: RedisTransport, client: redis.Redis,
        redis_url: str) -> None:
    def send_round() -> None:
        for p in (9, 0, 5):
            app.send_task("tasks.p", args=(p,), priority=p)

    send_round()
    assert [client.llen(k) for k in ("celery", f"celery{SEP}3", f"celery{SEP}9")] == [1, 1, 1]
    order = []
    for _ in range(3):
        delivery = take(transport, ["celery"])
        order.append(delivery.frame.properties["priority"])
        delivery.ack()
    send_round()
    kombu_order = [kombu_get(redis_url, "celery").properties["priority"] for _ in range(3)]
    assert order == kombu_order == [0, 5, 9]

    for p in (9, 0, 5):
        transport.publish(Frame(body=b"[]", content_type="application/json",
                                content_encoding="utf-8", properties={"priority": p}),
                          Route("celery"))
    assert [kombu_get(redis_url, "celery").properties["priority"] for _ in range(3)] == [0, 5, 9]


# -- (d) ack emulation ---------------------------------------------------------------------------


def test_wiretask_unacked_entries_are_what_kombu_writes(transport: RedisTransport,
                                                        client: redis.Redis,
                                                        redis_url: str) -> None:
    transport.publish(Frame(body=b"1", content_type="text/plain", content_encoding="utf-8"),
                      Route("q"))
    delivery = take(transport, ["q"])
    stored = client.hget("unacked", delivery.delivery_tag)
    # Kombu's QoS.append: dumps([message._raw, exchange, routing_key])
    assert stored.decode() == json.dumps([json.loads(delivery.entry), "", "q"])
    assert client.zscore("unacked_index", delivery.delivery_tag) is not None
    delivery.ack()


def _die_holding(consumer: str, url: str, queue: str) -> str:
    """Receive one message in a child process that then dies without acking; return
    its delivery tag."""
    if consumer == "wiretask":
        body = ("from wiretask.transports.redis import RedisTransport\n"
                "tag = RedisTransport(url).receive([queue], timeout=5).delivery_tag\n")
    else:
        body = ("import kombu\n"
                "tag = kombu.Connection(url).SimpleQueue(queue).get(timeout=5).delivery_tag\n")
    script = f"import os, sys\nurl, queue = sys.argv[1:3]\n{body}print(tag, flush=True)\n" \
             "os._exit(0)\n"
    out = subprocess.run([sys.executable, "-c", script, url, queue], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_kombu_restore_visible_returns_a_dead_wiretask_consumers_message(
        transport: RedisTransport, client: redis.Redis, redis_url: str) -> None:
    transport.publish(Frame(body=b"job", content_type="text/plain", content_encoding="utf-8",
                            properties={"priority": 7}), Route("q"))
    tag = _die_holding("wiretask", redis_url, "q")
    assert client.hexists("unacked", tag)
    time.sleep(1.1)
    with kombu.Connection(redis_url, transport_options={"visibility_timeout": 1}) as conn:
        conn.default_channel.qos.restore_visible(num=None, interval=1)
    assert client.hlen("unacked") == 0 and client.llen(f"q{SEP}6") == 1
    delivery = take(transport, ["q"])
    assert delivery.redelivered and delivery.delivery_tag == tag
    assert delivery.frame.body == b"job" and delivery.frame.properties["priority"] == 7
    delivery.ack()


def test_wiretask_restore_visible_returns_a_dead_kombu_consumers_message(
        app: celery.Celery, client: redis.Redis, redis_url: str) -> None:
    app.send_task("tasks.add", args=(1, 1), priority=3)
    tag = _die_holding("kombu", redis_url, "celery")
    assert client.hexists("unacked", tag)
    time.sleep(1.1)
    with RedisTransport(redis_url, visibility_timeout=1) as restorer:
        assert restorer.restore_visible() == 1
    raw = json.loads(client.lindex(f"celery{SEP}3", 0))
    assert raw["headers"]["redelivered"] is True
    assert raw["properties"]["delivery_info"]["redelivered"] is True
    message = kombu_get(redis_url, "celery")
    assert message.delivery_tag == tag and message.delivery_info["redelivered"] is True
    assert message.headers["task"] == "tasks.add"


def test_kombu_requeue_and_wiretask_requeue_agree(transport: RedisTransport,
                                                  client: redis.Redis, redis_url: str) -> None:
    transport.publish(Frame(body=b"a", content_type="text/plain", content_encoding="utf-8"),
                      Route("q"))
    with kombu.Connection(redis_url) as conn:
        q = conn.SimpleQueue("q")
        message = q.get(timeout=2)
        message.requeue()  # Kombu: LPUSH back with both redelivered flags
        q.close()
    delivery = take(transport, ["q"])
    assert delivery.redelivered and delivery.frame.body == b"a"
    delivery.reject(requeue=True)
    message = kombu_get(redis_url, "q")
    assert message.delivery_info["redelivered"] is True and message.body == b"a"


# -- (e) global_keyprefix -----------------------------------------------------------------------


def test_global_keyprefix_on_both_sides(redis_url: str, client: redis.Redis) -> None:
    prefix = "tenant-a:"
    with kombu.Connection(redis_url, transport_options={"global_keyprefix": prefix}) as conn:
        conn.Producer().publish({"from": "kombu"}, routing_key="pq", priority=9)
    with RedisTransport(redis_url, global_keyprefix=prefix) as t:
        delivery = take(t, ["pq"])
        assert json.loads(delivery.frame.body) == {"from": "kombu"}
        assert client.hexists(f"{prefix}unacked", delivery.delivery_tag)
        delivery.ack()
        t.declare_queue("pq")
        t.publish(Frame(body=b'{"from": "wiretask"}', content_type="application/json",
                        content_encoding="utf-8", properties={"priority": 6}), Route("pq"))
    keys = {k.decode() for k in client.keys("*")}
    assert keys and all(k.startswith(prefix) for k in keys), keys
    message = kombu_get(redis_url, "pq", global_keyprefix=prefix)
    assert message.payload == {"from": "wiretask"}
