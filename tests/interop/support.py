"""Helpers of the interop tests: bounded waits on conditions, the environment of the
subprocesses, and a real ``celery worker`` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from interop import celery_tasks
from wiretask.transports.redis import RedisTransport
from wiretask.transports.redis.scheduler import MOVER_CACHE

T = TypeVar("T")

#: ``tests/``: what the subprocesses need on ``sys.path`` to import ``interop.*``.
TESTS_DIR = Path(__file__).resolve().parent.parent
#: Bound on every wait for a worker or a result.
WAIT = 20.0


def wait_for(
    condition: Callable[[], T | None], *, timeout: float = WAIT, interval: float = 0.02,
    what: str = "the condition",
) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail the test
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_for_movers(url: str, *, alive: bool = True) -> None:
    """Wait until wiretask's mover heartbeat on ``url`` is written (a wiretask worker or
    scheduler runs ``DUE``), or with ``alive=False`` until none is left, then for every
    publisher's cached view of it (at most ``MOVER_CACHE`` old) to catch up: from then
    on ``delay_mode=auto`` publishers hold delayed messages broker-side (or do not)."""
    with RedisTransport(url) as probe:
        wait_for(lambda: bool(probe.movers()) == alive,
                 what="a mover heartbeat" if alive else "no mover heartbeat")
    time.sleep(MOVER_CACHE)


def subprocess_env(
    url: str, *, broker: str | None = None, celery_conf: dict[str, Any] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env["INTEROP_REDIS_URL"] = url
    env.pop("INTEROP_BROKER_URL", None)
    env.pop("INTEROP_CELERY_CONF", None)
    if broker is not None:
        env["INTEROP_BROKER_URL"] = broker
    if celery_conf:
        env["INTEROP_CELERY_CONF"] = json.dumps(celery_conf)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class CeleryWorker:
    """``celery -A interop.celery_tasks worker -P solo`` on ``url``, consuming ``queues``
    (on ``broker`` when given, with ``conf`` updating its configuration; another ``pool``
    and ``concurrency`` when given, and more ``options``).

    ``start()`` returns once the worker consumes (its ``worker_ready`` signal handler
    writes its pid to Redis); ``stop()`` asks for a warm shutdown and kills it if it
    does not exit in time.
    """

    def __init__(
        self, url: str, queues: Sequence[str], *, name: str = "interop",
        broker: str | None = None, conf: dict[str, Any] | None = None, pool: str = "solo",
        concurrency: int = 1, options: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.queues = list(queues)
        self.name = name
        self.broker = broker
        self.conf = conf
        self.pool = pool
        self.concurrency = concurrency
        #: More ``celery worker`` options (they win over the defaults above them).
        self.options = list(options)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="celery-worker-", suffix=".log")[1])

    def start(self, timeout: float = 30.0) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.delete(celery_tasks.READY_KEY)
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "interop.celery_tasks", "worker",
                     "-P", self.pool, "-c", str(self.concurrency), "-Q", ",".join(self.queues),
                     "-n", f"{self.name}@%h", "--without-heartbeat", "--without-mingle",
                     "--without-gossip", "--loglevel", "WARNING", *self.options],
                    cwd=TESTS_DIR, env=subprocess_env(self.url, broker=self.broker,
                                                      celery_conf=self.conf), stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + timeout
            while client.get(celery_tasks.READY_KEY) != str(self.proc.pid).encode():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"celery worker did not start:\n{self.output()}")
                time.sleep(0.05)
        finally:
            client.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def __enter__(self) -> CeleryWorker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)
