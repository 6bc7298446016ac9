"""Celery's ``rpc://`` result backend: a task's states travel as messages to the reply
queue of the client that sent it (RabbitMQ).

``spec/TRANSPORTS.md`` §4.3 is the normative description; this docstring says how the
backend works and what it cannot do.

**The client's side.** Every message an app sends carries its ``reply_to``: the app's
oid (``App.oid``, Celery's rule: a UUID 3 of the node, the process and the app), one per
app and process. Before a task is published the app hands its id to ``track``, which
declares that reply queue (once per connection, and again when half of ``expires`` has
passed, as Celery declares it on every send) so that the worker's answer has somewhere
to go. The states arrive on that queue; a consumer on the backend's own connection
(another one publishes, as in the AMQP transport) files each under its
``correlation_id`` (the task id) and acknowledges it, and
``get``, ``subscribe`` and ``AsyncResult.get(on_message=...)`` read them from there:

* ``get`` and ``subscribe`` first take in everything the queue holds at that instant
  (the consumer's channel is asked for the queue's ``message_count`` until it is 0, so
  every state sent before the call is in), then answer. ``get`` returns the latest
  state (the older ones count as read, as Celery's poll keeps only the latest). A
  subscription starts with every state nobody has read yet, in order (as Celery's
  ``on_message`` gets every message of the queue: a task that finished before
  ``get(on_message=...)`` began still shows its ``STARTED`` and ``PROGRESS``), else with
  the latest one; then it gets every later state, once, in the order the worker sent
  them; after a ready state it is finished.
* The first ready state wins, as in every backend: a state that may not follow the
  latest one (``states.may_follow``) is ignored.
* States are kept in this process, for at most ``MAX_TASKS`` tasks (the oldest are
  dropped first, logged); a task's final state can be read again and again until then.
* A heartbeat thread (when ``heartbeat`` > 0) keeps both connections alive and takes in
  arriving states while nobody waits. A lost connection is opened again by the next
  call; states it had not acknowledged are delivered again and not shown twice.

**The worker's side.** ``store_reply`` publishes the meta dict, serialized with the
result serializer, to the default exchange with the message's ``reply_to`` as the
routing key and its ``correlation_id`` (else the task id) as ``correlation_id``, with
Kombu's properties (``application_headers`` empty, ``priority`` 0, ``delivery_mode`` 1,
or 2 with ``result_persistent``), confirmed by the broker. A message without a
``reply_to`` asked for no reply: nothing is sent, as in Celery. A reply queue that no
longer exists (its client is gone and the queue expired) makes the state unroutable: it
is dropped with a warning, as Celery drops it (silently), and the task is not retried.

**What rpc:// cannot do** (Celery's own limits): a task's states reach only the app, in
the process, that sent it; ``AsyncResult.get`` anywhere else raises ``ValidationError``
saying so (``check_wait``) instead of waiting forever, while ``state`` reads ``PENDING``
there as in Celery. ``forget`` drops what this client holds; nothing is stored on the
broker. ``store`` without a reply address (``update_state`` outside a worker) sends the
state to this client's own queue. There is no result compression (Celery's rpc backend
sends results as they are serialized), no ``expires`` per result (``expires`` is the
reply queue's ``x-expires``), and no chord support.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

import amqp
from amqp import exceptions as amqp_errors
from amqp.channel import Channel

from wiretask._amqp import topology
from wiretask._amqp.errors import connection_is_gone
from wiretask._amqp.link import Link, heartbeat_period
from wiretask._amqp.options import Options, parse
from wiretask._url import mask_url
from wiretask.errors import (
    ConnectionLost,
    DecodeError,
    ImproperlyConfigured,
    TransportError,
    ValidationError,
)
from wiretask.protocol import states
from wiretask.results.base import (
    DEFAULT_EXPIRES,
    MetaCodec,
    ResultBackend,
    Subscription,
    ViaBroker,
    check_meta,
    resolve_expires,
)

if TYPE_CHECKING:
    from wiretask.codecs import Encoded, Registry
    from wiretask.results.rpc_aio import AsyncRPCBackend

__all__ = ["MAX_TASKS", "MAX_UNREAD", "RPCBackend", "RPCSubscription", "reply_message"]

log = logging.getLogger("wiretask.results.rpc")

#: Most tasks whose states one client keeps (Celery buffers 8192 final states).
MAX_TASKS: Final = 65536
#: Most unread states kept per task (Celery reads at most 1000 per poll).
MAX_UNREAD: Final = 1000
#: Longest single wait on the socket (a caller's timeout bounds it too).
_WAIT_SLICE: Final = 1.0
#: Bound on taking in what the reply queue holds (``_sync``).
_SYNC_WAIT: Final = 10.0


class _Task:
    """What this client knows of one task (under the backend's lock)."""

    __slots__ = ("forgotten", "latest", "reply_to", "subscriptions", "unread")

    def __init__(self) -> None:
        #: The ``reply_to`` it was sent with (``None``: not sent by this client).
        self.reply_to: str | None = None
        self.latest: dict[str, Any] | None = None
        #: States that arrived while no subscription listened, not read by anyone yet
        #: (the last ``MAX_UNREAD``): the next subscription starts with them.
        self.unread: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_UNREAD)
        self.forgotten = False
        self.subscriptions: list[RPCSubscription] = []


