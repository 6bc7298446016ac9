"""Reading events: ``EventReceiver``, what ``wiretask events`` and the exporter's event
collector listen with, as Celery's ``EventReceiver`` does.

It binds a queue of its own, ``<event_queue_prefix>.<uuid>``, to the event exchange with
the routing key ``#`` (every event; ``x-message-ttl`` ``event_queue_ttl``, ``x-expires``
``event_queue_expires``), reads each message's events (one, or a ``.multi`` batch), and
hands every event to the handler of its type (or ``"*"``), after Celery's adjustments:
``clock`` moves the receiver's Lamport clock (a ``task-sent`` event, from a client that
never syncs, gets the receiver's clock minus one), ``timestamp`` is moved to this
machine's UTC offset, and ``local_received`` is the time it arrived.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from wiretask.codecs import Registry
from wiretask.control.wire import LamportClock
from wiretask.errors import DecodeError, TransportError, ValidationError
from wiretask.events.dispatcher import local_utcoffset
from wiretask.events.wire import DEFAULT_QUEUE_PREFIX, decode_events, receiver_queue
from wiretask.transports.base import Broadcast, Exchange, Inbox

__all__ = ["EventReceiver", "Handler"]

logger = logging.getLogger("wiretask.events")

#: Handles one event.
Handler = Callable[[dict[str, Any]], object]
#: Celery's ``CLIENT_CLOCK_SKEW``.
_CLIENT_CLOCK_SKEW: Final = -1
#: Longest single wait for a message (how soon ``should_stop`` is seen).
_POLL: Final = 0.5


class EventReceiver:
    """Listens for events on ``exchange`` (see the module docstring).

    Args:
        transport: a transport that offers ``Broadcast``.
        exchange: the event exchange (``wire.event_exchange``).
        registry: decodes bodies under its accept policy.
        handlers: ``{event type: handler}``; ``"*"`` handles the others.
        node_id: the queue's suffix (default: a new uuid).
        prefix, queue_ttl, queue_expires, exclusive: the queue (Celery's
            ``event_queue_prefix``, ``event_queue_ttl``, ``event_queue_expires``,
            ``event_queue_exclusive``).
        routing_key: the binding key (``#``: every event; ``task.#``: task events).
    """

    def __init__(
        self, transport: Broadcast, exchange: Exchange, registry: Registry, *,
        handlers: Mapping[str, Handler] | None = None, node_id: str | None = None,
        prefix: str = DEFAULT_QUEUE_PREFIX, queue_ttl: float | None = 5.0,
        queue_expires: float | None = 60.0, exclusive: bool = False,
        routing_key: str = "#",
    ) -> None:
        if not isinstance(transport, Broadcast):
            raise ValidationError("transport", "must offer Broadcast (the broker cannot "
                                               "carry events)")
        self.transport = transport
        self.exchange = exchange
        self.registry = registry
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.queue = receiver_queue(node_id or str(uuid.uuid4()), prefix=prefix,
                                    binding_key=routing_key, expires=queue_expires,
                                    message_ttl=queue_ttl, exclusive=exclusive)
        self.clock = LamportClock()
        self.should_stop = threading.Event()
        self._inbox: Inbox | None = None
        self._here = local_utcoffset()

    def __enter__(self) -> EventReceiver:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Declare and bind the queue: events sent from now on arrive.

        Raises:
            ConnectionLost, TransportError: as ``Broadcast.listen``.
        """
        if self._inbox is None:
            self._inbox = self.transport.listen(self.exchange, self.queue)

    def close(self) -> None:
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox.close()

    def prepare(self, event: dict[str, Any]) -> dict[str, Any]:
        """Celery's ``event_from_message``: the clock, the timestamp, ``local_received``."""
        if event["type"] == "task-sent":
            clock = event["clock"] = (self.clock.value or 1) + _CLIENT_CLOCK_SKEW
            self.clock.adjust(clock)
        elif "clock" in event:
            self.clock.adjust(event["clock"])
        else:
            event["clock"] = self.clock.forward()
        offset, timestamp = event.get("utcoffset"), event.get("timestamp")
        if isinstance(offset, int | float) and isinstance(timestamp, int | float):
            event["timestamp"] = timestamp - (offset - self._here) * 3600
        event["local_received"] = time.time()
        return event

    def events(self, timeout: float) -> list[dict[str, Any]]:
        """The events of the next message, waiting up to ``timeout`` seconds (none: an
        empty list). A message that cannot be read is logged and skipped.

        Raises:
            ConnectionLost, TransportError: the broker failed.
        """
        self.open()
        assert self._inbox is not None
        frame = self._inbox.get(timeout)
        if frame is None:
            return []
        try:
            return [self.prepare(event) for event in decode_events(frame, self.registry)]
        except (DecodeError, ValidationError) as exc:
            logger.warning("an event message that cannot be read was skipped: %s", exc)
            return []

    def itercapture(self, limit: int | None = None,
                    timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Every event as it arrives, handed to its handler first, until ``limit``
        events, ``timeout`` seconds without any, or ``should_stop``."""
        seen = 0
        quiet_since = time.monotonic()
        while not self.should_stop.is_set():
            wait = _POLL if timeout is None else min(
                _POLL, max(timeout - (time.monotonic() - quiet_since), 0.0))
            batch = self.events(wait)
            if not batch:
                if timeout is not None and time.monotonic() - quiet_since >= timeout:
                    return
                continue
            quiet_since = time.monotonic()
            for event in batch:
                handler = self.handlers.get(event["type"]) or self.handlers.get("*")
                if handler is not None:
                    handler(event)
                yield event
                seen += 1
                if limit is not None and seen >= limit:
                    return

    def capture(self, limit: int | None = None, timeout: float | None = None,
                *, reconnect: bool = True) -> None:
        """Hand events to the handlers until ``limit``, ``timeout`` or ``should_stop``;
        with ``reconnect``, a broker error is logged and the queue bound again after a
        pause (events sent meanwhile are lost, as with Celery's)."""
        pause = 0.1
        while not self.should_stop.is_set():
            try:
                for _ in self.itercapture(limit, timeout):
                    pause = 0.1
            except TransportError as exc:
                if not reconnect:
                    raise
                logger.warning("events: connection lost (%s); listening again", exc)
                self.close()
                self.should_stop.wait(pause)
                pause = min(pause * 2, 5.0)
            else:
                return
