"""wiretask: the app and task its worker runs, and the bench client.

Worker: ``wiretask worker -A _peers.lib_wiretask:app -Q wiretask`` (``--pool solo`` for
one slot). The app stores results in Redis (acks after the result is stored), as the
e2e bench does; publishing is idempotent across retries (the transport's marker).
"""

from __future__ import annotations

from typing import Any

import redis

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url
from wiretask.app import App

QUEUE = "wiretask"
URL = redis_url()

app = App("peers", broker=URL, backend=URL, task_default_queue=QUEUE)
_counter = redis.Redis.from_url(URL)


@app.task(name="peers.small")
def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if _counter.incr(COUNTER) == 0:
        _counter.lpush(DONE, 1)
    return a


class Client:
    batch_api = "task.apply_many"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(URL)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(ARGS, KWARGS)]

    def enqueue(self) -> None:
        small.apply_async(ARGS, KWARGS)

    def batch(self, n: int) -> None:
        small.apply_many(self.calls * n)

    def queued(self) -> int:
        return int(self.redis.llen(QUEUE))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        app.close()
        self.redis.close()
