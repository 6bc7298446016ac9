"""Fixtures for the interop tests: a Redis database per test module, Celery and
wiretask clients on it, and wiretask's delayed-delivery scheduler.

Each test module has its own database on the shared test server (``REDIS_DB`` in the
module, default 14), flushed before and after the module, so a module-scoped Celery
worker (``interop.support.CeleryWorker``) can be shared by its tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from interop import celery_tasks
from interop.support import wait_for_movers
from wiretask.transports.redis import run_scheduler


@pytest.fixture(scope="module")
def interop_url(redis_base_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis database for this module, flushed before and after it."""
    db = getattr(request.module, "REDIS_DB", 14)
    url = f"{redis_base_url}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def redis_client(interop_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(interop_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def celery_client(interop_url: str) -> Iterator[Celery]:
    """A Celery app (client only) on the module's database."""
    client = celery_tasks.make_client(interop_url)
    yield client
    client.close()


@pytest.fixture
def scheduler(interop_url: str) -> Iterator[None]:
    """``run_scheduler`` in a thread: moves wiretask's delayed messages when due. Ready
    once its heartbeat is written and every publisher's cached view of the heartbeats
    (at most ``MOVER_CACHE`` old) has seen it: from then on ``delay_mode=auto``
    publishers hold delayed messages broker-side."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_scheduler, args=(interop_url,),
        kwargs={"interval": 0.05, "stop_event": stop}, daemon=True,
    )
    thread.start()
    wait_for_movers(interop_url)
    yield
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the scheduler did not stop"
