"""Shared pieces of the benchmarks: payloads, the timer, the table, a private Redis.

Method (every bench): each operation is a zero-argument function. It is run ``number``
times per *repeat*, and the repeats of the wiretask side and of its reference are
**interleaved** (wt, ref, wt, ref, ...) so that a change in machine load hits both
sides alike. A repeat's time is read with ``time.perf_counter_ns`` around the whole
loop and divided by ``number``; the reported figure is the **minimum** over repeats
(``timeit``'s rule: on a shared machine the least-disturbed run is the best estimate of
the code's own cost; many short repeats give each side a fair chance of one).
The garbage collector stays on (a real call pays for its garbage). Nothing is cached
across iterations that a real call would not cache: every call makes a fresh uuid4
task id and reads the real clock.

Benchmarks print ratios; they never assert on them. ``tests/test_bench_smoke.py`` runs
each one with a tiny iteration count so that they keep working.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import kombu
import msgpack
import redis

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

# -- payloads -------------------------------------------------------------------------

#: SMALL: a typical call; three positional arguments and two keyword arguments.
SMALL_ARGS: tuple[Any, ...] = (
    42,
    "user@example.com",
    {"plan": "pro", "seats": 5, "trial": False, "tags": ["a", "b"]},
)
SMALL_KWARGS: dict[str, Any] = {"notify": True, "retries_left": 3}


def _large_records(count: int = 700) -> list[dict[str, Any]]:
    """Deterministic records (no randomness): ~46 KB as msgpack for 700 of them."""
    records = []
    for i in range(count):
        records.append(
            {
                "id": i + 1,
                "name": f"Widget {i:04d}",
                "price": round(1.25 + (i * 7919 % 10_000) / 100, 2),
                "qty": (i * 31) % 500,
                "sku": f"SKU-{(i * 2_654_435_761) % 10**5:05d}",
                "active": i % 3 != 0,
            }
        )
    return records


#: LARGE: one argument, a list of 700 records ``{id, name, price, qty, sku, active}``.
LARGE_ARGS: tuple[Any, ...] = (_large_records(),)
LARGE_KWARGS: dict[str, Any] = {}

#: The body embed of a call without callbacks (what both Celery and wiretask send).
EMPTY_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


# -- timing ---------------------------------------------------------------------------


def time_per_op(fn: Callable[[], object], number: int) -> float:
    """Microseconds per call of ``fn`` over one loop of ``number`` calls."""
    start = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - start) / number / 1000.0


def compare(
    ours: Callable[[], object],
    reference: Callable[[], object],
    *,
    number: int,
    repeat: int,
    between: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """Best (minimum) µs/op of ``ours`` and of ``reference``, their repeats interleaved.

    ``between`` runs after every timed loop, untimed (e.g. to empty the queues).
    """
    for fn in (ours, reference):  # warm up: imports, caches of the interpreter, lazy setup
        time_per_op(fn, max(1, number // 10))
        if between is not None:
            between()
    gc.collect()
    ours_times: list[float] = []
    reference_times: list[float] = []
    for _ in range(repeat):
        for fn, times in ((ours, ours_times), (reference, reference_times)):
            times.append(time_per_op(fn, number))
            if between is not None:
                between()
    return min(ours_times), min(reference_times)


# -- results and the table ------------------------------------------------------------


@dataclass
class Row:
    """One comparison.

    ``kind="speedup"``: the ratio is reference / wiretask ("x faster") and the target
    is a minimum. ``kind="overhead"``: the ratio is wiretask / reference ("x its time")
    and the target is a maximum. ``target=None``: informational.
    """

    operation: str
    ours_us: float
    reference_us: float
    reference: str
    kind: str = "speedup"
    target: float | None = None
    #: A floor on wiretask's own rate (operations per second), where the target is one.
    rate_target: float | None = None

    @property
    def ratio(self) -> float:
        if self.kind == "speedup":
            return self.reference_us / self.ours_us if self.ours_us else float("inf")
        return self.ours_us / self.reference_us if self.reference_us else float("inf")

    @property
    def ratio_text(self) -> str:
        if self.kind == "overhead":
            return f"{self.ratio:.2f}x its time"
        if self.ratio >= 1:
            return f"{self.ratio:.2f}x faster"
        return f"{1 / self.ratio:.2f}x slower"

    @property
    def ours_rate(self) -> float:
        return 1e6 / self.ours_us if self.ours_us else float("inf")

    @property
    def target_text(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(
                f">= {self.target:g}x" if self.kind == "speedup" else f"<= {self.target:g}x"
            )
        if self.rate_target is not None:
            parts.append(f">= {self.rate_target:,.0f}/s")
        return ", ".join(parts) or "-"

    @property
    def met(self) -> str:
        if self.target is None and self.rate_target is None:
            return "-"
        ok = True
        if self.target is not None:
            ok = self.ratio >= self.target if self.kind == "speedup" else self.ratio <= self.target
        if self.rate_target is not None:
            ok = ok and self.ours_rate >= self.rate_target
        return "yes" if ok else "NO"


def _fmt_us(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _fmt_rate(us: float) -> str:
    return f"{1e6 / us:,.0f}" if us else "inf"


def print_table(title: str, rows: Sequence[Row], *, unit: str = "us/op") -> None:
    """A Markdown table (pasteable into the README) of ``rows``. ``unit="msg/s"`` shows
    rates (1e6 / us) instead of times."""
    fmt = _fmt_rate if unit.endswith("/s") else _fmt_us
    header = ["operation", f"wiretask {unit}", "reference", f"ref {unit}", "ratio", "target",
              "met?"]
    lines = [
        [r.operation, fmt(r.ours_us), r.reference, fmt(r.reference_us), r.ratio_text,
         r.target_text, r.met]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(f"\n{title}\n")
    print(render(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(render(line))
    print()


def print_ratio_lines(rows: Sequence[Row]) -> None:
    """One grep-able ``ratio:`` line per row (the smoke test looks for these)."""
    for r in rows:
        print(f"ratio: {r.operation}: {r.ratio:.2f} ({r.ratio_text}; target {r.target_text}; "
              f"met {r.met})")


def machine_facts() -> str:
    return (
        f"{dt.date.today().isoformat()} | {platform.machine()} {os.cpu_count()} cores | "
        f"Python {platform.python_version()} | celery {celery.__version__}, "
        f"kombu {kombu.__version__}, redis-py {redis.__version__}, "
        f"msgpack {'.'.join(map(str, msgpack.version))} | "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


# -- command line -----------------------------------------------------------------------


def arguments(description: str, *, default_scale: float = 1.0) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--scale", type=float, default=default_scale,
        help="multiply iteration and message counts (the smoke test uses a tiny scale)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="repeats per measurement")
    return parser.parse_args()


def scaled(count: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(count * scale))


# -- a private Redis ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: The database the Redis benchmarks use (and empty, before and after).
REDIS_DB = int(os.environ.get("WIRETASK_BENCH_REDIS_DB", "9"))


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``$WIRETASK_BENCH_REDIS_URL``, else a private ``redis-server`` on a free port on
    127.0.0.1 (no persistence), stopped on exit. The URL has no database number."""
    url = os.environ.get("WIRETASK_BENCH_REDIS_URL")
    if url:
        yield url.rstrip("/")
        return
    binary = os.environ.get("WIRETASK_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or set WIRETASK_BENCH_REDIS_URL")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="wiretask-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "no", "--dir", workdir, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
