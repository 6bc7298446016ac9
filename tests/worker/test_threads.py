"""The thread pool's batched acks: a slot with another job waiting leaves its ack
queued, the slot that runs out of jobs sends every queued ack (and the results written
with them) in one call, and the flusher sends acks that waited an interval, so a long
task never holds back the results of the quick ones before it. (The behaviour shared
with the solo pool is checked by the ``BOTH_POOLS`` tests in ``test_worker.py``.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from wiretask.app import App
from wiretask.protocol import states
from wiretask.worker import Worker
from wiretask.worker.pools.threads import THREADS_FLUSH_INTERVAL

from .conftest import MakeApp, Recorder, StartWorker, wait_until
from .test_redis_batches import Watched

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    application = App("wt", broker=redis_url, backend=redis_url)
    yield application
    application.close()


def test_acks_go_in_batches_each_after_its_result(
    app: App, redis_url: str, recorder: Recorder
) -> None:
    note = recorder.note_task(app)
    results = note.apply_many([((i,), {}) for i in range(60)])
    transport = Watched(redis_url, app)
    with Worker(app, concurrency=2, prefetch=6, transport=transport) as worker:
        assert [r.get(timeout=20) for r in results] == list(range(60))
        wait_until(lambda: len(transport.acked) == 60 and worker.active == 0,
                   what="every ack")
    assert sorted(transport.acked) == sorted(r.id for r in results)
    assert transport.unstored == []  # no ack before its outcome was stored
    assert sorted(transport.stored_with_ack) == sorted(r.id for r in results)
    # With 8 messages reserved, a call settles several tasks: far fewer calls than
    # tasks (one per task before the acks were batched).
    assert len(transport.refills) <= 30, transport.refills


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
    # One slot, both messages taken at once: the slot finds the slow job waiting when
    # the quick one ends, so the quick one's ack waits for the flusher.
    worker = start_worker(app, pool="threads", concurrency=1, prefetch=1)
    recorder.wait_for("slow started")
    wait_until(lambda: first.state == states.SUCCESS and worker.active == 1,
               timeout=40 * THREADS_FLUSH_INTERVAL, what="the quick task settled")
    assert second.state == states.PENDING
    release.set()
    assert second.get(timeout=10) == "slow"
    wait_until(lambda: worker.active == 0, what="the slow task acked")
