"""``AsyncAMQPTransport``: the RabbitMQ transport's asyncio twin, over aiormq.

It publishes exactly what ``AMQPTransport`` publishes (``spec/TRANSPORTS.md`` §6): the
same declarations before a route's first message on a connection (``Routes``: Celery's
queue declaration, the delay ladder, named exchanges), the same bytes (``wire``: Kombu's
properties and header table, ``mandatory`` set), the same publisher confirms and the
same refusals (a nacked or returned message raises ``TransportError`` naming it, the
others of the batch being on the broker). Only the I/O differs: one aiormq connection
per event loop, with a publishing channel in confirm mode and a channel for
declarations. The frames are ``wire``'s, written through aiormq's writer
(``wiretask._amqp.aio`` says why aiormq's own publish is not used).

**A batch** is encoded and planned first (an ``EncodeError`` or ``ValidationError``
before anything is written), its routes' declarations are made if this connection has
not made them (``nowait``, then one ``basic.qos`` round trip that reports a refusal, as
the sync driver does), then the whole batch is queued on the connection's writer as one
payload and its confirms are awaited (``confirm_timeout``). Batches of concurrent
callers pipeline: one is queued while others wait for their confirms. A returned
message (``basic.return``, which RabbitMQ sends before the message's confirm) is
matched to its batch by task id.

**Timeouts.** Connecting, opening a channel and a declaration's round trip are bounded
by ``connect_timeout``, the confirms by ``confirm_timeout`` (a frozen broker:
``ConnectionLost``, the outcome unknown).

**Cancellation.** A cancelled ``await`` before the batch was queued on the writer sends
nothing; after, the whole batch is written and its outcome is unknown to the caller, as
after a lost connection (a retry may publish it twice, as Kombu's may: RabbitMQ has no
publish markers). A declaration cut short leaves nothing marked as declared, so the
next publish declares again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import aiormq
from aiormq import exceptions as ax

from wiretask._amqp import aio, wire
from wiretask.errors import ConnectionLost, TransportError
from wiretask.transports.aio import AsyncTransport
from wiretask.transports.amqp import Planned, declaration_refused, refused

if TYPE_CHECKING:
    from wiretask._amqp import topology
    from wiretask.transports.amqp import AMQPTransport
    from wiretask.transports.base import Prepared

__all__ = ["AsyncAMQPTransport"]

#: Most returned messages kept for their batches (the others are long settled).
_RETURNS_KEPT = 1000


class AsyncAMQPTransport(AsyncTransport):
    """The producing half of ``AMQPTransport`` for coroutines (made by
    ``AMQPTransport.async_twin()``, which it owns: its options, capabilities and
    routes; closing the twin closes it)."""

    def __init__(self, transport: AMQPTransport) -> None:
        self.transport = transport
        self.url = transport.url
        self.capabilities = transport.capabilities
        self._options = transport.options
        self._routes = transport.routes
        self._connection: aiormq.Connection | None = None
        self._publisher: aiormq.Channel | None = None
        self._admin: aiormq.Channel | None = None
        #: Held while connecting, declaring and queueing a batch's frames (not while its
        #: confirms are awaited), so that delivery tags follow the order of the writes.
        self._lock = asyncio.Lock()
        #: Declarations made on this connection, and routes whose declarations were.
        self._declared: set[topology.Declaration] = set()
        self._ready_routes: set[tuple[str, str, str, bool]] = set()
        self._returned: list[aio.Returned] = []

    def __repr__(self) -> str:
        return f"<AsyncAMQPTransport {self.url}>"

    # -- the connection -------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and its channels (again, if they were lost).

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: it refused (credentials, virtual host, TLS trust).
        """
        async with self._lock:
            await self._open()

    async def _open(self) -> aiormq.Channel:
        """The publishing channel, connecting first if needed (lock held)."""
        connection = self._connection
        if connection is not None and connection.is_closed:
            self._forget()
            connection = None
        if connection is None:
            connection = await aio.open_connection(self._options, "publish")
            self._connection = connection
        publisher = self._publisher
        if publisher is None or publisher.is_closed:
            with aio.translate("open the publishing channel", self._options):
                async with aio.within(self._options.connect_timeout, "connect_timeout"):
                    opened = await connection.channel(
                        publisher_confirms=self._options.confirm_publish,
                    )
            assert isinstance(opened, aiormq.Channel)  # what aiormq makes
            publisher = opened
            aio.ReturnHook(publisher, self._on_return)
            self._publisher = publisher
        return publisher

    async def _admin_channel(self) -> aiormq.Channel:
        """The channel for declarations (lock held, connection open)."""
        admin = self._admin
        if admin is None or admin.is_closed:
            assert self._connection is not None
            with aio.translate("open a channel", self._options):
                async with aio.within(self._options.connect_timeout, "connect_timeout"):
                    opened = await self._connection.channel(publisher_confirms=False)
            assert isinstance(opened, aiormq.Channel)  # what aiormq makes
            admin = self._admin = opened
        return admin

    def _on_return(self, returned: aio.Returned) -> None:
        """A message came back (before its confirm): kept for its batch to raise."""
        self._returned.append(returned)
        del self._returned[:-_RETURNS_KEPT]  # bounded: unclaimed ones are dropped

    def _forget(self) -> None:
        """The connection is gone: so is everything made on it."""
        self._connection = self._publisher = self._admin = None
        self._declared.clear()
        self._ready_routes.clear()

    async def close(self) -> None:
        """Close the connection (and the sync transport this twin owns). Idempotent."""
        connection = self._connection
        self._forget()
        try:
            if connection is not None and not connection.is_closed:
                try:
                    async with aio.within(self._options.connect_timeout, "connect_timeout"):
                        await connection.close()
                except (ax.AMQPError, OSError, TimeoutError):
                    pass  # a broker that cannot be reached is not an error here
        finally:
            self.transport.close()

    # -- declaring --------------------------------------------------------------------

    async def _declare(self, queue: str) -> None:
        """Hook of ``declare_queue``: as ``AMQPTransport._declare``."""
        async with self._lock:
            await self._open()
            await self._declare_locked(self._routes.queue_declarations(queue))

    async def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        """``AMQPTransport.bind_queue``, awaited (``AsyncQueueBinding``)."""
        declarations = self._routes.binding(queue, exchange, routing_key, exchange_type)
        async with self._lock:
            await self._open()
            await self._declare_locked(declarations)

    async def _declare_locked(self, declarations: Iterable[topology.Declaration]) -> None:
        """Declare what was not declared on this connection yet: every declaration
        ``nowait`` in one write, then a ``basic.qos`` round trip (RabbitMQ answers it
        after the declarations, so a refusal has closed the channel by then)."""
        todo = [d for d in dict.fromkeys(declarations) if d not in self._declared]
        if not todo:
            return
        admin = await self._admin_channel()
        try:
            with aio.translate("declare", self._options):
                async with aio.within(self._options.connect_timeout, "connect_timeout"):
                    await aio.write(admin, wire.declaration_frames(admin.number, todo))
                    await admin.basic_qos(prefetch_count=0, prefetch_size=0)
        except ConnectionLost:
            self._drop_connection()
            raise
        except TransportError as exc:
            self._admin = None  # the broker closed it
            refusal = declaration_refused(exc, self.url)
            if refusal is not exc:
                raise refusal from exc
            raise
        except BaseException:
            self._admin = None  # cut short: what it was told is unknown
            raise
        self._declared.update(todo)

    def _drop_connection(self) -> None:
        connection = self._connection
        self._forget()
        if connection is not None and not connection.is_closed:
            # Closed in the background: this call may be cut short by a cancellation.
            asyncio.get_running_loop().create_task(aio.close_quietly(connection))

    # -- publishing -------------------------------------------------------------------

    async def _publish(self, messages: Sequence[Prepared]) -> None:
        """Hook of ``publish`` and ``publish_many``: as ``AMQPTransport._publish`` (see
        the module doc for what a cancellation leaves).

        Raises:
            EncodeError, ValidationError: a message or route cannot be carried (nothing
                was sent).
            ConnectionLost: the connection failed; the outcome may be unknown.
            TransportError: some messages were nacked or unroutable (named); the others
                of the batch are on the broker.
        """
        plan = [self._routes.plan(message) for message in messages]
        async with self._lock:
            channel = await self._open()
            ready = self._ready_routes
            fresh = {item.where: item.declarations for item in plan if item.where not in ready}
            if fresh:
                await self._declare_locked(d for group in fresh.values() for d in group)
                ready.update(fresh)
            confirms, drained = await self._queue(channel, plan)
        # The lock is not held while the broker confirms: batches in flight pipeline.
        await self._settle(plan, confirms, drained)

    async def _queue(
        self, channel: aiormq.Channel, plan: Sequence[Planned],
    ) -> tuple[list[asyncio.Future[Any]], asyncio.Future[None]]:
        """Take the batch's delivery tags and queue its frames on the connection's
        writer as one payload, in tag order (lock held). From here the batch goes out
        whole, whatever happens to the ``await`` of the caller."""
        assert self._connection is not None
        frame_max = aio.frame_max(self._connection)
        data = b"".join(
            wire.publish_frames(item.encoded, item.exchange, item.routing_key,
                                channel=channel.number, frame_max=frame_max)
            for item in plan
        )
        confirms = aio.register_confirms(channel, len(plan)) \
            if self._options.confirm_publish else []
        try:
            drained = await aio.queue_frames(channel, data)
        except BaseException:
            aio.release_confirms(channel, confirms)  # nothing was queued
            raise
        return confirms, drained

    async def _settle(
        self, plan: Sequence[Planned], confirms: list[asyncio.Future[Any]],
        drained: asyncio.Future[None],
    ) -> None:
        """Await the batch's write and confirms; raise for what the broker refused."""
        try:
            with aio.translate("publish", self._options):
                async with aio.within(self._options.confirm_timeout, "confirm_timeout"):
                    # A confirm implies the write: only without confirms is the write
                    # itself awaited. One confirm is awaited as it is (the common case:
                    # every hop through the loop is latency for a lone publish).
                    if not confirms:
                        await asyncio.shield(drained)
                        outcomes: list[Any] = []
                    elif len(confirms) == 1:
                        outcomes = [await _outcome(confirms[0])]
                    else:
                        outcomes = await asyncio.gather(*confirms, return_exceptions=True)
        except ConnectionLost:
            self._drop_connection()
            raise
        nacked = [index for index, outcome in enumerate(outcomes)
                  if isinstance(outcome, ax.DeliveryError)]
        lost = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)
                     and not isinstance(outcome, ax.DeliveryError)), None)
        if lost is not None:
            # The channel or connection closed before every confirm arrived.
            self._drop_connection()
            if isinstance(lost, asyncio.CancelledError):
                raise ConnectionLost(
                    "publish: the channel closed before the broker confirmed; whether the "
                    "messages are on the broker is unknown", url=self.url,
                )
            with aio.translate("publish", self._options):
                raise lost
        # A message's basic.return comes before its basic.ack: every return of this
        # batch is in; they are told apart from other batches' by task id.
        ids = {item.task_id for item in plan}
        mine = [r for r in self._returned if r.task_id in ids]
        if mine:
            self._returned[:] = [r for r in self._returned if r.task_id not in ids]
        if nacked or mine:
            raise refused(self.url, plan, nacked,
                          [(r.reply_text, r.exchange, r.routing_key, r.task_id) for r in mine])


async def _outcome(confirm: asyncio.Future[Any]) -> Any:
    """A confirm's result, or its exception returned (``gather``'s
    ``return_exceptions`` for one future, without its extra hops through the loop).
    A cancellation of the caller (or of its timeout) propagates."""
    try:
        return await confirm
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return exc  # the confirm itself was cancelled (its channel closed)
    except Exception as exc:
        return exc
