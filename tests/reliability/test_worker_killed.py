"""A worker killed with SIGKILL (issue 13 item 8, and the campaign's kill tests): its
process-pool children stop with it, and every task runs, duplicates bounded by what the
worker held when it died."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretask.app import App

from . import faultapp
from .support import alive, wait_until, worker_program

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}?visibility_timeout=2"


@pytest.fixture
def client(sqlite_url: str) -> Iterator[App]:
    app = App("faultapp-client", broker=sqlite_url, backend=sqlite_url)
    yield app
    app.close()


def test_process_pool_children_stop_when_the_worker_is_killed(
    tmp_path: Path, sqlite_url: str, client: App
) -> None:
    folder = tmp_path / "held"
    folder.mkdir()
    with worker_program(sqlite_url, "processes", concurrency=2,
                        log=tmp_path / "worker.log") as worker:
        for _ in range(2):
            client.send_task(faultapp.hold.name, (str(folder), 30))
        wait_until(lambda: len(list(folder.glob("*.pid"))) == 2, 60, "both tasks to start")
        children = [int(p.read_text()) for p in folder.glob("*.pid")]
        assert worker.pid not in children
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: not any(alive(pid) for pid in children), 5,
                   "the children of the killed worker to exit")
        assert time.monotonic() - killed < 5
    assert not list(folder.glob("*.done"))  # no task finished after its worker died
