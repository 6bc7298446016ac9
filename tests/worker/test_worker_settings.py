"""Celery's worker settings on wiretask's worker, through the public API: the prefetch
multiplier (and its 0 and disabled forms), rate limits, when STARTED and ignored
failures are stored, how failed and timed-out messages are settled, result expiry, and
the process pool's child limits and lost children."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wiretask.app import App
from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.worker import Worker

from . import procapp
from .conftest import MakeApp, Recorder, StartWorker, wait_until

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


# -- rate limits ------------------------------------------------------------------------


def _start_times(recorder: Recorder, kind: str, count: int) -> list[float]:
    return sorted(item[0] for item in recorder.wait_for(kind, count, timeout=20))


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_rate_limited_task_waits_without_holding_back_other_tasks(
    make_app: MakeApp, start_worker: StartWorker, recorder: Recorder, pool: str
) -> None:
    app = make_app()

    @app.task(rate_limit="5/s")
    def limited(i: int) -> int:
        recorder.add("limited", time.monotonic())
        return i

    @app.task
    def free(i: int) -> int:
        recorder.add("free", time.monotonic())
        return i

    limited_results = [limited.delay(i) for i in range(4)]
    free_results = [free.delay(i) for i in range(4)]
    begin = time.monotonic()
    worker = start_worker(app, pool=pool, concurrency=2)
    assert [r.get(timeout=20) for r in free_results] == [0, 1, 2, 3]
    free_done = time.monotonic() - begin
    assert [r.get(timeout=20) for r in limited_results] == [0, 1, 2, 3]
    starts = _start_times(recorder, "limited", 4)
    # Celery's bucket (capacity 1): the first at once, then one every 1/5 s.
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.18 for gap in gaps), gaps
    assert starts[-1] - starts[0] >= 0.55
    # The other task's messages were not held behind the limited ones.
    assert free_done < starts[-1] - begin
    assert worker.held == 0


def test_task_default_rate_limit_and_worker_disable_rate_limits(
    make_app: MakeApp, start_worker: StartWorker, recorder: Recorder
) -> None:
    app = make_app(task_default_rate_limit="4/s")

    @app.task
    def paced(i: int) -> int:
        recorder.add("paced", time.monotonic())
        return i

    @app.task(rate_limit=None)
    def own() -> None:
        return None

    results = [paced.delay(i) for i in range(3)]
    start_worker(app)
    assert [r.get(timeout=20) for r in results] == [0, 1, 2]
    starts = _start_times(recorder, "paced", 3)
    assert starts[-1] - starts[0] >= 0.45

    fast = make_app("sqlite", task_default_rate_limit="1/m", worker_disable_rate_limits=True)

    @fast.task(rate_limit="1/m")
    def unlimited(i: int) -> int:
        return i

    many = [unlimited.delay(i) for i in range(5)]
    start_worker(fast)
    assert [r.get(timeout=10) for r in many] == list(range(5))  # not one a minute


def test_bad_rate_settings_are_refused_by_name(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="task_default_rate_limit"):
        make_app(task_default_rate_limit="ten a minute")
    with pytest.raises(ImproperlyConfigured, match="worker_disable_rate_limits"):
        make_app(worker_disable_rate_limits="yes")


# -- states: track_started, store_errors_even_if_ignored ---------------------------------------


@pytest.mark.parametrize(("setting", "option", "started"), [
    (False, None, False), (True, None, True), (False, True, True), (True, False, False),
])
def test_started_is_stored_only_when_tracking_is_on(
    make_app: MakeApp, start_worker: StartWorker, setting: bool, option: bool | None,
    started: bool,
) -> None:
    app = make_app(task_track_started=setting)

    @app.task(track_started=option)
    def job() -> str:
        return "done"

    result = job.delay()
    subscription = app.backend.subscribe(result.id)  # before the worker: sees every state
    start_worker(app)
    seen = []
    while not subscription.finished:
        meta = subscription.next(10)
        assert meta is not None, seen
        seen.append(meta["status"])
    subscription.close()
    assert seen == (["STARTED", "SUCCESS"] if started else ["SUCCESS"])


def test_store_errors_even_if_ignored(make_app: MakeApp, start_worker: StartWorker) -> None:
    app = make_app(task_store_errors_even_if_ignored=True)

    @app.task(ignore_result=True)
    def quiet(fail: bool) -> str:
        if fail:
            raise ValueError("stored anyway")
        return "not stored"

    @app.task(ignore_result=True, store_errors_even_if_ignored=False)
    def silent() -> None:
        raise ValueError("not stored")

    ok, bad, dropped = quiet.delay(False), quiet.delay(True), silent.delay()
    start_worker(app)
    wait_until(lambda: app.backend.get(bad.id) is not None, what="the stored failure")
    meta = app.backend.get(bad.id)
    assert meta is not None and meta["status"] == "FAILURE"
    assert meta["result"]["exc_message"] == ["stored anyway"]
    wait_until(lambda: app.transport.size("celery") == 0, what="all run")
    time.sleep(0.2)
    assert app.backend.get(ok.id) is None
    assert app.backend.get(dropped.id) is None


# -- acknowledgement of failures ------------------------------------------------------------


def test_acks_on_failure_false_dead_letters_the_failed_message(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app(task_acks_on_failure_or_timeout=False)

    @app.task
    def bad() -> None:
        raise KeyError("x")

    @app.task(acks_on_failure=True)
    def acked() -> None:
        raise KeyError("y")

    first, second = bad.delay(), acked.delay()
    start_worker(app)
    with pytest.raises(KeyError):
        first.get(timeout=10)
    with pytest.raises(KeyError):
        second.get(timeout=10)
    wait_until(lambda: len(app.transport.dead_letters("celery")) == 1, what="dead letter")
    [dead] = app.transport.dead_letters("celery")
    assert dead.frame.task_id == first.id
    assert "acks_on_failure is False" in dead.reason


def test_acks_on_timeout_false_requeues_a_task_past_its_hard_limit(
    make_app: MakeApp, start_worker: StartWorker, recorder: Recorder
) -> None:
    app = make_app()

    @app.task(bind=True, time_limit=0.3, acks_on_timeout=False)
    def slow_once(self: Any) -> str:
        recorder.add("try", self.request.delivery_info["redelivered"])
        if len(recorder.of("try")) == 1:
            time.sleep(1.0)  # past the hard limit: abandoned, requeued
        return "second time"

    result = slow_once.delay()
    start_worker(app, concurrency=2)
    recorder.wait_for("try", 2, timeout=20)
    wait_until(lambda: result.state == "SUCCESS", what="the second run", timeout=20)
    assert result.get(timeout=5) == "second time"


def test_bad_ack_options_are_refused_by_name(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="task_acks_on_failure"):
        make_app(task_acks_on_failure="no")
    with pytest.raises(ImproperlyConfigured, match=r"task_acks_late=False.*at most once"):
        make_app(task_acks_late=False)


# -- result_expires on the worker's stores ----------------------------------------------------


@pytest.mark.redis
def test_the_worker_stores_results_for_result_expires(redis_url: str) -> None:
    import redis as redis_client  # noqa: PLC0415 - only this test talks to Redis directly

    from wiretask.app import App  # noqa: PLC0415

    app = App("wt", broker=redis_url, backend=redis_url, result_expires=120)

    @app.task
    def job() -> int:
        return 1

    client = redis_client.Redis.from_url(redis_url)
    try:
        with Worker(app, concurrency=1):
            result = job.delay()
            assert result.get(timeout=10) == 1
        ttl = client.ttl(f"celery-task-meta-{result.id}")
        assert 100 < ttl <= 120
    finally:
        client.close()
        app.close()


# -- child processes: max tasks / memory per child, reject_on_worker_lost -----------------------


@pytest.fixture
def procapp_app(tmp_path: Path) -> Iterator[App]:
    """``procapp.app`` on a fresh SQLite file (its settings reach the children)."""
    saved = dict(procapp.app.conf)
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    procapp.app.conf.broker_url = url
    procapp.app.conf.result_backend = url
    yield procapp.app
    procapp.app.close()
    procapp.app.conf.clear()
    procapp.app.conf.update(saved)


@pytest.mark.slow
def test_max_tasks_per_child_replaces_the_child(procapp_app: App) -> None:
    procapp_app.conf.worker_max_tasks_per_child = 2
    with Worker(procapp_app, pool="processes", concurrency=1, shutdown_timeout=10):
        pids = [procapp.whoami.delay().get(timeout=30)["pid"] for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


@pytest.mark.slow
def test_max_memory_per_child_replaces_the_child_after_the_task(procapp_app: App) -> None:
    with Worker(procapp_app, pool="processes", concurrency=1, shutdown_timeout=10,
                max_memory_per_child=200 * 1024):
        small = procapp.hog.delay(1).get(timeout=30)
        assert procapp.hog.delay(1).get(timeout=30) == small  # under the limit: kept
        big = procapp.hog.delay(300).get(timeout=30)  # this one finishes, then...
        assert big == small
        after = procapp.whoami.delay().get(timeout=30)["pid"]
    assert after != small  # ... the child is replaced


def test_other_pools_refuse_child_limits_by_name(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"worker_max_tasks_per_child=3.*'threads'"):
        Worker(make_app(worker_max_tasks_per_child=3))
    with pytest.raises(ImproperlyConfigured, match=r"worker_max_memory_per_child.*'solo'"):
        Worker(make_app(), pool="solo", max_memory_per_child=1000)
    with pytest.raises(ValidationError, match="max_tasks_per_child"):
        Worker(make_app(), pool="threads", max_tasks_per_child=0)


@pytest.mark.slow
def test_reject_on_worker_lost_requeues_instead_of_failing(procapp_app: App) -> None:
    procapp_app.conf.task_reject_on_worker_lost = True
    with Worker(procapp_app, pool="processes", concurrency=1, shutdown_timeout=10) as worker:
        result = procapp.crash.delay(3)
        # The child dies every time: the message keeps coming back, never FAILURE.
        wait_until(lambda: procapp_app.transport.size("celery") + worker.active >= 1,
                   what="requeued")
        time.sleep(2.5)
        assert procapp_app.backend.get(result.id) is None
    assert procapp_app.transport.size("celery") == 1  # given back at stop


def test_resident_memory_is_the_current_figure_not_the_inherited_peak() -> None:
    from wiretask.worker.pools._child import rss_kib  # noqa: PLC0415 - the child's helper

    before = rss_kib()
    block = bytearray(64 * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    grown = rss_kib()
    del block
    assert before > 1000 and grown - before > 50 * 1024
