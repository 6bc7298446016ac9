"""Huey: the app and task its consumer runs, and the bench client.

Worker: ``huey_consumer _peers.lib_huey.huey`` (one worker thread by default, so its
one-slot and default rows are the same command). ``RedisHuey`` at its defaults:
results stored (a task returning ``None`` stores nothing; this one returns a value).
"""

from __future__ import annotations

import redis
from huey import RedisHuey

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url

URL = redis_url()

huey = RedisHuey("peers", url=URL)
_counter = redis.Redis.from_url(URL)


@huey.task()
def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if _counter.incr(COUNTER) == 0:
        _counter.lpush(DONE, 1)
    return a


class Client:
    # task.map(...) is a loop of huey.enqueue, one LPUSH each.
    batch_api = "no batch API: a loop of task calls"

    def enqueue(self) -> None:
        small(*ARGS, **KWARGS)

    def batch(self, n: int) -> None:
        for _ in range(n):
            small(*ARGS, **KWARGS)

    def queued(self) -> int:
        return int(huey.pending_count())

    def reset(self) -> None:
        pass

    def close(self) -> None:
        huey.storage.conn.close()
