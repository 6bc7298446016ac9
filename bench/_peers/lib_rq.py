"""RQ: the job function its worker runs, and the bench client.

Worker: ``rq worker -u URL peers`` (RQ's default ``Worker`` forks a work horse per job;
it runs one job at a time, so its one-slot and default rows are the same command).
Results are stored (``result_ttl`` 500 s by default).
"""

from __future__ import annotations

import redis
from rq import Queue

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url

URL = redis_url()
QUEUE = "peers"

_counter = redis.Redis.from_url(URL)


def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if _counter.incr(COUNTER) == 0:
        _counter.lpush(DONE, 1)
    return a


class Client:
    batch_api = "Queue.enqueue_many (one pipeline)"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(URL)
        self.queue = Queue(QUEUE, connection=self.redis)

    def enqueue(self) -> None:
        self.queue.enqueue(small, args=ARGS, kwargs=KWARGS)

    def batch(self, n: int) -> None:
        self.queue.enqueue_many(
            [Queue.prepare_data(small, args=ARGS, kwargs=KWARGS) for _ in range(n)]
        )

    def queued(self) -> int:
        return int(self.queue.count)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.redis.close()
