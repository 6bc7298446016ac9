"""After a failover, redis-py's pooled connections reconnect as ``Commands``' own do.

A failover moves the URL's name to another server; connections opened before it still
reach the old primary, now a replica, which answers ``READONLY`` (writes) or
``MASTERDOWN`` (anything, while it has no primary and ``replica-serve-stale-data`` is
off). ``Commands`` drops such a connection (``test_redis_errors``); the paths that use
redis-py's pool (``bind_queue``, the restore transaction, ``restore_visible``'s lock,
the result backend's WATCH path and ``forget``) go through
``wiretask._redis.errors.Boundaries``, which drops the pool's idle connections after
such a reply. Here a TCP proxy plays the name: new connections go to whichever server it
points at. The first call after the failover fails with ``ConnectionLost`` (its
connection was opened before); the retry must reconnect and succeed on the new primary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest
import redis
from redis import exceptions as rx

from conftest import RedisServer, free_port, missing_broker, redis_binary  # tests/conftest.py
from tcp_proxy import TcpProxy
from wiretask.errors import ConnectionLost, TransportError
from wiretask.protocol.frame import Frame, Route
from wiretask.protocol.states import make_meta
from wiretask.results.redis import RedisBackend
from wiretask.transports.redis import RedisTransport


class SwitchingProxy(TcpProxy):
    """The name both servers answer to: new clients go to the port ``target`` holds
    when they arrive (what a DNS name or a virtual IP does in a failover); open
    connections stay with the server they reached."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Pair(NamedTuple):
    old: RedisServer
    new: RedisServer


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    binary = redis_binary()
    if binary is None:
        missing_broker("redis-server")
    assert binary is not None
    servers = Pair(RedisServer(binary), RedisServer(binary))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.cleanup()


class Failover(NamedTuple):
    proxy: SwitchingProxy
    old: redis.Redis
    new: redis.Redis

    def happen(self, kind: str, new_port: int) -> None:
        """The old primary becomes a replica (of a primary that is away), the name moves."""
        if kind == "MASTERDOWN":
            self.old.config_set("replica-serve-stale-data", "no")
        self.old.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        self.proxy.target = new_port


@pytest.fixture
def failover(pair: Pair) -> Iterator[Failover]:
    old, new = (redis.Redis(port=server.port) for server in pair)
    proxy = SwitchingProxy(pair.old.port)
    try:
        yield Failover(proxy, old, new)
    finally:
        proxy.close()
        old.execute_command("REPLICAOF", "NO", "ONE")
        old.config_set("replica-serve-stale-data", "yes")
        for client in (old, new):
            client.flushall()
            client.close()


def frame() -> Frame:
    return Frame(body=b"[[], {}, {}]", content_type="application/json",
                 content_encoding="utf-8", headers={"id": "t1", "task": "t"})


class Case(NamedTuple):
    """``before`` runs against the old primary (and opens a pooled connection); ``call``
    is the call that fails once after the failover and must then succeed; ``landed``
    checks its effect on the new primary."""

    before: Callable[[], None]
    call: Callable[[], object]
    landed: Callable[[redis.Redis], bool]
    close: Callable[[], None]


def bind_queue(url: str) -> Case:
    transport = RedisTransport(url)
    return Case(
        before=lambda: transport.bind_queue("q", "ex", "rk"),
        call=lambda: transport.bind_queue("q", "ex", "rk"),
        landed=lambda new: new.scard("_kombu.binding.ex") == 1,
        close=transport.close,
    )


def requeue(url: str) -> Case:
    """``reject(requeue=True)``: the restore transaction (WATCH, MULTI/EXEC) on the pool."""
    transport = RedisTransport(url)
    held = []

    def before() -> None:
        transport.publish(frame(), Route("q"))
        delivery = transport.receive(["q"], timeout=1)
        assert delivery is not None
        held.append(delivery)
        transport.size("q")  # a pooled connection to the old primary

    def landed(new: redis.Redis) -> bool:
        with pytest.raises(TransportError, match="already requeued"):
            held[0].ack()
        return True

    return Case(before, lambda: held[0].reject(requeue=True), landed, transport.close)


def restore_visible(url: str) -> Case:
    """``restore_visible``: the ``unacked_mutex`` lock (SET NX) on the pool."""
    transport = RedisTransport(url)
    return Case(
        before=transport.restore_visible,
        call=transport.restore_visible,
        landed=lambda new: new.exists("unacked_mutex") == 0,  # taken and released there
        close=transport.close,
    )


def backend_store(url: str) -> Case:
    """A task's later states: the WATCH transaction (the first went by script)."""
    backend = RedisBackend(url)

    def before() -> None:
        backend.store("t1", make_meta("t1", "STARTED", None))
        backend.store("t1", make_meta("t1", "PROGRESS", None))  # the pool's connection

    return Case(
        before=before,
        call=lambda: backend.store("t1", make_meta("t1", "SUCCESS", 1)),
        landed=lambda new: new.exists(backend.key_for("t1")) == 1,
        close=backend.close,
    )


def backend_forget(url: str) -> Case:
    backend = RedisBackend(url)
    return Case(
        before=lambda: backend.forget("t1"),
        call=lambda: backend.forget("t1"),
        landed=lambda new: True,  # a DEL that ran there: nothing to see but the success
        close=backend.close,
    )


def peek(url: str) -> Case:
    """Inspection: reads on the pool."""
    transport = RedisTransport(url)
    return Case(
        before=lambda: transport.peek("q"),
        call=lambda: transport.peek("q"),
        landed=lambda new: True,  # a read answered there: nothing to see but the success
        close=transport.close,
    )


#: Each case with the replies its call gets: a replica refuses a write as READONLY even
#: while its primary is away, and a read only then (MASTERDOWN, with
#: ``replica-serve-stale-data`` off). The restore transaction reads, then writes.
CASES: dict[str, tuple[Callable[[str], Case], tuple[str, ...]]] = {
    "bind_queue": (bind_queue, ("READONLY",)),
    "requeue": (requeue, ("READONLY", "MASTERDOWN")),
    "restore_visible": (restore_visible, ("READONLY",)),
    "backend_store": (backend_store, ("READONLY",)),
    "backend_forget": (backend_forget, ("READONLY",)),
    "peek": (peek, ("MASTERDOWN",)),
}
PARAMS = [pytest.param(name, kind, id=f"{name}-{kind}")
          for name, (_, kinds) in CASES.items() for kind in kinds]
CAUSE = {"READONLY": rx.ReadOnlyError, "MASTERDOWN": rx.MasterDownError}


@pytest.mark.parametrize(("name", "kind"), PARAMS)
def test_a_retry_after_a_failover_reaches_the_new_primary(
        failover: Failover, pair: Pair, name: str, kind: str) -> None:
    case = CASES[name][0](failover.proxy.url)
    try:
        case.before()
        failover.happen(kind, pair.new.port)
        with pytest.raises(ConnectionLost) as info:
            case.call()
        assert isinstance(info.value.__cause__, CAUSE[kind]), repr(info.value.__cause__)
        case.call()  # reconnects, through the proxy, to the new primary
        assert case.landed(failover.new)
    finally:
        case.close()
