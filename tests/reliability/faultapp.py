"""The app of the fault tests: tasks that leave a trace in files, so a test can count
every run of every task from outside the processes that ran them (a worker killed with
SIGKILL takes its memory with it).

Worker programs and process-pool children import it as ``reliability.faultapp:app``
(``tests/`` on the path); its broker and backend come from ``$WIRETASK_BROKER_URL``
and ``$WIRETASK_RESULT_BACKEND``, or from ``app.conf`` (sent to pool children).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from wiretask.app import App

app = App("faultapp")


def _append(path: str, line: str) -> None:
    # One write() of a short line on an O_APPEND file: atomic between processes.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@app.task
def record(path: str, tag: str, seconds: float = 0.0) -> str:
    """Take ``seconds``, then append ``tag`` to the file ``path``: one line per run."""
    if seconds:
        time.sleep(seconds)
    _append(path, tag)
    return tag


@app.task(bind=True)
def hold(self: Any, folder: str, seconds: float) -> str:
    """Write ``<id>.pid`` (this process's pid) when it starts, sleep, then ``<id>.done``."""
    base = Path(folder) / str(self.request.id)
    base.with_suffix(".pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    _append(str(base.with_suffix(".done")), str(os.getpid()))
    return "held"


@app.task
def big(payload: str, path: str) -> int:
    """Take a large argument; record that it ran, with its length."""
    _append(path, str(len(payload)))
    return len(payload)
