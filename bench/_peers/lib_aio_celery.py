"""aio-celery on RabbitMQ: the app and task its worker runs, and the bench client.

aio-celery reimplements Celery's protocol 2 over aio-pika (RabbitMQ only) with asyncio
tasks and an asyncio worker; results in Redis. Worker: ``aio_celery worker
_peers.lib_aio_celery:app`` (its default ``--concurrency`` 10,000 tasks on one loop,
prefetch ``4 * concurrency`` capped at 65,535); one slot: ``-c 1`` (prefetch 4). Its
publishing channel is aio-pika's default: publisher confirms on (``publish`` returns
once RabbitMQ confirmed); the worker acks when the task has run and its result is
stored (``message.process()`` around the run).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio
from aio_celery import Celery

from _peers import ARGS, COUNTER, DONE, KWARGS, amqp_url, redis_url
from _peers._amqp import Queues

URL = redis_url()
QUEUE = "aio-celery"

app = Celery("peers")
app.conf.update(broker_url=amqp_url(), result_backend=URL, task_default_queue=QUEUE)
_counter: list[redis.asyncio.Redis] = []  # made on the worker's loop, at the first task


@app.task(name="peers.small")
async def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if not _counter:
        _counter.append(redis.asyncio.Redis.from_url(URL))
    if await _counter[0].incr(COUNTER) == 0:
        await _counter[0].lpush(DONE, 1)
    return a


class Client:
    batch_api = "no batch API: asyncio.gather of 1000 delay() (its README's way)"

    def __init__(self) -> None:
        self.queues = Queues(QUEUE)
        self.setup: contextlib.AbstractAsyncContextManager[None] | None = None

    async def _start(self) -> None:
        # app.setup(): one robust connection and a publishing channel (confirms on).
        self.setup = app.setup()
        await self.setup.__aenter__()

    async def enqueue(self) -> None:
        if self.setup is None:
            await self._start()
        await small.delay(*ARGS, **KWARGS)

    async def batch(self, n: int) -> None:
        if self.setup is None:
            await self._start()
        calls: list[Any] = [small.delay(*ARGS, **KWARGS) for _ in range(n)]
        await asyncio.gather(*calls)

    async def queued(self) -> int:
        return self.queues.count()

    async def reset(self) -> None:
        self.queues.purge()

    async def close(self) -> None:
        if self.setup is not None:
            await self.setup.__aexit__(None, None, None)
        self.queues.close()
