"""The worker across processes, on the SQLite broker: the process pool (time limits in
child processes, a crashing child), and a worker running as its own program that stops
cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretask.app import App
from wiretask.errors import ImproperlyConfigured, TimeLimitExceeded, WorkerLostError
from wiretask.protocol import states
from wiretask.worker import Worker

from . import procapp
from .conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TESTS_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """``procapp.app`` on a fresh SQLite file (its settings reach the children)."""
    saved = dict(procapp.app.conf)
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    procapp.app.conf.broker_url = url
    procapp.app.conf.result_backend = url
    yield procapp.app
    procapp.app.close()
    procapp.app.conf.clear()
    procapp.app.conf.update(saved)


def test_process_pool_runs_tasks_in_child_processes(app: App) -> None:
    app.conf.task_track_started = True
    with Worker(app, pool="processes", concurrency=2, shutdown_timeout=10) as worker:
        results = [procapp.add.delay(i, i) for i in range(6)]
        assert [r.get(timeout=20) for r in results] == [0, 2, 4, 6, 8, 10]
        who = procapp.whoami.delay().get(timeout=10)
    assert who["pid"] != os.getpid()
    assert who["hostname"] == worker.hostname
    assert worker.app_path == "worker.procapp:app"
    assert app.transport.size("celery") == 0


def test_process_soft_time_limit_interrupts_a_blocking_call(app: App) -> None:
    with Worker(app, pool="processes", concurrency=1, shutdown_timeout=10):
        started = time.monotonic()
        result = procapp.polite.apply_async((10,), soft_time_limit=0.3)
        assert result.get(timeout=10) == "cleaned up"
        assert time.monotonic() - started < 5


def test_process_hard_time_limit_kills_and_replaces_the_child(app: App) -> None:
    with Worker(app, pool="processes", concurrency=1, shutdown_timeout=10):
        before = procapp.whoami.delay().get(timeout=10)["pid"]
        started = time.monotonic()
        errback_id = f"errback-of-{before}"
        result = procapp.nap.apply_async(
            (30,), time_limit=0.5, link_error=procapp.report.s().set(task_id=errback_id)
        )
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=10)
        assert time.monotonic() - started < 5
        meta = app.backend.get(result.id)
        assert meta is not None
        assert meta["result"]["exc_message"] == [0.5]
        after = procapp.whoami.delay().get(timeout=20)["pid"]
        assert after != before
        # The errback (old style: one argument) was sent and ran in the new child.
        assert app.AsyncResult(errback_id).get(timeout=10) == f"reported {result.id}"
    assert result.state == states.FAILURE


def test_a_crashing_child_is_recorded_and_replaced(app: App) -> None:
    with Worker(app, pool="processes", concurrency=1, shutdown_timeout=10):
        result = procapp.crash.delay(3)
        failure = result.get(timeout=20, propagate=False)
        assert isinstance(failure, WorkerLostError)
        assert "exit code 3" in str(failure)
        assert procapp.add.delay(1, 1).get(timeout=20) == 2


def test_stop_kills_and_requeues_what_a_child_still_runs(app: App) -> None:
    worker = Worker(app, pool="processes", concurrency=1)
    worker.start()
    result = procapp.nap.delay(30)
    wait_until(lambda: worker.active == 1, timeout=10, what="running")
    time.sleep(0.2)
    stopped = time.monotonic()
    worker.stop(timeout=0.3)
    assert time.monotonic() - stopped < 5
    assert app.transport.size("celery") == 1
    assert result.state != states.SUCCESS


def test_a_child_that_cannot_load_the_app_fails_start(app: App) -> None:
    worker = Worker(app, pool="processes", concurrency=1, app_path="worker.procapp:missing")
    with pytest.raises(ImproperlyConfigured, match="missing"):
        worker.start()


def _worker_program(url: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["WIRETASK_BROKER_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "worker.run_worker", str(concurrency)],
        cwd=TESTS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def test_a_worker_program_runs_tasks_sent_from_another_process(app: App) -> None:
    proc = _worker_program(app.broker_url)
    try:
        results = [procapp.add.delay(i, 1) for i in range(10)]
        assert [r.get(timeout=30) for r in results] == list(range(1, 11))
        assert procapp.whoami.delay().get(timeout=10)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output


def test_sigterm_lets_the_running_task_finish_and_exits_0(app: App) -> None:
    proc = _worker_program(app.broker_url, concurrency=1)
    try:
        assert procapp.add.delay(1, 1).get(timeout=30) == 2  # it is up
        result = procapp.nap.delay(0.8)
        wait_until(lambda: app.transport.size("celery") == 0, timeout=10, what="received")
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "SIGTERM" in output
    assert result.get(timeout=5) == "rested"
    assert app.transport.size("celery") == 0


def test_a_task_the_child_does_not_know_is_dead_lettered(app: App) -> None:
    @app.task(name="worker.procapp.only_in_the_parent")
    def only_in_the_parent() -> str:
        return "parent"

    try:
        with Worker(app, pool="processes", concurrency=1, shutdown_timeout=10):
            result = only_in_the_parent.delay()
            failure = result.get(timeout=20, propagate=False)
            assert type(failure).__name__ == "NotRegistered"
            wait_until(
                lambda: len(app.transport.dead_letters("celery")) == 1, what="dead letter"
            )
            assert procapp.add.delay(2, 2).get(timeout=20) == 4
    finally:
        del app.tasks[only_in_the_parent.name]
    [dead] = app.transport.dead_letters("celery")
    assert dead.reason == "unregistered task worker.procapp.only_in_the_parent"
