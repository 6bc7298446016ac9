"""``wiretask worker`` and ``wiretask result`` as separate processes sharing one SQLite
file, and what ``-A`` says when the app cannot be loaded."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretask.cli import (
    CommandError,
    _nodename,
    _PidFile,
    _pool,
    _worker_app,
    build_parser,
    load_app,
    main,
)

from .conftest import CLI, wait_until


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


# -- Celery's worker command line ------------------------------------------------------------

CELERY_LAYOUT = '''
import os

from wiretask import App

app = App("proj", include=["proj.jobs"])
'''

JOBS = '''
import os
import time

from proj.celery import app


@app.task(bind=True)
def where(self):
    return {"pid": os.getpid(), "hostname": self.request.hostname}


@app.task
def nap(seconds):
    time.sleep(seconds)
    return "rested"
'''


@pytest.fixture
def celery_proj(cli: CLI) -> CLI:
    """``proj`` laid out as Celery's guide has it: the app in ``proj/celery.py``."""
    (cli.cwd / "proj" / "tasks.py").unlink()
    (cli.cwd / "proj" / "celery.py").write_text(CELERY_LAYOUT)
    (cli.cwd / "proj" / "jobs.py").write_text(JOBS)
    return cli


def _run_until_done(cli: CLI, worker_args: list[str], task_id: str) -> tuple[str, str]:
    worker = cli.popen(*worker_args)
    try:
        done = cli.run("result", task_id, "--wait", "30", "--json", timeout=60)
        assert done.returncode in (0, 1), done.stderr
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    return done.stdout, err


@pytest.mark.parametrize("order", ["app-first", "command-first"])
def test_dash_a_finds_proj_celery_app_before_or_after_the_command(
    celery_proj: CLI, order: str
) -> None:
    cli = celery_proj
    task_id = cli.ok("-A", "proj", "call", "proj.jobs.where").strip()
    args = ["-A", "proj", "worker"] if order == "app-first" else ["worker", "-A", "proj"]
    out, err = _run_until_done(cli, [*args, "-c", "1", "-n", "w1@%h"], task_id)
    meta = json.loads(out)
    assert meta["status"] == "SUCCESS"
    assert meta["result"]["hostname"] == f"w1@{socket.gethostname()}"
    assert "prefetch 4" in err  # Celery's default multiplier x concurrency 1


def test_prefork_pool_with_max_tasks_per_child(celery_proj: CLI) -> None:
    cli = celery_proj
    ids = [cli.ok("call", "proj.jobs.where").strip() for _ in range(3)]
    worker = cli.popen("-A", "proj", "worker", "-P", "prefork", "-c", "1",
                       "--max-tasks-per-child", "1", "--prefetch-multiplier", "1",
                       "-n", "%n-prefork")
    try:
        pids = []
        for task_id in ids:
            done = cli.run("result", task_id, "--wait", "60", "--json", timeout=90)
            meta = json.loads(done.stdout)
            assert meta["status"] == "SUCCESS", done.stdout
            pids.append(meta["result"]["pid"])
            assert meta["result"]["hostname"].startswith(
                socket.gethostname().partition(".")[0] + "-prefork@"
            )
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    assert len(set(pids)) == 3  # a new child for every task
    assert "processes pool" in err


