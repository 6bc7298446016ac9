"""``REDIS_ERRORS``, the one table the Redis transport, the Redis result backend and the
delayed-message scheduler translate redis-py's exceptions with. Each row is tested
through the public API of every module that uses it: against a real ``redis-server``
made to fail that way (a password, an ACL, a server loading its data, a replica, a full
memory, a full client table, a closed port, ``DEBUG SLEEP``, a key of the wrong type),
and, for every row, with the driver's exception raised under each module at the client
boundary (the only way for the rows no single server produces: ``AuthorizationError``,
redis-py's client-side errors, a bare ``OSError``).

A recoverable row is retried by the publish retry driver (``call_with_retry``) and
succeeds once the cause is gone; the scheduler logs it and waits; a row that is not
recoverable is raised at once by all of them. Every message names the action and the
URL, never the password.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
import redis
from redis import exceptions as rx

from conftest import RedisServer, free_port, missing_broker, redis_binary  # tests/conftest.py
from wiretask._errormap import Row
from wiretask._redis.client import Commands
from wiretask._redis.errors import REDIS_ERRORS
from wiretask.errors import ConnectionLost, TransportError
from wiretask.protocol.frame import Frame, Route
from wiretask.protocol.states import make_meta
from wiretask.results.redis import RedisBackend
from wiretask.retry import RetryPolicy, call_with_retry
from wiretask.transports.redis import RedisTransport, run_scheduler

SECRET = "s3cret-pw"


def frame() -> Frame:
    return Frame(body=b"[[], {}, {}]", content_type="application/json",
                 content_encoding="utf-8", headers={"id": "t1", "task": "t"})


def row(driver: type[BaseException]) -> Row:
    """The row written for ``driver``."""
    (found,) = [r for r in REDIS_ERRORS.rows if r.driver is driver]
    return found


def row_of(exc: BaseException) -> Row:
    """The row that translates ``exc``."""
    found = REDIS_ERRORS.row_for(exc)
    assert found is not None, repr(exc)
    return found


def binary() -> str:
    found = redis_binary()
    if found is None:
        missing_broker("redis-server")
    assert found is not None
    return found


# -- the table itself -------------------------------------------------------------------

#: One sample per row, in the table's order.
SAMPLES: list[BaseException] = [
    rx.AuthenticationError(f"invalid username-password pair ({SECRET})"),
    rx.AuthorizationError("user is not allowed"),
    rx.NoPermissionError("this user has no permissions to run the 'set' command"),
    rx.BusyLoadingError("Redis is loading the dataset in memory"),
    rx.ReadOnlyError("You can't write against a read only replica."),
    rx.MasterDownError("Link with MASTER is down"),
    rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    rx.MaxClientsReachedError("max number of clients reached"),
    rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
    rx.TimeoutError("Timeout reading from socket"),
    rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    rx.DataError("Invalid input of type: 'dict'"),
    ConnectionResetError(104, "Connection reset by peer"),
]


def test_every_row_has_a_sample_and_a_reason() -> None:
    assert [row_of(exc) for exc in SAMPLES] == list(REDIS_ERRORS.rows)
    assert all(r.why for r in REDIS_ERRORS.rows)


def test_what_is_recoverable() -> None:
    recoverable = {type(exc).__name__ for exc in SAMPLES
                   if row_of(exc).error is ConnectionLost}
    assert recoverable == {
        "BusyLoadingError", "ReadOnlyError", "MasterDownError", "OutOfMemoryError",
        "MaxClientsReachedError", "ConnectionError", "TimeoutError", "ConnectionResetError",
    }


@pytest.mark.parametrize("exc", SAMPLES, ids=[type(e).__name__ for e in SAMPLES])
def test_each_row_translates_its_errors(exc: BaseException) -> None:
    url = "redis://:**@127.0.0.1:6379/0"
    translated = REDIS_ERRORS.translate(exc, "publish", url=url, secret=SECRET)
    assert translated is not None
    assert type(translated) is row_of(exc).error
    assert str(translated).startswith(f"Redis publish failed: {type(exc).__name__}: ")
    assert str(translated).endswith(f"[{url}]")
    assert SECRET not in str(translated)


def test_unrelated_exceptions_are_not_translated() -> None:
    assert REDIS_ERRORS.translate(KeyError("x"), "receive", url=None) is None


# -- the modules that use it ------------------------------------------------------------


class User:
    """A module that talks to Redis, driven by one public call."""

    action = ""
    #: Every action the call may fail in (its messages name the one that failed).
    actions: tuple[str, ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self) -> None:
        raise NotImplementedError

    def recover(self) -> None:
        """What the publish retry calls before trying again (backends reconnect by
        themselves)."""

    def close(self) -> None:
        """Release what the user holds."""


class Publisher(User):
    action = "publish"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.transport = RedisTransport(url)

    def call(self) -> None:
        self.transport.publish(frame(), Route("q"))

    def recover(self) -> None:
        self.transport.connect()

    def close(self) -> None:
        self.transport.close()


class Receiver(Publisher):
    action = "receive"
    #: A receive starts with the restore scan (``RedisTransport.restore_visible``).
    actions = ("restore_visible", "receive")

    def call(self) -> None:
        self.transport.ack_many(self.transport.receive_many(["q"], limit=1, timeout=0))


class Storer(User):
    action = "store"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.backend = RedisBackend(url)

    def call(self) -> None:
        self.backend.store("t1", make_meta("t1", "PROGRESS", 1))

    def close(self) -> None:
        self.backend.close()


class Getter(Storer):
    action = "get"

    def call(self) -> None:
        self.backend.get("t1")


class Subscriber(Storer):
    """``AsyncResult.get()``'s first step."""

    action = "subscribe"

    def call(self) -> None:
        # A subscription that cannot connect says so from next(), at its timeout.
        subscription = self.backend.subscribe("t1")
        try:
            subscription.next(0)
        finally:
            subscription.close()


