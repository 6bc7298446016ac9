"""The client's event: ``task-sent`` for every task an app sends, with
``task_send_sent_event`` (Celery's ``amqp.send_task_message``).

Fields, as Celery's: ``uuid``, ``root_id``, ``parent_id``, ``name``, ``args`` and
``kwargs`` (the message's ``argsrepr``/``kwargsrepr``), ``retries``, ``eta`` and
``expires`` (ISO 8601 or None), then where it went: ``queue``, ``exchange`` (``""``: the
default exchange) and ``routing_key``. The sender's hostname is Celery's anonymous node
name, ``gen<pid>@<host>``. Sent after the publish succeeded, off the caller's thread
(``dispatcher``); a broker that cannot broadcast sends none (logged once).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wiretask.control.wire import LamportClock
from wiretask.events.dispatcher import EventDispatcher
from wiretask.events.wire import DEFAULT_EXCHANGE, event_exchange
from wiretask.transports.base import Broadcast

if TYPE_CHECKING:
    from wiretask.calling import Call
    from wiretask.codecs import Registry
    from wiretask.transports.base import Transport

__all__ = ["SentEvents", "anon_nodename"]

logger = logging.getLogger("wiretask.events")


def anon_nodename() -> str:
    """Celery's ``anon_nodename()``: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


class SentEvents:
    """``task-sent`` for one app (see the module docstring): ``sent(calls)`` after each
    publish; ``close()`` with the app."""

    def __init__(self, registry: Registry, *, exchange: str = DEFAULT_EXCHANGE,
                 serializer: str = "json") -> None:
        self._registry = registry
        self._exchange = exchange
        self._serializer = serializer
        self._lock = threading.Lock()
        self._dispatcher: EventDispatcher | None = None
        self._transport: Transport | None = None
        self._warned = False
        self.clock = LamportClock()

    def _for(self, transport: Transport) -> EventDispatcher | None:
        with self._lock:
            if self._dispatcher is not None and self._transport is transport:
                return self._dispatcher
            if not isinstance(transport, Broadcast):
                if not self._warned:
                    logger.warning("task_send_sent_event: %s cannot broadcast, so no "
                                   "task-sent event is sent", transport.url)
                    self._warned = True
                return None
            if self._dispatcher is not None:
                self._dispatcher.close(0)
            self._transport = transport
            self._dispatcher = EventDispatcher(
                transport, event_exchange(transport.url.partition(":")[0], self._exchange),
                hostname=anon_nodename(), registry=self._registry,
                serializer=self._serializer, clock=self.clock,
            )
            return self._dispatcher

    def sent(self, transport: Transport, calls: Sequence[Call]) -> None:
        """``task-sent`` for each of ``calls``, published on ``transport``. Never raises."""
        dispatcher = self._for(transport)
        if dispatcher is None:
            return
        for call in calls:
            message, route = call.message, call.route
            dispatcher.publish("task-sent", {
                "uuid": message.id, "root_id": message.root_id,
                "parent_id": message.parent_id, "name": message.task,
                "args": message.argsrepr, "kwargs": message.kwargsrepr,
                "retries": message.retries,
                "eta": message.eta.isoformat() if message.eta is not None else None,
                "expires": message.expires.isoformat() if message.expires is not None
                else None,
                "queue": route.queue, "exchange": route.exchange, "routing_key": route.key,
            })

    def close(self, timeout: float = 2.0) -> None:
        """Publish what is queued (up to ``timeout`` seconds) and stop."""
        with self._lock:
            dispatcher, self._dispatcher, self._transport = self._dispatcher, None, None
        if dispatcher is not None:
            dispatcher.close(timeout)
