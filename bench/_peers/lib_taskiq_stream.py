"""taskiq + taskiq-redis ``RedisStreamBroker`` (acknowledged; the README's setup).

Worker: ``taskiq worker _peers.lib_taskiq_stream:broker`` (taskiq's defaults: 2 worker
processes, 100 async tasks each, ack after the result is saved); one slot:
``--workers 1 --max-async-tasks 1``.
"""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker

from _peers._taskiq_common import QUEUE, URL, BaseClient, setup

broker, small = setup(RedisStreamBroker(url=URL, queue_name=QUEUE))


class Client(BaseClient):
    def __init__(self) -> None:
        super().__init__()
        self.broker = broker
        self.task = small

    async def queued(self) -> int:
        return int(await self.redis.xlen(QUEUE))
