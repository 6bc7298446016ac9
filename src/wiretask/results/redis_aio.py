"""``AsyncRedisBackend``: the Redis result backend's asyncio twin, over ``redis.asyncio``.

The same keys and values as ``RedisBackend`` (Celery's layout), the same atomic
ready-state rule (the ``STORE_IF_ABSENT`` script, then a ``WATCH`` transaction), and the
same subscription protocol (``results.redis.SyncedChannel``: subscribe, then ``MULTI:
GET key; PUBLISH sync-channel token`` to place the snapshot in the message stream), so
a late subscriber gets the current state once and nothing is missed.

Connections, per event loop: reads, the first store and the snapshots go through one
pipelined connection (``wiretask._redis.aio.AsyncCommands``); every subscription shares
one subscriber connection (``AsyncSubscriber``: a thousand results awaited at once are
a thousand channels on it); the rare contended store uses a ``WATCH`` connection from a
``redis.asyncio`` pool.

**Cancellation and outages.** Messages are handed to a subscription by the shared
connection as they arrive, so a cancelled ``next()`` loses nothing; closing a
subscription (also from the ``finally`` of a cancelled ``aget``) unsubscribes its
channels. A start cut short, or a lost subscriber connection, makes the next ``next()``
resynchronize (subscribe, snapshot, token again) and deliver the current state if it
differs from the last one delivered, so the final state is never missed. While Redis is
away (stopped, restarting, frozen), ``next(timeout)`` keeps trying, as the sync
subscription does: backing off from 50 ms to 1 s, each attempt bounded by
``SUBSCRIBE_TIMEOUT``, never past the caller's timeout (then ``ConnectionLost``); a
subscription made while Redis is away subscribes at its first ``next()``.
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
from wiretask._redis.aio import AsyncCommands, AsyncSubscriber
from wiretask._redis.errors import REDIS_ERRORS
from wiretask._redis.scripts import store_if_absent, write_command
from wiretask.errors import ConnectionLost, TransportError
from wiretask.protocol import states
from wiretask.results.aio import AsyncResultBackend, AsyncSubscription
from wiretask.results.base import check_meta
from wiretask.results.redis import (
    _RESUBSCRIBE_BACKOFF,
    MAX_WATCH_RETRIES,
    SUBSCRIBE_TIMEOUT,
    SyncedChannel,
)

if TYPE_CHECKING:
    from wiretask.results.redis import RedisBackend

__all__ = ["AsyncRedisBackend", "AsyncRedisSubscription"]



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
        #: Every subscription of this backend shares one subscriber connection.
        self.subscriber = AsyncSubscriber(self.client.connection_pool)
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
        if self._closed:
            raise TransportError("the result backend is closed", url=self.url)
        subscription = AsyncRedisSubscription(self, task_id)
        try:
            await subscription._start_within(SUBSCRIBE_TIMEOUT, deliver_unchanged=True)
        except ConnectionLost as exc:
            subscription._lost = exc  # Redis is away: the first next() subscribes
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
        self.subscriber.close()
        self._commands.close()
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self.client.aclose()


class AsyncRedisSubscription(AsyncSubscription):
    """One task's channel plus a private sync channel, on the backend's shared
    subscriber connection (see the module doc)."""

    def __init__(self, backend: AsyncRedisBackend, task_id: str) -> None:
        self._backend = backend
        self.task_id = task_id
        self.channel = backend.key_for(task_id).encode()
        self._synced = SyncedChannel(self.channel, backend.global_keyprefix)
        self._channels: tuple[bytes, ...] = ()
        self._wakeup = asyncio.Event()
        #: The subscriber connection was lost, or a start was cut short: subscribe and
        #: take a snapshot again before reading on.
        self._resync = True
        #: Why the last attempt to subscribe failed (raised by ``next`` if Redis is
        #: still away when its timeout runs out).
        self._lost: ConnectionLost | None = None

    # -- Listener (called on the loop by the shared subscriber) ---------------------------

    def message(self, channel: bytes, data: bytes) -> None:
        self._synced.message({"type": "message", "channel": channel, "data": data})
        self._wakeup.set()

    def lost(self, exc: BaseException) -> None:
        self._resync = True
        self._wakeup.set()

    # -- ours ---------------------------------------------------------------------------

    async def _start(self, *, deliver_unchanged: bool) -> None:
        """Subscribe (both channels, confirmed), then take the snapshot with the token."""
        backend = self._backend
        synced = self._synced
        self._unsubscribe()
        synced.restart()
        self._channels = (self.channel, synced.sync_channel)
        with backend.errors("subscribe"):
            await backend.subscriber.subscribe(self, self._channels)
            current = await backend.snapshot(self.task_id, synced)
        synced.snapshot(current, deliver_unchanged=deliver_unchanged)
        self._resync = False

    async def _start_within(self, seconds: float, *, deliver_unchanged: bool) -> None:
        """``_start``, given up after ``seconds`` (a frozen server) as a lost connection.

        Raises:
            ConnectionLost: Redis is away, or did not answer in time.
        """
        try:
            async with asyncio.timeout(seconds):
                await self._start(deliver_unchanged=deliver_unchanged)
        except TimeoutError as exc:
            raise ConnectionLost(
                f"Redis did not confirm the subscription within {seconds:g} s",
                url=self._backend.url,
            ) from exc

    def _unsubscribe(self) -> None:
        if self._channels:
            self._backend.subscriber.unsubscribe(self, self._channels)
            self._channels = ()

    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        """As ``RedisSubscription.next``: a lost connection is resubscribed (with a
        fresh snapshot, so the final state is not missed) as often as it takes within
        ``timeout``, backing off from 50 ms to 1 s while Redis is away, each attempt
        bounded by ``SUBSCRIBE_TIMEOUT`` (a frozen server); the wait does not pass it.

        Raises:
            ConnectionLost: Redis was still unreachable when ``timeout`` ran out.
            TransportError: any other failure (a refused password: not retried).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        pause = _RESUBSCRIBE_BACKOFF[0]
        while not (self.finished or self.closed):
            if self._resync:
                # A lost connection (or a start cut short by a cancellation): subscribe
                # again; the snapshot delivers the current state if it changed.
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    if self._lost is not None:
                        raise self._lost
                    return None
                try:
                    await self._start_within(SUBSCRIBE_TIMEOUT if remaining is None
                                             else min(SUBSCRIBE_TIMEOUT, remaining),
                                             deliver_unchanged=False)
                except ConnectionLost as exc:
                    self._lost = exc
                    left = None if deadline is None else deadline - loop.time()
                    await asyncio.sleep(max(0.0, pause if left is None else min(pause, left)))
                    pause = min(pause * 2, _RESUBSCRIBE_BACKOFF[1])
                    continue
                pause, self._lost = _RESUBSCRIBE_BACKOFF[0], None
            self._wakeup.clear()
            data = self._synced.pop()
            if data is not None:
                meta = self._backend.codec.decode(data)
                if meta["status"] in states.READY_STATES:
                    self.finished = True
                    await self.close()
                return meta
            if deadline is None:
                await self._wakeup.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._synced.clear()
        self._unsubscribe()
        self._wakeup.set()
