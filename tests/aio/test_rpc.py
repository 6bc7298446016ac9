"""``rpc://`` on asyncio against a real RabbitMQ, with wiretask's worker: the reply queue
consumed on the event loop (``AsyncRPCBackend``), ``aget``/``astates`` with the sync
backend's rules, one table shared with the sync API, cancelled waits leaving nothing
behind, and waits that could never end refused."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from interop.amqp_interop import virtual_host
from wiretask.app import App, Task
from wiretask.errors import ValidationError
from wiretask.protocol import states
from wiretask.results.rpc import RPCBackend
from wiretask.results.rpc_aio import AsyncRPCBackend
from wiretask.worker import Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

WAIT = 20.0


@pytest.fixture(scope="module")
def vhost(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "rpc-aio") as url:
        yield url


@pytest_asyncio.fixture
async def app(vhost: str) -> AsyncIterator[App]:
    app = App(f"rpc-aio-{uuid.uuid4().hex[:6]}", broker=vhost, backend="rpc://",
              task_track_started=True, task_default_queue=f"rpc-aio-{uuid.uuid4().hex[:8]}",
              set_as_current=False)

    @app.task(name="rpc.add", bind=True)
    def add(self: Task[Any, Any], x: int, y: int) -> int:
        self.update_state(state="PROGRESS", meta={"done": 1})
        return x + y

    @app.task(name="rpc.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    yield app
    await app.aclose()
    app.close()


@pytest.fixture
def worker(app: App) -> Iterator[Worker]:
    with Worker(app, concurrency=2, shutdown_timeout=5) as running:
        yield running


def subscriptions(app: App) -> int:
    backend = app.backend
    assert isinstance(backend, RPCBackend)
    with backend._lock:
        return sum(len(record.subscriptions) for record in backend._tasks.values())


async def test_aget_and_astates_read_the_reply_queue_on_the_loop(
    app: App, worker: Worker,
) -> None:
    assert isinstance(app.async_backend, AsyncRPCBackend)
    result = await app.tasks["rpc.add"].adelay(2, 3)
    assert await result.aget(timeout=WAIT) == 5
    seen = [meta["status"] async for meta in result.astates(timeout=WAIT)]
    assert seen[-1] == states.SUCCESS
    # The whole stream, each state once and in order, for a task not read yet.
    streamed = await app.tasks["rpc.add"].adelay(1, 1)
    statuses = [meta["status"] async for meta in streamed.astates(timeout=WAIT)]
    assert statuses == [states.STARTED, "PROGRESS", states.SUCCESS]
    failed = await app.tasks["rpc.fail"].adelay("no")
    with pytest.raises(ValueError, match="no"):
        await failed.aget(timeout=WAIT)
    assert subscriptions(app) == 0


async def test_the_sync_and_the_asyncio_api_share_what_the_client_received(
    app: App, worker: Worker,
) -> None:
    sent_async = await app.tasks["rpc.add"].adelay(1, 2)
    sent_sync = app.tasks["rpc.add"].delay(3, 4)
    assert await sent_sync.aget(timeout=WAIT) == 7  # sent by the sync API
    assert await asyncio.to_thread(sent_async.get, timeout=WAIT) == 3
    assert await sent_async.aget(timeout=WAIT) == 3  # read again: kept


async def test_a_wait_that_could_never_end_is_refused(app: App) -> None:
    with pytest.raises(ValidationError, match="only to the app that sent it"):
        await app.AsyncResult(str(uuid.uuid4())).aget(timeout=1)
    with pytest.raises(ValidationError, match="only to the app that sent it"):
        async for _ in app.AsyncResult(str(uuid.uuid4())).astates(timeout=1):
            pass


async def test_a_cancelled_wait_leaves_no_subscription(app: App, worker: Worker) -> None:
    # Sent, and not run before the waits are cancelled: the worker does not consume
    # its queue yet (a countdown).
    result = await app.tasks["rpc.add"].aapply_async((5, 5), countdown=2)
    for _ in range(3):
        waiting = asyncio.ensure_future(result.aget(timeout=WAIT))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert subscriptions(app) == 0
    assert await result.aget(timeout=WAIT) == 10
    assert subscriptions(app) == 0


async def test_states_that_arrive_while_nobody_waits_are_filed(
    app: App, worker: Worker,
) -> None:
    result = await app.tasks["rpc.add"].adelay(4, 4)
    backend = app.backend
    assert isinstance(backend, RPCBackend)

    def done() -> bool:
        with backend._lock:
            record = backend._tasks.get(result.id)
            return record is not None and record.latest is not None \
                and record.latest["status"] == states.SUCCESS

    # The twin consumes since the send: the final state is filed without a wait.
    for _ in range(200):
        if done():
            break
        await asyncio.sleep(0.05)
    assert done()
    assert await result.aget(timeout=1) == 8
