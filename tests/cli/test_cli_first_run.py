"""First run: ``python -m wiretask``, one default broker file for every command and app,
every command saying which broker it talks to, and the worker reading the app's queues."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wiretask.transports.url import transport_from_url

from .conftest import BROKER_LINE, CLI


def without_broker_env(cli: CLI) -> dict[str, str]:
    """The CLI's environment with no broker configured: the embedded default applies."""
    return {k: v for k, v in cli.env.items() if not k.startswith("WIRETASK_")}


def run(cli: CLI, args: list[str], env: dict[str, str], timeout: float = 60,
        module: str = "wiretask") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cli.cwd, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def test_python_dash_m_wiretask_is_the_command(cli: CLI) -> None:
    done = run(cli, ["--version"], cli.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wiretask ")
    usage = run(cli, ["call", "--help"], cli.env)
    assert usage.returncode == 0 and "usage: wiretask call" in usage.stdout


def test_a_client_app_and_commands_without_an_app_meet_at_one_default_broker(
    cli: CLI,
) -> None:
    env = without_broker_env(cli)
    default = Path(env["XDG_DATA_HOME"]) / "wiretask" / "wiretask.db"
    # A client script with App("proj") sends; `wiretask result` without -A reads.
    sent = subprocess.run(
        [sys.executable, "-c", "from proj.tasks import add; print(add.delay(2, 3).id)"],
        cwd=cli.cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert default.exists()
    called = run(cli, ["call", "proj.tasks.add", "1", "1"], env)
    assert called.returncode == 0, called.stderr
    assert f"broker sqlite:///{default}" in called.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "wiretask", "worker", "-A", "proj.tasks:app", "-c", "1"],
        cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for ident, value in ((task_id, "5"), (called.stdout.strip(), "2")):
            done = run(cli, ["result", ident, "--wait", "30"], env)
            assert done.returncode == 0, done.stderr
            assert f"result  {value}" in done.stdout
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert f"broker sqlite:///{default}" in err


@pytest.mark.parametrize("command", [
    ["call", "proj.tasks.add", "1", "2"],
    ["result", "some-id"],
    ["queue", "show"],
    ["-A", "proj.tasks:app", "queue", "show", "celery"],
])
def test_every_command_says_which_broker_it_talks_to(cli: CLI, command: list[str]) -> None:
    done = cli.run(*command)
    assert done.returncode == 0, done.stderr
    announced = [line for line in done.stderr.splitlines() if BROKER_LINE.match(line)]
    assert announced == [
        f"wiretask {next(c for c in command if not c.startswith(('-', 'proj.tasks:')))}: "
        f"broker {cli.broker_url}, results {cli.broker_url}"
    ]


def test_the_announced_url_hides_the_password(cli: CLI) -> None:
    done = cli.run("--broker", "redis://:s3cret@127.0.0.1:1/0", "result", "some-id",
                   "--wait", "0", timeout=60)
    assert "s3cret" not in done.stderr
    assert "broker redis://:**@127.0.0.1:1/0" in done.stderr


def test_the_worker_consumes_the_apps_default_queue_and_concurrency(cli: CLI) -> None:
    (cli.cwd / "proj" / "jobs.py").write_text(
        "from wiretask.app import App\n"
        "app = App('proj', task_default_queue='jobs', worker_concurrency=3)\n"
        "@app.task\n"
        "def add(x, y):\n"
        "    return x + y\n"
    )
    task_id = cli.ok("-A", "proj.jobs:app", "call", "proj.jobs.add", "2", "2").strip()
    assert '"waiting": 1' in cli.ok("queue", "show", "jobs", "--json")
    worker = cli.popen("worker", "-A", "proj.jobs:app")
    try:
        done = cli.run("result", task_id, "--wait", "30")
        assert "result  4" in done.stdout, done.stderr
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    assert "queues jobs" in err and "concurrency 3" in err


def test_pickle_is_refused_with_how_to_opt_in(cli: CLI) -> None:
    done = cli.run("call", "proj.tasks.add", "1", "2", "--serializer", "pickle")
    assert done.returncode == 2
    [line] = cli.errors(done)
    assert "--serializer" in line
    assert "default_registry(pickle=True" in line
    transport = transport_from_url(cli.broker_url)
    try:
        assert transport.size("celery") == 0  # nothing was sent
    finally:
        transport.close()


def test_app_start_runs_the_command_for_the_scripts_app(cli: CLI) -> None:
    script = cli.cwd / "myapp.py"
    script.write_text(
        "from wiretask import App\n"
        "app = App('myapp', task_acks_late=True)\n"
        "@app.task\n"
        "def add(x, y):\n"
        "    return x + y\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit(app.start())\n"
    )
    task_id = subprocess.run(
        [sys.executable, "myapp.py", "call", "myapp.add", "16", "16"], cwd=cli.cwd,
        env=cli.env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    worker = subprocess.Popen(
        [sys.executable, "myapp.py", "worker", "-l", "INFO"], cwd=cli.cwd, env=cli.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        done = cli.run("result", task_id, "--wait", "30")
        assert "result  32" in done.stdout, done.stderr
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert "myapp.add[" in err


def test_an_app_with_a_transport_factory_announces_that_transport(cli: CLI) -> None:
    (cli.cwd / "proj" / "factory.py").write_text(
        "import functools\n"
        "from wiretask.app import App\n"
        "from wiretask.transports.memory import MemoryTransport\n"
        "app = App('proj', transport=functools.partial(MemoryTransport.from_url, "
        "'memory://made'), backend='memory://made')\n"
    )
    done = cli.run("-A", "proj.factory:app", "result", "some-id")
    assert done.returncode == 0, done.stderr
    assert "wiretask result: broker memory://made, results memory://made" in done.stderr
