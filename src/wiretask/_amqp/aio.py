"""The asyncio driver plumbing for RabbitMQ: aiormq connections opened with the sync
driver's options, its exceptions translated, and Kombu's bytes written through it.

aiormq frames what it sends with pamqp, whose table writer is not py-amqp's (it writes
small ints as ``b``/``s`` where py-amqp, and so Kombu, writes ``I``) and whose
``basic_publish`` adds a random ``message_id`` to every message. So the asyncio twins
do not send through those: they write the frames ``wire`` lays out (the very bytes the
sync driver writes) as one payload on aiormq's write queue (``write``), and keep only
aiormq's connection, channel, heartbeat and frame reading. Publisher confirms are
awaited through aiormq's confirmation table (``register_confirms``), and since aiormq
identifies a returned message by its ``message_id`` (which Kombu's messages do not
carry), a channel's ``basic.return`` is read by ``ReturnHook`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, cast

import aiormq
import aiormq.abc
from aiormq import exceptions as ax
from pamqp import commands as spec

from wiretask._amqp.options import Options
from wiretask._errormap import ErrorTable, Row, map_exceptions
from wiretask.errors import ConnectionLost, ImproperlyConfigured, TransportError

__all__ = [
    "AIORMQ_ERRORS",
    "ReturnHook",
    "Returned",
    "close_later",
    "close_quietly",
    "frame_max",
    "open_connection",
    "queue_frames",
    "register_confirms",
    "release_confirms",
    "translate",
    "translated",
    "within",
    "write",
]

log = logging.getLogger("wiretask.transports.amqp")

AIORMQ_ERRORS: Final = ErrorTable("RabbitMQ", (
    Row(ssl.SSLCertVerificationError, TransportError,
        "the broker's TLS certificate is not trusted: retrying cannot change that"),
    Row(ax.ProbableAuthenticationError, TransportError,
        "403 ACCESS_REFUSED: a wrong user or password; the same credentials are refused "
        "again"),
    Row(ax.AuthenticationError, TransportError, "no authentication mechanism in common"),
    Row(ax.ChannelAccessRefused, TransportError,
        "403 ACCESS_REFUSED: no permission on the virtual host or resource"),
    Row(ax.ConnectionNotAllowed, TransportError,
        "530 NOT_ALLOWED: e.g. a virtual host that does not exist"),
    Row(ax.ChannelPreconditionFailed, TransportError,
        "406 PRECONDITION_FAILED: e.g. a queue declared again with other arguments (the "
        "broker's text names them); the configuration must match the fleet's"),
    Row(ax.ChannelNotFoundEntity, TransportError, "404 NOT_FOUND: no such queue or exchange"),
    Row(ax.ChannelLockedResource, TransportError,
        "405 RESOURCE_LOCKED: an exclusive queue of another connection"),
    Row(ax.IncompatibleProtocolError, TransportError, "the server does not speak AMQP 0-9-1"),
    Row(ax.ConnectionSyntaxError, TransportError, "502: a protocol error"),
    Row(ax.ConnectionFrameError, TransportError, "501: a protocol error, a bug and not an outage"),
    Row(ax.ConnectionCommandInvalid, TransportError, "503: a protocol error"),
    Row(ax.ConnectionUnexpectedFrame, TransportError, "505: a protocol error"),
    Row(ax.ConnectionNotImplemented, TransportError, "540 NOT_IMPLEMENTED"),
    Row(ax.ConnectionClosed, ConnectionLost,
        "the broker closed the connection (320 CONNECTION_FORCED: shutting down, missed "
        "heartbeats; 541 INTERNAL_ERROR): a new connection may work"),
    Row(ax.AMQPConnectionError, ConnectionLost,
        "the connection is closed or could not be opened"),
    Row(ax.ChannelInvalidStateError, ConnectionLost,
        "the channel or its connection is closed"),
    Row(TimeoutError, ConnectionLost,
        "no answer in time: the outcome is unknown, the connection is dropped, a retry "
        "reconnects"),
    Row(OSError, ConnectionLost,
        "refused, reset or dropped connection, unknown host, TLS errors other than an "
        "untrusted certificate: the broker is down or restarting, or the network is"),
    Row(ax.AMQPError, TransportError, "any other broker error"),
))

#: py-amqp connection options aiormq has an equivalent of (the others are refused by
#: name: ``open_connection``).
_TLS_KEYS: Final = frozenset({"ca_certs", "certfile", "keyfile", "cert_reqs"})


def translate(action: str, options: Options) -> map_exceptions:
    """``with translate(action, options):`` around every aiormq call."""
    return map_exceptions(AIORMQ_ERRORS, action, url=options.masked_url,
                          secret=options.password or None)


class within:  # lower case: used like ``asyncio.timeout``
    """``async with within(options.confirm_timeout, "confirm_timeout"):``: the block
    is cut short after ``seconds``, as by ``asyncio.timeout``, and the ``TimeoutError``
    names the setting that bounded it (``translate`` makes it ``ConnectionLost``), so
    the message says what the broker did not answer in time instead of only
    "TimeoutError". A class: it is entered once per publish."""

    __slots__ = ("_seconds", "_setting", "_timeout")

    def __init__(self, seconds: float, setting: str) -> None:
        self._seconds = seconds
        self._setting = setting
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError as timeout:
            if not self._timeout.expired():
                raise
            raise TimeoutError(
                f"the broker did not answer within {self._setting}={self._seconds:g} s"
            ) from timeout.__cause__


def translated(exc: BaseException, action: str, options: Options) -> BaseException:
    """``exc`` as ``translate`` would raise it, without raising: its translation, or
    ``exc`` itself if no row matches (not a driver error)."""
    error = AIORMQ_ERRORS.translate(exc, action, url=options.masked_url,
                                    secret=options.password or None)
    return exc if error is None else error


def connection_url(options: Options) -> str:
    """The URL aiormq connects to: the options' host, credentials and virtual host,
    with the heartbeat (aiormq reads it from the query)."""
    scheme = "amqps" if options.ssl is not False else "amqp"
    host = options.host if ":" not in options.host else f"[{options.host}]"
    user = urllib.parse.quote(options.userid, safe="")
    password = urllib.parse.quote(options.password, safe="")
    # aiormq reads the virtual host from the path without its first slash.
    vhost = urllib.parse.quote(options.virtual_host, safe="")
    query = urllib.parse.urlencode({"heartbeat": int(options.heartbeat)})
    return f"{scheme}://{user}:{password}@{host}:{options.port}/{vhost}?{query}"


def _ssl_context(options: Options) -> ssl.SSLContext | None:
    if options.ssl is False:
        return None
    settings: Mapping[str, Any] = options.ssl if isinstance(options.ssl, Mapping) else {}
    unknown = sorted(set(settings) - _TLS_KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"AMQP ssl options {unknown} are not supported by the asyncio driver (aiormq); "
            f"it takes {sorted(_TLS_KEYS)}", setting="broker_use_ssl",
        )
    context = ssl.create_default_context(cafile=settings.get("ca_certs"))
    if settings.get("certfile"):
        context.load_cert_chain(settings["certfile"], settings.get("keyfile"))
    cert_reqs = settings.get("cert_reqs")
    if cert_reqs is not None:
        if cert_reqs == ssl.CERT_NONE:
            context.check_hostname = False
        context.verify_mode = cert_reqs
    return context


async def open_connection(options: Options, role: str) -> aiormq.Connection:
    """An open aiormq connection with ``options`` (named like the sync driver's,
    ``wiretask <role> <host>:<pid>``), within ``connect_timeout``.

    Raises:
        ImproperlyConfigured: a py-amqp connection option aiormq has no equivalent of
            (named).
        ConnectionLost: the broker cannot be reached.
        TransportError: it refused (credentials, virtual host, TLS trust).
    """
    extra = dict(options.connection_extra)
    properties = dict(extra.pop("client_properties", None) or {})
    if extra:
        raise ImproperlyConfigured(
            f"AMQP connection options {sorted(extra)} are not supported by the asyncio "
            "driver (aiormq): leave them out, or use the sync API",
            setting="broker_transport_options",
        )
    properties.setdefault(
        "connection_name", f"wiretask {role} {socket.gethostname()}:{os.getpid()}"
    )
    connection = aiormq.Connection(connection_url(options), context=_ssl_context(options),
                                   client_properties=properties)
    # Closing waits for the broker's Close-Ok (aiormq: up to 2 s) before it closes the
    # socket; no longer than connect_timeout (in whole seconds, as aiormq has it), the
    # bound of every other round trip.
    connection.READER_CLOSE_TIMEOUT = min(connection.READER_CLOSE_TIMEOUT,
                                          math.ceil(options.connect_timeout))
    with translate("connect", options):
        try:
            async with within(options.connect_timeout, "connect_timeout"):
                await connection.connect()
        except BaseException:
            await close_quietly(connection)
            raise
    return connection


async def close_quietly(
    connection: aiormq.Connection | aiormq.Channel, timeout: float | None = None,
) -> None:
    """Close a connection (or a channel) that failed, within ``timeout`` if given
    (closing it may fail too: logged)."""
    try:
        async with asyncio.timeout(timeout):
            await connection.close()
    except Exception:
        log.debug("closing a failed connection or channel", exc_info=True)


def close_later(
    connection: aiormq.Connection | aiormq.Channel, closing: set[asyncio.Task[None]],
    timeout: float | None = None,
) -> None:
    """``close_quietly`` in a task of its own (the caller may be being cancelled), kept
    in ``closing`` while it runs, so that the owner's ``close()`` can wait for it: a
    connection dropped as dead is closed by then, not a moment later."""
    task = asyncio.get_running_loop().create_task(close_quietly(connection, timeout))
    closing.add(task)
    task.add_done_callback(closing.discard)


def frame_max(connection: aiormq.Connection) -> int:
    """The frame size the broker and this connection agreed on."""
    return int(connection.connection_tune.frame_max)


def register_confirms(channel: aiormq.Channel, count: int) -> list[asyncio.Future[Any]]:
    """Take the next ``count`` delivery tags of ``channel`` (in confirm mode) for
    messages about to be written, and the futures aiormq resolves with their confirms
    (``basic.ack``: a result; ``basic.nack``: ``DeliveryError``; the channel closing:
    its exception)."""
    loop = asyncio.get_running_loop()
    first = channel.delivery_tag + 1
    futures: list[asyncio.Future[Any]] = []
    for tag in range(first, first + count):
        future: asyncio.Future[Any] = loop.create_future()
        channel.confirmations[tag] = future
        futures.append(future)
    channel.delivery_tag += count
    return futures


async def queue_frames(channel: aiormq.Channel, data: bytes) -> asyncio.Future[None]:
    """Queue ``data`` (whole frames for ``channel``) on the connection's writer as one
    payload; the future is done once it was handed to the socket. A cancellation
    before the payload was queued queues nothing; once queued it is written whole."""
    drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await channel.write_queue.put(
        aiormq.abc.ChannelFrame(payload=data, should_close=False, drain_future=drained)
    )
    return drained


async def write(channel: aiormq.Channel, data: bytes) -> None:
    """``queue_frames``, and wait until the payload was handed to the socket."""
    await asyncio.shield(await queue_frames(channel, data))


def release_confirms(channel: aiormq.Channel, futures: list[asyncio.Future[Any]]) -> None:
    """Undo ``register_confirms`` when nothing was written after all (no other tags
    were taken since: the caller holds its publishing lock)."""
    count = len(futures)
    last = channel.delivery_tag
    for tag in range(last - count + 1, last + 1):
        channel.confirmations.pop(tag, None)
    channel.delivery_tag -= count
    for future in futures:
        future.cancel()


class Returned:
    """A message the broker gave back (``basic.return``): why, and where it was sent."""

    __slots__ = ("exchange", "reply_text", "routing_key", "task_id")

    def __init__(self, reply_text: str, exchange: str, routing_key: str, task_id: str) -> None:
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        self.task_id = task_id


class ReturnHook:
    """Reads a channel's ``basic.return`` (the content header and body that follow it
    too, so the channel's frame stream stays in step) and hands it to ``on_return``,
    instead of aiormq's handler, which matches a return to its publish by
    ``message_id`` and drops one without (every Kombu message)."""

    def __init__(self, channel: aiormq.Channel, on_return: Callable[[Returned], None]) -> None:
        self._channel = channel
        self._on_return = on_return
        # aiormq's frame loop calls ``self._on_return_frame`` on the channel: this
        # instance's attribute comes first.
        cast(Any, channel)._on_return_frame = self._read

    async def _read(self, frame: spec.Basic.Return) -> None:
        channel = self._channel
        # aiormq's own reader of the content header that follows (name-mangled).
        header = await cast(Any, channel)._Channel__get_content_header()
        message = await channel._read_content(frame, header)
        properties = message.header.properties
        headers = properties.headers or {}
        task_id = headers.get("id") or properties.correlation_id or "<no id>"
        self._on_return(Returned(str(frame.reply_text), str(frame.exchange),
                                 str(frame.routing_key), str(task_id)))
