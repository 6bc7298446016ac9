"""Soak benchmark (issue 13): N messages through each transport with 2 worker
processes, counting every execution: executed once, duplicated, lost; throughput; and
the workers' memory over time. With ``--kill-every S`` a worker is killed (SIGKILL)
every S seconds and started again, and the counts show what that cost.

Run: ``python bench/soak.py`` (100,000 messages per transport; ``--messages 2000`` for
a quick look). Redis: ``$WIRETASK_BENCH_REDIS_URL`` or a private ``redis-server``
(database ``$WIRETASK_BENCH_REDIS_DB``, default 9, emptied before and after); SQLite: a
file in a temporary directory; RabbitMQ (``--transports amqp``): the node of
``bench/amqp_common.py`` (``$WIRETASK_BENCH_AMQP_URL``, the test node, or a private one),
whose ``celery`` queue and its dead letters are deleted before and after (results go
nowhere: the messages are published with ``ignore_result``). Messages are published
with ``apply_many`` in chunks of 1,000 while the workers consume; the clock runs from the
first publish to the last execution. Prints a Markdown table (the README keeps the last one).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import redis
from _common import BENCH_DIR, REDIS_DB, machine_facts, redis_url
from amqp_common import amqp_url, empty_queues

CHUNK = 1000
#: The task the workers run (``bench/_soak_app.py``).
TASK = "soak.run"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--transports", default="sqlite,redis")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", default="threads", choices=["threads", "processes", "solo"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=0.0,
                        help="SIGKILL a random worker every this many seconds (0: never)")
    parser.add_argument("--cap", type=float, default=1800.0,
                        help="give up waiting after this many seconds")
    return parser.parse_args()


def rss(pid: int) -> int:
    """Resident memory of ``pid`` and its children (a process pool's), in bytes."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Fleet:
    """The worker processes of one run, started, killed and restarted."""

    def __init__(self, url: str, backend: str, log: Path, options: argparse.Namespace) -> None:
        path = os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])
        self.env = {**os.environ, "WIRETASK_SOAK_URL": url, "WIRETASK_SOAK_BACKEND": backend,
                    "WIRETASK_SOAK_LOG": str(log), "PYTHONPATH": path}
        self.command = [sys.executable, str(BENCH_DIR / "_soak_app.py"), "--pool", options.pool,
                        "--concurrency", str(options.concurrency)]
        self.procs = [self._start() for _ in range(options.workers)]
        self.kills = 0

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_one(self, rng: random.Random) -> None:
        index = rng.randrange(len(self.procs))
        os.killpg(self.procs[index].pid, signal.SIGKILL)
        self.procs[index].wait(10)
        self.procs[index] = self._start()
        self.kills += 1

    def memory(self) -> int:
        return sum(rss(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def executions(log: Path) -> Counter[int]:
    if not log.exists():
        return Counter()
    return Counter(int(line) for line in log.read_bytes().split() if line)


def soak(name: str, url: str, options: argparse.Namespace,
         backend: str | None = None) -> dict[str, object]:
    from wiretask.app import App  # noqa: PLC0415 - after the path is set

    workdir = Path(tempfile.mkdtemp(prefix=f"wiretask-soak-{name}-"))
    log = workdir / "executed"
    backend = backend or url
    client = App("soak-client", broker=url, backend=backend)

    @client.task(name=TASK)
    def run(number: int) -> int:  # the workers run the real one (bench/_soak_app.py)
        raise NotImplementedError

    total = options.messages
    fleet = Fleet(url, backend, log, options)
    samples: list[tuple[float, int]] = []
    rng = random.Random(13)
    published = threading.Event()
    try:
        time.sleep(1.0)  # the workers connect
        started = time.monotonic()

        def publish() -> None:
            for first in range(0, total, CHUNK):
                run.apply_many([(i,) for i in range(first, min(first + CHUNK, total))],
                               ignore_result=True)
            published.set()

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        next_kill = started + options.kill_every if options.kill_every else None
        done = Counter[int]()
        while time.monotonic() - started < options.cap:
            time.sleep(1.0)
            now = time.monotonic()
            samples.append((now - started, fleet.memory()))
            done = executions(log)
            if published.is_set() and len(done) >= total:
                break
            if next_kill is not None and now >= next_kill and len(done) < total * 0.9:
                fleet.kill_one(rng)
                next_kill = now + options.kill_every
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # a late duplicate would show now
        done = executions(log)
    finally:
        fleet.stop()
        client.close()
    once = sum(1 for i in range(total) if done[i] == 1)
    duplicated = sum(1 for i in range(total) if done[i] > 1)
    lost = sum(1 for i in range(total) if done[i] == 0)
    memory = [m for _, m in samples] or [0]
    series = ", ".join(f"{m / 1e6:.0f}" for t, m in samples[:: max(1, len(samples) // 8)])
    return {"transport": name, "messages": total, "once": once, "duplicated": duplicated,
            "lost": lost, "rate": total / elapsed if not lost else len(done) / elapsed,
            "kills": fleet.kills, "rss": (memory[0], max(memory), memory[-1]),
            "series": series}


def main() -> None:
    options = parse()
    rows = []
    with ExitStack() as stack:
        for name in options.transports.split(","):
            if name == "sqlite":
                url = f"sqlite:///{tempfile.mkdtemp(prefix='wiretask-soak-db-')}/broker.db"
            elif name == "redis":
                plain = f"{stack.enter_context(redis_url())}/{REDIS_DB}"
                redis.Redis.from_url(plain).flushdb()
                stack.callback(lambda db=plain: redis.Redis.from_url(db).flushdb())
                # A killed worker's messages come back after 10 s, not the default 60.
                url = f"{plain}?lease_timeout=10"
            elif name == "amqp":
                # A killed worker's messages come back at once (RabbitMQ requeues them
                # when its connection drops): no option needed.
                url = stack.enter_context(amqp_url())
                empty_queues(url, "celery", "celery.dead", delete=True)
                stack.callback(empty_queues, url, "celery", "celery.dead", delete=True)
                rows.append(soak(name, url, options, backend="memory://"))
                continue
            else:
                raise SystemExit(f"unknown transport {name!r}: sqlite, redis or amqp")
            rows.append(soak(name, url, options))
    print(machine_facts())
    print(f"\n{options.workers} worker processes, pool {options.pool}, concurrency "
          f"{options.concurrency} each; a worker SIGKILLed every "
          f"{options.kill_every or 'never'} s\n")
    print("| transport | messages | executed once | duplicated | lost | msgs/s | kills "
          "| workers' RSS start / peak / end (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        start, peak, end = row["rss"]
        print(f"| {row['transport']} | {row['messages']:,} | {row['once']:,} | "
              f"{row['duplicated']:,} | {row['lost']:,} | {row['rate']:,.0f} | {row['kills']} "
              f"| {start / 1e6:.0f} / {peak / 1e6:.0f} / {end / 1e6:.0f} |")
    for row in rows:
        print(f"\nRSS over time ({row['transport']}, MB): {row['series']}")


if __name__ == "__main__":
    main()
