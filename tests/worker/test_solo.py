"""The solo pool: one task at a time in the consumer thread, the outcomes and acks of a
batch written in one call after it, and a long task never holding back the results of
the quick ones before it. (The behaviour shared with the thread pool is checked by the
``BOTH_POOLS`` tests in ``test_worker.py``.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from wiretask.app import App
from wiretask.errors import TimeLimitExceeded, ValidationError
from wiretask.protocol import states
from wiretask.worker import SOLO_FLUSH_INTERVAL, Worker

from .conftest import MakeApp, Recorder, StartWorker, wait_until
from .test_redis_batches import Watched

pytestmark = pytest.mark.timeout(60)


def test_tasks_run_one_at_a_time_in_the_consumer_thread(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)
    running = 0
    lock = threading.Lock()

    @app.task
    def note(i: int) -> int:
        nonlocal running
        with lock:
            running += 1
            recorder.add("ran", i, threading.current_thread().name, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        return i

    results = [note.delay(i) for i in range(12)]
    worker = start_worker(app, pool="solo", prefetch=3)
    assert worker.concurrency == 1
    assert [r.get(timeout=20) for r in results] == list(range(12))
    ran = recorder.of("ran")
    assert [i for i, _, _ in ran] == list(range(12))  # in order: one runner
    assert {name for _, name, _ in ran} == {f"wiretask-consumer-{worker.hostname}"}
    assert {at_once for _, _, at_once in ran} == {1}
    wait_until(lambda: worker.active == 0, what="the last batch acked")
    assert app.transport.size("celery") == 0


def test_a_long_task_does_not_hold_back_the_results_before_it(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()
    release = threading.Event()

    @app.task
    def quick() -> str:
        return "quick"

    @app.task
    def slow() -> str:
        recorder.add("slow started")
        release.wait(10)
        return "slow"

    first = quick.delay()
    second = slow.delay()
    worker = start_worker(app, pool="solo", prefetch=1)  # both in one batch
    recorder.wait_for("slow started")
    # The quick task's SUCCESS (and its ack: it stops counting as active) is written
    # while the slow one runs (within about SOLO_FLUSH_INTERVAL), not after it.
    wait_until(lambda: first.state == states.SUCCESS and worker.active == 1,
               timeout=40 * SOLO_FLUSH_INTERVAL, what="the quick task settled")
    assert second.state == states.PENDING
    release.set()
    assert second.get(timeout=10) == "slow"
    wait_until(lambda: worker.active == 0, what="the slow task acked")


def test_hard_time_limit_hands_the_rest_of_the_batch_to_a_new_consumer(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()
    done = threading.Event()

    @app.task(time_limit=0.3)
    def stubborn() -> str:
        recorder.add("stubborn", threading.current_thread().ident)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                time.sleep(0.02)
            except TimeLimitExceeded:
                recorder.add("interrupted")  # swallowed, as a task stuck in C would
        done.set()
        return "too late"

    @app.task
    def quick() -> str:
        recorder.add("quick", threading.current_thread().ident, done.is_set())
        return "quick"

    stuck = stubborn.delay()
    behind = quick.delay()  # received with it, waiting behind it
    worker = start_worker(app, pool="solo", prefetch=1)
    with pytest.raises(TimeLimitExceeded):
        stuck.get(timeout=5)
    assert behind.get(timeout=5) == "quick"
    [(ident, finished)] = recorder.of("quick")
    # Run by a new consumer thread while the old one is still stuck in the task.
    assert not finished
    assert [(ident,)] != recorder.of("stubborn")
    assert quick.delay().get(timeout=5) == "quick"  # and it goes on consuming
    done.wait(5)
    time.sleep(0.2)
    assert stuck.state == states.FAILURE  # the late return is ignored
    wait_until(lambda: worker.active == 0, what="everything acked")
    assert app.transport.size("celery") == 0


def test_solo_means_a_concurrency_of_one(make_app: MakeApp) -> None:
    app = make_app()
    assert Worker(app, pool="solo").concurrency == 1
    assert Worker(app, pool="solo", concurrency=1).concurrency == 1
    with pytest.raises(ValidationError, match="concurrency") as info:
        Worker(app, pool="solo", concurrency=4)
    assert info.value.field == "concurrency"
    assert "runs one task at a time" in str(info.value)


# -- on Redis: a batch's results and acks in one script -----------------------------


@pytest.fixture
def redis_app(redis_url: str) -> Iterator[App]:
    application = App("wt", broker=redis_url, backend=redis_url)
    yield application
    application.close()


@pytest.mark.redis
def test_a_batch_is_stored_acked_and_refilled_in_one_call(
    redis_app: App, redis_url: str, recorder: Recorder
) -> None:
    app = redis_app

    note = recorder.note_task(app)

    results = note.apply_many([((i,), {}) for i in range(20)])
    transport = Watched(redis_url, app)
    with Worker(app, pool="solo", prefetch=3, transport=transport):
        assert [r.get(timeout=20) for r in results] == list(range(20))
        wait_until(lambda: len(transport.acked) == 20, what="every ack")
    assert sorted(i for (i,) in recorder.of("ran")) == list(range(20))
    assert transport.unstored == []  # no ack before its result was stored
    assert sorted(transport.stored_with_ack) == sorted(r.id for r in results)
    # Batches of 1 + prefetch: one receive, then each batch's results, acks and the
    # next batch in one script run.
    assert transport.limits[0] == 4 and transport.received[0] == 4
    assert [got for _, got in transport.refills[:4]] == [4, 4, 4, 4]
    assert len(transport.refills) <= 6
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    finally:
        client.close()
    assert app.transport.size("celery") == 0


def test_stop_without_a_timeout_returns_when_the_running_task_hits_its_hard_limit(
    make_app: MakeApp, recorder: Recorder
) -> None:
    """The hard limit is recorded (and its ack queued) after the abandoned consumer
    left: the ack must still be sent, or stop() would wait for it for ever."""
    app = make_app()

    @app.task(time_limit=0.5)
    def spins() -> None:
        recorder.add("started")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            pass

    worker = Worker(app, pool="solo")
    worker.start()
    result = spins.delay()
    recorder.wait_for("started")
    stopper = threading.Thread(target=worker.stop)  # no timeout: waits for the task
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() hung"
    assert result.state == states.FAILURE
    assert app.transport.size("celery") == 0


def test_a_time_limit_no_timer_can_wait_for_is_no_limit(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task(time_limit=1e300, soft_time_limit=10.0**20)
    def patient() -> str:
        return "done"

    start_worker(app, pool="solo")
    assert patient.delay().get(timeout=10) == "done"
