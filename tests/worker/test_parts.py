"""The worker's parts on their own, without a running worker: the eta heap, the
settle-once job, the ledger's room, ack retry, settlement's batches and routing's
pipeline. They run on the real in-process broker; only the deliveries whose acks must
fail are wrapped."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import attrs
import pytest

from wiretask.app import App
from wiretask.errors import ConnectionLost, TransportError
from wiretask.protocol.celery import decode, encode
from wiretask.protocol.envelope import TaskMessage
from wiretask.protocol.frame import Route
from wiretask.transports import memory
from wiretask.transports.base import Delivery
from wiretask.transports.memory import MemoryTransport
from wiretask.worker.eta import EtaHeap
from wiretask.worker.job import Job
from wiretask.worker.ledger import Ledger
from wiretask.worker.outcome import Outcome
from wiretask.worker.routing import HoldEarly, LogReceived, Router
from wiretask.worker.settlement import AckRetry, Settlement

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def app() -> Iterator[App]:
    name = uuid.uuid4().hex
    application = App("parts", broker=f"memory://{name}", backend=f"memory://{name}")
    yield application
    application.close()
    memory.reset(name)


@pytest.fixture
def transport(app: App) -> Iterator[MemoryTransport]:
    t = app.new_transport()
    assert isinstance(t, MemoryTransport)
    t.connect()
    yield t
    t.close()


def _send(app: App, transport: MemoryTransport, count: int, **options: Any) -> None:
    for i in range(count):
        frame = encode(app.build_call("parts.note", (i,), **options).message, app.registry)
        transport.publish(frame, Route("celery"))


def _deliveries(transport: MemoryTransport, count: int) -> list[Delivery]:
    got = list(transport.receive_many(["celery"], limit=count, timeout=1))
    assert len(got) == count
    return got


def _jobs(app: App, transport: MemoryTransport, count: int) -> list[Job]:
    _send(app, transport, count)
    return [Job(d, decode(d.frame, app.registry)) for d in _deliveries(transport, count)]


class Flaky(Delivery):
    """A real delivery whose next acks fail as told (then go through), counting calls."""

    def __init__(self, inner: Delivery, failures: Sequence[TransportError] = ()) -> None:
        self.frame, self.queue, self.redelivered = inner.frame, inner.queue, inner.redelivered
        self.inner = inner
        self.failures = list(failures)
        self.calls: list[str] = []

    def ack(self) -> None:
        self.calls.append("ack")
        if self.failures:
            raise self.failures.pop(0)
        self.inner.ack()

    def reject(self, *, requeue: bool = False) -> None:
        self.calls.append("requeue" if requeue else "reject")
        self.inner.reject(requeue=requeue)

    def dead_letter(self, reason: str) -> None:
        self.calls.append("dead_letter")
        self.inner.dead_letter(reason)


# -- the eta heap ---------------------------------------------------------------------


def test_eta_heap_releases_in_eta_order_then_arrival_order(
    app: App, transport: MemoryTransport
) -> None:
    jobs = _jobs(app, transport, 4)
    heap = EtaHeap()
    for eta, job in zip([30.0, 10.0, 20.0, 10.0], jobs, strict=True):
        heap.push(eta, job.delivery, job.message)
    assert (len(heap), heap.next_eta) == (4, 10.0)
    assert heap.pop_due(9.9) == []
    due = heap.pop_due(20.0)
    assert [m.args for _, m in due] == [(1,), (3,), (2,)]  # 10 (first in), 10, 20
    assert (len(heap), heap.next_eta) == (1, 30.0)
    assert [m.args for _, m in heap.take_all()] == [(0,)]
    assert (len(heap), heap.next_eta, heap.take_all()) == (0, None, [])


# -- settle once ----------------------------------------------------------------------


def test_a_job_is_settled_once_and_a_claimed_job_is_not_given_back(
    app: App, transport: MemoryTransport
) -> None:
    queued, running = _jobs(app, transport, 2)
    assert running.claim()
    # A stopping worker gives back only what has not started.
    assert not running.take_settlement(only_if_queued=True)
    assert queued.take_settlement(only_if_queued=True)
    assert not queued.take_settlement()  # settled already
    assert not queued.claim()  # a pool that takes it now skips it
    assert running.take_settlement()
    assert not running.take_settlement()


def test_only_one_of_many_racing_settles_takes_effect(
    app: App, transport: MemoryTransport
) -> None:
    [job] = _jobs(app, transport, 1)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def settle() -> None:
        barrier.wait()
        wins.append(job.take_settlement())

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(wins) == [False] * 7 + [True]


# -- the ledger -----------------------------------------------------------------------


def test_room_counts_active_jobs_and_held_etas(app: App, transport: MemoryTransport) -> None:
    now = [1000.0]
    ledger = Ledger(capacity=3, eta_task_limit=2, clock=lambda: now[0])
    jobs = _jobs(app, transport, 4)
    assert ledger.room() == 2  # the eta limit is the tighter bound
    ledger.add(jobs[0])
    ledger.add(jobs[1])
    assert (ledger.active, ledger.room(), ledger.room(freed=2)) == (2, 1, 2)
    ledger.hold(1005.0, jobs[2].delivery, jobs[2].message)
    assert (ledger.held, ledger.room()) == (1, 1)
    ledger.hold(1001.0, jobs[3].delivery, jobs[3].message)
    assert ledger.room() == 0
    assert ledger.wait_for_room(0.01) is None  # no room: it waited
    assert ledger.release_due() == []
    now[0] = 1002.0
    assert [m.args for _, m in ledger.release_due()] == [(3,)]
    ledger.discard(jobs[0])
    assert ledger.room() == 1
    # With room, the receive timeout is cut to the next held eta.
    assert ledger.wait_for_room(10.0) == pytest.approx(3.0)
    held, active = ledger.give_back()
    assert [m.args for _, m in held] == [(2,)]
    assert active == [jobs[1]] == ledger.jobs()
    assert ledger.held == 0


# -- ack retry ------------------------------------------------------------------------


def test_ack_retry_stops_at_the_first_lost_connection_and_drops_refused_acks(
    app: App, transport: MemoryTransport
) -> None:
    lost = ConnectionLost("ack lost (test)")
    first, second, refused, last = (
        Flaky(d, failures) for d, failures in zip(
            _deliveries_after_send(app, transport, 4),
            [[], [lost], [TransportError("already settled (test)")], []], strict=True,
        )
    )
    retry = AckRetry(interval=5.0)
    assert not retry.due(0.0)  # nothing to retry
    retry.add([first, second, refused, last])
    assert retry.due(0.0)
    retry.retry(100.0)
    # Acked up to the broker going away again; the rest wait for the next interval.
    assert (first.calls, second.calls, refused.calls, last.calls) == (["ack"], ["ack"], [], [])
    assert len(retry) == 3
    assert not retry.due(104.9)
    assert retry.due(105.0)
    retry.retry(105.0)
    assert (second.calls, refused.calls, last.calls) == (["ack"] * 2, ["ack"], ["ack"])
    assert len(retry) == 0  # the refused one is not tried again
    assert transport.size("celery") == 0


def _deliveries_after_send(app: App, transport: MemoryTransport, count: int) -> list[Delivery]:
    _send(app, transport, count)
    return _deliveries(transport, count)


# -- settlement -----------------------------------------------------------------------


class Recording(MemoryTransport):
    """The in-process broker, recording the batch calls settlement makes."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.batches: list[tuple[str, int, int]] = []  # (call, acked, limit)
        self._outer = False

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if not self._outer:  # not the ack inside the default ack_and_receive
            self.batches.append(("ack_many", len(deliveries), 0))
        super().ack_many(deliveries)

    def ack_and_receive(
        self, deliveries: Sequence[Delivery], queues: Sequence[str], *, limit: int
    ) -> Sequence[Delivery]:
        self.batches.append(("ack_and_receive", len(deliveries), limit))
        self._outer = True
        try:
            return super().ack_and_receive(deliveries, queues, limit=limit)
        finally:
            self._outer = False


