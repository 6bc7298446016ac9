"""Run a worker for ``worker.procapp`` as its own program, as ``wiretask worker`` would:
``python -m worker.run_worker CONCURRENCY`` with ``WIRETASK_BROKER_URL`` set."""

from __future__ import annotations

import logging
import sys

from wiretask.worker import Worker

from .procapp import app

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    Worker(app, concurrency=int(sys.argv[1]), shutdown_timeout=10).run()
