"""The app of the soak benchmark (``bench/soak.py``), and its worker program.

The broker comes from ``$WIRETASK_SOAK_URL``, the backend from
``$WIRETASK_SOAK_BACKEND`` (default: the broker's URL); each run of ``soak.run``
appends its number to ``$WIRETASK_SOAK_LOG`` (one ``write`` of a short line on an
``O_APPEND`` file: atomic between processes), so the benchmark counts every execution
from outside the workers, even of a worker it killed. ``python bench/_soak_app.py
--pool threads --concurrency 4`` runs one worker.
"""

from __future__ import annotations

import argparse
import logging
import os

from wiretask.app import App
from wiretask.worker import Worker

URL = os.environ.get("WIRETASK_SOAK_URL", "sqlite:///soak.db")
BACKEND = os.environ.get("WIRETASK_SOAK_BACKEND", URL)
LOG = os.environ.get("WIRETASK_SOAK_LOG", "soak.log")
TASK = "soak.run"

app = App("soak", broker=URL, backend=BACKEND)


@app.task(name=TASK)
def run(number: int) -> int:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % number)
    finally:
        os.close(fd)
    return number


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a soak worker")
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    Worker(app, pool=options.pool, concurrency=options.concurrency,
           app_path="_soak_app:app", shutdown_timeout=10).run()
