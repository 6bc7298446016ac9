"""Celery on RabbitMQ (py-amqp): the app and task its worker runs, and the bench client.

Worker: ``celery -A _peers.lib_celery_amqp:app worker`` (``-P solo`` for one slot).
RabbitMQ broker through Kombu's py-amqp transport, Redis result backend, everything else
at Celery's defaults: no publisher confirms (``confirm_publish`` is off: ``apply_async``
returns once the bytes are written), early ack, publish retry on, prefork pool of the
CPU count, prefetch multiplier 4.
"""

from __future__ import annotations

import redis
from celery import Celery

from _peers import ARGS, COUNTER, DONE, KWARGS, amqp_url, redis_url
from _peers._amqp import Queues

QUEUE = "celery"
URL = redis_url()

app = Celery("peers", broker=amqp_url(), backend=URL, set_as_current=False)
app.conf.broker_connection_retry_on_startup = True
_counter = redis.Redis.from_url(URL)


@app.task(name="peers.small", shared=False)
def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if _counter.incr(COUNTER) == 0:
        _counter.lpush(DONE, 1)
    return a


class Client:
    # group(...).apply_async() publishes its members one by one, and adds a GroupResult.
    batch_api = "no batch API: a loop of apply_async"

    def __init__(self) -> None:
        self.queues = Queues(QUEUE)

    def enqueue(self) -> None:
        small.apply_async(ARGS, KWARGS)

    def batch(self, n: int) -> None:
        for _ in range(n):
            small.apply_async(ARGS, KWARGS)

    def queued(self) -> int:
        return self.queues.count()

    def reset(self) -> None:
        self.queues.purge()

    def close(self) -> None:
        app.close()
        self.queues.close()
