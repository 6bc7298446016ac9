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
by ``connect_timeout``, the confirms by ``confirm_timeout``; the error names the bound
(a frozen broker: ``ConnectionLost``, "did not answer within confirm_timeout=30 s",
the outcome unknown).

**Cancellation.** A cancelled ``await`` before the batch was queued on the writer sends
nothing; after, the whole batch is written, and its confirms are not cancelled with the
caller (they are awaited through ``asyncio.shield``): a task of the transport's own
(``_follow``) awaits them, within the batch's ``confirm_timeout``, and logs what became
of the batch (a refusal, or an unknown outcome, as a warning naming its tasks). A
declaration cut short leaves nothing marked as declared, and its channel is closed, so
the next publish declares again on a new one. ``close()`` waits for the batches being
followed.

**A retry of the same frames** (the publish retry policy publishes the very ``Frame``
objects again) after an attempt whose caller did not learn the outcome (it was
cancelled, or got ``ConnectionLost``) is told by that outcome, kept by frame for
``_EARLIER_TTL`` seconds: a message the broker confirmed is not published again (if
its confirm is still awaited, the retry waits for it); one it refused is; one whose
outcome is unknown (the connection was lost, or no confirm came in time, after the
write) is published again with a warning naming the task, since RabbitMQ has no publish
markers to ask: it may then be delivered twice, both copies with the same task id (at
least once, as Kombu's retry; ``spec/TRANSPORTS.md`` §6.4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

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

log = logging.getLogger("wiretask.transports.amqp")

#: Most returned messages kept for their batches (the others are long settled).
_RETURNS_KEPT = 1000
#: Most messages of earlier attempts kept for a retry of the same frames, and for how
#: long (seconds; the Redis transport keeps its publish markers as long).
_EARLIER_KEPT = 10_000
_EARLIER_TTL = 300.0


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
        #: id(frame) -> a message of an attempt whose caller did not learn its outcome
        #: (cancelled, or told ``ConnectionLost``), and that outcome when known.
        self._earlier: dict[int, _Earlier] = {}
        #: The tasks learning what became of batches whose callers were cancelled.
        self._following: set[asyncio.Task[None]] = set()
        #: The tasks closing connections and channels dropped as dead or cut short.
        self._closing: set[asyncio.Task[None]] = set()

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
        """Close the connection (and the sync transport this twin owns), once the
        batches whose callers were cancelled are confirmed or their ``confirm_timeout``
        ran out; connections dropped before are closed when this returns. Idempotent."""
        if self._following:
            await asyncio.wait(self._following)  # each ends by its own confirm_timeout
        connection = self._connection
        self._forget()
        try:
            if connection is not None and not connection.is_closed:
                try:
                    async with aio.within(self._options.connect_timeout, "connect_timeout"):
                        await connection.close()
                except (ax.AMQPError, OSError, TimeoutError):
                    pass  # a broker that cannot be reached is not an error here
            if self._closing:
                await asyncio.wait(self._closing)  # bounded by connect_timeout each
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
            # Cut short: what it was told is unknown. Closed in the background (this
            # call is being cancelled), so that no channel is left open behind it.
            self._admin = None
            if not admin.is_closed:
                aio.close_later(admin, self._closing, self._options.connect_timeout)
            raise
        self._declared.update(todo)

    def _drop_connection(self, lost: aiormq.Connection | None = None) -> None:
        """Drop the connection (only if it is still ``lost``, when given: a batch that
        learns late that its connection failed must not drop a newer one)."""
        connection = self._connection
        if lost is not None and connection is not lost:
            return
        self._forget()
        if connection is not None and not connection.is_closed:
            # Closed in the background: this call may be cut short by a cancellation.
            aio.close_later(connection, self._closing)

    # -- publishing -------------------------------------------------------------------

    async def _publish(self, messages: Sequence[Prepared]) -> None:
        """Hook of ``publish`` and ``publish_many``: as ``AMQPTransport._publish`` (the
        module doc says what a cancellation leaves and what a retry of the same frames
        does).

        Raises:
            EncodeError, ValidationError: a message or route cannot be carried (nothing
                was sent).
            ConnectionLost: the connection failed; the outcome may be unknown.
            TransportError: some messages were nacked or unroutable (named); the others
                of the batch are on the broker.
        """
        if self._earlier:  # rare: a retry, or anything published after one
            messages = await self._after_earlier_attempts(messages)
            if not messages:
                return
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
        await self._settle(messages, plan, confirms, drained)

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
        self, messages: Sequence[Prepared], plan: Sequence[Planned],
        confirms: list[asyncio.Future[Any]], drained: asyncio.Future[None],
    ) -> None:
        """Await the batch's write and confirms; raise for what the broker refused.

        The confirms are awaited through ``asyncio.shield``: a cancelled caller does not
        cancel them (aiormq would then drop the broker's answer), so what became of a
        batch whose caller gave up is still learnt, and reported (``_follow``)."""
        options = self._options
        if not confirms:
            with aio.translate("publish", options):
                async with aio.within(options.confirm_timeout, "confirm_timeout"):
                    await asyncio.shield(drained)  # the write goes out whole anyway
            return
        connection = self._connection
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.confirm_timeout
        # One confirm is awaited as it is (the common case: every hop through the loop
        # is latency for a lone publish); a batch's through one ``gather``.
        pending: asyncio.Future[Any] = confirms[0] if len(confirms) == 1 \
            else asyncio.gather(*confirms, return_exceptions=True)
        try:
            async with aio.within(options.confirm_timeout, "confirm_timeout"):
                await asyncio.shield(pending)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The caller gave up (its own cancellation, or the retry policy's
                # deadline) after the batch was written: it goes on without it.
                self._follow(messages, plan, pending, connection, deadline)
                raise
            # Else the confirm itself was cancelled (its channel closed): see below.
        except Exception as exc:
            if not pending.done():  # no confirm within confirm_timeout: a frozen broker
                self._drop_connection(connection)
                why = f"{exc}; whether the messages are on the broker is unknown"
                self._remember(messages, _Fate(None, why), loop)
                raise ConnectionLost(f"RabbitMQ publish failed: {why}", url=self.url) from exc
            # Else a confirm's own error (a nack, a closed channel): see below.
        error, landed = self._verdict(plan, _outcomes(pending, len(confirms)))
        if landed is None:
            self._drop_connection(connection)
            self._remember(messages, _Fate(None, str(error)), loop)
        if error is not None:
            raise error

    def _verdict(
        self, plan: Sequence[Planned], outcomes: Sequence[Any],
    ) -> tuple[BaseException | None, bool | None]:
        """What the confirms of a batch say: the error to raise (``None``: all of it is
        on the broker), and whether its messages are on the broker (``True``), some were
        refused (``False``; the others are), or that is unknown (``None``: the channel
        or connection closed before every confirm came)."""
        lost = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)
                     and not isinstance(outcome, ax.DeliveryError)), None)
        if lost is not None:
            error: BaseException
            if isinstance(lost, asyncio.CancelledError):
                error = ConnectionLost(
                    "publish: the channel closed before the broker confirmed; whether the "
                    "messages are on the broker is unknown", url=self.url,
                )
            else:
                error = aio.translated(lost, "publish", self._options)
            if error is not lost:
                error.__cause__ = lost
            return error, None
        nacked = [index for index, outcome in enumerate(outcomes)
                  if isinstance(outcome, ax.DeliveryError)]
        # A message's basic.return comes before its basic.ack: every return of this
        # batch is in; they are told apart from other batches' by task id.
        ids = {item.task_id for item in plan}
        mine = [r for r in self._returned if r.task_id in ids]
        if mine:
            self._returned[:] = [r for r in self._returned if r.task_id not in ids]
        if nacked or mine:
            return refused(self.url, plan, nacked, [
                (r.reply_text, r.exchange, r.routing_key, r.task_id) for r in mine
            ]), False
        return None, True

    # -- a batch whose caller gave up, and a retry of its frames ------------------------

    def _follow(
        self, messages: Sequence[Prepared], plan: Sequence[Planned],
        pending: asyncio.Future[Any], connection: aiormq.Connection | None, deadline: float,
    ) -> None:
        """Learn what became of a written batch whose caller was cancelled, in a task of
        its own, by the batch's own ``confirm_timeout``: log it (a refusal or an
        unknown outcome as a warning, naming the tasks), and keep it for a retry of the
        same frames (``_after_earlier_attempts``)."""
        loop = asyncio.get_running_loop()
        fate: asyncio.Future[_Fate] = loop.create_future()
        self._remember(messages, fate, loop)
        following = loop.create_task(self._learn(plan, pending, connection, deadline, fate))
        self._following.add(following)
        following.add_done_callback(self._following.discard)

    async def _learn(
        self, plan: Sequence[Planned], pending: asyncio.Future[Any],
        connection: aiormq.Connection | None, deadline: float,
        fate: asyncio.Future[_Fate],
    ) -> None:
        """``_follow``'s task."""
        ids = [item.task_id for item in plan]
        loop = asyncio.get_running_loop()
        try:
            done, _ = await asyncio.wait((pending,), timeout=max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:  # the loop is shutting down
            fate.set_result(_Fate(None, "the wait for its confirm was cancelled"))
            raise
        if done:
            known = self._known(plan, pending, connection)
        else:
            self._drop_connection(connection)
            known = _Fate(None, f"no confirm within confirm_timeout="
                                f"{self._options.confirm_timeout:g} s")
        fate.set_result(known)
        if known.landed:
            log.debug("publish of tasks %s: confirmed after its caller was cancelled", ids)
        elif known.landed is False:
            log.warning("publish of tasks %s, whose caller was cancelled after they were "
                        "written: %s", ids, known.why)
        else:
            log.warning("publish of tasks %s, whose caller was cancelled after they were "
                        "written: the outcome is unknown (%s); they may be on the broker",
                        ids, known.why)

    def _known(self, plan: Sequence[Planned], pending: asyncio.Future[Any],
               connection: aiormq.Connection | None) -> _Fate:
        error, landed = self._verdict(plan, _outcomes(pending, len(plan)))
        if landed is None:
            self._drop_connection(connection)
        return _Fate(landed, "confirmed" if error is None else str(error))

    def _remember(
        self, messages: Sequence[Prepared], fate: _Fate | asyncio.Future[_Fate],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Keep what became of the messages of an attempt (or will: a future), for a
        retry of the same frames; at most ``_EARLIER_KEPT``, for ``_EARLIER_TTL`` s."""
        if not isinstance(fate, asyncio.Future):
            known, fate = fate, loop.create_future()
            fate.set_result(known)
        now = loop.time()
        earlier = self._earlier
        for message in messages:
            earlier[id(message.frame)] = _Earlier(message, fate, now)
        expired = now - _EARLIER_TTL
        for key in [k for k, v in earlier.items() if v.since < expired]:
            del earlier[key]
        while len(earlier) > _EARLIER_KEPT:
            del earlier[next(iter(earlier))]

    async def _after_earlier_attempts(
        self, messages: Sequence[Prepared],
    ) -> Sequence[Prepared]:
        """The messages to publish, after what became of earlier attempts of the same
        frames (same route and time): one the broker confirmed is not sent again (if its
        follow-up is still waiting for the confirm, this waits for it, within that
        attempt's ``confirm_timeout``); one it refused is sent again; one whose outcome
        is unknown is sent again with a warning naming it, since RabbitMQ may then hold
        it twice (both copies with the same task id)."""
        earlier = self._earlier
        left: list[Prepared] = []
        for message in messages:
            kept = earlier.get(id(message.frame))
            if kept is None or kept.message.frame is not message.frame \
                    or kept.message.route != message.route \
                    or kept.message.not_before != message.not_before:
                left.append(message)
                continue
            fate = await asyncio.shield(kept.fate)
            earlier.pop(id(message.frame), None)
            task_id = message.frame.headers.get("id")
            if fate.landed:
                log.info("task %s: not published again, its earlier attempt was confirmed",
                         task_id)
                continue
            if fate.landed is None:
                log.warning("task %s: published again after an attempt whose outcome is "
                            "unknown (%s): RabbitMQ may deliver it twice, both copies with "
                            "this task id", task_id, fate.why)
            left.append(message)
        return left


class _Fate(NamedTuple):
    """What became of a written message: on the broker (``landed`` true), refused
    (false), or unknown (``None``); ``why`` says it."""

    landed: bool | None
    why: str


class _Earlier(NamedTuple):
    """A message of an attempt whose caller did not learn its outcome (the frame is kept:
    its ``id`` must not be reused while this is), and that outcome (or its future)."""

    message: Prepared
    fate: asyncio.Future[_Fate]
    since: float


def _outcomes(pending: asyncio.Future[Any], count: int) -> list[Any]:
    """The confirms' outcomes (an ack, a ``DeliveryError``, the exception of a closed
    channel, a ``CancelledError`` for a confirm cancelled with its channel) from
    ``_settle``'s ``pending`` (one confirm, or the ``gather`` of several), done."""
    if count > 1:
        outcomes: list[Any] = pending.result()
        return outcomes
    if pending.cancelled():
        return [asyncio.CancelledError()]
    return [pending.exception() or pending.result()]
