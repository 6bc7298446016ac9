"""Celery's events from wiretask's worker on Redis, read by Celery itself: its
``EventReceiver`` and ``State`` (what Flower builds on) in this process, and the
``celery events --dump`` command in another, see the full sequence of a successful, a
failed, a retried and a revoked task, the worker's heartbeats and its going offline,
and ``enable_events``/``disable_events`` sent by Celery's control client.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from events import sequences
from events.capture import WAIT, CeleryCapture
from events.sequences import NODE
from interop.support import subprocess_env
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 6


@pytest.fixture(scope="module")
def capture(interop_url: str) -> Iterator[CeleryCapture]:
    with CeleryCapture(interop_url) as capture:
        yield capture


@pytest.fixture(scope="module")
def wt(interop_url: str) -> Iterator[App]:
    app = make_app(f"{interop_url}?delay_mode=celery")  # eta messages held by the worker
    yield app
    app.close()


@pytest.fixture(scope="module")
def worker(wt: App, capture: CeleryCapture) -> Iterator[Worker]:
    with Worker(wt, concurrency=1, hostname=NODE, send_events=True,
                shutdown_timeout=5) as worker:
        capture.wait_worker(NODE)
        yield worker


def test_success_sequence(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_success(capture, wt)


def test_failure_sequence(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_failure(capture, wt)


def test_retry_sequence(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_retry(capture, wt)


def test_revoke_sequences(capture: CeleryCapture, wt: App, worker: Worker) -> None:
    sequences.check_revoke(capture, wt)


def test_heartbeats_every_two_seconds(capture: CeleryCapture, worker: Worker) -> None:
    before = len([e for e in capture.snapshot() if e["type"] == "worker-heartbeat"])
    time.sleep(4.5)
    after = [e for e in capture.snapshot()
             if e["type"] == "worker-heartbeat" and e["hostname"] == NODE and "active" in e]
    assert len(after) - before >= 2
    sequences.check_heartbeats(capture)


def test_celery_events_dump_shows_the_worker_and_its_tasks(
    interop_url: str, wt: App, worker: Worker, tmp_path: object,
) -> None:
    """``celery events --dump``: Celery's own command, in its own process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-b", interop_url, "events", "--dump"],
        env=subprocess_env(interop_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        # It is listening once the worker's answer to its wakeup heartbeat shows.
        deadline = time.monotonic() + WAIT
        while not any(f"{NODE} [" in line and "heartbeat" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(proc.stdout.readline())
        ok = wt.send_task("interop.add", (20, 22))
        assert ok.get(timeout=WAIT) == 42
        failed = wt.send_task("interop.fail", ("dumped",))
        while not any("task failed" in line and failed.id in line for line in lines):
            assert time.monotonic() < deadline + WAIT, "".join(lines)
            lines.append(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(lines)

    def line(start: str) -> str:
        found = [one for one in lines if start in one]
        assert found, f"no {start!r} in:\n{text}"
        return found[0]

    assert line(f"{NODE} [").startswith(f"{NODE} [")
    assert "sw_ident=wiretask" in line(f"{NODE} [")
    line(f"task received: interop.add({ok.id}) args=(20, 22) kwargs={{}}")
    line(f"task started: interop.add({ok.id})")
    assert "result=42" in line(f"task succeeded: interop.add({ok.id}) args=(20, 22)")
    assert "exception=ValueError('dumped')" in line(f"task failed: interop.fail({failed.id})")


def test_enable_and_disable_events_from_celery(interop_url: str, capture: CeleryCapture,
                                               celery_client: Celery) -> None:
    """A worker started without task events sends them after Celery's
    ``enable_events`` and stops after ``disable_events``; heartbeats go on throughout."""
    app = make_app(interop_url, "quiet")
    app.conf.task_default_queue = "quiet"
    node = "wt-quiet@interop"
    try:
        with Worker(app, queues=["quiet"], concurrency=1, hostname=node, shutdown_timeout=5):
            capture.wait_worker(node)
            first = app.send_task("interop.add", (1, 1))
            assert first.get(timeout=WAIT) == 2
            replies = celery_client.control.enable_events(reply=True, destination=[node],
                                                          timeout=5)
            assert replies == [{node: {"ok": "task events enabled"}}]
            second = app.send_task("interop.add", (2, 2))
            assert second.get(timeout=WAIT) == 4
            capture.wait_type(second.id, "task-succeeded")
            replies = celery_client.control.disable_events(reply=True, destination=[node],
                                                           timeout=5)
            assert replies == [{node: {"ok": "task events disabled"}}]
            third = app.send_task("interop.add", (3, 3))
            assert third.get(timeout=WAIT) == 6
            marker = str(uuid.uuid4())
            celery_client.control.heartbeat(destination=[node])
            capture.wait(lambda: sum(e["type"] == "worker-heartbeat" and e.get("freq") == 5
                                     and e["hostname"] == node
                                     for e in capture.snapshot()) >= 1,
                         f"the heartbeat command's heartbeat {marker}")
            assert capture.types_of(first.id) == []
            assert capture.types_of(third.id) == []
        capture.wait(lambda: any(e["type"] == "worker-offline" and e["hostname"] == node
                                 for e in capture.snapshot()), "worker-offline")
        assert not capture.state.workers[node].alive
    finally:
        app.close()


def test_task_sent_from_wiretasks_client(capture: CeleryCapture, wt: App,
                                        worker: Worker) -> None:
    """``task_send_sent_event``: Celery's State sees the client's task-sent first."""
    wt.conf.task_send_sent_event = True
    try:
        result = wt.send_task("interop.add", (7, 8), countdown=0.1)
        assert result.get(timeout=WAIT) == 15
    finally:
        wt.conf.task_send_sent_event = False
    capture.wait_type(result.id, "task-succeeded")
    capture.wait_type(result.id, "task-sent")
    sent = next(e for e in capture.events_of(result.id) if e["type"] == "task-sent")
    assert sent["name"] == "interop.add" and sent["args"] == "(7, 8)"
    assert sent["queue"] == "celery" and sent["routing_key"] == "celery"
    assert sent["eta"] is not None and sent["retries"] == 0
    assert sent["hostname"].startswith("gen")
    assert capture.state.tasks[result.id].sent is not None
    assert capture.state.tasks[result.id].state == "SUCCESS"


def test_worker_offline_at_stop(capture: CeleryCapture, worker: Worker) -> None:
    """Last: stopping the module's worker sends worker-offline."""
    worker.stop(5)
    sequences.check_offline(capture)
