"""Running a job in the calling thread, under its time limits (the thread and solo
pools).

A soft time limit raises ``SoftTimeLimitExceeded`` inside the task's thread with
``PyThreadState_SetAsyncExc``; the exception is delivered at the next Python bytecode
the thread runs, so a task blocked in C code (a long ``time.sleep``, a socket read) sees
it only when that call returns. A thread cannot be killed: at the hard limit the worker
records ``FAILURE``/``TimeLimitExceeded``, acknowledges the message, raises
``TimeLimitExceeded`` in the thread the same way and gives up on it (a new thread takes
its place; whatever the old one does later is ignored).

Threading: a ``ThreadControl`` is armed by the thread running the task and fired by
its ``threading.Timer`` threads; its lock orders the two, so that exactly one of "the
body finished" and "the hard limit passed" wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from wiretask.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from wiretask.protocol import states
from wiretask.worker.outcome import Outcome

if TYPE_CHECKING:
    from wiretask.worker.job import Job
    from wiretask.worker.pools.base import PoolContext

__all__ = ["ThreadControl", "async_raise", "run_in_this_thread"]

logger = logging.getLogger("wiretask.worker")

class _Absorbed(BaseException):
    """Put in place of a time-limit exception still pending for the calling thread, and
    caught at once (``_take_pending``)."""


def _take_pending() -> None:
    """Take whatever asynchronous exception is pending for the calling thread.

    Clearing it with ``PyThreadState_SetAsyncExc(id, NULL)`` would leave CPython's
    interpreter-wide "async exception pending" flag set (only delivering an exception
    unsets it), after which, under a trace function (coverage, a debugger), every thread
    of the process livelocks. So the pending exception is replaced by ``_Absorbed``,
    which the loop below receives: the eval loop checks for it on every backward jump.
    """
    try:
        if async_raise(threading.get_ident(), _Absorbed):
            while True:
                pass
    except _Absorbed:
        return


def async_raise(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Raise ``exc_type`` in the thread ``thread_id`` at its next bytecode (``None``
    clears a pending one). Returns True if the thread was found."""
    # Imported here, not at the top: ctypes is ~0.8 MiB of the worker's RSS (issue 18's
    # bound), and only a time limit that fires needs it.
    import ctypes  # noqa: PLC0415

    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    # With no argtypes, ctypes passes None as a NULL pointer, which clears.
    target = ctypes.py_object(exc_type) if exc_type is not None else None
    found = int(set_async(ctypes.c_ulong(thread_id), target))
    if found > 1:  # cannot happen for a valid id; undo as the C API docs require
        set_async(ctypes.c_ulong(thread_id), None)
        return False
    return found == 1


