"""Fixtures for the asyncio API's tests: an app per broker kind, closed on its loop."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from wiretask.app import App
from wiretask.transports import memory

BROKERS = ["memory", "sqlite", "redis", "rpc"]


def broker_urls(kind: str, tmp_path: Path, url_of: Callable[[str], str]) -> tuple[str, str]:
    if kind == "memory":
        name = uuid.uuid4().hex
        return f"memory://{name}", f"memory://{name}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}", f"sqlite:///{tmp_path / 'results.db'}"
    if kind == "rpc":  # RabbitMQ, results as messages to this app's reply queue
        return url_of("amqp_url"), "rpc://"
    url = url_of("redis_url")
    return url, url


@pytest_asyncio.fixture(params=BROKERS)
async def aio_app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    """An app on each bundled broker and result backend (its own names, files, flushed
    Redis database or reply queue), closed (sync and asyncio) after the test."""

    def url_of(fixture: str) -> str:
        url: str = request.getfixturevalue(fixture)
        return url

    broker, backend = broker_urls(request.param, tmp_path, url_of)
    # Its own name: rpc://'s reply queue is named after the app (its oid).
    app = App(f"aio-{uuid.uuid4().hex[:8]}", broker=broker, backend=backend,
              set_as_current=False)
    yield app
    await app.aclose()
    app.close()
    if request.param == "memory":
        memory.reset(broker.removeprefix("memory://"))


def make_app(**settings: Any) -> App:
    name = uuid.uuid4().hex
    settings.setdefault("broker", f"memory://{name}")
    settings.setdefault("backend", f"memory://{name}")
    return App("aio", set_as_current=False, **settings)
