"""An app for the control tests whose tasks also run in other processes (the process
pool's children import it as ``control.ctlapp``; ``tests/`` is on the path)."""

from __future__ import annotations

import time
from pathlib import Path

from wiretask.app import App

app = App("ctlapp")


@app.task(name="ctl.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="ctl.hang")
def hang(marker: str, seconds: float) -> str:
    """Write ``marker`` (a file), then sleep: a task that is surely running."""
    Path(marker).write_text("started")
    time.sleep(seconds)
    return "woke up"