@pytest.fixture
def recording(transport: MemoryTransport) -> Iterator[Recording]:
    t = Recording(transport.name)
    t.connect()
    yield t
    t.close()


def _settlement(
    transport: MemoryTransport, ledger: Ledger, routed: list[Delivery],
    stopping: threading.Event | None = None,
) -> tuple[Settlement, AckRetry]:
    unacked = AckRetry()
    settlement = Settlement(
        transport, ["celery"], ledger, unacked, stopping or threading.Event(), routed.extend
    )
    return settlement, unacked


def test_acks_wait_for_a_commit_that_sends_them_in_one_call_and_refills(
    app: App, recording: Recording
) -> None:
    ledger = Ledger(capacity=3, eta_task_limit=100, clock=lambda: 0.0)
    routed: list[Delivery] = []
    settlement, _ = _settlement(recording, ledger, routed)
    jobs = _jobs(app, recording, 3)
    _send(app, recording, 5)  # waiting in the queue
    for job in jobs:
        ledger.add(job)
        job.claim()
        settlement.finish(job, Outcome("SUCCESS", "ack"))
    assert settlement.acks_waiting
    assert recording.batches == [] and ledger.active == 3  # queued, not sent
    settlement.commit()
    # One call acked the three and took three more (the room their acks made).
    assert recording.batches == [("ack_and_receive", 3, 3)]
    assert len(routed) == 3 and ledger.active == 0
    assert not settlement.acks_waiting
    settlement.commit()  # nothing queued: no call
    assert len(recording.batches) == 1
    assert recording.size("celery") == 2


