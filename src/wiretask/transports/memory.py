"""The in-process broker: ``memory://`` and ``memory://name``.

For unit tests, the conformance kit and single-process programs. It behaves like a real
broker rather than a mock: messages are copied on the way in (headers and properties go
through JSON, exactly as on SQLite and Redis, so a value that would not survive a real
broker is refused here too), deliveries must be settled, and unsettled ones come back.

Semantics, each chosen to match AMQP where AMQP has an answer:

* **Shared by name within a process.** Every ``MemoryTransport`` with the same name sees
  the same queues (``memory://`` is the name ``"default"``), like kombu's memory
  transport, so an app and a worker in one process talk through it. Nothing crosses a
  process boundary (``capabilities.multi_process`` is False).
* **Priorities** are AMQP's: 0..255, higher first, FIFO within a priority; a message
  without a priority has priority 0. Across several queues in one ``receive`` the same
  order applies (highest priority, then oldest).
* **Delays** are held by the broker in a heap keyed by ``not_before``
  (``native_delay=True``); the message becomes deliverable when the wall clock reaches it.
* **Requeue** (``reject(requeue=True)`` or closing a transport with unsettled deliveries)
  puts the message back at its original place, marked ``redelivered``, as RabbitMQ does.
* **No per-message TTL**: the ``expiration`` property is carried untouched and the worker
  enforces ``expires`` (``per_message_ttl=False``), as Celery does on Redis.
* **Routing**: there are no exchange bindings; see ``base.Prepared.queue``. Publishing to a
  queue nobody declared creates it (AMQP would drop the message, which loses it).
* **Broadcast** (``base.Broadcast``, for remote control and events): exchanges route as
  AMQP's do to the inboxes bound when a message is sent; an inbox drops messages older
  than its ``message_ttl`` and is unbound once unread for ``expires`` seconds.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import attrs

from wiretask.errors import ImproperlyConfigured, TransportError, ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports._json import dump_json_mapping, load_json_mapping
from wiretask.transports.aio import InlineTransport
from wiretask.transports.base import (
    BoundQueue,
    Capabilities,
    DeadLetter,
    Delivery,
    Exchange,
    Peeked,
    Prepared,
    QueueStats,
    Settlement,
    Transport,
    check_broadcast,
    check_listen,
    check_wait,
    queue_names,
    routes_to,
)

__all__ = ["MemoryDelivery", "MemoryTransport", "reset"]

DEFAULT_NAME = "default"

CAPABILITIES = Capabilities(
    native_delay=True,
    priorities=True,
    priority_order="higher-first",
    max_priority=255,
    per_message_ttl=False,
    visibility_timeout=None,
    multi_process=False,
)


@attrs.define(eq=False)
class _Message:
    """A stored message. Headers/properties are kept as JSON text so that every receive
    hands out fresh objects that no earlier consumer can have mutated."""

    seq: int
    queue: str
    priority: int
    not_before: float | None
    body: bytes
    content_type: str
    content_encoding: str
    headers: str
    properties: str
    redelivered: bool = False
    #: The broker's generation when stored; ``reset`` moves the broker to a new one.
    generation: int = 0
    #: Unix time of the publish.
    published_at: float = 0.0
    #: Whether the message sits in its queue's ready heap (for the lazy age heap).
    ready: bool = False

    @property
    def ready_at(self) -> float:
        """Since when the message is deliverable: the later of publish and not_before."""
        if self.not_before is None:
            return self.published_at
        return max(self.published_at, self.not_before)

    def frame(self) -> Frame:
        return Frame(
            body=self.body,
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            headers=load_json_mapping("headers", self.headers),
            properties=load_json_mapping("properties", self.properties),
        )


class _Queue:
    def __init__(self) -> None:
        # (-priority, seq, message): heapq pops the highest priority, then the oldest.
        self.ready: list[tuple[int, int, _Message]] = []
        # (not_before, seq, message).
        self.scheduled: list[tuple[float, int, _Message]] = []
        # (ready_at, push number, message) of ready messages, for the oldest one:
        # entries of messages taken since are dropped lazily (``oldest``), and the heap
        # is rebuilt from ``ready`` when it grows past twice that size, so it stays
        # O(ready). The push number keeps entries of one requeued message apart.
        self.ages: list[tuple[float, int, _Message]] = []
        self.pushes = itertools.count()
        # Totals since the queue was created (``QueueStats`` counters), and the
        # messages delivered and not settled yet.
        self.published = self.delivered = self.acked = self.dead_lettered = 0
        self.in_flight = 0

    def push(self, message: _Message) -> None:
        heapq.heappush(self.ready, (-message.priority, message.seq, message))
        message.ready = True
        if len(self.ages) > 2 * len(self.ready) + 64:
            self.ages = [(m.ready_at, next(self.pushes), m) for _, _, m in self.ready]
            heapq.heapify(self.ages)
        else:
            heapq.heappush(self.ages, (message.ready_at, next(self.pushes), message))

    def pop(self) -> _Message:
        """Take the best ready message (there must be one)."""
        message = heapq.heappop(self.ready)[2]
        message.ready = False
        return message

    def oldest(self) -> float | None:
        """The ``ready_at`` of the longest-waiting ready message (``None``: none)."""
        ages = self.ages
        while ages and not ages[0][2].ready:
            heapq.heappop(ages)
        return ages[0][0] if ages else None

    def clear(self) -> int:
        """Drop every waiting message; return how many there were."""
        count = len(self)
        for _, _, message in self.ready:
            message.ready = False
        self.ready.clear()
        self.scheduled.clear()
        self.ages.clear()
        return count

    def promote(self, now: float) -> None:
        while self.scheduled and self.scheduled[0][0] <= now:
            _, _, message = heapq.heappop(self.scheduled)
            self.push(message)

    def __len__(self) -> int:
        return len(self.ready) + len(self.scheduled)


class _Broker:
    """The state behind one name. One lock guards everything; one condition wakes
    receivers on any change (a publish to any queue, a requeue)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.queues: dict[str, _Queue] = {}
        self.dead: dict[str, list[DeadLetter]] = {}
        self.seq = itertools.count()
        self.generation = 0
        #: Broadcast exchanges: name -> (the exchange as first declared, bound inboxes).
        self.exchanges: dict[str, tuple[Exchange, list[_Inbox]]] = {}

    def exchange(self, exchange: Exchange) -> list[_Inbox]:
        """The inboxes bound to ``exchange`` (declared now if new); an exchange of the
        same name declared with another type is refused, as AMQP refuses it."""
        known = self.exchanges.get(exchange.name)
        if known is None:
            known = self.exchanges[exchange.name] = (exchange, [])
        elif known[0].type != exchange.type:
            raise TransportError(
                f"exchange {exchange.name!r} is a {known[0].type} exchange, not "
                f"{exchange.type}", url=f"memory://{self.name}",
            )
        return known[1]

    def requeue(self, message: _Message) -> None:
        """Put a delivered message back at its place, unless ``reset`` emptied the broker
        since it was stored (then it is forgotten, as ``reset`` promises)."""
        if self.settled(message, "requeue"):
            message.redelivered = True
            self.queue(message.queue).push(message)

    def queue(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue()
        return queue

    def put(self, message: _Message) -> None:
        queue = self.queue(message.queue)
        queue.published += 1
        if message.not_before is not None and message.not_before > time.time():
            heapq.heappush(queue.scheduled, (message.not_before, message.seq, message))
        else:
            queue.push(message)

    def take(self, names: Sequence[str], now: float) -> tuple[_Message | None, float | None]:
        """Pop the best ready message of ``names``; else return when the next one is due."""
        best: _Queue | None = None
        next_due: float | None = None
        for name in names:
            queue = self.queues.get(name)
            if queue is None:
                continue
            queue.promote(now)
            if queue.ready and (best is None or queue.ready[0][:2] < best.ready[0][:2]):
                best = queue
            if queue.scheduled:
                due = queue.scheduled[0][0]
                next_due = due if next_due is None else min(next_due, due)
        if best is None:
            return None, next_due
        best.delivered += 1
        best.in_flight += 1
        return best.pop(), next_due

    def settled(self, message: _Message, how: Settlement) -> bool:
        """Count the settlement of a delivered message (``how``, or ``"requeue"`` when a
        closing transport gives it back); return whether the message still belongs to
        this broker (``reset`` forgets earlier generations)."""
        if message.generation != self.generation:
            return False
        queue = self.queue(message.queue)
        queue.in_flight -= 1
        if how == "ack":
            queue.acked += 1
        elif how == "dead_letter":
            queue.dead_lettered += 1
        return True


_BROKERS: dict[str, _Broker] = {}
_BROKERS_LOCK = threading.Lock()


def _broker(name: str) -> _Broker:
    with _BROKERS_LOCK:
        broker = _BROKERS.get(name)
        if broker is None:
            broker = _BROKERS[name] = _Broker(name)
        return broker


def reset(name: str | None = None) -> None:
    """Empty the queues and dead letters of the broker ``name`` (every broker if
    ``None``), in place, so existing transports see the empty state. Deliveries that are
    still unsettled are forgotten by the broker; settling them later changes nothing."""
    with _BROKERS_LOCK:
        if name is None:
            brokers = list(_BROKERS.values())
        else:
            brokers = [_BROKERS[name]] if name in _BROKERS else []
    for broker in brokers:
        with broker.lock:
            broker.queues.clear()
            broker.dead.clear()
            broker.generation += 1


class _Inbox:
    """A ``BoundQueue`` of the in-process broker: the messages routed to it, in order."""

    def __init__(self, broker: _Broker, exchange: Exchange, spec: BoundQueue) -> None:
        self.queue = spec.name
        self.spec = spec
        self._broker = broker
        self._exchange = exchange
        #: (time stored, message), oldest first.
        self.messages: collections.deque[tuple[float, _Message]] = collections.deque()
        self.used = time.monotonic()
        self.waiting = False
        self.closed = False

    def get(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + check_wait(timeout)
        ttl = self.spec.message_ttl
        with self._broker.changed:
            self.waiting = True  # in use while it waits, however long
            try:
                while True:
                    if self.closed:
                        raise TransportError(f"inbox {self.queue!r} is closed",
                                             url=f"memory://{self._broker.name}")
                    while self.messages:
                        at, message = self.messages.popleft()
                        if ttl is None or time.time() - at <= ttl:
                            return message.frame()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._broker.changed.wait(remaining)
            finally:
                self.waiting = False
                self.used = time.monotonic()

    def close(self) -> None:
        with self._broker.changed:
            self.closed = True
            self.messages.clear()
            known = self._broker.exchanges.get(self._exchange.name)
            if known is not None and self in known[1]:
                known[1].remove(self)
            self._broker.changed.notify_all()


def _live(inboxes: list[_Inbox]) -> list[_Inbox]:
    """Unbind (in place) the inboxes unread for longer than their ``expires``, as a
    broker deletes an unused queue; return the others. Called under the broker's lock."""
    now = time.monotonic()
    for inbox in list(inboxes):
        expires = inbox.spec.expires
        if expires is not None and not inbox.waiting and now - inbox.used > expires:
            inbox.closed = True
            inbox.messages.clear()
            inboxes.remove(inbox)
    return inboxes


class MemoryDelivery(Delivery):
    """A message received from a ``MemoryTransport``."""

    def __init__(self, transport: MemoryTransport, message: _Message) -> None:
        super().__init__(transport, message.frame(), message.queue, message.redelivered)
        self._message = message


class MemoryTransport(Transport):
    """A transport to the in-process broker called ``name``.

    Args:
        name: the shared broker's name; transports with the same name share queues.
    """

    capabilities = CAPABILITIES

    def __init__(self, name: str = DEFAULT_NAME) -> None:
        if not isinstance(name, str) or not name:
            raise ValidationError("name", f"must be a non-empty string, got {name!r}")
        self.name = name
        self.url = "memory://" if name == DEFAULT_NAME else f"memory://{name}"
        self._broker = _broker(name)
        # Deliveries handed out by this transport and not settled yet, by identity.
        self._unsettled: dict[int, MemoryDelivery] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryTransport:
        """``memory://`` (the default broker) or ``memory://name``.

        Raises:
            ImproperlyConfigured: not a memory URL, a path or query, or unknown options.
        """
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ImproperlyConfigured(f"not a memory:// URL: {url!r}", setting="broker_url")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ImproperlyConfigured(
                f"memory:// URLs take only a name (memory://name), got {url!r}",
                setting="broker_url",
            )
        if options:
            raise ImproperlyConfigured(
                f"memory:// takes no options, got {', '.join(sorted(options))}",
                setting="broker_transport_options",
            )
        return cls(parts.netloc or DEFAULT_NAME)

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.url}>"

    def async_twin(self) -> InlineTransport:
        """Publishing takes a lock held for microseconds and does no I/O: the asyncio
        twin runs the hooks on the event loop itself."""
        return InlineTransport(self)

    # -- life cycle -------------------------------------------------------------------

    def connect(self) -> None:
        """Nothing to open: the broker lives in this process."""

    def close(self) -> None:
        """Return every unsettled delivery of this transport to its queue (redelivered)."""
        broker = self._broker
        with broker.lock:
            unsettled = list(self._unsettled.values())
            self._unsettled.clear()

        def give_back(message: _Message) -> None:
            with broker.changed:
                broker.requeue(message)
                broker.changed.notify_all()

        # Each delivery's own lock first, then the broker's: the order ``ack`` takes them.
        for delivery in unsettled:
            delivery._give_back("returned to the queue when its transport closed",
                                functools.partial(give_back, delivery._message))

    # -- producing --------------------------------------------------------------------

    def _declare(self, queue: str) -> None:
        with self._broker.lock:
            self._broker.queue(queue)

    def _publish(self, messages: Sequence[Prepared]) -> None:
        """Store all of ``messages`` atomically: all are stored, or (on a header that
        JSON cannot carry) none is."""
        # Everything that can fail is done before taking the lock, so that a bad message
        # in a batch leaves no partial batch behind.
        stored = [
            _Message(
                seq=0,
                queue=m.queue,
                priority=m.priority,
                not_before=m.due,
                body=bytes(m.frame.body),
                content_type=m.frame.content_type,
                content_encoding=m.frame.content_encoding,
                headers=dump_json_mapping("headers", m.frame.headers),
                properties=dump_json_mapping("properties", m.frame.properties),
            )
            for m in messages
        ]
        with self._broker.changed:
            now = time.time()
            for message in stored:
                message.seq = next(self._broker.seq)
                message.generation = self._broker.generation
                message.published_at = now
                self._broker.put(message)
            self._broker.changed.notify_all()

    # -- consuming --------------------------------------------------------------------

    def _receive(self, queues: list[str], timeout: float) -> MemoryDelivery | None:
        deadline = time.monotonic() + timeout
        broker = self._broker
        with broker.changed:
            while True:
                now = time.time()
                message, next_due = broker.take(queues, now)
                if message is not None:
                    delivery = MemoryDelivery(self, message)
                    self._unsettled[id(delivery)] = delivery
                    return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if next_due is not None:
                    # Wake up when the earliest delayed message falls due (a publish or
                    # requeue wakes us earlier through the condition).
                    remaining = min(remaining, max(next_due - now, 0.001))
                broker.changed.wait(remaining)

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        broker = self._broker
        message = cast(MemoryDelivery, delivery)._message
        with broker.changed:
            self._unsettled.pop(id(delivery), None)
            if how == "requeue":
                broker.requeue(message)
                broker.changed.notify_all()
            elif broker.settled(message, how) and how == "dead_letter":
                broker.dead.setdefault(message.queue, []).append(
                    DeadLetter(queue=message.queue, reason=reason, frame=message.frame(),
                               at=time.time())
                )

    # -- inspecting and housekeeping --------------------------------------------------

    def size(self, queue: str) -> int:
        queue_names([queue])
        with self._broker.lock:
            found = self._broker.queues.get(queue)
            return 0 if found is None else len(found)

    def purge(self, queue: str) -> int:
        queue_names([queue])
        with self._broker.lock:
            found = self._broker.queues.get(queue)
            if found is None:
                return 0
            return found.clear()

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        queue_names([queue])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", f"must be an int >= 0, got {limit!r}")
        with self._broker.lock:
            found = self._broker.queues.get(queue)
            if found is None:
                return []
            found.promote(time.time())
            ready = [entry[2] for entry in sorted(found.ready, key=lambda e: e[:2])]
            scheduled = [entry[2] for entry in sorted(found.scheduled, key=lambda e: e[:2])]
        peeked = [Peeked(frame=m.frame(), queue=queue, state="ready") for m in ready[:limit]]
        for message in scheduled[: max(0, limit - len(peeked))]:
            assert message.not_before is not None  # only delayed messages are scheduled
            peeked.append(Peeked(
                frame=message.frame(), queue=queue, state="scheduled",
                not_before=datetime.fromtimestamp(message.not_before, UTC),
            ))
        return peeked

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        queue_names([queue])
        with self._broker.lock:
            return list(self._broker.dead.get(queue, ()))

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """``QueueStatistics``: every number, exact, each queue read under the broker's
        lock. ``oldest_ready_at`` is the exact oldest ``ready_at`` (publish time, or
        ``not_before`` if later) of all ready messages, from a heap kept beside the
        ready heap; the counters count since the queue was first used (or ``reset``)."""
        names = queue_names(queues)
        found: list[QueueStats] = []
        with self._broker.lock:
            now = time.time()
            for name in names:
                queue = self._broker.queues.get(name)
                dead = len(self._broker.dead.get(name, ()))
                if queue is None:
                    found.append(QueueStats(
                        queue=name, at=now, ready=0, scheduled=0, in_flight=0, dead=dead,
                        published=0, delivered=0, acked=0, dead_lettered=0,
                    ))
                    continue
                queue.promote(now)
                found.append(QueueStats(
                    queue=name, at=now, ready=len(queue.ready),
                    scheduled=len(queue.scheduled),
                    next_due=queue.scheduled[0][0] if queue.scheduled else None,
                    in_flight=queue.in_flight, dead=dead, oldest_ready_at=queue.oldest(),
                    published=queue.published, delivered=queue.delivered,
                    acked=queue.acked, dead_lettered=queue.dead_lettered,
                ))
        return found

    # -- broadcast (``base.Broadcast``) -------------------------------------------------

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        """Copy ``frame`` into every inbox ``exchange`` routes ``routing_key`` to now
        (see ``base.Exchange``); inboxes unread for their ``expires`` are unbound first."""
        check_broadcast(exchange, frame, routing_key)
        message = _Message(
            seq=0, queue="", priority=0, not_before=None, body=bytes(frame.body),
            content_type=frame.content_type, content_encoding=frame.content_encoding,
            headers=dump_json_mapping("headers", frame.headers),
            properties=dump_json_mapping("properties", frame.properties),
        )
        broker = self._broker
        with broker.changed:
            at = time.time()
            for inbox in _live(broker.exchange(exchange)):
                if routes_to(exchange, inbox.spec.binding_key, routing_key):
                    inbox.messages.append((at, message))
            broker.changed.notify_all()

    def listen(self, exchange: Exchange, queue: BoundQueue) -> _Inbox:
        """Bind a new inbox for ``queue`` to ``exchange``. Two listeners of one queue
        name (two workers with one node name) each get every message, as two Redis
        subscribers do (AMQP would refuse the second declarer of an exclusive queue)."""
        check_listen(exchange, queue)
        broker = self._broker
        with broker.changed:
            inboxes = _live(broker.exchange(exchange))
            inbox = _Inbox(broker, exchange, queue)
            inboxes.append(inbox)
            return inbox
