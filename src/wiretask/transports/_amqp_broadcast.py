"""Broadcast on RabbitMQ (``base.Broadcast``), declared exactly as Kombu declares it.

A part of ``AMQPTransport`` (its ``broadcast`` and ``listen`` delegate here).

* **Exchanges** are declared as Kombu declares the entity that uses them: the control
  exchanges ``<namespace>.pidbox`` (fanout) and ``reply.<namespace>.pidbox`` (direct)
  with ``durable=False``, the event exchange ``celeryev`` (topic) with ``durable=True``
  (Kombu's ``Exchange`` default); never ``auto_delete``. A declaration that differs from
  the broker's is refused by RabbitMQ (``PRECONDITION_FAILED``: ``TransportError``).
* **Publishing** goes on the publishing connection's declaration channel, without
  ``mandatory`` and without publisher confirms, as Kombu's pidbox and event producers
  publish: a message no queue is bound for is dropped by the broker.
* **A listener's queue** lives on a connection of its own (an exclusive queue belongs to
  the connection that declared it, and a listener waits on its socket without holding
  the transport's locks): ``queue_declare`` with ``durable=False``, ``auto_delete=True``,
  ``exclusive`` as asked, ``x-expires`` and ``x-message-ttl`` in whole milliseconds
  (Kombu's ``prepare_queue_arguments``), then ``queue_bind`` with the binding key and
  ``basic_consume`` with ``no_ack``. Closing deletes the queue and the connection.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import amqp
import attrs

from wiretask._amqp import wire
from wiretask._amqp.link import Link
from wiretask.errors import TransportError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Exchange, check_wait

if TYPE_CHECKING:
    from amqp.channel import Channel

    from wiretask._amqp.options import Options

__all__ = ["AMQPInbox", "queue_arguments"]

log = logging.getLogger("wiretask.transports.amqp")

#: Longest single wait on the listener's socket (``get`` loops to its timeout).
_SLICE = 1.0


def queue_arguments(queue: BoundQueue) -> dict[str, Any]:
    """The queue arguments Kombu declares a transient queue with (milliseconds)."""
    arguments: dict[str, Any] = {}
    if queue.message_ttl is not None:
        arguments["x-message-ttl"] = int(queue.message_ttl * 1000)
    if queue.expires is not None:
        arguments["x-expires"] = int(queue.expires * 1000)
    return arguments


def declare_exchange(channel: Channel, exchange: Exchange) -> None:
    channel.exchange_declare(exchange.name, exchange.type, durable=exchange.durable,
                             auto_delete=False)


class AMQPInbox:
    """A listener's queue on RabbitMQ, on a connection of its own (module docstring).

    Raises (from the constructor):
        ConnectionLost: the broker cannot be reached.
        TransportError: a declaration was refused (an exchange of another type).
    """

    def __init__(self, options: Options, exchange: Exchange, queue: BoundQueue) -> None:
        self.queue = queue.name
        self._exchange = exchange
        self._spec = queue
        # No heartbeats: the owner may not read for a while, and a listener that misses
        # messages while its connection is gone is what broadcast promises anyway.
        self._link = Link(attrs.evolve(options, heartbeat=0), "listen")
        self._channel: Channel | None = None
        self._arrived: collections.deque[amqp.Message] = collections.deque()
        self._closed = False
        self._lock = threading.Lock()
        with self._link.lock:
            try:
                self._open()
            except BaseException:
                self._link.discard()
                raise

    def __repr__(self) -> str:
        return f"<AMQPInbox {self.queue} on {self._exchange.name}>"

    def _open(self) -> None:
        link = self._link
        connection = link.open()
        with link.translate(f"listen on {self.queue!r}"):
            channel = connection.channel()
            channel.auto_decode = False
            declare_exchange(channel, self._exchange)
            channel.queue_declare(self.queue, durable=False, exclusive=self._spec.exclusive,
                                  auto_delete=True, arguments=queue_arguments(self._spec))
            channel.queue_bind(self.queue, self._exchange.name, self._spec.binding_key)
            channel.basic_consume(self.queue, no_ack=True, callback=self._arrived.append)
        self._channel = channel

    def get(self, timeout: float) -> Frame | None:
        wait = check_wait(timeout)
        if self._closed:
            raise TransportError(f"inbox {self.queue!r} is closed", url=self._link.url)
        deadline = time.monotonic() + wait
        link = self._link
        while True:
            if self._arrived:
                return wire.to_frame(self._arrived.popleft())
            with link.lock:
                if link.connection is None:
                    raise TransportError(f"inbox {self.queue!r}: its connection is gone",
                                         url=link.url)
                link.pump()
                if self._arrived:
                    continue
                waiter = link.waiter()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if waiter is not None:
                waiter.wait(min(left, _SLICE))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        link = self._link
        with link.lock:
            channel, self._channel = self._channel, None
            try:
                if channel is not None and link.connection is not None:
                    channel.queue_delete(self.queue)
            except Exception as exc:  # never raises: auto_delete/x-expires let it go
                log.debug("inbox %s: could not delete its queue: %r", self.queue, exc)
            link.close()
