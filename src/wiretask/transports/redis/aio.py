"""``AsyncRedisTransport``: the Redis transport's asyncio twin, over ``redis.asyncio``.

It writes exactly what ``RedisTransport`` writes (the package doc): the same Kombu list
entries, binding tables, delayed index and publish markers, staged by the same
``publishing.Staging`` and ``publishing.Attempt`` (only the I/O differs: each step's
commands go through ``wiretask._redis.aio.AsyncCommands``, one pipelined connection per
event loop). Errors are translated by the same table (``REDIS_ERRORS``).

**Cancellation.** A publish is one ``MULTI``/``EXEC`` written in one piece, so a
cancelled ``await`` leaves the whole batch or nothing. A cancellation after the request
went out leaves the outcome unknown, exactly like a lost connection: the attempt's
messages are remembered with its marker, so when the retry driver publishes the same
frames again (after the policy's deadline cut an attempt short, say) the marker is
checked first and nothing is pushed twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Literal

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from wiretask._errormap import map_exceptions
from wiretask._redis.aio import AsyncCommands
from wiretask._redis.errors import REDIS_ERRORS
from wiretask._redis.options import RedisOptions
from wiretask.errors import ConnectionLost, ImproperlyConfigured
from wiretask.transports.aio import AsyncTransport
from wiretask.transports.base import Capabilities, Prepared
from wiretask.transports.redis.admin import binding_writes
from wiretask.transports.redis.envelope import bucket_for
from wiretask.transports.redis.publishing import Staging, needs_hold
from wiretask.transports.redis.scheduler import MOVER_CACHE

__all__ = ["AsyncRedisTransport"]


class AsyncRedisTransport(AsyncTransport):
    """The producing half of ``RedisTransport`` for coroutines (made by
    ``RedisTransport.async_twin()``).

    Args:
        config: the sync transport's parsed URL and options.
        capabilities: the sync transport's (the same object: the calling API caches
            what it resolved against it).

    Raises:
        ImproperlyConfigured: a connection option ``redis.asyncio`` refuses.
    """

    def __init__(self, config: RedisOptions, capabilities: Capabilities) -> None:
        self.url = config.masked_url
        self.capabilities = capabilities
        self.keys = config.keys
        # redis-py's own retries are off, as on the sync side: the policy decides.
        options = {**config.redis_kwargs, "retry": Retry(NoBackoff(), 0)}
        try:
            self._pool = redis.asyncio.ConnectionPool.from_url(config.redis_url, **options)
            self._pool.connection_class(**self._pool.connection_kwargs)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"bad Redis connection option for {self.url}: {exc}", setting="broker_url"
            ) from exc
        self._commands = AsyncCommands(self._pool)
        password = self._pool.connection_kwargs.get("password")
        self._errors = {
            action: map_exceptions(REDIS_ERRORS, action, url=self.url, secret=password)
            for action in ("connect", "publish", "bind_queue")
        }
        steps = config.priority_steps
        self.staging = Staging(config.keys, steps, bucket_for(0, steps),
                               visibility_timeout=config.visibility_timeout,
                               markers=config.publish_markers)
        self.delay_mode = config.delay_mode
        #: ``delay_mode="auto"``: whether a mover was alive, and when that was read
        #: (``loop.time()``), as the sync transport's ``Movers.alive`` caches it.
        self._movers_alive = False
        self._movers_read_at = -math.inf

    def __repr__(self) -> str:
        return f"<AsyncRedisTransport {self.url}>"

    async def connect(self) -> None:
        """Check the connection (reconnecting if it was dropped)."""
        with self._errors["connect"]:
            await self._commands.call("PING")

    async def close(self) -> None:
        """Drop the connection. Idempotent."""
        self._commands.close()

    async def _hold(self) -> bool:
        """The delay mode's answer, as the sync transport's ``hold``: hold a message not
        yet due broker-side always (``native``), never (``celery``), or while a mover is
        alive (``auto``: a mover's heartbeat in ``_wiretask.movers``, read at most every
        ``MOVER_CACHE`` seconds; this process runs no mover of its own)."""
        if self.delay_mode != "auto":
            return self.delay_mode == "native"
        loop = asyncio.get_running_loop()
        if loop.time() - self._movers_read_at >= MOVER_CACHE:
            count = await self._commands.call("ZCOUNT", self.keys.movers, repr(time.time()),
                                              "+inf")
            self._movers_alive = int(count) > 0
            self._movers_read_at = loop.time()
        return self._movers_alive

    async def _declare(self, queue: str) -> None:
        """As ``RedisTransport._declare``: bind ``queue`` to the exchange of its name."""
        await self.bind_queue(queue, queue, queue)

    async def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        """``RedisTransport.bind_queue``, awaited (the same two ``SADD``, in one
        ``MULTI``/``EXEC``).

        Raises:
            ValidationError: an empty queue or exchange name, or another exchange type.
            ConnectionLost, TransportError: Redis failed.
        """
        writes = binding_writes(self.keys, queue, exchange, routing_key,
                                exchange_type=exchange_type)
        with self._errors["bind_queue"]:
            await self._commands.transaction(writes)

    async def _publish(self, messages: Sequence[Prepared]) -> None:
        """``Publisher.publish``'s steps, awaited: the batch and its marker in one
        ``MULTI``/``EXEC``; all of it lands or none. After ``ConnectionLost`` or a
        cancellation the outcome is unknown and a retry of the same frames does not
        duplicate what landed."""
        commands = self._commands
        hold = False
        if needs_hold(messages):
            with self._errors["publish"]:  # asked before staging, as the sync driver does
                hold = await self._hold()
        attempt = self.staging.attempt(messages, hold)
        if attempt is None:
            return
        try:
            with self._errors["publish"]:
                if attempt.retrying:
                    attempt.read_landed(await commands.run(attempt.marker_checks()))
                if attempt.routed:
                    attempt.read_tables(await commands.run(attempt.table_reads()))
                writing, transaction = attempt.writes()
                if writing:
                    await commands.run(writing, atomic=transaction)
        except (ConnectionLost, asyncio.CancelledError):
            self.staging.keep_unsettled(attempt)
            raise
