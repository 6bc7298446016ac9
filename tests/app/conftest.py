"""Fixtures for the app tests: an app on its own in-process broker and result store,
and a real worker for it, stopped after the test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wiretask.app import App
from wiretask.protocol.celery import decode
from wiretask.protocol.envelope import TaskMessage
from wiretask.transports import memory
from wiretask.worker import Worker

MakeApp = Callable[..., App]
StartWorker = Callable[..., Worker]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(**settings)``: a fresh app on its own memory broker and results."""
    apps: list[App] = []
    names: list[str] = []

    def make(main: str = "proj", **settings: Any) -> App:
        name = uuid.uuid4().hex
        names.append(name)
        settings.setdefault("broker", f"memory://{name}")
        settings.setdefault("backend", f"memory://{name}")
        app = App(main, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    for name in names:
        memory.reset(name)


@pytest.fixture
def app(make_app: MakeApp) -> App:
    return make_app()


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    """``start_worker(app, **options)``: a started thread-pool worker."""
    workers: list[Worker] = []

    def start(app: App, **options: Any) -> Worker:
        options.setdefault("concurrency", 2)
        worker = Worker(app, **options)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5)


def received(app: App, queue: str = "celery", timeout: float = 1.0) -> TaskMessage:
    """Take the next message off ``queue`` and decode it (fails if there is none)."""
    delivery = app.transport.receive([queue], timeout=timeout)
    assert delivery is not None, f"nothing in {queue!r}"
    delivery.ack()
    return decode(delivery.frame, app.registry)
