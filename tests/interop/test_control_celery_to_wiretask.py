"""A real Celery 5.7 client (its Python API and its ``celery`` command) against
wiretask's worker on Redis: ping, inspect and status list the wiretask worker next to a
Celery worker, and a revoke sent by Celery stops a task that wiretask's worker has
pending, reserved, waiting for its eta, or running on the process pool (``terminate``).

A task wiretask's worker ran pushes its id to the Redis list ``interop:started``
(``interop.slow``), so "never ran" is read there, not only from the state.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import TaskRevokedError

from control import ctlapp
from interop.support import TESTS_DIR, WAIT, CeleryWorker, subprocess_env, wait_for
from interop.wiretask_tasks import STARTED_KEY, make_app
from wiretask.app import App
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 9
WT_NODE = "wt@interop"
CELERY_NODE = f"side@{socket.gethostname()}"


@pytest.fixture(scope="module")
def celery_worker(interop_url: str) -> Iterator[CeleryWorker]:
    """A Celery worker beside wiretask's, on a queue of its own."""
    with CeleryWorker(interop_url, ["side-only"], name="side") as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str) -> Iterator[App]:
    app = make_app(f"{interop_url}?delay_mode=celery")  # Celery's eta messages: held here
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_worker(wt: App, celery_worker: CeleryWorker) -> Iterator[Worker]:
    with Worker(wt, queues=["celery"], concurrency=1, prefetch=1, hostname=WT_NODE,
                shutdown_timeout=5) as worker:
        yield worker


@pytest.fixture
def celery(celery_client: Celery, wt_worker: Worker, redis_client: redis.Redis) -> Celery:
    redis_client.delete(STARTED_KEY)
    return celery_client


def started(client: redis.Redis) -> list[str]:
    return [item.decode() for item in client.lrange(STARTED_KEY, 0, -1)]


def ask(celery: Celery) -> Any:
    return celery.control.inspect(timeout=2, destination=[WT_NODE])


def after(celery: Celery) -> None:
    """One more task to its end: what wiretask's worker had before it is settled."""
    assert celery.send_task("interop.add", (1, 1)).get(timeout=WAIT) == 2


def test_celery_pings_wiretask_and_celery_side_by_side(celery: Celery) -> None:
    replies = celery.control.ping(timeout=1)
    nodes = {node for reply in replies for node in reply}
    assert {WT_NODE, CELERY_NODE} <= nodes
    assert {WT_NODE: {"ok": "pong"}} in replies


def test_celery_inspect_reads_wiretasks_replies(celery: Celery) -> None:
    inspect = ask(celery)
    # Celery's rule: the built-in celery.* tasks only with builtins=True.
    tasks = make_app("redis://unused/0").tasks
    assert inspect.registered()[WT_NODE] == sorted(t for t in tasks if not t.startswith("celery."))
    stats = inspect.stats()[WT_NODE]
    assert stats["pool"]["max-concurrency"] == 1 and stats["total"] is not None
    assert inspect.active_queues()[WT_NODE][0]["name"] == "celery"
    assert inspect.revoked()[WT_NODE] is not None
    assert inspect.scheduled()[WT_NODE] == []
    assert inspect.query_task("nothing")[WT_NODE] == {}


def test_celery_inspect_active_and_reserved(celery: Celery, redis_client: redis.Redis) -> None:
    running = celery.send_task("interop.slow", (1.5,))
    wait_for(lambda: started(redis_client) == [running.id], what="the task to start")
    waiting = celery.send_task("interop.add", (2, 3))
    reserved = wait_for(lambda: (ask(celery).reserved() or {}).get(WT_NODE),
                        what="the second task to be reserved")
    [active] = ask(celery).active()[WT_NODE]

    assert active["id"] == running.id and active["args"] == [1.5]
    assert [info["id"] for info in reserved] == [waiting.id]
    assert waiting.get(timeout=WAIT) == 5


def test_the_celery_command_lists_both_workers(interop_url: str, celery: Celery) -> None:
    def celery_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "interop.celery_tasks", *args],
            cwd=TESTS_DIR, env=subprocess_env(interop_url), capture_output=True, text=True,
            timeout=60, check=False,
        )

    ping = celery_command("inspect", "ping", "-t", "2")
    assert ping.returncode == 0, ping.stderr
    assert f"->  {WT_NODE}: OK" in ping.stdout and f"->  {CELERY_NODE}: OK" in ping.stdout
    assert "2 nodes online." in ping.stdout
    status = celery_command("status", "-t", "2")
    assert status.returncode == 0 and f"{WT_NODE}: OK" in status.stdout
    stats = celery_command("inspect", "stats", "-d", WT_NODE, "-j", "-t", "2")
    assert json.loads(stats.stdout)[WT_NODE]["pool"]["max-concurrency"] == 1
    nobody = celery_command("inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5")
    assert nobody.returncode == 69  # the same health check, failing as it should


