"""wiretask's asyncio API on RabbitMQ: an ``async def`` task on the worker's asyncio
pool, and a client that awaits (``aapply_async``, ``aapply_many``) through the AMQP
transport's asyncio twin (aiormq; publisher confirms, as the sync transport).

Worker: ``wiretask worker -A _peers.lib_wiretask_aio_amqp:app -Q wiretask-aio --pool
asyncio`` (``-c 1`` for one slot). Results in Redis, ack after the result is stored.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

from _peers import ARGS, COUNTER, DONE, KWARGS, amqp_url, redis_url
from _peers._amqp import Queues
from wiretask.app import App

QUEUE = "wiretask-aio"
URL = redis_url()

app = App("peers", broker=amqp_url(), backend=URL, task_default_queue=QUEUE)
_counter: list[redis.asyncio.Redis] = []  # made on the pool's loop, at the first task


@app.task(name="peers.small")
async def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if not _counter:
        _counter.append(redis.asyncio.Redis.from_url(URL))
    if await _counter[0].incr(COUNTER) == 0:
        await _counter[0].lpush(DONE, 1)
    return a


class Client:
    batch_api = "await task.aapply_many (one write, one round of confirms)"

    def __init__(self) -> None:
        self.queues = Queues(QUEUE)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(ARGS, KWARGS)]

    async def enqueue(self) -> None:
        await small.aapply_async(ARGS, KWARGS)

    async def batch(self, n: int) -> None:
        await small.aapply_many(self.calls * n)

    async def queued(self) -> int:
        return self.queues.count()

    async def reset(self) -> None:
        self.queues.purge()

    async def close(self) -> None:
        await app.aclose()
        app.close()
        self.queues.close()
