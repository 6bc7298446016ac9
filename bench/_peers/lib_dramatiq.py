"""Dramatiq: the broker and actor its worker runs, and the bench client.

Worker: ``dramatiq _peers.lib_dramatiq`` (``--processes 1 --threads 1`` for one slot).
``RedisBroker`` with its default middleware (no Results middleware: Dramatiq stores no
result unless it is added).
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url

URL = redis_url()
QUEUE = "default"

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
_counter = redis.Redis.from_url(URL)


@dramatiq.actor(actor_name="small")
def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if _counter.incr(COUNTER) == 0:
        _counter.lpush(DONE, 1)
    return a


class Client:
    # dramatiq.group(...).run() enqueues its messages one by one.
    batch_api = "no batch API: a loop of actor.send"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(URL)

    def enqueue(self) -> None:
        small.send(*ARGS, **KWARGS)

    def batch(self, n: int) -> None:
        for _ in range(n):
            small.send(*ARGS, **KWARGS)

    def queued(self) -> int:
        # The queue list holds message ids; the bodies are in the ``.msgs`` hash.
        return int(self.redis.llen(f"dramatiq:{QUEUE}"))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        broker.close()
        self.redis.close()
