"""Shared fixtures: hypothesis profiles and real broker servers.

Brokers are real servers on 127.0.0.1. ``./scripts/test`` starts Redis and exports
``WIRETASK_TEST_REDIS_URL``; without it (a developer running pytest directly) the fixture
starts a private ``redis-server`` on a free port if the binary is on PATH. Under
``CI=true`` a missing broker is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

IN_CI = os.environ.get("CI") == "true"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def missing_broker(what: str) -> NoReturn:
    """Fail under CI, skip on a developer machine."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")


class RedisServer:
    """A redis-server process on 127.0.0.1 that a test may stop and start again."""

    def __init__(self, binary: str, port: int | None = None, args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = port or free_port()
        #: More ``redis-server`` arguments (``--enable-debug-command``, ...).
        self.args = tuple(args)
        self.dir = tempfile.mkdtemp(prefix="wiretask-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, *, ready: tuple[bytes, ...] = (b"+PONG",)) -> None:
        """Start, and return once a ``PING`` is answered with one of ``ready``."""
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(ready):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_binary() -> str | None:
    return os.environ.get("WIRETASK_TEST_REDIS_SERVER") or shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT`` of the shared test server (no db number)."""
    url = os.environ.get("WIRETASK_TEST_REDIS_URL")
    if url:
        yield url.rstrip("/")
        return
    binary = redis_binary()
    if binary is None:
        missing_broker("redis-server")
    server = RedisServer(binary)  # type: ignore[arg-type]
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A flushed database on the shared test server: ``redis://127.0.0.1:PORT/15``."""
    url = f"{redis_base_url}/15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server that the test may stop and restart (outage tests)."""
    binary = redis_binary()
    if binary is None:
        missing_broker("redis-server")
    server = RedisServer(binary)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """``amqp://guest:guest@127.0.0.1:PORT//`` of the RabbitMQ node ``./scripts/test``
    starts (``scripts/rabbitmq.sh``): skipped without it, failed under ``CI=true``."""
    url = os.environ.get("WIRETASK_TEST_AMQP_URL")
    if not url:
        missing_broker("RabbitMQ (WIRETASK_TEST_AMQP_URL, set by scripts/test)")
    return url


@pytest.fixture
def tmp_db(tmp_path: Path) -> Path:
    """A path for a fresh SQLite database file."""
    return tmp_path / "wiretask.db"


# -- the calling API, sync and asyncio ------------------------------------------------------


class Calls:
    """``calls(obj).method(...)``: the sync API's ``method`` on ``obj``, or (for the
    asyncio run of a parametrised test) its asyncio twin ``a<method>`` awaited on this
    test's event loop. So one test body checks both APIs: ``calls(add).delay(1, 2)``
    is ``add.delay(1, 2)`` or ``await add.adelay(1, 2)``; ``calls(result).get()`` is
    ``result.get()`` or ``await result.aget()``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.runner = asyncio.Runner() if mode == "async" else None

    def __call__(self, target: Any) -> Any:
        if self.runner is None:
            return target
        return _Awaiting(target, self.runner)

    def close(self) -> None:
        if self.runner is None:
            return
        from wiretask.app import _apps  # noqa: PLC0415 - every app made in the test

        loop = self.runner.get_loop()
        for app in list(_apps):
            if loop in app._loops:
                self.runner.run(app.aclose())
        self.runner.close()


class _Awaiting:
    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, f"a{name}")

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(method(*args, **kwargs))

        return call


@pytest.fixture(params=["sync", "async"])
def calls(request: pytest.FixtureRequest) -> Iterator[Calls]:
    """The calling API under test: sync, then asyncio (see ``Calls``)."""
    made = Calls(request.param)
    try:
        yield made
    finally:
        made.close()
