"""The worker's pools: what runs the jobs, behind one interface (``base.Pool``).

``threads`` (the default: slot threads), ``solo`` (one task at a time in the consumer
thread), ``processes`` (one child process per slot) and ``asyncio`` (``async def`` tasks,
many in flight on one event loop). ``Worker(pool=...)`` takes one
of these names, or a ``Pool`` subclass.
"""

from __future__ import annotations

from collections.abc import Mapping

from wiretask.worker.pools.asyncio import AsyncioPool
from wiretask.worker.pools.base import ConsumerHandle, Pool, PoolContext, PoolName, PoolSetup
from wiretask.worker.pools.processes import ProcessPool
from wiretask.worker.pools.solo import SoloPool
from wiretask.worker.pools.threads import ThreadPool

__all__ = [
    "POOLS",
    "AsyncioPool",
    "ConsumerHandle",
    "Pool",
    "PoolContext",
    "PoolName",
    "PoolSetup",
    "ProcessPool",
    "SoloPool",
    "ThreadPool",
]

#: The built-in pools by name.
POOLS: Mapping[str, type[Pool]] = {
    ThreadPool.name: ThreadPool,
    SoloPool.name: SoloPool,
    ProcessPool.name: ProcessPool,
    AsyncioPool.name: AsyncioPool,
}
