"""The AMQP transport's asyncio twin (aiormq) against a real RabbitMQ: the same bytes,
declarations, confirms and refusals as the sync transport, errors translated alike, a
cancelled publish whole or not at all, and the asyncio calling API on ``amqp://``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import amqp
import pytest
import pytest_asyncio

from amqp_support import celery_like_frame, raw_channel, unique
from conftest import free_port
from wiretask.errors import ConnectionLost, EncodeError, TransportError
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.aio import AsyncQueueBinding
from wiretask.transports.amqp import AMQPTransport
from wiretask.transports.amqp_aio import AsyncAMQPTransport

from .conftest import make_app
from .test_cancellation import cancel_at_every_step

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture
def sync(amqp_url: str) -> Iterator[AMQPTransport]:
    transport = AMQPTransport(amqp_url)
    yield transport
    transport.close()


@pytest_asyncio.fixture
async def twin(amqp_url: str) -> AsyncIterator[AsyncAMQPTransport]:
    made = AMQPTransport(amqp_url).async_twin()
    assert isinstance(made, AsyncAMQPTransport)
    yield made
    await made.close()


def frame(body: bytes = b"x", **headers: Any) -> Frame:
    return Frame(body=body, content_type="application/octet-stream", content_encoding="binary",
                 headers={"id": body.decode(errors="replace"), **headers})


def get_raw(url: str, queue: str) -> amqp.Message:
    with raw_channel(url) as channel:
        channel.auto_decode = False
        message = channel.basic_get(queue, no_ack=True)
        assert message is not None
        return message


def with_password(url: str, password: str) -> str:
    return url.replace("guest:guest@", f"guest:{password}@")


async def test_the_twin_publishes_the_bytes_the_sync_transport_publishes(
    sync: AMQPTransport, twin: AsyncAMQPTransport, amqp_url: str,
) -> None:
    q = unique("bytes")
    sent = celery_like_frame()
    sync.publish(sent, Route(q))
    await twin.publish(sent, Route(q))
    first, second = get_raw(amqp_url, q), get_raw(amqp_url, q)
    assert first.body == second.body == sent.body
    # Kombu's properties and header table, written alike (no message_id added).
    assert first.properties == second.properties
    assert "message_id" not in second.properties
    assert second.properties["application_headers"]["big"] == 2**40


async def test_the_twin_and_the_sync_transport_declare_alike(
    amqp_url: str,
) -> None:
    q = unique("declared")
    options = {"max_priority": 10, "delay_mode": "ladder"}
    twin = AMQPTransport(amqp_url, **options).async_twin()
    sync = AMQPTransport(amqp_url, **options)
    try:
        await twin.declare_queue(q)
        sync.declare_queue(q)  # the same arguments: no PRECONDITION_FAILED
        other = AMQPTransport(amqp_url).async_twin()  # no x-max-priority
        with pytest.raises(TransportError, match="PRECONDITION_FAILED") as raised:
            await other.declare_queue(q)
        assert not isinstance(raised.value, ConnectionLost)
        await other.publish(frame(b"after"), Route(unique("other")))  # still usable
        await other.close()
    finally:
        await twin.close()
        sync.close()


async def test_a_nacked_message_is_an_error_naming_it(amqp_url: str) -> None:
    q = unique("nack")
    sync = AMQPTransport(amqp_url, queue_arguments={
        q: {"x-max-length": 1, "x-overflow": "reject-publish"}})
    twin = sync.async_twin()
    try:
        await twin.publish(frame(b"first"), Route(q))
        with pytest.raises(TransportError, match=r"refused \(nacked\).*'second'") as raised:
            await twin.publish_many([Outgoing(frame(b"second"), Route(q)),
                                     Outgoing(frame(b"third"), Route(q))])
        assert not isinstance(raised.value, ConnectionLost)
        assert "2 message(s) refused" in str(raised.value)
        await twin.publish(frame(b"fourth"), Route(unique("other")))  # still usable
    finally:
        await twin.close()
        reader = AMQPTransport(amqp_url)
        assert reader.size(q) == 1
        reader.purge(q)
        reader.close()


async def test_an_unroutable_message_is_an_error_naming_it(
    twin: AsyncAMQPTransport, amqp_url: str,
) -> None:
    q = unique("gone")
    await twin.publish(frame(b"one"), Route(q))
    with raw_channel(amqp_url) as channel:  # an administrator deletes the queue
        channel.queue_delete(q)
    with pytest.raises(TransportError, match=r"unroutable.*NO_ROUTE") as raised:
        await twin.publish_many([Outgoing(frame(b"two"), Route(q)),
                                 Outgoing(frame(b"ok"), Route(unique("there")))])
    assert "task two" in str(raised.value)
    assert "1 unroutable" in str(raised.value)
    assert not isinstance(raised.value, ConnectionLost)
    await twin.declare_queue(q)  # on a new connection it is declared again
    await twin.close()
    await twin.publish(frame(b"three"), Route(q))
    assert get_raw(amqp_url, q).body == b"three"


async def test_an_unencodable_message_stops_the_whole_batch(
    twin: AsyncAMQPTransport, sync: AMQPTransport,
) -> None:
    q = unique("encode")
    with pytest.raises(EncodeError) as raised:
        await twin.publish_many([Outgoing(frame(b"ok"), Route(q)),
                                 Outgoing(frame(b"bad", when={"a", "set"}), Route(q))])
    assert raised.value.field == "headers['when']"
    assert sync.size(q) == 0


async def test_errors_are_translated_as_the_sync_transport_translates_them(
    amqp_url: str,
) -> None:
    refused = AMQPTransport(with_password(amqp_url, "n0t-the-passw0rd")).async_twin()
    with pytest.raises(TransportError) as raised:
        await refused.connect()
    assert not isinstance(raised.value, ConnectionLost)
    assert "n0t-the-passw0rd" not in str(raised.value)
    assert raised.value.url == "amqp://guest:**@" + amqp_url.split("@", 1)[1]
    await refused.close()
    away = AMQPTransport(f"amqp://guest:s3cret@127.0.0.1:{free_port()}//",
                         connect_timeout=1).async_twin()
    with pytest.raises(ConnectionLost) as lost:
        await away.publish(frame(), Route("anything"))
    assert "s3cret" not in str(lost.value)
    assert isinstance(lost.value.__cause__, OSError)
    await away.close()


async def test_bind_queue_routes_a_named_exchange(
    twin: AsyncAMQPTransport, amqp_url: str,
) -> None:
    assert isinstance(twin, AsyncQueueBinding)
    q, exchange = unique("bound"), unique("topic")
    await twin.bind_queue(q, exchange, "jobs.#", exchange_type="topic")
    await twin.publish(frame(b"routed"), Route(q, exchange=exchange, routing_key="jobs.a"))
    assert get_raw(amqp_url, q).body == b"routed"


async def test_a_lost_connection_is_opened_again(
    twin: AsyncAMQPTransport, amqp_url: str,
) -> None:
    q = unique("again")
    await twin.publish(frame(b"before"), Route(q))
    connection = twin._connection
    assert connection is not None
    await connection.close()  # what a broker restart does to it
    await twin.publish(frame(b"after"), Route(q))
    assert {get_raw(amqp_url, q).body, get_raw(amqp_url, q).body} == {b"before", b"after"}


async def test_a_cancelled_batch_publish_lands_whole_or_not_at_all(amqp_url: str) -> None:
    q = unique("cancel")
    app = make_app(broker=amqp_url, task_default_queue=q)
    batch = 10

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    reader = AMQPTransport(amqp_url)
    landed: list[int] = []

    async def publish() -> None:
        await add.aapply_many([(n, n) for n in range(batch)])

    async def whole_or_nothing() -> None:
        await asyncio.sleep(0.05)  # a batch already queued is written meanwhile
        size = reader.size(q) if landed or reader_declared(q) else 0
        assert size % batch == 0, f"{size} messages: part of a batch landed"
        landed.append(size)

    def reader_declared(queue: str) -> bool:
        with raw_channel(amqp_url) as channel:
            try:
                channel.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                return False
        return True

    try:
        cancelled = await cancel_at_every_step(publish, whole_or_nothing)
        assert cancelled >= 3  # connecting, declaring, publishing at least
        assert reader.size(q) % batch == 0
        assert reader.size(q) >= batch
        result = await add.adelay(1, 2)  # the connection carries on
        assert reader.size(q) % batch == 1
        assert result.id
    finally:
        await app.aclose()
        app.close()
        reader.purge(q)
        reader.close()


async def test_concurrent_publishes_pipeline_and_a_refusal_is_its_batchs(
    twin: AsyncAMQPTransport, amqp_url: str, sync: AMQPTransport,
) -> None:
    q, gone = unique("many"), unique("gone")
    await twin.publish(frame(b"declared"), Route(gone))
    with raw_channel(amqp_url) as channel:
        channel.queue_delete(gone)

    async def one(n: int) -> str | None:
        route = Route(gone) if n == 17 else Route(q)
        try:
            await twin.publish(frame(f"m{n}".encode()), route)
        except TransportError as exc:
            return str(exc)
        return None

    outcomes = await asyncio.gather(*(one(n) for n in range(50)))
    refusals = {n: text for n, text in enumerate(outcomes) if text is not None}
    assert list(refusals) == [17]
    assert "task m17" in refusals[17] and "NO_ROUTE" in refusals[17]
    assert sync.size(q) == 49
    sync.purge(q)
