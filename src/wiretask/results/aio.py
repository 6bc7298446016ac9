"""The asyncio result backend contract, and the default twin that runs a sync backend's
methods in threads.

``AsyncResultBackend`` is ``ResultBackend`` awaited, method for method (``store``,
``get``, ``forget``, ``subscribe``, ``close``), under the same rules (``results.base``:
first final outcome wins, results expire, subscriptions never miss the final state,
errors are translated). ``AsyncResult.aget()`` and ``AsyncResult.astates()`` read through
it. Every ``ResultBackend`` has a twin (``ResultBackend.async_twin()``):

* ``memory://``: the store's own lock and subscriber queues, woken on the event loop
  (``MemoryBackend``'s twin; nothing blocks);
* ``sqlite://``: reads and writes in a thread of the twin's own, subscriptions polling
  the events table from that thread and waiting on the loop, woken at once by stores
  made in this process (``SQLiteBackend``'s twin);
* ``redis://``: ``redis.asyncio``, with the same snapshot-and-token subscription
  (``results.redis_aio``);
* anything else: ``ThreadedBackend`` here, which runs the sync methods in a few threads
  of its own.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wiretask.results.base import MetaCodec, ResultBackend, Subscription

__all__ = ["AsyncReplyRouted", "AsyncResultBackend", "AsyncSubscription", "ThreadedBackend"]

T = TypeVar("T")


class AsyncSubscription(abc.ABC):
    """``Subscription`` awaited: the state changes of one task, in order, the current
    one first; after a ready state it is finished. Use it from one coroutine at a time.
    ``close()`` it (or use ``async with``): it holds a connection on some backends."""

    #: True once a ready state was delivered.
    finished: bool = False
    #: True once closed (``next`` then returns ``None`` at once).
    closed: bool = False

    @abc.abstractmethod
    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next meta dict, or ``None`` after ``timeout`` seconds without one
        (``None``: wait as long as it takes) or once finished. A cancelled ``await``
        loses nothing: a state it was about to return comes with the next call.

        Raises:
            ConnectionLost, TransportError, DecodeError: as ``Subscription.next``.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening and free the resources. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncResultBackend(abc.ABC):
    """``ResultBackend`` for coroutines. An instance belongs to the event loop it is
    first used on; the app keeps one per loop (``App.async_backend``)."""

    url: str
    expires: float | None
    codec: MetaCodec

    @abc.abstractmethod
    async def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        """``ResultBackend.store``, awaited."""

    async def store_reply(
        self, task_id: str, meta: Mapping[str, Any], *, reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        """``ResultBackend.store_reply``, awaited: every backend but ``rpc://`` stores
        as ``store`` does."""
        del reply_to, correlation_id
        await self.store(task_id, meta)

    @abc.abstractmethod
    async def get(self, task_id: str) -> dict[str, Any] | None:
        """``ResultBackend.get``, awaited."""

    @abc.abstractmethod
    async def forget(self, task_id: str) -> None:
        """``ResultBackend.forget``, awaited."""

    @abc.abstractmethod
    async def subscribe(self, task_id: str) -> AsyncSubscription:
        """``ResultBackend.subscribe``, awaited: a subscription started now (see
        ``AsyncSubscription``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (open subscriptions stop working). Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


@runtime_checkable
class AsyncReplyRouted(Protocol):
    """``results.base.ReplyRouted`` for the asyncio twin of a backend whose states go
    to the sending client's reply queue (``rpc://``): the asyncio API tells it of every
    send before publishing (``track``, awaited) and asks before waiting
    (``check_wait``, no I/O)."""

    async def track(self, sent: Sequence[tuple[str, str | None]]) -> None:
        """``ReplyRouted.track``, awaited."""
        ...

    def check_wait(self, task_id: str) -> None:
        """``ReplyRouted.check_wait``."""
        ...


#: How long one wait of a ``ThreadedSubscription`` may hold a thread.
_THREAD_WAIT = 0.25


class ThreadedBackend(AsyncResultBackend):
    """The twin of any sync backend: its methods run in threads of the twin's own
    (``threads`` of them), so the loop never waits for them. A subscription waits in
    slices of at most a quarter of a second, so a thread is never held for long by a
    wait nobody awaits any more. Owns ``backend`` (``close()`` closes it) unless
    ``owns`` is False (a backend shared with the sync API: ``rpc://``)."""

    def __init__(self, backend: ResultBackend, *, threads: int = 4, owns: bool = True) -> None:
        self.backend = backend
        self._owns = owns
        self.url = backend.url
        self.expires = backend.expires
        self.codec = backend.codec
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"wiretask-aio-{type(backend).__name__}"
        )

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in one of the twin's threads."""
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    def submit(self, function: Callable[..., T], *args: object) -> concurrent.futures.Future[T]:
        return self._executor.submit(function, *args)

    async def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        await self.run(self.backend.store, task_id, meta)

    async def store_reply(
        self, task_id: str, meta: Mapping[str, Any], *, reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        await self.run(functools.partial(self.backend.store_reply, task_id, meta,
                                         reply_to=reply_to, correlation_id=correlation_id))

    async def get(self, task_id: str) -> dict[str, Any] | None:
        return await self.run(self.backend.get, task_id)

    async def forget(self, task_id: str) -> None:
        await self.run(self.backend.forget, task_id)

    async def subscribe(self, task_id: str) -> AsyncSubscription:
        return ThreadedSubscription(self, await self.run(self.backend.subscribe, task_id))

    async def close(self) -> None:
        try:
            if self._owns:
                await self.run(self.backend.close)
        finally:
            self._executor.shutdown(wait=False)


class ThreadedSubscription(AsyncSubscription):
    """A sync subscription read from a ``ThreadedBackend``'s threads."""

    def __init__(self, backend: ThreadedBackend, subscription: Subscription) -> None:
        self._backend = backend
        self._subscription = subscription
        #: A wait whose ``await`` was cancelled: its state is the next call's.
        self._inflight: asyncio.Future[dict[str, Any] | None] | None = None

    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not (self.finished or self.closed or self._subscription.finished):
            inflight = self._inflight
            if inflight is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                wait = _THREAD_WAIT if remaining is None else min(_THREAD_WAIT, remaining)
                inflight = self._inflight = asyncio.wrap_future(
                    self._backend.submit(self._subscription.next, wait)
                )
            # Shielded: a cancelled await leaves the wait running, and its state to the
            # next call.
            meta = await asyncio.shield(inflight)
            self._inflight = None
            if meta is not None:
                self.finished = self._subscription.finished
                return meta
        return None

    async def close(self) -> None:
        self.closed = True
        await self._backend.run(self._subscription.close)
