"""Asyncio API benchmark (issue 17): async vs sync vs ``asyncio.to_thread`` around sync.

Run: ``python bench/async_api.py`` (``--scale 0.1`` for a quick look). Uses
``$WIRETASK_BENCH_REDIS_URL`` or starts a private ``redis-server`` (database
``$WIRETASK_BENCH_REDIS_DB``, default 9, emptied before and after); the await rows
start a real ``wiretask worker`` process (``--pool asyncio``) for this module's app.

What is compared, SMALL payload, one client process, the same Redis, one run:

* **publish rate**: ``await task.aapply_async(...)`` (one at a time, and 100 in flight
  as concurrent requests of a server publish) vs sync ``task.apply_async(...)`` in a
  loop, and vs ``await asyncio.to_thread(task.apply_async, ...)`` (100 in flight: what
  users write today to keep their loop free).
* **await latency**: publish and wait for the result, one after the other: ``await
  (await task.adelay(n)).aget()`` vs ``task.delay(n).get()`` vs the latter in
  ``asyncio.to_thread``; and **round trips with 100 in flight** (async vs to_thread).

**AMQP rows**: the publish rates again on RabbitMQ (``$WIRETASK_BENCH_AMQP_URL``, else
the test node's ``$WIRETASK_TEST_AMQP_URL``, else a private node started with
``scripts/rabbitmq.sh``; skipped, and said so, when there is none): the asyncio twin over
aiormq vs the sync transport over py-amqp, both with publisher confirms.

Ratios are "x faster" of the asyncio API over the reference (below 1: slower). Rates are
messages (or round trips) per second, best of the interleaved repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import redis
from _common import (
    BENCH_DIR,
    REDIS_DB,
    ROOT,
    SMALL_ARGS,
    SMALL_KWARGS,
    Row,
    arguments,
    machine_facts,
    print_ratio_lines,
    print_table,
    redis_url,
    scaled,
)

from wiretask.app import App

QUEUE = "bench.async"
IN_FLIGHT = 100

#: The app the worker process imports (``async_api:app``): the broker comes from the
#: environment it is started with.
app = App("bench_async", task_default_queue=QUEUE)


@app.task(name="bench.async.small")
def small(user_id: int, email: str, account: dict[str, Any], notify: bool = False,
          retries_left: int = 0) -> int:
    return user_id


#: The same task on RabbitMQ (the AMQP rows).
amqp_app = App("bench_async_amqp", task_default_queue=QUEUE)
amqp_small = amqp_app.task(name="bench.async.small")(small.run)


def best(run: Callable[[int], float], number: int, repeat: int) -> float:
    """Best µs per operation of ``run(number)`` (which returns its elapsed seconds)."""
    return min(run(number) for _ in range(repeat)) / number * 1e6


@contextlib.contextmanager
def worker(url: str) -> Iterator[None]:
    env = {**os.environ, "WIRETASK_BROKER_URL": url,
           "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(ROOT / "src")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wiretask", "worker", "-A", "async_api:app", "--pool",
         "asyncio", "-c", "50", "-Q", QUEUE, "-l", "WARNING"],
        cwd=BENCH_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timer(runner: asyncio.Runner, empty: Callable[[], object]
          ) -> Callable[[Callable[[int], Awaitable[None]]], Callable[[int], float]]:
    """``timed(coro)``: a function of a count that runs ``coro(count)`` on ``runner`` and
    returns the seconds it took (then empties the queue)."""
    def timed(coro: Callable[[int], Awaitable[None]]) -> Callable[[int], float]:
        def run_it(count: int) -> float:
            start = time.perf_counter()
            runner.run(coro(count))
            elapsed = time.perf_counter() - start
            empty()
            return elapsed
        return run_it
    return timed


async def in_flight(count: int, one: Callable[[], Awaitable[Any]]) -> None:
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def each() -> None:
        async with limit:
            await one()

    await asyncio.gather(*[each() for _ in range(count)])


def publish_rows(task: Any, runner: asyncio.Runner, n: int, repeat: int,
                 empty: Callable[[], object], where: str) -> list[Row]:
    """The publish rows of ``task`` (on its app's broker): async one at a time and
    ``IN_FLIGHT`` in flight vs the sync loop, and vs ``to_thread`` in flight."""
    timed = timer(runner, empty)

    def sync_publish(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            task.apply_async(SMALL_ARGS, SMALL_KWARGS)
        elapsed = time.perf_counter() - start
        empty()
        return elapsed

    async def async_publish(count: int) -> None:
        for _ in range(count):
            await task.aapply_async(SMALL_ARGS, SMALL_KWARGS)

    async def async_publish_concurrent(count: int) -> None:
        await in_flight(count, lambda: task.aapply_async(SMALL_ARGS, SMALL_KWARGS))

    async def thread_publish_concurrent(count: int) -> None:
        await in_flight(count, lambda: asyncio.to_thread(task.apply_async, SMALL_ARGS,
                                                         SMALL_KWARGS))

    measured = {}
    for name, fn in (("sync", sync_publish), ("async", timed(async_publish)),
                     ("async-100", timed(async_publish_concurrent)),
                     ("thread-100", timed(thread_publish_concurrent))):
        fn(max(1, n // 10))  # warm up: connections, plans, the executor's threads
        measured[name] = fn
    results: dict[str, list[float]] = {name: [] for name in measured}
    for _ in range(repeat):  # interleaved, so that a change in load hits every side
        for name, fn in measured.items():
            results[name].append(fn(n) / n * 1e6)
    us = {name: min(values) for name, values in results.items()}
    return [
        Row(f"publish{where}: await aapply_async (1 at a time)", us["async"], us["sync"],
            "sync apply_async loop", target=1.0),
        Row(f"publish{where}: await aapply_async ({IN_FLIGHT} in flight)", us["async-100"],
            us["sync"], "sync apply_async loop", target=1.0),
        Row(f"publish{where}: await aapply_async ({IN_FLIGHT} in flight)", us["async-100"],
            us["thread-100"], f"to_thread(apply_async), {IN_FLIGHT} in flight"),
    ]


def run_amqp(url: str, scale: float, repeat: int) -> list[Row]:
    """The publish rows on RabbitMQ."""
    from amqp_common import empty_queues  # noqa: PLC0415 - py-amqp only for these rows

    amqp_app.conf.broker_url = url
    runner = asyncio.Runner()
    try:
        return publish_rows(amqp_small, runner, scaled(2000, scale, minimum=20), repeat,
                            lambda: empty_queues(url, QUEUE), " (AMQP)")
    finally:
        runner.run(amqp_app.aclose())
        runner.close()
        amqp_app.close()
        empty_queues(url, QUEUE, delete=True)


def run(url: str, client: redis.Redis, scale: float, repeat: int) -> list[Row]:
    app.conf.broker_url = url
    n = scaled(2000, scale, minimum=20)
    trips = scaled(300, scale, minimum=10)
    runner = asyncio.Runner()
    rows: list[Row] = []

    timed = timer(runner, lambda: client.delete(QUEUE))

    # -- publish ---------------------------------------------------------------------------

    rows += publish_rows(small, runner, n, repeat, lambda: client.delete(QUEUE), "")

    # -- await ----------------------------------------------------------------------------

    with worker(url):
        warm = small.delay(*SMALL_ARGS, **SMALL_KWARGS)
        warm.get(timeout=60)  # the worker is up

        def sync_trips(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                small.delay(*SMALL_ARGS, **SMALL_KWARGS).get(timeout=30)
            return time.perf_counter() - start

        async def async_trips(count: int) -> None:
            for _ in range(count):
                result = await small.adelay(*SMALL_ARGS, **SMALL_KWARGS)
                await result.aget(timeout=30)

        def blocking_trip() -> Any:
            return small.delay(*SMALL_ARGS, **SMALL_KWARGS).get(timeout=30)

        async def thread_trips(count: int) -> None:
            for _ in range(count):
                await asyncio.to_thread(blocking_trip)

        async def async_trip() -> Any:
            return await (await small.adelay(*SMALL_ARGS, **SMALL_KWARGS)).aget(timeout=30)

        async def async_trips_concurrent(count: int) -> None:
            await in_flight(count, async_trip)

        async def thread_trips_concurrent(count: int) -> None:
            await in_flight(count, lambda: asyncio.to_thread(blocking_trip))

        trip_fns = {"sync": sync_trips, "async": timed(async_trips),
                    "thread": timed(thread_trips),
                    "async-100": timed(async_trips_concurrent),
                    "thread-100": timed(thread_trips_concurrent)}
        for fn in trip_fns.values():
            fn(max(1, trips // 10))
        trip_results: dict[str, list[float]] = {name: [] for name in trip_fns}
        for _ in range(repeat):
            for name, fn in trip_fns.items():
                trip_results[name].append(fn(trips) / trips * 1e6)
        trip_us = {name: min(values) for name, values in trip_results.items()}
        rows.append(Row("await: adelay + aget (1 at a time)", trip_us["async"],
                        trip_us["sync"], "sync delay().get()"))
        rows.append(Row("await: adelay + aget (1 at a time)", trip_us["async"],
                        trip_us["thread"], "to_thread(delay().get())"))
        rows.append(Row(f"await: adelay + aget ({IN_FLIGHT} in flight)", trip_us["async-100"],
                        trip_us["thread-100"], f"to_thread(delay().get()), {IN_FLIGHT} in flight"))
    runner.run(app.aclose())
    runner.close()
    app.close()
    return rows


def main() -> None:
    options = arguments(__doc__.splitlines()[0])
    repeat = options.repeat or (5 if options.scale >= 0.5 else 2)
    print(f"wiretask asyncio API bench -- {machine_facts()}")
    print(f"method: best of {repeat} interleaved repeats, perf_counter, GC on; rates are "
          "1e6 / (us per message or round trip)")
    with redis_url() as base:
        url = f"{base}/{REDIS_DB}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            rows = run(url, client, options.scale, repeat)
        finally:
            client.flushdb()
            client.close()
    print_table("asyncio API on Redis, SMALL payload (higher /s is better)", rows, unit="msg/s")
    amqp_rows: list[Row] = []
    if have_rabbitmq():
        from amqp_common import amqp_url  # noqa: PLC0415 - py-amqp only for these rows

        with amqp_url() as url:
            amqp_rows = run_amqp(url, options.scale, repeat)
        print_table("asyncio API on RabbitMQ (publisher confirms), SMALL payload (higher /s "
                    "is better)", amqp_rows, unit="msg/s")
    else:
        print("AMQP rows skipped: no RabbitMQ (set WIRETASK_BENCH_AMQP_URL, or install "
              "rabbitmq-server)")
    print_ratio_lines(rows + amqp_rows)


def have_rabbitmq() -> bool:
    return bool(os.environ.get("WIRETASK_BENCH_AMQP_URL")
                or os.environ.get("WIRETASK_TEST_AMQP_URL")
                or os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"))


if __name__ == "__main__":
    main()
