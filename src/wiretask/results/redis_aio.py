"""``AsyncRedisBackend``: the Redis result backend's asyncio twin, over ``redis.asyncio``.

The same keys and values as ``RedisBackend`` (Celery's layout), the same atomic
ready-state rule (the ``STORE_IF_ABSENT`` script, then a ``WATCH`` transaction), and the
same subscription protocol (``results.redis.SyncedChannel``: subscribe, then ``MULTI:
GET key; PUBLISH sync-channel token`` to place the snapshot in the message stream), so
a late subscriber gets the current state once and nothing is missed.

Connections: reads, the first store and the snapshots go through one pipelined
connection per event loop (``wiretask._redis.aio.AsyncCommands``); each subscription
has its own pub/sub connection from a ``redis.asyncio`` pool, returned when it closes
(also when the ``await`` that opened it is cancelled), and the rare contended store
uses a ``WATCH`` connection from that pool.

**Cancellation.** A cancelled ``next()`` may have been cancelled in the middle of
reading a message: the subscription then resynchronizes on the next call (subscribe,
snapshot, token again) and delivers the current state if it differs from the last one
delivered, so the final state is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio
import redis.exceptions

from wiretask._errormap import map_exceptions
from wiretask._redis.aio import AsyncCommands
from wiretask._redis.errors import REDIS_ERRORS
from wiretask._redis.scripts import store_if_absent, write_command
from wiretask.errors import ConnectionLost, TransportError
from wiretask.protocol import states
from wiretask.results.aio import AsyncResultBackend, AsyncSubscription
from wiretask.results.base import check_meta
from wiretask.results.redis import MAX_WATCH_RETRIES, SyncedChannel

if TYPE_CHECKING:
    from wiretask.results.redis import RedisBackend

__all__ = ["AsyncRedisBackend", "AsyncRedisSubscription"]

#: Longest single wait inside ``next`` (so a close from elsewhere is noticed).
_WAIT_SLICE = 1.0


class AsyncRedisBackend(AsyncResultBackend):
    """The asyncio twin of a ``RedisBackend`` (built from its settings; the two share
    no connection)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.url = backend.url
        self.expires = backend.expires
        self.codec = backend.codec
        self.global_keyprefix = backend.global_keyprefix
        self.key_for = backend.key_for
        self._current_status = backend._current_status
        self.socket_timeout = backend.socket_timeout
        self.client = redis.asyncio.Redis.from_url(
            backend._connection_url, socket_timeout=backend.socket_timeout,
            socket_connect_timeout=backend.client.connection_pool.connection_kwargs.get(
                "socket_connect_timeout"),
        )
        self._commands = AsyncCommands(self.client.connection_pool)
        self._password: str | None = self.client.connection_pool.connection_kwargs.get(
            "password")
        self._subscriptions: weakref.WeakSet[AsyncRedisSubscription] = weakref.WeakSet()
        self._closed = False

    def errors(self, action: str) -> map_exceptions:
        """Translates redis-py's exceptions raised in the block (``REDIS_ERRORS``).

        Raises:
            TransportError: the backend is closed.
        """
        if self._closed:
            raise TransportError("the result backend is closed", url=self.url)
        return map_exceptions(REDIS_ERRORS, action, url=self.url, secret=self._password)

    async def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        status = check_meta(task_id, meta)
        key, data = self.key_for(task_id), self.codec.encode(meta).data
        with self.errors("store"):
            if await self._commands.script(store_if_absent(key, data, self.expires)) == 1:
                return
        write = write_command(self.expires)
        client: Any = self.client  # redis-py's pipeline is untyped
        with self.errors("store"):
            async with client.pipeline(transaction=True) as pipe:
                for _ in range(MAX_WATCH_RETRIES):
                    try:
                        await pipe.watch(key)
                        if not states.may_follow(self._current_status(await pipe.get(key)),
                                                 status):
                            await pipe.unwatch()
                            return
                        pipe.multi()
                        pipe.execute_command(write[0], key, *write[1:], data)
                        pipe.publish(key, data)
                        await pipe.execute()
                    except redis.exceptions.WatchError:
                        continue  # another writer changed the key between WATCH and EXEC
                    else:
                        return
        raise TransportError(
            f"could not store the state of {task_id}: the key kept changing under "
            f"{MAX_WATCH_RETRIES} attempts", url=self.url,
        )

    async def get(self, task_id: str) -> dict[str, Any] | None:
        with self.errors("get"):
            value = await self._commands.call("GET", self.key_for(task_id))
        return None if value is None else self.codec.decode(value)

    async def forget(self, task_id: str) -> None:
        with self.errors("forget"):
            await self._commands.call("DEL", self.key_for(task_id))

    async def subscribe(self, task_id: str) -> AsyncRedisSubscription:
        subscription = AsyncRedisSubscription(self, task_id)
        try:
            await subscription._start(deliver_unchanged=True)
        except BaseException:
            await subscription.close()
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def snapshot(self, task_id: str, synced: SyncedChannel) -> bytes | None:
        """``MULTI: GET key; PUBLISH sync-channel token`` (one write, one transaction)."""
        current, _ = await self._commands.transaction([
            ("GET", self.key_for(task_id)), ("PUBLISH", synced.sync_channel, synced.token)
        ])
        return cast("bytes | None", current)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._commands.close()
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self.client.aclose()


