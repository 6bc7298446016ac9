"""Celery's ``examples/periodic-tasks/myapp.py``, ported by its import line and broker URL
only (``examples/celery/periodic-tasks/``), run as its docstring says: a worker and a
beat, with ``python myapp.py ...`` (Celery's ``app.start()``) and with the command's
``-A myapp``; the periodic task ``say('hello')`` runs every 10 seconds."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Project

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "celery" / "periodic-tasks"
#: sha256 of Celery's examples/periodic-tasks/myapp.py (celery/celery, last changed in
#: 588a5558646ae5e863f6e0f22bcec5e57e29f1f7).
CELERY_SHA256 = "9525127b9b784af2867127a04c36a1b19b93f5267f5c62a24f9c8401858dc52a"
PORTED = {
    "from wiretask import App as Celery\n": "from celery import Celery\n",
    "    broker='redis://localhost:6379/0',\n": "    broker='amqp://guest@localhost//',\n",
}


def test_the_port_changes_only_the_import_line_and_the_broker_url() -> None:
    lines = (EXAMPLE / "myapp.py").read_text().splitlines(keepends=True)
    assert sum(line in PORTED for line in lines) == len(PORTED)

    original = "".join(PORTED.get(line, line) for line in lines)

    assert hashlib.sha256(original.encode()).hexdigest() == CELERY_SHA256


@pytest.mark.slow
@pytest.mark.redis
def test_the_periodic_tasks_example_runs_as_its_docstring_says(
    project_factory: Callable[[str], Project], redis_url: str, tmp_path: Path
) -> None:
    # The docstring's two ways, side by side: on Redis with python myapp.py (the test
    # server's URL given on the command line), and on SQLite with wiretask -A myapp.
    redis_dir, sqlite_dir = tmp_path / "redis", tmp_path / "sqlite"
    for where in (redis_dir, sqlite_dir):
        where.mkdir()
        shutil.copy(EXAMPLE / "myapp.py", where / "myapp.py")
    by_script = Project(redis_dir, redis_url)
    by_command = Project(sqlite_dir, f"sqlite:///{sqlite_dir / 'broker.db'}")
    for project in (by_script, by_command):
        project.env["PYTHONUNBUFFERED"] = "1"
    try:
        processes = [
            by_script.python("myapp.py", "worker", "-l", "INFO", "--broker", redis_url),
            by_script.python("myapp.py", "beat", "-l", "INFO", "--broker", redis_url),
            by_command.wiretask("-A", "myapp", "worker", "-l", "INFO"),
            by_command.wiretask("-A", "myapp", "beat", "-l", "INFO"),
        ]
        script_worker, script_beat, command_worker, command_beat = processes

        for worker, beat in ((script_worker, script_beat), (command_worker, command_beat)):
            beat.wait_for(r"Sending due task add every 10 \(myapp\.say\)", timeout=60)
            worker.wait_for(r"^hello$", stream="out", timeout=60)
        for process in processes:
            assert process.stop() == 0, process.text()
    finally:
        by_script.cleanup()
        by_command.cleanup()
    assert "broker redis://127.0.0.1" in script_beat.text()
