"""Every program in ``examples/`` runs, on a private embedded broker, and prints what its
docstring promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SRC

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, tmp_path: Path, *, broker: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    if broker:
        env["WIRETASK_BROKER_URL"] = f"sqlite:///{tmp_path / 'broker.db'}"
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )


def test_every_example_is_tested() -> None:
    # fastapi_app.py needs a worker process and Redis: tests/aio/test_fastapi_example.py.
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "errors.py", "fastapi_app.py", "progress.py", "quickstart.py",
    ]


@pytest.mark.parametrize("broker", [False, True], ids=["embedded-default", "broker-url"])
def test_quickstart(tmp_path: Path, broker: bool) -> None:
    done = run_example("quickstart.py", tmp_path, broker=broker)

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    where = tmp_path / "broker.db" if broker else tmp_path / "xdg" / "wiretask" / "wiretask.db"
    assert f"broker and results: sqlite:///{where}" in out
    assert where.exists()
    assert re.search(r"add\(2, 3\) called directly += 5$", out, re.MULTILINE)
    assert re.search(r"add\.delay\(2, 3\) += 5  \(SUCCESS\)$", out, re.MULTILINE)
    match = re.search(r"add countdown=1 += 20  \(after (\d+\.\d) s\)$", out, re.MULTILINE)
    assert match is not None
    assert float(match.group(1)) >= 1.0
    assert re.search(r"link=mul\.s\(10\) += 50$", out, re.MULTILINE)
    assert re.search(r"send_task\('quickstart\.add'\) += 42$", out, re.MULTILINE)


def test_progress(tmp_path: Path) -> None:
    done = run_example("progress.py", tmp_path, broker=True)

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        "  PROGRESS [#....] 1/5",
        "  PROGRESS [##...] 2/5",
        "  PROGRESS [###..] 3/5",
        "  PROGRESS [####.] 4/5",
        "  PROGRESS [#####] 5/5",
        "  SUCCESS: '5 images resized'",
        "get() returned '5 images resized'",
    ]


def test_errors(tmp_path: Path) -> None:
    done = run_example("errors.py", tmp_path, broker=True)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "divide(1, 0) raised ZeroDivisionError('division by zero'), state FAILURE",
        "the errback said: errors.divide failed: ZeroDivisionError('division by zero')",
        "an expired task ends REVOKED: TaskRevokedError('expired')",
        "no broker: PublishError after 3 attempts: ConnectionLost",
    ]
    assert "[worker log] ERROR task errors.divide[" in done.stderr
