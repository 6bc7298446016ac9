"""Sending events: ``EventDispatcher``, fire and forget, off the caller's thread.

``send`` builds the event at once (its ``timestamp`` and ``clock`` are those of the
moment it happened) and queues its frame; one sender thread publishes the queue in order
on the event exchange (``Broadcast.broadcast``). So a task never waits for the broker
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
from wiretask.events.wire import encode_event, event, group_of, routing_key, utcoffset_hours
from wiretask.protocol.frame import Frame
from wiretask.transports.base import Broadcast, Exchange

__all__ = ["BUFFER_LIMIT", "RETRY_MAX", "RETRY_START", "EventDispatcher", "local_utcoffset"]

logger = logging.getLogger("wiretask.events")

#: Events kept while the broker is away, at most (the oldest are dropped beyond).
BUFFER_LIMIT: Final = 10_000
#: First pause before publishing again after a broker error; it doubles up to RETRY_MAX.
RETRY_START: Final = 0.1
RETRY_MAX: Final = 5.0


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
        self._queue: collections.deque[tuple[Frame, str]] = collections.deque()
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
        """Queue the event whatever the groups (``send`` checks them). Never raises."""
        clock = self._forward() if self._forward is not None else 0
        body = event(type_, fields, hostname=self.hostname, utcoffset=self.utcoffset,
                     pid=self.pid, clock=clock, timestamp=time.time())
        try:
            frame = encode_event(body, self.registry, self.serializer)
        except WiretaskError as exc:
            with self._lock:
                self.dropped += 1
            logger.warning("event %s not sent: %s", type_, exc)
            return
        with self._lock:
            if len(self._queue) >= self._limit:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning("events: %d dropped so far (%d waiting for the broker)",
                                   self.dropped, len(self._queue))
            self._queue.append((frame, routing_key(type_)))
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="wiretask-events",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        pause = RETRY_START
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                frame, key = self._queue[0]
            try:
                self.transport.broadcast(self.exchange, frame, routing_key=key)
            except Exception as exc:  # never into the task: log, keep, try again
                if not self._failing:
                    logger.warning("events: cannot publish on %s (%s); keeping them and "
                                   "trying again", self.exchange.name, exc)
                    self._failing = True
                with self._lock:
                    if self._closing:
                        self.dropped += len(self._queue)
                        self._queue.clear()
                        return
                    self._wake.wait(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            if self._failing:
                logger.info("events: publishing again on %s", self.exchange.name)
                self._failing = False
            pause = RETRY_START
            with self._lock:
                if self._queue and self._queue[0][0] is frame:
                    self._queue.popleft()
                self.sent += 1

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued event is published; False
        if some are still waiting."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queue:
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
