"""Peer benchmark (issue 18): wiretask vs Celery, Dramatiq, RQ, arq, taskiq, Huey on Redis;
vs Celery, Dramatiq, aio-celery on RabbitMQ; wiretask's asyncio API vs arq, taskiq, aio-celery.

Run: ``python bench/peers.py`` (``--scale 0.1`` for a quick look; ``--broker amqp`` for
the RabbitMQ tables, ``--broker both`` for all; ``--libs wiretask,huey`` for some of
them; ``--out FILE`` writes the report too). First time:
``python bench/peers.py --install`` puts the peers of ``bench/requirements-peers.txt``
into this venv and builds arq's own venv (``bench/.venvs/arq``; built automatically
when missing). Uses ``$WIRETASK_BENCH_REDIS_URL`` (or ``--redis-url``), else starts a
private ``redis-server`` on a free port on 127.0.0.1; database
``$WIRETASK_BENCH_REDIS_DB`` (default 9) is emptied before every measurement. The
RabbitMQ libraries use ``$WIRETASK_BENCH_AMQP_URL`` (or the test node's
``$WIRETASK_TEST_AMQP_URL``), else a private node started with ``scripts/rabbitmq.sh``
(``amqp_common.amqp_url``); their queues are purged before every measurement.

The report has a set of tables per broker and kind of API (``_peers/spec.py``,
``TABLES``): **Redis** (wiretask's sync API, the peers, the redis-py floors),
**asyncio on Redis** (wiretask's asyncio API, ``--pool asyncio`` and an ``async def``
task, vs arq and taskiq, whose runs are shared with the Redis table), **RabbitMQ**
(wiretask's AMQP transport vs Celery over py-amqp, Dramatiq over pika, aio-celery) and
**asyncio on RabbitMQ** (wiretask's asyncio API over aiormq vs aio-celery). Every
library runs in the same interleaved rounds.

Every library sends the same call, ``(1, 'some text', [1, 2, 3])``,
``{'flag': True, 'name': 'x'}``, to a task whose body is one Redis ``INCR`` (the
completion count; ``bench/_peers/__init__.py``). Each library's client runs in its own
process (``_peers.driver``, with the library's own interpreter), each worker in its own
process tree, started with the library's CLI (``_peers/spec.py``) and stopped after the
run. Rows:

* **enqueue one at a time**: N calls of the library's single-call API.
* **batch of 1,000**: the library's batch API if it has one (else its loop, said so).
* **end to end, one slot**: N messages published with the batch row's API while the
  worker (one task at a time, the CLI's defaults otherwise) runs them; the clock runs
  from the first publish to the N-th completion.
* **end to end, default concurrency**: the same with the worker CLI's defaults.
* **worker RSS**: the peak of the worker tree's summed RSS in those runs (sampled from
  ``/proc`` every 50 ms), with its PSS at the end of the run.

Floors: a redis-py ``LPUSH`` loop, one redis-py pipeline of 1,000 ``LPUSH``, and a bare
``BRPOP`` loop consumer running the task's ``INCR`` (``_peers/floor.py``).

Per row and library: messages/s (best of ``--repeat`` runs, interleaved: every library,
then every library again, the order rotated each round), the client's CPU per message
(``getrusage`` in the driver), the worker tree's CPU per message (``/proc``), Redis's
own CPU (``INFO cpu``) and commands per message (``INFO commandstats`` after ``CONFIG
RESETSTAT``, minus the harness's own commands), RabbitMQ's CPU (its ``beam.smp``
process, from ``/proc``, when the node is on this machine), and each library's delivery
guarantee.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import contextlib
import datetime as dt
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import BENCH_DIR, REDIS_DB, ROOT, redis_url, scaled
from _peers import AMQP_URL_ENV, BATCH, COUNTER, DONE, URL_ENV, envs, procstat
from _peers.spec import BY_NAME, FLOORS, LIBRARIES, TABLES, Library

ROWS = ("enqueue", "batch", "e2e1", "e2e")
ROW_TITLES = {
    "enqueue": "enqueue one at a time",
    "batch": "batch of 1,000",
    "e2e1": "end to end, one slot, CLI defaults",
    "e2e": "end to end, default concurrency",
}
#: Issue 18's targets, as same-run ratios: wiretask / floor at least this much.
FLOOR_TARGETS = {"enqueue": 0.6, "batch": 0.5, "e2e1": 1.0}
#: ... and wiretask / best peer at least 1 (aiming 1.2); worker RSS at most this.
RSS_TARGET_MIB = 45.0
MIB = 1024.0
BROKERS = {"redis": ("redis",), "amqp": ("amqp",), "both": ("redis", "amqp")}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply message counts (enqueue 5000, batch 5 x 1000, e2e "
                             "5000 at scale 1; the batch shrinks below scale 1)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs of everything; the best is reported (3)")
    parser.add_argument("--broker", choices=tuple(BROKERS), default="redis",
                        help="the libraries of this broker (default redis: the Redis and "
                             "asyncio-on-Redis tables; amqp: the RabbitMQ ones; both)")
    parser.add_argument("--libs", default=None,
                        help="comma-separated, instead of --broker's: "
                             + ", ".join(lib.name for lib in LIBRARIES))
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--cap", type=float, default=30.0,
                        help="seconds one end-to-end run may take before it is cut and "
                             "reported as what it did (30)")
    parser.add_argument("--redis-url", default=None,
                        help="a Redis to use (else $WIRETASK_BENCH_REDIS_URL or a private one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--install", action="store_true",
                        help="install the peers ([main], [profile]) into this interpreter, "
                             "build arq's venv, and exit")
    options = parser.parse_args()
    if options.libs is None:
        names = [lib.name for lib in LIBRARIES if lib.broker in BROKERS[options.broker]]
    else:
        names = [n.strip() for n in options.libs.split(",") if n.strip()]
    floors = {floor.name for floor in FLOORS.values()}
    unknown = [n for n in names if n not in BY_NAME or n in floors]
    if unknown:
        parser.error(f"--libs: unknown {', '.join(unknown)}")
    # In the order of LIBRARIES: a table's wiretask set-up (the first of them) leads it.
    order = {lib.name: i for i, lib in enumerate(LIBRARIES)}
    options.libraries = [BY_NAME[n] for n in sorted(dict.fromkeys(names), key=order.__getitem__)]
    options.row_list = [r.strip() for r in options.rows.split(",") if r.strip()]
    bad_rows = [r for r in options.row_list if r not in ROWS]
    if bad_rows:
        parser.error(f"--rows: unknown {', '.join(bad_rows)}")
    return options


# -- the processes --------------------------------------------------------------------


def interpreter(lib: Library) -> Path:
    if lib.env == "main":
        return Path(sys.executable)
    return envs.ensure_venv(lib.env)


@dataclass(frozen=True)
class Urls:
    """The Redis URL (with the database) and the RabbitMQ URL (None: no RabbitMQ run)."""

    redis: str
    amqp: str | None = None


def environment(urls: Urls) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", ""),
                                       str(ROOT / "src")) if p)
    extra = {AMQP_URL_ENV: urls.amqp} if urls.amqp else {}
    return {**os.environ, URL_ENV: urls.redis, **extra, "PYTHONPATH": path}


class DriverError(RuntimeError):
    pass


class Driver:
    """A library's client process (``_peers.driver``): one JSON command, one reply."""

    def __init__(self, lib: Library, urls: Urls) -> None:
        self.lib = lib
        self.python = interpreter(lib)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "_peers.driver", lib.module, ",".join(lib.dists)],
            cwd=BENCH_DIR, env=environment(urls), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        hello = self._read(120)
        self.versions: dict[str, str] = hello["versions"]
        self.batch_api: str = hello["batch_api"]

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace")[-3000:]
            state = "no reply in time" if not ready else f"exited ({self.proc.poll()})"
            raise DriverError(f"{self.lib.name} client: {state}\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise DriverError(f"{self.lib.name} client failed:\n{reply.get('error')}")
        return reply

    def send(self, timeout: float = 300, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        with contextlib.suppress(DriverError, OSError, ValueError):
            self.send(timeout=30, op="close")
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Any  # the temporary file its stdout and stderr go to

    def tail(self) -> str:
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace")[-3000:])


@contextlib.contextmanager
def worker(lib: Library, command: Sequence[str], urls: Urls) -> Iterator[Worker]:
    """The library's worker, in its own session (process group); on exit: SIGTERM to
    its leader, then SIGKILL to whatever of the group is left."""
    python = interpreter(lib)
    argv = [part.format(bin=python.parent, python=python, url=urls.redis) for part in command]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, cwd=BENCH_DIR, env=environment(urls),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield Worker(proc, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- Redis-side accounting --------------------------------------------------------------


class RedisStats:
    """Redis CPU and commands between ``reset()`` and ``read()``, minus the harness's own
    commands (counted by name in ``own``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.own: collections.Counter[str] = collections.Counter()
        self.cpu0 = 0.0

    def _cpu(self) -> float:
        info = self.client.info("cpu")
        self.own["info"] += 1
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def reset(self) -> None:
        self.client.config_resetstat()
        self.own.clear()
        self.own["config|resetstat"] += 1
        self.cpu0 = self._cpu()

    def read(self) -> tuple[float, int]:
        """(Redis CPU seconds, commands) since ``reset``."""
        cpu = self._cpu() - self.cpu0
        # INFO's own call is counted after it answers, so this one is not in its figures.
        stats = self.client.info("commandstats")
        total = 0
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            total += int(value["calls"]) - self.own.get(name, 0)
        return cpu, total


def rabbitmq_pid(url: str) -> int | None:
    """The ``beam.smp`` of the RabbitMQ node listening on ``url``'s port, if it runs on
    this machine (``scripts/rabbitmq.sh`` sets ``RABBITMQ_NODE_PORT`` in its
    environment), else None."""
    port = (urllib.parse.urlsplit(url).port or 5672)
    wanted = f"RABBITMQ_NODE_PORT={port}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/comm", encoding="ascii", errors="replace") as f:
                if not f.read().startswith("beam"):
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    return int(entry)
    return None


class BrokerCPU:
    """RabbitMQ's CPU seconds between ``reset()`` and ``read()`` (None: not measured)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu0 = 0.0

    def reset(self) -> None:
        if self.pid is not None:
            self.cpu0 = procstat.cpu_seconds(self.pid)

    def read(self) -> float | None:
        return None if self.pid is None else procstat.cpu_seconds(self.pid) - self.cpu0


# -- measurements -----------------------------------------------------------------------


@dataclass
class Run:
    """One library's run of one row."""

    count: int
    wall: float
    #: Messages the client sent (``count`` is what completed, less when capped).
    sent: int
    client_cpu: float
    redis_cpu: float
    commands: int
    #: RabbitMQ's CPU (None: Redis is the broker, or the node's process is not here).
    broker_cpu: float | None = None
    worker_cpu: float | None = None
    rss_kib: int | None = None
    pss_kib: int | None = None
    processes: int | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall > 0 else float("inf")


@dataclass
class Bench:
    client: redis.Redis
    urls: Urls
    drivers: dict[str, Driver]
    n_enqueue: int
    batch_size: int
    batch_times: int
    n_e2e: int
    cap: float
    rabbitmq: BrokerCPU
    stats: RedisStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = RedisStats(self.client)

    def reset_stats(self) -> None:
        self.stats.reset()
        self.rabbitmq.reset()

    def broker_cpu(self, lib: Library) -> float | None:
        return self.rabbitmq.read() if lib.broker == "amqp" else None

    def prepare(self, lib: Library) -> Driver:
        self.client.flushdb()
        driver = self.drivers[lib.name]
        driver.send(op="reset")
        return driver

    @staticmethod
    def check_queued(driver: Driver, sent: int) -> str:
        """What was sent is in the library's queue (asked after the Redis figures are read,
        so the question is not counted): "", or the note that says what the queue held
        (asked again a second later) instead. A note, not an exception, so that a long
        run reports the other libraries and this run's figures beside it."""
        queued = driver.send(op="queued")["queued"]
        if queued == sent:
            return ""
        time.sleep(1)
        again = driver.send(op="queued")["queued"]
        return f"QUEUE HELD {queued} OF {sent} SENT ({again} a second later)"

    def enqueue(self, lib: Library) -> Run:
        driver = self.prepare(lib)
        self.reset_stats()
        reply = driver.send(op="enqueue", n=self.n_enqueue)
        broker_cpu = self.broker_cpu(lib)
        redis_cpu, commands = self.stats.read()
        note = self.check_queued(driver, self.n_enqueue)
        return Run(self.n_enqueue, reply["wall"], self.n_enqueue, reply["cpu"], redis_cpu,
                   commands, broker_cpu=broker_cpu, note=note)

    def batch(self, lib: Library) -> Run:
        driver = self.prepare(lib)
        self.reset_stats()
        reply = driver.send(op="batch", n=self.batch_size, times=self.batch_times)
        broker_cpu = self.broker_cpu(lib)
        redis_cpu, commands = self.stats.read()
        sent = self.batch_size * self.batch_times
        note = self.check_queued(driver, sent)
        return Run(sent, reply["wall"], sent, reply["cpu"], redis_cpu, commands,
                   broker_cpu=broker_cpu, note=note)

    def _wait_done(self, running: Worker, deadline: float, lib: Library) -> bool:
        """BLPOP ``DONE`` until it arrives (True) or ``deadline`` (False)."""
        while time.monotonic() < deadline:
            self.stats.own["blpop"] += 1
            if self.client.blpop([DONE], timeout=0.5) is not None:
                return True
            if running.proc.poll() is not None:
                raise RuntimeError(f"{lib.name} worker exited with {running.proc.returncode}:"
                                   f"\n{running.tail()}")
        return False

    def end_to_end(self, lib: Library, command: Sequence[str]) -> Run:
        driver = self.prepare(lib)
        n = self.n_e2e
        with worker(lib, command, self.urls) as running, \
                procstat.MemorySampler(running.proc.pid) as memory:
            pid = running.proc.pid
            # Warm-up: one message through, so the worker is up and consuming.
            self.client.set(COUNTER, -1)
            driver.send(op="warmup")
            if not self._wait_done(running, time.monotonic() + 90, lib):
                # Reported as a run that did nothing (a note in the table, the worker's
                # log on stderr), so that the other libraries' runs still report.
                queued = driver.send(op="queued")["queued"]
                print(f"{lib.name} worker ran no warm-up task in 90 s (its queue holds "
                      f"{queued}); its log:\n{running.tail()}", file=sys.stderr)
                return Run(0, 90.0, 1, 0.0, 0.0, 0,
                           note=f"NO WARM-UP in 90 s (its queue held {queued})")
            self.client.set(COUNTER, -n)
            self.client.delete(DONE)
            self.reset_stats()
            worker_cpu0 = procstat.cpu_seconds(pid)
            reply = driver.send(timeout=self.cap + 60, op="publish", n=n)
            finished = self._wait_done(running, reply["start"] + self.cap, lib)
            end = time.monotonic()
            worker_cpu = procstat.cpu_seconds(pid) - worker_cpu0
            broker_cpu = self.broker_cpu(lib)
            redis_cpu, commands = self.stats.read()
            pss = procstat.pss_kib(pid)
            time.sleep(0.2)
            left = int(self.client.get(COUNTER) or 0)
        done = n if finished else n + left
        note = ""
        if not finished:
            note = f"CAPPED at {self.cap:g} s: {done}/{n} done"
        elif left > 0:
            note = f"DUPLICATES: {left} extra runs"
        return Run(done, end - reply["start"], n, reply["cpu"], redis_cpu, commands,
                   broker_cpu=broker_cpu, worker_cpu=worker_cpu,
                   rss_kib=memory.peak.rss_kib, pss_kib=pss,
                   processes=memory.peak.processes, note=note)


# -- the report -------------------------------------------------------------------------


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.rate)


def notes(runs: list[Run]) -> str:
    """The best run's note, and what went wrong in the others (a cut run excepted: the
    best shows whether runs are cut)."""
    top = best(runs)
    found = [top.note] if top.note else []
    found += [f"round {i}: {run.note}" for i, run in enumerate(runs, 1)
              if run is not top and run.note and not run.note.startswith("CAPPED")]
    return "; ".join(found)


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _per(value: float | None, count: int) -> str:
    return "-" if value is None or count == 0 else f"{value / count * 1e6:,.0f}"


def _ratio(ours: float, theirs: float | None) -> str:
    return "-" if not theirs else f"{ours / theirs:.2f}x"


def _commands(commands: int, count: int) -> str:
    if count == 0:
        return "-"
    per = commands / count
    return f"{per:.2f}" if per >= 0.1 or per == 0 else f"{per:.3f}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / MIB:.1f}"


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(render(line) for line in lines)]


def members(name: str, results: dict[str, dict[str, list[Run]]],
            libs: Sequence[Library]) -> list[Library]:
    """The libraries of table ``name`` that ran (its floor last)."""
    ran = {name for per_lib in results.values() for name in per_lib}
    floor = FLOORS.get(name)
    chosen = [lib for lib in libs
              if name in lib.tables and lib.name in ran and lib not in FLOORS.values()]
    return chosen + ([floor] if floor is not None and floor.name in ran else [])


def table_report(name: str, results: dict[str, dict[str, list[Run]]],
                 libs: Sequence[Library], ours: Library,
                 drivers: dict[str, Driver]) -> tuple[list[str], list[str]]:
    """One table's summary and rows, and its ``ratio:`` lines. The Redis table's titles
    carry no prefix; the others' start with the table's title."""
    prefix = "" if name == "redis" else f"{TABLES[name]}: "
    floor_lib = FLOORS.get(name)
    on_amqp = any(lib.broker == "amqp" for lib in libs)
    out: list[str] = []
    summary: list[list[str]] = []
    ratio_lines: list[str] = []
    wt = ours.name
    for row, all_runs in results.items():
        per_lib = {lib.name: all_runs[lib.name] for lib in libs if lib.name in all_runs}
        bests = {lib_name: best(runs) for lib_name, runs in per_lib.items()}
        peers = {n: run for n, run in bests.items() if BY_NAME[n].peer}
        top = max(peers.items(), key=lambda item: item[1].rate) if peers else None
        floor = bests.get(floor_lib.name) if floor_lib is not None else None
        e2e = row.startswith("e2e")
        out += [f"### {prefix}{ROW_TITLES[row]}", ""]
        header = ["library", "worker" if e2e else "API", "msg/s", "vs best peer", "vs floor",
                  "client CPU us/msg"]
        if e2e:
            header += ["worker CPU us/msg"]
        if on_amqp:
            header += ["RabbitMQ CPU us/msg"]
        header += ["Redis CPU us/msg", "Redis cmds/msg"]
        if e2e:
            header += ["peak RSS MiB (procs)", "PSS MiB"]
        header += ["note"]
        lines = []
        for lib in libs:
            run = bests.get(lib.name)
            if run is None:
                continue
            if e2e:
                what = lib.one_slot_shape if row == "e2e1" else lib.default_shape
            elif row == "enqueue":
                what = "one LPUSH" if lib is floor_lib else "single call"
            else:
                what = drivers[lib.name].batch_api
            cells = [lib.name, what, _rate(run.rate),
                     _ratio(run.rate, top[1].rate if top else None),
                     _ratio(run.rate, floor.rate if floor else None),
                     _per(run.client_cpu, run.sent)]
            if e2e:
                cells.append(_per(run.worker_cpu, run.count))
            if on_amqp:
                cells.append(_per(run.broker_cpu, run.count))
            cells += [_per(run.redis_cpu, run.count), _commands(run.commands, run.count)]
            if e2e:
                cells.append(f"{_mib(run.rss_kib)} ({run.processes})")
                cells.append(_mib(run.pss_kib))
            cells.append(notes(per_lib[lib.name]))
            lines.append(cells)
        out += [*table(header, lines), ""]
        mine = bests.get(wt)
        if mine is None:
            continue
        target = ">= 1x best peer (aim 1.2x)"
        met = top is None or mine.rate >= top[1].rate
        if floor_lib is not None and row in FLOOR_TARGETS:
            target += f", >= {FLOOR_TARGETS[row]:g}x floor"
            met = met and floor is not None and mine.rate >= FLOOR_TARGETS[row] * floor.rate
        summary.append([
            ROW_TITLES[row], _rate(mine.rate),
            f"{top[0]} {_rate(top[1].rate)}" if top else "-",
            _rate(floor.rate) if floor else "-",
            _ratio(mine.rate, top[1].rate if top else None),
            _ratio(mine.rate, floor.rate if floor else None), target, "yes" if met else "NO",
        ])
        if top:
            ratio_lines.append(f"ratio: {prefix}{ROW_TITLES[row]}: {wt} / best peer "
                               f"({top[0]}): {mine.rate / top[1].rate:.2f}")
        if floor:
            ratio_lines.append(f"ratio: {prefix}{ROW_TITLES[row]}: {wt} / floor: "
                               f"{mine.rate / floor.rate:.2f}")
    in_table = {lib.name for lib in libs}
    floor_name = floor_lib.name if floor_lib is not None else None
    for row in ("e2e1", "e2e"):
        if row not in results:
            continue
        peaks = {lib_name: max(r.rss_kib or 0 for r in runs)
                 for lib_name, runs in results[row].items() if lib_name in in_table}
        if wt not in peaks:
            continue
        peer_peaks = {n: v for n, v in peaks.items() if BY_NAME[n].peer}
        low = min(peer_peaks.items(), key=lambda item: item[1]) if peer_peaks else None
        ok = peaks[wt] / MIB <= RSS_TARGET_MIB and (low is None or peaks[wt] <= low[1])
        floor_peak = peaks.get(floor_name) if floor_name else None
        summary.append([
            f"worker RSS, peak MiB ({'one slot' if row == 'e2e1' else 'default'})",
            _mib(peaks[wt]), f"{low[0]} {_mib(low[1])}" if low else "-",
            _mib(floor_peak),
            f"{peaks[wt] / low[1]:.2f}x" if low else "-",
            f"{peaks[wt] / floor_peak:.2f}x" if floor_peak else "-",
            f"<= {RSS_TARGET_MIB:g} MiB, <= best peer", "yes" if ok else "NO",
        ])
    if summary:
        out[0:0] = [f"### {prefix}Summary ({wt}, same run)", "",
                    *table(["row", wt, "best peer", "floor", f"{wt} / best peer",
                            f"{wt} / floor", "target", "met?"], summary), ""]
    return out, ratio_lines


def report(results: dict[str, dict[str, list[Run]]], libs: Sequence[Library],
           drivers: dict[str, Driver], facts: str) -> list[str]:
    out = [f"## Peer benchmark ({facts})", ""]
    ratio_lines: list[str] = []
    shown: list[Library] = []
    for table_name in TABLES:
        in_table = members(table_name, results, libs)
        ours = [lib for lib in in_table if not lib.peer and lib is not FLOORS.get(table_name)]
        if not ours:  # a table is shown when its wiretask set-up ran
            continue
        lines, ratios = table_report(table_name, results, in_table, ours[0], drivers)
        out += lines
        ratio_lines += ratios
        shown += [lib for lib in in_table if lib not in shown]
    out += ["### Delivery guarantees (read in each library's source; paths in its wheel)", ""]
    out += table(["library", "versions", "guarantee", "read in"], [
        [lib.name, ", ".join(f"{k} {v}" for k, v in drivers[lib.name].versions.items()),
         lib.guarantee, lib.source] for lib in libs if lib in shown])
    out += ["", *ratio_lines]
    return out


def facts_line(client: redis.Redis, drivers: dict[str, Driver], urls: Urls) -> str:
    server = client.info("server")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rabbitmq = ""
    if urls.amqp:
        from amqp_common import rabbitmq_version  # noqa: PLC0415 - only with RabbitMQ

        rabbitmq = f"; RabbitMQ {rabbitmq_version(urls.amqp)}"
    return (f"{dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, "
            f"Linux {platform.release()}; Python {platform.python_version()}; redis-server "
            f"{server['redis_version']}; redis-py {redis.__version__} (arq's venv: redis "
            f"{drivers['arq'].versions.get('redis', '?') if 'arq' in drivers else '-'})"
            f"{rabbitmq}; load average {load}")


# -- main -------------------------------------------------------------------------------


def install() -> None:
    for section in ("main", "profile"):
        print(f"peers: installing [{section}] into {sys.executable}", file=sys.stderr)
        envs.install(section, sys.executable)
    envs.ensure_venv("arq")


def compile_sources() -> None:
    """Byte-compile wiretask's source tree and the bench's modules, as installing a wheel
    does (pip compiles every peer's modules when it installs them): an editable checkout
    run with ``PYTHONDONTWRITEBYTECODE`` set would otherwise compile every module from
    source in every process, which costs each wiretask process ~1 MiB of RSS (the
    compiler's garbage) and its start-up time, and no peer."""
    for tree in (ROOT / "src" / "wiretask", BENCH_DIR / "_peers"):
        if not compileall.compile_dir(str(tree), quiet=1):
            raise SystemExit(f"peers: could not byte-compile {tree}")


def main() -> None:
    options = parse()
    if options.install:
        install()
        return
    scale = options.scale
    n_enqueue = scaled(5000, scale, minimum=20)
    batch_size = min(BATCH, scaled(BATCH, scale, minimum=10))
    batch_times = max(1, round(5 * min(scale, 1.0)))
    n_e2e = scaled(5000, scale, minimum=30)
    libs: list[Library] = options.libraries
    # The floors of the tables that are shown: those whose wiretask set-up runs.
    floors = [floor for name, floor in FLOORS.items()
              if any(name in lib.tables and not lib.peer for lib in libs)]
    compile_sources()
    base = options.redis_url or None
    with contextlib.ExitStack() as stack:
        if base is None:
            base = stack.enter_context(redis_url())
        amqp = None
        if any(lib.broker == "amqp" for lib in libs):
            from amqp_common import amqp_url  # noqa: PLC0415 - only with RabbitMQ

            amqp = stack.enter_context(amqp_url())
        urls = Urls(f"{base.rstrip('/')}/{REDIS_DB}", amqp)
        client = redis.Redis.from_url(urls.redis)
        stack.callback(client.close)
        client.flushdb()
        stack.callback(client.flushdb)
        drivers: dict[str, Driver] = {}
        for lib in [*libs, *floors]:
            drivers[lib.name] = driver = Driver(lib, urls)
            stack.callback(driver.close)
        bench = Bench(client, urls, drivers, n_enqueue, batch_size, batch_times, n_e2e,
                      options.cap, BrokerCPU(rabbitmq_pid(amqp) if amqp else None))
        print(f"peers: {', '.join(lib.name for lib in libs)}; enqueue {n_enqueue}, batch "
              f"{batch_times} x {batch_size}, e2e {n_e2e}; best of {options.repeat} "
              "interleaved runs", file=sys.stderr)
        # Untimed: every client sends once through each API (imports, connections).
        everyone = [*libs, *floors]
        for lib in everyone:
            bench.enqueue(lib)
            bench.batch(lib)
        results: dict[str, dict[str, list[Run]]] = {row: {} for row in options.row_list}
        for round_ in range(max(options.repeat, 1)):
            shift = round_ % len(everyone)
            order = everyone[shift:] + everyone[:shift]
            for row in options.row_list:
                for lib in order:
                    if row == "enqueue":
                        run = bench.enqueue(lib)
                    elif row == "batch":
                        run = bench.batch(lib)
                    else:
                        run = bench.end_to_end(lib, lib.one_slot if row == "e2e1"
                                               else lib.default)
                    results[row].setdefault(lib.name, []).append(run)
                    extra = f" [{run.note}]" if run.note else ""
                    print(f"round {round_ + 1} {row} {lib.name}: {run.rate:,.0f} msg/s "
                          f"({run.count} in {run.wall:.2f} s){extra}", file=sys.stderr)
        lines = report(results, [*libs, *floors], drivers, facts_line(client, drivers, urls))
    text = "\n".join(lines) + "\n"
    print(text)
    if options.out is not None:
        options.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
