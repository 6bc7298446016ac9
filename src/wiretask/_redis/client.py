"""The lean Redis client of the hot paths, and the identity of a Redis database.

``Commands`` sends the hot-path commands (receiving, settling, publishing, storing and
reading a result) on redis-py connections it keeps itself, without ``redis.Redis``:
redis-py 8's client and pool spend more CPU per command (events, metrics, retry
wrappers, pool bookkeeping; about 45 us) than a loopback round trip costs. The Redis
transport and the Redis result backend both use it.

``Target`` says which database a pool's connections reach, as whom: a broker and a
result backend with equal targets can write each other's keys in one script (the
worker's fused store-and-ack path), without either importing the other.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import redis
from redis.exceptions import (
    InvalidResponse,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from wiretask._redis.scripts import ScriptCall

_pack: Callable[[tuple[Any, ...]], bytes] | None
_Reader: Any
#: What the reader returns while a reply is incomplete (False is a RESP3 value).
_MORE = object()
try:  # hiredis (the ``redis`` extra) packs and parses in C
    from hiredis import Reader as _HiredisReader
    from hiredis import pack_command as _hiredis_pack

    _HiredisReader(notEnoughData=_MORE)  # hiredis >= 2.1
    _pack, _Reader = _hiredis_pack, _HiredisReader
except (ImportError, TypeError):  # pragma: no cover - redis-py's packer and parser then
    _pack = _Reader = None

__all__ = ["Commands", "Pieces", "Target", "drop_wrong_server", "exec_replies", "target_of"]

#: Error replies after which a connection is dropped: its server is a replica (it
#: refuses writes, or reads while its primary is away), which after a failover is the old
#: primary; a new connection to the URL's host reaches whatever serves it now.
_WRONG_SERVER = (ReadOnlyError, MasterDownError)


def drop_wrong_server(pool: redis.ConnectionPool, exc: BaseException) -> None:
    """What ``Commands`` does with its own connection, for redis-py's pooled ones: if
    ``exc`` is a wrong-server reply (``READONLY``, ``MASTERDOWN``), disconnect the idle
    connections of ``pool``, so that the retry reconnects, through the name in the URL,
    to whatever serves it now. The one that got the reply is among them: redis-py puts a
    connection back in its pool before the error reaches the caller. Connections another
    thread is using are left alone; each is dropped when it gets such a reply itself."""
    if isinstance(exc, _WRONG_SERVER):
        pool.disconnect(inuse_connections=False)


@attrs.frozen
class Target:
    """The Redis database that connections of a pool reach, and as whom: same class
    (TCP, TLS or Unix socket), host, port or path, database number and credentials."""

    connection_class: type[Any]
    host: str | None
    port: int | None
    path: str | None
    db: int
    username: str | None
    password: str | None = attrs.field(repr=False)

    @classmethod
    def of(cls, pool: redis.ConnectionPool) -> Target:
        """The target of ``pool``'s connections."""
        kwargs = pool.connection_kwargs
        return cls(
            connection_class=pool.connection_class, host=kwargs.get("host"),
            port=kwargs.get("port"), path=kwargs.get("path"), db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"), password=kwargs.get("password"),
        )


def target_of(value: object) -> Target | None:
    """The ``Target`` that a Redis transport or result backend exposes as its ``_redis``
    attribute; ``None`` for anything else."""
    target = getattr(value, "_redis", None)
    return target if isinstance(target, Target) else None


class _Link:
    """One connection of a ``Commands``, with the reply reader, the receive buffer and
    the readability poller of its current socket."""

    __slots__ = ("buffer", "connection", "poller", "reader", "sock")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.sock: Any = None
        self.reader: Any = None
        self.poller: Any = None
        self.buffer = bytearray(65536)


