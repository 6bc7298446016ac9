"""The asyncio pool: ``async def`` tasks, many in flight on one event loop (``--pool
asyncio``).

One event loop runs in a thread of its own; ``submit`` hands each job to it
(``call_soon_threadsafe``, one wake-up for the jobs that arrive before the loop gets
to them) and it runs as an asyncio task, at most ``concurrency`` at once (the
prefetched ones wait their turn, unclaimed, so a stopping worker gives them back). The
tracer is the same as every pool's: its parts before and after the body
(``Tracer.start``: expiry, ``STARTED``; ``Tracer.conclude``: the final state, callbacks
or errbacks) and the report to settlement do blocking I/O, so they run in a few I/O
threads of the pool; only the body is awaited on the loop. So retries
(``self.retry()`` raises ``Retry`` as anywhere), callbacks, errbacks and result storage
are what the other pools do.

**The hot path.** Every hand-off between threads costs two wake-ups and a GIL switch
(this pool spent 2-3x the sync pools' CPU per task on them), so a task crosses as few
times as its work needs: ``start`` runs on the loop when it stores nothing
(``Tracer.start_without_io``: the common case, no ``STARTED``, not expired), else in an
I/O thread; ``conclude`` and the report (settlement, the ack) run in ONE I/O-thread
call, in the order they ran before, so the result is stored before the ack as on every
pool.

**Time limits**, the message's or ``task_time_limit``/``task_soft_time_limit``:

* soft: the body's asyncio task is cancelled and ``SoftTimeLimitExceeded`` is raised
  inside the coroutine, at the ``await`` it is suspended in (what it was awaiting is
  cancelled); the task may catch it and clean up, as with Celery.
* hard: the outcome is recorded as on the thread pool (``FAILURE`` with
  ``TimeLimitExceeded``, errbacks, the message acked), and the coroutine is cancelled;
  whatever it does after that is ignored.

Both are timers on the event loop: a coroutine that blocks the loop (CPU work or a
blocking call without ``await``) holds up every task on it and these timers with them,
as in any asyncio program; run such work with ``asyncio.to_thread``.

**A sync task** (a plain ``def``) sent to this pool runs in a thread, as on the thread
pool (the same slots, time limits and replacement of a thread stuck past its hard
limit): a thread pool of ``min(concurrency, 32)`` slot threads, started at the first
such task.

Inside an ``async def`` task the app's asyncio API works on the pool's loop (``await
other.adelay()``); ``await result.aget()`` is refused as ``get()`` is (it holds a slot
while it waits) unless ``disable_sync_subtasks=False``.

Threading: ``submit`` from the consumer thread; the loop thread runs the bodies (and
``Tracer.start_without_io``); the I/O threads run the tracer's halves that store and
``report``; ``abandon`` and ``stop`` from the thread
that stops the worker (``abandon`` hands the cancellation to the loop).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from wiretask.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from wiretask.protocol import states
from wiretask.worker.outcome import Outcome
from wiretask.worker.pools.base import Pool, PoolContext, PoolSetup
from wiretask.worker.pools.threads import ThreadPool
from wiretask.worker.tracer import Run

if TYPE_CHECKING:
    from wiretask.worker.job import Job
    from wiretask.worker.tracer import Started

__all__ = ["AsyncioPool"]

logger = logging.getLogger("wiretask.worker")

T = TypeVar("T")

#: Most threads that run sync tasks sent to this pool.
SYNC_THREADS = 32


class AsyncioPool(Pool):
    """``async def`` tasks on one event loop in a thread of its own (see the module
    doc)."""

    name = "asyncio"

    def __init__(self, setup: PoolSetup) -> None:
        super().__init__(setup)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads: ThreadPool | None = None
        self._threads_lock = threading.Lock()
        #: On the loop: tasks running, and jobs waiting for one of them to end.
        self._active = 0
        self._queued: collections.deque[Job] = collections.deque()
        #: Jobs submitted and not yet taken by the loop, and whether a wake-up of the
        #: loop is on its way for them (both under ``_inbox_lock``).
        self._inbox: list[Job] = []
        self._inbox_lock = threading.Lock()
        self._wake_pending = False

    # -- life cycle -------------------------------------------------------------------

    def start(self, context: PoolContext) -> None:
        self._context = context
        self._io = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, self.capacity + 4),
            thread_name_prefix=f"wiretask-asyncio-io-{self.setup.hostname}",
        )
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"wiretask-asyncio-{self.setup.hostname}",
            daemon=True,
        )
        self._thread.start()

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # What is left was abandoned by the stopping worker: cancel it, close the
            # app's connections on this loop, and the loop.
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            try:
                loop.run_until_complete(self._close_loop(leftover))
            finally:
                loop.close()

    async def _close_loop(self, leftover: set[asyncio.Task[Any]]) -> None:
        if leftover:
            await asyncio.wait(leftover, timeout=1.0)
        try:
            await self.setup.app.aclose()
        except Exception:
            logger.exception("the asyncio pool could not close the app's connections")
        await asyncio.get_running_loop().shutdown_asyncgens()

    def stop(self, until: float) -> None:
        threads = self._threads
        if threads is not None:
            threads.stop(until)
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # closed already
                pass
            thread.join(max(until - time.monotonic(), 0.0))
        if self._io is not None:
            self._io.shutdown(wait=False)

    # -- jobs -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        task = self.setup.app.tasks.get(job.message.task)
        if task is not None and not task.is_coroutine:
            self._sync_pool().submit(job)
            return
        assert self._loop is not None  # started before the consumer
        # Hot path: one wake-up of the loop (a write to its self-pipe, a GIL switch) for
        # every job that arrives before the loop has taken the earlier ones, not one
        # per job; the order of arrival is kept.
        with self._inbox_lock:
            self._inbox.append(job)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._take_inbox)

    def _take_inbox(self) -> None:
        """On the loop: begin the jobs submitted since the last wake-up, in order."""
        with self._inbox_lock:
            jobs, self._inbox = self._inbox, []
            self._wake_pending = False
        for job in jobs:
            self._begin(job)

    def _sync_pool(self) -> ThreadPool:
        """The threads that run the sync tasks sent here, started at the first one."""
        with self._threads_lock:
            if self._threads is None:
                setup = self.setup
                threads = ThreadPool(PoolSetup(
                    app=setup.app, transport=setup.transport, hostname=setup.hostname,
                    concurrency=min(self.capacity, SYNC_THREADS), app_path=setup.app_path,
                ))
                threads.start(self.context)
                self._threads = threads
            return self._threads

    def _begin(self, job: Job) -> None:
        """On the loop: start the job's asyncio task, unless it was given back, or
        queue it while ``capacity`` tasks run (the consumer takes a few messages more
        than there are free slots, the prefetch)."""
        if self._active >= self.capacity:
            self._queued.append(job)
            return
        if job.claim():
            self._active += 1
            task = asyncio.get_running_loop().create_task(self._run(job), name=job.describe)
            task.add_done_callback(self._done)

    def _done(self, _: asyncio.Task[None]) -> None:
        """On the loop: a job's task ended; start the next queued one."""
        self._active -= 1
        while self._queued and self._active < self.capacity:
            self._begin(self._queued.popleft())

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        assert self._io is not None
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    async def _run(self, job: Job) -> None:
        tracer = self.context.tracer
        message = job.message
        hard, soft = tracer.time_limits(message)
        control = _LoopControl(self, job, asyncio.current_task(), soft=soft, hard=hard)
        job.control = control
        outcome: Outcome | None = None
        ran: tuple[Started, Run] | None = None
        try:
            # Hot path (module doc): on the loop when it stores nothing, else in a thread.
            begun: Outcome | Started | None = tracer.start_without_io(message,
                                                                       job.delivery_info)
            if begun is None:
                begun = await self._in_thread(tracer.start, message, job.delivery_info,
                                              control)
            if isinstance(begun, Outcome):
                outcome = begun
            else:
                run = await self._body(job, begun, control)
                if run is None:
                    return  # the hard limit recorded the outcome, or the worker stopped
                ran = begun, run
        except Exception as exc:
            outcome = _worker_error(job, exc)
        # Outside the ``try``: an error of the report is not the tracer's.
        if ran is not None:
            # Hot path: the final state, the callbacks and the ack in one hand-off.
            await self._in_thread(self._conclude, job, *ran, control)
        elif outcome is not None and outcome.settle != "none":
            await self._in_thread(self.report, job, outcome)

    def _conclude(self, job: Job, started: Started, run: Run, control: _LoopControl) -> None:
        """In an I/O thread: ``Tracer.conclude``, then the report of its outcome (what
        ``_run`` did in two hand-offs; an error of the report's own reaches ``_run``
        as before, not caught as the tracer's)."""
        try:
            outcome = self.context.tracer.conclude(job.message, started, run, control)
        except Exception as exc:
            outcome = _worker_error(job, exc)
        if outcome.settle != "none":
            self.report(job, outcome)

    async def _body(self, job: Job, started: Started, control: _LoopControl) -> Run | None:
        """Await ``before_start`` and the task's body under its time limits, with the
        request current (as the tracer's ``_run_body`` runs them in a thread); ``None``
        if the run was given up (hard limit, or the worker stopping)."""
        task, request, message = started.task, started.request, job.message
        begun = time.monotonic()
        retval: Any = None
        error: BaseException | None = None
        with task.running(request):
            control.begin()
            try:
                if task.custom_hooks:
                    task.before_start(message.id, list(message.args), dict(message.kwargs))
                retval = task._trace_call(message.args, message.kwargs)
                if asyncio.iscoroutine(retval):
                    retval = await _Interruptible(retval, control)
            except asyncio.CancelledError as exc:
                if control.given_up:
                    return None
                error = exc  # the task cancelled itself, or was cancelled by what it awaits
            except BaseException as exc:  # a task never kills the worker
                error = exc
            finally:
                claimed = control.end()
        if not claimed:
            return None
        return Run(True, time.monotonic() - begun, retval, error)

    def _hard_limit(self, job: Job, hard: float) -> None:
        """From an I/O thread: record the hard limit's outcome as the thread pool does."""
        tracer = self.context.tracer
        self.report(job, tracer.fail_outside(job.message, job.delivery_info,
                                             TimeLimitExceeded(hard)))


