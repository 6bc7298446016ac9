"""Cancellation and timeouts are safe: a cancelled ``await`` at any point of a publish
leaves the whole batch or nothing, never a broken connection, and a retry of the same
frames after a cancellation that came after the request went out does not publish twice
(the publish markers); the retry policy's deadline holds, cutting an attempt short; a
cancelled wait leaves no subscription behind, on every backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from wiretask import errors
from wiretask.app import App
from wiretask.protocol import states
from wiretask.protocol.frame import Frame, Route
from wiretask.protocol.states import make_meta
from wiretask.retry import RetryPolicy, acall_with_retry
from wiretask.transports.redis import RedisTransport

from .conftest import make_app

BATCH = 10


async def cancel_at_every_step(
    start: Callable[[], Awaitable[Any]], after_cancel: Callable[[], Awaitable[None]],
    *, limit: int = 5000,
) -> int:
    """Run ``start()`` and cancel it after 0, 1, 2, ... turns of the event loop, calling
    ``after_cancel()`` after each cancellation, until one run finishes before its
    cancellation; return how many runs were cancelled."""
    for step in range(limit):
        running = asyncio.ensure_future(start())
        for _ in range(step):
            await asyncio.sleep(0)
            if running.done():
                break
        if running.done():
            await running
            return step
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await after_cancel()
    raise AssertionError(f"still not done after {limit} turns of the loop")


@pytest.mark.asyncio
async def test_a_cancelled_batch_publish_lands_whole_or_not_at_all(redis_url: str) -> None:
    app = make_app(broker=redis_url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    client = redis.Redis.from_url(redis_url)
    landed: list[int] = []

    async def publish() -> None:
        await add.aapply_many([(n, n) for n in range(BATCH)])

    async def whole_or_nothing() -> None:
        await asyncio.sleep(0.01)  # a request already written lands meanwhile
        size = client.llen("celery")
        assert size % BATCH == 0, f"{size} messages: part of a batch landed"
        landed.append(size)

    try:
        cancelled = await cancel_at_every_step(publish, whole_or_nothing)
        assert cancelled >= 3  # the connect, the declare, the publish, at least
        # Each cancelled batch landed whole or not at all; the last one landed.
        assert client.llen("celery") % BATCH == 0
        assert client.llen("celery") >= BATCH
        # The connection carries on: replies still match their requests.
        result = await add.adelay(1, 2)
        assert client.llen("celery") % BATCH == 1
        assert result.id.encode() in b"".join(client.lrange("celery", 0, 0))
        commands = app.async_transport._commands  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        assert commands._pipe.waiting == type(commands._pipe.waiting)()  # nothing pending
    finally:
        await app.aclose()
        app.close()
        client.close()


@pytest.mark.asyncio
async def test_a_retry_after_a_cancelled_publish_does_not_duplicate(redis_url: str) -> None:
    twin = RedisTransport(redis_url).async_twin()
    client = redis.Redis.from_url(redis_url)
    frame = Frame(body=b"{}", content_type="application/json", content_encoding="utf-8",
                  headers={"id": uuid.uuid4().hex, "task": "t"}, properties={})
    try:
        await twin.connect()
        sending = asyncio.ensure_future(twin.publish(frame, Route("q")))
        while not twin._commands._pipe.waiting:  # the request is written ...
            await asyncio.sleep(0)
        sending.cancel()  # ... and its reply not read yet: the outcome is unknown
        with pytest.raises(asyncio.CancelledError):
            await sending
        await asyncio.sleep(0.05)
        assert client.llen("q") == 1  # it did land
        # The retry driver publishes the same frame again: the marker says it landed.
        await twin.publish(frame, Route("q"))
        assert client.llen("q") == 1
        # A new frame is a new message.
        await twin.publish(Frame(body=b"{}", content_type="application/json",
                                 content_encoding="utf-8", headers=dict(frame.headers),
                                 properties={}), Route("q"))
        assert client.llen("q") == 2
    finally:
        await twin.close()
        client.close()


@pytest.mark.asyncio
async def test_the_policy_deadline_cuts_a_slow_attempt_short() -> None:
    calls = 0

    async def hangs() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(errors.PublishError, match=r"deadline of 0\.2 s") as info:
        await acall_with_retry(hangs, RetryPolicy(timeout=0.2), task_id="t-1")
    assert loop.time() - began < 1
    assert calls == 1 and info.value.attempts == 1 and info.value.task_id == "t-1"
    assert isinstance(info.value.cause, TimeoutError)

    async def fails() -> None:
        raise errors.ConnectionLost("down")

    with pytest.raises(errors.PublishError, match="deadline") as info:
        await acall_with_retry(fails, RetryPolicy(max_retries=None, timeout=0.3,
                                                  interval_start=0.1, interval_step=0))
    assert isinstance(info.value.cause, errors.ConnectionLost)
    assert loop.time() - began < 2

    # The caller's own timeout is not the policy's: it propagates as such.
    with pytest.raises(TimeoutError) as outer:
        async with asyncio.timeout(0.1):
            await acall_with_retry(hangs, RetryPolicy(timeout=5))
    assert not isinstance(outer.value, errors.PublishError)


@pytest.mark.asyncio
async def test_the_publish_deadline_holds_against_an_unreachable_broker() -> None:
    from wiretask.testing import closed_port  # noqa: PLC0415

    app = make_app(broker=f"redis://127.0.0.1:{closed_port()}/0")
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        with pytest.raises(errors.PublishError) as info:
            await app.asend_task("t", retry_policy={"max_retries": None, "timeout": 0.5})
        assert isinstance(info.value.cause, errors.ConnectionLost)
        assert loop.time() - began < 2
    finally:
        await app.aclose()
        app.close()


@pytest.mark.asyncio
async def test_a_cancelled_wait_leaves_no_subscription(aio_app: App) -> None:
    aio_app.backend.store("t-w", make_meta("t-w", states.STARTED, None))

    async def wait() -> None:
        await aio_app.AsyncResult("t-w").aget(timeout=10)

    async def nothing_left() -> None:
        await asyncio.sleep(0)
        assert _open_subscriptions(aio_app) == 0

    # The wait never finishes by itself (the task stays STARTED): cancel it at each of
    # its first 200 steps.
    for step in range(200):
        running = asyncio.ensure_future(wait())
        for _ in range(step):
            await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await nothing_left()
    aio_app.backend.store("t-w", make_meta("t-w", states.SUCCESS, "done"))
    assert await aio_app.AsyncResult("t-w").aget(timeout=5) == "done"


def _open_subscriptions(app: App) -> int:
    """Subscriptions the app's asyncio backend still holds open, however it keeps them."""
    backend: Any = app.async_backend
    inner = getattr(backend, "backend", None)
    if hasattr(backend, "subscriber"):  # Redis: channels on the shared connection
        return len(backend.subscriber._listeners)
    if inner is not None and hasattr(inner, "_store"):  # memory: the store's listeners
        return len(inner._store.listeners)
    if inner is not None and hasattr(inner, "_tasks"):  # rpc://: the client's table
        with inner._lock:
            return sum(len(record.subscriptions) for record in inner._tasks.values())
    return len(inner._notifier.watchers)  # SQLite: the notifier's watchers
