"""The thread pool (the default): ``concurrency`` slot threads take jobs from a queue.

Each slot thread runs one job at a time with the worker's tracer
(``_inthread.run_in_this_thread``) and reports its outcome. Acks (and the results
written with them) are sent in batches, as the solo pool sends them: a slot that has
another job waiting for it leaves its ack queued and runs that job; the slot that finds
no job waiting sends every queued ack in one call (settlement's group commit; that call
also takes the next messages). So with messages reserved (the prefetch), one round trip
serves several tasks instead of one per task. A **flusher** thread sends the queued
acks when they have waited ``THREADS_FLUSH_INTERVAL`` (a long task after quick ones
does not hold their results back longer than that). A slot stuck in a task past its
hard time limit is abandoned (a thread cannot be killed) and a new slot thread takes
its place.

Threading: ``submit`` puts jobs on a ``queue.SimpleQueue`` that the slot threads take
from; ``stop`` puts one ``None`` per slot thread, which ends it.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

from wiretask.worker.pools._inthread import run_in_this_thread
from wiretask.worker.pools.base import Pool, PoolContext, PoolSetup

if TYPE_CHECKING:
    from wiretask.worker.job import Job
    from wiretask.worker.outcome import Outcome

__all__ = ["THREADS_FLUSH_INTERVAL", "ThreadPool"]

#: Most seconds an ack (and its result) waits in the queue for the batch's commit:
#: the flusher sends what has waited this long (the solo pool's interval).
THREADS_FLUSH_INTERVAL = 0.05


class ThreadPool(Pool):
    """``concurrency`` threads, each running one task at a time."""

    name = "threads"

    def __init__(self, setup: PoolSetup) -> None:
        super().__init__(setup)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._slots: list[threading.Thread] = []
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()

    def start(self, context: PoolContext) -> None:
        self._context = context
        for _ in range(self.capacity):
            self._add_slot()
        self._flusher = threading.Thread(
            target=self._flush_waiting_acks,
            name=f"wiretask-flusher-{self.setup.hostname}", daemon=True,
        )
        self._flusher.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def report(self, job: Job, outcome: Outcome) -> None:
        """Queue the job's ack; send the queued acks now unless this slot has another
        job waiting (then the slot that runs out of jobs, or the flusher, sends them:
        one call for the batch, as the solo pool does)."""
        settlement = self.context.settlement
        settlement.finish(job, outcome)
        if self._jobs.empty() or self.context.stopping.is_set():
            settlement.commit()

    def stop(self, until: float) -> None:
        slots = list(self._slots)
        for _ in slots:
            self._jobs.put(None)
        for slot in slots:
            # An abandoned thread may never return (it is a daemon); the others do.
            slot.join(max(until - time.monotonic(), 0.0))
        if self._flusher is not None:
            self._flusher_stop.set()
            self._flusher.join()

    def _flush_waiting_acks(self) -> None:
        """The flusher thread: send the acks that waited a whole interval (a slot went
        on to a long task after queueing them)."""
        settlement = self.context.settlement
        waiting = False
        while not self._flusher_stop.wait(THREADS_FLUSH_INTERVAL):
            # Acks seen at two consecutive wake-ups have waited at least one interval
            # (or are new ones behind a commit that just went out: sent a little early).
            if waiting and settlement.acks_waiting:
                settlement.commit()
            waiting = settlement.acks_waiting

    def _add_slot(self) -> None:
        thread = threading.Thread(
            target=self._slot, name=f"wiretask-slot-{len(self._slots)}", daemon=True
        )
        self._slots.append(thread)
        thread.start()

    def _slot(self) -> None:
        context = self.context
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.claim() and not run_in_this_thread(
                context, job, report=self.report, replace=self._add_slot
            ):
                return  # abandoned in the task: a new thread has this slot