class RPCSubscription(Subscription):
    """The states of one task as they reach this client's reply queue."""

    def __init__(self, backend: RPCBackend, task_id: str) -> None:
        self._backend = backend
        self.task_id = task_id
        #: States (or a ``DecodeError`` for one that did not decode) not handed out yet.
        self._pending: collections.deque[dict[str, Any] | DecodeError] = collections.deque()
        self._closed = False

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        return self._backend._next(self, timeout)

    def close(self) -> None:
        self._backend._unsubscribe(self)


class RPCBackend(ResultBackend):
    """Celery's ``rpc://``: states as messages to the sending client's reply queue.

    Args:
        url: ``rpc://`` (nothing else: the broker is the app's).
        serializer: the result serializer (``json``).
        expires: ``result_expires``: the reply queue's ``x-expires`` (it is deleted
            after that long unused); ``None``: no ``x-expires``, and the queue is deleted
            with its last consumer, as Celery declares it then.
        registry: the codec registry (default: ``default_registry()``).
        compression: refused (Celery's rpc backend does not compress).
        via: the app's broker and reply queue (``App.backend`` gives it).

    Raises:
        ImproperlyConfigured: a URL with more than ``rpc://``, ``compression``, no
            ``via``, or a broker that is not RabbitMQ.
    """

    sends_through_broker: ClassVar[bool] = True

    def __init__(
        self,
        url: str = "rpc://",
        *,
        serializer: str = "json",
        expires: float | timedelta | None = DEFAULT_EXPIRES,
        registry: Registry | None = None,
        compression: str | None = None,
        via: ViaBroker | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "rpc" or any(
            (parts.netloc, parts.path.strip("/"), parts.query, parts.fragment)
        ):
            raise ImproperlyConfigured(
                f"the rpc:// result backend takes no host, path or options, got {url!r}: "
                "states travel through the app's broker (broker_url)",
                setting="result_backend",
            )
        if compression is not None:
            raise ImproperlyConfigured(
                f"result_compression={compression!r} with rpc://: Celery's rpc backend "
                "sends states as they are serialized, and its clients read them so",
                setting="result_compression",
            )
        if via is None:
            raise ImproperlyConfigured(
                "the rpc:// result backend sends states through the broker: open it "
                "through an App (App(broker='amqp://...', backend='rpc://')), which gives "
                "it its broker and reply queue", setting="result_backend",
            )
        self.url = "rpc://"
        self.expires = resolve_expires(expires)
        if registry is None:
            from wiretask.codecs import default_registry  # noqa: PLC0415 - avoid a cycle

            registry = default_registry()
        self.codec = MetaCodec(registry, serializer)
        self._options = _broker_options(via)
        self._oid = via.oid
        self._delivery_mode = 2 if via.persistent else 1
        self._reset()

    def _reset(self) -> None:
        """The per-process state (a forked child starts afresh: another client)."""
        self._pid = os.getpid()
        #: Publishing states and declaring the reply queue (its lock guards it).
        self._out = _Side(self._options, "results-publish")
        #: Consuming the reply queue; its lock also guards the table of tasks.
        self._in = _Side(self._options, "results-consume")
        self._lock = self._in.lock
        self._arrived = threading.Condition(self._lock)
        self._reading = False
        self._consuming: str | None = None  # the queue consumed on ``_in``'s channel
        self._returned: list[tuple[str, str]] = []
        self._tasks: collections.OrderedDict[str, _Task] = collections.OrderedDict()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()

    def _check_pid(self) -> None:
        """Called before any lock is taken: in a forked child, the parent's sockets
        and locks are not ours; they are dropped without a close handshake (which would
        shut the parent's connection down)."""
        if self._pid != os.getpid():
            self._reset()

    @property
    def reply_to(self) -> str:
        """This client's reply queue: the app's oid."""
        return self._oid()

    @property
    def options(self) -> Options:
        """The broker's connection options (the asyncio twin connects with them)."""
        return self._options

    @property
    def broker_url(self) -> str:
        """The broker the states travel through (password masked)."""
        return self._options.masked_url

    # -- the worker's side --------------------------------------------------------------

    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        """Send a state of ``task_id`` to this client's own reply queue (what
        ``update_state`` outside a worker does): it is tracked as this client's task.

        Raises:
            ValidationError, EncodeError: a bad meta dict, or one the result serializer
                refuses (nothing is sent).
            ConnectionLost, TransportError: the broker failed.
        """
        check_meta(task_id, meta)
        encoded = self.codec.encode(meta)
        self._check_pid()
        queue = self.reply_to
        with self._lock:
            self._record(task_id).reply_to = queue
        with self._out.lock:
            self._declare(self._out, queue)
            self._publish(encoded, queue, task_id)

    def store_reply(
        self, task_id: str, meta: Mapping[str, Any], *, reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        """Send a state to the reply queue of the message that asked for it, with its
        ``correlation_id`` (else the task id); nothing when it has no ``reply_to``.

        Raises:
            ValidationError, EncodeError: a bad meta dict, or one the result serializer
                refuses (nothing is sent).
            ConnectionLost, TransportError: the broker failed.
        """
        check_meta(task_id, meta)
        encoded = self.codec.encode(meta)
        if not reply_to:
            log.debug("task %s: no reply_to, so its %s state is not sent (as Celery)",
                      task_id, meta.get("status"))
            return
        self._check_pid()
        with self._out.lock:
            self._publish(encoded, reply_to, correlation_id or task_id)

    def _publish(self, encoded: Encoded, queue: str, correlation_id: str) -> None:
        """One state to ``queue`` through the default exchange, as Kombu's producer
        writes it, confirmed (caller holds the publishing lock)."""
        side = self._out
        message = reply_message(encoded, correlation_id, persistent=self._delivery_mode == 2)
        channel = self._publisher()
        self._returned.clear()
        try:
            with side.link.translate(f"send a state to the reply queue {queue!r}"):
                if self._options.confirm_publish:
                    channel.basic_publish_confirm(
                        message, exchange="", routing_key=queue, mandatory=True,
                        confirm_timeout=self._options.confirm_timeout,
                    )
                else:
                    channel.basic_publish(message, exchange="", routing_key=queue,
                                          mandatory=True)
        except amqp_errors.MessageNacked as exc:
            raise TransportError(
                f"the broker refused (nacked) the state of task {correlation_id} for the "
                f"reply queue {queue!r}", url=self.broker_url,
            ) from exc
        except TransportError as exc:
            side.failed(exc)
            raise
        for why, routing_key in self._returned:
            log.warning(
                "the reply queue %r does not exist (its client is gone and the queue "
                "expired): the state of task %s is dropped, as Celery drops it (%s)",
                routing_key, correlation_id, why,
            )
        self._returned.clear()

    def _on_return(self, exc: Exception, exchange: str, routing_key: str,
                   message: amqp.Message) -> None:
        self._returned.append((str(exc), routing_key))

    def _publisher(self) -> Channel:
        """The publishing channel, in confirm mode (caller holds its lock)."""
        side = self._out
        connection = self._open(side)
        if side.channel is None:
            with side.link.translate("open a channel"):
                channel = connection.channel()
                channel.auto_decode = False
                if self._options.confirm_publish:
                    channel.confirm_select()
            channel.events["basic_return"].add(self._on_return)
            side.channel = channel
        return side.channel

    # -- the client's side --------------------------------------------------------------

    def track(self, sent: Sequence[tuple[str, str | None]]) -> None:
        """Note tasks about to be sent (``(task id, reply_to)``) as this client's, and
        declare the reply queue if one of them names it (``ReplyRouted``).

        Raises:
            ConnectionLost, TransportError: the declaration failed.
        """
        self._check_pid()
        own = self.reply_to
        if any(reply_to == own for _, reply_to in sent):
            with self._out.lock:
                self._declare(self._out, own)
        with self._lock:
            self._note_sent(sent)

    def _note_sent(self, sent: Sequence[tuple[str, str | None]]) -> None:
        """Record tasks as this client's (lock held)."""
        for task_id, reply_to in sent:
            record = self._record(task_id)
            record.reply_to = reply_to
            record.forgotten = False

    def check_wait(self, task_id: str) -> None:
        """Return if this client receives the task's states; else raise
        ``ValidationError`` saying why (``ReplyRouted``)."""
        self._check_pid()
        own = self.reply_to
        with self._lock:
            record = self._tasks.get(task_id)
            if record is None or (record.reply_to is None and record.latest is None):
                raise ValidationError(
                    "task_id",
                    f"rpc:// delivers the states of task {task_id} only to the app that "
                    f"sent it, in the process that sent it (its reply queue {own} is this "
                    "app's); this app did not send it in this process (or sent it with "
                    f"ignore_result, or more than {MAX_TASKS} tasks ago), so waiting would "
                    "never end: read it where it was sent, or use a result backend every "
                    "process reads (redis://, sqlite://)", value=task_id,
                )
            if record.reply_to not in (None, own):
                raise ValidationError(
                    "task_id",
                    f"task {task_id} was sent with reply_to={record.reply_to!r}: its states "
                    f"go to that queue, not to this app's reply queue {own}", value=task_id,
                )
            if record.forgotten and record.latest is None:
                raise ValidationError(
                    "task_id", f"the states of task {task_id} were forgotten (forget()) "
                    "and rpc:// keeps no copy on the broker", value=task_id,
                )

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The latest state of ``task_id`` this client received (every state in the
        reply queue at the time of the call taken in first), or ``None``.

        Raises:
            ConnectionLost, TransportError: the broker failed.
        """
        self._check_pid()
        with self._lock:
            self._sync()
            return self._latest(task_id)

    def _latest(self, task_id: str) -> dict[str, Any] | None:
        """The latest state received of ``task_id``, now read (lock held)."""
        record = self._tasks.get(task_id)
        if record is None or record.latest is None:
            return None
        record.unread.clear()  # read: as Celery's poll keeps only the latest state
        return dict(record.latest)

    def forget(self, task_id: str) -> None:
        """Drop what this client holds of ``task_id`` (nothing is on the broker; a later
        state starts afresh)."""
        self._check_pid()
        with self._lock:
            record = self._tasks.get(task_id)
            if record is not None:
                record.latest = None
                record.unread.clear()
                record.forgotten = True

    def subscribe(self, task_id: str) -> RPCSubscription:
        """The states of ``task_id``: first every state this client received and nobody
        has read yet, in order (the reply queue's messages at the time of the call
        taken in first; as Celery's rpc ``on_message`` gets every message of its queue),
        else the latest one; then each later one.

        Raises:
            ConnectionLost, TransportError: the broker failed.
        """
        self._check_pid()
        with self._lock:
            self._sync()
            subscription = RPCSubscription(self, task_id)
            self._listen(subscription)
            return subscription

    def _listen(self, subscription: RPCSubscription) -> None:
        """Start ``subscription`` with the unread states (else the latest) and register
        it for the later ones (lock held)."""
        record = self._record(subscription.task_id)
        if record.unread:
            subscription._pending.extend(record.unread)
            record.unread.clear()
        elif record.latest is not None:
            subscription._pending.append(record.latest)
        record.subscriptions.append(subscription)

    def async_twin(self) -> AsyncRPCBackend:
        """The asyncio twin (``results.rpc_aio``): it consumes the reply queue on the
        event loop and files what it reads into this backend's table (one per app and
        process, shared by the sync and the asyncio API); closing the twin leaves this
        backend open."""
        from wiretask.results.rpc_aio import AsyncRPCBackend  # noqa: PLC0415 - its base

        return AsyncRPCBackend(self)

    def close(self) -> None:
        """Close the connections and end open subscriptions; what this client holds is
        kept, and a later call connects again."""
        if self._pid != os.getpid():
            self._reset()
            return
        self._heartbeat_stop.set()
        thread, self._heartbeat = self._heartbeat, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            for record in self._tasks.values():
                for subscription in record.subscriptions:
                    subscription._closed = True
                record.subscriptions.clear()
            self._in.close()
            self._consuming = None
            self._arrived.notify_all()
        with self._out.lock:
            self._out.close()

    # -- subscriptions ------------------------------------------------------------------

    def _next(self, subscription: RPCSubscription, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        self._check_pid()
        with self._lock:
            while True:
                if subscription._closed or subscription.finished:
                    return None
                if subscription._pending:
                    item = subscription._pending.popleft()
                    if isinstance(item, DecodeError):
                        raise item
                    if item.get("status") in states.READY_STATES:
                        subscription.finished = True
                        self._unsubscribe(subscription)
                    return dict(item)
                remaining = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._wait(min(remaining, _WAIT_SLICE))

    def _unsubscribe(self, subscription: RPCSubscription) -> None:
        with self._lock:
            subscription._closed = True
            record = self._tasks.get(subscription.task_id)
            if record is not None and subscription in record.subscriptions:
                record.subscriptions.remove(subscription)

    # -- the connections ----------------------------------------------------------------

    def _open(self, side: _Side) -> amqp.Connection:
        """``side``'s connection (caller holds its lock); a new one forgets the channel."""
        connection = side.link.open()
        if side.epoch != side.link.epoch:
            side.epoch = side.link.epoch
            side.forget()
            if side is self._in:
                self._consuming = None
            self._start_heartbeat()
        return connection

    def _declare(self, side: _Side, queue: str) -> None:
        """Declare this client's reply queue on ``side`` unless done on its connection
        within half of ``expires`` (the queue's ``x-expires`` counts from the last use);
        caller holds ``side``'s lock."""
        now = time.monotonic()
        declared = side.declared
        if declared is not None and declared[0] == queue and (
            self.expires is None or now - declared[1] < self.expires / 2
        ):
            return
        channel = self._publisher() if side is self._out else self._consumer_channel()
        declaration = self.reply_queue(queue)
        try:
            with side.link.translate(f"declare the reply queue {queue!r}"):
                channel.queue_declare(queue, durable=declaration.durable, exclusive=False,
                                      auto_delete=declaration.auto_delete,
                                      arguments=declaration.arguments)
        except TransportError as exc:
            side.failed(exc)
            if side is self._in:
                self._consuming = None
            raise
        side.declared = (queue, now)

    def reply_queue(self, queue: str) -> topology.Queue:
        """How a reply queue is declared (as Celery's rpc backend declares it): durable,
        expiring after ``expires`` unused (``x-expires``), else deleted with its last
        consumer."""
        arguments: dict[str, Any] = {}
        if self.expires is not None:
            arguments["x-expires"] = max(1, int(self.expires * 1000))
        return topology.Queue(queue, arguments, durable=True,
                              auto_delete=self.expires is None)

    def _consumer_channel(self) -> Channel:
        side = self._in
        connection = self._open(side)
        if side.channel is None:
            with side.link.translate("open a channel"):
                channel = connection.channel()
                channel.auto_decode = False
            side.channel = channel
        return side.channel

    def _consume(self) -> Channel:
        """Consume this client's reply queue (declared first); caller holds the lock."""
        queue = self.reply_to
        channel = self._consumer_channel()
        if self._consuming == queue:
            return channel
        self._declare(self._in, queue)
        channel = self._consumer_channel()
        try:
            with self._in.link.translate(f"consume the reply queue {queue!r}"):
                channel.basic_consume(queue, callback=self._on_reply, no_ack=False)
        except TransportError as exc:
            self._in.failed(exc)
            self._consuming = None
            raise
        self._consuming = queue
        return channel

    def _sync(self) -> None:
        """Take in every state the reply queue holds now (caller holds the lock): on the
        consumer's channel, RabbitMQ answers ``queue.declare`` after the messages it
        pushed before, so once the queue reports none ready, all of them are in. A lost
        connection is opened again, once."""
        try:
            self._sync_once()
        except ConnectionLost:
            log.info("rpc:// connection lost; connecting again", exc_info=True)
            self._sync_once()

    def _sync_once(self) -> None:
        deadline = time.monotonic() + _SYNC_WAIT
        queue = self.reply_to
        while True:
            channel = self._consume()
            try:
                with self._in.link.translate(f"read the reply queue {queue!r}"):
                    count = int(channel.queue_declare(queue, passive=True).message_count)
            except TransportError as exc:
                self._in.failed(exc)
                self._consuming = None
                raise
            self._pump()
            if count == 0 or time.monotonic() >= deadline:
                return
            self._wait(0.01)

    def _wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the socket with the lock released, then take in
        what arrived (caller holds the lock once). A lost connection is opened again,
        once; if that fails, ``ConnectionLost``."""
        if self._reading:  # another thread waits on the socket and will tell
            self._arrived.wait(seconds)
            return
        try:
            self._consume()
        except ConnectionLost:
            self._consume()
        waiter = self._in.link.waiter()
        if waiter is None:
            return
        self._reading = True
        self._lock.release()
        try:
            waiter.wait(seconds)
        finally:
            self._lock.acquire()
            self._reading = False
        try:
            self._pump()
        except ConnectionLost:
            self._consume()  # unacknowledged states come again on the new connection
        finally:
            self._arrived.notify_all()

    def _pump(self) -> None:
        try:
            self._in.link.pump()
        except TransportError:
            self._in.forget()
            self._consuming = None
            raise

    def _start_heartbeat(self) -> None:
        period = heartbeat_period(self._options)
        if period is None or (self._heartbeat is not None and self._heartbeat.is_alive()):
            return
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, args=(self._heartbeat_stop, period),
            name="wiretask-rpc-heartbeat", daemon=True,
        )
        self._heartbeat.start()

    def _beat(self, stop: threading.Event, interval: float) -> None:
        """Heartbeat thread: send heartbeats on both connections, notice a dead broker,
        and take in the states that arrived while nobody waits."""
        rate = self._options.heartbeat_checkrate
        while not stop.wait(interval):
            if self._pid != os.getpid():
                return
            for side in (self._out, self._in):
                with side.lock:
                    if side.link.connection is None:
                        continue
                    try:
                        side.link.heartbeat(rate)
                    except TransportError as exc:
                        log.warning("rpc:// %s connection lost: %s", side.link.role, exc)
                        side.forget()
                        if side is self._in:
                            self._consuming = None
                    if side is self._in:
                        self._arrived.notify_all()

    # -- states arriving ----------------------------------------------------------------

    def _on_reply(self, message: amqp.Message) -> None:
        """A state arrived (the consumer's callback, lock held): file it, then ack."""
        properties = message.properties
        body = message.body if isinstance(message.body, bytes) else b""
        self._take_in(body, properties.get("correlation_id"), properties.get("content_type"),
                      properties.get("content_encoding"),
                      redelivered=bool(message.delivery_info.get("redelivered")))
        message.channel.basic_ack(message.delivery_info["delivery_tag"])

    def _take_in(self, body: bytes, correlation_id: object, content_type: object,
                 content_encoding: object, *, redelivered: bool) -> None:
        """File a state read from the reply queue, by whichever consumer read it (this
        backend's, or an asyncio twin's; lock held)."""
        try:
            meta = self.codec.decode(body, content_type if isinstance(content_type, str)
                                     else None, content_encoding
                                     if isinstance(content_encoding, str) else None)
        except DecodeError as exc:
            log.warning("a state for task %s in the reply queue does not decode: %s",
                        correlation_id, exc)
            if isinstance(correlation_id, str) and correlation_id in self._tasks:
                for subscription in self._tasks[correlation_id].subscriptions:
                    subscription._pending.append(exc)
        else:
            task_id = correlation_id if isinstance(correlation_id, str) and correlation_id \
                else str(meta.get("task_id"))
            self._apply(task_id, meta, redelivered=redelivered)

    def _apply(self, task_id: str, meta: dict[str, Any], *, redelivered: bool) -> None:
        record = self._record(task_id)
        latest = record.latest
        if redelivered and latest == meta:
            return  # taken in before a connection was lost, its ack with it
        if latest is not None and not states.may_follow(latest.get("status"), meta["status"]):
            return
        record.latest = meta
        record.forgotten = False
        if not record.subscriptions:
            record.unread.append(meta)
        for subscription in record.subscriptions:
            subscription._pending.append(meta)

    def _record(self, task_id: str) -> _Task:
        """The task's record, made if new (past ``MAX_TASKS`` the oldest without a
        listener is dropped); caller holds the lock."""
        tasks = self._tasks
        record = tasks.get(task_id)
        if record is not None:
            tasks.move_to_end(task_id)
            return record
        record = tasks[task_id] = _Task()
        if len(tasks) > MAX_TASKS:
            for old_id in list(itertools.islice(tasks, 16)):
                old = tasks[old_id]
                if old.subscriptions:
                    continue
                del tasks[old_id]
                if old.latest is not None and old.latest.get("status") in states.READY_STATES:
                    log.warning("rpc:// keeps the states of %d tasks: the %s state of task "
                                "%s is dropped", MAX_TASKS, old.latest.get("status"), old_id)
                break
        return record


class _Side:
    """One of the backend's two connections with its channel and what was declared on
    it; used under ``lock``."""

    def __init__(self, options: Options, role: str) -> None:
        self.link = Link(options, role)
        self.lock = self.link.lock
        self.epoch = -1
        self.channel: Channel | None = None
        self.declared: tuple[str, float] | None = None  # (queue, monotonic time)

    def forget(self) -> None:
        self.channel = None
        self.declared = None

    def failed(self, exc: TransportError) -> None:
        """After a driver error: drop the connection, or the channel a channel error
        closed (py-amqp reopens it without our settings)."""
        cause = exc.__cause__ or exc
        if connection_is_gone(cause):
            self.link.discard()
        elif self.channel is not None:
            try:
                self.channel.close()
            except Exception:  # closing a failed channel may fail too
                log.debug("closing a failed channel", exc_info=True)
        self.forget()

    def close(self) -> None:
        self.link.close()
        self.forget()


def reply_message(encoded: Encoded, correlation_id: str, *, persistent: bool) -> amqp.Message:
    """A state as Kombu's producer writes Celery's reply (``spec/TRANSPORTS.md`` §4.3;
    ``spec/vectors/amqp/celery-rpc-*.json``): the serialized meta dict, its content
    labels, an empty header table, delivery mode 1 (2 when ``persistent``), priority 0
    and the correlation id, in py-amqp's property order."""
    return amqp.Message(
        encoded.data, content_type=encoded.content_type,
        content_encoding=encoded.content_encoding, application_headers={},
        delivery_mode=2 if persistent else 1, priority=0, correlation_id=correlation_id,
    )


def _broker_options(via: ViaBroker) -> Options:
    """The broker's connection options, or why rpc:// cannot use that broker."""
    scheme = urllib.parse.urlsplit(via.url).scheme.lower() if isinstance(via.url, str) else ""
    if scheme not in ("amqp", "amqps", "pyamqp"):
        raise ImproperlyConfigured(
            f"the rpc:// result backend sends states as messages through the broker, "
            f"which must be RabbitMQ (amqp://, amqps://, pyamqp://); the broker is "
            f"{mask_url(str(via.url))}: use a result backend for it (redis://, sqlite://)",
            setting="result_backend",
        )
    return parse(via.url, via.options)

