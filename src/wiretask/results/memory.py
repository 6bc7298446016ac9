"""The in-process result backend: ``memory://`` and ``memory://name``.

Backends opened with the same name share one store (as the memory transport shares
queues), so an app and a worker in one process see the same results. A store lives as
long as some backend uses it. Streaming is a ``threading.Condition``: a subscriber
thread wakes as soon as a state is stored.

Values are serialized with the result serializer like in every other backend, so a
test against ``memory://`` refuses what Redis would refuse.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import urllib.parse
import weakref
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from wiretask.errors import DecodeError, ImproperlyConfigured, TransportError
from wiretask.protocol import states
from wiretask.results.aio import AsyncResultBackend, AsyncSubscription
from wiretask.results.base import (
    DEFAULT_EXPIRES,
    MetaCodec,
    ResultBackend,
    Subscription,
    check_meta,
    resolve_expires,
)

if TYPE_CHECKING:
    from wiretask.codecs import Encoded, Registry

__all__ = ["AsyncMemoryBackend", "AsyncMemorySubscription", "MemoryBackend"]

#: Expired entries are swept at most this often (they are also dropped when read).
_SWEEP_INTERVAL: Final = 1.0


@attrs.frozen
class _Entry:
    status: str
    encoded: Encoded
    #: ``time.monotonic()`` deadline, or None for never.
    expires_at: float | None


class _Listener(Protocol):
    """A subscription as the store sees it: ``_push`` is called with the store's
    condition held, from the thread that stores."""

    def _push(self, encoded: Encoded) -> None: ...


class _Store:
    """One named store: entries, subscribers, one condition for both."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.entries: dict[str, _Entry] = {}
        #: Saved groups (``GroupResult.save``) by group id.
        self.groups: dict[str, _Entry] = {}
        self.listeners: dict[str, set[_Listener]] = {}
        self.last_sweep = time.monotonic()

    def current(self, task_id: str, now: float) -> _Entry | None:
        """The live entry of ``task_id`` (caller holds ``cond``)."""
        entry = self.entries.get(task_id)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self.entries[task_id]
            return None
        return entry

    def sweep(self, now: float) -> None:
        """Drop expired entries (caller holds ``cond``) so that an unread store stays small."""
        if now - self.last_sweep < _SWEEP_INTERVAL:
            return
        self.last_sweep = now
        dead = [
            k for k, e in self.entries.items()
            if e.expires_at is not None and e.expires_at <= now
        ]
        for key in dead:
            del self.entries[key]
        for key in [k for k, e in self.groups.items()
                    if e.expires_at is not None and e.expires_at <= now]:
            del self.groups[key]


_stores_lock = threading.Lock()
_stores: weakref.WeakValueDictionary[str, _Store] = weakref.WeakValueDictionary()


def _shared_store(name: str) -> _Store:
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _Store()
            _stores[name] = store
        return store


