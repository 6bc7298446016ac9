"""Awaiting results on every bundled backend: ``aget`` and ``astates`` never miss the
final state, time out naming the last state, and leave no subscription behind when
cancelled; an app works from several event loops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
import redis

from wiretask import errors
from wiretask.app import App
from wiretask.protocol import states
from wiretask.protocol.states import make_meta
from wiretask.results import ReplyRouted
from wiretask.results.exceptions import exception_to_meta
from wiretask.worker import Worker

from .conftest import make_app


def store_later(
    app: App, task_id: str, *metas: dict[str, Any], delay: float = 0.1
) -> threading.Thread:
    """Store ``metas`` from another thread (a worker's), ``delay`` seconds apart. Join it
    before the test ends: the app's backend is closed then."""

    def run() -> None:
        for meta in metas:
            time.sleep(delay)
            app.backend.store(task_id, meta)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def sent_here(app: App, task_id: str) -> None:
    """Make ``task_id`` one this app sent, for a wait that starts before any state is
    stored: rpc:// delivers states only to the app that sent the task (and refuses a
    wait for any other); the other backends need nothing."""
    backend = app.backend
    if isinstance(backend, ReplyRouted):
        backend.track([(task_id, app.oid)])


@pytest.mark.asyncio
async def test_astates_streams_every_change_then_ends(aio_app: App) -> None:
    sent_here(aio_app, "t-stream")
    result = aio_app.AsyncResult("t-stream")
    storing = store_later(
        aio_app, "t-stream", make_meta("t-stream", states.STARTED, {"pid": 1}),
        make_meta("t-stream", "PROGRESS", {"done": 1}), make_meta("t-stream", states.SUCCESS, 42),
    )
    seen = [meta["status"] async for meta in result.astates(timeout=10)]
    storing.join(5)
    assert seen == [states.STARTED, "PROGRESS", states.SUCCESS]


@pytest.mark.asyncio
async def test_a_late_subscriber_gets_the_final_state_first(aio_app: App) -> None:
    aio_app.backend.store("t-late", make_meta("t-late", states.SUCCESS, "done"))
    assert [m["result"] async for m in aio_app.AsyncResult("t-late").astates()] == ["done"]
    seen: list[dict[str, Any]] = []
    assert await aio_app.AsyncResult("t-late").aget(timeout=5, on_message=seen.append) \
        == "done"
    assert [m["status"] for m in seen] == [states.SUCCESS]


@pytest.mark.asyncio
async def test_aget_raises_the_failure_and_times_out_with_the_last_state(aio_app: App) -> None:
    result = aio_app.AsyncResult("t-bad")
    aio_app.backend.store("t-bad", make_meta("t-bad", states.STARTED, None))
    with pytest.raises(errors.TimeoutError, match=r"t-bad.*STARTED") as info:
        await result.aget(timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(errors.TimeoutError, match="STARTED"):
        await result.aget(timeout=0.3, interval=0.05)
    with pytest.raises(errors.TimeoutError, match="STARTED"):
        async for _ in result.astates(timeout=0.3):
            pass
    storing = store_later(aio_app, "t-bad", make_meta(
        "t-bad", states.FAILURE, exception_to_meta(ValueError("no"))))
    with pytest.raises(ValueError, match="no"):
        await result.aget(timeout=5)
    storing.join(5)
    assert isinstance(await result.aget(timeout=5, propagate=False), ValueError)
    assert isinstance(await result.aget(timeout=5, interval=0.01, propagate=False), ValueError)


@pytest.mark.asyncio
async def test_the_loop_keeps_running_while_aget_waits(aio_app: App) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(ticker())
    sent_here(aio_app, "t-wait")
    storing = store_later(aio_app, "t-wait", make_meta("t-wait", states.SUCCESS, 1), delay=0.5)
    assert await aio_app.AsyncResult("t-wait").aget(timeout=5) == 1
    storing.join(5)
    running.cancel()
    assert ticks >= 20  # about 50 in 0.5 s, unless the wait blocked the loop


@pytest.mark.asyncio
async def test_an_async_backend_refuses_what_the_sync_one_refuses(aio_app: App) -> None:
    backend = aio_app.async_backend
    with pytest.raises(errors.ValidationError, match="task_id"):
        await backend.store("a", make_meta("b", states.SUCCESS, 1))
    with pytest.raises(errors.EncodeError):
        await backend.store("a", make_meta("a", states.SUCCESS, object()))
    await backend.store("a", make_meta("a", states.SUCCESS, 1))
    await backend.store("a", make_meta("a", states.FAILURE, None))  # ignored: final
    assert (await backend.get("a") or {})["status"] == states.SUCCESS
    assert aio_app.backend.get("a") == await backend.get("a")
    await backend.forget("a")
    assert await backend.get("a") is None


@pytest.mark.asyncio
async def test_a_cancelled_aget_closes_its_subscription(redis_url: str) -> None:
    app = make_app(backend=redis_url)
    client = redis.Redis.from_url(redis_url)
    channel = "celery-task-meta-t-cancel"
    try:
        for delay in (0, 0.001, 0.005, 0.05, 0.2):  # in subscribe, snapshot, or waiting
            waiter = asyncio.create_task(app.AsyncResult("t-cancel").aget(timeout=10))
            await asyncio.sleep(delay)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await asyncio.sleep(0.05)
            assert client.pubsub_numsub(channel) == [(channel.encode(), 0)]
        # The backend still works, and nothing leaked into it.
        app.backend.store("t-cancel", make_meta("t-cancel", states.SUCCESS, "ok"))
        assert await app.AsyncResult("t-cancel").aget(timeout=5) == "ok"
    finally:
        await app.aclose()
        app.close()
        client.close()


@pytest.mark.asyncio
async def test_breaking_out_of_astates_releases_the_subscription(redis_url: str) -> None:
    app = make_app(backend=redis_url)
    client = redis.Redis.from_url(redis_url)
    channel = "celery-task-meta-t-break"
    try:
        app.backend.store("t-break", make_meta("t-break", states.STARTED, None))
        async with contextlib.aclosing(app.AsyncResult("t-break").astates()) as stream:
            async for meta in stream:
                assert meta["status"] == states.STARTED
                assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]
                break
        assert client.pubsub_numsub(channel) == [(channel.encode(), 0)]
    finally:
        await app.aclose()
        app.close()
        client.close()


def test_one_app_from_several_event_loops(redis_url: str) -> None:
    app = make_app(broker=redis_url, backend=redis_url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(app, concurrency=2)
    worker.start()
    try:
        async def once(n: int) -> int:
            result = await add.adelay(n, n)
            return int(await result.aget(timeout=10))

        # Each asyncio.run is a new loop: the app makes a transport and backend for
        # each, and drops those of a loop closed without aclose().
        assert asyncio.run(once(1)) == 2
        first = next(iter(app._loops))
        assert asyncio.run(once(2)) == 4
        assert first not in app._loops and len(app._loops) == 1  # the closed one dropped
        runner = asyncio.Runner()
        assert runner.run(once(3)) == 6
        runner.run(app.aclose())
        runner.close()
        app.close()  # forgets the closed loops
        assert app._loops == {}
        # Two loops in two threads at once.
        answers: list[int] = []
        threads = [threading.Thread(target=lambda n=n: answers.append(asyncio.run(once(n))))
                   for n in (10, 20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert sorted(answers) == [20, 40]
    finally:
        worker.stop(timeout=5)
        app.close()