def _kernel_timeouts(sock: Any) -> None:
    """Hand a plain (TCP or Unix) socket's timeout to the kernel: ``SO_RCVTIMEO`` and
    ``SO_SNDTIMEO`` with redis-py's ``socket_timeout``, and the socket made blocking.

    Why: a Python socket with a timeout polls before every ``sendall`` and every
    ``recv_into`` (CPython's ``sock_call``), two extra system calls per round trip, about
    6 us of CPU of a publish here (bench/README.md, "Where wiretask's time goes"). With
    the kernel holding the timeout a round trip is one ``send`` and one ``recv``, and a
    request still fails after ``socket_timeout`` without a reply: the call returns
    ``EAGAIN`` (``BlockingIOError``), which ``_round_trip`` reports as the timeout it is.
    TLS sockets keep Python's timeout (the TLS layer must see the socket's real mode),
    and so does a socket without a timeout (blocking already) or on a system without
    these options."""
    if isinstance(sock, ssl.SSLSocket):
        return
    timeout = sock.gettimeout()
    if not timeout or not hasattr(socket, "SO_RCVTIMEO"):
        return
    seconds = int(timeout)
    # ``struct timeval``: a C long of seconds and one of microseconds (at least 1 us:
    # zero would mean "no timeout").
    interval = struct.pack("@ll", seconds, max(1, int((timeout - seconds) * 1e6)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
    except OSError:  # pragma: no cover - a platform that refuses them: Python's timeout
        return
    sock.settimeout(None)


def _stale(link: _Link) -> bool:
    """Whether the link's idle socket has something to read: the server closed it (EOF),
    or sent what nobody asked for. Either way it must not carry the next command."""
    sock = link.sock
    pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but not read yet
    if pending is not None and pending():
        return True
    if _poll is not None:
        return bool(link.poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])  # pragma: no cover - no poll()


_poll = getattr(select, "poll", None)


class Commands:
    """Commands and scripts on connections of this object's own, built with the options
    of a redis-py pool (so URL, TLS, timeouts and credentials are the pool's).

    redis-py connects each one (handshake, AUTH, SELECT, TLS); after that, requests are
    packed by hiredis and replies read by a hiredis reader straight off the socket, so a
    round trip costs a ``sendall`` and a ``recv_into`` and little Python around them.
    One connection per thread that is inside a command at the same moment: idle ones
    wait in a list (``list.pop``/``append`` are atomic, no lock). Before a command, an
    idle connection the server closed meanwhile (a restart, an idle timeout) is noticed,
    as redis-py's pool does on checkout, and reconnected rather than failing a command
    that could not have run. A connection that saw anything but a Redis error reply (a
    socket error, a timeout, an exception raised into the thread between a request and
    its reply) is disconnected before it goes back, so it can never hand one command
    another's reply; so is one whose server answered that it cannot serve writes or
    reads now (``READONLY``, ``MASTERDOWN``: a replica, e.g. the old primary after a
    failover), so that the retry reconnects, through the name in the URL, to whatever
    serves it now. Errors are redis-py's exceptions: the caller translates them
    (``wiretask._redis.errors.REDIS_ERRORS``).
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[_Link] = []
        self._every: list[_Link] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _take(self) -> _Link:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            with self._lock:
                self._idle, self._every, self._pid = [], [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            link = _Link(self._pool.connection_class(**self._pool.connection_kwargs))
            with self._lock:
                self._every.append(link)
            return link

    def run(self, commands: Sequence[tuple[Any, ...]], *, atomic: bool = False) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order. An error
        reply is raised (the first one, as redis-py's exception for it) after every
        reply was read. ``atomic``: as ``transaction`` (the publish hot path asks for
        its transaction here, one call less per publish)."""
        if atomic:
            commands = [("MULTI",), *commands, ("EXEC",)]
        link = self._take()
        connection = link.connection
        error: RedisError | None = None
        try:
            sock = connection._sock
            if sock is not None and sock is link.sock and _stale(link):
                connection.disconnect()
                sock = None
            if sock is None:
                connection.connect()
                sock = connection._sock
            if _pack is None:  # pragma: no cover - without hiredis: redis-py reads
                replies = self._run_slowly(connection, commands)
            else:
                if sock is not link.sock:  # a new socket: a new reader and poller
                    _kernel_timeouts(sock)
                    link.sock = sock
                    link.reader = None
                    if _poll is not None:
                        link.poller = _poll()
                        link.poller.register(sock, select.POLLIN)
                if link.reader is None:
                    link.reader = _Reader(protocolError=InvalidResponse,
                                          replyError=connection._parser.parse_error,
                                          notEnoughData=_MORE)
                replies = _round_trip(link, _request(commands), len(commands))
            for reply in replies:
                # An error reply, parsed into redis-py's class for it: a ResponseError,
                # or another (LOADING is a BusyLoadingError, a ConnectionError).
                if isinstance(reply, RedisError):
                    error = error or reply
                    if isinstance(reply, _WRONG_SERVER):
                        connection.disconnect()
                        link.sock = None
        except BaseException:
            connection.disconnect()
            link.sock = None
            raise
        finally:
            self._idle.append(link)
        if error is not None:
            raise error
        return exec_replies(replies[-1]) if atomic else replies

    @staticmethod
    def _run_slowly(
        connection: Any, commands: Sequence[tuple[Any, ...]]
    ) -> list[Any]:  # pragma: no cover - only without hiredis
        commands = [tuple(b"".join(a) if isinstance(a, Pieces) else a for a in c)
                    for c in commands]
        connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    def call(self, *command: Any) -> Any:
        """One command; its reply."""
        return self.run((command,))[0]

    def transaction(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` between ``MULTI`` and ``EXEC``, in one write: Redis runs all of
        them at once, with nothing in between, or none (a command refused while queueing
        aborts the whole transaction, and a connection lost before ``EXEC`` discards
        it). Returns their replies; raises the first error reply, whether it came while
        queueing or from a command that ran."""
        return self.run(commands, atomic=True)

    def script(self, call: ScriptCall) -> Any:
        """Run a script with the KEYS and ARGV its builder laid out (``EVALSHA``;
        ``EVAL`` when the server does not know the script yet, which also caches it). A
        script that was not found did not run, so sending it again cannot apply anything
        twice."""
        script, keys, args = call
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.call("EVAL", script.text, len(keys), *keys, *args)

    def disconnect(self) -> None:
        """Close every connection (idle or not); each reconnects on its next use."""
        with self._lock:
            every = list(self._every)
        for link in every:
            link.connection.disconnect()


def exec_replies(replies: Any) -> list[Any]:
    """The replies of a transaction's commands, from its ``EXEC`` reply (sync and
    asyncio clients): the first error reply of a command that ran is raised."""
    if not isinstance(replies, list):  # pragma: no cover - nil only after a WATCH
        raise ResponseError(f"EXEC: transaction not run ({replies!r})")
    for reply in replies:
        if isinstance(reply, RedisError):
            raise reply
    return replies


class Pieces(tuple[bytes | memoryview, ...]):
    """One argument of a command given in parts (a large value and what frames it),
    written to the socket as they are, never joined: ``Commands.run`` sends a request
    holding one as a vector of buffers, so a large message is not copied on its way
    to Redis (the worker's memory bound)."""

    __slots__ = ()


def _request(commands: Sequence[tuple[Any, ...]]) -> bytes | list[bytes | memoryview]:
    """The request for ``commands``: packed by hiredis into one bytes object, or, when
    an argument is ``Pieces``, the buffers to write one after the other."""
    pack = _pack
    assert pack is not None  # run() calls this only where hiredis packs
    try:
        # Every publish and every worker round trip comes here: hiredis packs the whole
        # request first, and only a request it refuses is scanned for ``Pieces`` (a
        # tuple argument, which it refuses with TypeError) instead of every request
        # (a generator over every argument: ~0.8 us of a publish).
        return b"".join(map(pack, commands))  # map: no Python frame per request
    except TypeError:
        if not any(isinstance(arg, Pieces) for command in commands for arg in command):
            raise
    parts: list[bytes | memoryview] = []
    for command in commands:
        if not any(isinstance(arg, Pieces) for arg in command):
            parts.append(pack(command))
            continue
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, Pieces):
                parts += [b"$%d\r\n" % sum(memoryview(p).nbytes for p in arg), *arg, b"\r\n"]
                continue
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return parts


def _send(sock: Any, request: bytes | list[bytes | memoryview]) -> None:
    """Write ``request``: one buffer, or several without joining them (``sendmsg``;
    joined where the socket has none, as TLS sockets do not)."""
    if isinstance(request, bytes):
        sock.sendall(request)
        return
    if isinstance(sock, ssl.SSLSocket) or not hasattr(sock, "sendmsg"):
        sock.sendall(b"".join(request))
        return
    views = [memoryview(part).cast("B") for part in request]
    while views:
        sent = sock.sendmsg(views[:_IOV_MAX])
        while sent:
            if sent >= views[0].nbytes:
                sent -= views.pop(0).nbytes
            else:
                views[0], sent = views[0][sent:], 0


#: The most buffers one ``sendmsg`` takes (POSIX's minimum for IOV_MAX).
_IOV_MAX = 16

#: A reply read in more than this many bytes leaves the reader with a buffer as big
#: (hiredis keeps it until the next reply): it gets a fresh reader instead.
_BIG_REPLY = 1 << 20


def _round_trip(
    link: _Link, request: bytes | list[bytes | memoryview], count: int
) -> list[Any]:
    """Write ``request`` and read ``count`` replies (error replies as exceptions)."""
    sock, reader, buffer = link.sock, link.reader, link.buffer
    fed = 0
    try:
        if type(request) is bytes:  # the common case, without a call to ``_send``
            sock.sendall(request)
        else:
            _send(sock, request)
        replies: list[Any] = []
        for _ in range(count):
            reply = reader.gets()
            while reply is _MORE:
                received = sock.recv_into(buffer)
                if not received:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(buffer, 0, received)
                fed += received
                reply = reader.gets()
            replies.append(reply)
    except (TimeoutError, BlockingIOError) as exc:
        # socket.timeout, or the kernel's timeout: EAGAIN from a blocking socket with
        # SO_RCVTIMEO/SO_SNDTIMEO (``_kernel_timeouts``)
        raise redis.TimeoutError(f"Timeout talking to Redis: {exc}") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
    if fed > _BIG_REPLY:
        # The worker's memory bound (a large message): free the copy of the reply the
        # reader still holds now, not at the next command on this connection (the next
        # command makes a new reader).
        link.reader = None
    return replies
