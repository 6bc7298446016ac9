"""The apps the end-to-end benchmark runs: one wiretask app and one Celery app, same task.

Imported by ``bench/end_to_end.py`` (to publish) and by the worker processes it starts:
``celery -A _e2e_apps:celery_app worker -P solo`` and ``python bench/_e2e_apps.py`` (a
wiretask ``Worker``: ``--pool solo`` or a thread pool). The Redis URL comes from
``$WIRETASK_BENCH_E2E_URL``. The task increments a Redis counter, so the benchmark
counts completions without polling result keys; both workers also store the result in
their Redis result backend, as they would by default.

``bench/amqp_end_to_end.py`` runs the same apps with the broker on RabbitMQ:
``$WIRETASK_BENCH_E2E_BROKER`` (default: the Redis URL) and its own queue and counter
names (``$WIRETASK_BENCH_E2E_NAMES``, default ``bench.e2e``).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import redis
from celery import Celery

from wiretask.app import App
from wiretask.worker import Worker

URL = os.environ.get("WIRETASK_BENCH_E2E_URL", "redis://127.0.0.1:6379/9")
BROKER = os.environ.get("WIRETASK_BENCH_E2E_BROKER", URL)
NAMES = os.environ.get("WIRETASK_BENCH_E2E_NAMES", "bench.e2e")
TASK_NAME = "bench.e2e.small"
WT_QUEUE = f"{NAMES}.wiretask"
CELERY_QUEUE = f"{NAMES}.celery"
WT_COUNTER = f"{NAMES}.done.wiretask"
CELERY_COUNTER = f"{NAMES}.done.celery"

_counter = redis.Redis.from_url(URL)

wiretask_app = App("bench", broker=BROKER, backend=URL, task_default_queue=WT_QUEUE)


@wiretask_app.task(name=TASK_NAME)
def small(user_id: int, email: str, account: dict[str, Any], notify: bool = False,
          retries_left: int = 0) -> int:
    _counter.incr(WT_COUNTER)
    return user_id


celery_app = Celery("bench", broker=BROKER, backend=URL, set_as_current=False)
celery_app.conf.update(
    task_default_queue=CELERY_QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@celery_app.task(name=TASK_NAME, shared=False)
def celery_small(user_id: int, email: str, account: dict[str, Any], notify: bool = False,
                 retries_left: int = 0) -> int:
    _counter.incr(CELERY_COUNTER)
    return user_id


def main() -> None:
    """Run the wiretask worker until SIGTERM."""
    parser = argparse.ArgumentParser(description="wiretask worker for the e2e benchmark")
    parser.add_argument("--pool", choices=("threads", "solo"), default="threads")
    parser.add_argument("--concurrency", type=int, default=4, help="threads pool only")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="messages reserved beyond the running ones (default: the "
                        "worker's, Celery's prefetch multiplier 4 x concurrency)")
    parser.add_argument("--events", action="store_true",
                        help="send Celery's task events (-E)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    concurrency = None if options.pool == "solo" else options.concurrency
    # Heartbeats off, as the Celery side runs --without-heartbeat; --events: -E.
    Worker(wiretask_app, queues=[WT_QUEUE], pool=options.pool, concurrency=concurrency,
           prefetch=options.prefetch, send_events=options.events, heartbeat=False).run()


if __name__ == "__main__":
    main()
