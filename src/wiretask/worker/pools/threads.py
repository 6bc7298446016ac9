"""The thread pool (the default): ``concurrency`` slot threads take jobs from a queue.

Each slot thread runs one job at a time with the worker's tracer
(``_inthread.run_in_this_thread``) and reports its outcome, with the acks of the
other slots batched into one call by whichever finishes first (settlement's group
commit; that call also takes the next messages). A slot stuck in a task past its hard
time limit is abandoned (a thread cannot be killed) and a new slot thread takes its
place.

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

__all__ = ["ThreadPool"]


class ThreadPool(Pool):
    """``concurrency`` threads, each running one task at a time."""

    name = "threads"

    def __init__(self, setup: PoolSetup) -> None:
        super().__init__(setup)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._slots: list[threading.Thread] = []

    def start(self, context: PoolContext) -> None:
        self._context = context
        for _ in range(self.capacity):
            self._add_slot()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self, until: float) -> None:
        slots = list(self._slots)
        for _ in slots:
            self._jobs.put(None)
        for slot in slots:
            # An abandoned thread may never return (it is a daemon); the others do.
            slot.join(max(until - time.monotonic(), 0.0))

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
