"""End-to-end benchmark (issue 5): tasks/s through a worker, wiretask vs Celery, same Redis.

Run: ``python bench/end_to_end.py`` (``--scale 0.1`` for a quick look,
``--concurrency N`` for the wiretask thread pool). Uses ``$WIRETASK_BENCH_REDIS_URL`` or
a private ``redis-server`` (stopped after); database ``$WIRETASK_BENCH_REDIS_DB``
(default 9) is emptied before and after.

Each side: its worker runs in its own process (``bench/_e2e_apps.py``): Celery
``celery worker -P solo`` (Celery's defaults otherwise: prefetch multiplier 4, so it
reserves 4 messages; acks early; results stored), and wiretask's ``Worker(app,
pool="solo", prefetch=3)``: one task at a time in the receiving thread, 4 messages
reserved like Celery's, acks after the result is stored. A row with wiretask's thread
pool (``concurrency=N``, default prefetch) is shown too. Two more pairs of rows show the
worker's defaults before and after Celery's prefetch multiplier became its default
(issue 14): solo and threads with ``prefetch=1`` (the old default) against no prefetch
given (now ``concurrency x worker_prefetch_multiplier``, 4: 4 messages reserved beyond
the running one for solo, 16 for 4 threads). A warm-up task proves the
worker is consuming; then the clock starts, N SMALL tasks are published from this
process, and the clock stops when the task's Redis counter reaches N (polled every
2 ms). So the figure covers publishing, transport, decoding, running, storing the
result and acknowledging.

Rows: the solo worker with wiretask publishing with ``task.apply_many`` (chunks of 500:
each side's fastest publishing API; Celery has no batch call) is the row with the
target; wiretask publishing one ``apply_async`` at a time, like Celery, is shown too.
A hard cap per run (``--cap`` seconds) stops a stuck run; it is then reported as what
completed in the cap.

The cost of Celery's task events: the solo worker with ``-E`` (``task-received``,
``task-started``, ``task-succeeded`` per task, published by the worker's event thread)
against Celery's ``-P solo -E``; the difference to the row without events is the cost.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from _common import (
    BENCH_DIR,
    REDIS_DB,
    ROOT,
    SMALL_ARGS,
    SMALL_KWARGS,
    Row,
    machine_facts,
    print_ratio_lines,
    print_table,
    redis_url,
    scaled,
)

E2E_TARGET = 5.0
CHUNK = 500
#: The solo worker reserves 1 + SOLO_PREFETCH messages: 4, as Celery's -P solo does
#: with its default prefetch multiplier.
SOLO_PREFETCH = 3


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the task count (3000 at scale 1)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="wiretask worker threads (default 4)")
    parser.add_argument("--cap", type=float, default=120.0,
                        help="hard cap in seconds for one run (default 120)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs of every side; the best is reported (default 3)")
    return parser.parse_args()


def _env(url: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", ""),
                                       str(ROOT / "src")) if p)
    return {**os.environ, "WIRETASK_BENCH_E2E_URL": url, "PYTHONPATH": path}


@contextmanager
def worker(command: list[str], url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(command, cwd=BENCH_DIR, env=_env(url),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        # The timed part is over. An idle Celery worker on RabbitMQ notices SIGTERM (and
        # SIGQUIT) only when its event loop next turns, up to 10 s later (kombu's
        # Hub.fire_timers max_delay); every task has run, so SIGKILL loses nothing.
        celery = "celery" in command
        proc.send_signal(signal.SIGKILL if celery else signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(client: redis.Redis, counter: str, count: int, deadline: float,
             proc: subprocess.Popen[bytes]) -> int:
    """Poll ``counter`` until it reaches ``count`` or the deadline; return its value."""
    done = 0
    while time.perf_counter() < deadline:
        done = int(client.get(counter) or 0)
        if done >= count:
            return done
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{stderr[-2000:]}")
        time.sleep(0.002)
    return done


def run_side(
    client: redis.Redis,
    url: str,
    command: list[str],
    counter: str,
    publish: Callable[[int], None],
    count: int,
    cap: float,
) -> tuple[float, int]:
    """Seconds from first publish to last completion (or to the cap), and completions."""
    with worker(command, url) as proc:
        client.delete(counter)
        publish(1)  # warm-up: the worker is up and consuming
        if wait_for(client, counter, 1, time.perf_counter() + 60, proc) < 1:
            raise RuntimeError(f"worker {command[:3]} did not run the warm-up task in 60 s")
        client.delete(counter)
        start = time.perf_counter()
        publish(count)
        done = wait_for(client, counter, count, start + cap, proc)
        elapsed = time.perf_counter() - start
    return elapsed, done


def main() -> None:
    options = parse()
    count = scaled(3000, options.scale, minimum=20)
    print(f"wiretask end-to-end bench -- {machine_facts()}")
    print(f"method: {count} SMALL tasks per run, first publish to last completion, best "
          f"of {max(options.repeat, 1)} interleaved runs per side, "
          f"wiretask pool solo (prefetch {SOLO_PREFETCH}) and threads (concurrency "
          f"{options.concurrency}), Celery -P solo")
    with redis_url() as base:
        url = f"{base}/{REDIS_DB}"
        os.environ["WIRETASK_BENCH_E2E_URL"] = url
        import _e2e_apps as apps  # noqa: PLC0415 - reads the URL from the environment

        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            calls = [(SMALL_ARGS, SMALL_KWARGS)]

            def wt_many(n: int) -> None:
                for start in range(0, n, CHUNK):
                    apps.small.apply_many(calls * min(CHUNK, n - start))

            def wt_one(n: int) -> None:
                for _ in range(n):
                    apps.small.apply_async(SMALL_ARGS, SMALL_KWARGS)

            def celery_one(n: int) -> None:
                for _ in range(n):
                    apps.celery_small.apply_async(SMALL_ARGS, SMALL_KWARGS)

            wt_solo = [sys.executable, "_e2e_apps.py", "--pool", "solo", "--prefetch",
                       str(SOLO_PREFETCH)]
            wt_threads = [sys.executable, "_e2e_apps.py", "--pool", "threads",
                          "--concurrency", str(options.concurrency)]
            wt_solo_default = [sys.executable, "_e2e_apps.py", "--pool", "solo"]
            # The defaults before issue 14: prefetch 1 whatever the concurrency.
            wt_solo_old = [*wt_solo_default, "--prefetch", "1"]
            wt_threads_old = [*wt_threads, "--prefetch", "1"]
            celery_cmd = [sys.executable, "-m", "celery", "-A", "_e2e_apps:celery_app",
                          "worker", "-P", "solo", "-Q", apps.CELERY_QUEUE, "--without-gossip",
                          "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
            results: dict[str, tuple[float, int]] = {}
            sides = (
                ("celery", celery_cmd, apps.CELERY_COUNTER, celery_one),
                ("wt_many", wt_solo, apps.WT_COUNTER, wt_many),
                ("wt_one", wt_solo, apps.WT_COUNTER, wt_one),
                ("wt_threads", wt_threads, apps.WT_COUNTER, wt_many),
                ("wt_solo_old", wt_solo_old, apps.WT_COUNTER, wt_many),
                ("wt_solo_default", wt_solo_default, apps.WT_COUNTER, wt_many),
                ("wt_threads_old", wt_threads_old, apps.WT_COUNTER, wt_many),
                ("wt_events", [*wt_solo, "--events"], apps.WT_COUNTER, wt_many),
                ("celery_events", [*celery_cmd, "-E"], apps.CELERY_COUNTER, celery_one),
            )
            # Interleaved (all sides, then all sides again), the best run of each side
            # kept: as in the other benches, the least-disturbed run is the estimate.
            for _ in range(max(options.repeat, 1)):
                for name, command, counter, publish in sides:
                    elapsed, done = run_side(client, url, command, counter, publish, count,
                                             options.cap)
                    note = "" if done >= count else f" (CAPPED: {done}/{count} done)"
                    print(f"{name}: {done} tasks in {elapsed:.2f} s = {done / elapsed:,.0f} "
                          f"tasks/s{note}", file=sys.stderr)
                    best = results.get(name)
                    if best is None or done / elapsed > best[1] / best[0]:
                        results[name] = (elapsed, done)
        finally:
            apps.wiretask_app.close()
            apps.celery_app.close()
            client.flushdb()
            client.close()

    def us_per_task(name: str) -> float:
        elapsed, done = results[name]
        return elapsed / max(done, 1) * 1e6

    celery = "celery -P solo (apply_async publish)"
    rows = [
        Row(f"e2e {count} tasks, solo (apply_many publish)", us_per_task("wt_many"),
            us_per_task("celery"), celery, target=E2E_TARGET),
        Row(f"e2e {count} tasks, solo (apply_async publish)", us_per_task("wt_one"),
            us_per_task("celery"), celery),
        Row(f"e2e {count} tasks, {options.concurrency} threads (apply_many publish)",
            us_per_task("wt_threads"), us_per_task("celery"), celery),
        Row(f"e2e {count} tasks, solo, old default prefetch 1",
            us_per_task("wt_solo_old"), us_per_task("celery"), celery),
        Row(f"e2e {count} tasks, solo, default prefetch (multiplier 4)",
            us_per_task("wt_solo_default"), us_per_task("celery"), celery),
        Row(f"e2e {count} tasks, {options.concurrency} threads, old default prefetch 1",
            us_per_task("wt_threads_old"), us_per_task("celery"), celery),
        Row(f"e2e {count} tasks, solo, task events on (-E)", us_per_task("wt_events"),
            us_per_task("celery_events"), "celery -P solo -E (apply_async publish)"),
    ]
    print_table("End to end, SMALL tasks through a worker (higher tasks/s is better)", rows,
                unit="tasks/s")
    print_ratio_lines(rows)


if __name__ == "__main__":
    main()
