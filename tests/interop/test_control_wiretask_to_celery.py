"""wiretask's remote-control client against a real Celery 5.7 worker (prefork, one
child) on Redis: ping and inspect read Celery's replies, and a revoke sent by wiretask
stops a task that Celery has pending, reserved, waiting for its eta, or running
(``terminate``).

A Celery worker stores ``REVOKED`` as soon as it is told to revoke a task that has not
started, and overwrites it with ``SUCCESS`` if it runs the task after all: so a final
``REVOKED``, read after a later task ran, means the revoked one never ran.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from interop.support import WAIT, CeleryWorker, subprocess_env, wait_for
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.errors import TaskRevokedError
from wiretask.protocol import states

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 8
QUEUE = "ctl-celery"
NODE = f"ctl@{socket.gethostname()}"


@pytest.fixture(scope="module")
def celery_worker(interop_url: str) -> Iterator[CeleryWorker]:
    # prefork: its main process reserves the next message while a child runs a task,
    # and a running task can be terminated.
    with CeleryWorker(interop_url, [QUEUE], name="ctl", pool="prefork") as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    app = make_app(f"{interop_url}?delay_mode=celery")  # eta messages straight to the list
    app.conf.task_default_queue = QUEUE
    yield app
    app.close()


def ask(wt: App) -> Any:
    return wt.control.inspect(timeout=2, destination=[NODE])


def after(wt: App) -> None:
    """Run one more task to its end: whatever the worker had before it is settled."""
    assert wt.send_task("interop.add", (1, 1), queue=QUEUE).get(timeout=WAIT) == 2


def blocker(wt: App, gate: str) -> Any:
    """A Celery task that stores PROGRESS, then waits (bounded) for the Redis key
    ``gate``: running, for sure, once its state reads PROGRESS."""
    result = wt.send_task("interop.progress", (1, gate), queue=QUEUE)
    wait_for(lambda: result.state == "PROGRESS", what="the Celery task to start")
    return result


def open_gate(wt: App, gate: str) -> None:
    wt.backend.client.set(gate, 1)  # type: ignore[attr-defined]


def test_ping_and_inspect_read_celerys_replies(wt: App) -> None:
    assert wt.control.ping(destination=[NODE], timeout=2) == [{NODE: {"ok": "pong"}}]
    inspect = ask(wt)
    assert "interop.add" in inspect.registered()[NODE]
    stats = inspect.stats()[NODE]
    assert stats["pool"]["max-concurrency"] == 1 and stats["broker"]["transport"] == "redis"
    assert inspect.active_queues()[NODE][0]["name"] == QUEUE
    assert isinstance(inspect.revoked()[NODE], list)
    assert inspect.clock()[NODE]["clock"] > 0


def test_inspect_active_and_reserved_show_celerys_tasks(wt: App) -> None:
    gate = f"gate-{uuid.uuid4()}"
    running = blocker(wt, gate)
    waiting = wt.send_task("interop.add", (2, 3), queue=QUEUE)
    try:
        reserved = wait_for(lambda: (ask(wt).reserved() or {}).get(NODE),
                            what="the second task to be reserved")
        [active] = ask(wt).active()[NODE]
        queried = ask(wt).query_task(waiting.id)[NODE]
    finally:
        open_gate(wt, gate)
    assert active["id"] == running.id and active["name"] == "interop.progress"
    assert [info["id"] for info in reserved] == [waiting.id]
    assert queried[waiting.id][0] == "reserved"
    assert waiting.get(timeout=WAIT) == 5


def test_revoke_of_a_pending_task(wt: App) -> None:
    task_id = str(uuid.uuid4())
    replies = wt.control.revoke(task_id, destination=[NODE], reply=True, timeout=2)
    revoked = wt.send_task("interop.add", (1, 2), task_id=task_id, queue=QUEUE)
    after(wt)

    assert replies == [{NODE: {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
    assert revoked.state == states.REVOKED
    with pytest.raises(TaskRevokedError, match="revoked"):
        revoked.get(timeout=WAIT)


def test_asyncresult_revoke_reaches_celery(wt: App) -> None:
    task_id = str(uuid.uuid4())
    wt.AsyncResult(task_id).revoke()
    wait_for(lambda: task_id in ask(wt).revoked()[NODE], what="Celery to have the revoke")
    revoked = wt.send_task("interop.add", (1, 2), task_id=task_id, queue=QUEUE)
    after(wt)
    assert revoked.state == states.REVOKED


def test_revoke_of_a_reserved_task(wt: App) -> None:
    gate = f"gate-{uuid.uuid4()}"
    blocker(wt, gate)
    reserved = wt.send_task("interop.add", (3, 4), queue=QUEUE)
    try:
        wait_for(lambda: [t["id"] for t in (ask(wt).reserved() or {}).get(NODE, [])]
                 == [reserved.id], what="the task to be reserved")
        wt.control.revoke(reserved.id, destination=[NODE], reply=True, timeout=2)
    finally:
        open_gate(wt, gate)
    after(wt)
    assert reserved.state == states.REVOKED


def test_revoke_of_a_task_waiting_for_its_eta(wt: App) -> None:
    later = wt.send_task("interop.add", (5, 6), countdown=2, queue=QUEUE)
    scheduled = wait_for(lambda: (ask(wt).scheduled() or {}).get(NODE),
                         what="Celery to hold the eta task")
    wt.control.revoke(later.id, destination=[NODE], reply=True, timeout=2)
    time.sleep(2.5)  # past its eta: Celery would run it now
    after(wt)

    assert [entry["request"]["id"] for entry in scheduled] == [later.id]
    assert later.state == states.REVOKED


def test_terminate_of_a_running_task(wt: App) -> None:
    gate = f"gate-{uuid.uuid4()}"
    running = blocker(wt, gate)
    replies = wt.control.revoke(running.id, terminate=True, signal="SIGKILL",
                                destination=[NODE], reply=True, timeout=2)
    with pytest.raises(TaskRevokedError, match="terminated"):
        running.get(timeout=WAIT)
    open_gate(wt, gate)
    after(wt)  # Celery replaced its child

    assert replies == [{NODE: {"ok": f"terminate: {running.id}"}}]
    assert running.state == states.REVOKED


def test_wiretask_inspect_ping_command_sees_celery(interop_url: str, wt: App) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wiretask.cli", "--broker", interop_url, "inspect", "ping",
         "-d", NODE, "-t", "2", "--json"],
        env=subprocess_env(interop_url), capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {NODE: {"ok": "pong"}}
