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


class _Threads:
    """Where the parts of a run happen: the thread of every ``Tracer.start``, every
    state stored (by status) and every report to settlement."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, app: App) -> None:
        from wiretask.worker.pools.asyncio import AsyncioPool  # noqa: PLC0415
        from wiretask.worker.tracer import Tracer  # noqa: PLC0415

        self.starts: list[str] = []
        self.stores: list[tuple[str, str]] = []
        self.reports: list[str] = []
        start, report = Tracer.start, AsyncioPool.report
        backend = type(app.backend)
        store = backend.store_reply

        def spy_start(tracer: Tracer, *args: Any, **kwargs: Any) -> Any:
            self.starts.append(threading.current_thread().name)
            return start(tracer, *args, **kwargs)

        def spy_report(pool: AsyncioPool, *args: Any) -> None:
            self.reports.append(threading.current_thread().name)
            report(pool, *args)

        def spy_store(own: Any, task_id: str, meta: dict[str, Any], **kwargs: Any) -> Any:
            self.stores.append((meta["status"], threading.current_thread().name))
            return store(own, task_id, meta, **kwargs)

        monkeypatch.setattr(Tracer, "start", spy_start)
        monkeypatch.setattr(AsyncioPool, "report", spy_report)
        monkeypatch.setattr(backend, "store_reply", spy_store)


IO_THREAD = "wiretask-asyncio-io-"


def test_a_task_that_stores_nothing_at_start_crosses_to_an_io_thread_once(
    app: App, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: ``start`` on the loop (it stores nothing), then the final state
    and the report in one I/O-thread call, the state stored before the report."""
    threads = _Threads(monkeypatch, app)
    body: list[str] = []

    @app.task
    async def echo(x: int) -> int:
        body.append(threading.current_thread().name)
        return x

    start(workers, app, concurrency=2)
    assert echo.delay(7).get(timeout=5) == 7
    wait_until(lambda: len(threads.reports) == 1)
    assert threads.starts == []  # Tracer.start (the I/O-thread half) was not needed
    assert body[0].startswith("wiretask-asyncio-") and not body[0].startswith(IO_THREAD)
    [(status, stored_in)] = threads.stores
    assert status == states.SUCCESS and stored_in.startswith(IO_THREAD)
    assert threads.reports == [stored_in]  # conclude and report: one hand-off
    wait_until(lambda: app.transport.size("celery") == 0)


@pytest.mark.parametrize("tracked", [True, False])
def test_a_start_that_stores_runs_in_an_io_thread(
    app: App, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tracked: bool
) -> None:
    """``STARTED`` to store, or an expired message (``REVOKED``, errbacks, the body not
    run): ``Tracer.start`` does it in an I/O thread, never on the loop."""
    threads = _Threads(monkeypatch, app)
    ran: list[int] = []
    errbacks: list[str] = []

    @app.task(track_started=tracked)
    async def echo(x: int) -> int:
        ran.append(x)
        return x

    @app.task(ignore_result=True)  # stores nothing: only echo's states are counted
    def errback(task_id: str) -> None:
        errbacks.append(task_id)

    start(workers, app, concurrency=2)
    if tracked:
        assert echo.delay(3).get(timeout=5) == 3
        expected = [states.STARTED, states.SUCCESS]
    else:
        result = echo.apply_async((3,), expires=-1.0, link_error=errback.s())
        with pytest.raises(errors.TaskRevokedError):
            result.get(timeout=5)
        wait_until(lambda: errbacks == [result.id])
        assert ran == []
        expected = [states.REVOKED]
    wait_until(lambda: len(threads.reports) == 1)
    assert len(threads.starts) == 1 and threads.starts[0].startswith(IO_THREAD)
    assert [status for status, _ in threads.stores] == expected
    assert all(name.startswith(IO_THREAD) for _, name in threads.stores)


def test_jobs_that_arrive_together_run_in_order_of_arrival(
    app: App, workers: list[Worker]
) -> None:
    """Several jobs handed to the loop with one wake-up keep their order."""
    order: list[int] = []

    @app.task
    async def note(n: int) -> int:
        order.append(n)
        return n

    results = note.apply_many([((n,), {}) for n in range(40)])
    start(workers, app, concurrency=1, prefetch_multiplier=10)
    assert [result.get(timeout=10) for result in results] == list(range(40))
    assert order == list(range(40))


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
