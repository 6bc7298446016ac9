"""Fixtures for the ``wiretask`` command: a private data directory and broker file, a
small importable project, and helpers that run the real command as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: The line every command writes to stderr to say which broker and results it uses.
BROKER_LINE = re.compile(r"^wiretask [a-z]+: broker \S+, results \S+$")

PROJECT = '''
from wiretask.app import App

app = App("proj")


@app.task
def add(x, y):
    return x + y


@app.task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task
def boom(reason):
    raise ValueError(reason)
'''


class CLI:
    """Runs ``python -m wiretask.cli`` in ``cwd`` with a private environment: the broker
    and results in one SQLite file under ``cwd``, ``XDG_DATA_HOME`` there too."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.db = cwd / "broker.db"
        self.broker_url = f"sqlite:///{self.db}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
        env.update(
            WIRETASK_BROKER_URL=self.broker_url,
            XDG_DATA_HOME=str(cwd / "xdg"),
            PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        )
        env.pop("NO_COLOR", None)
        self.env = env
        self._children: list[subprocess.Popen[str]] = []

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "wiretask.cli", *args]

    def run(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args), cwd=self.cwd, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        """Run and return stdout, failing the test (with stderr) on a non-zero exit."""
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    @staticmethod
    def errors(done: subprocess.CompletedProcess[str]) -> list[str]:
        """The lines of ``done``'s stderr other than the one every command writes to say
        which broker it talks to (there is at most one)."""
        lines = done.stderr.splitlines()
        announced = [line for line in lines if BROKER_LINE.match(line)]
        assert len(announced) <= 1, done.stderr
        return [line for line in lines if not BROKER_LINE.match(line)]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            self.command(args), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
        """SIGTERM ``child`` and return ``(exit code, stdout, stderr)``."""
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=timeout)
        return child.returncode, out, err

    def cleanup(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
                child.communicate()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    """The command, run in a fresh directory holding the ``proj`` package."""
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(PROJECT)
    runner = CLI(tmp_path)
    try:
        yield runner
    finally:
        runner.cleanup()


def wait_until(predicate: object, timeout: float = 30, interval: float = 0.1) -> None:
    """Poll ``predicate()`` until it is true or ``timeout`` passes (then fail)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")
