"""Fixtures of the canvas tests: an app with a few tasks on the broker and result
backend of each bundled kind (memory, SQLite, Redis), and a worker for it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from wiretask.app import App
from wiretask.transports import memory
from wiretask.worker import Worker

KINDS = ["memory", "sqlite", "redis"]


def add_tasks(app: App) -> None:
    """``canvas.add``, ``canvas.tsum``, ``canvas.fail``, ``canvas.echo`` and two
    errbacks that record what they were called with in ``app.calls``."""
    calls: list[tuple[Any, ...]] = []
    app.calls = calls  # type: ignore[attr-defined]

    @app.task(name="canvas.add")
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name="canvas.tsum")
    def tsum(values: list[Any]) -> Any:
        return sum(values)

    @app.task(name="canvas.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="canvas.echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        return {"args": list(args), "kwargs": kwargs}

    @app.task(name="canvas.on_error")
    def on_error(request: Any, exc: BaseException, tb: Any) -> None:
        calls.append(("new", request.id, repr(exc)))

    @app.task(name="canvas.report")
    def report(task_id: str) -> str:
        calls.append(("old", task_id))
        return task_id


def url_for(kind: str, tmp_path: Path, redis_base_url: str | None) -> str:
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'canvas.db'}"
    assert redis_base_url is not None
    return f"{redis_base_url}/15"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "redis":
        request.applymarker(pytest.mark.redis)
    return kind


MakeApp = Callable[..., App]


@pytest.fixture
def make_app(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeApp]:
    """``make_app(**settings)``: an app with the canvas tasks on ``kind``'s broker and
    backend (the same URL for both), flushed/removed after the test."""
    redis_base = request.getfixturevalue("redis_base_url") if kind == "redis" else None
    url = url_for(kind, tmp_path, redis_base)
    if kind == "redis":
        redis.Redis.from_url(url).flushdb()
    apps: list[App] = []

    def make(**settings: Any) -> App:
        app = App("canvas", broker=url, backend=url, **settings)
        add_tasks(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    if kind == "memory":
        memory.reset(url.removeprefix("memory://"))
    if kind == "redis":
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@pytest.fixture
def app(make_app: MakeApp) -> App:
    return make_app()


@pytest.fixture
def worker(app: App) -> Iterator[Worker]:
    """A started thread-pool worker for ``app``."""
    with Worker(app, concurrency=2, shutdown_timeout=5) as started:
        yield started
