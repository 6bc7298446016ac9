"""The asyncio transport contract: the producing half of ``base.Transport``, awaited.

The asyncio calling API (``await task.adelay(...)``, ``await app.asend_task(...)``)
publishes through an ``AsyncTransport``. It mirrors the sync contract's producing
methods and hooks one for one, and checks its arguments with the very same functions
(``base.prepare``, ``base.prepare_many``, ``base.queue_name``), so a message the sync
API refuses is refused here with the same error, and a hook gets the same ``Prepared``
values:

================================ ========= ============================================
public (``@final``, checks)      hook      sync twin
================================ ========= ============================================
``await connect()``/``close()``  (public)  ``connect()``/``close()``
``await declare_queue(queue)``   ``_declare``  ``declare_queue``
``await publish(frame, route)``  ``_publish``  ``publish``
``await publish_many(messages)`` ``_publish``  ``publish_many``
================================ ========= ============================================

Consuming stays synchronous: the worker receives and acknowledges with the sync
contract (its asyncio pool runs ``async def`` task bodies on an event loop, but takes
messages from a consumer thread), so there is no asyncio consumer to serve yet. The
AMQP transport gets an asyncio twin the same way, over an asyncio driver, when it
lands: one subclass with the three hooks.

Every ``Transport`` has a twin (``Transport.async_twin()``):

* a broker with an asyncio driver returns a native one (``redis://``: over
  ``redis.asyncio``, the same Kombu wire and publish markers as the sync transport);
* an in-process broker whose hooks never block (``memory://``) runs them inline
  (``InlineTransport``);
* anything else (``sqlite://``, a third-party transport) runs its sync hooks in a thread
  of the twin's own (``ThreadedTransport``): one thread per twin, so SQLite's writes keep
  their order and the event loop never waits on the file's lock.

Cancellation: a publish is all or nothing on every bundled broker, so a cancelled
``await`` never leaves part of a batch behind. A hook run in a thread goes on to its end
when the ``await`` is cancelled (a thread cannot be interrupted); a native one lets a
request that went out finish, and a retry of the same frames does not duplicate what
landed: Redis asks the attempt's publish marker; RabbitMQ, which has none, learns from
the attempt's confirms (still awaited after the cancellation), and when none came (a
lost connection) publishes again with a warning (at least once).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Literal, Protocol, Self, TypeVar, final, runtime_checkable

from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.base import (
    Capabilities,
    Prepared,
    Transport,
    prepare,
    prepare_many,
    queue_name,
)

__all__ = [
    "AsyncQueueBinding",
    "AsyncTransport",
    "InlineTransport",
    "ThreadedTransport",
]

T = TypeVar("T")


class AsyncTransport(abc.ABC):
    """A broker connection for coroutines: the producing half of ``Transport``.

    ``url`` (password masked) and ``capabilities`` are the sync twin's. An instance
    belongs to the event loop it is first used on (its connections do); the app keeps
    one per loop. Construction does no I/O; ``connect()`` does (and the hooks may
    connect lazily).
    """

    url: str
    capabilities: Capabilities

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open (or re-open) the connection. The publish retry policy awaits it before
        trying again after a ``ConnectionLost``.

        Raises:
            ConnectionLost: the broker cannot be reached (recoverable).
            TransportError: any other failure.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection. Idempotent; a broker that cannot be reached is not an
        error here."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @final
    async def declare_queue(self, queue: str) -> None:
        """``Transport.declare_queue``, awaited.

        Raises:
            ValidationError, ConnectionLost, TransportError: as the sync method.
        """
        await self._declare(queue_name(queue))

    @final
    async def publish(
        self, frame: Frame, route: Route, *, not_before: datetime | None = None
    ) -> None:
        """``Transport.publish``, awaited: the same checks, then ``_publish``.

        Raises:
            ValidationError, EncodeError, ConnectionLost, TransportError: as the sync
                method.
        """
        await self._publish((prepare(self.capabilities, frame, route, not_before),))

    @final
    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """``Transport.publish_many``, awaited: every message checked before any is
        sent; an empty batch sends nothing.

        Raises:
            ValidationError, EncodeError, ConnectionLost, TransportError: as the sync
                method.
        """
        prepared = prepare_many(self.capabilities, messages)
        if prepared:
            await self._publish(prepared)

    async def _declare(self, queue: str) -> None:  # noqa: B027 - optional hook, no-op
        """Hook of ``declare_queue``, as ``Transport._declare``."""

    @abc.abstractmethod
    async def _publish(self, messages: Sequence[Prepared]) -> None:
        """Hook of ``publish``/``publish_many``, as ``Transport._publish`` (all or none
        where the broker can; say what a cancelled ``await`` leaves behind).

        Raises:
            EncodeError, ConnectionLost, TransportError: as ``Transport._publish``.
        """


@runtime_checkable
class AsyncQueueBinding(Protocol):
    """An asyncio transport that binds queues to named exchanges (the twin of
    ``wiretask.routing.QueueBinding``)."""

    async def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None: ...


@runtime_checkable
class _Binding(Protocol):
    """A sync transport that binds queues (``wiretask.routing.QueueBinding``'s shape,
    which this layer cannot import)."""

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None: ...


class InlineTransport(AsyncTransport):
    """The twin of a transport whose hooks never block (an in-process broker): they run
    right here, on the event loop. Owns ``transport``: ``close()`` closes it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.url = transport.url
        self.capabilities = transport.capabilities

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    async def connect(self) -> None:
        self.transport.connect()

    async def close(self) -> None:
        self.transport.close()

    async def _declare(self, queue: str) -> None:
        self.transport._declare(queue)

    async def _publish(self, messages: Sequence[Prepared]) -> None:
        self.transport._publish(messages)


class ThreadedTransport(AsyncTransport):
    """The twin of any sync transport: its hooks run in a thread of this twin's own, so
    the event loop never waits for them (SQLite's file lock and ``busy_timeout``, a
    third-party driver). One thread: the hooks run one at a time, in the order they
    were awaited. Owns ``transport``: ``close()`` closes it and ends the thread.

    A cancelled ``await`` does not stop a hook already running (a thread cannot be
    interrupted): SQLite's publish is one transaction, so the batch lands whole or not
    at all; a hook not started yet is not run.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.url = transport.url
        self.capabilities = transport.capabilities
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wiretask-aio-{type(transport).__name__}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    async def connect(self) -> None:
        await self._run(self.transport.connect)

    async def close(self) -> None:
        try:
            await self._run(self.transport.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _declare(self, queue: str) -> None:
        await self._run(self.transport._declare, queue)

    async def _publish(self, messages: Sequence[Prepared]) -> None:
        await self._run(self.transport._publish, messages)

    @classmethod
    def around(cls, transport: Transport) -> ThreadedTransport:
        """The twin of ``transport``, with ``bind_queue`` when it binds queues."""
        if isinstance(transport, _Binding):
            return _ThreadedBinding(transport)
        return cls(transport)


class _ThreadedBinding(ThreadedTransport):
    """``ThreadedTransport`` of a transport that binds queues: ``bind_queue`` too."""

    async def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        binding = self.transport
        assert isinstance(binding, _Binding)  # chosen by ``around`` for that
        await self._run(functools.partial(
            binding.bind_queue, queue, exchange, routing_key, exchange_type=exchange_type
        ))
