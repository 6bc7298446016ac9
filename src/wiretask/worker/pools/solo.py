"""The solo pool: one task at a time, run by the consumer thread itself (Celery's
``-P solo``).

There is no hand-off between threads. The consumer receives a batch of ``1 +
prefetch`` messages and, at its next turn, lends its thread to this pool
(``run_in_consumer``), which runs the batch one job after the other and then sends the
batch's results and acks and takes the next batch in one call
(``Settlement.flush``: one round trip on Redis).

Two things keep that from going wrong when a task runs long:

* A **flusher** thread: while a task has run longer than ``SOLO_FLUSH_INTERVAL``, the
  outcomes of the tasks that finished before it in its batch are stored and acked from
  there, so a long task does not hold back the results of quick ones.
* At a **hard time limit** the consumer thread is stuck in the task (a thread cannot be
  killed): a new consumer thread takes over (``ConsumerHandle.replace``) and runs the
  rest of the batch; the old one leaves when it comes back.

Threading: ``_ready`` is appended to and emptied by the (current) consumer thread
only; ``_running_since`` is written by it and read by the flusher thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wiretask.errors import ValidationError
from wiretask.worker.pools._inthread import run_in_this_thread
from wiretask.worker.pools.base import Pool, PoolContext, PoolSetup

if TYPE_CHECKING:
    from wiretask.transports.base import Delivery
    from wiretask.worker.job import Job
    from wiretask.worker.outcome import Outcome

__all__ = ["SOLO_FLUSH_INTERVAL", "SoloPool"]

#: A task that has run this long gets the outcomes stored and the messages acked that
#: finished before it in its batch, instead of them waiting for its end.
SOLO_FLUSH_INTERVAL = 0.05


class SoloPool(Pool):
    """One task at a time, in the consumer thread."""

    name = "solo"

    def __init__(self, setup: PoolSetup) -> None:
        super().__init__(setup)
        self._ready: collections.deque[Job] = collections.deque()
        #: When the running task started (``time.monotonic()``), for the flusher.
        self._running_since: float | None = None
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()

    @classmethod
    def resolve_concurrency(cls, requested: int | None) -> int:
        if requested not in (None, 1) or isinstance(requested, bool):
            raise ValidationError(
                "concurrency",
                f"pool='solo' runs one task at a time, so it must be 1, got {requested!r}",
            )
        return 1

    def start(self, context: PoolContext) -> None:
        self._context = context
        self._flusher = threading.Thread(
            target=self._flush_behind_long_tasks,
            name=f"wiretask-flusher-{self.setup.hostname}", daemon=True,
        )
        self._flusher.start()

    def submit(self, job: Job) -> None:
        self._ready.append(job)  # run by the consumer thread itself

    def report(self, job: Job, outcome: Outcome) -> None:
        # The ack waits for the end of the batch (``run_in_consumer``), or the flusher.
        self.context.settlement.finish(job, outcome)

    def run_in_consumer(self) -> Sequence[Delivery] | None:
        """Run what was received, then store, ack and refill in one call; acks settled
        meanwhile by a time limit are sent the same way."""
        settlement = self.context.settlement
        if not self._ready and not settlement.acks_waiting:
            return None
        if not self._run_ready():
            return ()  # abandoned in a task: a new consumer has taken over
        return settlement.flush(receive=True)

    def _run_ready(self) -> bool:
        """Run the received jobs one after the other in this, the consumer thread; their
        acks wait for the flush. Jobs left when the worker stops are requeued. False if
        this thread was abandoned in a task (hard time limit, or a stopping worker gave
        up on it)."""
        context = self.context
        consumer = context.consumer
        while self._ready:
            job = self._ready.popleft()
            if context.stopping.is_set():
                context.settlement.settle(job, "requeue", only_if_queued=True)
                continue
            if not job.claim():
                continue
            self._running_since = time.monotonic()
            try:
                going_on = run_in_this_thread(
                    context, job, report=self.report, replace=consumer.replace
                )
            finally:
                # Replaced while in the task: the new consumer owns the batch now.
                current = consumer.current()
                if current:
                    self._running_since = None
            if not (going_on and current):
                return False
        return True

    def _flush_behind_long_tasks(self) -> None:
        """The flusher thread: while a task runs longer than ``SOLO_FLUSH_INTERVAL``,
        send the acks of the tasks that finished before it."""
        context = self.context
        while not self._flusher_stop.wait(SOLO_FLUSH_INTERVAL):
            since = self._running_since
            # Also while stopping: a consumer that has exited leaves acks behind (one
            # settled by a hard time limit after it left), and stop() waits for them.
            if not context.stopping.is_set() and (
                since is None or time.monotonic() - since < SOLO_FLUSH_INTERVAL
            ):
                continue
            context.settlement.flush(receive=False)

    def stop(self, until: float) -> None:
        del until  # the consumer thread, which runs the tasks, is the consumer's to join
        if self._flusher is not None:
            self._flusher_stop.set()
            self._flusher.join()
