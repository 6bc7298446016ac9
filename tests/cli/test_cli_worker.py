"""``wiretask worker`` and ``wiretask result`` as separate processes sharing one SQLite
file, and what ``-A`` says when the app cannot be loaded."""

from __future__ import annotations

import json
import uuid

import pytest

from .conftest import CLI


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("no_such_module:app", "cannot import 'no_such_module': ModuleNotFoundError"),
        ("proj.broken:app", "cannot import 'proj.broken': RuntimeError: half-written"),
        ("proj.tasks:missing", "module 'proj.tasks' has no attribute 'missing'"),
        ("proj.tasks:add", "'proj.tasks:add' is a Task, not a wiretask App"),
        (":app", "expected 'package.module:app'"),
    ],
)
def test_worker_with_a_bad_app_path(cli: CLI, spec: str, named: str) -> None:
    (cli.cwd / "proj" / "broken.py").write_text("raise RuntimeError('half-written')\n")

    done = cli.run("worker", "-A", spec, timeout=30)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = cli.errors(done)
    assert line.startswith("wiretask worker: error: -A/--app: ")
    assert named in line


@pytest.mark.parametrize("pool", [["-c", "2"], ["--pool", "solo", "--prefetch", "3"]])
def test_worker_process_runs_tasks_sent_by_call_and_exits_0_on_sigterm(
    cli: CLI, pool: list[str]
) -> None:
    ok_id = cli.ok("call", "proj.tasks.add", "2", "3").strip()
    failed_id = cli.ok("call", "proj.tasks.boom", "bad input").strip()
    worker = cli.popen("worker", "-A", "proj.tasks:app", *pool, "--loglevel", "INFO")
    try:
        result = cli.run("result", ok_id, "--wait", "30", timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[:3] == [
            f"id      {ok_id}", "state   SUCCESS", "result  5",
        ]

        failure = cli.run("result", failed_id, "--wait", "30", timeout=60)
        assert failure.returncode == 1
        assert "state   FAILURE" in failure.stdout
        assert "result  ValueError('bad input')" in failure.stdout
        assert "Traceback (most recent call last)" in failure.stdout
        assert 'raise ValueError(reason)' in failure.stdout

        # Both were consumed (and are not waiting any more).
        assert json.loads(cli.ok("queue", "show", "--json"))["waiting"] == 0
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    assert "SIGTERM" in err
    assert "proj.tasks.add[" in err


def test_worker_consumes_the_queues_it_is_given(cli: CLI) -> None:
    math_id = cli.ok("call", "proj.tasks.add", "1", "1", "--queue", "math").strip()
    other_id = cli.ok("call", "proj.tasks.add", "9", "9", "--queue", "other").strip()
    worker = cli.popen("worker", "-A", "proj.tasks:app", "-Q", "math,extra", "-c", "1")
    try:
        done = cli.run("result", math_id, "--wait", "30", timeout=60)
        assert "state   SUCCESS" in done.stdout, done.stderr
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    pending = cli.run("result", other_id)
    assert "state   PENDING" in pending.stdout
    assert json.loads(cli.ok("queue", "show", "other", "--json"))["waiting"] == 1


def test_result_of_an_unknown_id_is_pending(cli: CLI) -> None:
    task_id = str(uuid.uuid4())

    done = cli.run("result", task_id)

    assert done.returncode == 0
    assert done.stdout.splitlines() == [f"id      {task_id}", "state   PENDING", "result  null"]


def test_result_wait_times_out(cli: CLI) -> None:
    task_id = str(uuid.uuid4())

    done = cli.run("result", task_id, "--wait", "0.3")

    assert done.returncode == 1
    [line] = cli.errors(done)
    assert "did not finish within 0.3 s (last state: PENDING)" in line


def test_result_json(cli: CLI) -> None:
    task_id = cli.ok("call", "proj.tasks.add", "20", "22").strip()
    worker = cli.popen("worker", "-A", "proj.tasks:app", "-c", "1")
    try:
        assert cli.run("result", task_id, "--wait", "30", timeout=60).returncode == 0
    finally:
        cli.stop(worker)

    meta = json.loads(cli.ok("result", task_id, "--json"))

    assert meta["status"] == "SUCCESS"
    assert meta["result"] == 42
    assert meta["task_id"] == task_id


def test_process_pool_needs_an_app_path(cli: CLI) -> None:
    done = cli.run("worker", "--pool", "processes")

    assert done.returncode == 2
    [line] = cli.errors(done)
    assert "--pool processes" in line
    assert "-A/--app" in line


def test_solo_pool_runs_one_task_at_a_time(cli: CLI) -> None:
    done = cli.run("worker", "-A", "proj.tasks:app", "--pool", "solo", "-c", "2")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = cli.errors(done)
    assert "concurrency" in line
    assert "pool='solo' runs one task at a time, so it must be 1, got 2" in line
