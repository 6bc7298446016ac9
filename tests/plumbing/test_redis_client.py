"""``wiretask._redis.client.Commands``: socket timeouts held by the kernel.

A plain socket's ``socket_timeout`` is handed to the kernel (``SO_RCVTIMEO`` and
``SO_SNDTIMEO``, the socket blocking) so that a round trip is one ``send`` and one
``recv`` without Python's poll before each; a server that stops answering must still
fail the request after ``socket_timeout``, as the timeout it is, and the connection is
replaced, not reused.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import TYPE_CHECKING

import pytest
import redis

from wiretask._redis.client import Commands

if TYPE_CHECKING:
    from conftest import RedisServer  # tests/conftest.py


def _receive_timeout(sock: socket.socket) -> float:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll"))
    seconds, micros = struct.unpack("@ll", raw)
    return float(seconds + micros / 1e6)


def test_the_kernel_holds_the_timeout_of_a_plain_socket(redis_url: str) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, socket_timeout=2.5)
    commands = Commands(pool)
    try:
        assert commands.call("PING") in (b"PONG", "PONG", True)
        (link,) = commands._idle
        assert link.sock.gettimeout() is None  # blocking: no poll before each call
        assert _receive_timeout(link.sock) == pytest.approx(2.5, abs=0.01)
    finally:
        commands.disconnect()
        pool.disconnect()


def test_a_silent_server_is_a_timeout_after_socket_timeout(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}/0"
    pool = redis.ConnectionPool.from_url(url, socket_timeout=0.3)
    commands = Commands(pool)
    admin = redis.Redis.from_url(url)
    try:
        commands.call("PING")  # connected: the kernel holds the timeout from here on
        (link,) = commands._idle
        first = link.sock
        admin.client_pause(1200, all=True)  # no reply for 1.2 s
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            commands.call("PING")
        took = time.monotonic() - started
        assert 0.25 <= took < 1.0
        time.sleep(max(0.0, 1.3 - took))  # the pause is over
        # The connection that timed out is not reused: its late reply is never read as
        # the next command's.
        assert commands.call("SET", "k", "v") in (b"OK", "OK", True)
        assert commands.call("GET", "k") == b"v"
        assert commands._idle[0].sock is not first
    finally:
        commands.disconnect()
        pool.disconnect()
        admin.close()