def test_time_limit_exclude_queues_logfile_and_pidfile(celery_proj: CLI) -> None:
    cli = celery_proj
    slow = cli.ok("call", "proj.jobs.nap", "30").strip()
    other = cli.ok("call", "proj.jobs.where", "--queue", "other").strip()
    logfile, pidfile = cli.cwd / "worker.log", cli.cwd / "worker.pid"
    worker = cli.popen("-A", "proj", "worker", "-Q", "celery,other", "-X", "other",
                       "--time-limit", "0.5", "-c", "1", "--logfile", str(logfile),
                       "--pidfile", str(pidfile), "--without-gossip", "--without-mingle",
                       "--without-heartbeat", "-O", "fair", "-l", "info")
    try:
        done = cli.run("result", slow, "--wait", "30", timeout=60)
        assert "TimeLimitExceeded" in done.stdout, done.stdout + done.stderr
        assert pidfile.read_text().strip() == str(worker.pid)
        # A second worker with the same pidfile is refused while the first runs.
        twice = cli.run("-A", "proj", "worker", "--pidfile", str(pidfile), timeout=60)
        assert twice.returncode == 2
        assert f"names process {worker.pid}, which is running" in twice.stderr
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    assert not pidfile.exists()
    assert "ready: queues celery," in logfile.read_text()
    assert "hard time limit" in logfile.read_text()
    assert "state   PENDING" in cli.run("result", other).stdout  # -X: not consumed


def test_purge_removes_waiting_messages_before_starting(cli: CLI) -> None:
    stale = cli.ok("call", "proj.tasks.add", "1", "1").strip()
    worker = cli.popen("worker", "-A", "proj.tasks", "--purge", "-c", "1")
    try:
        wait_until(lambda: json.loads(cli.ok("queue", "show", "--json"))["waiting"] == 0)
        fresh = cli.ok("call", "proj.tasks.add", "2", "2").strip()
        assert cli.run("result", fresh, "--wait", "30", timeout=60).returncode == 0
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    assert "purged 1 message(s) from celery" in err
    assert "state   PENDING" in cli.run("result", stale).stdout


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["-D"], "-D/--detach is not supported: wiretask worker runs in the foreground"),
        (["--detach"], "service manager"),
        (["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"],
         "--scheduler is not supported: wiretask beat keeps its history in a file"),
        (["--autoscale", "10,3"], "--autoscale is not supported: the pool has a fixed size"),
        (["--uid", "1000"], "--uid is not supported: it belongs to --detach"),
        (["-P", "eventlet"], "'eventlet' is not supported: wiretask's worker does not run on "
                             "green threads"),
        (["-P", "gevent"], "'gevent' is not supported"),
        (["-P", "prefrok"], "unknown pool 'prefrok'; did you mean 'prefork'?"),
        (["--prefetch-multiplyer", "2"], "unrecognized arguments: --prefetch-multiplyer "
                                         "(did you mean --prefetch-multiplier?)"),
        (["--max-task-per-child", "2"], "(did you mean --max-tasks-per-child?)"),
        (["--prefetch", "1", "--prefetch-multiplier", "2"], "not allowed with argument"),
        (["-P", "threads", "--max-tasks-per-child", "5"],
         "worker_max_tasks_per_child=5: pool='threads' runs tasks in this process"),
    ],
)
def test_refused_and_unknown_worker_flags_say_why(
    cli: CLI, flags: list[str], says: str
) -> None:
    done = cli.run("worker", "-A", "proj.tasks", *flags, timeout=60)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


# -- the same rules in-process (fast, and measured by the coverage gate) ----------------------


@pytest.fixture
def project_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Packages for -A in a fresh directory on sys.path, forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def _package(root: Path, name: str, files: dict[str, str]) -> None:
    package = root / name
    package.mkdir()
    for filename, text in {"__init__.py": "", **files}.items():
        (package / filename).write_text(text)


APP = "from wiretask import App\napp = App('{name}', broker='memory://{name}')\n"


