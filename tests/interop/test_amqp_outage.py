"""RabbitMQ outages: the test broker is stopped and started again (``rabbitmqctl
stop_app`` / ``start_app``: its listeners close, every connection drops, durable queues
and persistent messages survive) while wiretask publishes and while its worker consumes;
and a wiretask worker is killed with SIGKILL mid-task. Lost messages: none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from conftest import IN_CI
from interop.amqp_interop import ctl, ready, virtual_host
from interop.support import WAIT, CeleryWorker, subprocess_env, wait_for
from interop.wiretask_tasks import STARTED_KEY, make_app
from wiretask.app import App
from wiretask.errors import PublishError
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

REDIS_DB = 10
#: Outlasts a stop_app/start_app cycle (a few seconds) comfortably.
PATIENT = {"max_retries": 60, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.5}


@pytest.fixture(scope="module")
def broker_url(amqp_url: str) -> Iterator[str]:
    if not os.environ.get("WIRETASK_TEST_AMQP_CTL"):
        if IN_CI:
            pytest.fail("the outage tests need WIRETASK_TEST_AMQP_CTL under CI=true")
        pytest.skip("the outage tests need WIRETASK_TEST_AMQP_CTL (set by scripts/test)")
    with virtual_host(amqp_url, "outage") as url:
        yield url


@pytest.fixture
def wt(interop_url: str, broker_url: str) -> Iterator[App]:
    app = make_app(interop_url, broker=broker_url)
    yield app
    app.close()


@pytest.fixture
def no_runs_yet(redis_client: redis.Redis) -> Iterator[None]:
    """An empty list of the task ids ``interop.slow`` reports starting (``runs_of``)."""
    redis_client.delete(STARTED_KEY)
    yield
    redis_client.delete(STARTED_KEY)


class Outage:
    """Stops the broker now; ``restart_after(seconds)`` starts it again from a thread."""

    def __init__(self) -> None:
        ctl("stop_app")
        self._thread: threading.Thread | None = None

    def restart_after(self, seconds: float) -> None:
        def restart() -> None:
            time.sleep(seconds)
            ctl("start_app")

        self._thread = threading.Thread(target=restart, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(60)
        ctl("await_startup")


def runs_of(client: redis.Redis) -> list[str]:
    raw: Any = client.lrange(STARTED_KEY, 0, -1)
    return [item.decode() for item in raw]


# -- publishing through an outage ----------------------------------------------------------


def test_a_publish_waits_for_the_broker_and_lands_once(
    wt: App, broker_url: str, interop_url: str
) -> None:
    queue = "interop.outage.publish"
    outage = Outage()
    try:
        outage.restart_after(1.0)
        started_at = time.monotonic()
        result = wt.send_task("interop.add", (40, 2), queue=queue, retry=True,
                              retry_policy=PATIENT)
        waited = time.monotonic() - started_at
    finally:
        outage.wait()
    assert waited >= 1.0, "the publish returned while the broker was down"
    assert ready(broker_url, queue) == 1  # on the broker, once

    with CeleryWorker(interop_url, [queue], name="outage", broker=broker_url):
        assert result.get(timeout=WAIT) == 42


def test_a_publish_without_retry_fails_at_once(wt: App) -> None:
    outage = Outage()
    try:
        with pytest.raises(PublishError) as caught:
            wt.send_task("interop.add", (1, 2), retry=False)
    finally:
        outage.restart_after(0)
        outage.wait()
    assert caught.value.attempts == 1


# -- consuming through an outage -----------------------------------------------------------


def test_a_worker_reconnects_by_itself_and_loses_nothing(
    wt: App, redis_client: redis.Redis, no_runs_yet: None
) -> None:
    queue = "interop.outage.consume"
    before = [wt.send_task("interop.slow", (0.05,), queue=queue) for _ in range(20)]
    with Worker(wt, queues=[queue], concurrency=2, shutdown_timeout=5):
        wait_for(lambda: len(runs_of(redis_client)) >= 3, what="the worker to start tasks")
        outage = Outage()  # mid-stream: some tasks running, some in the window
        try:
            outage.restart_after(1.0)
        finally:
            outage.wait()
        after = [wt.send_task("interop.slow", (0.05,), queue=queue, retry=True,
                              retry_policy=PATIENT) for _ in range(5)]
        outcomes = [r.get(timeout=WAIT) for r in [*before, *after]]

    assert outcomes == ["slept"] * 25  # lost: none
    runs = runs_of(redis_client)
    assert set(runs) == {r.id for r in [*before, *after]}
    # At least once: a task whose ack the outage swallowed ran again; none more than twice.
    assert max(runs.count(r) for r in set(runs)) <= 2


# -- a worker killed mid-task ----------------------------------------------------------------


def start_wiretask_worker(interop_url: str, broker: str, queue: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "worker", "-A", "interop.wiretask_tasks:app",
         "-Q", queue, "-c", "1", "--loglevel", "WARNING"],
        env=subprocess_env(interop_url, broker=broker), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err.decode(errors="replace")


def test_the_message_of_a_sigkilled_worker_comes_back_and_runs_on_a_new_worker(
    wt: App, interop_url: str, broker_url: str, redis_client: redis.Redis, no_runs_yet: None
) -> None:
    queue = "interop.outage.sigkill"
    workers = [start_wiretask_worker(interop_url, broker_url, queue)]
    try:
        result = wt.send_task("interop.slow", (1.5,), queue=queue)
        wait_for(lambda: runs_of(redis_client), what="the first worker to start the task")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        assert result.state == "PENDING"  # it never finished there
        # No visibility timeout to wait for: the broker requeued it when the
        # connection died.
        wait_for(lambda: ready(broker_url, queue) == 1, timeout=5.0,
                 what="the broker to requeue the message of the dead worker")

        workers.append(start_wiretask_worker(interop_url, broker_url, queue))
        assert result.get(timeout=WAIT) == "slept"
        assert runs_of(redis_client) == [result.id] * 2  # started on both workers
    finally:
        errors = [stop(worker) for worker in workers]
    assert workers[1].returncode == 0, errors[1]
