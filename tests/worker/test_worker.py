"""The worker end to end on the thread pool, through the public API, on the in-process
and SQLite brokers: states, results, timing, counts and what is left on the broker."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import attrs
import pytest

from wiretask.app import App, Request
from wiretask.errors import (
    ConnectionLost,
    EncodeError,
    ImproperlyConfigured,
    NotRegistered,
    Reject,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    ValidationError,
)
from wiretask.protocol import states
from wiretask.protocol.celery import encode
from wiretask.protocol.frame import Frame, Route
from wiretask.protocol.signature import Signature
from wiretask.results.memory import MemoryBackend
from wiretask.transports.memory import CAPABILITIES, MemoryTransport
from wiretask.worker import Worker

from .conftest import BOTH_POOLS, MakeApp, Recorder, StartWorker, wait_until

pytestmark = pytest.mark.timeout(60)


def _raw_frame(app: App, name: str, args: tuple[Any, ...] = (), **options: Any) -> Frame:
    """The frame ``send_task`` would publish, for publishing it by hand (no broker-side
    delay: what Celery's Redis producer does with an eta message)."""
    return encode(app.build_call(name, args, **options).message, app.registry)


# -- running, acknowledging, counting -------------------------------------------------


@BOTH_POOLS
def test_success_is_stored_and_message_acked(
    make_app: MakeApp, kind: str, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start_worker(app)
    result = add.delay(2, 3)
    assert result.get(timeout=10) == 5
    meta = app.backend.get(result.id)
    assert meta is not None
    assert meta["status"] == states.SUCCESS
    assert meta["date_done"] is not None
    assert meta["task_id"] == result.id
    assert app.transport.size("celery") == 0
    assert app.transport.dead_letters("celery") == []


@BOTH_POOLS
def test_failure_stores_exception_and_traceback(
    make_app: MakeApp, kind: str, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    start_worker(app)
    result = boom.delay(1)
    with pytest.raises(ValueError, match="bad 1"):
        result.get(timeout=10)
    meta = app.backend.get(result.id)
    assert meta is not None
    assert meta["status"] == states.FAILURE
    assert meta["result"] == {
        "exc_type": "ValueError", "exc_message": ["bad 1"], "exc_module": "builtins",
    }
    assert "Traceback" in meta["traceback"]
    assert "ValueError: bad 1" in meta["traceback"]
    assert meta["date_done"] is not None
    assert app.transport.size("celery") == 0


@BOTH_POOLS
def test_every_task_runs_exactly_once(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    note = recorder.note_task(app)

    results = [note.delay(i) for i in range(40)]
    start_worker(app, concurrency=4)
    assert [r.get(timeout=20) for r in results] == list(range(40))
    time.sleep(0.3)  # a duplicate delivery would show up here
    assert sorted(i for (i,) in recorder.of("ran")) == list(range(40))
    assert app.transport.size("celery") == 0


def test_concurrency_runs_n_tasks_at_once(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()
    barrier = threading.Barrier(4, timeout=5)

    @app.task
    def meet(i: int) -> int:
        barrier.wait()  # only passes if 4 bodies run at the same time
        recorder.add("met", i)
        return i

    start_worker(app, concurrency=4)
    results = [meet.delay(i) for i in range(4)]
    assert sorted(r.get(timeout=10) for r in results) == [0, 1, 2, 3]


@pytest.mark.parametrize("prefetch", [0, 1])
def test_busy_worker_leaves_messages_for_others(
    make_app: MakeApp, start_worker: StartWorker, prefetch: int
) -> None:
    app = make_app()
    release = threading.Event()

    @app.task
    def hold() -> str:
        release.wait(5)
        return "done"

    results = [hold.delay() for _ in range(4)]
    worker = start_worker(app, concurrency=1, prefetch=prefetch)
    try:
        wait_until(lambda: worker.active == 1 + prefetch, what="messages taken")
        time.sleep(0.3)  # it must not take more while busy
        assert worker.active == 1 + prefetch
        assert app.transport.size("celery") == 4 - 1 - prefetch
        # A second worker gets the messages the busy one left.
        other = start_worker(app, concurrency=3, prefetch=0)
        wait_until(lambda: app.transport.size("celery") == 0, what="other worker took the rest")
        assert other.active >= 1
    finally:
        release.set()
    assert [r.get(timeout=10) for r in results] == ["done"] * 4


@BOTH_POOLS
def test_crashing_tasks_do_not_kill_the_worker(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def exits() -> None:
        raise SystemExit(3)

    @app.task
    def interrupts() -> None:
        raise KeyboardInterrupt

    @app.task
    def ok() -> str:
        return "ok"

    start_worker(app, concurrency=1)
    # SystemExit/KeyboardInterrupt are not Exceptions: a reader gets a synthesized
    # Exception class of the same name (never the real one, which would exit it).
    assert type(exits.delay().get(timeout=5, propagate=False)).__name__ == "SystemExit"
    failed = interrupts.delay().get(timeout=5, propagate=False)
    assert type(failed).__name__ == "KeyboardInterrupt"
    assert ok.delay().get(timeout=5) == "ok"


@BOTH_POOLS
def test_reject_requeues_or_dead_letters_the_message(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task(bind=True)
    def picky(self: Any) -> str:
        recorder.add("try", self.request.delivery_info["redelivered"])
        if len(recorder.of("try")) == 1:
            raise Reject("not yet", requeue=True)
        return "accepted"

    @app.task
    def refuses() -> None:
        raise Reject("never")

    start_worker(app, concurrency=1)
    assert picky.delay().get(timeout=5) == "accepted"
    assert recorder.of("try") == [(False,), (True,)]
    refused = refuses.delay()
    wait_until(lambda: len(app.transport.dead_letters("celery")) == 1, what="dead letter")
    [dead] = app.transport.dead_letters("celery")
    assert dead.reason == "rejected by the task: never"
    assert refused.state == states.PENDING  # Celery stores nothing for a rejection


def test_a_return_value_the_result_serializer_refuses_is_a_failure(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def returns_a_set() -> set[int]:
        return {1, 2}

    start_worker(app)
    result = returns_a_set.delay()
    failure = result.get(timeout=5, propagate=False)
    # EncodeError's constructor takes (field, problem), so the reader gets a class of
    # the same name rebuilt from the stored message.
    assert type(failure).__name__ == EncodeError.__name__
    assert "set is not JSON serializable" in str(failure)
    assert result.state == states.FAILURE
    assert app.transport.size("celery") == 0


# -- eta --------------------------------------------------------------------------------


@BOTH_POOLS
def test_countdown_never_runs_early(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task(bind=True)
    def when(self: Any) -> None:
        recorder.add("ran", app.now(), self.request.eta)

    start_worker(app)
    sent = app.now()
    result = when.apply_async(countdown=0.5)
    result.get(timeout=10)
    [(ran_at, eta)] = recorder.of("ran")
    assert eta is not None
    assert eta >= sent + timedelta(seconds=0.5)
    assert ran_at >= eta


@BOTH_POOLS
def test_early_eta_message_is_republished_with_a_broker_side_delay(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    """A message that arrives before its eta (Celery's Redis producer pushes it straight
    to the list) goes back to the broker with ``not_before`` and the early copy is
    acked: the worker holds nothing unacked while it waits."""
    app = make_app(kind)

    @app.task(bind=True)
    def when(self: Any) -> None:
        recorder.add("ran", app.now(), self.request.eta)

    frame = _raw_frame(app, when.name, countdown=0.8)
    app.transport.publish(frame, Route("celery"))
    worker = start_worker(app)
    wait_until(
        lambda: [p.state for p in app.transport.peek("celery")] == ["scheduled"],
        what="the message to be re-published as scheduled",
    )
    assert worker.active == 0
    assert worker.held == 0
    [(ran_at, eta)] = recorder.wait_for("ran", timeout=5)
    assert ran_at >= eta
    time.sleep(0.2)
    assert len(recorder.of("ran")) == 1
    assert app.transport.size("celery") == 0


class NoDelayMemoryTransport(MemoryTransport):
    """The in-process broker with its native delay switched off, as a transport without
    delayed delivery would be: the worker must hold early eta messages itself."""

    capabilities = attrs.evolve(CAPABILITIES, native_delay=False)


@BOTH_POOLS
def test_early_eta_held_without_tying_up_a_slot(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task(bind=True)
    def when(self: Any, label: str) -> None:
        recorder.add("ran", label, app.now(), self.request.eta)

    name = app.transport.url.removeprefix("memory://")
    app.transport.publish(_raw_frame(app, when.name, ("later",), countdown=0.6), Route("celery"))
    worker = start_worker(app, concurrency=1, transport=NoDelayMemoryTransport(name))
    wait_until(lambda: worker.held == 1, what="the eta message to be held")
    when.delay("now")  # runs at once: the held message takes no slot
    [(label, _, _)] = recorder.wait_for("ran", 1, timeout=2)
    assert label == "now"
    ran = recorder.wait_for("ran", 2, timeout=5)
    label, ran_at, eta = ran[1]
    assert label == "later"
    assert ran_at >= eta
    assert app.transport.size("celery") == 0


def test_eta_task_limit_stops_receiving(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def later(i: int) -> None:
        recorder.add("ran", i)

    name = app.transport.url.removeprefix("memory://")
    for i in range(3):
        app.transport.publish(_raw_frame(app, later.name, (i,), countdown=0.7), Route("celery"))
    worker = start_worker(
        app, concurrency=1, eta_task_limit=2, transport=NoDelayMemoryTransport(name)
    )
    wait_until(lambda: worker.held == 2, what="two held")
    time.sleep(0.2)
    assert worker.held == 2
    assert app.transport.size("celery") == 1  # left on the broker
    assert sorted(i for (i,) in recorder.wait_for("ran", 3, timeout=5)) == [0, 1, 2]


def test_stop_gives_back_held_eta_messages(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    def later() -> None:
        return None

    name = app.transport.url.removeprefix("memory://")
    app.transport.publish(_raw_frame(app, later.name, countdown=30), Route("celery"))
    worker = Worker(app, concurrency=1, transport=NoDelayMemoryTransport(name))
    worker.start()
    wait_until(lambda: worker.held == 1, what="held")
    worker.stop(timeout=1)
    assert app.transport.size("celery") == 1


# -- expires --------------------------------------------------------------------------


@BOTH_POOLS
def test_expired_task_is_revoked_not_run_and_errback_called(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def never() -> None:
        recorder.add("ran")

    @app.task(bind=True)
    def on_error(self: Any, task_id: str) -> None:
        recorder.add("errback", task_id, self.request.parent_id)

    result = never.apply_async(expires=0.1, link_error=on_error.s())
    time.sleep(0.2)
    start_worker(app)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    meta = app.backend.get(result.id)
    assert meta is not None
    assert meta["status"] == states.REVOKED
    assert meta["result"] == {
        "exc_type": "TaskRevokedError", "exc_message": ["expired"],
        "exc_module": "celery.exceptions",
    }
    assert meta["date_done"] is not None
    assert recorder.wait_for("errback") == [(result.id, result.id)]
    assert recorder.of("ran") == []


def test_expiry_is_checked_when_a_held_eta_comes_due(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def never() -> None:
        recorder.add("ran")

    name = app.transport.url.removeprefix("memory://")
    frame = _raw_frame(app, never.name, countdown=0.4, expires=0.2)
    app.transport.publish(frame, Route("celery"))
    start_worker(app, transport=NoDelayMemoryTransport(name))
    result = app.AsyncResult(str(frame.task_id))
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert recorder.of("ran") == []


# -- link, chain, link_error ----------------------------------------------------------


@BOTH_POOLS
def test_link_callbacks_get_the_result_and_parent_id(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def seen(self: Any, *args: Any, **kwargs: Any) -> None:
        recorder.add("cb", args, kwargs, self.request.parent_id, self.request.root_id)

    start_worker(app)
    result = add.apply_async(
        (2, 3), link=[seen.s(extra="x"), seen.si("immutable")]
    )
    assert result.get(timeout=10) == 5
    calls = sorted(recorder.wait_for("cb", 2), key=repr)
    assert calls == sorted(
        [((5,), {"extra": "x"}, result.id, result.id),
         (("immutable",), {}, result.id, result.id)],
        key=repr,
    )


@BOTH_POOLS
def test_chain_runs_next_task_last_in_the_list(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task(bind=True)
    def step(self: Any, value: int, label: str) -> int:
        recorder.add("step", label, value, self.request.parent_id, self.request.root_id)
        return value * 10

    start_worker(app)
    # Celery's order: the next task is the LAST element.
    first = step.apply_async((1, "a"), chain=[step.s("c"), step.s("b")])
    first.get(timeout=10)
    steps = recorder.wait_for("step", 3)
    assert [(label, value) for label, value, _, _ in steps] == [("a", 1), ("b", 10), ("c", 100)]
    assert steps[1][2] == first.id
    assert steps[2][2] != first.id  # c's parent is b
    assert {root for *_, root in steps} == {first.id}


def test_chain_failure_is_stored_forward(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def boom() -> None:
        raise ValueError("early")

    @app.task
    def never(value: Any) -> None:
        return None

    later_id = str(uuid.uuid4())
    start_worker(app)
    result = boom.apply_async(chain=[never.s().set(task_id=later_id)])
    with pytest.raises(ValueError, match="early"):
        result.get(timeout=10)
    with pytest.raises(ValueError, match="early"):
        app.AsyncResult(later_id).get(timeout=5)


@BOTH_POOLS
def test_link_error_new_style_runs_in_the_worker(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def boom() -> None:
        raise ValueError("nope")

    @app.task
    def on_error(request: Request, exc: BaseException, traceback: str, tag: str) -> None:
        recorder.add(
            "new", request.id, type(exc).__name__, traceback, tag,
            on_error.request.called_directly,
        )

    @app.task(bind=True)
    def on_error_bound(self: Any, request: Request, exc: BaseException, tb: str) -> None:
        recorder.add("bound", request.id, repr(exc), self.request.called_directly)

    start_worker(app)
    result = boom.apply_async(link_error=[on_error.s("t1"), on_error_bound.s()])
    with pytest.raises(ValueError):
        result.get(timeout=10)
    [(task_id, exc_name, traceback, tag, direct)] = recorder.wait_for("new")
    assert (task_id, exc_name, tag, direct) == (result.id, "ValueError", "t1", True)
    assert "ValueError: nope" in traceback
    # called_directly: it ran as a function call in the worker, not from a message.
    assert recorder.wait_for("bound") == [(result.id, "ValueError('nope')", True)]
    assert app.transport.size("celery") == 0


def test_link_error_old_style_is_sent_as_a_task(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def boom() -> None:
        raise ValueError("nope")

    @app.task(bind=True)
    def on_error(self: Any, task_id: str, tag: str) -> None:
        recorder.add(
            "old", task_id, tag, self.request.parent_id, self.request.root_id,
            self.request.called_directly,
        )

    start_worker(app)
    result = boom.apply_async(link_error=on_error.s("t"))
    with pytest.raises(ValueError):
        result.get(timeout=10)
    assert recorder.wait_for("old") == [(result.id, "t", result.id, result.id, False)]


def test_link_error_of_an_unknown_task_is_sent_with_the_failed_id(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def boom() -> None:
        raise ValueError("nope")

    start_worker(app, queues=["celery"])
    errback = Signature(task="elsewhere.report", args=(1,), options={"queue": "reports"})
    result = boom.apply_async(link_error=errback)
    with pytest.raises(ValueError):
        result.get(timeout=10)
    wait_until(lambda: app.transport.size("reports") == 1, what="errback message")
    [peeked] = app.transport.peek("reports")
    assert peeked.frame.headers["task"] == "elsewhere.report"
    assert peeked.frame.headers["parent_id"] == result.id
    assert peeked.frame.headers["argsrepr"] == repr((result.id, 1))


def test_an_errback_that_raises_does_not_stop_the_others(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()

    @app.task
    def boom() -> None:
        raise ValueError("nope")

    @app.task
    def broken(request: Request, exc: BaseException, tb: str) -> None:
        raise RuntimeError("errback bug")

    @app.task
    def fine(request: Request, exc: BaseException, tb: str) -> None:
        recorder.add("fine", request.id)

    @app.task
    def ok() -> str:
        return "ok"

    start_worker(app, concurrency=1)
    with caplog.at_level(logging.ERROR, logger="wiretask.worker"):
        result = boom.apply_async(link_error=[broken.s(), fine.s()])
        with pytest.raises(ValueError):
            result.get(timeout=10)
        assert recorder.wait_for("fine") == [(result.id,)]
        assert ok.delay().get(timeout=5) == "ok"
    assert any("errback" in r.getMessage() and "broken" in r.getMessage()
               for r in caplog.records)


# -- retry ----------------------------------------------------------------------------


@BOTH_POOLS
def test_retry_stores_retry_then_success_and_carries_expires(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        recorder.add("try", self.request.retries, self.request.expires, app.now(),
                     self.request.eta)
        if self.request.retries < 2:
            raise self.retry(exc=KeyError("again"), countdown=0.2)
        return "ok"

    result = flaky.apply_async(expires=30)
    subscription = app.backend.subscribe(result.id)
    start_worker(app)
    seen = []
    while not subscription.finished:
        meta = subscription.next(10)
        assert meta is not None, seen
        seen.append(meta)
    subscription.close()
    assert [m["status"] for m in seen] == ["RETRY", "RETRY", "SUCCESS"]
    assert seen[0]["result"] == {
        "exc_type": "KeyError", "exc_message": ["again"], "exc_module": "builtins",
    }
    assert "KeyError" in seen[0]["traceback"]
    assert seen[-1]["result"] == "ok"
    tries = recorder.of("try")
    assert [t[0] for t in tries] == [0, 1, 2]
    assert len({t[1] for t in tries}) == 1 and tries[0][1] is not None  # expires carried
    for _, _, ran_at, eta in tries[1:]:
        assert eta is not None and ran_at >= eta
    assert app.transport.size("celery") == 0


def test_retry_past_max_retries_fails_with_the_exception(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task(bind=True, max_retries=1)
    def hopeless(self: Any) -> None:
        recorder.add("try", self.request.retries)
        raise self.retry(exc=OSError("down"), countdown=0.1)

    start_worker(app)
    with pytest.raises(OSError, match="down"):
        hopeless.delay().get(timeout=10)
    assert [r for (r,) in recorder.of("try")] == [0, 1]


# -- time limits (threads) ------------------------------------------------------------


@BOTH_POOLS
def test_soft_time_limit_raises_inside_the_task(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task(soft_time_limit=0.2)
    def polite() -> str:
        try:
            for _ in range(250):
                time.sleep(0.02)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    @app.task(soft_time_limit=0.2)
    def careless() -> None:
        for _ in range(250):
            time.sleep(0.02)

    start_worker(app)
    started = time.monotonic()
    assert polite.delay().get(timeout=5) == "cleaned up"
    assert time.monotonic() - started < 2
    with pytest.raises(SoftTimeLimitExceeded):
        careless.delay().get(timeout=5)


@BOTH_POOLS
def test_hard_time_limit_records_failure_and_frees_the_slot(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()
    done = threading.Event()

    @app.task(time_limit=0.3)
    def stubborn() -> str:
        # Swallows the async TimeLimitExceeded like a task stuck in a C call would
        # ignore it: the thread cannot be stopped.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                time.sleep(0.02)
            except TimeLimitExceeded:
                recorder.add("interrupted")
        done.set()
        return "too late"

    @app.task
    def report(task_id: str) -> None:
        recorder.add("errback", task_id)

    @app.task
    def quick() -> str:
        recorder.add("quick", done.is_set())
        return "quick"

    start_worker(app, concurrency=1)
    started = time.monotonic()
    result = stubborn.apply_async(link_error=report.s())
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=5)
    assert time.monotonic() - started < 1.2
    assert recorder.wait_for("errback") == [(result.id,)]
    # The only slot was taken by the stuck thread; a new thread runs the next task.
    assert quick.delay().get(timeout=5) == "quick"
    assert recorder.of("quick") == [(False,)]
    assert recorder.wait_for("interrupted")
    done.wait(5)
    time.sleep(0.1)
    assert result.state == states.FAILURE  # the late return does not overwrite it
    meta = app.backend.get(result.id)
    assert meta is not None
    assert meta["result"]["exc_type"] == "TimeLimitExceeded"
    assert meta["result"]["exc_message"] == [0.3]


@BOTH_POOLS
def test_hard_time_limit_interrupts_a_python_loop(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task(time_limit=0.2)
    def spins() -> None:
        try:
            while True:
                time.sleep(0.01)
        finally:
            recorder.add("left")

    start_worker(app, concurrency=1)
    with pytest.raises(TimeLimitExceeded):
        spins.delay().get(timeout=5)
    assert recorder.wait_for("left", timeout=2) == [()]


# -- bad input ------------------------------------------------------------------------


@BOTH_POOLS
def test_unregistered_task_is_dead_lettered_and_fails(
    make_app: MakeApp, kind: str, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def ok() -> str:
        return "ok"

    start_worker(app)
    result = app.send_task("nobody.knows", (1,))
    with pytest.raises(NotRegistered):
        result.get(timeout=10)
    meta = app.backend.get(result.id)
    assert meta is not None
    assert meta["result"]["exc_type"] == "NotRegistered"
    wait_until(lambda: len(app.transport.dead_letters("celery")) == 1, what="dead letter")
    [dead] = app.transport.dead_letters("celery")
    assert dead.reason == "unregistered task nobody.knows"
    assert dead.frame is not None and dead.frame.task_id == result.id
    assert ok.delay().get(timeout=5) == "ok"  # still running


def test_arguments_that_do_not_bind_fail_with_type_error_and_are_acked(
    make_app: MakeApp, kind: str, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    sender = make_app(kind)  # knows no tasks, so nothing checks the arguments on send
    start_worker(app)
    result = sender.send_task(add.name, (1,))
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        result.get(timeout=10)
    assert app.transport.size("celery") == 0
    assert app.transport.dead_letters("celery") == []


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/json", b"[[1], {}, nul", "DecodeError"),
        ("application/x-python-serialize", b"\x80\x04N.", "ContentDisallowed"),
        ("application/json", b'{"not": "a task body"}', "MalformedMessage"),
    ],
)
@BOTH_POOLS
def test_undecodable_messages_are_dead_lettered_with_the_reason(
    make_app: MakeApp, kind: str, start_worker: StartWorker,
    content_type: str, body: bytes, expected: str,
) -> None:
    app = make_app(kind)

    @app.task
    def ok() -> str:
        return "ok"

    task_id = str(uuid.uuid4())
    frame = Frame(
        body=body, content_type=content_type, content_encoding="utf-8",
        headers={"task": ok.name, "id": task_id}, properties={"correlation_id": task_id},
    )
    app.transport.publish(frame, Route("celery"))
    start_worker(app)
    wait_until(lambda: len(app.transport.dead_letters("celery")) == 1, what="dead letter")
    [dead] = app.transport.dead_letters("celery")
    assert dead.reason.startswith(expected)
    assert ok.delay().get(timeout=5) == "ok"
    assert app.backend.get(task_id) is None  # Celery stores nothing for these either


# -- states ---------------------------------------------------------------------------


@BOTH_POOLS
def test_on_message_sees_started_progress_then_success(
    make_app: MakeApp, kind: str, start_worker: StartWorker
) -> None:
    app = make_app(kind, task_track_started=True)
    seen_first = threading.Event()

    @app.task(bind=True)
    def progress(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"current": 1, "total": 2})
        seen_first.wait(5)  # the listener has the first update: the rest arrive live
        self.update_state(state="PROGRESS", meta={"current": 2, "total": 2})
        return "done"

    worker = start_worker(app)
    messages: list[dict[str, Any]] = []

    def on_message(meta: dict[str, Any]) -> None:
        messages.append(meta)
        if meta["status"] == "PROGRESS":
            seen_first.set()

    result = progress.delay()
    assert result.get(timeout=10, on_message=on_message) == "done"
    statuses = [m["status"] for m in messages]
    assert statuses[-3:] == ["PROGRESS", "PROGRESS", "SUCCESS"]
    assert set(statuses[:-3]) <= {"STARTED"}
    assert [m["result"] for m in messages[-3:-1]] == [
        {"current": 1, "total": 2}, {"current": 2, "total": 2},
    ]
    started = app.backend.get(result.id)
    assert started is not None and started["status"] == "SUCCESS"
    assert worker.hostname.startswith("wiretask@")


def test_started_is_stored_with_pid_and_hostname_when_tracking(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()
    release = threading.Event()

    @app.task(track_started=True)
    def tracked() -> str:
        release.wait(5)
        return "ok"

    @app.task
    def untracked() -> str:
        release.wait(5)
        return "ok"

    worker = start_worker(app, hostname="node-1@test")
    result = tracked.delay()
    wait_until(lambda: result.state == states.STARTED, what="STARTED")
    assert result.info == {"pid": os.getpid(), "hostname": "node-1@test"}
    other = untracked.delay()
    wait_until(lambda: worker.active == 2, what="both running")
    time.sleep(0.1)
    assert other.state == states.PENDING
    release.set()
    assert result.get(timeout=5) == other.get(timeout=5) == "ok"


def test_ignore_result_stores_nothing_but_still_runs_callbacks(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    app = make_app(task_track_started=True)

    @app.task(ignore_result=True)
    def quiet() -> int:
        recorder.add("ran")
        return 7

    @app.task(ignore_result=True)
    def quiet_failure() -> None:
        raise ValueError("x")

    @app.task
    def after(value: Any) -> None:
        recorder.add("after", value)

    start_worker(app)
    ok = quiet.apply_async(link=after.s())
    failed = quiet_failure.apply_async(link_error=after.s())
    assert sorted(recorder.wait_for("after", 2), key=repr) == sorted(
        [(7,), (failed.id,)], key=repr
    )
    assert app.backend.get(ok.id) is None
    assert app.backend.get(failed.id) is None


# -- stopping -------------------------------------------------------------------------


@BOTH_POOLS
def test_stop_waits_for_a_running_task(
    make_app: MakeApp, kind: str, recorder: Recorder, pool: Any
) -> None:
    app = make_app(kind)

    @app.task
    def slow() -> str:
        recorder.add("started")
        time.sleep(0.5)
        return "finished"

    worker = Worker(app, concurrency=1, pool=pool)
    worker.start()
    result = slow.delay()
    recorder.wait_for("started")
    worker.stop(timeout=5)
    assert not worker.running
    assert result.get(timeout=1) == "finished"
    assert app.transport.size("celery") == 0


@BOTH_POOLS
def test_stop_requeues_a_task_that_does_not_finish_in_time(
    make_app: MakeApp, kind: str, recorder: Recorder, start_worker: StartWorker, pool: Any
) -> None:
    app = make_app(kind)

    @app.task
    def slow(run: int) -> int:
        recorder.add("started", run)
        time.sleep(1.0 if len(recorder.of("started")) == 1 else 0.0)
        return run

    @app.task
    def waiting() -> str:
        return "waiting"

    worker = Worker(app, concurrency=1, prefetch=1, pool=pool)
    result = slow.delay(1)
    queued = waiting.delay()  # prefetched behind the slow one, never started
    worker.start()  # (a solo worker takes messages only between tasks: both at once)
    recorder.wait_for("started")
    wait_until(lambda: worker.active == 2, what="prefetch")
    stopped_at = time.monotonic()
    worker.stop(timeout=0.2)
    assert time.monotonic() - stopped_at < 1.5
    assert result.state in (states.PENDING, states.STARTED)
    assert app.transport.size("celery") == 2  # both given back
    start_worker(app)
    assert result.get(timeout=10) == 1
    assert queued.get(timeout=10) == "waiting"
    time.sleep(1.0)  # the abandoned first run ends now: it must not store or ack anything
    assert app.transport.size("celery") == 0
    assert len(recorder.of("started")) == 2


def test_stop_before_start_and_twice_is_harmless(make_app: MakeApp) -> None:
    app = make_app()
    worker = Worker(app, concurrency=1)
    worker.stop()
    with Worker(app, concurrency=1) as other:
        assert other.running
    other.stop()
    assert not other.running


def test_a_worker_starts_once(make_app: MakeApp) -> None:
    worker = Worker(make_app(), concurrency=1)
    with worker:
        with pytest.raises(ImproperlyConfigured):
            worker.start()


# -- the result backend fails ---------------------------------------------------------


class OutageBackend(MemoryBackend):
    """The in-process result store with a one-store outage: while ``down`` is set, the
    next store fails as a lost connection would, and the store is back after it."""

    down = threading.Event()

    def store(self, task_id: str, meta: Any) -> None:
        if self.down.is_set():
            self.down.clear()
            raise ConnectionLost("result store unreachable (test outage)")
        super().store(task_id, meta)


@BOTH_POOLS
def test_a_result_that_cannot_be_stored_is_stored_when_the_backend_is_back(
    make_app: MakeApp, recorder: Recorder, start_worker: StartWorker
) -> None:
    """The store is tried again (with backoff) until it goes through; the task ran and
    does not run again (issue 13 item 3; it used to be requeued and run twice)."""
    app = make_app()
    backend = OutageBackend(app.backend_url, registry=app.registry)
    app._backend = backend  # the app's own backend, with the outage switch

    @app.task
    def once() -> str:
        recorder.add("ran")
        return "stored"

    start_worker(app, concurrency=1)
    backend.down.set()
    result = once.delay()
    assert result.get(timeout=5) == "stored"
    assert not backend.down.is_set()
    assert app.transport.size("celery") == 0
    assert recorder.of("ran") == [()]  # once


# -- options --------------------------------------------------------------------------


def test_bad_options_are_refused(make_app: MakeApp) -> None:
    app = make_app()
    with pytest.raises(ValidationError):
        Worker(app, concurrency=0)
    with pytest.raises(ValidationError):
        Worker(app, queues=[""])
    with pytest.raises(ValidationError):
        Worker(app, prefetch=-1)
    with pytest.raises(ImproperlyConfigured):
        Worker(app, pool="gevent")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="in-process"):
        Worker(app, pool="processes")


def test_consumes_only_its_queues(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    @app.task
    def where() -> str:
        return "ran"

    start_worker(app, queues=["math", "io"])
    assert where.apply_async(queue="io").get(timeout=5) == "ran"
    assert where.apply_async(queue="math").get(timeout=5) == "ran"
    where.apply_async(queue="celery")
    time.sleep(0.3)
    assert app.transport.size("celery") == 1


def test_settings_with_celery_names_configure_the_worker(make_app: MakeApp) -> None:
    app = make_app(worker_eta_task_limit=7, worker_concurrency=3, task_default_queue="jobs")
    worker = Worker(app)
    assert (worker.eta_task_limit, worker.concurrency, worker.queues) == (7, 3, ["jobs"])
    assert Worker(make_app()).eta_task_limit == 1000