def test_load_app_follows_celerys_find_app(project_on_path: Path) -> None:
    root = project_on_path
    _package(root, "p_celery", {"celery.py": APP.format(name="p_celery")})
    _package(root, "p_attr", {"__init__.py": "from wiretask import App as _A\n"
                              "celery = _A('p_attr', broker='memory://p_attr')\n"})
    _package(root, "p_any", {"__init__.py": "from wiretask import App as _A\n"
                             "mine = _A('p_any', broker='memory://p_any')\n"})
    _package(root, "p_mod", {"tasks.py": APP.format(name="p_mod")})
    _package(root, "p_none", {})
    _package(root, "p_broken", {"celery.py": "raise RuntimeError('half-written')\n"})

    assert load_app("p_celery").main == "p_celery"  # the celery submodule's app
    assert load_app("p_attr").main == "p_attr"  # a 'celery' attribute
    assert load_app("p_any").main == "p_any"  # any App the module holds
    assert load_app("p_mod.tasks").main == "p_mod"  # a module's app
    assert load_app("p_mod.tasks:app").main == "p_mod"
    assert load_app("p_celery.celery.app").main == "p_celery"  # module.attribute, no colon
    with pytest.raises(CommandError, match="has no attribute 'app' \\(nor 'celery'"):
        load_app("p_none")
    with pytest.raises(CommandError, match=r"cannot import p_broken\.celery: RuntimeError"):
        load_app("p_broken")
    with pytest.raises(CommandError, match="cannot import 'p_missing'"):
        load_app("p_missing")
    with pytest.raises(CommandError, match="has no attribute 'nope'"):
        load_app("p_mod.tasks:nope")


def test_node_names_and_pools() -> None:
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    assert _nodename("w1@%h") == f"w1@{host}"
    assert _nodename("%n-x") == f"{short}-x@{host}"
    assert _nodename("a%%b@%d") == f"a%b@{domain}"
    with pytest.raises(argparse.ArgumentTypeError):
        _nodename("")
    assert [_pool(name) for name in ("prefork", "PROCESSES", "threads", "solo")] == [
        "processes", "processes", "threads", "solo",
    ]
    for refused in ("eventlet", "gevent", "custom"):
        with pytest.raises(argparse.ArgumentTypeError, match="not supported"):
            _pool(refused)
    with pytest.raises(argparse.ArgumentTypeError, match="did you mean 'solo'"):
        _pool("sola")


@pytest.mark.parametrize("flag", [
    ["-D"], ["--scheduler", "x"], ["--autoscale", "3,1"],
    ["--uid", "1"], ["--gid", "1"], ["--umask", "0"], ["--executable", "x"],
])
def test_refused_flags_in_process(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", *flag]) == 2
    err = capsys.readouterr().err
    assert "is not supported" in err and flag[0] in err


def test_unknown_flags_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["worker", "--concurency", "2", "stray"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--concurency (did you mean --concurrency?) 2 stray" in err


def test_worker_app_applies_the_flags(project_on_path: Path) -> None:
    _package(project_on_path, "p_flags", {"celery.py": APP.format(name="p_flags")})
    app = load_app("p_flags")
    app.send_task("p_flags.stale")
    args = build_parser().parse_args([
        "worker", "-Q", "celery,b,c", "-X", "b", "-I", "json", "--time-limit", "9",
        "--soft-time-limit", "7", "--disable-prefetch", "--purge",
    ])
    try:
        assert _worker_app(args, app) == ["celery", "c"]
        assert app.conf.include == ("json",)
        assert (app.conf.task_time_limit, app.conf.task_soft_time_limit) == (9, 7)
        assert app.conf.worker_disable_prefetch is True
        assert app.transport.size("celery") == 0  # purged
        everything = build_parser().parse_args(["worker", "-Q", "a", "-X", "a"])
        with pytest.raises(CommandError, match="every queue is excluded"):
            _worker_app(everything, app)
    finally:
        app.close()


def test_pidfile_written_removed_and_refused_while_its_process_runs(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    with _PidFile(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    path.write_text("999999999\n")  # stale: no such process
    with _PidFile(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(f"{child.pid}\n")
        with pytest.raises(CommandError, match=f"names process {child.pid}, which is running"):
            _PidFile(str(path)).__enter__()
    finally:
        child.kill()
        child.wait()
    path.write_text("not a pid")
    with pytest.raises(CommandError, match="cannot read"):
        _PidFile(str(path)).__enter__()
