"""arq: the worker settings and job its worker runs, and the bench client.

Runs in its own venv (``bench/.venvs/arq``: arq 0.28 pins ``redis<6``). Worker:
``arq _peers.lib_arq.WorkerSettings`` (arq's defaults: ``max_jobs`` 10, results kept
3600 s); one slot: ``arq _peers.lib_arq.OneSlot`` (``max_jobs = 1``: arq's CLI has no
concurrency flag, its settings class is where concurrency is set).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from _peers import ARGS, COUNTER, DONE, KWARGS, redis_url

URL = redis_url()
QUEUE = "arq:queue"


async def small(ctx: dict[str, Any], a: int, b: str, c: list[int], flag: bool = False,
                name: str = "") -> int:
    pool: ArqRedis = ctx["redis"]
    if await pool.incr(COUNTER) == 0:
        await pool.lpush(DONE, 1)
    return a


class WorkerSettings:
    functions: ClassVar[list[Any]] = [small]
    redis_settings = RedisSettings.from_dsn(URL)


class OneSlot:
    # arq reads a settings class's own __dict__ (not inherited attributes): repeated.
    functions: ClassVar[list[Any]] = [small]
    redis_settings = WorkerSettings.redis_settings
    max_jobs = 1


class Client:
    batch_api = "no batch API: asyncio.gather of 1000 enqueue_job"

    def __init__(self) -> None:
        self.pool: ArqRedis | None = None

    async def _pool(self) -> ArqRedis:
        if self.pool is None:
            self.pool = await create_pool(WorkerSettings.redis_settings)
        return self.pool

    async def enqueue(self) -> None:
        pool = self.pool or await self._pool()
        await pool.enqueue_job("small", *ARGS, **KWARGS)

    async def batch(self, n: int) -> None:
        pool = self.pool or await self._pool()
        await asyncio.gather(*(pool.enqueue_job("small", *ARGS, **KWARGS) for _ in range(n)))

    async def queued(self) -> int:
        pool = self.pool or await self._pool()
        return int(await pool.zcard(QUEUE))

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()


#: arq's CLI logs every job at INFO and has no quiet flag; ``--custom-log-dict`` takes
#: this (WARNING, as every other worker in the bench runs).
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
