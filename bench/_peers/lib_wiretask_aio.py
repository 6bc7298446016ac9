"""wiretask's asyncio API on Redis: an ``async def`` task on the worker's asyncio pool,
and a client that awaits (``aapply_async``, ``aapply_many``).

Worker: ``wiretask worker -A _peers.lib_wiretask_aio:app -Q wiretask-aio --pool
asyncio`` (its default concurrency: the CPU count; ``-c 1`` for one slot). The app is
``lib_wiretask``'s (results in Redis, ack after the result is stored, idempotent
publishing), its Redis transport's asyncio twin on the client side.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url
from wiretask.app import App

QUEUE = "wiretask-aio"
URL = redis_url()

app = App("peers", broker=URL, backend=URL, task_default_queue=QUEUE)
_counter: list[redis.asyncio.Redis] = []  # made on the pool's loop, at the first task


@app.task(name="peers.small")
async def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if not _counter:
        _counter.append(redis.asyncio.Redis.from_url(URL))
    if await _counter[0].incr(COUNTER) == 0:
        await _counter[0].lpush(DONE, 1)
    return a


class Client:
    batch_api = "await task.aapply_many"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(URL)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(ARGS, KWARGS)]

    async def enqueue(self) -> None:
        await small.aapply_async(ARGS, KWARGS)

    async def batch(self, n: int) -> None:
        await small.aapply_many(self.calls * n)

    async def queued(self) -> int:
        return int(self.redis.llen(QUEUE))

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        await app.aclose()
        app.close()
        self.redis.close()
