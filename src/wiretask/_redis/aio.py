"""The asyncio twin of ``Commands``: the hot paths' commands from coroutines.

``AsyncCommands`` sends commands and scripts (``run``, ``call``, ``transaction``,
``script``: the same methods as ``wiretask._redis.client.Commands``) on one connection
that every coroutine of its event loop shares, pipelined:

* redis-py's asyncio connection connects it (handshake, AUTH, SELECT, TLS, with the
  options of a ``redis.asyncio`` pool built from the same URL and keywords as the sync
  one); then the connection's transport is handed to a small ``asyncio.Protocol`` of
  this module, which parses replies with hiredis in ``data_received`` and resolves each
  request's future in order. One request is one ``transport.write`` of all its packed
  commands, so a ``MULTI``/``EXEC`` transaction is never interleaved with another
  coroutine's commands, and Redis runs it whole or not at all.
* **Cancellation never corrupts the connection.** A request whose ``await`` is cancelled
  keeps its place in the queue of expected replies; its replies are read and dropped
  when they come. So a cancelled publish is as if its reply had been lost: the request
  ran whole or not at all (the caller cannot tell which, as after a lost connection),
  and the next request still gets its own replies.
* **Timeouts.** When a request gets no reply within ``socket_timeout`` the connection
  is dropped and every request waiting on it fails with redis-py's ``TimeoutError`` (one
  watchdog timer per connection, not one per request); the next request reconnects.
  Connecting is bounded by ``socket_connect_timeout``.
* **Coalesced writes.** Requests made in the same turn of the event loop go out in one
  write: a hundred coroutines publishing at once cost one system call.
* **One event loop.** The connection belongs to the loop it was made on; using the same
  instance from another loop raises ``RuntimeError`` (the app keeps one per loop).

``AsyncSubscriber`` is the pub/sub side: one subscriber connection per event loop,
shared by every subscription of a result backend (a thousand results awaited at once
are a thousand channels on one connection, not a thousand connections), dispatching
each message to the listeners of its channel.

Errors are redis-py's exceptions, as ``Commands`` raises them: the caller translates
them (``REDIS_ERRORS``). hiredis is required (the ``redis`` extra installs it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio
from hiredis import Reader, pack_command
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    InvalidResponse,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from wiretask._redis.client import exec_replies
from wiretask._redis.scripts import ScriptCall

__all__ = ["AsyncCommands", "AsyncSubscriber", "Listener"]

#: What the reader returns while a reply is incomplete (False is a RESP3 value).
_MORE = object()
#: Error replies after which the connection is dropped (see ``Commands``).
_WRONG_SERVER = (ReadOnlyError, MasterDownError)


class _Request:
    __slots__ = ("count", "future", "replies", "sent")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, sent: float) -> None:
        self.future = future
        self.count = count
        self.sent = sent
        self.replies: list[Any] = []


class _Pipe(asyncio.Protocol):
    """One connected socket: writes requests, reads replies in order."""

    def __init__(self, reader: Any, transport: asyncio.Transport, streams: object) -> None:
        self.reader = reader
        self.transport = transport
        #: redis-py's stream reader and writer, kept alive: a ``StreamWriter`` that is
        #: collected closes its transport, which is this pipe's now.
        self._streams = streams
        self.waiting: collections.deque[_Request] = collections.deque()
        self.lost: BaseException | None = None
        self._drained: asyncio.Event | None = None
        #: Requests written in this turn of the loop, sent together at its end.
        self._outbox: list[bytes] = []
        #: The reply timeout: when the oldest request was sent (``loop.time()``), and
        #: the one timer that checks it.
        self.timeout: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            reply = reader.gets()
            if reply is _MORE:
                return
            if not waiting:
                self.fail(InvalidResponse("a reply nobody asked for"))
                return
            request = waiting[0]
            request.replies.append(reply)
            if len(request.replies) == request.count:
                waiting.popleft()
                if not request.future.done():  # a cancelled request's replies are dropped
                    request.future.set_result(request.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection closed: {exc}" if exc else
                                  "Connection closed by server."))

    def pause_writing(self) -> None:
        self._drained = asyncio.Event()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.set()

    # -- ours -------------------------------------------------------------------------

    def send(self, request: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Queue ``request`` (all of its commands, in one piece) and return the future
        of its ``count`` replies. On an idle connection it is written at once (one at a
        time, a turn of the loop is latency); requests made while others are in flight
        go out in one write at the end of the loop's turn (many coroutines publishing at
        once cost one system call, not one each). A request is never split, so a
        ``MULTI``/``EXEC`` stays whole."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self.waiting.append(_Request(future, count, loop.time()))
        if len(self.waiting) == 1 and not self._outbox and self.lost is None:
            self.transport.write(request)
        else:
            if not self._outbox:
                loop.call_soon(self._flush)
            self._outbox.append(request)
        if self.timeout is not None and self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check)
        return future

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox and self.lost is None:
            self.transport.write(b"".join(outbox))

    def _check(self) -> None:
        """The watchdog: fail the connection if its oldest request has waited past the
        timeout, else look again when it would."""
        self._watchdog = None
        if not self.waiting or self.lost is not None or self.timeout is None:
            return
        loop = asyncio.get_running_loop()
        overdue = self.waiting[0].sent + self.timeout - loop.time()
        if overdue <= 0:
            self.fail(RedisTimeoutError(
                f"Timeout reading from Redis: no reply in {self.timeout:g} s"))
            return
        self._watchdog = loop.call_later(overdue, self._check)

    async def drained(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        drained = self._drained
        if drained is not None:
            await drained.wait()

    def fail(self, exc: BaseException) -> None:
        """Drop the connection: every request waiting on it fails with ``exc``."""
        if self.lost is None:
            self.lost = exc
        self._outbox.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.transport.abort()
        waiting, self.waiting = self.waiting, collections.deque()
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(exc)
        self.resume_writing()


class AsyncCommands:
    """Commands and scripts on one pipelined connection of one event loop (see the
    module doc), built with the options of ``pool`` (a ``redis.asyncio`` pool: URL,
    TLS, timeouts and credentials).

    Args:
        pool: where the connection's options come from (its own connections are not
            used).
    """

    def __init__(self, pool: redis.asyncio.ConnectionPool) -> None:
        self._pool = pool
        kwargs = pool.connection_kwargs
        timeout = kwargs.get("socket_timeout")
        self.socket_timeout: float | None = float(timeout) if timeout else None
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the connection is up (for tests and ``repr``)."""
        return self._pipe is not None and self._pipe.lost is None

    async def _connected(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this Redis connection belongs to another event loop (each loop needs its "
                "own; the app keeps one per loop)"
            )
        if self._closed:
            raise RedisConnectionError("the connection was closed")
        pipe = self._pipe
        if pipe is not None and pipe.lost is None:
            return pipe
        # One connect at a time; the others wait for it (shielded: a cancelled waiter
        # does not cancel the connect the others share).
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = loop.create_task(self._connect())
            connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(connecting)

    def _connect_done(self, task: asyncio.Future[_Pipe]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._pipe = task.result()
        elif not task.cancelled():
            task.exception()  # retrieved: the waiters raise it

    async def _connect(self) -> _Pipe:
        connection: Any = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            await connection.connect()
            streams = (connection._reader, connection._writer)
            transport: asyncio.Transport = streams[1].transport
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        # From here on the socket is ours: redis-py's streams are left behind (without
        # them its connection object has nothing to close or warn about).
        connection._reader = connection._writer = None
        reader = Reader(protocolError=InvalidResponse,
                        replyError=connection._parser.parse_error, notEnoughData=_MORE)
        pipe = _Pipe(reader, transport, streams)
        pipe.timeout = self.socket_timeout
        transport.set_protocol(pipe)
        if self._closed:  # closed while connecting
            pipe.fail(RedisConnectionError("the connection was closed"))
            raise RedisConnectionError("the connection was closed")
        return pipe

    async def run(
        self, commands: Sequence[tuple[Any, ...]], *, atomic: bool = False
    ) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order. An error
        reply is raised (the first one, as redis-py's exception for it) after every
        reply was read. ``atomic``: as ``transaction`` (the publish hot path asks for
        its transaction here: one coroutine level less per publish)."""
        if atomic:
            commands = [("MULTI",), *commands, ("EXEC",)]
        pipe = self._pipe
        # A connected pipe of this loop, checked here rather than in a coroutine (one
        # level of coroutines less per request, the publish hot path).
        if (pipe is None or pipe.lost is not None or self._closed
                or self._loop is not asyncio.get_running_loop()):
            pipe = await self._connected()
        request = b"".join(map(pack_command, commands))  # map: no Python frame
        future = pipe.send(request, len(commands))
        if pipe._drained is not None:
            await pipe.drained()
        # No reply within ``socket_timeout``: the pipe's watchdog drops the connection
        # (the server is hung or the network lost) and this raises redis-py's
        # TimeoutError, as does every request waiting on it.
        replies = await future
        error: RedisError | None = None
        for reply in replies:
            # An error reply, parsed into redis-py's class for it.
            if isinstance(reply, RedisError):
                error = error or reply
                if isinstance(reply, _WRONG_SERVER):
                    pipe.fail(RedisConnectionError("dropped: the server cannot serve this"))
        if error is not None:
            raise error
        return exec_replies(replies[-1]) if atomic else replies

    async def call(self, *command: Any) -> Any:
        """One command; its reply."""
        return (await self.run((command,)))[0]

    async def transaction(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` between ``MULTI`` and ``EXEC``, in one write (see
        ``Commands.transaction``)."""
        return await self.run(commands, atomic=True)

    async def script(self, call: ScriptCall) -> Any:
        """Run a script by its SHA, falling back to ``EVAL`` (see ``Commands.script``)."""
        script, keys, args = call
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.text, len(keys), *keys, *args)

    def disconnect(self) -> None:
        """Drop the connection (requests waiting on it fail); the next request
        reconnects."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.lost is None:
            _abort(pipe, RedisConnectionError("disconnected"))

    def close(self) -> None:
        """Drop the connection for good: later requests raise ``ConnectionError``."""
        self._closed = True
        self.disconnect()


def _abort(pipe: _Pipe, exc: BaseException) -> None:
    """``pipe.fail(exc)``, also when its loop is closed already (then the socket closes
    when the transport is collected)."""
    try:
        pipe.fail(exc)
    except RuntimeError:  # "Event loop is closed": nothing can be scheduled on it
        pipe.lost = exc



class Listener(Protocol):
    """What ``AsyncSubscriber`` hands messages to: called on the loop, never blocking."""

    def message(self, channel: bytes, data: bytes) -> None:
        """A message published on one of the listener's channels."""
        ...

    def lost(self, exc: BaseException) -> None:
        """The subscriber connection was lost: messages may have been missed."""
        ...


class _Subscribed(asyncio.Protocol):
    """A connection in subscriber mode: dispatches messages and confirmations."""

    def __init__(self, owner: AsyncSubscriber, reader: Any, transport: asyncio.Transport,
                 streams: object) -> None:
        self.owner = owner
        self.reader = reader
        self.transport = transport
        self._streams = streams  # see ``_Pipe``
        self.lost_with: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is _MORE:
                return
            self.owner._dispatch(self, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, RedisConnectionError(
            f"Connection closed: {exc}" if exc else "Connection closed by server."))


class AsyncSubscriber:
    """One pub/sub connection per event loop, shared by every subscription of its owner
    (a result backend): ``subscribe(listener, channels)`` returns once Redis confirmed
    every channel, then the listener gets each message published on them, in the order
    Redis sent them; ``unsubscribe`` stops that (and ``UNSUBSCRIBE``s a channel nobody
    listens to any more). If the connection is lost every listener is told
    (``Listener.lost``) and the next ``subscribe`` reconnects. Options come from
    ``pool`` as for ``AsyncCommands``.
    """

    def __init__(self, pool: redis.asyncio.ConnectionPool) -> None:
        self._commands = AsyncCommands(pool)  # only for its connect
        self.socket_timeout = self._commands.socket_timeout
        self._conn: _Subscribed | None = None
        self._connecting: asyncio.Future[_Subscribed] | None = None
        self._listeners: dict[bytes, set[Listener]] = {}
        self._confirming: dict[bytes, collections.deque[asyncio.Future[None]]] = {}

    async def _connected(self) -> _Subscribed:
        conn = self._conn
        if conn is not None and conn.lost_with is None:
            return conn
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.get_running_loop().create_task(
                self._connect())
            connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(connecting)

    def _connect_done(self, task: asyncio.Future[_Subscribed]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()
        elif not task.cancelled():
            task.exception()  # retrieved: the waiters raise it

    async def _connect(self) -> _Subscribed:
        pipe = await self._commands._connect()
        conn = _Subscribed(self, pipe.reader, pipe.transport, pipe._streams)
        pipe.transport.set_protocol(conn)
        return conn

    async def subscribe(self, listener: Listener, channels: Sequence[bytes]) -> None:
        """Listen to ``channels``; return once Redis confirmed them all.

        Raises:
            redis-py's ``ConnectionError``/``TimeoutError``: the connection failed, or
                no confirmation came within ``socket_timeout``.
        """
        conn = await self._connected()
        loop = asyncio.get_running_loop()
        waiting = []
        for channel in channels:
            self._listeners.setdefault(channel, set()).add(listener)
            confirmed: asyncio.Future[None] = loop.create_future()
            self._confirming.setdefault(channel, collections.deque()).append(confirmed)
            waiting.append(confirmed)
        command: tuple[Any, ...] = ("SUBSCRIBE", *channels)
        conn.transport.write(pack_command(command))
        try:
            async with asyncio.timeout(self.socket_timeout):
                await asyncio.gather(*waiting)
        except TimeoutError as exc:
            raise RedisTimeoutError("no SUBSCRIBE confirmation in time") from exc

    def unsubscribe(self, listener: Listener, channels: Sequence[bytes]) -> None:
        """Stop handing ``channels``' messages to ``listener`` (no reply to wait for)."""
        idle = []
        for channel in channels:
            listeners = self._listeners.get(channel)
            if listeners is None:
                continue
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]
                idle.append(channel)
        conn = self._conn
        if idle and conn is not None and conn.lost_with is None:
            command: tuple[Any, ...] = ("UNSUBSCRIBE", *idle)
            with contextlib.suppress(RuntimeError):  # a closed loop: the socket is gone
                conn.transport.write(pack_command(command))

    def _dispatch(self, conn: _Subscribed, reply: Any) -> None:
        if isinstance(reply, RedisError) or not isinstance(reply, list) or len(reply) < 3:
            self._lost(conn, InvalidResponse(f"unexpected reply to a subscriber: {reply!r}"))
            return
        kind, channel, data = reply[0], reply[1], reply[2]
        if kind == b"message":
            for listener in list(self._listeners.get(channel, ())):
                listener.message(channel, data)
        elif kind == b"subscribe":
            confirming = self._confirming.get(channel)
            if confirming:
                confirmed = confirming.popleft()
                if not confirming:
                    del self._confirming[channel]
                if not confirmed.done():  # its subscribe was cancelled
                    confirmed.set_result(None)
        # "unsubscribe" confirmations need no answer.

    def _lost(self, conn: _Subscribed, exc: BaseException) -> None:
        if conn.lost_with is not None:
            return
        conn.lost_with = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed
            conn.transport.abort()
        if self._conn is conn:
            self._conn = None
        confirming, self._confirming = self._confirming, {}
        for futures in confirming.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        listeners, self._listeners = self._listeners, {}
        for listener in {item for group in listeners.values() for item in group}:
            listener.lost(exc)

    def close(self) -> None:
        """Drop the connection; listeners are told it was lost."""
        conn = self._conn
        if conn is not None:
            self._lost(conn, RedisConnectionError("the subscriber was closed"))
        self._commands.close()
