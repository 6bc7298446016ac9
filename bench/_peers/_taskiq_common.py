"""taskiq with taskiq-redis: the broker setup both taskiq modules share.

The README of taskiq-redis 1.2.4 sets up ``RedisStreamBroker`` (acknowledged) with a
``RedisAsyncResultBackend`` and names ``ListQueueBroker`` as the choice "if you don't want
acknowledges"; both modules use that result backend, with the expiry its README
recommends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
from taskiq import AsyncBroker
from taskiq_redis import RedisAsyncResultBackend

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url

URL = redis_url()
QUEUE = "taskiq"


def setup(broker: AsyncBroker) -> tuple[AsyncBroker, Any]:
    """The broker with its result backend and the task registered on it."""
    broker = broker.with_result_backend(
        RedisAsyncResultBackend(redis_url=URL, result_ex_time=3600))
    counter = redis.asyncio.Redis.from_url(URL)

    @broker.task(task_name="small")
    async def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
        if await counter.incr(COUNTER) == 0:
            await counter.lpush(DONE, 1)
        return a

    return broker, small


class BaseClient:
    batch_api = "no batch API: asyncio.gather of 1000 kiq()"
    broker: AsyncBroker
    task: Any

    def __init__(self) -> None:
        self.redis = redis.asyncio.Redis.from_url(URL)
        self.started = False

    async def _start(self) -> None:
        if not self.started:
            await self.broker.startup()
            self.started = True

    async def enqueue(self) -> None:
        if not self.started:
            await self._start()
        await self.task.kiq(*ARGS, **KWARGS)

    async def batch(self, n: int) -> None:
        if not self.started:
            await self._start()
        await asyncio.gather(*(self.task.kiq(*ARGS, **KWARGS) for _ in range(n)))

    async def reset(self) -> None:
        # A FLUSHDB dropped what the client's start-up created (the stream's consumer
        # group): start up again, as a fresh client would.
        self.started = False
        await self._start()

    async def close(self) -> None:
        if self.started:
            await self.broker.shutdown()
        await self.redis.aclose()
