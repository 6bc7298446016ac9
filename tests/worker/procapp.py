"""An app whose tasks run in other processes: the process pool's children and a worker
started as a separate program import it as ``worker.procapp`` (``tests/`` on the path).

Tests point it at a SQLite file through ``app.conf`` (sent to the pool's children) or
``WIRETASK_BROKER_URL`` (read by a separate worker program).
"""

from __future__ import annotations

import os
import time
from typing import Any

from wiretask.app import App
from wiretask.errors import SoftTimeLimitExceeded

app = App("procapp")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def whoami(self: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "hostname": self.request.hostname}


@app.task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


@app.task
def polite(seconds: float) -> str:
    """Sleeps in one C call (a thread pool could not interrupt it); a SIGALRM can."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


@app.task
def crash(code: int) -> None:
    os._exit(code)


@app.task
def report(task_id: str) -> str:
    return f"reported {task_id}"


_leaked: list[bytearray] = []


@app.task
def hog(mib: int) -> int:
    """Keeps ``mib`` MiB more (a leaking task: the child's resident memory stays above
    it) and returns its pid."""
    block = bytearray(mib * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    _leaked.append(block)
    return os.getpid()
