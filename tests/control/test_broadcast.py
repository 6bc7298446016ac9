"""The ``Broadcast`` capability on every bundled broker: exchanges route as AMQP's do, to
the queues listening when a message is sent, and to no one else."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from wiretask.errors import TransportError, ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Broadcast, Exchange, Inbox
from wiretask.transports.redis import RedisTransport

from .conftest import Factory

FANOUT = Exchange(name="test.pidbox", type="fanout")
DIRECT = Exchange(name="reply.test.pidbox", type="direct")


def frame(text: str) -> Frame:
    return Frame(body=text.encode(), content_type="application/json", content_encoding="utf-8",
                 headers={"clock": 1}, properties={"delivery_mode": 2, "priority": 0})


def caster(make: Factory) -> Broadcast:
    transport = make()
    assert isinstance(transport, Broadcast)
    return transport


def bodies(inbox: Inbox, wait: float = 0.3) -> list[bytes]:
    """What arrives in ``inbox`` until it stays quiet for ``wait`` seconds."""
    got = []
    while (item := inbox.get(wait)) is not None:
        got.append(item.body)
    return got


def test_fanout_reaches_every_queue_listening_and_only_those(make_transport: Factory) -> None:
    sender = caster(make_transport)
    first = caster(make_transport).listen(FANOUT, BoundQueue(name="a.test.pidbox", expires=10))
    second = caster(make_transport).listen(FANOUT, BoundQueue(name="b.test.pidbox"))

    sender.broadcast(FANOUT, frame('"one"'))
    late = caster(make_transport).listen(FANOUT, BoundQueue(name="c.test.pidbox"))
    sender.broadcast(FANOUT, frame('"two"'), routing_key="")

    assert bodies(first) == [b'"one"', b'"two"']
    assert bodies(second) == [b'"one"', b'"two"']
    assert bodies(late) == [b'"two"']  # not what was sent before it listened


def test_a_message_keeps_its_frame(make_transport: Factory) -> None:
    sender = caster(make_transport)
    inbox = caster(make_transport).listen(FANOUT, BoundQueue(name="a.test.pidbox"))
    sent = Frame(body=b'{"method": "ping"}', content_type="application/json",
                 content_encoding="utf-8", headers={"clock": 7, "expires": 1.5},
                 properties={"delivery_mode": 2, "priority": 0})

    sender.broadcast(FANOUT, sent)

    assert inbox.get(5) == sent


def test_direct_routes_by_the_exact_key(make_transport: Factory) -> None:
    sender = caster(make_transport)
    mine = caster(make_transport).listen(
        DIRECT, BoundQueue(name="oid1.reply.test.pidbox", binding_key="oid1", expires=10))
    other = caster(make_transport).listen(
        DIRECT, BoundQueue(name="oid2.reply.test.pidbox", binding_key="oid2", expires=10))

    sender.broadcast(DIRECT, frame('"for 1"'), routing_key="oid1")
    sender.broadcast(DIRECT, frame('"for nobody"'), routing_key="oid3")  # dropped

    assert bodies(mine) == [b'"for 1"']
    assert bodies(other) == []


def test_closed_inbox_gets_nothing_more(make_transport: Factory) -> None:
    sender = caster(make_transport)
    inbox = caster(make_transport).listen(DIRECT, BoundQueue(name="q", binding_key="k"))
    inbox.close()
    inbox.close()  # idempotent

    sender.broadcast(DIRECT, frame('"x"'), routing_key="k")

    with pytest.raises(TransportError, match="closed"):
        inbox.get(0)


def test_get_waits_for_a_message_sent_meanwhile(make_transport: Factory) -> None:
    sender = caster(make_transport)
    inbox = caster(make_transport).listen(FANOUT, BoundQueue(name="a.test.pidbox"))
    timer = threading.Timer(0.3, sender.broadcast, (FANOUT, frame('"later"')))
    timer.start()
    try:
        started = time.monotonic()
        got = inbox.get(10)
        assert got is not None and got.body == b'"later"'
        assert time.monotonic() - started < 5
    finally:
        timer.cancel()
        timer.join(10)  # its PUBLISH may still wait for its reply: not past the fixture


def test_get_returns_none_after_its_timeout(make_transport: Factory) -> None:
    inbox = caster(make_transport).listen(FANOUT, BoundQueue(name="a.test.pidbox"))
    started = time.monotonic()
    assert inbox.get(0.2) is None
    assert 0.15 <= time.monotonic() - started < 3
    assert inbox.get(0) is None


def test_arguments_are_checked(make_transport: Factory) -> None:
    transport = caster(make_transport)
    with pytest.raises(ValidationError, match="exchange"):
        transport.broadcast("test.pidbox", frame("1"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="frame"):
        transport.broadcast(FANOUT, b"1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="routing_key"):
        transport.broadcast(FANOUT, frame("1"), routing_key=None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="queue"):
        transport.listen(FANOUT, "q")  # type: ignore[arg-type]
    inbox = transport.listen(FANOUT, BoundQueue(name="q"))
    with pytest.raises(ValidationError, match="timeout"):
        inbox.get(-1)


def test_values_check_themselves() -> None:
    with pytest.raises(ValidationError, match="exchange"):
        Exchange(name="")
    with pytest.raises(ValidationError, match="exchange_type"):
        Exchange(name="x", type="headers")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="queue"):
        BoundQueue(name="")
    with pytest.raises(ValidationError, match="expires"):
        BoundQueue(name="q", expires=0)
    with pytest.raises(ValidationError, match="message_ttl"):
        BoundQueue(name="q", message_ttl=float("nan"))


@pytest.mark.parametrize("broker", ["memory", "sqlite"], indirect=True)
def test_topic_exchanges_match_words(make_transport: Factory) -> None:
    events = Exchange(name="testev", type="topic", durable=True)
    sender = caster(make_transport)
    tasks = caster(make_transport).listen(events, BoundQueue(name="t", binding_key="task.*"))
    everything = caster(make_transport).listen(events, BoundQueue(name="e", binding_key="#"))

    sender.broadcast(events, frame('"s"'), routing_key="task.succeeded")
    sender.broadcast(events, frame('"h"'), routing_key="worker.heartbeat")
    sender.broadcast(events, frame('"deep"'), routing_key="task.a.b")

    assert bodies(tasks) == [b'"s"']
    assert bodies(everything) == [b'"s"', b'"h"', b'"deep"']


@pytest.mark.parametrize("broker", ["memory", "sqlite"], indirect=True)
def test_an_exchange_keeps_its_type(make_transport: Factory) -> None:
    transport = caster(make_transport)
    transport.broadcast(FANOUT, frame("1"))
    with pytest.raises(TransportError, match="fanout exchange, not direct"):
        transport.broadcast(Exchange(name=FANOUT.name, type="direct"), frame("1"))


@pytest.mark.parametrize("broker", ["memory", "sqlite"], indirect=True)
def test_messages_older_than_the_queue_ttl_are_dropped(make_transport: Factory) -> None:
    sender = caster(make_transport)
    inbox = caster(make_transport).listen(FANOUT, BoundQueue(name="q", message_ttl=0.2))
    sender.broadcast(FANOUT, frame('"stale"'))
    time.sleep(0.4)
    sender.broadcast(FANOUT, frame('"fresh"'))

    assert bodies(inbox) == [b'"fresh"']


@pytest.mark.parametrize("broker", ["memory"], indirect=True)
def test_memory_unbinds_a_queue_unread_past_its_expiry(make_transport: Factory) -> None:
    sender = caster(make_transport)
    inbox = caster(make_transport).listen(FANOUT, BoundQueue(name="q", expires=0.2))
    time.sleep(0.4)
    sender.broadcast(FANOUT, frame('"x"'))
    with pytest.raises(TransportError, match="closed"):
        inbox.get(0)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_redis_writes_kombus_keys(make_transport: Factory, redis_url: str) -> None:
    """Fanout is PUBLISH on ``/<db>.<exchange>``; a bound queue is a member of Kombu's
    binding table (with a deadline for an expiring queue, permanent otherwise), and
    closing removes it and the queue's lists."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("/15.test.pidbox")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    transport = caster(make_transport)
    node = transport.listen(FANOUT, BoundQueue(name="w@h.test.pidbox", expires=10))
    reply = transport.listen(DIRECT, BoundQueue(name="oid.reply.test.pidbox",
                                                binding_key="oid"))

    assert client.smembers("_kombu.binding.test.pidbox") == {b"\x06\x16\x06\x16w@h.test.pidbox"}
    deadline = client.zscore("_kombu.binding_deadlines", "test.pidbox")
    assert deadline is not None and deadline >= time.time() * 1000 + 3_500_000  # 1 h
    assert client.smembers("_kombu.binding.reply.test.pidbox") == {
        b"oid\x06\x16\x06\x16oid.reply.test.pidbox"}
    assert client.smembers("_kombu.binding_permanent.reply.test.pidbox") == {
        b"oid\x06\x16\x06\x16oid.reply.test.pidbox"}

    transport.broadcast(FANOUT, frame('"hi"'))
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert message is not None and message["channel"] == b"/15.test.pidbox"
    assert b'"delivery_info": {"exchange": "test.pidbox", "routing_key": ""}' in message["data"]
    transport.broadcast(DIRECT, frame('"r"'), routing_key="oid")
    assert client.llen("oid.reply.test.pidbox") == 1

    node.close()
    reply.close()
    assert not client.exists("_kombu.binding.test.pidbox", "_kombu.binding.reply.test.pidbox",
                             "oid.reply.test.pidbox")
    pubsub.close()
    client.close()


@pytest.mark.redis
def test_redis_global_keyprefix_prefixes_channels_and_keys(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("app1:/15.test.pidbox")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    transport = RedisTransport(redis_url, global_keyprefix="app1:")
    try:
        inbox = transport.listen(FANOUT, BoundQueue(name="w.test.pidbox"))
        assert client.exists("app1:_kombu.binding.test.pidbox")
        transport.broadcast(FANOUT, frame('"p"'))
        assert pubsub.get_message(ignore_subscribe_messages=True, timeout=5) is not None
        got = inbox.get(5)
        assert got is not None and got.body == b'"p"'
        inbox.close()
    finally:
        transport.close()
        pubsub.close()
        client.close()
