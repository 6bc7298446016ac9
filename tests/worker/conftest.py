"""Fixtures for the worker tests: apps on real in-process and SQLite brokers, and a
recorder that tasks write to so that a test can see what ran, when and how often."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wiretask.app import App, Task
from wiretask.transports import memory
from wiretask.worker import Worker


class Recorder:
    """A thread-safe list of what tasks did, with a bounded wait."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._cv = threading.Condition()

    def add(self, *item: Any) -> None:
        with self._cv:
            self.items.append(item)
            self._cv.notify_all()

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._cv:
            return [item[1:] for item in self.items if item[0] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len([i for i in self.items if i[0] == kind]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"waited {timeout}s for {count} x {kind!r}: {self.items}")
                self._cv.wait(remaining)
        return self.of(kind)

    def note_task(self, app: App) -> Task[[int], int]:
        """Register ``note(i)`` on ``app``: it records ``("ran", i)`` here and returns
        ``i``."""

        @app.task
        def note(i: int) -> int:
            self.add("ran", i)
            return i

        return note


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


MakeApp = Callable[..., App]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """``make_app(kind="memory"|"sqlite", **settings)``: a fresh app on its own broker
    and result store; apps made in one test with the same kind share them."""
    apps: list[App] = []
    name = uuid.uuid4().hex

    def make(kind: str = "memory", **settings: Any) -> App:
        if kind == "memory":
            url = f"memory://{name}"
        elif kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'broker.db'}"
        else:
            raise AssertionError(kind)
        app = App("wt", broker=url, backend=url, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    memory.reset(name)


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


StartWorker = Callable[..., Worker]


#: Parametrize a test with this to run it on the thread pool, the solo pool and the
#: asyncio pool, which runs these (sync) tasks in its threads (``start_worker`` then uses
#: the ``pool`` value; ``concurrency`` is dropped for solo).
BOTH_POOLS = pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])


@pytest.fixture
def pool() -> str:
    """The pool ``start_worker`` uses unless told otherwise (see ``BOTH_POOLS``)."""
    return "threads"


@pytest.fixture
def start_worker(pool: str) -> Iterator[StartWorker]:
    """``start_worker(app, **options)``: a started worker, stopped after the test."""
    workers: list[Worker] = []

    def start(app: App, **options: Any) -> Worker:
        options.setdefault("pool", pool)
        if options["pool"] == "solo":
            options.pop("concurrency", None)
        else:
            options.setdefault("concurrency", 2)
        worker = Worker(app, **options)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)
