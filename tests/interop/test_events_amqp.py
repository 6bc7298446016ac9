"""Control and events over RabbitMQ, both directions, with real Celery 5.7 parts.

* Celery's ``EventReceiver`` and ``State`` (in this process) and ``celery events --dump``
  (its own process) see a wiretask worker's heartbeats and the full event sequence of a
  successful, a failed, a retried and a revoked task, on the topic exchange ``celeryev``.
* The control channel on ``celery.pidbox``: the ``celery inspect ping`` command and
  Celery's control client see the wiretask worker next to a Celery worker; wiretask's
  ``control revoke`` (and ping, inspect) reach the Celery worker.

Broker: the test RabbitMQ, a virtual host for this module; results: Redis.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from events import sequences
from events.capture import CeleryCapture
from events.sequences import NODE
from interop.amqp_interop import virtual_host
from interop.celery_tasks import make_client
from interop.support import TESTS_DIR, WAIT, CeleryWorker, subprocess_env, wait_for
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.protocol import states
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 5
CELERY_QUEUE = "side-only"
CELERY_NODE = "side-amqp@interop"


@pytest.fixture(scope="module")
def amqp_vhost(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "events") as url:
        yield url


@pytest.fixture(scope="module")
def celery_worker(interop_url: str, amqp_vhost: str) -> Iterator[CeleryWorker]:
    """A Celery worker on the same RabbitMQ, on a queue of its own (prefork: a reserved
    task can be revoked while another one runs)."""
    with CeleryWorker(interop_url, [CELERY_QUEUE], name="side-amqp", broker=amqp_vhost,
                      options=["-n", CELERY_NODE]) as worker:
        yield worker


@pytest.fixture(scope="module")
def capture(amqp_vhost: str) -> Iterator[CeleryCapture]:
    with CeleryCapture(amqp_vhost) as capture:
        yield capture


@pytest.fixture(scope="module")
def wt(interop_url: str, amqp_vhost: str) -> Iterator[App]:
    # Celery's eta messages on classic queues: held by the worker, as Celery's worker
    # holds them (so a revoke finds them there).
    app = make_app(interop_url, broker=f"{amqp_vhost}?delay_mode=celery")
    yield app
    app.close()


@pytest.fixture(scope="module")
def worker(wt: App, capture: CeleryCapture, celery_worker: CeleryWorker) -> Iterator[Worker]:
    with Worker(wt, concurrency=1, hostname=NODE, send_events=True,
                shutdown_timeout=5) as worker:
        capture.wait_worker(NODE)
        yield worker


@pytest.fixture(scope="module")
def celery(interop_url: str, amqp_vhost: str) -> Iterator[Celery]:
    client = make_client(interop_url, broker=amqp_vhost)
    yield client
    client.close()


# -- events ----------------------------------------------------------------------------


def test_success_sequence(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_success(capture, wt)


def test_failure_sequence(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_failure(capture, wt)


def test_retry_sequence(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_retry(capture, wt)


def test_revoke_sequences(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_revoke(capture, wt)


def test_heartbeats(capture: CeleryCapture, worker: Worker) -> None:
    time.sleep(2.5)
    sequences.check_heartbeats(capture)


def test_celery_events_dump_on_rabbitmq(amqp_vhost: str, interop_url: str, wt: App,
                                        worker: Worker) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-b", amqp_vhost, "events", "--dump"],
        env=subprocess_env(interop_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + WAIT
        while not any(f"{NODE} [" in line and "heartbeat" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(proc.stdout.readline())
        done = wt.send_task("interop.add", (40, 2))
        assert done.get(timeout=WAIT) == 42
        while not any("task succeeded" in line and done.id in line for line in lines):
            assert time.monotonic() < deadline + WAIT, "".join(lines)
            lines.append(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    [succeeded] = [line for line in lines if "task succeeded" in line]
    assert f"interop.add({done.id}) args=(40, 2)" in succeeded and "result=42" in succeeded


# -- control, Celery -> wiretask -------------------------------------------------------


def celery_command(
    interop_url: str, amqp_vhost: str, *args: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "interop.celery_tasks", *args],
        cwd=TESTS_DIR, env=subprocess_env(interop_url, broker=amqp_vhost),
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_celery_inspect_ping_command_sees_both_workers(
    interop_url: str, amqp_vhost: str, worker: Worker,
) -> None:
    ping = celery_command(interop_url, amqp_vhost, "inspect", "ping", "-t", "2")
    assert ping.returncode == 0, ping.stderr
    assert f"->  {NODE}: OK" in ping.stdout and f"->  {CELERY_NODE}: OK" in ping.stdout
    assert "2 nodes online." in ping.stdout
    stats = celery_command(interop_url, amqp_vhost, "inspect", "stats", "-d", NODE, "-t", "2")
    assert stats.returncode == 0 and "max-concurrency" in stats.stdout


def test_celery_revokes_on_wiretask(celery: Celery, wt: App, worker: Worker) -> None:
    task_id = str(uuid.uuid4())
    replies = celery.control.revoke(task_id, destination=[NODE], reply=True, timeout=2)
    assert replies == [{NODE: {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
    revoked = celery.send_task("interop.add", (1, 2), task_id=task_id)
    assert celery.send_task("interop.add", (2, 2)).get(timeout=WAIT) == 4
    assert revoked.state == states.REVOKED
    assert task_id in celery.control.inspect(timeout=2, destination=[NODE]).revoked()[NODE]


# -- control, wiretask -> Celery -------------------------------------------------------


def test_wiretask_pings_and_inspects_celery(wt: App, worker: Worker) -> None:
    replies = wt.control.ping(timeout=2)
    nodes = {node for reply in replies for node in reply}
    assert {NODE, CELERY_NODE} <= nodes
    inspect = wt.control.inspect(timeout=2, destination=[CELERY_NODE])
    stats: dict[str, Any] = inspect.stats()[CELERY_NODE]
    assert stats["broker"]["transport"] == "amqp"
    assert inspect.active_queues()[CELERY_NODE][0]["name"] == CELERY_QUEUE


def test_wiretask_revoke_reaches_celery(wt: App, worker: Worker) -> None:
    later = wt.send_task("interop.add", (5, 6), countdown=2, queue=CELERY_QUEUE)
    wait_for(lambda: (wt.control.inspect(timeout=2, destination=[CELERY_NODE]).scheduled()
                      or {}).get(CELERY_NODE), what="Celery to hold the eta task")
    replies = wt.control.revoke(later.id, destination=[CELERY_NODE], reply=True, timeout=2)
    assert replies == [{CELERY_NODE: {"ok": f"tasks {{'{later.id}'}} flagged as revoked"}}]
    time.sleep(2.5)  # past its eta: Celery would run it now
    assert wt.send_task("interop.add", (1, 1), queue=CELERY_QUEUE).get(timeout=WAIT) == 2
    assert later.state == states.REVOKED


def test_worker_offline_at_stop(capture: CeleryCapture, worker: Worker) -> None:
    """Last: stopping the module's worker sends worker-offline."""
    worker.stop(5)
    sequences.check_offline(capture)
