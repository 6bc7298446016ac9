"""``AsyncRPCBackend``: the ``rpc://`` backend's asyncio twin, consuming the reply queue
on the event loop (aiormq).

What a client knows of its tasks is one table per app and process, ``RPCBackend``'s:
the twin files what it reads into that table (``RPCBackend._take_in``, under its lock)
and answers from it, so the sync and the asyncio API of one app see the same states,
whichever of them read a state from the queue. The twin's own part is the I/O: one
aiormq connection per event loop that declares the reply queue as Celery does
(``RPCBackend.reply_queue``, in the bytes py-amqp writes: ``wire.declaration_frames``)
and consumes it, acknowledging each state once it is filed. It starts consuming at the
first ``track`` (the first task sent through the asyncio API), ``get`` or
``subscribe``, so states that arrive while nobody waits are filed too.

* ``get`` and ``subscribe`` first take in everything the queue holds at that instant, as
  the sync ones do (the queue's ``message_count`` is asked on the consuming channel
  until it is 0: RabbitMQ answers after pushing what came before), then answer from the
  table with the sync backend's rules.
* A subscription is woken on its loop by whichever consumer files a state for it (the
  twin's, or the sync backend's in another thread); a cancelled ``next()`` loses
  nothing, ``close()`` unregisters it.
* ``store`` and ``store_reply`` (``Task.aupdate_state`` in an ``async def`` task) publish
  through the sync backend in a thread: one confirmed publish, as the worker's.
* ``check_wait`` is the sync backend's (no I/O).
* Every round trip to the broker is bounded by ``connect_timeout`` (a frozen broker:
  ``ConnectionLost``), as connecting is.

The table's lock is taken on the loop for microseconds, except when the sync API of
the same app is waiting in another thread of this process at that moment and holds it
across a round trip to the broker (its own ``_sync``). When both APIs of one app read
results in one process, the queue has two consumers and RabbitMQ hands each state to
one of them: both file into the table, but a state the sync consumer received and has
not read off its socket yet is not "in" for the twin's ``get`` (which then returns the
state before it, as a poll a moment earlier would).
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

from wiretask._amqp import aio, wire
from wiretask.errors import ConnectionLost, DecodeError
from wiretask.protocol import states
from wiretask.results.aio import AsyncResultBackend, AsyncSubscription
from wiretask.results.rpc import RPCBackend, RPCSubscription

__all__ = ["AsyncRPCBackend", "AsyncRPCSubscription"]

#: Bound on taking in what the reply queue holds (``RPCBackend``'s too).
_SYNC_WAIT = 10.0


class AsyncRPCBackend(AsyncResultBackend):
    """The asyncio twin of ``backend`` (``AsyncReplyRouted``), sharing its table; closing
    the twin closes only its own connection."""

    def __init__(self, backend: RPCBackend) -> None:
        self.backend = backend
        self.url = backend.url
        self.expires = backend.expires
        self.codec = backend.codec
        self._options = backend.options
        self._connection: aiormq.Connection | None = None
        self._channel: aiormq.Channel | None = None
        #: The queue this twin's channel consumes (``None``: not consuming).
        self._consuming: str | None = None
        #: The task connecting and subscribing (``_consumer``), while it runs.
        self._starting: asyncio.Future[aiormq.Channel] | None = None
        self._subscriptions: weakref.WeakSet[AsyncRPCSubscription] = weakref.WeakSet()
        #: The tasks closing connections dropped as dead.
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the consumer -----------------------------------------------------------------

    async def _consumer(self) -> aiormq.Channel:
        """The channel consuming this client's reply queue, connecting, declaring the
        queue and subscribing first if needed. That work runs in a task of its own,
        shared by concurrent callers and not cancelled with them: aiormq closes a
        channel whose call is cancelled.

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: it refused.
        """
        channel = self._channel
        if channel is not None and not channel.is_closed \
                and self._consuming == self.backend.reply_to:
            return channel
        starting = self._starting
        if starting is None or starting.done():
            starting = self._starting = asyncio.ensure_future(self._start_consuming())
            starting.add_done_callback(_observed)
        return await asyncio.shield(starting)

    async def _start_consuming(self) -> aiormq.Channel:
        """``_consumer``'s work (one at a time: the ``_starting`` task)."""
        connection = self._connection
        if connection is None or connection.is_closed:
            self._forget()
            connection = self._connection = await aio.open_connection(
                self._options, "results-consume")
        channel = self._channel
        if channel is None or channel.is_closed:
            with aio.translate("open a channel", self._options):
                async with aio.within(self._options.connect_timeout, "connect_timeout"):
                    opened = await connection.channel(publisher_confirms=False)
            assert isinstance(opened, aiormq.Channel)  # what aiormq makes
            channel = self._channel = opened
            self._consuming = None
        queue = self.backend.reply_to
        if self._consuming != queue:
            try:
                with aio.translate(f"consume the reply queue {queue!r}", self._options):
                    async with aio.within(self._options.connect_timeout, "connect_timeout"):
                        await aio.write(channel, wire.declaration_frames(
                            channel.number, [self.backend.reply_queue(queue)]))
                        await channel.basic_consume(queue, self._on_message, no_ack=False)
            except ConnectionLost:
                self._forget()
                raise
            except BaseException:
                self._channel = None  # closed by the broker (a refusal)
                raise
            self._consuming = queue
        return channel

    def _forget(self) -> None:
        connection = self._connection
        self._connection = self._channel = None
        self._consuming = None
        if connection is not None and not connection.is_closed:
            aio.close_later(connection, self._closing)

    async def _on_message(self, message: DeliveredMessage) -> None:
        """A state arrived (aiormq's consumer callback): file it, then acknowledge it.
        It is filed before this coroutine first awaits, so in the order of arrival and
        before the answer to a later ``queue.declare``."""
        properties = message.header.properties
        backend = self.backend
        with backend._lock:
            backend._take_in(message.body, properties.correlation_id,
                             properties.content_type, properties.content_encoding,
                             redelivered=bool(message.redelivered))
            backend._arrived.notify_all()
        tag = message.delivery_tag
        if tag is not None and not message.channel.is_closed:
            await message.channel.basic_ack(tag)

    async def _take_in_all(self) -> None:
        """``RPCBackend._sync`` on the loop: every state the reply queue holds now is
        filed when this returns."""
        channel = await self._consumer()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SYNC_WAIT
        queue = self.backend.reply_to
        while True:
            # Not cancelled with the caller (aiormq would close the channel for it).
            asking = asyncio.ensure_future(channel.queue_declare(queue, passive=True))
            asking.add_done_callback(_observed)
            try:
                with aio.translate(f"read the reply queue {queue!r}", self._options):
                    async with aio.within(self._options.connect_timeout, "connect_timeout"):
                        declared = await asyncio.shield(asking)
            except ConnectionLost:
                self._forget()
                raise
            if not declared.message_count or loop.time() >= deadline:
                return
            await asyncio.sleep(0.01)

    # -- the client's side ------------------------------------------------------------

    async def track(self, sent: Sequence[tuple[str, str | None]]) -> None:
        """``RPCBackend.track``, awaited: the reply queue declared (and consumed) on
        this twin's connection when a task names it."""
        own = self.backend.reply_to
        if any(reply_to == own for _, reply_to in sent):
            await self._consumer()
        with self.backend._lock:
            self.backend._note_sent(sent)

    def check_wait(self, task_id: str) -> None:
        self.backend.check_wait(task_id)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        await self._take_in_all()
        with self.backend._lock:
            return self.backend._latest(task_id)

    async def forget(self, task_id: str) -> None:
        self.backend.forget(task_id)

    async def subscribe(self, task_id: str) -> AsyncRPCSubscription:
        await self._take_in_all()
        subscription = AsyncRPCSubscription(self, task_id)
        with self.backend._lock:
            self.backend._listen(subscription.inner)
        self._subscriptions.add(subscription)
        return subscription

    # -- the worker's side ------------------------------------------------------------

    async def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self.backend.store, task_id, meta)

    async def store_reply(
        self, task_id: str, meta: Mapping[str, Any], *, reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        await asyncio.to_thread(lambda: self.backend.store_reply(
            task_id, meta, reply_to=reply_to, correlation_id=correlation_id))

    async def close(self) -> None:
        """Close this twin's connection and its subscriptions (the sync backend and what
        the table holds stay)."""
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
        connection = self._connection
        self._connection = self._channel = None
        self._consuming = None
        if connection is not None and not connection.is_closed:
            await aio.close_quietly(connection)
        if self._closing:
            await asyncio.wait(self._closing)  # bounded by connect_timeout each


def _observed(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a shielded task whose caller was cancelled (the error is
    raised to whoever awaits it next, or was; nothing to log twice)."""
    if not future.cancelled():
        future.exception()


class _Waking(collections.deque[Any]):
    """A subscription's pending states that wake its loop when one is added (from any
    thread: ``RPCBackend._apply`` appends under the table's lock)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def append(self, item: Any) -> None:
        super().append(item)
        self._wake()

    def extend(self, items: Any) -> None:
        super().extend(items)
        self._wake()


class AsyncRPCSubscription(AsyncSubscription):
    """The states of one task as they reach this client's reply queue, read by a
    coroutine (``RPCSubscription``'s rules)."""

    def __init__(self, backend: AsyncRPCBackend, task_id: str) -> None:
        self._backend = backend
        self.task_id = task_id
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        #: What the table sees: a sync subscription whose queue wakes this one.
        self.inner: RPCSubscription = RPCSubscription(backend.backend, task_id)
        self.inner._pending = _Waking(self._wake)

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    async def next(self, timeout: float | None) -> dict[str, Any] | None:
        loop = self._loop
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        backend, inner = self._backend.backend, self.inner
        while True:
            with backend._lock:
                if inner._closed or self.finished:
                    return None
                if inner._pending:
                    item = inner._pending.popleft()
                    if isinstance(item, DecodeError):
                        raise item
                    if item.get("status") in states.READY_STATES:
                        self.finished = True
                        backend._unsubscribe(inner)
                    return dict(item)
                self._wakeup.clear()
            await self._backend._consumer()  # someone reads the queue (again, if lost)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._backend.backend._unsubscribe(self.inner)
        self._wakeup.set()
