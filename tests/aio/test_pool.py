"""The asyncio pool (``--pool asyncio``): ``async def`` tasks many in flight on one event
loop, with the time limits, retries, callbacks and result storage of the other pools;
and ``async def`` tasks on the other pools (run with ``asyncio.run``, never a
coroutine object as the result). Sync tasks on the asyncio pool are covered by the
worker suite's ``BOTH_POOLS`` tests, which run on it too."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from wiretask import errors
from wiretask.app import App, Task
from wiretask.protocol import states
from wiretask.transports import memory
from wiretask.worker import Worker


@pytest.fixture
def app() -> Iterator[App]:
    name = uuid.uuid4().hex
    made = App("pool", broker=f"memory://{name}", backend=f"memory://{name}",
               set_as_current=False)
    yield made
    made.close()
    memory.reset(name)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop(timeout=5)


def start(workers: list[Worker], app: App, **options: Any) -> Worker:
    options.setdefault("pool", "asyncio")
    worker = Worker(app, **options)
    worker.start()
    workers.append(worker)
    return worker


def test_many_tasks_in_flight_on_one_loop_bounded_by_concurrency(
    app: App, workers: list[Worker]
) -> None:
    running = 0
    most = 0
    threads: set[str] = set()
    lock = threading.Lock()

    @app.task
    async def nap(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.current_thread().name)
        await asyncio.sleep(0.3)
        with lock:
            running -= 1
        return n

    start(workers, app, concurrency=40)
    began = time.monotonic()
    results = [nap.delay(n) for n in range(80)]
    assert [r.get(timeout=20) for r in results] == list(range(80))
    took = time.monotonic() - began
    assert most == 40  # never more than concurrency at once, and that many
    assert len(threads) == 1  # one event loop thread
    assert took < 5  # 80 x 0.3 s in two waves, not 24 s one after the other


def test_the_soft_limit_is_raised_inside_the_coroutine(app: App, workers: list[Worker]) -> None:
    @app.task(soft_time_limit=0.2)
    async def tidy() -> str:
        try:
            await asyncio.sleep(10)
        except errors.SoftTimeLimitExceeded:
            await asyncio.sleep(0.01)  # it may still await after catching it
            return "cleaned up"
        return "not reached"

    @app.task(soft_time_limit=0.2)
    async def careless() -> None:
        await asyncio.sleep(10)

    start(workers, app, concurrency=4)
    assert tidy.delay().get(timeout=5) == "cleaned up"
    with pytest.raises(errors.SoftTimeLimitExceeded):
        careless.delay().get(timeout=5)


def test_the_hard_limit_records_the_failure_calls_errbacks_and_frees_the_slot(
    app: App, workers: list[Worker]
) -> None:
    seen: list[str] = []

    @app.task(time_limit=0.3)
    async def stuck() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            seen.append("cancelled")

    @app.task
    def report(task_id: str) -> None:
        seen.append(f"errback {task_id}")

    @app.task
    async def quick() -> str:
        return "fine"

    start(workers, app, concurrency=1)
    result = stuck.apply_async(link_error=report.s())
    with pytest.raises(errors.TimeLimitExceeded):
        result.get(timeout=5)
    assert quick.delay().get(timeout=5) == "fine"  # the one slot is free again
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == sorted(["cancelled", f"errback {result.id}"])
    assert app.transport.size("celery") == 0  # acked, not redelivered


def test_retries_callbacks_and_progress_states(app: App, workers: list[Worker]) -> None:
    @app.task(bind=True, max_retries=3)
    async def flaky(self: Task[Any, Any], until: int) -> int:
        await self.aupdate_state(state="PROGRESS", meta={"try": self.request.retries})
        if self.request.retries < until:
            raise self.retry(countdown=0.05)
        return self.request.retries

    @app.task(autoretry_for=(KeyError,), max_retries=2, retry_kwargs={"countdown": 0.05})
    async def lookup(table: dict[str, int], key: str) -> int:
        await asyncio.sleep(0)
        return table[key]

    start(workers, app, concurrency=4)
    result = flaky.apply_async((2,))
    statuses = [meta["status"] for meta in _states(result)]
    assert statuses[-1] == states.SUCCESS and result.get(timeout=5) == 2
    assert "PROGRESS" in statuses and states.RETRY in statuses
    with pytest.raises(KeyError):
        lookup.delay({}, "missing").get(timeout=5)
    assert lookup.delay({"a": 1}, "a").get(timeout=5) == 1


def _states(result: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        seen = [meta async for meta in result.astates(timeout=10)]
        await result.app.aclose()
        return seen

    return asyncio.run(collect())


def test_a_callback_gets_the_async_result(app: App, workers: list[Worker]) -> None:
    got: list[int] = []

    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    @app.task
    def keep(x: int) -> None:
        got.append(x)

    start(workers, app, concurrency=4)
    assert double.apply_async((21,), link=keep.s()).get(timeout=5) == 42
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [42]


def test_an_async_task_awaits_others_on_the_pools_loop(app: App, workers: list[Worker]) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def fan_out(n: int) -> int:
        sent = [await add.adelay(i, i) for i in range(n)]
        return sum([await r.aget(timeout=5, disable_sync_subtasks=False) for r in sent])

    @app.task
    async def impatient() -> int:
        return int(await (await add.adelay(1, 1)).aget(timeout=5))

    start(workers, app, concurrency=8)
    assert fan_out.delay(5).get(timeout=10) == 20
    with pytest.raises(errors.WouldBlock):
        impatient.delay().get(timeout=5)


def test_stopping_requeues_a_running_async_task(app: App) -> None:
    began = threading.Event()

    @app.task
    async def long() -> None:
        began.set()
        await asyncio.sleep(30)

    worker = Worker(app, pool="asyncio", concurrency=2)
    worker.start()
    result = long.delay()
    assert began.wait(5)
    stopped = time.monotonic()
    worker.stop(timeout=0.5)
    assert time.monotonic() - stopped < 5
    assert app.transport.size("celery") == 1  # given back, to run again
    assert result.state == states.PENDING


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_other_pools_run_an_async_task_to_its_end(app: App, pool: str) -> None:
    @app.task
    async def later(x: int) -> int:
        await asyncio.sleep(0.01)
        return x + 1

    @app.task(soft_time_limit=0.2)
    async def overdue() -> None:
        await asyncio.sleep(10)

    worker = Worker(app, pool=pool, **({} if pool == "solo" else {"concurrency": 2}))
    worker.start()
    try:
        assert later.delay(41).get(timeout=5) == 42  # the value, not a coroutine object
        with pytest.raises(errors.SoftTimeLimitExceeded):
            overdue.delay().get(timeout=5)
    finally:
        worker.stop(timeout=5)


def test_an_async_task_runs_eagerly_too(app: App) -> None:
    app.conf.task_always_eager = True

    @app.task
    async def later(x: int) -> int:
        await asyncio.sleep(0)
        return x * 3

    assert later.delay(2).get() == 6
    assert later.apply((3,)).get() == 9

    async def from_a_loop() -> int:
        # Under task_always_eager the asyncio API runs the task in a thread (its
        # asyncio.run cannot run on this loop).
        return int((await later.adelay(4)).get())

    assert asyncio.run(from_a_loop()) == 12

    async def blocking() -> None:
        later.apply((1,), throw=True)  # asyncio.run cannot nest: refused, with the way out

    with pytest.raises(errors.ImproperlyConfigured, match="adelay"):
        asyncio.run(blocking())