def test_revoke_of_a_pending_task(celery: Celery, redis_client: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    replies = celery.control.revoke(task_id, destination=[WT_NODE], reply=True, timeout=2)
    revoked = celery.send_task("interop.slow", (0,), task_id=task_id)
    after(celery)

    assert replies == [{WT_NODE: {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
    assert started(redis_client) == []
    with pytest.raises(TaskRevokedError, match="revoked"):
        revoked.get(timeout=WAIT)
    assert task_id in ask(celery).revoked()[WT_NODE]


def test_asyncresult_revoke_from_celery(celery: Celery, redis_client: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    celery.AsyncResult(task_id).revoke()  # a cast: signal null, no reply
    wait_for(lambda: task_id in ask(celery).revoked()[WT_NODE],
             what="wiretask's worker to have the revoke")
    revoked = celery.send_task("interop.slow", (0,), task_id=task_id)
    after(celery)
    assert started(redis_client) == []
    assert revoked.state == "REVOKED"


def test_revoke_of_a_reserved_task(celery: Celery, redis_client: redis.Redis) -> None:
    running = celery.send_task("interop.slow", (1.0,))
    wait_for(lambda: started(redis_client) == [running.id], what="the task to start")
    reserved = celery.send_task("interop.slow", (0,))
    wait_for(lambda: [t["id"] for t in (ask(celery).reserved() or {}).get(WT_NODE, [])]
             == [reserved.id], what="the task to be reserved")
    celery.control.revoke(reserved.id, destination=[WT_NODE], reply=True, timeout=2)
    assert running.get(timeout=WAIT) == "slept"
    after(celery)

    assert started(redis_client) == [running.id]
    with pytest.raises(TaskRevokedError, match="revoked"):
        reserved.get(timeout=WAIT)


def test_revoke_of_a_task_waiting_for_its_eta(celery: Celery, redis_client: redis.Redis) -> None:
    later = celery.send_task("interop.slow", (0,), countdown=30)
    [entry] = wait_for(lambda: (ask(celery).scheduled() or {}).get(WT_NODE),
                       what="wiretask's worker to hold the eta task")
    celery.control.revoke(later.id, destination=[WT_NODE], reply=True, timeout=2)

    assert entry["request"]["id"] == later.id
    assert ask(celery).scheduled()[WT_NODE] == []
    assert later.state == "REVOKED"
    assert redis_client.hlen("unacked") == 0  # acked, not held and not given back
    assert started(redis_client) == []


def test_terminate_of_a_task_running_on_the_process_pool(
    interop_url: str, celery: Celery, tmp_path: Path
) -> None:
    saved = dict(ctlapp.app.conf)
    ctlapp.app.conf.broker_url = ctlapp.app.conf.result_backend = interop_url
    marker = tmp_path / "started"
    try:
        with Worker(ctlapp.app, queues=["ctl-processes"], pool="processes", concurrency=1,
                    hostname="wtproc@interop", app_path="control.ctlapp:app",
                    shutdown_timeout=5):
            running = celery.send_task("ctl.hang", (str(marker), 60), queue="ctl-processes")
            wait_for(marker.exists, what="the task to start in a child process")
            began = time.monotonic()
            replies = celery.control.terminate(running.id, destination=["wtproc@interop"],
                                               reply=True, timeout=2)
            with pytest.raises(TaskRevokedError, match="terminated"):
                running.get(timeout=WAIT)
            assert time.monotonic() - began < 10
            assert celery.send_task("ctl.add", (2, 3), queue="ctl-processes").get(
                timeout=WAIT) == 5  # a new child took the slot
    finally:
        ctlapp.app.close()
        ctlapp.app.conf.clear()
        ctlapp.app.conf.update(saved)
    assert replies == [{"wtproc@interop": {"ok": f"terminate: {running.id}"}}]


def test_the_state_db_survives_a_restart_of_wiretasks_worker(
    wt: App, celery: Celery, redis_client: redis.Redis, tmp_path: Path
) -> None:
    statedb = tmp_path / "worker.state"
    task_id = str(uuid.uuid4())
    with Worker(wt, queues=["ctl-statedb"], concurrency=1, hostname="wtstate@interop",
                statedb=statedb, shutdown_timeout=5):
        celery.control.revoke(task_id, destination=["wtstate@interop"], reply=True, timeout=2)
    # While it is down: the task is sent, and its stored state goes (only the worker's
    # memory can stop it now).
    revoked = celery.send_task("interop.slow", (0,), task_id=task_id, queue="ctl-statedb")
    celery.backend.forget(task_id)
    with Worker(wt, queues=["ctl-statedb"], concurrency=1, hostname="wtstate@interop",
                statedb=statedb, shutdown_timeout=5):
        assert celery.send_task("interop.add", (1, 1), queue="ctl-statedb").get(
            timeout=WAIT) == 2
    assert started(redis_client) == []
    assert revoked.state == "REVOKED"
