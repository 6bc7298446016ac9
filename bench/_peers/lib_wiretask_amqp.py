"""wiretask on RabbitMQ: the app and task its worker runs, and the bench client.

Worker: ``wiretask worker -A _peers.lib_wiretask_amqp:app -Q wiretask`` (``--pool solo``
for one slot). The AMQP transport at its defaults: publisher confirms (a publish returns
once RabbitMQ has the message; ``apply_many`` waits for one round of confirms for the
whole batch), persistent messages on a durable queue, the worker's prefetch window
``concurrency * 4``, acks after the result is stored in Redis.
``lib_wiretask_amqp_unconfirmed`` is the same with ``?confirm_publish=false`` (the
promise Celery's and Dramatiq's defaults make), built by :func:`build`.
"""

from __future__ import annotations

from typing import Any

import redis

from _peers import ARGS, COUNTER, DONE, KWARGS, amqp_url, redis_url
from _peers._amqp import Queues
from wiretask.app import App, Task

URL = redis_url()


def build(queue: str, query: str = "") -> tuple[App, Task[Any, Any], type[Any]]:
    """The app (broker ``amqp_url() + query``, results in Redis), its task, and the
    bench client's class, for ``queue``."""
    app = App("peers", broker=amqp_url() + query, backend=URL, task_default_queue=queue)
    counter = redis.Redis.from_url(URL)

    @app.task(name="peers.small")
    def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
        if counter.incr(COUNTER) == 0:
            counter.lpush(DONE, 1)
        return a

    class Client:
        batch_api = ("task.apply_many (one write, one round of confirms)" if not query
                     else "task.apply_many (one write)")

        def __init__(self) -> None:
            self.queues = Queues(queue)
            self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(ARGS, KWARGS)]

        def enqueue(self) -> None:
            small.apply_async(ARGS, KWARGS)

        def batch(self, n: int) -> None:
            small.apply_many(self.calls * n)

        def queued(self) -> int:
            return self.queues.count()

        def reset(self) -> None:
            self.queues.purge()

        def close(self) -> None:
            app.close()
            self.queues.close()

    return app, small, Client


app, small, Client = build("wiretask")
