"""Run a worker for ``reliability.faultapp`` as its own program, as ``wiretask worker``
would: ``python -m reliability.run_worker POOL CONCURRENCY [PREFETCH]``, with the broker
in ``$WIRETASK_BROKER_URL`` (and the result backend in ``$WIRETASK_RESULT_BACKEND``);
``$WIRETASK_TEST_MAX_BODY`` sets ``max_decompressed_size`` (bytes)."""

from __future__ import annotations

import logging
import os
import sys

from wiretask.worker import Worker

from .faultapp import app

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    pool, concurrency = sys.argv[1], int(sys.argv[2])
    prefetch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    if os.environ.get("WIRETASK_TEST_MAX_BODY"):
        app.conf.max_decompressed_size = int(os.environ["WIRETASK_TEST_MAX_BODY"])
    Worker(app, pool=pool, concurrency=concurrency, prefetch=prefetch,
           app_path="reliability.faultapp:app", shutdown_timeout=10).run()