class ThreadControl:
    """Time limits for a task body running in a worker thread.

    Args:
        soft: seconds until ``SoftTimeLimitExceeded`` is raised in the thread, or None.
        hard: seconds until ``on_hard`` is called, or None. ``on_hard`` records the
            outcome and replaces the thread; this object has already marked the run
            abandoned and raised ``TimeLimitExceeded`` in the thread by then.
        on_hard: called (from a timer thread) when the hard limit passes.
        describe: the task's ``name[id]`` for log lines.
    """

    def __init__(
        self,
        *,
        soft: float | None,
        hard: float | None,
        on_hard: Callable[[], None],
        describe: str,
    ) -> None:
        self._soft = soft
        self._hard = hard
        self._on_hard = on_hard
        self._describe = describe
        self._lock = threading.Lock()
        self._phase = "new"  # new -> running -> done | abandoned
        self._thread_id: int | None = None
        self._timers: list[threading.Timer] = []
        self._soft_raised = False  # the soft limit's exception was sent to the thread
        #: Set when the worker gives up on the run, even after the body ended (it may
        #: be storing the outcome, waiting for the backend to come back). Made by the
        #: first ``abandon`` or ``wait``: most runs need neither, and an Event is the
        #: dearest part of this object (~1.4 us of every task).
        self._given_up: threading.Event | None = None

    @property
    def abandoned(self) -> bool:
        return self._phase == "abandoned"

    def abandon(self) -> bool:
        """Give up on the run (the worker is stopping and requeues the message).
        Returns False if the body had already finished (a store of its outcome that is
        still waiting for the backend stops trying)."""
        self._event().set()
        with self._lock:
            if self._phase == "done":
                return False
            self._phase = "abandoned"
            self._cancel()
            return True

    def begin(self) -> None:
        with self._lock:
            if self._phase != "new":
                return
            self._phase = "running"
            self._thread_id = threading.get_ident()
            for delay, fire in ((self._soft, self._fire_soft), (self._hard, self._fire_hard)):
                if delay is not None:
                    timer = threading.Timer(delay, fire)
                    timer.daemon = True
                    timer.name = f"wiretask-timelimit-{self._describe}"
                    self._timers.append(timer)
                    timer.start()

    def end(self) -> bool:
        """Disarm the limits; called by the thread that ran the body. False if the run
        was abandoned (the hard limit passed, or the worker is stopping)."""
        with self._lock:
            self._cancel()
            if self._phase == "abandoned":
                return False
            self._phase = "done"
            if self._soft_raised:
                # The soft limit fired: its exception may still be pending for this
                # thread (it fired just before we took the lock). Take it here so it
                # cannot hit the worker's own code. (No limit fired: nothing pending.)
                _take_pending()
            return True

    def wait(self, seconds: float) -> bool:
        """Pause ``seconds`` before the next attempt to store the outcome; False once
        the worker gave up on the run."""
        return not self._event().wait(seconds)

    def _event(self) -> threading.Event:
        with self._lock:
            if self._given_up is None:
                self._given_up = threading.Event()
            return self._given_up

    def _cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _fire_soft(self) -> None:
        with self._lock:
            if self._phase != "running" or self._thread_id is None:
                return
            logger.warning("task %s: soft time limit (%gs) exceeded", self._describe, self._soft)
            self._soft_raised = async_raise(self._thread_id, SoftTimeLimitExceeded)

    def _fire_hard(self) -> None:
        with self._lock:
            if self._phase != "running" or self._thread_id is None:
                return
            self._phase = "abandoned"
            logger.error(
                "task %s: hard time limit (%gs) exceeded; a thread cannot be killed, so it "
                "is abandoned and replaced", self._describe, self._hard,
            )
            async_raise(self._thread_id, TimeLimitExceeded)
        self._on_hard()




def run_in_this_thread(
    context: PoolContext,
    job: Job,
    *,
    report: Callable[[Job, Outcome], None],
    replace: Callable[[], None],
) -> bool:
    """Run a claimed job's task in this thread, under its time limits, and report its
    outcome. False if the run was abandoned (its hard time limit passed, and
    ``replace`` started a new thread to take over from this one; or a stopping worker
    requeued it): the thread must then stop working for the pool."""
    tracer = context.tracer
    if context.on_start is not None:
        context.on_start(job)
    hard, soft = tracer.time_limits(job.message)

    def on_hard() -> None:
        # This thread is stuck in the task: a new one takes over its work.
        if not context.stopping.is_set():
            replace()
        exc = TimeLimitExceeded(hard or 0.0)
        report(job, tracer.fail_outside(job.message, job.delivery_info, exc))

    control = ThreadControl(soft=soft, hard=hard, on_hard=on_hard, describe=job.describe)
    job.control = control
    try:
        outcome = tracer.execute(job.message, delivery_info=job.delivery_info, control=control)
    except Exception as exc:
        # A bug in the worker, not in the task: keep the message, but out of the
        # queue, where it would fail the same way again and again.
        logger.exception("task %s: unexpected error in the worker", job.describe)
        outcome = Outcome(states.FAILURE, "dead_letter", reason=f"worker error: {exc!r}")
    if outcome.settle == "none":
        return False  # the outcome was recorded elsewhere
    report(job, outcome)
    return True
