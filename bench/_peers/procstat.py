"""CPU time and memory of a worker's process tree, read from ``/proc`` (Linux).

A worker is its CLI's process and every descendant (Celery's prefork children, Dramatiq's
and taskiq's worker processes, RQ's per-job work horses). Its CPU time is the sum over
the live tree of ``utime + stime + cutime + cstime`` (``/proc/<pid>/stat``): a child
that exits and is reaped moves its time into its parent's ``cutime``/``cstime``, so the
sum is continuous across forks and exits. Memory is sampled in a thread: the peak of
the tree's summed ``VmRSS``, and the tree's summed ``Pss`` (``smaps_rollup``: shared
pages divided among the processes sharing them) when asked.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``/proc/<pid>/task/<tid>/children``)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(
                    f"/proc/{current}/task/{tid}/children", encoding="ascii"
                ) as f:
                    pending.extend(int(child) for child in f.read().split())
    return found


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        text = f.read()
    # The command name (field 2) may hold spaces; the fields after it are plain.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``'s tree, reaped children included."""
    ticks = 0
    for process in tree(pid):
        with contextlib.suppress(OSError, ValueError):
            fields = _stat_fields(process)
            # utime, stime, cutime, cstime are fields 14-17 (1-based); here 11-14.
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / _TICK


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> tuple[int, int]:
    """The tree's summed resident set (KiB) and its process count."""
    total, count = 0, 0
    for process in tree(pid):
        with contextlib.suppress(OSError, ValueError):
            total += _status_kib(process, "VmRSS:")
            count += 1
    return total, count


def pss_kib(pid: int) -> int:
    """The tree's summed proportional set size (KiB)."""
    total = 0
    for process in tree(pid):
        with contextlib.suppress(OSError, ValueError), open(
            f"/proc/{process}/smaps_rollup", encoding="ascii", errors="replace"
        ) as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


@dataclass
class Peak:
    rss_kib: int = 0
    processes: int = 0


class MemorySampler:
    """Samples the tree's RSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        rss, count = rss_kib(self.pid)
        if rss > self.peak.rss_kib:
            self.peak.rss_kib = rss
        self.peak.processes = max(self.peak.processes, count)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
