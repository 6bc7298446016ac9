"""One py-amqp connection, shared by threads under a lock.

py-amqp is not thread-safe: a ``Link`` is used only under its ``lock``. Waiting for the
broker never holds it: ``Waiter`` polls the socket with the lock released, so that acks
and heartbeats from other threads go through while a consumer waits, and ``pump`` then
reads, under the lock and without blocking, whatever has arrived.

``epoch`` grows every time the connection is replaced or given up; channels, consumer
tags and delivery tags belong to one epoch, and a holder of an older one knows they are
dead (a delivery tag of a lost channel can never be acknowledged).
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import ssl
import struct
import threading
from typing import Any

import amqp

from wiretask._amqp.errors import translate
from wiretask._amqp.options import Options
from wiretask._amqp.wire import tolerant_frame_handler
from wiretask._errormap import map_exceptions

__all__ = ["Link", "Waiter", "heartbeat_period"]

log = logging.getLogger("wiretask.transports.amqp")

#: Longest time ``pump`` waits for the rest of a frame that has started to arrive.
_FRAME_WAIT = 5.0
#: Bound on the close handshake.
_CLOSE_WAIT = 2.0
#: Bytes asked of the socket per read (see ``_read_greedily``).
_READ_SIZE = 1 << 16

_READ_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


class Link:
    """A py-amqp connection for one ``role`` (``"publish"`` or ``"consume"``)."""

    def __init__(self, options: Options, role: str) -> None:
        self._options = options
        self.role = role
        self.lock = threading.RLock()
        self.connection: amqp.Connection | None = None
        self.epoch = 0
        self._poller: Any = None

    @property
    def url(self) -> str:
        return self._options.masked_url

    def translate(self, action: str) -> map_exceptions:
        """``with link.translate(action):`` around every driver call."""
        return translate(action, url=self._options.masked_url, secret=self._options.password)

    def open(self) -> amqp.Connection:
        """The open connection, connecting first if there is none (caller holds ``lock``).

        Raises:
            ConnectionLost: the broker cannot be reached.
            TransportError: refused for good (credentials, virtual host, TLS trust).
        """
        connection = self.connection
        if connection is not None and connection.connected:
            return connection
        self.discard()
        kwargs = self._options.connection_kwargs()
        properties = dict(kwargs.pop("client_properties", None) or {})
        properties.setdefault(
            "connection_name", f"wiretask {self.role} {socket.gethostname()}:{os.getpid()}"
        )
        # Frames are read by wiretask._amqp.wire's handler: a message whose content
        # header py-amqp cannot read arrives marked instead of breaking the connection.
        connection = amqp.Connection(client_properties=properties,
                                     frame_handler=tolerant_frame_handler, **kwargs)
        with self.translate("connect"):
            connection.connect()
        _read_greedily(connection.transport)
        self.connection = connection
        self.epoch += 1
        poller = select.poll()
        poller.register(connection.sock, _READ_EVENTS)
        self._poller = poller
        return connection

    def discard(self) -> None:
        """Give the connection up without a close handshake (it failed, or is in an
        unknown state). The broker requeues what it had delivered on it."""
        connection, self.connection = self.connection, None
        self._poller = None
        if connection is None:
            return
        self.epoch += 1
        try:
            connection.collect()
        except Exception:  # a dead socket may fail to close; nothing else to do
            log.debug("discarding the %s connection failed", self.role, exc_info=True)

    def close(self) -> None:
        """Close the connection with the AMQP handshake (bounded), then drop it."""
        connection, self.connection = self.connection, None
        self._poller = None
        if connection is None:
            return
        self.epoch += 1
        try:
            if connection.connected:
                connection.sock.settimeout(_CLOSE_WAIT)
                connection.close()
        except Exception:  # the broker is gone or slow: the socket closes below anyway
            log.debug("closing the %s connection failed", self.role, exc_info=True)
        finally:
            try:
                connection.collect()
            except Exception:
                log.debug("collecting the %s connection failed", self.role, exc_info=True)

    def readable(self) -> bool:
        """Whether a frame (or part of one) is waiting to be read (caller holds ``lock``)."""
        connection = self.connection
        if connection is None or self._poller is None:
            return False
        if _whole_frame(connection.transport._read_buffer):
            return True
        sock = connection.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return bool(self._poller.poll(0))

    def pump(self) -> int:
        """Read and dispatch every frame that has arrived, without waiting for more
        (caller holds ``lock``); return how many methods were completed. A frame that has
        started to arrive is read to its end (at most ``_FRAME_WAIT`` seconds); a message
        whose later frames have not arrived yet is completed by a later call.

        Raises:
            ConnectionLost / TransportError: the connection failed (it is discarded).
        """
        connection = self.connection
        handled = 0
        if connection is None:
            return handled
        try:
            with self.translate("read"):
                while self.readable():
                    # One frame at a time (drain_events would wait for a whole method,
                    # past heartbeat frames, for as long as its timeout).
                    try:
                        if connection.blocking_read(timeout=_FRAME_WAIT):
                            handled += 1
                    except TimeoutError:
                        break
        except Exception:
            self.discard()
            raise
        return handled

    def waiter(self) -> Waiter | None:
        """A ``Waiter`` on the current connection's socket (caller holds ``lock``)."""
        connection = self.connection
        if connection is None:
            return None
        return Waiter(connection.sock)

    def heartbeat(self, rate: float | None = None) -> None:
        """Read what has arrived and send a heartbeat if one is due (caller holds
        ``lock``): py-amqp's ``heartbeat_tick`` with ``rate`` checks per interval
        (``None``: 2, a heartbeat every half interval).

        Raises:
            ConnectionLost: heartbeats were missed or the connection failed (discarded).
        """
        connection = self.connection
        if connection is None:
            return
        self.pump()
        try:
            with self.translate("heartbeat"):
                connection.heartbeat_tick(rate=rate or 2)
        except Exception:
            self.discard()
            raise