class AsyncRedisSubscription(AsyncSubscription):
    """One task's channel plus a private sync channel, on a pub/sub connection of its
    own (see the module doc)."""

    def __init__(self, backend: AsyncRedisBackend, task_id: str) -> None:
        self._backend = backend
        self.task_id = task_id
        self.channel = backend.key_for(task_id).encode()
        self._pubsub: Any = None
        self._synced = SyncedChannel(self.channel, backend.global_keyprefix)
        #: A read was cancelled part-way: resynchronize before reading again.
        self._resync = False

    async def _start(self, *, deliver_unchanged: bool) -> None:
        """Subscribe, wait for the confirmations, take the snapshot with the token."""
        backend = self._backend
        synced = self._synced
        synced.restart()
        try:
            with backend.errors("subscribe"):
                pubsub: Any = backend.client.pubsub()
                self._pubsub = pubsub
                await pubsub.subscribe(self.channel, synced.sync_channel)
                _raise_if_cancelling()
                # The snapshot must not run before the SUBSCRIBE did, or the token would
                # be published to nobody. Confirmations come in order; wait for the last.
                async with asyncio.timeout(backend.socket_timeout):
                    while True:
                        message = await pubsub.get_message(timeout=backend.socket_timeout)
                        _raise_if_cancelling()
                        if (message is not None and message["type"] == "subscribe"
                                and message["channel"] == synced.sync_channel):
                            break
                current = await backend.snapshot(self.task_id, synced)
        except BaseException:
            await self._stop()
            raise
        synced.snapshot(current, deliver_unchanged=deliver_unchanged)
        self._resync = False

    async def _stop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await pubsub.aclose()

    async def _restart(self) -> None:
        await self._stop()
        await self._start(deliver_unchanged=False)

    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while not (self.finished or self.closed):
            data = self._synced.pop()
            if data is not None:
                meta = self._backend.codec.decode(data)
                if meta["status"] in states.READY_STATES:
                    self.finished = True
                    await self.close()
                return meta
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            wait = _WAIT_SLICE if remaining is None else min(_WAIT_SLICE, remaining)
            try:
                if self._pubsub is None or self._resync:  # a read cut short, or a failed
                    await self._restart()                 # resynchronization before
                    continue
                self._resync = True  # until the read below completes
                with self._backend.errors("receive"):
                    message = await self._pubsub.get_message(timeout=wait)
                _raise_if_cancelling()
                self._resync = False
                self._synced.message(message)
            except ConnectionLost:
                if self.closed:
                    return None
                _raise_if_cancelling()
                # Resynchronize once; if Redis is still away, this raises.
                await self._restart()
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._synced.clear()
        await self._stop()


def _raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and is going on: a
    cancellation that lands in some of redis-py 8's pub/sub reads is swallowed there (or
    turned into a connection error) instead of reaching the caller, so every read of a
    subscription checks after it returns, and a cancelled ``await`` always ends."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
