"""CPU per ``apply_async`` on Redis (user + system time of the publishing process), the
figure machine load moves least: wall-clock rates on a shared 2-core machine move by up
to 2x between runs, CPU per call by far less (the kernel's time in the socket calls is
in it; Redis's own is not).

Run: ``python bench/publish_cpu.py`` (a private ``redis-server``, or
``$WIRETASK_BENCH_REDIS_URL``); ``--count N`` calls per run (10,000), ``--runs R`` (3),
the best (lowest) reported. It prints one line, ``cpu_us wall_us``, so that
``bench/versions.py``-style comparisons can run it with two interpreters, interleaved:

    for i in 1 2 3 4 5; do
        /tmp/venv-before/bin/python bench/publish_cpu.py --redis-url $URL
        python bench/publish_cpu.py --redis-url $URL
    done
"""

from __future__ import annotations

import argparse
import resource
import time
from contextlib import nullcontext

from _common import REDIS_DB, SMALL_ARGS, SMALL_KWARGS, redis_url

from wiretask.app import App


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-url", default=None, help="a Redis to use (no database)")
    options = parser.parse_args()
    with (nullcontext(options.redis_url) if options.redis_url else redis_url()) as base:
        url = f"{base}/{REDIS_DB}"
        app = App("bench-cpu", broker=url, backend=url, task_default_queue="bench.cpu")

        @app.task(name="bench.cpu.small")
        def small(user_id: int, email: str, account: dict[str, object], notify: bool = False,
                  retries_left: int = 0) -> int:
            return user_id

        try:
            small.apply_async(SMALL_ARGS, SMALL_KWARGS)  # connected and declared
            best: tuple[float, float] | None = None
            for _ in range(max(options.runs, 1)):
                cpu0, wall0 = cpu_seconds(), time.perf_counter()
                for _ in range(options.count):
                    small.apply_async(SMALL_ARGS, SMALL_KWARGS)
                cpu = (cpu_seconds() - cpu0) / options.count * 1e6
                wall = (time.perf_counter() - wall0) / options.count * 1e6
                app.transport.purge("bench.cpu")
                if best is None or cpu < best[0]:
                    best = (cpu, wall)
            assert best is not None
            print(f"{best[0]:.1f} {best[1]:.1f}")
        finally:
            app.transport.purge("bench.cpu")
            app.close()


if __name__ == "__main__":
    main()
