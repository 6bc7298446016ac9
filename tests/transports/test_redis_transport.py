"""RedisTransport against a real Redis server: envelope, ack emulation, priorities,
delays, dead letters, errors and outages. Kombu/Celery interop is in test_redis_kombu.py."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.commands.core

from wiretask._redis.client import Commands
from wiretask.errors import (
    ConnectionLost,
    EncodeError,
    ImproperlyConfigured,
    TransportError,
    ValidationError,
)
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.redis import RedisDelivery, RedisTransport, run_scheduler
from wiretask.transports.url import transport_from_url

SEP = "\x06\x16"


def frame(body: bytes = b"x", **properties: Any) -> Frame:
    return Frame(body=body, content_type="application/json", content_encoding="utf-8",
                 headers={"id": body.decode(errors="replace"), "task": "t"},
                 properties=properties)


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def transport(redis_url: str) -> Iterator[RedisTransport]:
    # Native: a delayed message is held broker-side whether or not a mover is alive
    # (the default, auto, is tested in test_redis_delay*.py).
    t = RedisTransport(redis_url, delay_mode="native")
    yield t
    t.close()


def take(transport: RedisTransport, queues: list[str], timeout: float = 2) -> RedisDelivery:
    delivery = transport.receive(queues, timeout=timeout)
    assert delivery is not None, f"nothing arrived on {queues} within {timeout} s"
    return delivery


def drain_bodies(transport: RedisTransport, queues: list[str], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        delivery = take(transport, queues)
        out.append(delivery.frame.body)
        delivery.ack()
    return out


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the writes to any socket from now on (one per round trip)."""
    sends: list[int] = []
    original = socket.socket.sendall

    def counting(self: socket.socket, data: Any, *args: Any) -> None:
        sends.append(1)
        original(self, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", counting)
    return sends


# -- the list entry -------------------------------------------------------------------


def test_entry_is_kombus_envelope_key_for_key(transport: RedisTransport,
                                              client: redis.Redis) -> None:
    sent = Frame(body=b"[[2, 3], {}, {}]", content_type="application/json",
                 content_encoding="utf-8", headers={"task": "tasks.add", "id": "i-1"},
                 properties={"correlation_id": "i-1", "reply_to": "r", "custom": "c",
                             "priority": 7, "expiration": "3600000", "delivery_mode": 2})
    before = time.time()
    transport.publish(sent, Route("celery"))
    assert client.llen("celery") == 0
    (raw,) = client.lrange(f"celery{SEP}6", 0, -1)
    text = raw.decode()
    assert "\n" not in text
    entry = json.loads(text)
    assert text == json.dumps(entry)  # kombu.utils.json.dumps: default separators
    assert list(entry) == ["body", "content-encoding", "content-type", "headers",
                           "properties"]
    props = entry["properties"]
    assert list(props) == ["correlation_id", "reply_to", "custom", "delivery_mode",
                           "expiration", "delivery_info", "priority", "body_encoding",
                           "delivery_tag", "x-wiretask-published"]
    # wiretask's publish time, after everything Kombu writes (Kombu ignores it).
    assert before - 1e-6 <= props["x-wiretask-published"] <= time.time()
    assert props["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert props["priority"] == 7 and props["body_encoding"] == "base64"
    assert uuid.UUID(props["delivery_tag"]).version == 4
    assert base64.b64decode(entry["body"]) == sent.body
    assert entry["headers"] == {"task": "tasks.add", "id": "i-1"}


def test_absent_delivery_mode_and_priority_stay_absent(transport: RedisTransport,
                                                      client: redis.Redis) -> None:
    sent = frame(b"1")
    transport.publish(sent, Route("q"))
    props = json.loads(client.lindex("q", 0))["properties"]
    assert list(props) == ["delivery_info", "body_encoding", "delivery_tag",
                           "x-wiretask-published"]
    assert take(transport, ["q"]).frame == sent


def test_round_trip_and_kombu_unacked_bookkeeping(transport: RedisTransport,
                                                  client: redis.Redis) -> None:
    sent = frame(b"body", correlation_id="c", priority=0, delivery_mode=2)
    transport.publish(sent, Route("q"))
    delivery = take(transport, ["q"])
    assert delivery.frame == sent
    assert delivery.queue == "q" and not delivery.redelivered
    tag = delivery.delivery_tag
    stored = json.loads(client.hget("unacked", tag))
    assert stored[1:] == ["", "q"] and stored[0] == json.loads(delivery.entry)
    score = client.zscore("unacked_index", tag)
    assert score is not None and abs(score - time.time()) < 5
    assert transport.size("q") == 0
    delivery.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    with pytest.raises(TransportError, match="already acked"):
        delivery.ack()
    with pytest.raises(TransportError, match="already acked"):
        delivery.reject(requeue=True)


def test_values_json_would_change_are_refused(transport: RedisTransport) -> None:
    bad = [({"h": {1: "int key"}}, {}), ({"h": [{"ok": {2: "deep"}}]}, {}),
           ({"h": float("nan")}, {}), ({"h": b"bytes"}, {}), ({}, {"p": {3}}),
           ({}, {(1, 2): "tuple key"})]
    for headers, properties in bad:
        with pytest.raises(EncodeError):
            transport.publish(Frame(body=b"", content_type="x", content_encoding="y",
                                    headers=headers, properties=properties), Route("q"))
    assert transport.size("q") == 0


def test_odd_values_json_carries_are_written_and_read_as_json_does(
        transport: RedisTransport, client: redis.Redis) -> None:
    """Values that the fast paths (orjson) refuse but json writes or reads: a 70-bit
    int, non-ASCII and control characters, DEL, a lone surrogate, a float's repr. The
    entry is still exactly json.dumps' text, and an entry json reads (NaN included, as
    Kombu's json.loads takes it) still comes back."""
    headers = {"big": 2**70, "text": "h\u00e9\u2603\U0001f600\x7f\x01\n\"\\",
               "lone": "\ud800", "float": 1e16, "tiny": 5e-324, "deep": [[[{"k": [1.5]}]]]}
    sent = Frame(body=b"x", content_type="application/json", content_encoding="utf-8",
                 headers=headers)
    transport.publish(sent, Route("q"))
    (raw,) = client.lrange("q", 0, -1)
    entry = json.loads(raw)
    assert raw.decode() == json.dumps(entry)
    assert entry["headers"] == headers
    delivery = take(transport, ["q"])
    assert delivery.frame == sent
    delivery.ack()
    # NaN: Kombu writes it (json.dumps allows it); wiretask reads it as json does.
    props = {"delivery_tag": "nan-1", "body_encoding": "base64"}
    client.lpush("q", '{"body": "eA==", "headers": {"n": NaN}, "properties": '
                 + json.dumps(props) + "}")
    delivery = take(transport, ["q"])
    assert math.isnan(delivery.frame.headers["n"])
    delivery.ack()


def test_a_header_that_contains_itself_is_refused(transport: RedisTransport) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(EncodeError):
        transport.publish(Frame(body=b"", content_type="x", content_encoding="y",
                                headers={"loop": [loop]}), Route("q"))
    assert transport.size("q") == 0


def test_large_binary_body(transport: RedisTransport) -> None:
    body = os.urandom(3 * 1024 * 1024) + b"\x00\xff"
    sent = Frame(body=body, content_type="application/data", content_encoding="binary")
    transport.publish(sent, Route("big"))
    delivery = take(transport, ["big"])
    assert delivery.frame.body == body
    delivery.ack()


# -- priorities and order ---------------------------------------------------------------


def test_priorities_use_kombu_buckets_lower_number_first(transport: RedisTransport,
                                                         client: redis.Redis) -> None:
    for p in (9, 0, 5, 3, 7, 1):
        transport.publish(frame(str(p).encode(), priority=p), Route("q"))
    assert client.llen("q") == 2
    assert client.llen(f"q{SEP}3") == 2
    assert client.llen(f"q{SEP}6") == 1
    assert client.llen(f"q{SEP}9") == 1
    assert drain_bodies(transport, ["q"], 6) == [b"0", b"1", b"5", b"3", b"7", b"9"]
    assert transport.capabilities.priority_order == "lower-first"
    assert transport.capabilities.max_priority == 9


def test_priorities_outside_0_to_9_are_clamped_and_non_ints_refused(
        transport: RedisTransport, client: redis.Redis) -> None:
    for bad in ("5", True, 5.0):
        with pytest.raises(ValidationError):
            transport.publish(frame(priority=bad), Route("q"))
    assert transport.size("q") == 0
    transport.publish(frame(b"15", priority=15), Route("q"))  # celery#8967: Kombu clamps
    transport.publish(frame(b"-1", priority=-1), Route("q"))
    assert json.loads(client.lindex(f"q{SEP}9", 0))["properties"]["priority"] == 15
    assert json.loads(client.lindex("q", 0))["properties"]["priority"] == -1


def test_round_robin_between_queues(transport: RedisTransport) -> None:
    for i in range(3):
        transport.publish(frame(f"a{i}".encode()), Route("a"))
        transport.publish(frame(f"b{i}".encode()), Route("b"))
    got = drain_bodies(transport, ["a", "b"], 6)
    assert got == [b"a0", b"b0", b"a1", b"b1", b"a2", b"b2"]


def test_receive_many_takes_what_consecutive_receives_would(
        transport: RedisTransport, client: redis.Redis) -> None:
    for i in range(3):
        transport.publish(frame(f"a{i}".encode()), Route("a"))
    for i in range(2):
        transport.publish(frame(f"b{i}".encode()), Route("b"))
    transport.publish(frame(b"a9", priority=9), Route("a"))
    first = transport.receive_many(["a", "b"], limit=3, timeout=1)
    assert [d.frame.body for d in first] == [b"a0", b"b0", b"a1"]
    # Each one is recorded in unacked as a single receive records it, and held.
    for delivery in first:
        stored = json.loads(client.hget("unacked", delivery.delivery_tag))
        assert stored == [json.loads(delivery.entry), "", delivery.queue]
        assert client.zscore("unacked_index", delivery.delivery_tag) is not None
    # The round robin goes on where the batch left it.
    assert take(transport, ["a", "b"]).frame.body == b"b1"
    rest = transport.receive_many(["a", "b"], limit=10, timeout=1)
    assert [d.frame.body for d in rest] == [b"a2", b"a9"]
    assert transport.receive_many(["a", "b"], limit=5, timeout=0.1) == []
    with pytest.raises(ValidationError):
        transport.receive_many(["a"], limit=0, timeout=0)


def test_receive_many_dead_letters_bad_entries_and_keeps_the_rest(
        transport: RedisTransport, client: redis.Redis) -> None:
    transport.publish(frame(b"one"), Route("q"))
    client.lpush("q", b"{broken")
    transport.publish(frame(b"two"), Route("q"))
    got = transport.receive_many(["q"], limit=5, timeout=1)
    assert [d.frame.body for d in got] == [b"one", b"two"]
    assert [d.raw for d in transport.dead_letters("q")] == [b"{broken"]
    assert client.hlen("unacked") == 2
    transport.ack_many(got)
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_a_batch_is_returned_on_close_and_leased_while_held(
        redis_url: str, client: redis.Redis) -> None:
    with RedisTransport(redis_url, visibility_timeout=1.0, lease_interval=0.1) as consumer, \
            RedisTransport(redis_url, visibility_timeout=1.0) as other:
        for i in range(3):
            consumer.publish(frame(str(i).encode()), Route("q"))
        held = consumer.receive_many(["q"], limit=3, timeout=1)
        assert len(held) == 3
        time.sleep(1.5)  # longer than the visibility timeout: the leases keep them
        assert other.restore_visible() == 0
    # Closing the consumer gave every unsettled one back, flagged redelivered.
    with RedisTransport(redis_url) as t:
        back = t.receive_many(["q"], limit=5, timeout=1)
        assert sorted(d.frame.body for d in back) == [b"0", b"1", b"2"]
        assert all(d.redelivered for d in back)
        t.ack_many(back)
    assert client.hlen("unacked") == 0


def test_ack_many_is_one_round_trip_and_settles_each_once(
        transport: RedisTransport, client: redis.Redis, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        transport.publish(frame(str(i).encode()), Route("q"))
    got = transport.receive_many(["q"], limit=5, timeout=1)
    got[0].ack()
    sends = count_writes(monkeypatch)
    transport.ack_many(got[1:])
    assert len(sends) == 1
    monkeypatch.undo()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    with pytest.raises(TransportError, match="already acked"):
        got[1].reject(requeue=True)
    # An already settled one is refused after the others were acknowledged.
    transport.publish(frame(b"late"), Route("q"))
    late = take(transport, ["q"])
    with pytest.raises(TransportError, match="already acked"):
        transport.ack_many([late, got[0], late])
    assert client.hlen("unacked") == 0
    # Deliveries of another transport are acknowledged by their own ack().
    with RedisTransport(redis_url) as other:
        transport.publish(frame(b"x"), Route("q"))
        foreign = take(other, ["q"])
        transport.ack_many([foreign])
        assert client.hlen("unacked") == 0


def test_ack_and_receive_settles_and_refills_in_one_round_trip(
        transport: RedisTransport, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        transport.publish(frame(f"a{i}".encode()), Route("a"))
        transport.publish(frame(f"b{i}".encode()), Route("b"))
    first = transport.receive_many(["a", "b"], limit=2, timeout=1)
    assert [d.frame.body for d in first] == [b"a0", b"b0"]
    sends = count_writes(monkeypatch)
    more = transport.ack_and_receive(first, ["a", "b"], limit=3)
    assert len(sends) == 1
    monkeypatch.undo()
    assert [d.frame.body for d in more] == [b"a1", b"b1", b"a2"]  # the round robin goes on
    assert sorted(client.hkeys("unacked")) == sorted(d.delivery_tag.encode() for d in more)
    with pytest.raises(TransportError, match="already acked"):
        first[0].ack()
    # An already settled delivery: refused before anything is acked or taken.
    with pytest.raises(TransportError, match="already acked"):
        transport.ack_and_receive([more[0], first[1]], ["a", "b"], limit=5)
    assert client.hlen("unacked") == 3 and transport.size("b") == 1
    assert [d.frame.body for d in transport.ack_and_receive(more, ["a", "b"], limit=5)] \
        == [b"b2"]
    assert transport.ack_and_receive([], ["a", "b"], limit=1) == []
    with pytest.raises(ValidationError):
        transport.ack_and_receive([], [], limit=1)


def test_commands_reconnect_after_a_server_restart(redis_server: Any) -> None:
    """A connection the server closed (a restart) is noticed before a command is sent on
    it, so the first command after the restart runs instead of failing."""
    url = f"{redis_server.url}/0"
    with RedisTransport(url) as t:
        t.publish(frame(b"before"), Route("q"))
        take(t, ["q"]).ack()
        redis_server.stop()
        redis_server.start()
        t.publish(frame(b"after"), Route("q"))
        (delivery,) = t.receive_many(["q"], limit=2, timeout=1)
        t.ack_many([delivery])
        assert delivery.frame.body == b"after"


def test_receive_waits_for_a_message_and_honours_timeout(transport: RedisTransport,
                                                         redis_url: str) -> None:
    start = time.monotonic()
    assert transport.receive(["empty"], timeout=0.3) is None
    assert 0.25 <= time.monotonic() - start < 1.5

    def later_publish() -> None:
        time.sleep(0.3)
        with RedisTransport(redis_url) as other:
            other.publish(frame(b"late"), Route("empty"))

    thread = threading.Thread(target=later_publish)
    thread.start()
    delivery = take(transport, ["empty"], timeout=5)
    thread.join(5)
    assert delivery.frame.body == b"late"
    delivery.ack()


def test_poll_interval_consumes_without_brpop(redis_url: str, client: redis.Redis) -> None:
    def brpop_calls() -> int:
        stats = client.info("commandstats").get("cmdstat_brpop", {"calls": 0})
        return int(stats["calls"])

    before = brpop_calls()
    with RedisTransport(f"{redis_url}?poll_interval=0.05") as t:
        assert t.receive(["q"], timeout=0.3) is None

        def publish_later() -> None:
            time.sleep(0.2)
            with RedisTransport(redis_url) as other:
                other.publish(frame(b"polled"), Route("q"))

        thread = threading.Thread(target=publish_later)
        thread.start()
        start = time.monotonic()
        delivery = take(t, ["q"], timeout=5)
        thread.join(5)
        assert delivery.frame.body == b"polled" and time.monotonic() - start < 1
        assert client.hexists("unacked", delivery.delivery_tag)
        delivery.ack()
    assert brpop_calls() == before
    with RedisTransport(redis_url) as t:
        assert t.receive(["q"], timeout=0.05) is None
    assert brpop_calls() > before  # the counter does see BRPOP


# -- requeue, reject, close -----------------------------------------------------------------


def test_reject_requeue_goes_to_the_back_marked_redelivered(transport: RedisTransport,
                                                            client: redis.Redis) -> None:
    transport.publish(frame(b"a"), Route("q"))
    transport.publish(frame(b"b"), Route("q"))
    first = take(transport, ["q"])
    tag = first.delivery_tag
    first.reject(requeue=True)
    assert client.hlen("unacked") == 0
    second = take(transport, ["q"])
    assert second.frame.body == b"b" and not second.redelivered
    again = take(transport, ["q"])
    assert again.frame.body == b"a" and again.redelivered
    assert again.delivery_tag == tag
    assert "redelivered" not in again.frame.headers
    entry = json.loads(again.entry)
    assert entry["headers"]["redelivered"] is True
    assert entry["properties"]["delivery_info"]["redelivered"] is True
    second.ack()
    again.ack()


def test_reject_without_requeue_drops(transport: RedisTransport, client: redis.Redis) -> None:
    transport.publish(frame(b"a"), Route("q"))
    take(transport, ["q"]).reject()
    assert transport.size("q") == 0 and client.hlen("unacked") == 0
    assert transport.receive(["q"], timeout=0.1) is None


def test_close_returns_held_messages_to_the_front(redis_url: str,
                                                  client: redis.Redis) -> None:
    with RedisTransport(redis_url) as first, RedisTransport(redis_url) as second:
        first.publish(frame(b"a"), Route("q"))
        first.publish(frame(b"b"), Route("q"))
        held = take(first, ["q"])
        first.close()
        assert client.hlen("unacked") == 0
        with pytest.raises(TransportError, match="returned to its queue"):
            held.ack()
        back = take(second, ["q"])
        assert back.frame.body == b"a" and back.redelivered  # RPUSH: next in line
        back.ack()
        assert take(second, ["q"]).frame.body == b"b"


# -- visibility timeout and leases -------------------------------------------------------------


def test_restore_visible_puts_back_messages_of_dead_consumers(
        redis_url: str, client: redis.Redis) -> None:
    """A consumer process killed while holding a message: its unacked entry ages past
    the visibility timeout and another transport restores it (RPUSH, both flags)."""
    with RedisTransport(redis_url) as publisher:
        publisher.publish(frame(b"a", priority=4), Route("q"))
    script = (
        "import os, sys\n"
        "from wiretask.transports.redis import RedisTransport\n"
        "d = RedisTransport(sys.argv[1]).receive(['q'], timeout=5)\n"
        "print(d.delivery_tag, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, redis_url], capture_output=True,
                         text=True, timeout=60, check=True)
    tag = out.stdout.strip()
    assert client.hexists("unacked", tag)
    with RedisTransport(redis_url, visibility_timeout=30) as restorer:
        assert restorer.restore_visible() == 0  # not old enough yet
        client.zadd("unacked_index", {tag: time.time() - 31})
        assert restorer.restore_visible() == 1
        assert client.hlen("unacked") == 0
        entry = json.loads(client.lindex(f"q{SEP}3", 0))
        assert entry["properties"]["delivery_tag"] == tag
        delivery = take(restorer, ["q"])
        assert delivery.redelivered and delivery.frame.body == b"a"
        delivery.ack()


def test_restore_skips_when_another_process_holds_the_mutex(
        transport: RedisTransport, client: redis.Redis) -> None:
    transport.publish(frame(b"a"), Route("q"))
    delivery = take(transport, ["q"])
    client.zadd("unacked_index", {delivery.delivery_tag: 1.0})
    client.set("unacked_mutex", "someone-else", px=10_000)
    assert transport.restore_visible() == 0
    client.delete("unacked_mutex")
    assert transport.restore_visible() == 1
    assert transport.size("q") == 1
    delivery.ack()  # a late ack of a restored message changes nothing (as with Kombu)
    assert transport.size("q") == 1


def test_heartbeat_keeps_a_held_message_from_being_restored(
        redis_url: str, client: redis.Redis) -> None:
    with RedisTransport(redis_url, visibility_timeout=1.0, lease_interval=0.1) as consumer, \
            RedisTransport(redis_url, visibility_timeout=1.0) as other:
        consumer.publish(frame(b"long"), Route("q"))
        delivery = take(consumer, ["q"])
        first = client.zscore("unacked_index", delivery.delivery_tag)
        time.sleep(1.5)  # longer than the visibility timeout
        assert other.restore_visible() == 0
        assert other.receive(["q"], timeout=0.1) is None
        later_score = client.zscore("unacked_index", delivery.delivery_tag)
        assert first is not None and later_score is not None and later_score > first + 1
        delivery.ack()
        time.sleep(0.3)  # a heartbeat after the ack must not bring the tag back
        assert client.zcard("unacked_index") == 0


def test_receive_runs_the_restore_scan(redis_url: str, client: redis.Redis) -> None:
    """An unacked entry, as Kombu writes it, of a consumer that died 10 s ago."""
    entry = {"body": "YQ==", "content-encoding": "utf-8", "content-type": "text/plain",
             "headers": {}, "properties": {
                 "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q"},
                 "priority": 0, "body_encoding": "base64", "delivery_tag": "dead-1"}}
    client.hset("unacked", "dead-1", json.dumps([entry, "", "q"]))
    client.zadd("unacked_index", {"dead-1": time.time() - 10})
    with RedisTransport(redis_url, visibility_timeout=5, restore_interval=0) as t:
        delivery = take(t, ["q"])
        assert delivery.redelivered and delivery.delivery_tag == "dead-1"
        assert delivery.frame.body == b"a"
        delivery.ack()


# -- dead letters -------------------------------------------------------------------------


BAD_ENTRIES = [
    (b"not json at all", "not JSON"),
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"[1, 2, 3]", "not an object"),
    (json.dumps({"body": "eA==", "headers": {}}).encode(), "no 'properties'"),
    (json.dumps({"body": "eA==", "properties": {"body_encoding": "base64"}}).encode(),
     "delivery_tag"),
    (json.dumps({"properties": {"delivery_tag": "t1", "body_encoding": "base64"}}).encode(),
     "no 'body'"),
    (json.dumps({"body": "!!not base64!!", "properties": {
        "delivery_tag": "t2", "body_encoding": "base64"}}).encode(), "not valid base64"),
    (json.dumps({"body": "x", "headers": [1], "properties": {"delivery_tag": "t3"}}).encode(),
     "'headers' is not an object"),
    (json.dumps({"body": "x", "properties": {"delivery_tag": "t4",
                                             "body_encoding": "rot13"}}).encode(),
     "unknown properties.body_encoding"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_ENTRIES)
def test_bad_entries_are_dead_lettered_and_consumption_goes_on(
        transport: RedisTransport, client: redis.Redis, raw: bytes, reason: str) -> None:
    client.lpush("q", raw)
    transport.publish(frame(b"good"), Route("q"))
    delivery = take(transport, ["q"], timeout=1)
    assert delivery.frame.body == b"good"
    delivery.ack()
    (dead,) = transport.dead_letters("q")
    assert reason in dead.reason
    assert dead.raw == raw and dead.frame is None and dead.queue == "q"
    assert abs(dead.at - time.time()) < 10
    stored = json.loads(client.lindex("q.dead", 0))
    assert set(stored) == {"reason", "raw", "raw_encoding", "queue", "at"}
    if raw.startswith(b"\xff"):
        assert stored["raw_encoding"] == "base64"
    else:
        assert stored["raw_encoding"] == "text" and stored["raw"] == raw.decode()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_bad_entry_arriving_during_the_blocking_wait(transport: RedisTransport,
                                                     client: redis.Redis) -> None:
    def push() -> None:
        time.sleep(0.3)
        client.lpush("q", b"{broken")
        time.sleep(0.2)
        client.lpush("q", b'{"body": "aGk=", "properties": {"delivery_tag": "ok-1", '
                          b'"body_encoding": "base64"}}')

    thread = threading.Thread(target=push)
    thread.start()
    delivery = take(transport, ["q"], timeout=5)
    thread.join(5)
    assert delivery.frame.body == b"hi" and delivery.delivery_tag == "ok-1"
    assert delivery.frame.content_type == ""  # absent label, as Kombu reads None
    assert client.hexists("unacked", "ok-1")
    delivery.ack()
    assert [d.raw for d in transport.dead_letters("q")] == [b"{broken"]


def test_plain_utf8_body_without_body_encoding(transport: RedisTransport,
                                               client: redis.Redis) -> None:
    client.lpush("q", json.dumps({"body": "[[1], {}, {}]", "content-type": "application/json",
                                  "content-encoding": "utf-8", "headers": None,
                                  "properties": {"delivery_tag": "p-1"}}))
    delivery = take(transport, ["q"])
    assert delivery.frame.body == b"[[1], {}, {}]" and delivery.frame.headers == {}
    delivery.ack()


def test_delivery_dead_letter_keeps_the_frame(transport: RedisTransport,
                                              client: redis.Redis) -> None:
    sent = frame(b"poison", priority=0, delivery_mode=2)
    transport.publish(sent, Route("q"))
    delivery = take(transport, ["q"])
    delivery.dead_letter("unknown compression 'x-foo'")
    assert client.hlen("unacked") == 0 and transport.size("q") == 0
    (dead,) = transport.dead_letters("q")
    assert dead.reason == "unknown compression 'x-foo'"
    assert dead.frame == sent
    with pytest.raises(TransportError, match="already dead-lettered"):
        delivery.ack()
    assert transport.dead_letters("other") == []


# -- delayed delivery -------------------------------------------------------------------------


def test_delayed_message_waits_in_the_zset_until_due(transport: RedisTransport,
                                                     client: redis.Redis) -> None:
    sent = frame(b"later", priority=9)
    due_at = later(0.6)
    transport.publish(sent, Route("q"), not_before=due_at)
    assert transport.capabilities.native_delay
    assert client.llen(f"q{SEP}9") == 0 and client.zcard("_wiretask.delayed") == 1
    assert transport.size("q") == 1
    (peeked,) = transport.peek("q")
    assert peeked.state == "scheduled" and peeked.frame == sent
    assert peeked.not_before is not None
    assert abs((peeked.not_before - due_at).total_seconds()) < 0.001
    assert transport.due() == 0
    assert transport.receive(["q"], timeout=0.1) is None
    # Nobody holds it while it waits: ``unacked`` has only its restore token, scored
    # so that no restore_visible takes it before it is due.
    [(member, score)] = client.zrange("unacked_index", 0, -1, withscores=True)
    assert client.hkeys("unacked") == [member] and member.endswith(f"{SEP}q".encode())
    assert score == pytest.approx(due_at.timestamp() - transport.visibility_timeout)
    time.sleep(max(0.0, (due_at - datetime.now(UTC)).total_seconds()) + 0.05)
    assert transport.due() == 1
    assert client.zcard("_wiretask.delayed") == 0 and client.hlen("_wiretask.delayed.messages") == 0
    assert client.llen(f"q{SEP}9") == 1 and transport.size("q") == 1
    delivery = take(transport, ["q"])
    assert delivery.frame.body == b"later" and not delivery.redelivered
    delivery.ack()


def test_receive_promotes_its_queues_due_messages_without_a_scheduler(
        transport: RedisTransport, client: redis.Redis) -> None:
    transport.publish(frame(b"other-queue"), Route("elsewhere"), not_before=later(0.2))
    due_at = later(0.4)
    transport.publish(frame(b"mine"), Route("q"), not_before=due_at)
    start = time.monotonic()
    delivery = take(transport, ["q"], timeout=10)  # BRPOP must wake at the due time
    assert datetime.now(UTC) >= due_at and time.monotonic() - start < 2
    assert delivery.frame.body == b"mine"
    delivery.ack()
    # only the consumed queues are promoted; the rest wait for due()
    assert client.zcard("_wiretask.delayed") == 1 and client.llen("elsewhere") == 0
    assert transport.due() == 1 and client.llen("elsewhere") == 1


def test_long_delay_is_never_restored_by_visibility(redis_url: str,
                                                    client: redis.Redis) -> None:
    with RedisTransport(redis_url, visibility_timeout=0.2, restore_interval=0,
                        delay_mode="native") as t:
        t.publish(frame(b"next-week"), Route("q"), not_before=later(7 * 24 * 3600))
        time.sleep(0.3)
        assert t.restore_visible() == 0
        assert t.receive(["q"], timeout=0.2) is None
        assert t.due() == 0 and t.size("q") == 1


def test_past_not_before_is_published_at_once(transport: RedisTransport,
                                              client: redis.Redis) -> None:
    transport.publish(frame(b"now"), Route("q"), not_before=later(-5))
    assert client.llen("q") == 1 and client.zcard("_wiretask.delayed") == 0


def test_naive_not_before_is_refused(transport: RedisTransport) -> None:
    with pytest.raises(ValidationError):
        transport.publish(frame(), Route("q"), not_before=datetime.now())


def test_concurrent_due_callers_never_duplicate(redis_url: str,
                                                client: redis.Redis) -> None:
    n = 300
    with RedisTransport(redis_url, delay_mode="native") as t:
        due_at = later(0.5)
        t.publish_many([Outgoing(frame(str(i).encode()), Route("q"), due_at)
                        for i in range(n)])
        assert t.size("q") == n
        time.sleep(max(0.0, (due_at - datetime.now(UTC)).total_seconds()) + 0.05)
        moved: list[int] = []
        transports = [RedisTransport(redis_url) for _ in range(6)]

        def run(tr: RedisTransport) -> None:
            moved.append(tr.due(limit=7))

        threads = [threading.Thread(target=run, args=(tr,)) for tr in transports]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        for tr in transports:
            tr.close()
        assert sum(moved) == n
        entries = client.lrange("q", 0, -1)
        assert len(entries) == n
        assert len({json.loads(e)["properties"]["delivery_tag"] for e in entries}) == n
        assert client.zcard("_wiretask.delayed.queue.q") == 0


def test_celery_delay_mode_sends_straight_to_the_list(redis_url: str,
                                                      client: redis.Redis) -> None:
    with RedisTransport(f"{redis_url}?delay_mode=celery") as t:
        assert not t.capabilities.native_delay
        t.publish(frame(b"eta"), Route("q"), not_before=later(3600))
        assert client.llen("q") == 1 and client.zcard("_wiretask.delayed") == 0
        assert take(t, ["q"]).frame.body == b"eta"


def test_run_scheduler_moves_due_messages_until_stopped(redis_url: str,
                                                        client: redis.Redis) -> None:
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        run_scheduler(redis_url, interval=0.05, stop_event=stop)))
    thread.start()
    try:
        with RedisTransport(redis_url, delay_mode="native") as t:
            t.publish(frame(b"tick"), Route("q"), not_before=later(0.2))
            # Nobody consumes until the scheduler moved it (a receive would move it
            # itself once due, and the scheduler would find nothing to move).
            deadline = time.monotonic() + 5
            while client.llen("q") == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            delivery = take(t, ["q"], timeout=0)
            assert delivery.frame.body == b"tick"
            delivery.ack()
    finally:
        stop.set()
        thread.join(10)
    assert result == [1]
    with pytest.raises(ValidationError):
        run_scheduler(redis_url, interval=0)


# -- inspecting --------------------------------------------------------------------------------


def test_size_peek_purge_cover_ready_and_scheduled(transport: RedisTransport) -> None:
    transport.publish(frame(b"r0"), Route("q"))
    transport.publish(frame(b"r9", priority=9), Route("q"))
    transport.publish(frame(b"r1"), Route("q"))
    transport.publish(frame(b"s2"), Route("q"), not_before=later(60))
    transport.publish(frame(b"s1"), Route("q"), not_before=later(30))
    transport.publish(frame(b"other"), Route("other"), not_before=later(30))
    assert transport.size("q") == 5
    peeked = transport.peek("q")
    assert [p.frame.body for p in peeked] == [b"r0", b"r1", b"r9", b"s1", b"s2"]
    assert [p.state for p in peeked] == ["ready"] * 3 + ["scheduled"] * 2
    assert [p.frame.body for p in transport.peek("q", limit=2)] == [b"r0", b"r1"]
    assert [p.frame.body for p in transport.peek("q", limit=4)][-1] == b"s1"
    assert transport.size("q") == 5  # peek consumed nothing
    assert transport.purge("q") == 5
    assert transport.size("q") == 0 and transport.peek("q") == []
    assert transport.size("other") == 1


# -- routing --------------------------------------------------------------------------------


def test_declare_queue_writes_celerys_binding(transport: RedisTransport,
                                              client: redis.Redis) -> None:
    transport.declare_queue("celery")
    member = f"celery{SEP}{SEP}celery".encode()
    assert client.smembers("_kombu.binding.celery") == {member}
    assert client.smembers("_kombu.binding_permanent.celery") == {member}


def test_named_exchanges_route_through_binding_tables(transport: RedisTransport,
                                                      client: redis.Redis) -> None:
    transport.bind_queue("direct-q", "ex", "key")
    transport.bind_queue("topic-q", "tx", "jobs.*.high", exchange_type="topic")
    transport.bind_queue("all-q", "tx", "jobs.#", exchange_type="topic")
    assert client.smembers("_kombu.binding.tx") == client.smembers(
        "_kombu.binding_permanent.tx")
    transport.publish(frame(b"d"), Route("direct-q", exchange="ex", routing_key="key"))
    transport.publish(frame(b"t"), Route("topic-q", exchange="tx",
                                         routing_key="jobs.mail.high"))
    transport.publish(frame(b"u"), Route("all-q", exchange="tx", routing_key="jobs.mail.low"))
    assert drain_bodies(transport, ["direct-q"], 1) == [b"d"]
    assert drain_bodies(transport, ["topic-q"], 1) == [b"t"]
    assert sorted(drain_bodies(transport, ["all-q"], 2)) == [b"t", b"u"]
    transport.publish(frame(b"lost"), Route("direct-q", exchange="ex", routing_key="nope"))
    (dead,) = transport.dead_letters("direct-q")
    assert "unroutable" in dead.reason and dead.frame is not None
    with pytest.raises(ValidationError):
        transport.bind_queue("q", "fx", "", exchange_type="fanout")  # type: ignore[arg-type]


def test_requeue_of_a_named_exchange_message_follows_the_bindings(
        transport: RedisTransport) -> None:
    transport.bind_queue("tq", "tx", "a.*", exchange_type="topic")
    transport.publish(frame(b"m"), Route("tq", exchange="tx", routing_key="a.b"))
    delivery = take(transport, ["tq"])
    assert (delivery.exchange, delivery.routing_key) == ("tx", "a.b")
    delivery.reject(requeue=True)
    again = take(transport, ["tq"])
    assert again.redelivered and again.frame.body == b"m"
    again.ack()


def test_publish_many_mixes_ready_delayed_and_priorities(transport: RedisTransport,
                                                         client: redis.Redis) -> None:
    transport.bind_queue("bq", "ex", "rk")
    batch = [
        Outgoing(frame(b"a"), Route("q")),
        Outgoing(frame(b"b", priority=9), Route("q")),
        Outgoing(frame(b"c"), Route("q"), later(30)),
        Outgoing(frame(b"d"), Route("bq", exchange="ex", routing_key="rk")),
    ]
    transport.publish_many(batch)
    transport.publish_many([])
    assert transport.size("q") == 3 and transport.size("bq") == 1
    assert client.llen(f"q{SEP}9") == 1
    assert drain_bodies(transport, ["q", "bq"], 3) == [b"a", b"d", b"b"]


def test_publish_many_is_one_round_trip(transport: RedisTransport,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    transport.connect()
    sends = count_writes(monkeypatch)
    transport.publish_many([Outgoing(frame(str(i).encode(), priority=i % 10), Route("q"))
                            for i in range(50)])
    assert len(sends) == 1
    monkeypatch.undo()
    assert transport.size("q") == 50


@pytest.mark.parametrize("landed", [True, False])
def test_retrying_a_publish_with_unknown_outcome_does_not_duplicate(
        transport: RedisTransport, client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        landed: bool) -> None:
    sent = frame(b"once")
    plan = _lose_pushes(monkeypatch, [landed])
    with pytest.raises(ConnectionLost):
        transport.publish(sent, Route("q"))
    assert plan == []
    transport.publish(sent, Route("q"))  # the retry driver publishes the same frame
    assert transport.size("q") == 1
    # One marker either way: the retry of an attempt that landed writes nothing at all.
    assert len(client.keys("_wiretask.published.*")) == 1
    transport.publish(sent, Route("q"))  # a later, successful publish is a new message
    assert transport.size("q") == 2


@pytest.mark.parametrize("landed", [True, False])
def test_retrying_publish_many_with_unknown_outcome_does_not_duplicate(
        transport: RedisTransport, monkeypatch: pytest.MonkeyPatch, landed: bool) -> None:
    batch = [Outgoing(frame(b"a"), Route("q")), Outgoing(frame(b"b"), Route("q"), later(30))]
    _lose_pushes(monkeypatch, [landed])
    with pytest.raises(ConnectionLost):
        transport.publish_many(batch)
    transport.publish_many(batch)
    assert transport.size("q") == 2
    assert [p.frame.body for p in transport.peek("q")] == [b"a", b"b"]


def _lose_pushes(monkeypatch: pytest.MonkeyPatch, landed: list[bool]) -> list[bool]:
    """Make the next ``len(landed)`` publish writes (the one ``MULTI``/``EXEC``
    transaction of a single message or of a whole batch) fail with ConnectionError, each
    after running (True: the reply was lost) or without running (False). Returns the
    plan, which empties as it is used. (A publish sends its transaction as
    ``Commands.run(..., atomic=True)``.)"""
    original = Commands.run
    plan = list(landed)

    def flaky(self: Commands, commands: Any, *, atomic: bool = False) -> Any:
        if atomic and plan:
            if plan.pop(0):
                original(self, commands, atomic=True)
            raise redis.ConnectionError("connection dropped before the reply")
        return original(self, commands, atomic=atomic)

    monkeypatch.setattr(Commands, "run", flaky)
    return plan


@pytest.mark.parametrize("landed", [[True], [False], [False, True], [True, False]])
def test_a_batch_retried_in_parts_lands_each_message_once(
        transport: RedisTransport, monkeypatch: pytest.MonkeyPatch, landed: list[bool]) -> None:
    """Each attempt has its own marker, so a retry that takes only part of a batch whose
    outcome was unknown, and fails again, still tells what landed: every message of the
    first attempt lands exactly once whichever of the attempts ran."""
    a, b = Outgoing(frame(b"a"), Route("q")), Outgoing(frame(b"b"), Route("q"))
    _lose_pushes(monkeypatch, landed)
    with pytest.raises(ConnectionLost):
        transport.publish_many([a, b])
    try:
        transport.publish_many([a])  # the retry driver of a caller that sent only a
    except ConnectionLost:
        transport.publish_many([a, b])
    else:
        transport.publish_many([b])
    assert sorted(p.frame.body for p in transport.peek("q")) == [b"a", b"b"]


def test_publish_markers_can_be_turned_off(redis_url: str, client: redis.Redis,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def calls(command: str) -> int:
        stats = client.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})
        return int(stats["calls"])

    with RedisTransport(f"{redis_url}?publish_markers=false") as t:
        before = {c: calls(c) for c in ("lpush", "set", "multi")}
        t.publish(frame(b"plain"), Route("q"))
        t.publish_many([Outgoing(frame(b"x"), Route("q")), Outgoing(frame(b"y"), Route("q"))])
        # One LPUSH for the single message, one variadic LPUSH for the batch.
        assert {c: calls(c) - before[c] for c in before} == {"lpush": 2, "set": 0, "multi": 0}
        assert t.size("q") == 3
        assert not client.keys("_wiretask.published.*")
        sent = frame(b"twice")
        _lose_pushes(monkeypatch, [True])
        t.publish(sent, Route("q"))  # one LPUSH, no MULTI: nothing to lose here
        assert t.size("q") == 4
    monkeypatch.undo()
    with RedisTransport(redis_url) as t:
        t.publish(frame(b"marked"), Route("m"))
        assert len(client.keys("_wiretask.published.*")) == 1


def test_global_keyprefix_applies_to_every_key(redis_url: str, client: redis.Redis) -> None:
    with RedisTransport(f"{redis_url}?global_keyprefix=pfx:&delay_mode=native") as t:
        t.declare_queue("q")
        t.publish(frame(b"a", priority=5), Route("q"))
        t.publish(frame(b"c", priority=5), Route("q"))
        t.publish(frame(b"b"), Route("q"), not_before=later(30))
        client.lpush("pfx:q", b"junk")
        held = take(t, ["q"])
        assert held.frame.body == b"a"
        keys = {k.decode() for k in client.keys("*")}
        assert keys and all(k.startswith("pfx:") for k in keys), keys
        assert {"pfx:unacked", "pfx:unacked_index", "pfx:_wiretask.delayed",
                f"pfx:q{SEP}3", "pfx:q.dead", "pfx:_kombu.binding.q"} <= keys
        held.ack()
        assert t.size("q") == 2 and t.purge("q") == 2


# -- threads -------------------------------------------------------------------------------


def test_many_threads_publish_consume_and_ack_exactly_once(transport: RedisTransport) -> None:
    n, consumers = 400, 4
    seen: list[bytes] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 30

    def produce(start: int) -> None:
        for i in range(start, n, 2):
            transport.publish(frame(str(i).encode()), Route("mt"))

    def consume() -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= n:
                    return
            delivery = transport.receive(["mt"], timeout=0.2)
            if delivery is None:
                continue
            threading.Thread(target=delivery.ack).start()  # acked from another thread
            with lock:
                seen.append(delivery.frame.body)

    threads = [threading.Thread(target=produce, args=(s,)) for s in (0, 1)]
    threads += [threading.Thread(target=consume) for _ in range(consumers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(40)
    assert sorted(seen) == sorted(str(i).encode() for i in range(n))
    time.sleep(0.2)
    assert transport.size("mt") == 0


# -- configuration and failures ------------------------------------------------------------


def test_options_from_url_and_keywords(redis_url: str) -> None:
    t = RedisTransport(f"{redis_url}?visibility_timeout=42&priority_steps=0,5&"
                       "socket_timeout=3", lease_interval=2)
    assert t.capabilities.visibility_timeout == 42 and t.lease_interval == 2
    t.publish(frame(b"p", priority=7), Route("q"))
    with redis.Redis.from_url(redis_url) as c:
        assert c.llen(f"q{SEP}5") == 1
    t.close()
    assert RedisTransport.from_url(redis_url).capabilities.visibility_timeout == 3600
    built = transport_from_url(f"redis://:pw@{redis_url.split('//')[1]}?delay_mode=celery",
                               visibility_timeout=7)
    assert isinstance(built, RedisTransport) and built.visibility_timeout == 7
    assert not built.capabilities.native_delay and "pw" not in built.url
    for bad_url, kwargs in [("amqp://host//", {}), (redis_url, {"delay_mode": "later"}),
                            (f"{redis_url}?priority_steps=3,6", {}),
                            (f"{redis_url}?visibility_timeout=soon", {}),
                            (redis_url, {"no_such_option": 1}),
                            (f"{redis_url}?poll_interval=0", {}),
                            (redis_url, {"visibility_timeout": 10, "lease_interval": 10}),
                            (redis_url, {"visibility_timeout": -1})]:
        with pytest.raises(ImproperlyConfigured):
            RedisTransport(bad_url, **kwargs)


def test_bad_arguments_are_refused(transport: RedisTransport) -> None:
    with pytest.raises(ValidationError):
        transport.receive([], timeout=1)
    with pytest.raises(ValidationError):
        transport.receive(["q"], timeout=-1)
    with pytest.raises(ValidationError):
        transport.peek("q", limit=-1)
    transport.publish(frame(), Route("q"))
    delivery = take(transport, ["q"])
    with pytest.raises(ValidationError):
        delivery.dead_letter("")
    delivery.ack()


def test_wrong_password_is_a_transport_error_without_the_password(redis_server: Any) -> None:
    redis_server.stop()
    redis_server.proc = subprocess.Popen(
        [redis_server.binary, "--bind", "127.0.0.1", "--port", str(redis_server.port),
         "--save", "", "--appendonly", "no", "--dir", redis_server.dir,
         "--requirepass", "right-secret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=redis_server.port, password="right-secret").ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    for url in (f"redis://:wrong-s3cret@127.0.0.1:{redis_server.port}/0",
                f"redis://127.0.0.1:{redis_server.port}/0"):
        t = RedisTransport(url)
        with pytest.raises(TransportError) as info:
            t.publish(frame(), Route("q"))
        assert not isinstance(info.value, ConnectionLost)
        assert "s3cret" not in str(info.value) and "s3cret" not in (info.value.url or "")
        assert f"127.0.0.1:{redis_server.port}" in str(info.value)
        assert isinstance(info.value.__cause__, redis.AuthenticationError)
    with RedisTransport(f"redis://:right-secret@127.0.0.1:{redis_server.port}/0") as ok:
        ok.publish(frame(), Route("q"))
        assert ok.size("q") == 1
        assert "right-secret" not in ok.url and "right-secret" not in repr(ok)


def test_unreachable_port_is_connection_lost_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = RedisTransport(f"redis://:pw@127.0.0.1:{port}/0")
    start = time.monotonic()
    for call in (t.connect, lambda: t.publish(frame(), Route("q")),
                 lambda: t.receive(["q"], timeout=1), lambda: t.size("q")):
        with pytest.raises(ConnectionLost) as info:
            call()
        assert info.value.recoverable and f":{port}/0" in str(info.value)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert time.monotonic() - start < 3
    t.close()


def test_outage_then_the_same_transport_reconnects(redis_server: Any) -> None:
    url = f"{redis_server.url}/0"
    with RedisTransport(url) as t:
        t.publish(frame(b"before"), Route("q"))
        assert take(t, ["q"]).frame.body == b"before"
        redis_server.stop()
        with pytest.raises(ConnectionLost):
            t.publish(frame(b"during"), Route("q"))
        with pytest.raises(ConnectionLost):
            t.receive(["q"], timeout=0.5)
        redis_server.start()
        t.publish(frame(b"after"), Route("q"))
        delivery = take(t, ["q"])
        assert delivery.frame.body == b"after"
        delivery.ack()


def test_a_reply_that_never_comes_is_connection_lost_and_the_next_command_works(
        redis_url: str, client: redis.Redis) -> None:
    with RedisTransport(f"{redis_url}?socket_timeout=0.3") as t:
        t.publish(frame(b"before"), Route("q"))  # connected, scripts loaded
        client.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        try:
            with pytest.raises(ConnectionLost, match="Timeout"):
                t.receive_many(["q"], limit=1, timeout=0)
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        # The timed-out connection was dropped (its late reply must not answer the
        # next command); a new one takes over.
        t.publish(frame(b"after"), Route("q"))
        got = t.receive_many(["q"], limit=5, timeout=1)
        assert b"after" in [d.frame.body for d in got]
        t.ack_many(got)


def test_response_errors_are_transport_errors(transport: RedisTransport,
                                              client: redis.Redis) -> None:
    client.set("wrongtype", "x")
    with pytest.raises(TransportError) as info:
        transport.publish(frame(), Route("wrongtype"))
    assert not info.value.recoverable
    assert isinstance(info.value.__cause__, redis.ResponseError)
