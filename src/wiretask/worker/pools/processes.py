"""The process pool: each of ``concurrency`` slots owns one child process.

A slot thread in the worker process takes a job from the queue, sends its message to
its child (``_child.ChildProcess``), and waits for the outcome, which it reports to
settlement like the thread pool does (the acks of all slots batched by group commit).
The child enforces the soft time limit (``SIGALRM``); the hard limit is enforced here,
as Celery's prefork pool does: the slot kills the child, records
``FAILURE``/``TimeLimitExceeded`` and starts a new child. A child that dies on its own
(a crash, ``os._exit``) is recorded as ``WorkerLostError`` and replaced the same way,
and ``terminate`` kills the child running a given job on request.

A child that has run ``max_tasks_per_child`` tasks, or whose resident memory
after a task is above ``max_memory_per_child`` KiB, is replaced after that task, as
Celery's prefork pool recycles its children (a leaking task's memory goes back to the
system).

It needs a broker and a result backend that other processes can reach, and an app
the children can import (``app_path``, found among the imported modules when not
given); the constructor refuses anything else.

Threading: each slot thread owns its child; ``_lock`` guards which job each slot is
running (``_running``), read by ``terminate`` from another thread. A job's
``abandoned``/``terminated`` flags are set by the stopping or terminating thread and
read by the slot at its next poll.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Literal

from wiretask.errors import ImproperlyConfigured, TimeLimitExceeded, WorkerLostError
from wiretask.worker.ledger import POLL_INTERVAL
from wiretask.worker.outcome import Outcome
from wiretask.worker.pools._child import (
    ChildProcess,
    find_app_path,
    portable_settings,
    spawn_context,
)
from wiretask.worker.pools.base import Pool, PoolContext, PoolSetup

if TYPE_CHECKING:
    from wiretask.worker.job import Job

__all__ = ["ProcessPool"]

logger = logging.getLogger("wiretask.worker")

#: Longest pause between attempts to start a child that failed to start (doubling from
#: 0.5 s).
MAX_CHILD_BACKOFF = 5.0

#: Why a slot stopped waiting for its child without an outcome.
_Ended = Literal["lost", "timeout", "abandoned"]


class ProcessPool(Pool):
    """``concurrency`` child processes, each running one task at a time."""

    name = "processes"
    replaces_children = True

    def __init__(self, setup: PoolSetup) -> None:
        super().__init__(setup)
        self.app_path = self._check(setup)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._slots: list[threading.Thread] = []
        self._children: list[ChildProcess] = []
        self._lock = threading.Lock()
        self._running: dict[int, Job] = {}  # slot index -> the job its child runs

    @staticmethod
    def _check(setup: PoolSetup) -> str:
        if not setup.transport.capabilities.multi_process:
            raise ImproperlyConfigured(
                f"pool='processes' needs a broker other processes can reach; "
                f"{setup.transport.url} is in-process"
            )
        if urllib.parse.urlsplit(setup.app.backend_url).scheme == "memory":
            raise ImproperlyConfigured(
                "pool='processes' needs a result backend other processes can reach; "
                "memory:// is in-process"
            )
        app_path = setup.app_path if setup.app_path is not None else find_app_path(setup.app)
        if app_path is None:
            raise ImproperlyConfigured(
                "pool='processes' needs to import the app in each child: pass "
                "app_path='package.module:app' (an app defined in __main__ cannot be found)"
            )
        return app_path

    # -- life cycle -------------------------------------------------------------------

    def start(self, context: PoolContext) -> None:
        self._context = context
        children = [self._new_child(i) for i in range(self.capacity)]
        try:
            for child in children:
                child.wait_ready()
        except ImproperlyConfigured:
            for child in children:
                child.kill()
            raise
        self._children = children
        for index in range(self.capacity):
            thread = threading.Thread(
                target=self._slot, args=(index,), name=f"wiretask-slot-{index}", daemon=True
            )
            self._slots.append(thread)
            thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def terminate(self, job: Job) -> bool:
        """Kill the child running ``job`` (SIGKILL: the child ignores SIGTERM). Its
        outcome is ``REVOKED`` with Celery's ``TaskRevokedError('terminated')``, its
        message is acked, and a new child takes the slot."""
        with self._lock:
            index = next((i for i, running in self._running.items() if running is job), None)
            if index is None:
                return False
            job.terminated = True
            child = self._children[index]
        logger.warning("task %s: terminating its child process %s", job.describe, child.pid)
        child.signal_kill()
        return True

    def processes(self) -> list[int]:
        return [child.pid for child in self._children if child.pid is not None]

    def worker_pid(self, job: Job) -> int | None:
        with self._lock:
            index = next((i for i, running in self._running.items() if running is job), None)
            return None if index is None else self._children[index].pid

    def stop(self, until: float) -> None:
        slots = list(self._slots)
        for _ in slots:
            self._jobs.put(None)
        for slot in slots:
            slot.join(max(until - time.monotonic(), 0.0))
        for child in self._children:
            child.close()

    # -- a slot -----------------------------------------------------------------------

    def _new_child(self, index: int) -> ChildProcess:
        assert self.app_path is not None  # checked by the constructor
        return ChildProcess(
            spawn_context(),
            app_path=self.app_path,
            settings=portable_settings(self.setup.app.conf),
            hostname=self.setup.hostname,
            log_level=logging.getLogger("wiretask").getEffectiveLevel(),
            index=index,
        )

    def _slot(self, index: int) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.claim() and not self._run(index, job):
                return

    def _run(self, index: int, job: Job) -> bool:
        """Run ``job`` in the slot's child and report its outcome. False if the slot
        must end (the worker is stopping)."""
        child = self._children[index]
        if self.context.on_start is not None:
            self.context.on_start(job)
        hard, soft = self.context.tracer.time_limits(job.message)
        with self._lock:
            self._running[index] = job
        try:
            ended = self._wait(child, job, hard, soft)
        finally:
            with self._lock:
                del self._running[index]
        if isinstance(ended, Outcome):
            self.report(job, ended)
            if not job.terminated:
                if not self._spent(child):
                    return True
                child.close()
                return self._replace_child(index)
            # Terminated as it finished: the outcome stands, but the child is killed.
            child.kill()
            return self._replace_child(index)
        child.kill()
        if ended == "abandoned":  # requeued by a stopping worker
            return False
        self.report(job, self._failure(job, child, ended, hard))
        return self._replace_child(index)

    def _wait(
        self, child: ChildProcess, job: Job, hard: float | None, soft: float | None
    ) -> Outcome | _Ended:
        """Hand the job to the child and wait for its outcome, its hard time limit,
        the child's death, or the worker giving up on it."""
        deadline = None if hard is None else time.monotonic() + hard
        try:
            child.submit(job.message, job.delivery_info, soft)
        except (OSError, ValueError):
            return "lost"
        while not job.abandoned:
            wait = POLL_INTERVAL
            if deadline is not None:
                wait = max(min(wait, deadline - time.monotonic()), 0.0)
            try:
                outcome = child.wait(wait)
            except (EOFError, OSError):
                return "lost"
            if outcome is not None:
                return outcome
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"
        return "abandoned"

    def _spent(self, child: ChildProcess) -> bool:
        """Whether ``child`` is to be replaced after the task it just ran."""
        setup = self.setup
        if setup.max_tasks_per_child is not None and (
            child.tasks_run >= setup.max_tasks_per_child
        ):
            logger.info("child process %s ran %d task(s) (max_tasks_per_child): replaced",
                        child.pid, child.tasks_run)
            return True
        if setup.max_memory_per_child is not None and (
            child.rss_kib > setup.max_memory_per_child
        ):
            logger.warning(
                "child process %s uses %d KiB, above max_memory_per_child (%d KiB): "
                "replaced", child.pid, child.rss_kib, setup.max_memory_per_child,
            )
            return True
        return False

    def _failure(
        self, job: Job, child: ChildProcess, ended: _Ended, hard: float | None
    ) -> Outcome:
        """The outcome of a run whose child was killed or died."""
        tracer = self.context.tracer
        if job.terminated:
            # The child was sent SIGKILL (terminate), whatever signal was asked for.
            return tracer.revoke(job.message, "terminated", signum=int(signal.SIGKILL))
        if ended == "lost":
            exc = WorkerLostError(f"worker process exited with exit code {child.exitcode}")
            logger.error("task %s: %s", job.describe, exc)
            return tracer.fail_outside(job.message, job.delivery_info, exc)
        logger.error(
            "task %s: hard time limit (%gs) exceeded; child process %s killed",
            job.describe, hard, child.pid,
        )
        return tracer.fail_outside(
            job.message, job.delivery_info, TimeLimitExceeded(hard or 0.0)
        )

    def _replace_child(self, index: int) -> bool:
        """Start a new child for slot ``index`` (retrying until it starts or the
        worker stops). False if the worker is stopping."""
        stopping = self.context.stopping
        delay = 0.5
        while not stopping.is_set():
            try:
                child = self._new_child(index)
                child.wait_ready()
            except ImproperlyConfigured:
                logger.exception("could not start a worker child process; retrying")
                if stopping.wait(delay):
                    return False
                delay = min(delay * 2, MAX_CHILD_BACKOFF)
                continue
            self._children[index] = child
            return True
        return False
