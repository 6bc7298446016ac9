"""``wiretask inspect``, ``control`` and ``status`` as Celery's commands, run as real
processes against a worker on a SQLite broker: they answer, and fail (exit 69) when no
worker answers, so a health check copied from Celery can fail."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretask.app import App
from wiretask.protocol import states
from wiretask.worker import Worker

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def app(url: str) -> Iterator[App]:
    made = App("clictl", broker=url)

    @made.task(name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield made
    made.close()


@pytest.fixture
def running(app: App) -> Iterator[Worker]:
    with Worker(app, hostname="cli1@test", concurrency=1, shutdown_timeout=5) as worker:
        yield worker


def wiretask(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "wiretask.cli", "--broker", url, *args],
                          capture_output=True, text=True, timeout=60, check=False, env=env)


def test_inspect_ping_sees_the_worker(url: str, running: Worker) -> None:
    done = wiretask(url, "inspect", "ping", "-t", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["->  cli1@test: OK", "        pong", "",
                                        "1 node online."]


def test_inspect_ping_fails_when_nobody_answers(url: str) -> None:
    done = wiretask(url, "inspect", "ping", "-t", "0.3")
    assert done.returncode == 69
    assert "no nodes replied within 0.3 s" in done.stderr


def test_a_liveness_probe_for_one_node(url: str, running: Worker) -> None:
    assert wiretask(url, "inspect", "ping", "-d", "cli1@test", "-t", "2").returncode == 0
    assert wiretask(url, "inspect", "ping", "-d", "other@test", "-t", "0.3").returncode == 69
    assert wiretask(url, "status", "-d", "other@test", "-t", "0.3").returncode == 69


def test_status_lists_the_nodes(url: str, running: Worker) -> None:
    done = wiretask(url, "status", "-t", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["->  cli1@test: OK", "", "1 node online."]


def test_json_is_one_object_by_node(url: str, running: Worker) -> None:
    done = wiretask(url, "inspect", "registered", "--json", "-t", "0.5")
    assert done.returncode == 0, done.stderr
    [(node, names)] = json.loads(done.stdout).items()
    assert node == "cli1@test" and "c.add" in names  # (and other tests' shared tasks)
    done = wiretask(url, "inspect", "stats", "-j", "-d", "cli1@test")
    assert json.loads(done.stdout)["cli1@test"]["pool"]["max-concurrency"] == 1


def test_control_revoke(url: str, app: App, running: Worker) -> None:
    task_id = str(uuid.uuid4())
    done = wiretask(url, "control", "revoke", task_id, "-d", "cli1@test")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "->  cli1@test: OK", f"        tasks {{'{task_id}'}} flagged as revoked"]
    assert app.AsyncResult(task_id).state == states.REVOKED
    revoked = wiretask(url, "inspect", "revoked", "-j", "-d", "cli1@test")
    assert json.loads(revoked.stdout) == {"cli1@test": [task_id]}


def test_query_task_takes_ids(url: str, running: Worker) -> None:
    done = wiretask(url, "inspect", "query_task", "a", "b", "-j", "-d", "cli1@test")
    assert json.loads(done.stdout) == {"cli1@test": {}}


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", "pign"], "unknown inspect command 'pign'; did you mean 'ping'?"),
    (["inspect", "celery"],
     "unknown inspect command 'celery' (to list the messages of a queue: wiretask queue "
     "show celery)"),
    (["inspect", "revoke"], "unknown inspect command 'revoke'"),
    (["control", "ping"], "unknown control command 'ping'"),
    (["control", "revoke"], "revoke: give at least one task id"),
    (["control", "rate_limit", "a", "b", "c"], "rate_limit takes at most 2 argument(s)"),
    (["control", "pool_grow", "x"], "pool_grow n: invalid literal for int()"),
    (["inspect", "ping", "-t", "-1"], "must be >= 0 seconds"),
])
def test_usage_errors(url: str, args: list[str], message: str) -> None:
    done = wiretask(url, *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_the_queue_view_moved_to_queue_show(url: str, app: App) -> None:
    app.send_task("c.add", (1, 2))
    done = wiretask(url, "queue", "show", "celery", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["waiting"] == 1


def test_worker_command_takes_a_node_name_and_a_state_db(url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    statedb = tmp_path / "w.state"
    worker = subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "--broker", url, "worker", "-n", "w1@%h",
         "-S", str(statedb), "--pool", "solo", "-l", "WARNING"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    node = f"w1@{socket.gethostname()}"
    try:
        deadline = time.monotonic() + 30
        while wiretask(url, "inspect", "ping", "-d", node, "-t", "0.5").returncode != 0:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "the worker did not answer"
        assert wiretask(url, "control", "revoke", "gone", "-d", node).returncode == 0
    finally:
        worker.terminate()
        worker.wait(30)
    assert worker.returncode == 0
    assert json.loads(statedb.read_text())["revoked"][0][0] == "gone"
