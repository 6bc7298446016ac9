"""Sending events: ``EventDispatcher``, fire and forget, off the caller's thread.

``send`` builds the event at once (its ``timestamp`` and ``clock`` are those of the
moment it happened) and queues it; one sender thread encodes and publishes the queue in
order on the event exchange (``Broadcast.broadcast``): an event alone as itself, events
of one group queued behind each other (a busy worker) as one Celery ``<group>.multi``
message of at most ``MULTI_LIMIT`` (a list body, which Celery's receivers and
``celery events`` read event by event), as Celery's worker batches its task events.
So a task never waits for the broker
to carry its events, and a broker error never reaches it: the sender logs it (once per
outage), keeps the events and tries again, pausing from ``RETRY_START`` up to
``RETRY_MAX`` while the broker stays away, as Celery's dispatcher buffers events while
offline. The queue is bounded (``buffer_limit``): when it is full the oldest event is
dropped and the drops are counted and logged, so a long outage costs memory no further.

Groups are Celery's: an event's group is the part of its type before the first ``-``
(``task``, ``worker``); ``groups`` empty means every group is sent (Celery's
``groups=None``); otherwise only the listed ones. ``enable_group``/``disable_group`` are
what the ``enable_events``/``disable_events`` control commands change.

Threading: ``send`` may be called from any thread; ``_lock`` guards the queue, the
groups and the counters.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from wiretask.codecs import Registry
from wiretask.errors import WiretaskError
from wiretask.events.wire import (
    encode_event,
    event,
    group_of,
    multi_routing_key,
    routing_key,
    utcoffset_hours,
)
from wiretask.protocol.frame import Frame
from wiretask.transports.base import Broadcast, Exchange

__all__ = ["BUFFER_LIMIT", "MULTI_LIMIT", "RETRY_MAX", "RETRY_START", "EventDispatcher",
           "local_utcoffset"]

logger = logging.getLogger("wiretask.events")

#: Events kept while the broker is away, at most (the oldest are dropped beyond).
BUFFER_LIMIT: Final = 10_000
#: First pause before publishing again after a broker error; it doubles up to RETRY_MAX.
RETRY_START: Final = 0.1
RETRY_MAX: Final = 5.0
#: Most events of one group published as one ``<group>.multi`` message (Celery's
#: dispatcher batches its buffered task events 24 at a time).
MULTI_LIMIT: Final = 24


def local_utcoffset() -> int:
    """This machine's UTC offset in Celery's form (``celery.utils.time.utcoffset``)."""
    return utcoffset_hours(time.timezone, time.altzone, bool(time.localtime().tm_isdst))


class EventDispatcher:
    """Publishes events on ``exchange`` through ``transport`` (see the module docstring).

    Args:
        transport: a transport that offers ``Broadcast``.
        exchange: the event exchange (``wire.event_exchange``).
        hostname: the sender's node name (every event's ``hostname``).
        registry: the codecs; ``serializer`` names the one bodies are written with
            (Celery's ``event_serializer``, JSON by default).
        clock: the sender's Lamport clock (``forward()`` per event); None: ``clock`` is
            0 in every event.
        groups: the groups sent (empty: all).
        enabled: False: ``send`` does nothing until ``enable()``.
        buffer_limit: events queued at most.
    """

    def __init__(
        self,
        transport: Broadcast,
        exchange: Exchange,
        *,
        hostname: str,
        registry: Registry,
        serializer: str = "json",
        clock: Any = None,
        groups: Iterable[str] = (),
        enabled: bool = True,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self.transport = transport
        self.exchange = exchange
        self.hostname = hostname
        self.registry = registry
        self.serializer = serializer
        self.groups: set[str] = set(groups)
        self.enabled = enabled
        self.pid = os.getpid()
        self.utcoffset = local_utcoffset()
        self._forward: Callable[[], int] | None = None if clock is None else clock.forward
        self._lock = threading.Lock()
        #: Events waiting for the sender thread: (type, event).
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        #: Events the sender thread took and has not published yet.
        self._in_flight = 0
        self._limit = buffer_limit
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._thread: threading.Thread | None = None
        #: Events published, and events dropped (buffer full, or unencodable).
        self.sent = 0
        self.dropped = 0
        self._failing = False

    def __repr__(self) -> str:
        return f"<EventDispatcher {self.hostname} on {self.exchange.name}>"

    # -- groups -----------------------------------------------------------------------

    def wants(self, type_: str) -> bool:
        """Whether an event of this type would be sent now."""
        return self.enabled and (not self.groups or group_of(type_) in self.groups)

    def enable_group(self, group: str) -> bool:
        """Celery's ``enable_events`` on a group: False if it was sent already (every
        group is, when ``groups`` is empty)."""
        with self._lock:
            if self.groups and group not in self.groups:
                self.groups.add(group)
                return True
            return False

    def disable_group(self, group: str) -> bool:
        """Celery's ``disable_events``: False if the group was not listed (with
        ``groups`` empty, as in Celery, nothing changes)."""
        with self._lock:
            if group in self.groups:
                self.groups.discard(group)
                return True
            return False

    # -- sending ----------------------------------------------------------------------

    def send(self, type_: str, **fields: Any) -> None:
        """Queue the event ``type_`` with ``fields``, if its group is sent. Never raises:
        an event that cannot be encoded is logged and dropped."""
        if not self.enabled or (self.groups and group_of(type_) not in self.groups):
            return
        self.publish(type_, fields)

    def publish(self, type_: str, fields: dict[str, Any]) -> None:
        """Queue the event whatever the groups (``send`` checks them). Never raises.

        Hot path (three calls per task with task events on): the event is built here,
        with its clock and time; encoding and publishing are the sender thread's."""
        clock = self._forward() if self._forward is not None else 0
        body = event(type_, fields, hostname=self.hostname, utcoffset=self.utcoffset,
                     pid=self.pid, clock=clock, timestamp=time.time())
        with self._lock:
            queue = self._queue
            if len(queue) >= self._limit:
                queue.popleft()
                self._count_drops(1)
            queue.append((type_, body))
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="wiretask-events",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def _count_drops(self, count: int) -> None:
        """Caller holds ``_lock``."""
        before = self.dropped
        self.dropped += count
        if before == 0 or before // 1000 != self.dropped // 1000:
            logger.warning("events: %d dropped so far (%d waiting for the broker)",
                           self.dropped, len(self._queue))

    def _take(self) -> list[tuple[str, dict[str, Any]]] | None:
        """The next batch (caller holds ``_lock``): the first queued event and those of
        its group right behind it, at most ``MULTI_LIMIT``; None once closed and empty."""
        queue = self._queue
        while not queue and not self._closing:
            self._wake.wait()
        if not queue:
            return None
        first = queue.popleft()
        batch = [first]
        group = group_of(first[0])
        while queue and len(batch) < MULTI_LIMIT and group_of(queue[0][0]) == group:
            batch.append(queue.popleft())
        self._in_flight = len(batch)
        return batch

    def _frame(self, batch: list[tuple[str, dict[str, Any]]]) -> tuple[Frame, str] | None:
        """One event as itself, several as Celery's ``<group>.multi`` list. An event the
        serializer refuses is dropped (logged); the others of its batch go on."""
        if len(batch) == 1:
            type_, body = batch[0]
            key = routing_key(type_)
        else:
            body_list = [body for _, body in batch]
            try:
                return (encode_event(body_list, self.registry, self.serializer),
                        multi_routing_key(group_of(batch[0][0])))
            except WiretaskError:
                good = [one for one in batch if self._frame([one]) is not None]
                if not good:
                    return None
                if len(good) == 1:
                    return self._frame(good)
                return (encode_event([b for _, b in good], self.registry, self.serializer),
                        multi_routing_key(group_of(good[0][0])))
        try:
            return encode_event(body, self.registry, self.serializer), key
        except WiretaskError as exc:
            with self._lock:
                self.dropped += 1
            logger.warning("event %s not sent: %s", type_, exc)
            return None

    def _run(self) -> None:
        pause = RETRY_START
        while True:
            with self._lock:
                batch = self._take()
            if batch is None:
                return
            framed = self._frame(batch)
            if framed is None:
                with self._lock:
                    self._in_flight = 0
                continue
            frame, key = framed
            try:
                self.transport.broadcast(self.exchange, frame, routing_key=key)
            except Exception as exc:  # never into the task: log, keep, try again
                if not self._failing:
                    logger.warning("events: cannot publish on %s (%s); keeping them and "
                                   "trying again", self.exchange.name, exc)
                    self._failing = True
                with self._lock:
                    self._in_flight = 0
                    if self._closing:
                        self.dropped += len(batch) + len(self._queue)
                        self._queue.clear()
                        return
                    self._queue.extendleft(reversed(batch))
                    excess = len(self._queue) - self._limit
                    for _ in range(max(excess, 0)):
                        self._queue.popleft()
                    if excess > 0:
                        self._count_drops(excess)
                    self._wake.wait(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            if self._failing:
                logger.info("events: publishing again on %s", self.exchange.name)
                self._failing = False
            pause = RETRY_START
            with self._lock:
                self._in_flight = 0
                self.sent += len(batch)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued event is published; False
        if some are still waiting."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queue and not self._in_flight:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self, timeout: float = 2.0) -> None:
        """Publish what is queued (waiting up to ``timeout`` seconds), then stop the
        sender thread; later events are not sent. What could not be published in time
        is dropped and counted."""
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self.enabled = False
            thread = self._thread
            left = len(self._queue)
            self._queue.clear()
            self.dropped += left
            self._wake.notify_all()
        if left:
            logger.warning("events: %d not published before closing", left)
        if thread is not None:
            thread.join(timeout)
