"""Celery: the app and task its worker runs, and the bench client.

Worker: ``celery -A _peers.lib_celery:app worker`` (``-P solo`` for one slot). Redis
broker and Redis result backend, everything else at Celery's defaults (early ack,
publish retry on, prefork pool of the CPU count, prefetch multiplier 4).
"""

from __future__ import annotations

import redis
from celery import Celery

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url

QUEUE = "celery"
URL = redis_url()

app = Celery("peers", broker=URL, backend=URL, set_as_current=False)
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
        self.redis = redis.Redis.from_url(URL)

    def enqueue(self) -> None:
        small.apply_async(ARGS, KWARGS)

    def batch(self, n: int) -> None:
        for _ in range(n):
            small.apply_async(ARGS, KWARGS)

    def queued(self) -> int:
        return int(self.redis.llen(QUEUE))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        app.close()
        self.redis.close()