def _worker_error(job: Job, exc: Exception) -> Outcome:
    """A bug in the worker, not in the task: keep the message, but out of the queue,
    where it would fail the same way again and again."""
    logger.exception("task %s: unexpected error in the worker", job.describe)
    return Outcome(states.FAILURE, "dead_letter", reason=f"worker error: {exc!r}")


class _LoopControl:
    """A job's time limits on the event loop, and how the stopping worker gives up on
    it (``Job.control``: ``abandon`` is called from another thread). The lock orders
    "the body finished" against "the hard limit passed" and "abandoned", so that exactly
    one of them wins."""

    def __init__(
        self, pool: AsyncioPool, job: Job, task: asyncio.Task[Any] | None, *,
        soft: float | None, hard: float | None,
    ) -> None:
        self._pool = pool
        self._job = job
        self._task = task
        self._soft = soft
        self._hard = hard
        self._lock = threading.Lock()
        self._phase = "new"  # new -> running -> done | abandoned
        self._timers: list[asyncio.TimerHandle] = []
        #: Set when the worker gives up on the run (``wait`` stops at once).
        self._given_up = threading.Event()
        #: The soft limit fired and its exception is still to be raised in the body.
        self._soft_pending = False

    @property
    def given_up(self) -> bool:
        return self._phase == "abandoned"

    def begin(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._phase != "new":
                return
            self._phase = "running"
        if self._soft is not None:
            self._timers.append(loop.call_later(self._soft, self._fire_soft))
        if self._hard is not None:
            self._timers.append(loop.call_later(self._hard, self._fire_hard))

    def end(self) -> bool:
        """Disarm the limits; False if the run was given up."""
        for timer in self._timers:
            timer.cancel()
        with self._lock:
            if self._phase == "abandoned":
                return False
            self._phase = "done"
            return True

    def abandon(self) -> bool:
        """The worker stops and requeues the message: cancel the body (from any
        thread). False if it had finished (a store of its outcome that is still waiting
        for the backend stops trying)."""
        self._given_up.set()
        with self._lock:
            if self._phase == "done":
                return False
            self._phase = "abandoned"
        loop, task = self._pool._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: nothing runs any more
                pass
        return True

    def wait(self, seconds: float) -> bool:
        """From an I/O thread: pause ``seconds`` before the next attempt to store the
        outcome; False once the worker gave up on the run."""
        return not self._given_up.wait(seconds)

    def take_soft(self) -> bool:
        """Whether a cancellation the body sees is the soft limit's (once)."""
        if self._soft_pending and self._phase == "running":
            self._soft_pending = False
            return True
        return False

    def _fire_soft(self) -> None:
        if self._phase != "running" or self._task is None:
            return
        logger.warning("task %s: soft time limit (%gs) exceeded", self._job.describe,
                       self._soft)
        self._soft_pending = True
        self._task.cancel()

    def _fire_hard(self) -> None:
        with self._lock:
            if self._phase != "running":
                return
            self._phase = "abandoned"
        hard = self._hard or 0.0
        logger.error("task %s: hard time limit (%gs) exceeded; its coroutine is cancelled",
                     self._job.describe, hard)
        if self._task is not None:
            self._task.cancel()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._pool._io, self._pool._hard_limit, self._job, hard)


class _Interruptible:
    """``await coro``, except that the soft time limit's cancellation reaches the
    coroutine as ``SoftTimeLimitExceeded``, raised at the ``await`` it is suspended in
    (the asyncio task's cancellation is withdrawn, so the coroutine may go on). Any
    other cancellation and any other exception reach it unchanged."""

    __slots__ = ("_control", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, Any], control: _LoopControl) -> None:
        self._coro = coro
        self._control = control

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except asyncio.CancelledError as exc:
                if self._control.take_soft():
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    error = SoftTimeLimitExceeded(
                        f"soft time limit ({self._control._soft:g}s) exceeded")
                else:
                    error = exc
            except BaseException as exc:
                error = exc
