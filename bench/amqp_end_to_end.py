"""RabbitMQ end-to-end benchmark (issue 15): tasks/s through a worker, wiretask vs Celery.

Run: ``python bench/amqp_end_to_end.py`` (``--scale 0.1`` for a quick look). The broker is
``$WIRETASK_BENCH_AMQP_URL`` (or the test node's ``$WIRETASK_TEST_AMQP_URL``, else a
private RabbitMQ started with ``scripts/rabbitmq.sh``); results and the completion counter
are in Redis (``$WIRETASK_BENCH_REDIS_URL`` or a private ``redis-server``), database
``$WIRETASK_BENCH_REDIS_DB`` (default 9), emptied before and after.

The method is ``end_to_end.py``'s (its worker and timing helpers are used as they are):
each side's worker in its own process (``_e2e_apps.py``, broker and names from the
environment): Celery ``celery worker -P solo`` (prefetch multiplier 4, acks early, results
stored) and wiretask's ``Worker(app, pool="solo", prefetch=3)`` (the broker's prefetch
window is its room: 4 messages; acks after the result is stored); a warm-up task, then N
SMALL tasks published from this process, the clock stopped when the Redis counter reaches
N. Publishing is part of the figure: wiretask with publisher confirms (its default),
Celery without (its default).
"""

from __future__ import annotations

import argparse
import os
import sys

import redis
from _common import (
    REDIS_DB,
    SMALL_ARGS,
    SMALL_KWARGS,
    Row,
    machine_facts,
    print_ratio_lines,
    print_table,
    redis_url,
    scaled,
)
from amqp_common import amqp_url, empty_queues, rabbitmq_version
from end_to_end import run_side

E2E_TARGET = 3.0
CHUNK = 500
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


def main() -> None:
    options = parse()
    count = scaled(3000, options.scale, minimum=20)
    with amqp_url() as broker, redis_url() as base:
        print(f"wiretask AMQP end-to-end bench -- {machine_facts()} | "
              f"RabbitMQ {rabbitmq_version(broker)}")
        print(f"method: {count} SMALL tasks per run, first publish to last completion, best "
              f"of {max(options.repeat, 1)} interleaved runs per side, wiretask pool solo "
              f"(prefetch {SOLO_PREFETCH}) and threads (concurrency {options.concurrency}), "
              "Celery -P solo; broker RabbitMQ, results in Redis")
        url = f"{base}/{REDIS_DB}"
        os.environ["WIRETASK_BENCH_E2E_URL"] = url
        os.environ["WIRETASK_BENCH_E2E_BROKER"] = broker
        os.environ["WIRETASK_BENCH_E2E_NAMES"] = "bench.amqp.e2e"
        import _e2e_apps as apps  # noqa: PLC0415 - reads the URLs from the environment

        client = redis.Redis.from_url(url)
        client.flushdb()
        empty_queues(broker, apps.WT_QUEUE, apps.CELERY_QUEUE)  # nothing left from before
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
                          "--concurrency", str(options.concurrency), "--prefetch", "1"]
            celery_cmd = [sys.executable, "-m", "celery", "-A", "_e2e_apps:celery_app",
                          "worker", "-P", "solo", "-Q", apps.CELERY_QUEUE, "--without-gossip",
                          "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
            results: dict[str, tuple[float, int]] = {}
            sides = (
                ("celery", celery_cmd, apps.CELERY_COUNTER, celery_one),
                ("wt_many", wt_solo, apps.WT_COUNTER, wt_many),
                ("wt_one", wt_solo, apps.WT_COUNTER, wt_one),
                ("wt_threads", wt_threads, apps.WT_COUNTER, wt_many),
            )
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
            empty_queues(broker, apps.WT_QUEUE, apps.CELERY_QUEUE, delete=True)

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
    ]
    print_table("End to end over RabbitMQ, SMALL tasks through a worker "
                "(higher tasks/s is better)", rows, unit="tasks/s")
    print_ratio_lines(rows)


if __name__ == "__main__":
    main()
