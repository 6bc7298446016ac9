"""Helpers of the beat tests: reading what a beat sent, and real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from wiretask.app import App
from wiretask.protocol.celery import decode
from wiretask.protocol.envelope import TaskMessage
from wiretask.transports.base import Inspection


def sent(app: App, queue: str = "celery") -> list[TaskMessage]:
    """The messages waiting in ``queue`` of the app's broker, decoded, oldest first."""
    transport: Any = app.transport
    assert isinstance(transport, Inspection)
    return [decode(item.frame, app.registry) for item in transport.peek(queue, limit=1000)]


# -- real processes -------------------------------------------------------------------------



SRC = Path(__file__).resolve().parents[2] / "src"


class Process:
    """A ``wiretask`` (or any) command in a child process; its stderr and stdout lines
    are read as they come, with the monotonic time each was read."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[tuple[float, str]] = []
        self.out: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[tuple[float, str]]) -> None:
        for line in stream:
            with self._lock:
                into.append((time.monotonic(), line.rstrip("\n")))

    def lines(self, pattern: str, stream: str = "err") -> list[tuple[float, re.Match[str]]]:
        """``(time, match)`` of every line (so far) that ``pattern`` is found in."""
        with self._lock:
            source = list(self.err if stream == "err" else self.out)
        found = []
        for at, line in source:
            match = re.search(pattern, line)
            if match:
                found.append((at, match))
        return found

    def text(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.err + self.out)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60,
                 stream: str = "err") -> list[tuple[float, re.Match[str]]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(pattern, stream)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                for reader in self._readers:
                    reader.join(5)
                found = self.lines(pattern, stream)
                if len(found) >= count:
                    return found
                pytest.fail(f"{self.argv} exited {self.proc.returncode} before {count} x "
                            f"{pattern!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{count} x {pattern!r} not seen within {timeout} s:\n"
                            f"{self.text()}")
            time.sleep(0.02)

    def _finish(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._finish()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._finish()


class Project:
    """A directory holding a small project, where ``wiretask`` commands run with a
    private environment and every child is stopped at the end."""

    def __init__(self, cwd: Path, broker_url: str) -> None:
        self.cwd = cwd
        self.broker_url = broker_url
        env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
        env.update(
            XDG_DATA_HOME=str(cwd / "xdg"),
            PYTHONPATH=os.pathsep.join([str(SRC), str(cwd), env.get("PYTHONPATH", "")]),
        )
        self.env = env
        self.children: list[Process] = []

    def wiretask(self, *args: str, broker: bool = True) -> Process:
        extra = ["--broker", self.broker_url] if broker else []
        child = Process([sys.executable, "-m", "wiretask.cli", *extra, *args], self.cwd,
                        self.env)
        self.children.append(child)
        return child

    def python(self, *args: str) -> Process:
        child = Process([sys.executable, *args], self.cwd, self.env)
        self.children.append(child)
        return child

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wiretask.cli", "--broker", self.broker_url, *args],
            cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    def cleanup(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.kill()
            else:
                child._finish()


@pytest.fixture
def project_factory(tmp_path: Path) -> Iterator[Callable[[str], Project]]:
    made: list[Project] = []

    def make(broker_url: str) -> Project:
        project = Project(tmp_path, broker_url)
        made.append(project)
        return project

    yield make
    for project in made:
        project.cleanup()
