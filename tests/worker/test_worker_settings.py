"""Celery's worker settings on wiretask's worker, through the public API: the prefetch
multiplier (and its 0 and disabled forms), ..."""

from __future__ import annotations

import threading
import time

import pytest

from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.worker import Worker

from .conftest import MakeApp, StartWorker, wait_until

pytestmark = pytest.mark.timeout(60)


# -- worker_prefetch_multiplier ----------------------------------------------------------


def test_the_prefetch_is_concurrency_times_the_multiplier(make_app: MakeApp) -> None:
    assert Worker(make_app(), concurrency=2).prefetch == 8  # Celery's default multiplier 4
    assert Worker(make_app(worker_prefetch_multiplier=3), concurrency=2).prefetch == 6
    assert Worker(make_app(), concurrency=3, prefetch_multiplier=1).prefetch == 3
    assert Worker(make_app(), pool="solo").prefetch == 4
    assert Worker(make_app(worker_prefetch_multiplier=0), concurrency=2).prefetch is None
    assert Worker(make_app(worker_disable_prefetch=True), concurrency=2).prefetch == 0
    # wiretask's own absolute prefetch wins over the setting.
    assert Worker(make_app(worker_prefetch_multiplier=3), concurrency=2, prefetch=1).prefetch == 1


def test_bad_multipliers_are_refused_by_name(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="worker_prefetch_multiplier"):
        make_app(worker_prefetch_multiplier=-1)
    with pytest.raises(ImproperlyConfigured, match="worker_disable_prefetch"):
        make_app(worker_disable_prefetch="yes")
    with pytest.raises(ValidationError, match="prefetch_multiplier"):
        Worker(make_app(), prefetch_multiplier=-2)
    with pytest.raises(ValidationError, match="not both"):
        Worker(make_app(), prefetch=1, prefetch_multiplier=1)


@pytest.mark.parametrize(
    ("settings", "pool", "taken"),
    [
        ({}, "threads", 1 + 4),  # one running, 1 x 4 reserved
        ({"worker_prefetch_multiplier": 2}, "threads", 1 + 2),
        ({"worker_disable_prefetch": True}, "threads", 1),
        ({}, "solo", 1 + 4),  # Celery's -P solo: concurrency 1, so 4 reserved
        ({"worker_prefetch_multiplier": 0}, "threads", 12),  # no limit: all of them
    ],
)
def test_a_busy_worker_reserves_concurrency_times_the_multiplier(
    make_app: MakeApp, start_worker: StartWorker, settings: dict[str, object], pool: str,
    taken: int,
) -> None:
    app = make_app(**settings)
    release = threading.Event()

    @app.task
    def hold() -> str:
        release.wait(10)
        return "done"

    results = [hold.delay() for _ in range(12)]
    worker = start_worker(app, pool=pool, concurrency=1)
    try:
        wait_until(lambda: worker.active == taken, what=f"{taken} messages taken")
        time.sleep(0.3)  # it must not take more while busy
        assert worker.active == taken
        assert app.transport.size("celery") == 12 - taken
    finally:
        release.set()
    assert [r.get(timeout=20) for r in results] == ["done"] * 12