class Scheduler(User):
    """``run_scheduler``: one round (its stop event is set), raising what it logged as
    waited out, so that the test sees it; what it raises itself it did not wait out."""

    action = "due"

    def call(self) -> None:
        stop = threading.Event()
        stop.set()
        handler = _Collect()
        seen = handler.records
        logger = logging.getLogger("wiretask.transports.redis")
        logger.addHandler(handler)
        try:
            run_scheduler(self.url, interval=0.01, stop_event=stop)
        finally:
            logger.removeHandler(handler)
        waited = [r.args[0] for r in seen if r.msg.startswith("scheduler:") and r.args]
        if waited:
            assert isinstance(waited[0], ConnectionLost)
            raise waited[0]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


USERS: dict[str, type[User]] = {"transport": Publisher, "transport.receive": Receiver,
                                "backend.store": Storer,
                                "backend.get": Getter, "backend.subscribe": Subscriber,
                                "scheduler": Scheduler}
POLICY = RetryPolicy(max_retries=3, interval_start=0.05, interval_step=0.05,
                     interval_max=0.1)


def check(error: BaseException, user: User, driver: type[BaseException], url: str) -> None:
    """``error`` is the row's translation of a ``driver`` exception, naming the action
    and the masked URL."""
    cause = error.__cause__
    assert isinstance(error, TransportError) and cause is not None
    assert REDIS_ERRORS.row_for(cause) is row(driver), repr(cause)
    assert type(error) is row(driver).error
    assert error.recoverable is (row(driver).error is ConnectionLost)
    assert any(f"Redis {action} failed: " in str(error)
               for action in user.actions or (user.action,)), str(error)
    assert f"127.0.0.1:{urlsplit(url).port}" in str(error)
    assert SECRET not in str(error) and SECRET not in (error.url or "")


def run_case(user: User, driver: type[BaseException], undo: Callable[[], None]) -> None:
    """Call ``user`` through the publish retry driver while ``driver``'s cause is in
    place: a recoverable row is retried, ``undo`` runs before the retry, and the call
    then succeeds; any other row is raised at once, after one attempt."""
    failures: list[BaseException] = []
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        user.call()

    def on_retry(exc: BaseException, number: int, delay: float) -> None:
        failures.append(exc)
        if number == 1:
            undo()

    if row(driver).error is ConnectionLost:
        call_with_retry(attempt, POLICY, recover=user.recover, on_retry=on_retry)
        assert attempts == 2
        check(failures[0], user, driver, user.url)
    else:
        with pytest.raises(TransportError) as info:
            call_with_retry(attempt, POLICY, recover=user.recover, on_retry=on_retry)
        assert attempts == 1 and not failures
        check(info.value, user, driver, user.url)
        undo()


# -- every row, raised under each module at the client boundary ---------------------------


@pytest.mark.parametrize("exc", SAMPLES, ids=[type(e).__name__ for e in SAMPLES])
@pytest.mark.parametrize("name", ["transport", "transport.receive", "backend.store",
                                  "backend.get", "scheduler"])
def test_each_row_through_each_module(
        monkeypatch: pytest.MonkeyPatch, redis_url: str, name: str, exc: BaseException
) -> None:
    url = redis_url.replace("redis://", f"redis://:{SECRET}@", 1)
    raising = [True]
    original = Commands.run

    def run(self: Commands, commands: Any, *, atomic: bool = False) -> list[Any]:
        if raising[0]:
            raise exc
        return original(self, commands, atomic=atomic)

    def undo() -> None:
        raising[0] = False

    monkeypatch.setattr(Commands, "run", run)
    user = USERS[name](url)
    try:
        run_case(user, row_of(exc).driver, undo)
    finally:
        user.close()


