"""The pool interface (``wiretask.worker.pools.base.Pool``): a pool written in a test
from that interface alone runs tasks through a real worker, and ``terminate`` ends a
running task where the pool can (the process pool) and is refused elsewhere."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wiretask.app import App
from wiretask.errors import ImproperlyConfigured, TaskRevokedError
from wiretask.events.receiver import EventReceiver
from wiretask.events.wire import event_exchange
from wiretask.protocol import states
from wiretask.protocol.celery import decode
from wiretask.transports.base import Broadcast
from wiretask.worker import Worker
from wiretask.worker.job import Job
from wiretask.worker.pools import POOLS, Pool, PoolContext, PoolSetup, ProcessPool
from wiretask.worker.pools._child import ChildProcess

from . import procapp
from .conftest import MakeApp, Recorder, wait_until

pytestmark = pytest.mark.timeout(60)


class OneThreadPool(Pool):
    """The smallest real pool: one thread of its own runs the jobs one at a time with
    the worker's tracer; ``hold`` keeps it from taking any (to see what the worker gives
    back at stop)."""

    name = "one-thread"

    def __init__(self, setup: PoolSetup) -> None:
        super().__init__(setup)
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.hold = threading.Event()
        self.submitted: list[str] = []
        self.stopped = False
        self._thread: threading.Thread | None = None

    def start(self, context: PoolContext) -> None:
        self._context = context
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.submitted.append(job.message.id)
        self.jobs.put(job)

    def _work(self) -> None:
        tracer = self.context.tracer
        while (job := self.jobs.get()) is not None:
            while self.hold.is_set():  # until stop(): the worker gave back what it could
                time.sleep(0.01)
            if job.claim():
                self.report(job, tracer.execute(job.message, delivery_info=job.delivery_info))

    def stop(self, until: float) -> None:
        self.stopped = True
        self.hold.clear()
        self.jobs.put(None)
        assert self._thread is not None
        self._thread.join(max(until - time.monotonic(), 0.0))


def test_a_pool_written_from_the_interface_runs_tasks_through_the_worker(
    make_app: MakeApp, kind: str, recorder: Recorder
) -> None:
    app = make_app(kind)
    note = recorder.note_task(app)
    worker = Worker(app, pool=OneThreadPool, concurrency=1, prefetch=2)
    assert (worker.pool, worker.concurrency) == ("one-thread", 1)
    with worker:
        results = [note.delay(i) for i in range(10)]
        assert [r.get(timeout=10) for r in results] == list(range(10))
        wait_until(lambda: worker.active == 0, what="every ack")
        pool = worker._pool  # the instance the worker made of the class
        assert isinstance(pool, OneThreadPool)
        assert pool.submitted == [r.id for r in results]
    assert pool.stopped
    assert app.transport.size("celery") == 0


def test_what_a_pool_has_not_started_is_given_back_at_stop(
    make_app: MakeApp, recorder: Recorder
) -> None:
    app = make_app()
    note = recorder.note_task(app)
    worker = Worker(app, pool=OneThreadPool, concurrency=1, prefetch=1)
    pool = worker._pool
    assert isinstance(pool, OneThreadPool)
    pool.hold.set()
    worker.start()
    results = [note.delay(i) for i in range(3)]
    wait_until(lambda: len(pool.submitted) == 2, what="two taken (room: 1 + prefetch 1)")
    worker.stop(timeout=5)
    assert recorder.of("ran") == []  # the pool claimed none: both were requeued
    assert app.transport.size("celery") == 3
    assert all(r.state == states.PENDING for r in results)


def test_pools_that_run_tasks_in_threads_refuse_to_terminate_one(
    make_app: MakeApp, recorder: Recorder
) -> None:
    app = make_app()
    recorder.note_task(app).delay(1)
    [delivery] = app.transport.receive_many(["celery"], limit=1, timeout=1)
    job = Job(delivery, decode(delivery.frame, app.registry))
    for name in ("threads", "solo"):
        pool = POOLS[name](PoolSetup(
            app=app, transport=app.transport, hostname="test", concurrency=1
        ))
        with pytest.raises(ImproperlyConfigured, match=f"pool='{name}' cannot terminate"):
            pool.terminate(job)
    delivery.ack()


def test_an_unknown_pool_is_refused_with_its_name(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown pool 'gevent'"):
        Worker(make_app(), pool="gevent")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="unknown pool"):
        Worker(make_app(), pool=dict)  # type: ignore[arg-type]


# -- terminate on the process pool ------------------------------------------------------


@pytest.fixture
def proc_app(tmp_path: Path) -> Iterator[App]:
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
@pytest.mark.timeout(90)
def test_the_process_pool_terminates_a_running_task(proc_app: App) -> None:
    app = proc_app
    assert isinstance(app.transport, Broadcast)
    receiver = EventReceiver(app.transport, event_exchange("sqlite"), app.registry)
    receiver.open()
    with Worker(app, pool="processes", concurrency=1, shutdown_timeout=10,
                send_events=True) as worker:
        before = procapp.whoami.delay().get(timeout=20)["pid"]
        result = procapp.nap.delay(30)

        def napping() -> Job | None:  # no public entry until revoke (issue 12)
            return next((j for j in worker._ledger.jobs() if j.message.id == result.id), None)

        wait_until(lambda: napping() is not None, timeout=10, what="received")
        job = napping()
        assert job is not None
        assert not worker._pool.terminate(Job(job.delivery, job.message))  # not this one
        # True once the child runs it (the slot may not have handed it over yet).
        wait_until(lambda: worker._pool.terminate(job), timeout=10, what="terminated")
        started = time.monotonic()
        with pytest.raises(TaskRevokedError, match="terminated"):
            result.get(timeout=10)
        assert time.monotonic() - started < 5
        assert result.state == states.REVOKED
        # The slot has a new child, and the message was acked (not run again).
        after = procapp.whoami.delay().get(timeout=20)["pid"]
        assert after != before
        wait_until(lambda: worker.active == 0, what="acked")
    assert app.transport.size("celery") == 0
    # Its task-revoked event says how it ended: terminated by SIGKILL (9), as the
    # process pool kills the child whatever signal was asked for (spec/events.md).
    try:
        revoked = next(e for e in receiver.itercapture(timeout=5)
                       if e["type"] == "task-revoked" and e["uuid"] == result.id)
    finally:
        receiver.close()
    assert (revoked["terminated"], revoked["signum"], revoked["expired"]) == (True, 9, False)


class TerminatedAsItFinishes(ProcessPool):
    """The process pool, terminating every job right as its child reports the outcome
    (the race ``terminate`` must survive)."""

    def _wait(
        self, child: ChildProcess, job: Job, hard: float | None, soft: float | None
    ) -> Any:
        ended = super()._wait(child, job, hard, soft)
        assert self.terminate(job)  # still running, as far as the slot has told
        return ended


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_task_terminated_as_it_finishes_keeps_its_outcome_and_the_slot_a_live_child(
    proc_app: App,
) -> None:
    with Worker(proc_app, pool=TerminatedAsItFinishes, concurrency=1, shutdown_timeout=10):
        first = procapp.whoami.delay().get(timeout=20)["pid"]
        # The next task runs (not WorkerLostError): the killed child was replaced.
        assert procapp.add.delay(2, 3).get(timeout=20) == 5
        assert procapp.whoami.delay().get(timeout=20)["pid"] != first
    assert proc_app.transport.size("celery") == 0