def _parse_name(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "memory":
        raise ImproperlyConfigured(f"not a memory:// URL: {url!r}", setting="result_backend")
    return (parts.netloc + parts.path).strip("/")


class MemorySubscription(Subscription):
    """A subscription to one task in a memory store."""

    def __init__(self, backend: MemoryBackend, task_id: str) -> None:
        self._backend = backend
        self._store = backend._store
        self.task_id = task_id
        self._pending: collections.deque[Encoded] = collections.deque()
        self._closed = False

    def _push(self, encoded: Encoded) -> None:
        # Called with the store's condition held.
        self._pending.append(encoded)

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        if timeout is not None and timeout < 0:
            timeout = 0.0
        with self._store.cond:
            if self.finished or self._closed:
                return None
            if not self._store.cond.wait_for(lambda: self._pending or self._closed, timeout):
                return None
            if self._closed:
                return None
            encoded = self._pending.popleft()
        meta = self._backend.codec.decode(
            encoded.data, encoded.content_type, encoded.content_encoding
        )
        if meta["status"] in states.READY_STATES:
            self.finished = True
            self.close()
        return meta

    def close(self) -> None:
        with self._store.cond:
            if self._closed:
                return
            self._closed = True
            self._backend._unlisten(self.task_id, self)
            # The queue of a closed subscription is useless; a ready state already
            # popped is kept by ``finished``.
            self._pending.clear()
            self._store.cond.notify_all()


class MemoryBackend(ResultBackend):
    """Results in this process's memory, shared by name.

    Args:
        url: ``memory://`` (the default store) or ``memory://name``.
        serializer: the result serializer (``json``).
        expires: ``result_expires`` in seconds (default one day; ``None`` = never).
        registry: the codec registry (default: ``wiretask.codecs.default_registry()``).
        compression: compress stored values as Celery 5.7's ``result_compression``.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        serializer: str = "json",
        expires: float | timedelta | None = DEFAULT_EXPIRES,
        registry: Registry | None = None,
        compression: str | None = None,
    ) -> None:
        self.name = _parse_name(url)
        self.url = f"memory://{self.name}"
        self.expires = resolve_expires(expires)
        if registry is None:
            from wiretask.codecs import default_registry  # noqa: PLC0415 - avoid a cycle

            registry = default_registry()
        self.codec = MetaCodec(registry, serializer, compression)
        self._store = _shared_store(self.name)
        self._subscriptions: weakref.WeakSet[MemorySubscription] = weakref.WeakSet()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the result backend is closed", url=self.url)

    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        self._check_open()
        status = check_meta(task_id, meta)
        encoded = self.codec.encode(meta)  # outside the lock: serialization may be slow
        store = self._store
        with store.cond:
            now = time.monotonic()
            store.sweep(now)
            current = store.current(task_id, now)
            if not states.may_follow(current.status if current else None, status):
                return
            expires_at = None if self.expires is None else now + self.expires
            store.entries[task_id] = _Entry(status, encoded, expires_at)
            for subscription in store.listeners.get(task_id, ()):
                subscription._push(encoded)
            store.cond.notify_all()

    def get(self, task_id: str) -> dict[str, Any] | None:
        self._check_open()
        with self._store.cond:
            entry = self._store.current(task_id, time.monotonic())
        if entry is None:
            return None
        return self.codec.decode(
            entry.encoded.data, entry.encoded.content_type, entry.encoded.content_encoding
        )

    def forget(self, task_id: str) -> None:
        self._check_open()
        with self._store.cond:
            self._store.entries.pop(task_id, None)

    # -- groups (GroupStore) -----------------------------------------------------------

    def save_group(self, group_id: str, value: Mapping[str, Any]) -> None:
        self._check_open()
        encoded = self.codec.encode_value(dict(value))
        with self._store.cond:
            now = time.monotonic()
            expires_at = None if self.expires is None else now + self.expires
            self._store.groups[group_id] = _Entry("group", encoded, expires_at)

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        self._check_open()
        with self._store.cond:
            entry = self._store.groups.get(group_id)
            if entry is not None and entry.expires_at is not None and (
                entry.expires_at <= time.monotonic()
            ):
                del self._store.groups[group_id]
                entry = None
        if entry is None:
            return None
        value = self.codec.decode_value(
            entry.encoded.data, entry.encoded.content_type, entry.encoded.content_encoding
        )
        if not isinstance(value, dict):
            raise DecodeError("group", f"a saved group must be a mapping, got {value!r:.100}")
        return value

    def delete_group(self, group_id: str) -> None:
        self._check_open()
        with self._store.cond:
            self._store.groups.pop(group_id, None)

    def subscribe(self, task_id: str) -> MemorySubscription:
        self._check_open()
        subscription = MemorySubscription(self, task_id)
        self._listen(task_id, subscription)
        self._subscriptions.add(subscription)
        return subscription

    def _listen(self, task_id: str, listener: _Listener) -> None:
        with self._store.cond:
            # Snapshot and registration under one lock: no store can fall in between,
            # so the current state is delivered once and nothing is missed.
            entry = self._store.current(task_id, time.monotonic())
            if entry is not None:
                listener._push(entry.encoded)
            self._store.listeners.setdefault(task_id, set()).add(listener)

    def _unlisten(self, task_id: str, listener: _Listener) -> None:
        """Called with the store's condition held."""
        listeners = self._store.listeners.get(task_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._store.listeners[task_id]

    def close(self) -> None:
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()

    def async_twin(self) -> AsyncMemoryBackend:
        """Nothing here blocks (a lock held for microseconds): the twin calls this
        backend on the loop, and its subscriptions are woken there."""
        return AsyncMemoryBackend(self)


class AsyncMemoryBackend(AsyncResultBackend):
    """The asyncio twin of a ``MemoryBackend`` (which it owns): the same store."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.url = backend.url
        self.expires = backend.expires
        self.codec = backend.codec
        self._subscriptions: weakref.WeakSet[AsyncMemorySubscription] = weakref.WeakSet()

    async def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        self.backend.store(task_id, meta)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        return self.backend.get(task_id)

    async def forget(self, task_id: str) -> None:
        self.backend.forget(task_id)

    async def subscribe(self, task_id: str) -> AsyncMemorySubscription:
        self.backend._check_open()
        subscription = AsyncMemorySubscription(self.backend, task_id)
        self.backend._listen(task_id, subscription)
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        self.backend.close()


class AsyncMemorySubscription(AsyncSubscription):
    """A subscription to one task in a memory store, read by a coroutine: a store (in
    any thread) queues the state and wakes the subscriber's loop."""

    def __init__(self, backend: MemoryBackend, task_id: str) -> None:
        self._backend = backend
        self._store = backend._store
        self.task_id = task_id
        self._pending: collections.deque[Encoded] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()

    def _push(self, encoded: Encoded) -> None:
        # Called with the store's condition held, from whichever thread stored.
        self._pending.append(encoded)
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else self._loop.time() + max(0.0, timeout)
        while not (self.finished or self.closed):
            with self._store.cond:
                encoded = self._pending.popleft() if self._pending else None
                if encoded is None:
                    self._wakeup.clear()  # under the lock: no push can slip in between
            if encoded is not None:
                meta = self._backend.codec.decode(
                    encoded.data, encoded.content_type, encoded.content_encoding
                )
                if meta["status"] in states.READY_STATES:
                    self.finished = True
                    await self.close()
                return meta
            if deadline is None:
                await self._wakeup.wait()
                continue
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return None
        return None

    async def close(self) -> None:
        with self._store.cond:
            if self.closed:
                return
            self.closed = True
            self._backend._unlisten(self.task_id, self)
            self._pending.clear()
        self._wakeup.set()