def heartbeat_period(options: Options) -> float | None:
    """Seconds between heartbeat checks: ``heartbeat / heartbeat_checkrate`` (Celery's
    rule), else a quarter of the heartbeat, at least half a second; ``None`` without
    heartbeats."""
    interval = options.heartbeat
    if not interval:
        return None
    if options.heartbeat_checkrate:
        return max(interval / options.heartbeat_checkrate, 0.5)
    return max(interval / 4, 0.5)


def _read_greedily(transport: Any) -> None:
    """Make py-amqp's reader take everything the socket has in one call.

    py-amqp reads a frame with three ``recv`` calls sized to its parts (header, payload,
    end byte): three system calls per frame, nine per message. Its reader keeps what a
    call returns beyond what it asked for (``_read_buffer``) for the next read, so asking
    for all that has arrived gives the same frames with about one call per burst: on the
    consume path, where it cost a third of the time per message."""
    receive = transport._quick_recv

    def greedy(size: int) -> bytes:
        data: bytes = receive(max(size, _READ_SIZE))
        return data

    transport._quick_recv = greedy


def _whole_frame(buffered: bytes) -> bool:
    """Whether py-amqp's read buffer holds at least one whole frame (7 bytes of header,
    the payload, the end byte): then there is something to read without the socket."""
    if len(buffered) < 7:
        return False
    size: int = struct.unpack_from(">I", buffered, 3)[0]
    return len(buffered) >= size + 8


class Waiter:
    """Waits for a socket to become readable, without any lock held. A socket closed
    meanwhile by another thread counts as readable (the caller then finds out why)."""

    __slots__ = ("_poller", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        poller = select.poll()
        try:
            poller.register(sock, _READ_EVENTS)
        except (ValueError, OSError):  # closed already
            self._poller: select.poll | None = None
        else:
            self._poller = poller

    def wait(self, timeout: float) -> bool:
        if self._poller is None:
            return True
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            return bool(self._poller.poll(max(math.ceil(timeout * 1000), 0)))
        except (ValueError, OSError):
            return True