def test_a_settle_takes_effect_once_and_a_failed_ack_is_kept_for_retry(
    app: App, transport: MemoryTransport
) -> None:
    ledger = Ledger(capacity=2, eta_task_limit=100, clock=lambda: 0.0)
    settlement, unacked = _settlement(transport, ledger, [])
    requeued, acked = _jobs(app, transport, 2)
    lost = Flaky(acked.delivery, [ConnectionLost("ack lost (test)")])
    acked.delivery = lost
    for job in (requeued, acked):
        ledger.add(job)
    settlement.settle(requeued, "requeue")
    settlement.settle(requeued, "dead_letter", reason="too late")  # ignored: settled
    settlement.finish(acked, Outcome("SUCCESS", "ack"))
    settlement.finish(acked, Outcome("FAILURE", "requeue"))  # ignored too
    assert settlement.flush(receive=False) == ()
    # The ack failed after the outcome was recorded: retried later, not requeued.
    assert lost.calls == ["ack"] and len(unacked) == 1
    assert ledger.active == 0
    assert transport.size("celery") == 1  # the requeued one, once
    assert transport.dead_letters("celery") == []
    unacked.retry(1.0)
    assert lost.calls == ["ack", "ack"] and len(unacked) == 0


def test_an_outcome_settled_elsewhere_is_left_alone(app: App, transport: MemoryTransport) -> None:
    ledger = Ledger(capacity=1, eta_task_limit=1, clock=lambda: 0.0)
    settlement, _ = _settlement(transport, ledger, [])
    [job] = _jobs(app, transport, 1)
    ledger.add(job)
    settlement.finish(job, Outcome("", "none"))  # a hard time limit recorded it
    assert not job.settled and ledger.active == 1 and not settlement.acks_waiting
    settlement.finish(job, Outcome("FAILURE", "dead_letter", reason="worker error (test)"))
    [dead] = transport.dead_letters("celery")
    assert dead.reason == "worker error (test)"
    assert ledger.active == 0


# -- routing --------------------------------------------------------------------------


class TakeOdd:
    """A step that takes messages with an odd argument (and says it saw each one)."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        self.seen.append(f"odd? {message.args[0]}")
        if message.args[0] % 2:
            delivery.ack()
            return True
        return False


def test_routing_runs_the_steps_in_order_and_dispatches_what_they_let_through(
    app: App, transport: MemoryTransport
) -> None:
    seen: list[str] = []
    dispatched: list[Job] = []
    ledger = Ledger(capacity=10, eta_task_limit=10, clock=lambda: app.now().timestamp())

    def after(delivery: Delivery, message: TaskMessage) -> bool:
        seen.append(f"after {message.args[0]}")
        return False

    stopping = threading.Event()
    router = Router(
        app, [TakeOdd(seen), LogReceived(), after], ledger, dispatched.append, stopping
    )
    _send(app, transport, 4)
    router.handle(_deliveries(transport, 4))
    assert seen == ["odd? 0", "after 0", "odd? 1", "odd? 2", "after 2", "odd? 3"]
    assert [job.message.args for job in dispatched] == [(0,), (2,)]
    assert ledger.jobs() and ledger.active == 2
    # A stopping worker routes nothing: what arrives goes back to the queue.
    stopping.set()
    _send(app, transport, 1)
    router.handle(_deliveries(transport, 1))
    assert len(dispatched) == 2 and transport.size("celery") == 1


def test_an_early_message_is_held_where_the_broker_cannot_delay_it(
    app: App, transport: MemoryTransport
) -> None:
    ledger = Ledger(capacity=10, eta_task_limit=10, clock=lambda: app.now().timestamp())
    dispatched: list[Job] = []

    class NoDelay(MemoryTransport):
        capabilities = attrs.evolve(memory.CAPABILITIES, native_delay=False)

    no_delay = NoDelay(transport.name)
    router = Router(
        app, [HoldEarly(app, no_delay, ledger, AckRetry())], ledger, dispatched.append,
        threading.Event(),
    )
    _send(app, transport, 1, countdown=30)
    _send(app, transport, 1, countdown=30, expires=app.now() - timedelta(seconds=1))
    _send(app, transport, 1)
    router.handle(_deliveries(transport, 3))
    # The early one is held; the expired one and the plain one go to the pool (the
    # tracer revokes the expired one).
    assert ledger.held == 1
    assert len(dispatched) == 2
