"""Helpers of the fault tests: worker programs started and killed for real, processes
checked from outside, every task counted from the files the tasks write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie waiting to be reaped is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def worker_env(broker_url: str, backend_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["WIRETASK_BROKER_URL"] = broker_url
    env["WIRETASK_RESULT_BACKEND"] = backend_url or broker_url
    return env


@contextmanager
def worker_program(broker_url: str, pool: str = "threads", concurrency: int = 2, *,
                   prefetch: int = 1, backend_url: str | None = None,
                   log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A worker program (``reliability.run_worker``); killed (SIGKILL) on the way out if
    the test did not stop it, so that no process outlives the test."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "reliability.run_worker", pool, str(concurrency), str(prefetch)],
        env=worker_env(broker_url, backend_url), stdout=out, stderr=out,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if log is not None:
            out.close()


def runs(path: Path) -> Counter[str]:
    """How many times each tag was recorded in ``path`` (``faultapp.record``)."""
    if not path.exists():
        return Counter()
    return Counter(line for line in path.read_text().splitlines() if line)
