"""Delayed messages on Redis in a mixed fleet (TRANSPORTS.md §1.5): the delay modes, the
movers' heartbeat and the publishers' cached view of it, and the restore tokens that let
any consumer (Kombu's ``restore_visible`` included) push a held message once it is due."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kombu
import pytest
import redis

from wiretask._redis.options import parse
from wiretask.app import App
from wiretask.errors import ImproperlyConfigured
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.redis import RedisTransport
from wiretask.transports.redis.database import Database
from wiretask.transports.redis.scheduler import MOVER_CACHE, MOVER_TTL, Movers

SEP = "\x06\x16"
ETA = "2030-01-01T00:00:00+00:00"


def frame(name: bytes = b"x", **properties: Any) -> Frame:
    """A task message ``name`` (its id, and the first argument of its body)."""
    return Frame(body=json.dumps([[name.decode()], {}, {}]).encode(),
                 content_type="application/json", content_encoding="utf-8",
                 headers={"id": name.decode(), "task": "t", "eta": ETA},
                 properties=properties)



def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def sleep_until(when: datetime, extra: float = 0.05) -> None:
    time.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()) + extra)


def held_keys(client: redis.Redis) -> set[bytes]:
    return set(client.keys("_wiretask.delayed*"))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def mover(redis_url: str) -> Iterator[RedisTransport]:
    """A transport that has run ``due()``: a live mover (for ``MOVER_TTL`` seconds)."""
    t = RedisTransport(redis_url)
    t.due()
    yield t
    t.close()


# -- the option ---------------------------------------------------------------------------


def test_delay_mode_is_auto_by_default_and_set_by_url_or_option(redis_url: str) -> None:
    assert parse("redis://h/0", {}).delay_mode == "auto"
    assert parse("redis://h/0", {"delay_mode": "native"}).delay_mode == "native"
    # The URL wins over keyword arguments, as for every other option.
    assert parse("redis://h/0?delay_mode=celery", {"delay_mode": "native"}).delay_mode \
        == "celery"
    with pytest.raises(ImproperlyConfigured) as info:
        parse("redis://h/0?delay_mode=later", {})
    assert info.value.setting == "delay_mode" and "'later'" in str(info.value)
    app = App("a", broker=redis_url, broker_transport_options={"delay_mode": "celery"})
    try:
        transport = app.transport
        assert isinstance(transport, RedisTransport) and transport.delay_mode == "celery"
    finally:
        app.close()
    with RedisTransport(redis_url) as t:
        assert t.delay_mode == "auto" and t.capabilities.native_delay


# -- auto: hold only while a mover is alive -----------------------------------------------


def test_auto_without_a_mover_pushes_at_once_with_its_eta(
    redis_url: str, client: redis.Redis
) -> None:
    with RedisTransport(redis_url) as t:
        assert t.movers() == {}
        t.publish(frame(b"soon"), Route("q"), not_before=later(60))
    [entry] = client.lrange("q", 0, -1)
    assert json.loads(entry)["headers"]["eta"] == ETA  # the consumer holds it, as Celery's
    assert held_keys(client) == set() and client.hlen("unacked") == 0


def test_auto_with_a_mover_holds_and_the_mover_moves_it_once(
    redis_url: str, client: redis.Redis, mover: RedisTransport
) -> None:
    due_at = later(0.5)
    with RedisTransport(redis_url) as publisher:
        assert len(publisher.movers()) == 1
        publisher.publish(frame(b"held", priority=7), Route("q"), not_before=due_at)
    assert client.llen(f"q{SEP}6") == 0
    [member] = client.zrange("_wiretask.delayed", 0, -1)
    assert member.endswith(f"{SEP}q".encode())
    stored = json.loads(client.hget("_wiretask.delayed.messages", member) or b"")
    assert stored[:2] == [f"q{SEP}6", "q"] and stored[3] == 1
    token = json.loads(client.hget("unacked", member) or b"")
    assert token == [json.loads(stored[2]), "", "q"]
    assert client.zscore("unacked_index", member) == pytest.approx(
        due_at.timestamp() - 3600.0)
    assert mover.due() == 0
    sleep_until(due_at)
    assert mover.due() == 1 and mover.due() == 0
    assert client.llen(f"q{SEP}6") == 1
    assert held_keys(client) == set() and client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0


def test_a_process_that_runs_due_knows_it_is_a_mover(
    redis_url: str, client: redis.Redis, mover: RedisTransport
) -> None:
    """The worker republishes early messages through the transport that runs its
    ``due()``: that transport holds them on its own word, whatever Redis says."""
    client.delete("_wiretask.movers")
    mover.publish(frame(b"mine"), Route("q"), not_before=later(60))
    assert client.zcard("_wiretask.delayed") == 1 and client.llen("q") == 0


def test_due_writes_the_heartbeat_and_drops_expired_ones(
    redis_url: str, client: redis.Redis
) -> None:
    client.zadd("_wiretask.movers", {"crashed": time.time() - 1, "other": time.time() + 5})
    with RedisTransport(redis_url) as t:
        before = time.time()
        t.due()
        movers = t.movers()
        [me] = set(movers) - {"other"}
        assert before + MOVER_TTL <= movers[me] <= time.time() + MOVER_TTL
        assert client.zscore("_wiretask.movers", "crashed") is None
    # closing retires this mover, and only it
    assert [m.decode() for m in client.zrange("_wiretask.movers", 0, -1)] == ["other"]


def test_a_transport_that_never_ran_due_removes_no_heartbeat(
    redis_url: str, client: redis.Redis
) -> None:
    client.zadd("_wiretask.movers", {"other": time.time() + 5})
    with RedisTransport(redis_url) as t:
        t.publish(frame(), Route("q"), not_before=later(60))
    assert client.zcard("_wiretask.movers") == 1
    assert client.zcard("_wiretask.delayed") == 1  # "other" is alive: held


def test_publishers_stop_holding_when_the_last_mover_retires(
    redis_url: str, client: redis.Redis
) -> None:
    mover = RedisTransport(redis_url)
    mover.due()
    with RedisTransport(redis_url) as publisher:
        publisher.publish(frame(b"a"), Route("q"), not_before=later(60))
        assert client.zcard("_wiretask.delayed") == 1
        mover.close()  # a clean stop
        time.sleep(MOVER_CACHE)
        publisher.publish(frame(b"b"), Route("q"), not_before=later(60))
    assert client.zcard("_wiretask.delayed") == 1 and client.llen("q") == 1


def test_a_keyprefix_has_its_own_movers(redis_url: str, client: redis.Redis) -> None:
    with RedisTransport(redis_url, global_keyprefix="p1:") as prefixed:
        prefixed.due()
        assert client.zcard("p1:_wiretask.movers") == 1
        with RedisTransport(redis_url) as plain:
            assert plain.movers() == {}
            plain.publish(frame(), Route("q"), not_before=later(60))
    assert client.llen("q") == 1 and held_keys(client) == set()


# -- the publisher's cache ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting_reads(database: Database,
                   monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    commands = database.commands
    reads: list[tuple[Any, ...]] = []
    real = commands.call

    def call(*command: Any) -> Any:
        reads.append(command)
        return real(*command)

    monkeypatch.setattr(commands, "call", call)
    return reads


def test_movers_read_redis_at_most_once_per_cache_period(
    redis_url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    database = Database(parse(redis_url, {}))
    movers = Movers(database, cache=1.0, clock=clock)
    reads = counting_reads(database, monkeypatch)
    assert not any(movers.alive() for _ in range(100))
    assert len(reads) == 1 and reads[0][0] == "ZCOUNT"
    client.zadd("_wiretask.movers", {"w": time.time() + 30})
    clock.now += 0.99
    assert not movers.alive() and len(reads) == 1  # the cached answer
    clock.now += 0.01
    assert all(movers.alive() for _ in range(100)) and len(reads) == 2
    client.zadd("_wiretask.movers", {"w": time.time() - 0.001})  # expired, not removed
    assert movers.alive()
    clock.now += 1.0
    assert not movers.alive() and len(reads) == 3
    database.disconnect()


def test_only_a_publish_of_a_message_not_yet_due_reads_the_heartbeats(
    redis_url: str, client: redis.Redis
) -> None:
    """Measured on the server: ``ZCOUNT`` calls while publishing 200 messages in a
    tight loop of each kind."""
    def zcounts() -> int:
        stats = client.info("commandstats").get("cmdstat_zcount", {})
        return int(stats.get("calls", 0))

    with RedisTransport(redis_url) as t:
        start = zcounts()
        for _ in range(100):
            t.publish(frame(), Route("ready"))
            t.publish(frame(), Route("past"), not_before=later(-1))
        assert zcounts() == start
        began = time.monotonic()
        for _ in range(200):
            t.publish(frame(), Route("later"), not_before=later(60))
        periods = (time.monotonic() - began) / MOVER_CACHE
        assert 1 <= zcounts() - start <= periods + 1
        t.publish_many([Outgoing(frame(), Route("later"), later(60)) for _ in range(50)])
        assert client.llen("later") == 250


# -- restore tokens -----------------------------------------------------------------------


def test_a_held_message_nobody_moves_is_restored_by_wiretask_once_due(
    redis_url: str, client: redis.Redis
) -> None:
    with RedisTransport(redis_url, delay_mode="native", visibility_timeout=2,
                        restore_interval=3600) as t:
        due_at = later(0.3)
        t.publish(frame(b"held"), Route("q"), not_before=due_at)
        assert t.restore_visible() == 0  # not before it is due
        sleep_until(due_at)
        assert t.restore_visible() == 1
        assert client.llen("q") == 1 and client.hlen("unacked") == 0
        assert t.due() == 0  # the token is gone: DUE cleans up and pushes nothing
        assert held_keys(client) == set() and client.llen("q") == 1
        delivery = t.receive(["q"], timeout=1)
        assert delivery is not None and delivery.frame.headers["id"] == "held"
        assert delivery.redelivered  # Kombu's restore flags it
        delivery.ack()
        assert t.receive(["q"], timeout=0.2) is None


def test_kombus_restore_visible_pushes_a_held_message_once_due(
    redis_url: str, client: redis.Redis
) -> None:
    """The last-resort mover is Celery's own consumer: Kombu 5.7's ``QoS.restore_visible``
    (the code a Celery worker runs every ~100 s and when it starts consuming)."""
    with RedisTransport(redis_url, delay_mode="native") as t:
        due_at = later(0.5)
        t.publish(frame(b"held", priority=9), Route("q"), not_before=due_at)
        with kombu.Connection(redis_url) as conn:
            qos = conn.default_channel.qos
            qos.restore_visible(num=None, interval=1)
            assert client.llen(f"q{SEP}9") == 0 and client.hlen("unacked") == 1
            sleep_until(due_at)
            qos.restore_visible(num=None, interval=1)
            assert client.llen(f"q{SEP}9") == 1 and client.hlen("unacked") == 0
            queue = conn.SimpleQueue("q")
            try:
                message = queue.get(timeout=2)
                assert message.headers["id"] == "held" and message.headers["eta"] == ETA
                assert message.delivery_info["redelivered"]
                message.ack()
            finally:
                queue.close()
        assert t.due() == 0 and held_keys(client) == set()
        assert t.receive(["q"], timeout=0.2) is None


def test_a_restore_after_the_mover_moved_it_pushes_nothing(
    redis_url: str, client: redis.Redis
) -> None:
    with RedisTransport(redis_url, delay_mode="native", visibility_timeout=2) as t:
        due_at = later(0.3)
        t.publish(frame(b"once"), Route("q"), not_before=due_at)
        sleep_until(due_at)
        assert t.due() == 1
        assert t.restore_visible() == 0 and client.llen("q") == 1


def test_a_consumers_pop_honours_the_token(redis_url: str, client: redis.Redis) -> None:
    """Restored first (by another consumer's scan), then a consumer of the queue pops:
    its ``POP`` drops the stale member and pushes nothing, so one copy is delivered."""
    with RedisTransport(redis_url, delay_mode="native", visibility_timeout=2,
                        restore_interval=3600) as t:
        due_at = later(0.3)
        t.publish(frame(b"once"), Route("q"), not_before=due_at)
        sleep_until(due_at)
        assert t.restore_visible() == 1
        first = t.receive(["q"], timeout=1)
        assert first is not None and first.frame.headers["id"] == "once"
        first.ack()
        assert t.receive(["q"], timeout=0.2) is None
        assert held_keys(client) == set()


def test_purge_removes_held_messages_and_their_tokens_counting_each_once(
    redis_url: str, client: redis.Redis
) -> None:
    with RedisTransport(redis_url, delay_mode="native", visibility_timeout=2,
                        restore_interval=3600) as t:
        due_at = later(0.3)
        t.publish(frame(b"restored"), Route("q"), not_before=due_at)
        t.publish(frame(b"held"), Route("q"), not_before=later(600))
        t.publish(frame(b"other"), Route("elsewhere"), not_before=later(600))
        sleep_until(due_at)
        assert t.restore_visible() == 1  # now in the list, its member stale
        assert t.purge("q") == 2
        assert client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
        assert t.size("elsewhere") == 1 and t.size("q") == 0


def test_queue_stats_count_a_held_message_as_scheduled_not_in_flight(
    redis_url: str, client: redis.Redis
) -> None:
    with RedisTransport(redis_url, delay_mode="native") as t:
        t.publish(frame(b"held"), Route("q"), not_before=later(600))
        t.publish(frame(b"taken"), Route("q"))
        taken = t.receive(["q"], timeout=1)
        assert taken is not None
        assert client.hlen("unacked") == 2  # the delivery and the held message's token
        [stats] = t.queue_stats(["q"])
        assert (stats.ready, stats.scheduled, stats.in_flight) == (0, 1, 1)
        taken.ack()


def test_entries_held_before_tokens_existed_still_move(
    redis_url: str, client: redis.Redis
) -> None:
    """``[list, queue, entry]`` without the token flag: pushed unconditionally, by
    ``DUE`` and by a consumer's ``POP``."""
    with RedisTransport(redis_url, delay_mode="native") as t:
        t.publish(frame(b"a"), Route("a"), not_before=later(60))
        t.publish(frame(b"b"), Route("b"), not_before=later(60))
        for member, stored in client.hgetall("_wiretask.delayed.messages").items():
            client.hset("_wiretask.delayed.messages", member,
                        json.dumps(json.loads(stored)[:3]))
            client.zadd("_wiretask.delayed", {member: time.time() - 1})
            queue = json.loads(stored)[1]
            client.zadd(f"_wiretask.delayed.queue.{queue}", {member: time.time() - 1})
        client.delete("unacked", "unacked_index")
        delivery = t.receive(["a"], timeout=1)
        assert delivery is not None and delivery.frame.headers["id"] == "a"
        delivery.ack()
        assert t.due() == 1 and client.llen("b") == 1


def test_expires_before_the_eta_still_waits_for_the_eta(
    redis_url: str, client: redis.Redis
) -> None:
    """The due time is the eta, as a Celery worker holds such a message until its eta
    and then revokes it (TRANSPORTS.md §1.5): nothing is dropped broker-side."""
    app = App("a", broker=f"{redis_url}?delay_mode=native", backend=None)
    try:
        sent = app.send_task("t.x", countdown=30, expires=5)
        [(member, due)] = client.zrange("_wiretask.delayed", 0, -1, withscores=True)
        stored = json.loads(client.hget("_wiretask.delayed.messages", member) or b"")
        headers = json.loads(stored[2])["headers"]
        assert headers["id"] == sent.id
        assert due == pytest.approx(datetime.fromisoformat(headers["eta"]).timestamp())
        assert datetime.fromisoformat(headers["expires"]).timestamp() < due - 20
    finally:
        app.close()
