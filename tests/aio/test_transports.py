"""The asyncio transport contract: the sync one's producing half, awaited, with the same
checks (the same functions), the same bytes on the wire, and a twin for every transport."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from amqp_support import unique
from wiretask.errors import ConnectionLost, ValidationError
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.testing import closed_port
from wiretask.transports.aio import (
    AsyncQueueBinding,
    InlineTransport,
    ThreadedTransport,
)
from wiretask.transports.amqp import AMQPTransport
from wiretask.transports.amqp_aio import AsyncAMQPTransport
from wiretask.transports.base import Transport
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.redis.aio import AsyncRedisTransport
from wiretask.transports.sqlite import SQLiteTransport

pytestmark = pytest.mark.asyncio


def frame(body: bytes = b"{}", **properties: Any) -> Frame:
    return Frame(body=body, content_type="application/json", content_encoding="utf-8",
                 headers={"id": uuid.uuid4().hex, "task": "t"},
                 properties={"delivery_mode": 2, **properties})


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
def sync_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Transport:
    if request.param == "memory":
        return MemoryTransport(uuid.uuid4().hex)
    if request.param == "sqlite":
        return SQLiteTransport.from_url(f"sqlite:///{tmp_path / 'b.db'}")
    if request.param == "amqp":
        # Delayed messages through the ladder, as the Redis one holds them broker-side.
        return AMQPTransport(request.getfixturevalue("amqp_url"), delay_mode="ladder")
    # Held broker-side whatever the movers (``auto`` is the next test's).
    return RedisTransport(request.getfixturevalue("redis_url") + "?delay_mode=native")


def reader_of(transport: Transport, request: pytest.FixtureRequest) -> Transport:
    """A second sync transport on the same broker, to read what a twin sent."""
    if isinstance(transport, RedisTransport):
        return transport
    if isinstance(transport, AMQPTransport):  # its url shows no password
        return AMQPTransport(request.getfixturevalue("amqp_url"))
    return type(transport).from_url(transport.url)


async def test_the_redis_twin_asks_the_delay_mode_as_the_sync_transport(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    sync = RedisTransport(redis_url)  # delay_mode="auto": hold while a mover is alive
    twin = sync.async_twin()
    soon = datetime.now(UTC) + timedelta(seconds=30)
    try:
        for transport in (sync, twin):  # no mover: pushed at once, its eta header holds it
            result = transport.publish(frame(), Route("q"), not_before=soon)
            if asyncio.iscoroutine(result):
                await result
        assert client.llen("q") == 2 and client.zcard("_wiretask.delayed") == 0
        # A mover's heartbeat: both now hold such messages broker-side.
        client.zadd("_wiretask.movers", {"elsewhere": time.time() + 60})
        await asyncio.sleep(1.1)  # past the cached answer of the publishes above
        sync.publish(frame(), Route("q"), not_before=soon)
        await twin.publish(frame(), Route("q"), not_before=soon)
        assert client.llen("q") == 2 and client.zcard("_wiretask.delayed") == 2
    finally:
        await twin.close()
        sync.close()
        client.close()


async def test_every_transport_has_a_twin_that_publishes_what_the_sync_one_reads(
    sync_transport: Transport, request: pytest.FixtureRequest,
) -> None:
    twin = sync_transport.async_twin()
    expected = {MemoryTransport: InlineTransport, SQLiteTransport: ThreadedTransport,
                RedisTransport: AsyncRedisTransport,
                AMQPTransport: AsyncAMQPTransport}[type(sync_transport)]
    assert type(twin) is expected
    assert twin.capabilities == sync_transport.capabilities
    reader = reader_of(sync_transport, request)
    queue = unique("twin")
    async with twin:
        await twin.declare_queue(queue)
        sent = frame(b'{"n": 1}', priority=3)
        await twin.publish(sent, Route(queue))
        await twin.publish_many([Outgoing(frame(b'{"n": 2}'), Route(queue)),
                                 Outgoing(frame(b'{"n": 3}'), Route(queue))])
        later = datetime.now(UTC) + timedelta(seconds=0.3)
        await twin.publish(frame(b'{"n": 4}'), Route(queue), not_before=later)
    bodies = []
    for _ in range(4):
        delivery = await asyncio.to_thread(reader.receive, [queue], timeout=5)
        assert delivery is not None
        bodies.append(delivery.frame.body)
        assert delivery.frame.headers["task"] == "t"
        delivery.ack()
    assert datetime.now(UTC) >= later
    assert sorted(bodies) == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}', b'{"n": 4}']
    reader.close()
    sync_transport.close()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda t: t.publish("not a frame", Route("q")), "frame"),
        (lambda t: t.publish(frame(), "q"), "route"),
        (lambda t: t.publish(frame(), Route("")), "queue"),
        (lambda t: t.publish(frame(), Route("q"), not_before=datetime(2030, 1, 1)),
         "not_before"),
        (lambda t: t.publish(frame(priority="high"), Route("q")), "priority"),
        (lambda t: t.publish_many([frame()]), "messages"),
        (lambda t: t.declare_queue(""), "queue"),
    ],
)
async def test_the_twin_refuses_what_the_sync_transport_refuses(
    sync_transport: Transport, call: Any, field: str
) -> None:
    with pytest.raises(ValidationError) as sync_error:
        call(sync_transport)  # the sync method raises: nothing to await
    twin = sync_transport.async_twin()
    with pytest.raises(ValidationError) as async_error:
        await call(twin)
    assert sync_error.value.field == async_error.value.field == field
    assert str(sync_error.value) == str(async_error.value)
    await twin.close()
    sync_transport.close()


async def test_redis_twin_writes_the_same_entries_as_the_sync_transport(redis_url: str) -> None:
    sync = RedisTransport(redis_url)
    twin = sync.async_twin()
    assert isinstance(twin, AsyncQueueBinding)
    client = redis.Redis.from_url(redis_url)
    try:
        same = frame(b'{"same": true}')
        sync.publish(same, Route("celery"))
        await twin.publish(same, Route("celery"))
        first, second = client.lrange("celery", 0, -1)
        # Identical Kombu envelopes but for the delivery tag each publish gets.
        tag = b'"delivery_tag": "'
        strip = [entry[: entry.index(tag)] for entry in (first, second)]
        assert strip[0] == strip[1]
        await twin.bind_queue("jobs", "tasks", "jobs.#", exchange_type="topic")
        sync.bind_queue("jobs", "sync-tasks", "jobs.#", exchange_type="topic")
        member = client.smembers("_kombu.binding.sync-tasks")
        assert len(member) == 1
        assert client.smembers("_kombu.binding.tasks") == member
        assert client.smembers("_kombu.binding_permanent.tasks") == member
        markers = client.keys("_wiretask.published.*")
        assert len(markers) == 2  # one per publish attempt, both transports
    finally:
        await twin.close()
        sync.close()
        client.close()


async def test_redis_twin_translates_a_refused_connection() -> None:
    password = "s3cret-" + uuid.uuid4().hex[:6]
    twin = RedisTransport(
        f"redis://:{password}@127.0.0.1:{closed_port()}/0?socket_connect_timeout=1"
    ).async_twin()
    with pytest.raises(ConnectionLost) as info:
        await twin.publish(frame(), Route("q"))
    assert password not in str(info.value)
    assert info.value.__cause__ is not None
    with pytest.raises(ConnectionLost):
        await twin.connect()
    await twin.close()


async def test_a_threaded_twin_runs_the_hooks_off_the_loop(tmp_path: Path) -> None:
    sync = SQLiteTransport.from_url(f"sqlite:///{tmp_path / 'b.db'}")
    twin = sync.async_twin()
    assert isinstance(twin, ThreadedTransport)
    threads: list[str] = []
    publish = sync._publish

    def recording(messages: Any) -> None:
        import threading  # noqa: PLC0415

        threads.append(threading.current_thread().name)
        publish(messages)

    sync._publish = recording  # type: ignore[method-assign]
    await twin.publish(frame(), Route("q"))
    assert threads and threads[0].startswith("wiretask-aio-SQLiteTransport")
    assert sync.size("q") == 1
    await twin.close()