# -- the rows a real server produces --------------------------------------------------------


class Lab(NamedTuple):
    server: RedisServer
    admin: redis.Redis


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A private redis-server the tests reconfigure, with an admin user that a
    ``requirepass`` on the default user does not lock out."""
    server = RedisServer(binary(), args=["--enable-debug-command", "local"])
    server.start()
    redis.Redis(port=server.port).execute_command(
        "ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
    admin = redis.Redis(port=server.port, username="admin", password="admin-pw")
    try:
        yield Lab(server, admin)
    finally:
        admin.close()
        server.cleanup()


@pytest.fixture
def fresh(lab: Lab) -> Iterator[Lab]:
    yield lab
    admin = lab.admin
    admin.execute_command("REPLICAOF", "NO", "ONE")
    admin.config_set("requirepass", "")
    admin.config_set("maxmemory", "0")
    admin.config_set("maxclients", "10000")
    admin.config_set("replica-serve-stale-data", "yes")
    admin.execute_command("ACL", "DELUSER", "limited")
    admin.flushall()


def base(lab: Lab, user: str = "", password: str = SECRET) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{lab.server.port}/0"


def seed_due_message(url: str) -> None:
    """A delayed message due a moment from now, so that the scheduler has one to move
    (a read-only server refuses only scripts that write)."""
    with RedisTransport(url) as transport:
        transport.publish(frame(), Route("q"), not_before=datetime.now(UTC)
                          + timedelta(seconds=0.2))
    time.sleep(0.25)


class Prepared(NamedTuple):
    """A failure in place: the URL to use, how to end the failure, what to clean up."""

    url: str
    undo: Callable[[], None]
    cleanup: Callable[[], None] = lambda: None


Setup = Callable[[Lab, str], Prepared]


def wrong_password(lab: Lab, name: str) -> Prepared:
    lab.admin.config_set("requirepass", "the-right-one")
    return Prepared(base(lab), lambda: lab.admin.config_set("requirepass", ""))


def no_permission(lab: Lab, name: str) -> Prepared:
    lab.admin.execute_command("ACL", "SETUSER", "limited", "on", f">{SECRET}", "~*", "&*",
                              "+@all", "-@write", "-@scripting")
    return Prepared(base(lab, "limited"), lambda: lab.admin.execute_command(
        "ACL", "SETUSER", "limited", "+@all"))


def read_only(lab: Lab, name: str) -> Prepared:
    if name == "scheduler":
        seed_due_message(base(lab, password=""))
    lab.admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    return Prepared(base(lab), lambda: lab.admin.execute_command("REPLICAOF", "NO", "ONE"))


def master_down(lab: Lab, name: str) -> Prepared:
    lab.admin.config_set("replica-serve-stale-data", "no")
    lab.admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    return Prepared(base(lab), lambda: lab.admin.execute_command("REPLICAOF", "NO", "ONE"))


def out_of_memory(lab: Lab, name: str) -> Prepared:
    lab.admin.config_set("maxmemory", "1")
    return Prepared(base(lab), lambda: lab.admin.config_set("maxmemory", "0"))


def max_clients(lab: Lab, name: str) -> Prepared:
    lab.admin.ping()  # the admin keeps its connection
    lab.admin.config_set("maxclients", "1")
    return Prepared(base(lab), lambda: lab.admin.config_set("maxclients", "10000"))


def closed_port(lab: Lab, name: str) -> Prepared:
    server = RedisServer(lab.server.binary)  # not started: nothing listens on its port
    # The undo: a server comes up there.
    return Prepared(f"redis://:{SECRET}@127.0.0.1:{server.port}/0", server.start,
                    server.cleanup)


def sleeping(lab: Lab, name: str) -> Prepared:
    url = f"{base(lab)}?socket_timeout=0.3"
    sleeper = threading.Thread(target=lab.admin.execute_command,
                               args=("DEBUG", "SLEEP", "1.5"))
    sleeper.start()
    deadline = time.monotonic() + 5
    with socket.create_connection(("127.0.0.1", lab.server.port), timeout=0.05) as probe:
        while time.monotonic() < deadline:  # until the server stops answering
            try:
                probe.sendall(b"PING\r\n")
                probe.recv(64)
            except TimeoutError:
                break
            time.sleep(0.01)
    return Prepared(url, sleeper.join)


def wrong_type(lab: Lab, name: str) -> Prepared:
    key = {"transport": "q", "transport.receive": "q",
           "scheduler": "_wiretask.delayed"}.get(name, "celery-task-meta-t1")
    lab.admin.hset(key, "field", "value")
    return Prepared(base(lab), lambda: lab.admin.delete(key))


class Case(NamedTuple):
    setup: Setup
    driver: type[BaseException]
    users: tuple[str, ...]


EVERY = tuple(USERS)
CASES = [
    Case(wrong_password, rx.AuthenticationError, EVERY),
    # The scripts need @scripting, the rest @write.
    Case(no_permission, rx.NoPermissionError, ("transport", "transport.receive",
                                               "backend.store", "scheduler")),
    # Only writes are refused (POP on empty queues writes nothing).
    Case(read_only, rx.ReadOnlyError, ("transport", "backend.store", "scheduler")),
    # A write is refused as READONLY first (so is a receive's restore scan: a lock).
    Case(master_down, rx.MasterDownError, ("backend.store", "backend.get", "scheduler")),
    # Redis refuses a script at its first write only if that write may grow memory: DUE
    # and POP delete first, and then must run to the end.
    Case(out_of_memory, rx.OutOfMemoryError, ("transport", "backend.store")),
    Case(max_clients, rx.MaxClientsReachedError, EVERY),
    Case(closed_port, rx.ConnectionError, EVERY),
    Case(sleeping, rx.TimeoutError, EVERY),
    Case(wrong_type, rx.ResponseError, ("transport", "transport.receive", "backend.store",
                                        "backend.get", "backend.subscribe", "scheduler")),
]
REAL = [pytest.param(case, name, id=f"{case.setup.__name__}-{name}")
        for case in CASES for name in case.users]


def test_every_row_a_server_can_produce_is_produced() -> None:
    produced = {case.driver for case in CASES} | {rx.BusyLoadingError}
    unproduced = {r.driver for r in REDIS_ERRORS.rows} - produced
    # AuthorizationError: redis-py raises it only in its cluster client; RedisError:
    # client-side failures; OSError: what redis-py does not wrap. Injected above.
    assert unproduced == {rx.AuthorizationError, rx.RedisError, OSError}


@pytest.mark.parametrize(("case", "name"), REAL)
def test_each_real_failure_through_each_module(fresh: Lab, case: Case, name: str) -> None:
    prepared = case.setup(fresh, name)
    user = USERS[name](prepared.url)
    try:
        run_case(user, case.driver, prepared.undo)
    finally:
        user.close()
        prepared.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(USERS))
def test_a_server_loading_its_data_is_waited_out(name: str) -> None:
    """LOADING, for real: a restarted server reading a data set slowly (1 ms a key)."""
    server = RedisServer(binary(), args=["--key-load-delay", "1000",
                                         "--loading-process-events-interval-bytes", "1024"])
    server.start()
    try:
        client = redis.Redis(port=server.port)
        pipe = client.pipeline(transaction=False)
        for i in range(1500):
            pipe.set(f"filler:{i}", "x")
        pipe.execute()
        client.save()
        client.close()
        server.stop()
        server.start(ready=(b"-LOADING",))

        def loaded() -> None:
            deadline = time.monotonic() + 20
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                while time.monotonic() < deadline:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
                    time.sleep(0.05)
            raise AssertionError("the server never finished loading")

        user = USERS[name](f"redis://:{SECRET}@127.0.0.1:{server.port}/0")
        try:
            run_case(user, rx.BusyLoadingError, loaded)
        finally:
            user.close()
    finally:
        server.cleanup()


# -- the client drops a connection that reaches a replica -------------------------------


def test_commands_reconnect_after_readonly_and_masterdown(fresh: Lab) -> None:
    pool = redis.ConnectionPool.from_url(base(fresh, password=""))
    commands = Commands(pool)
    first = commands.call("CLIENT", "ID")
    fresh.admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        with pytest.raises(rx.ReadOnlyError):
            commands.call("SET", "k", "v")
        second = commands.call("CLIENT", "ID")  # reads still work, on a new connection
        assert second != first
        with pytest.raises(rx.ResponseError):
            commands.call("NO-SUCH-COMMAND")  # another refusal keeps the connection
        assert commands.call("CLIENT", "ID") == second
        fresh.admin.config_set("replica-serve-stale-data", "no")
        with pytest.raises(rx.MasterDownError):
            commands.call("GET", "k")
    finally:
        fresh.admin.execute_command("REPLICAOF", "NO", "ONE")
    third = commands.call("CLIENT", "ID")
    assert third != second
    assert commands.call("SET", "k", "v") == b"OK"
    commands.disconnect()
    pool.disconnect()
