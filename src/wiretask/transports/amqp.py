"""RabbitMQ (AMQP 0-9-1) transport on py-amqp, wire-compatible with Kombu's ``pyamqp``.

What wiretask publishes runs on a Celery worker and what Celery publishes runs on
wiretask's worker: the same bytes (``wiretask._amqp.wire``), the same declarations
(``wiretask._amqp.topology``), the same delay ladder. ``spec/TRANSPORTS.md`` §6 is the normative
description; this docstring says how the transport works.

**Two connections.** Publishing (and declaring, counting, purging) uses one connection,
consuming another, as Celery does; each is a ``Link`` used under its own lock, so a
consumer waiting for messages never delays a publish. A heartbeat thread (when
``heartbeat`` > 0) keeps both alive while their owner is busy, and notices a dead broker.

**Publishing** writes a whole batch (``publish_many``) in one socket write and then, with
publisher confirms (the default), waits until the broker has confirmed every message of
it: a publish that returned is on the broker. Messages are published ``mandatory``; an
unroutable one comes back (``basic.return``) and a refused one is nacked: both raise
``TransportError`` naming the messages and the cause (the others of the batch are on the
broker). A connection lost before the confirms arrive raises ``ConnectionLost``: the
outcome is unknown and a retry may publish a message twice (as Kombu's does): a publish
of the same frames after such an attempt is logged as a warning naming the tasks (the
frames of an unknown outcome are kept by identity, at most ``_UNKNOWN_KEPT`` for
``_UNKNOWN_TTL`` seconds, as the asyncio twin keeps them). Queues are declared before
their first publish on a connection, exactly as Celery declares them.

**Consuming** subscribes (``basic.consume``) to the requested queues with a per-consumer
prefetch window (``basic.qos``, not global: quorum queues refuse global QoS). The window is
the largest ``limit`` a ``receive_many`` has asked for: the worker asks for its room
(``concurrency + prefetch - running``), so the broker never pushes more than the worker
has room for, like Celery's prefetch. RabbitMQ applies a new window only to new
consumers, so a larger ``limit`` re-subscribes (messages already pushed stay buffered).
Deliveries are buffered as they arrive and handed out in arrival order; waiting polls the
socket without holding the connection's lock. Asking for a different set of queues
cancels the consumers of the others and requeues what they had pushed (RabbitMQ marks
those ``redelivered``).
A message whose content header py-amqp cannot read (``wire.tolerant_frame_handler``) is
dead-lettered here, raw, and never handed out: neither the connection nor the message
comes back to fail again.

**Inspection.** ``QueueStatistics`` is offered with what AMQP can tell (the ready count,
the dead letters' count), and ``QueueAdmin`` (``size``, ``purge``, ``dead_letters``: what
``wiretask purge`` and the counts of ``wiretask queue show`` use); ``peek`` is not (AMQP
cannot show messages without taking them from their consumers), so the ``Inspection``
capability is not offered (``spec/TRANSPORTS.md`` §6.9).

**Settling** acks, rejects or requeues on the channel that delivered the message. If that
channel or connection is gone, the broker has already requeued the message: settling it
raises ``TransportError`` and the message comes back (``redelivered=True``) to whoever
consumes next. ``dead_letter`` publishes a copy, with the reason in its headers, to
``wiretask.dead`` (routed to ``<queue>.dead``), waits for its confirm, then acks the
original: a crash in between leaves a duplicate dead letter, never a loss.

**Delays.** ``publish(..., not_before=t)`` sends the message through Celery's delay ladder
(declared on first use): it reaches its queue after ``ceil(t - now)`` whole seconds,
however long that is, and no consumer holds it meanwhile. The ``delay_mode`` option
decides whether the *calling API* sends delayed messages that way
(``capabilities.native_delay_on_send``): ``"auto"`` (default) does when every queue is a
quorum queue (where Celery 5.5+ uses the ladder itself) and otherwise sends Celery's own
form (the ``eta`` header, delivered at once, held by the consumer), which a Celery fleet
on classic queues expects; ``"ladder"`` always does; ``"celery"`` never uses the ladder,
not even for ``not_before``. Whenever the ladder may be used (``native_delay``), the
worker hands an early message back to it instead of holding it unacked, so RabbitMQ's
``consumer_timeout`` never closes its channel.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import amqp
from amqp import exceptions as amqp_errors
from amqp.channel import Channel

from wiretask._amqp import topology, wire
from wiretask._amqp.errors import connection_is_gone
from wiretask._amqp.link import Link, heartbeat_period
from wiretask._amqp.options import SETTINGS, Options, from_settings, parse
from wiretask.errors import EncodeError, TransportError, ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports._amqp_broadcast import AMQPInbox
from wiretask.transports.base import (
    BoundQueue,
    Capabilities,
    DeadLetter,
    Delivery,
    Exchange,
    Prepared,
    QueueStats,
    Settlement,
    Transport,
    check_broadcast,
    check_listen,
    queue_names,
)

if TYPE_CHECKING:
    from wiretask.transports.amqp_aio import AsyncAMQPTransport

__all__ = [
    "AMQPDelivery", "AMQPTransport", "Planned", "Routes", "declaration_refused", "refused",
]

log = logging.getLogger("wiretask.transports.amqp")

#: Headers a dead letter carries besides the original ones.
DEAD_REASON = "x-wiretask-dead-reason"
DEAD_QUEUE = "x-wiretask-dead-queue"
DEAD_AT = "x-wiretask-dead-at"
#: On a dead letter whose original headers could not be written back: what was left out.
DEAD_DROPPED = "x-wiretask-dead-dropped"

#: Longest single wait on the consumer socket (the caller's timeout bounds it too).
_WAIT_SLICE = 1.0
#: Most routes whose declarations are remembered (a bound, should routes be endless).
_ROUTE_CACHE = 10_000
#: Frames kept after an attempt whose outcome is unknown, and for how long (seconds):
#: a retry of one of them is said to risk a second copy (``_warn_if_sent_before``).
_UNKNOWN_KEPT = 10_000
_UNKNOWN_TTL = 300.0
#: Longest time ``queue_stats`` waits for pushes under way to a consumer of this
#: transport to arrive (``_ready_as_consumed``), and its poll.
_STATS_SETTLE = 2.0
_STATS_POLL = 0.02


class AMQPDelivery(Delivery):
    """A message received from RabbitMQ; settle it with ``ack``/``reject``/``dead_letter``."""

    def __init__(
        self, transport: AMQPTransport, frame: Frame, queue: str, redelivered: bool, *,
        delivery_tag: int, exchange: str, routing_key: str, channel: object,
        consumer_tag: str = "",
    ) -> None:
        super().__init__(transport, frame, queue, redelivered)
        self._consumer_tag = consumer_tag
        #: The broker's per-channel delivery tag.
        self.delivery_tag = delivery_tag
        #: Where it was published (``celery_delayed_...`` after the delay ladder).
        self.exchange = exchange
        self.routing_key = routing_key
        self._channel = channel


class AMQPTransport(Transport):
    """Kombu-compatible RabbitMQ transport for ``amqp://``, ``pyamqp://`` and ``amqps://``.

    Args:
        url: ``amqp[s]://[user[:password]@]host[:port][/vhost][?option=value&...]``, with
            Kombu's rules (``//`` is the vhost ``/``; see ``wiretask._amqp.options``).
        heartbeat: Seconds of AMQP heartbeat (default 60; 0 disables).
        heartbeat_checkrate: Heartbeat checks per interval (Celery's
            ``broker_heartbeat_checkrate``; default: four).
        connect_timeout: Seconds to connect and open (default 4, Celery's
            ``broker_connection_timeout``).
        confirm_publish: Wait for publisher confirms (default True).
        confirm_timeout: Seconds to wait for them before the outcome counts as unknown
            (``ConnectionLost``; default 30).
        ssl: True, or py-amqp's TLS options (``ca_certs``, ``certfile``, ``keyfile``,
            ``cert_reqs``, ``server_hostname``...); ``amqps://`` implies True. The query
            may hold ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
            ``ssl_cert_reqs`` and ``ssl_server_hostname``.
        login_method, read_timeout, write_timeout, socket_settings, client_properties,
            frame_max, channel_max: passed to ``amqp.Connection``.
        queue_type: ``"classic"`` (default) or ``"quorum"``: how queues without their own
            arguments are declared (Celery's ``task_default_queue_type``).
        queue_arguments: ``{queue: arguments}`` for queues declared with arguments of
            their own (what Celery's ``task_queues`` declare).
        max_priority: ``x-max-priority`` for queues without one (Celery's
            ``task_queue_max_priority``); enables ``capabilities.priorities``.
        exchange_type: Type of the exchange declared per queue (default ``"direct"``,
            Celery's ``task_create_missing_queue_exchange_type``).
        exchange_types: ``{exchange: type}`` of exchanges with a type of their own
            (the default queue's: Celery's ``task_default_exchange_type``).
        delay_mode: ``"auto"`` (default), ``"ladder"`` or ``"celery"`` (see above).
        delayed_delivery_queue_type: Type of the ladder's queues (default ``"quorum"``,
            Celery's ``broker_native_delayed_delivery_queue_type``).

    Raises:
        ImproperlyConfigured: a bad URL, or an unknown or bad option (named).
    """

    honoured_settings: ClassVar[frozenset[str]] = SETTINGS

    @classmethod
    def options_from_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Celery's broker and queue settings as this transport's options
        (``wiretask._amqp.options.from_settings`` lists them)."""
        return from_settings(settings)

    def __init__(self, url: str, **options: Any) -> None:
        config = parse(url, options)
        self._options: Options = config
        self.url = config.masked_url
        quorum_only = config.queue_type == "quorum" and all(
            config.queue_type_of(queue) == "quorum" for queue in config.queue_arguments
        )
        ladder = config.delay_mode != "celery"
        self.capabilities = Capabilities(
            native_delay=ladder,
            native_delay_on_send=ladder and (config.delay_mode == "ladder" or quorum_only),
            priorities=config.max_priority is not None,
            priority_order="higher-first",
            max_priority=config.max_priority if config.max_priority is not None else 255,
            # RabbitMQ delivers a priority above the queue's maximum as the maximum: a
            # worker re-publishing a Celery frame with priority 15 must not fail.
            out_of_range_priority="clamp",
            # RabbitMQ drops a message whose ``expiration`` passes while it waits in its
            # queue, but a consumer with room in its prefetch window is pushed messages
            # at once, so no expired message being received cannot be promised: the
            # worker checks ``expires`` itself, as Celery's does.
            per_message_ttl=False,
            visibility_timeout=None,
        )
        self._publisher = Link(config, "publish")
        self._consumer = Link(config, "consume")
        # Publishing state (under the publisher's lock).
        self._pub_channel: Channel | None = None
        self._admin_channel: Channel | None = None
        self._pub_epoch = -1
        self._declared: set[topology.Declaration] = set()
        #: Routes whose declarations were made on this connection (checked per publish).
        self._ready_routes: set[tuple[str, str, str, bool]] = set()
        #: Where messages go and what to declare first (shared with the asyncio twin).
        self.routes = Routes(config, self.capabilities)
        self._next_tag = 1
        self._confirm_floor = 1  # every tag below it is settled (acked or nacked)
        self._confirm_ceiling = 1  # tags of the batch in flight end below it
        self._confirmed: set[int] = set()  # settled tags at or above the floor
        self._nacked: set[int] = set()
        self._returned: list[tuple[str, str, str, amqp.Message]] = []
        #: id(frame) -> (the frame, when): frames written by an attempt whose outcome is
        #: unknown (``_publish``); a retry of one of them is said to risk a duplicate.
        self._unknown: dict[int, tuple[Frame, float]] = {}
        self._unknown_lock = threading.Lock()
        # Consuming state (under the consumer's lock).
        self._sub_channel: Channel | None = None
        self._sub_epoch = -1
        self._sub_token: object = object()  # identifies the consumer channel of the day
        self._window = 0
        self._tags: dict[str, str] = {}  # consumer tag -> queue
        self._by_queue: dict[str, str] = {}  # queue -> consumer tag
        #: consumer tag -> messages it delivered that are not settled yet (its window).
        self._in_window: Counter[str] = Counter()
        self._buffer: deque[amqp.Message] = deque()
        self._reading = False
        self._arrived = threading.Condition(self._consumer.lock)
        self._consuming = False
        #: Queue lists a receive declared, with the publisher epoch it did so in.
        self._queues_declared: dict[tuple[str, ...], int] = {}
        self._tag_numbers = itertools.count(1)
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_lock = threading.Lock()

    @property
    def options(self) -> Options:
        """The parsed URL and options (the asyncio twin connects with them)."""
        return self._options

    def __repr__(self) -> str:
        return f"<AMQPTransport {self.url} delay_mode={self._options.delay_mode}>"

    # -- life cycle -----------------------------------------------------------------

    def connect(self) -> None:
        """Open the publishing connection (and the consuming one, if this transport has
        consumed before), checking that the broker answers and accepts the credentials.

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: it refused (credentials, virtual host, TLS trust).
        """
        with self._publisher.lock:
            self._open_publisher()
        if self._consuming:
            with self._consumer.lock:
                self._open_consumer()

    def close(self) -> None:
        """Close both connections. The broker requeues every delivery this transport
        held and had not settled (marked redelivered); settling one afterwards raises
        ``TransportError``. Idempotent; a later call reconnects."""
        self._heartbeat_stop.set()
        with self._heartbeat_lock:
            thread, self._heartbeat = self._heartbeat, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._consumer.lock:
            self._consumer.close()
            self._forget_subscription()
            self._arrived.notify_all()
        with self._publisher.lock:
            self._publisher.close()
            self._pub_channel = self._admin_channel = None

    def async_twin(self) -> AsyncAMQPTransport:
        """The asyncio twin over aiormq (``transports.amqp_aio``): the same declarations,
        bytes, confirms and refusals, on a connection of its own; it owns this
        transport (for its options and routes)."""
        from wiretask.transports.amqp_aio import AsyncAMQPTransport  # noqa: PLC0415

        return AsyncAMQPTransport(self)

    def _open_publisher(self) -> amqp.Connection:
        """The publishing connection and its channels (caller holds its lock)."""
        link = self._publisher
        connection = link.open()
        if self._pub_epoch != link.epoch:
            self._pub_epoch = link.epoch
            self._pub_channel = self._admin_channel = None
            self._declared.clear()
            self._ready_routes.clear()
            self._start_heartbeat()
        if self._pub_channel is None:
            with link.translate("open the publishing channel"):
                channel = connection.channel()
                channel.auto_decode = False
                if self._options.confirm_publish:
                    channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._pub_channel = channel
            self._next_tag = self._confirm_floor = self._confirm_ceiling = 1
            self._confirmed.clear()
            self._nacked.clear()
        return connection

    def _admin(self) -> Channel:
        """The channel for declarations and queue inspection (publisher's lock held)."""
        connection = self._open_publisher()
        if self._admin_channel is None:
            with self._publisher.translate("open a channel"):
                channel = connection.channel()
                channel.auto_decode = False
            self._admin_channel = channel
        return self._admin_channel

    def _channel_failed(self, exc: BaseException, channel: Literal["admin", "publish"]) -> None:
        """After a driver error on the publisher's connection: drop what it broke."""
        if connection_is_gone(exc):
            self._publisher.discard()
            self._pub_channel = self._admin_channel = None
            return
        # A channel error: py-amqp has reopened the channel without our settings.
        broken = self._admin_channel if channel == "admin" else self._pub_channel
        if channel == "admin":
            self._admin_channel = None
        else:
            self._pub_channel = None
        if broken is not None:
            try:
                broken.close()
            except Exception:
                log.debug("closing a failed channel", exc_info=True)

    def _start_heartbeat(self) -> None:
        period = heartbeat_period(self._options)
        if period is None:
            return
        with self._heartbeat_lock:
            if self._heartbeat is not None:
                return
            self._heartbeat_stop = threading.Event()
            self._heartbeat = threading.Thread(
                target=self._beat, args=(self._heartbeat_stop, period),
                name="wiretask-amqp-heartbeat", daemon=True,
            )
            self._heartbeat.start()

    def _beat(self, stop: threading.Event, interval: float) -> None:
        """Heartbeat thread: read what arrived on both connections and send heartbeats,
        so that a busy owner does not lose its connections."""
        rate = self._options.heartbeat_checkrate
        while not stop.wait(interval):
            for link in (self._publisher, self._consumer):
                with link.lock:
                    try:
                        link.heartbeat(rate)
                    except TransportError as exc:
                        log.warning("%s connection lost: %s", link.role, exc)
                    if link is self._consumer:
                        self._arrived.notify_all()

    # -- declaring ------------------------------------------------------------------

    def _declare(self, queue: str) -> None:
        """Hook of ``declare_queue``: declare ``queue`` as Celery does (its exchange,
        itself, its binding), with the delay ladder and the queue's ladder binding when
        the calling API uses it.

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: e.g. ``PRECONDITION_FAILED``: the queue exists with other
                arguments (the message names them; match ``queue_type``/``max_priority``
                /``queue_arguments`` to the fleet's configuration).
        """
        self._declare_all(self.routes.queue_declarations(queue))

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        """Declare ``exchange`` (of ``exchange_type``), ``queue`` and the binding between
        them with ``routing_key``, as Celery declares a queue of ``task_queues`` bound
        to an exchange of its own (``routing.QueueBinding``: the app calls it before
        publishing to that exchange). Later publishes to ``exchange`` declare it with
        this type too.

        Raises:
            ValidationError: an empty queue or exchange name, or an unknown type.
            ConnectionLost, TransportError: as ``declare_queue``.
        """
        self._declare_all(self.routes.binding(queue, exchange, routing_key, exchange_type))

    def _declare_all(self, declarations: Iterable[topology.Declaration]) -> None:
        with self._publisher.lock:
            self._declare_locked(declarations)

    def _declare_locked(self, declarations: Iterable[topology.Declaration]) -> None:
        """Declare what was not declared on this connection yet: everything without
        waiting for replies, then one round trip that also reports any failure."""
        channel = self._admin()
        todo = [d for d in dict.fromkeys(declarations) if d not in self._declared]
        if not todo:
            return
        try:
            with self._publisher.translate("declare"):
                for item in todo:
                    _send_declaration(channel, item)
                channel.basic_qos(0, 0, False)  # a synchronous barrier: errors arrive first
        except TransportError as exc:
            self._channel_failed(exc.__cause__ or exc, "admin")
            refusal = declaration_refused(exc, self.url)
            if refusal is not exc:
                raise refusal from exc
            raise
        self._declared.update(todo)

    # -- producing ------------------------------------------------------------------

    def _publish(self, messages: Sequence[Prepared]) -> None:
        """Hook of ``publish`` and ``publish_many``: the batch in one write, then one
        round of confirms for all of it. Every message is encoded first: one that cannot
        be is an ``EncodeError`` before anything is sent.

        Raises:
            EncodeError, ValidationError: a message or route cannot be carried (nothing
                was sent).
            ConnectionLost: the connection failed; the outcome may be unknown.
            TransportError: some messages were nacked or unroutable (named); the others
                of the batch are on the broker.
        """
        if self._unknown:  # rare: a retry, or anything published after one
            self._warn_if_sent_before(messages)
        self._send([self.routes.plan(message) for message in messages],
                   on_unknown=lambda exc: self._remember_unknown(messages))

    def _remember_unknown(self, messages: Sequence[Prepared]) -> None:
        """Keep the frames of an attempt whose outcome is unknown (written, then the
        connection failed or no confirm came), for ``_warn_if_sent_before``."""
        now = time.monotonic()
        with self._unknown_lock:
            unknown = self._unknown
            for message in messages:
                unknown[id(message.frame)] = (message.frame, now)
            expired = now - _UNKNOWN_TTL
            for key in [k for k, (_, since) in unknown.items() if since < expired]:
                del unknown[key]
            while len(unknown) > _UNKNOWN_KEPT:
                del unknown[next(iter(unknown))]

    def _warn_if_sent_before(self, messages: Sequence[Prepared]) -> None:
        """A publish of frames an earlier attempt wrote with an unknown outcome (the
        publish retry policy's next attempt): RabbitMQ has no publish markers to ask, so
        it is sent again, and said to risk a second copy (at least once)."""
        with self._unknown_lock:
            again = [m for m in messages
                     if self._unknown.get(id(m.frame), (None, 0.0))[0] is m.frame]
            for message in again:
                del self._unknown[id(message.frame)]
        for message in again:
            log.warning("task %s: published again after an attempt whose outcome is "
                        "unknown: RabbitMQ may deliver it twice, both copies with this "
                        "task id", message.frame.headers.get("id"))

    def _send(self, plan: Sequence[Planned],
              on_unknown: Callable[[TransportError], None] | None = None) -> None:
        """Declare what ``plan`` needs, write it in one go, wait for its confirms;
        ``on_unknown`` is told of a failure after the write began (the outcome is
        unknown)."""
        link = self._publisher
        with link.lock:
            connection = self._open_publisher()
            ready = self._ready_routes
            fresh = {item.where: item.declarations for item in plan if item.where not in ready}
            if fresh:
                self._declare_locked(d for declarations in fresh.values() for d in declarations)
                ready.update(fresh)
            channel = self._pub_channel
            assert channel is not None
            frame_max = connection.frame_max
            data = b"".join(
                wire.publish_frames(item.encoded, item.exchange, item.routing_key,
                                    channel=channel.channel_id, frame_max=frame_max)
                for item in plan
            )
            first = self._next_tag
            self._next_tag += len(plan)
            self._confirm_ceiling = self._next_tag
            self._returned.clear()
            try:
                with link.translate("publish"):
                    connection.transport.write(data)
                    connection.bytes_sent += 1
                    if self._options.confirm_publish:
                        self._await_confirms(connection)
            except TransportError as exc:
                self._channel_failed(exc.__cause__ or exc, "publish")
                if on_unknown is not None:
                    on_unknown(exc)
                raise
            nacked = sorted(t for t in self._nacked if t >= first)
            self._nacked.clear()
            returned = list(self._returned)
            self._returned.clear()
        if nacked or returned:
            raise refused(
                self.url, plan, [tag - first for tag in nacked],
                [(why, ex, rk, _task_id(m)) for why, ex, rk, m in returned],
            )

    def _await_confirms(self, connection: amqp.Connection) -> None:
        deadline = time.monotonic() + self._options.confirm_timeout
        while self._confirm_floor < self._confirm_ceiling:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no publisher confirm within {self._options.confirm_timeout:g} s; "
                    "whether the messages are on the broker is unknown"
                )
            connection.drain_events(timeout=remaining)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle_confirm(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        low = self._confirm_floor if multiple else tag
        self._nacked.update(t for t in range(low, tag + 1) if t not in self._confirmed)
        self._settle_confirm(tag, multiple)

    def _settle_confirm(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._confirm_floor = max(self._confirm_floor, tag + 1)
        else:
            self._confirmed.add(tag)
        floor = self._confirm_floor
        confirmed = self._confirmed
        while floor in confirmed:
            confirmed.discard(floor)
            floor += 1
        self._confirm_floor = floor
        if multiple and confirmed:
            self._confirmed = {t for t in confirmed if t >= floor}

    def _on_return(self, exc: Exception, exchange: str, routing_key: str,
                   message: amqp.Message) -> None:
        if not self._options.confirm_publish:
            log.warning("the broker returned an unroutable message (exchange %r, routing "
                        "key %r): %s", exchange, routing_key, exc)
        self._returned.append((str(exc), exchange, routing_key, message))

    # -- broadcast (base.Broadcast: the control channel and events) -----------------

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        """``Broadcast.broadcast``: declare ``exchange`` as Kombu does and publish
        ``frame`` on it, not mandatory and unconfirmed, as Kombu's pidbox and event
        producers do (``_amqp_broadcast``).

        Raises:
            ValidationError, EncodeError: as ``Broadcast.broadcast``.
            ConnectionLost: the broker cannot be reached.
            TransportError: e.g. the exchange exists with another type.
        """
        check_broadcast(exchange, frame, routing_key)
        encoded = wire.encode(frame)
        link = self._publisher
        with link.lock:
            self._declare_locked([topology.Exchange(exchange.name, exchange.type,
                                                    durable=exchange.durable)])
            channel = self._admin()
            connection = link.connection
            assert connection is not None
            data = wire.publish_frames(encoded, exchange.name, routing_key,
                                       channel=channel.channel_id,
                                       frame_max=connection.frame_max, mandatory=False)
            try:
                with link.translate("broadcast"):
                    connection.transport.write(data)
                    connection.bytes_sent += 1
            except TransportError as exc:
                self._channel_failed(exc.__cause__ or exc, "admin")
                raise

    def listen(self, exchange: Exchange, queue: BoundQueue) -> AMQPInbox:
        """``Broadcast.listen``: ``queue`` declared, bound and consumed on a connection
        of its own (``_amqp_broadcast``).

        Raises:
            ValidationError: as ``Broadcast.listen``.
            ConnectionLost: the broker cannot be reached.
            TransportError: a declaration was refused.
        """
        check_listen(exchange, queue)
        return AMQPInbox(self._options, exchange, queue)

    # -- consuming ------------------------------------------------------------------

    def _receive(self, queues: list[str], timeout: float) -> AMQPDelivery | None:
        """Hook of ``receive`` (see ``_receive_many``)."""
        received = self._receive_many(queues, 1, timeout)
        return received[0] if received else None

    def _receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> list[AMQPDelivery]:
        """Hook of ``receive_many``: up to ``limit`` messages from ``queues``, in the
        order the broker pushed them; waits up to ``timeout`` seconds for the first.
        Subscribes to ``queues`` with a prefetch window of at least ``limit`` (see the
        module doc).

        Raises:
            ConnectionLost: the connection failed (deliveries it held come back to the
                queue; this transport reconnects on the next call).
            TransportError: e.g. a queue declared with other arguments.
        """
        names = queues
        deadline = time.monotonic() + timeout
        self._consuming = True
        if self._queues_declared.get(tuple(names)) != self._pub_epoch:
            self._declare_all([d for queue in names for d in self.routes.queue_declarations(queue)])
            self._queues_declared[tuple(names)] = self._pub_epoch
        while True:
            taken, unreadable = self._receive_locked(names, limit, deadline)
            for delivery, problem in unreadable:  # outside the consumer's lock
                self._dead_letter_unreadable(delivery, problem)
            if taken or time.monotonic() >= deadline:
                return taken

    def _receive_locked(
        self, names: list[str], limit: int, deadline: float
    ) -> tuple[list[AMQPDelivery], list[tuple[AMQPDelivery, str]]]:
        """Wait (until ``deadline``) for deliveries; return the readable ones and the
        unreadable ones with their problem (see ``_receive_many``)."""
        link = self._consumer
        with link.lock:
            while True:
                self._subscribe(names, limit)
                self._pump_consumer()
                taken, unreadable = self._take(names, limit)
                if taken or unreadable:
                    return taken, unreadable
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], []
                if self._reading:  # another thread waits on the socket and will tell
                    self._arrived.wait(min(remaining, _WAIT_SLICE))
                    continue
                waiter = link.waiter()
                if waiter is None:
                    continue
                self._reading = True
                link.lock.release()
                try:
                    waiter.wait(min(remaining, _WAIT_SLICE))
                finally:
                    link.lock.acquire()
                    self._reading = False
                    self._arrived.notify_all()

    def _dead_letter_unreadable(self, delivery: AMQPDelivery, problem: str) -> None:
        """Dead-letter a message whose content header could not be read (its frame
        keeps the body and the raw property bytes): a worker could not even tell what
        it is, and it must not come back to fail again (TRANSPORTS.md §6.8). If that
        fails, the message is requeued, to be dead-lettered when it comes back."""
        reason = f"unreadable message properties: {problem}"
        log.error("message %d from %r dead-lettered: %s", delivery.delivery_tag,
                  delivery.queue, reason)
        try:
            delivery.dead_letter(reason)
        except TransportError:
            log.exception("could not dead-letter an unreadable message from %r",
                          delivery.queue)
            try:
                delivery.reject(requeue=True)
            except TransportError:
                log.debug("requeueing it failed too: the broker requeues it",
                          exc_info=True)

    def _open_consumer(self) -> amqp.Connection:
        """The consuming connection (caller holds its lock); a new one starts a new
        subscription, and makes every delivery of the old one unsettleable."""
        link = self._consumer
        connection = link.open()
        if self._sub_epoch != link.epoch:
            self._forget_subscription()
            self._sub_epoch = link.epoch
            self._start_heartbeat()
        return connection

    def _forget_subscription(self) -> None:
        self._sub_channel = None
        self._sub_token = object()
        self._window = 0
        self._tags.clear()
        self._by_queue.clear()
        self._buffer.clear()
        self._in_window.clear()

    def _subscribe(self, names: list[str], limit: int) -> None:
        """Consume exactly ``names`` with a window of at least ``limit`` (caller holds
        the consumer's lock)."""
        link = self._consumer
        connection = self._open_consumer()
        wanted = set(names)
        window = max(self._window, limit)
        # Every consumer's window is taken by messages the caller holds unsettled (a
        # worker holding eta messages): RabbitMQ pushes nothing more to them, but a new
        # consumer starts with an empty window of its own.
        full = bool(self._by_queue) and not self._buffer and all(
            self._in_window[self._by_queue[q]] >= self._window for q in self._by_queue)
        if (self._sub_channel is not None and window == self._window and not full
                and wanted == self._by_queue.keys()):
            return
        try:
            with link.translate("subscribe"):
                channel = self._sub_channel
                if channel is None:
                    channel = connection.channel()
                    channel.auto_decode = False
                    self._sub_channel = channel
                    self._sub_token = object()
                resubscribe = window != self._window or full
                for queue in [q for q in self._by_queue if resubscribe or q not in wanted]:
                    self._unsubscribe(channel, queue, requeue=queue not in wanted)
                if window != self._window:
                    channel.basic_qos(0, window, False)
                    self._window = window
                for queue in names:
                    if queue in self._by_queue:
                        continue
                    tag = f"wiretask.{os.getpid()}.{id(self):x}.{next(self._tag_numbers)}"
                    channel.basic_consume(queue, consumer_tag=tag, callback=self._on_delivery,
                                          on_cancel=self._on_cancel)
                    self._tags[tag] = queue
                    self._by_queue[queue] = tag
        except TransportError as exc:
            cause = exc.__cause__ or exc
            if connection_is_gone(cause):
                link.discard()
                self._forget_subscription()
            else:  # a channel error: start again on a fresh channel next time
                self._drop_sub_channel()
            raise

    def _unsubscribe(self, channel: Channel, queue: str, *, requeue: bool) -> None:
        tag = self._by_queue.pop(queue)
        channel.basic_cancel(tag)  # its buffered messages keep their tag -> queue entry
        if not requeue:
            return
        kept: deque[amqp.Message] = deque()
        for message in self._buffer:
            if message.delivery_info["consumer_tag"] == tag:
                channel.basic_reject(message.delivery_info["delivery_tag"], requeue=True)
                self._release(tag)
            else:
                kept.append(message)
        self._buffer = kept

    def _drop_sub_channel(self) -> None:
        """Close the consumer channel after a channel error: its deliveries are requeued
        by the broker."""
        channel = self._sub_channel
        self._forget_subscription()
        if channel is not None:
            try:
                channel.close()
            except Exception:
                log.debug("closing a failed consumer channel", exc_info=True)

    def _on_delivery(self, message: amqp.Message) -> None:
        self._in_window[message.delivery_info["consumer_tag"]] += 1
        self._buffer.append(message)

    def _release(self, tag: str) -> None:
        """A message delivered on consumer ``tag`` was settled: it leaves that
        consumer's prefetch window (consumer's lock held). A cancelled consumer with
        nothing left is forgotten."""
        left = self._in_window[tag] - 1
        if left > 0:
            self._in_window[tag] = left
            return
        self._in_window.pop(tag, None)
        queue = self._tags.get(tag)
        if queue is not None and self._by_queue.get(queue) != tag:
            del self._tags[tag]

    def _on_cancel(self, tag: str) -> None:
        """The broker cancelled a consumer (its queue was deleted): subscribe again on
        the next receive (which fails loudly if the queue is gone for good)."""
        queue = self._tags.get(tag)
        if queue is not None and self._by_queue.get(queue) == tag:
            del self._by_queue[queue]
            log.warning("the broker cancelled the consumer of %r", queue)

    def _pump_consumer(self) -> None:
        try:
            self._consumer.pump()
        except TransportError:
            self._forget_subscription()
            raise

    def _take(
        self, names: list[str], limit: int
    ) -> tuple[list[AMQPDelivery], list[tuple[AMQPDelivery, str]]]:
        """Up to ``limit`` buffered deliveries, and those among them whose content header
        could not be read (``wire.unreadable_of``), apart, with the problem."""
        buffer = self._buffer
        if not buffer:
            return [], []
        taken: list[AMQPDelivery] = []
        unreadable: list[tuple[AMQPDelivery, str]] = []
        token = self._sub_token
        tags = self._tags
        while buffer and len(taken) < limit:
            message = buffer.popleft()
            info = message.delivery_info
            queue = tags.get(info["consumer_tag"])
            if queue is None:  # its consumer was cancelled by the broker
                queue = info["routing_key"] if not info["exchange"] else ""
            delivery = AMQPDelivery(
                self, frame=wire.to_frame(message), queue=queue,
                redelivered=info["redelivered"], delivery_tag=info["delivery_tag"],
                exchange=info["exchange"], routing_key=info["routing_key"], channel=token,
                consumer_tag=info["consumer_tag"],
            )
            problem = wire.unreadable_of(message)
            if problem is None:
                taken.append(delivery)
            else:
                unreadable.append((delivery, problem[0]))
        return taken, unreadable

    # -- settling -------------------------------------------------------------------

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        """Hook of the ``Delivery`` verbs (the delivery's lock is held): ``basic.ack``,
        ``basic.reject`` (``requeue`` or not) on the channel that delivered it; a dead
        letter is first published, confirmed, to ``<queue>.dead``, then acked.

        Raises:
            TransportError: the channel that delivered it is gone (the broker has
                requeued the message, which comes back redelivered); the delivery is
                marked so, and cannot be settled any more.
            ConnectionLost: the connection failed while settling (likewise marked: the
                broker requeues the message).
        """
        assert isinstance(delivery, AMQPDelivery)  # the base hands back our own
        if how == "dead_letter":
            self._publish_dead_letter(delivery, reason)
        link = self._consumer
        with link.lock:
            try:
                channel = self._channel_of(delivery)
            except TransportError as exc:
                if how != "dead_letter":
                    raise
                raise TransportError(
                    f"{exc}; its dead letter is in {delivery.queue}.dead already, and it "
                    "will be dead-lettered again when it comes back", url=self.url,
                ) from exc
            try:
                with link.translate(_VERB[how]):
                    if how in ("ack", "dead_letter"):
                        channel.basic_ack(delivery.delivery_tag)
                    else:
                        channel.basic_reject(delivery.delivery_tag, requeue=how == "requeue")
            except TransportError:
                delivery._settled = _LOST
                link.discard()
                self._forget_subscription()
                raise
            self._release(delivery._consumer_tag)

    def _channel_of(self, delivery: AMQPDelivery) -> Channel:
        """The channel ``delivery`` can be settled on (consumer's lock held); if that
        channel is gone, mark the delivery and raise ``TransportError``."""
        channel = self._sub_channel
        if delivery._channel is not self._sub_token or channel is None:
            delivery._settled = _GONE
            raise TransportError(
                f"cannot settle delivery {delivery.delivery_tag} from {delivery.queue!r} "
                f"(task {delivery.frame.task_id!r}): it was {_GONE}", url=self.url,
            )
        return channel

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        """Hook of ``ack_many``: the acks of this transport's deliveries in one write
        (an ack has no reply to wait for), keeping the settle-once rule (each
        delivery's lock is held, taken in one global order); other transports'
        deliveries are acked by their own ``ack()``. Every one is tried; the first
        failure is raised after."""
        first: TransportError | None = None
        ours: dict[int, AMQPDelivery] = {}
        for delivery in deliveries:
            if isinstance(delivery, AMQPDelivery) and delivery._transport is self:
                ours.setdefault(id(delivery), delivery)
            else:
                try:
                    delivery.ack()
                except TransportError as exc:
                    first = first or exc
        locked = sorted(ours.values(), key=id)
        taken: list[AMQPDelivery] = []
        try:
            for delivery in locked:
                delivery._lock.acquire()
                taken.append(delivery)
            pending, refused = self._unsettled_of(deliveries, ours)
            first = first or refused
            if pending:
                first = self._write_acks(pending) or first
        finally:
            for delivery in taken:
                delivery._lock.release()
        if first is not None:
            raise first

    def _unsettled_of(
        self, deliveries: list[Delivery], ours: dict[int, AMQPDelivery]
    ) -> tuple[list[AMQPDelivery], TransportError | None]:
        """This transport's deliveries among ``deliveries`` that may be acked (their
        locks held), in order, and the error for the first that may not (settled
        already, or listed twice)."""
        pending: list[AMQPDelivery] = []
        refused: TransportError | None = None
        for delivery in deliveries:
            if id(delivery) not in ours:
                continue
            assert isinstance(delivery, AMQPDelivery)
            if delivery._settled is not None or delivery in pending:
                refused = refused or TransportError(
                    f"cannot ack a delivery that was already {delivery._settled or 'acked'} "
                    f"(queue {delivery.queue!r}, task {delivery.frame.task_id!r})",
                    url=self.url)
                continue
            pending.append(delivery)
        return pending, refused

    def _write_acks(self, pending: list[AMQPDelivery]) -> TransportError | None:
        """``basic.ack`` of ``pending`` (their locks held) in one write; marks each one
        acked or lost; returns the first error."""
        link = self._consumer
        first: TransportError | None = None
        with link.lock:
            live: list[AMQPDelivery] = []
            for delivery in pending:
                try:
                    self._channel_of(delivery)
                except TransportError as exc:
                    first = first or exc
                    continue
                live.append(delivery)
            if not live:
                return first
            channel = self._sub_channel
            connection = link.connection
            assert channel is not None
            assert connection is not None
            data = wire.ack_frames(channel.channel_id, [d.delivery_tag for d in live])
            try:
                with link.translate("ack"):
                    connection.transport.write(data)
                    connection.bytes_sent += 1
            except TransportError as exc:
                for delivery in live:
                    delivery._settled = _LOST
                link.discard()
                self._forget_subscription()
                return first or exc
            for delivery in live:
                delivery._settled = "acked"
                self._release(delivery._consumer_tag)
        return first

    def _publish_dead_letter(self, delivery: AMQPDelivery, reason: str) -> None:
        """Publish a copy of ``delivery`` with the reason to ``<queue>.dead`` and wait
        for its confirm (if that fails, the delivery stays unsettled)."""
        frame = delivery.frame
        dead = {DEAD_REASON: reason, DEAD_QUEUE: delivery.queue, DEAD_AT: time.time()}
        copy = Frame.adopt(frame.body, frame.content_type, frame.content_encoding,
                           {**frame.headers, **dead}, dict(frame.properties))
        try:
            self._send([self._dead_letter_plan(delivery, copy)])
        except EncodeError as exc:
            # Headers or properties of types, or a size, that cannot be written back
            # (a received header table is not always one AMQP can carry again): the
            # dead letter keeps the body and labels, and says what was left out.
            dead[DEAD_DROPPED] = f"the original headers and properties: {exc}"[:1000]
            dead[DEAD_REASON] = reason[:1000]  # so that the rest fits AMQP's smallest frame
            bare = Frame.adopt(frame.body, frame.content_type, frame.content_encoding, dead, {})
            self._send([self._dead_letter_plan(delivery, bare)])

    @staticmethod
    def _dead_letter_plan(delivery: AMQPDelivery, copy: Frame) -> Planned:
        return Planned(wire.encode(copy), topology.DEAD_EXCHANGE, delivery.queue,
                        (topology.DEAD_EXCHANGE, delivery.queue, "", False),
                        tuple(topology.dead_letter_place(delivery.queue)),
                        delivery.frame.task_id)

    # -- inspecting and housekeeping --------------------------------------------------

    def size(self, queue: str) -> int:
        """Messages ready in ``queue`` (a passive declare); 0 if it does not exist.
        Messages waiting in the delay ladder are not counted: the ladder's queues are
        shared by every destination and cannot be counted per queue without consuming."""
        queue_names([queue])
        return self._inspect(queue, "size")

    def purge(self, queue: str) -> int:
        """Remove the ready messages of ``queue``; return how many (0 if it does not
        exist). Messages in flight stay; those in the delay ladder arrive later."""
        queue_names([queue])
        return self._inspect(queue, "purge")

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """``QueueStatistics``: what AMQP 0-9-1 tells without consuming. ``ready`` is the
        queue's ``message_count`` (a passive ``queue.declare``), plus, for a queue this
        transport consumes, what its consumer was pushed and has not handed out
        (RabbitMQ counts those as delivered; another process's prefetch is invisible);
        ``dead`` is the ``message_count`` of ``<queue>.dead``, read after it. The rest
        is ``None``: the protocol reports no in-flight count, no ages and no counters
        (RabbitMQ's management plugin does), and messages waiting in the delay ladder
        cannot be counted per queue. A queue that does not exist reads as empty.

        Raises:
            ValidationError: a single string instead of a list, or an empty queue name.
            ConnectionLost, TransportError: the broker failed.
        """
        names = queue_names(queues)
        stats: list[QueueStats] = []
        for queue in names:
            ready = self._ready_as_consumed(queue)
            if ready is None:
                ready = self._inspect(queue, "size")
            dead = self._inspect(f"{queue}.dead", "size")
            stats.append(QueueStats(queue=queue, at=time.time(), ready=ready, dead=dead))
        return stats

    def _ready_as_consumed(self, queue: str) -> int | None:
        """For a queue this transport consumes: its ``message_count`` read on the
        consumer's own channel, plus the messages pushed to the consumer and not handed
        out yet; ``None`` for a queue it does not consume. RabbitMQ counts pushed
        messages as delivered, but they are as ready as the queue's for this consumer.

        The two numbers are one instant only when nothing is on its way from the queue
        to this consumer: a message pushed around the count (after an ack freed room
        in the consumer's prefetch window) may be counted by neither, or, read again,
        by both. RabbitMQ pushes while the window has room and the queue has messages,
        so the count is read until that stops (``_STATS_SETTLE`` seconds at most;
        a classic queue settles within a round trip or two, a quorum queue through its
        Raft log): the window is full (nothing more can be pushed, so nothing is on
        its way), or the queue is empty and one more round trip on the same channel
        has brought in whatever was pushed before the count."""
        link = self._consumer
        deadline = time.monotonic() + _STATS_SETTLE
        while True:
            with link.lock:
                channel = self._sub_channel
                tag = self._by_queue.get(queue)
                if channel is None or tag is None:
                    return None
                try:
                    with link.translate("size"):
                        count = int(channel.queue_declare(queue, passive=True).message_count)
                        if count == 0:
                            # Empty: what it pushed before answering arrives before
                            # this second answer (RabbitMQ answers a channel in order).
                            channel.queue_declare(queue, passive=True)
                except TransportError as exc:
                    if connection_is_gone(exc.__cause__ or exc):
                        link.discard()
                        self._forget_subscription()
                    else:
                        self._drop_sub_channel()
                    raise
                tags = self._tags
                buffered = sum(1 for m in self._buffer
                               if tags.get(m.delivery_info["consumer_tag"]) == queue)
                full = self._window > 0 and self._in_window[tag] >= self._window
                if count == 0 or full or time.monotonic() >= deadline:
                    return count + buffered
                waiter = link.waiter()
            # Room in the window and messages in the queue: a push is due; let it in.
            if waiter is not None:
                waiter.wait(_STATS_POLL)
            with link.lock:
                link.pump()

    def _inspect(self, queue: str, what: Literal["size", "purge"]) -> int:
        with self._publisher.lock:
            channel = self._admin()
            try:
                with self._publisher.translate(what):
                    if what == "size":
                        return int(channel.queue_declare(queue, passive=True).message_count)
                    return int(channel.queue_purge(queue) or 0)
            except TransportError as exc:
                cause = exc.__cause__ or exc
                self._channel_failed(cause, "admin")
                if isinstance(cause, amqp_errors.NotFound):
                    return 0
                raise

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """The dead letters of ``queue`` (``<queue>.dead``), oldest first. They are read
        with ``basic.get`` and given back by closing the reading channel, which RabbitMQ
        puts back in their places: nothing is lost or reordered, and they are marked
        redelivered (which means nothing for a dead letter). Nothing should consume
        ``<queue>.dead`` meanwhile."""
        queue_names([queue])
        letters: list[DeadLetter] = []
        with self._publisher.lock:
            connection = self._open_publisher()
            try:
                with self._publisher.translate("dead_letters"):
                    channel = connection.channel()
                    channel.auto_decode = False
                    try:
                        while True:
                            message = channel.basic_get(f"{queue}.dead", no_ack=False)
                            if message is None:
                                break
                            letters.append(_read_dead_letter(queue, message))
                    finally:
                        if channel.is_open:
                            channel.close()
            except TransportError as exc:
                cause = exc.__cause__ or exc
                if connection_is_gone(cause):
                    self._publisher.discard()
                    raise
                if isinstance(cause, amqp_errors.NotFound):
                    return []
                raise
        return letters


class Planned:
    """One message ready to publish: encoded, routed, with what its route needs declared
    (``where`` names the route)."""

    __slots__ = ("declarations", "encoded", "exchange", "routing_key", "task_id", "where")

    def __init__(self, encoded: wire.Encoded, exchange: str, routing_key: str,
                 where: tuple[str, str, str, bool],
                 declarations: tuple[topology.Declaration, ...], task_id: str | None) -> None:
        self.encoded = encoded
        self.exchange = exchange
        self.routing_key = routing_key
        self.where = where
        self.declarations = declarations
        self.task_id = task_id


class Routes:
    """Where messages go and what must be declared before them, with no I/O: the part
    of publishing the sync transport and its asyncio twin (``transports.amqp_aio``)
    share. Queues are declared as Celery declares them, with the delay ladder when the
    calling API uses it; each route's declarations are checked once and remembered."""

    def __init__(self, options: Options, capabilities: Capabilities) -> None:
        self._options = options
        self._capabilities = capabilities
        #: Exchanges with a type of their own (``exchange_types``, then ``binding``).
        self.exchange_types: dict[str, str] = dict(options.exchange_types)
        #: (exchange, routing key, queue, delayed) -> what the route needs declared.
        self._cache: dict[tuple[str, str, str, bool], tuple[topology.Declaration, ...]] = {}

    def queue_declarations(self, queue: str) -> list[topology.Declaration]:
        """Celery's declaration of ``queue``; with the ladder and the queue's binding to
        it when the calling API sends delayed messages that way (as Celery's worker
        declares them for its quorum queues, so that Celery's own delayed messages
        reach a fleet of wiretask workers)."""
        options = self._options
        declarations = topology.queue_declaration(
            queue, options.arguments_of(queue),
            self.exchange_types.get(queue, options.exchange_type),
        )
        if self._capabilities.native_delay_on_send:
            declarations += self.ladder_for(queue)
        return declarations

    def ladder_for(self, queue: str) -> list[topology.Declaration]:
        return [*topology.ladder(self._options.delayed_delivery_queue_type),
                topology.delayed_destination(queue)]

    def binding(
        self, queue: str, exchange: str, routing_key: str,
        exchange_type: Literal["direct", "topic"],
    ) -> list[topology.Declaration]:
        """What ``bind_queue`` declares: ``exchange`` (of ``exchange_type``, which later
        publishes to it use too), ``queue`` and the binding between them.

        Raises:
            ValidationError: an empty queue or exchange name, or an unknown type.
        """
        queue_names([queue])
        if not isinstance(exchange, str) or not exchange:
            raise ValidationError("exchange", f"must be a non-empty string, got {exchange!r}")
        if exchange_type not in ("direct", "topic"):
            raise ValidationError("exchange_type", "must be 'direct' or 'topic'",
                                  value=exchange_type)
        wire.check_name("exchange", exchange)
        wire.check_name("routing_key", routing_key)
        self.exchange_types[exchange] = exchange_type
        return [
            topology.Exchange(exchange, exchange_type),
            topology.Queue(queue, self._options.arguments_of(queue)),
            topology.Bind(queue, exchange, routing_key),
        ]

    def plan(self, message: Prepared) -> Planned:
        """Encode one message and decide where it goes (no I/O)."""
        route = message.route
        exchange, key, destination = route.exchange, route.key, message.queue
        encoded = wire.encode(message.frame)
        delayed = 0
        if message.due is not None and self._capabilities.native_delay:
            delayed = topology.delay_seconds(message.due - time.time())
        where = (exchange, key, route.queue, delayed > 0)
        declarations = self._cache.get(where)
        if declarations is None:
            declarations = self._route_declarations(exchange, key, route.queue, destination,
                                                    delayed=delayed > 0)
        if delayed:
            exchange, key = topology.TOP_LEVEL, topology.delay_routing_key(delayed, destination)
            wire.check_name("routing_key", key)
        return Planned(encoded, exchange, key, where, declarations, message.frame.task_id)

    def _route_declarations(
        self, exchange: str, key: str, queue: str, destination: str, *, delayed: bool
    ) -> tuple[topology.Declaration, ...]:
        """What a route needs declared, checked and remembered: the same routes come
        back on every publish."""
        queue_names([destination])
        wire.check_name("exchange", exchange)
        wire.check_name("routing_key", key)
        options = self._options
        if exchange:
            declarations: list[topology.Declaration] = [
                topology.Exchange(exchange,
                                  self.exchange_types.get(exchange, options.exchange_type)),
                topology.Queue(queue, options.arguments_of(queue)),
                topology.Bind(queue, exchange, key),
            ]
        else:
            declarations = self.queue_declarations(key)
        if delayed:
            declarations += self.ladder_for(destination)
        result = tuple(declarations)
        if len(self._cache) < _ROUTE_CACHE:
            self._cache[(exchange, key, queue, delayed)] = result
        return result


def declaration_refused(exc: TransportError, url: str) -> TransportError:
    """The error of a refused declaration: ``exc``, or, when the delay ladder exists
    with other arguments, one that says which setting to match."""
    if "PRECONDITION_FAILED" in str(exc) and topology.LADDER_PREFIX in str(exc):
        return TransportError(
            f"{exc}; the delay ladder exists with other arguments: set "
            "delayed_delivery_queue_type to the fleet's "
            "broker_native_delayed_delivery_queue_type", url=url,
        )
    return exc


def refused(
    url: str, plan: Sequence[Planned], nacked: Sequence[int],
    returned: Sequence[tuple[str, str, str, str]],
) -> TransportError:
    """The error of a batch some of whose messages the broker refused: ``nacked``
    (positions in ``plan``) and ``returned`` (unroutable: why, exchange, routing key,
    task id); the others of the batch are on the broker."""
    problems = []
    if returned:
        what = [f"task {task_id} (exchange {ex!r}, routing key {rk!r}: {why})"
                for why, ex, rk, task_id in returned[:5]]
        problems.append(f"{len(returned)} unroutable message(s), returned by the "
                        f"broker: {'; '.join(what)}")
    if nacked:
        ids = [plan[i].task_id for i in nacked if 0 <= i < len(plan)]
        problems.append(f"{len(nacked)} message(s) refused (nacked) by the broker, e.g. "
                        f"a full queue with x-overflow=reject-publish: tasks {ids[:5]}")
    return TransportError("publish: " + "; ".join(problems), url=url)


_VERB: dict[str, str] = {"ack": "ack", "reject": "reject", "requeue": "requeue",
                         "dead_letter": "dead-letter"}
#: Why a delivery can no longer be settled once its channel is gone.
_GONE = ("lost with the channel that delivered it (the broker has requeued the message; "
         "it comes back redelivered)")
_LOST = "lost with its connection (the broker requeues the message; it comes back redelivered)"


def _send_declaration(channel: Channel, item: topology.Declaration) -> None:
    channel.send_method(*wire.declaration_method(item))


def _task_id(message: amqp.Message) -> str:
    headers = message.properties.get("application_headers") or {}
    value = headers.get("id") or message.properties.get("correlation_id")
    return str(value) if value else "<no id>"


def _read_dead_letter(queue: str, message: amqp.Message) -> DeadLetter:
    frame = wire.to_frame(message)
    headers = dict(frame.headers)
    reason = headers.pop(DEAD_REASON, None)
    headers.pop(DEAD_QUEUE, None)
    at = headers.pop(DEAD_AT, 0.0)
    original = Frame.adopt(frame.body, frame.content_type, frame.content_encoding, headers,
                           dict(frame.properties))
    return DeadLetter(
        queue=queue, reason=str(reason) if reason is not None else "unknown (no reason header)",
        frame=original, raw=frame.body,
        at=float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0,
    )
