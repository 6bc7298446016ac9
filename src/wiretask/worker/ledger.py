"""The ledger: what the worker holds, and so how much room it has to receive.

Two kinds of messages are held: **active** jobs (dispatched to the pool and not settled
yet: queued, running, or waiting for their ack) and **held** early-eta messages (the eta
heap). The room to receive is ``capacity - active`` (capacity: the pool's plus the
prefetch), capped by ``eta_task_limit - held``, so a busy worker takes no more and
leaves the rest for other workers. Without a capacity (Celery's prefetch multiplier 0:
no limit) the room is ``UNLIMITED_RECEIVE`` at every turn.

Threading: one condition variable, ``cv``, guards both collections. Settlement notifies
it when jobs stop being active (the consumer waits on it for room, ``stop()`` for the
last running job). ``receiving`` is held by whoever receives (the consumer, or a pool
thread whose acks take new messages in the same round trip) from counting the room to
dispatching what arrived, so that two receivers never count the same room.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wiretask.worker.eta import EtaHeap

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wiretask.protocol.envelope import TaskMessage
    from wiretask.transports.base import Delivery
    from wiretask.worker.job import Job

__all__ = ["POLL_INTERVAL", "UNLIMITED_RECEIVE", "Ledger"]

#: Longest a worker thread waits before looking again at what it waits for (a receive,
#: the room, the last running job, a child's outcome), so that ``stop()`` and due eta
#: messages are noticed quickly.
POLL_INTERVAL = 0.2
#: The room of a worker without a prefetch limit: how many messages one receive takes.
UNLIMITED_RECEIVE = 100


class Ledger:
    """Active jobs and held eta messages, and the room they leave.

    Args:
        capacity: most active jobs (the pool's capacity plus the prefetch); None: no
            limit.
        eta_task_limit: most held eta messages.
        clock: the current Unix time (the app's ``now()``: etas are wall-clock times).
    """

    def __init__(
        self, capacity: int | None, eta_task_limit: int, clock: Callable[[], float]
    ) -> None:
        self.capacity = capacity
        self.eta_task_limit = eta_task_limit
        self._clock = clock
        self.cv = threading.Condition()
        self.receiving = threading.Lock()
        self._active: set[Job] = set()
        self._held = EtaHeap()
        #: Jobs dispatched so far, by task name (``inspect stats``' ``total``).
        self.total: collections.Counter[str] = collections.Counter()

    # -- counting -------------------------------------------------------------------

    @property
    def active(self) -> int:
        with self.cv:
            return len(self._active)

    @property
    def held(self) -> int:
        with self.cv:
            return len(self._held)

    def room(self, freed: int = 0) -> int:
        """How many messages the worker may take now, or once ``freed`` of its active
        jobs are settled."""
        with self.cv:
            return self._room(freed)

    def _room(self, freed: int = 0) -> int:  # under cv
        held_room = self.eta_task_limit - len(self._held)
        if self.capacity is None:
            return min(UNLIMITED_RECEIVE, held_room)
        return min(self.capacity - len(self._active) + freed, held_room)

    def wait_for_room(self, wait: float) -> float | None:
        """The receive timeout to use now: ``wait``, shortened to the next held eta.
        None if there is no room: then this has waited up to that long for some."""
        with self.cv:
            eta = self._held.next_eta
            if eta is not None:
                wait = min(wait, max(eta - self._clock(), 0.0))
            if self._room() < 1:
                self.cv.wait(wait)
                return None
        return wait

    # -- active jobs ----------------------------------------------------------------

    def jobs(self) -> list[Job]:
        """The active jobs, now (a copy)."""
        with self.cv:
            return list(self._active)

    def add(self, job: Job) -> None:
        with self.cv:
            self._active.add(job)
            self.total[job.message.task] += 1

    def discard(self, job: Job) -> None:
        """``job`` is settled: it no longer takes room."""
        with self.cv:
            self._active.discard(job)
            self.cv.notify_all()

    def discard_batch(self, jobs: Iterable[Job], *, wake: bool) -> None:
        """``jobs`` are settled. ``wake``: tell the waiters (the consumer, for the room
        its refill did not fill; ``stop()``, for what is left)."""
        with self.cv:
            self._active.difference_update(jobs)
            if wake:
                self.cv.notify_all()

    def wake(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def wait_idle(self, deadline: float | None, cold: threading.Event) -> list[Job]:
        """Wait until no job is active, ``deadline`` (``time.monotonic()``) passes or
        ``cold`` is set; return the jobs still active."""
        with self.cv:
            while self._active and not cold.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.cv.wait(POLL_INTERVAL if remaining is None else min(remaining, POLL_INTERVAL))
            return list(self._active)

    # -- held eta messages ----------------------------------------------------------

    def hold(self, eta: float, delivery: Delivery, message: TaskMessage) -> None:
        with self.cv:
            self._held.push(eta, delivery, message)

    def release_due(self) -> list[tuple[Delivery, TaskMessage]]:
        """Take the held messages whose eta has come."""
        if not self._held:  # the common case, without the lock
            return []
        now = self._clock()
        with self.cv:
            return self._held.pop_due(now)

    def holds_any(self) -> bool:
        """Whether any message is held (read without the lock: a hint for the hot path,
        as ``release_due``'s own first test)."""
        return bool(self._held)

    def held_entries(self) -> list[tuple[float, Delivery, TaskMessage]]:
        """``(eta, delivery, message)`` of the held messages, earliest first (a copy)."""
        with self.cv:
            return self._held.entries()

    def take_held(
        self, predicate: Callable[[TaskMessage], bool]
    ) -> list[tuple[Delivery, TaskMessage]]:
        """Take the held messages ``predicate`` selects (revoked ones)."""
        with self.cv:
            return self._held.remove(predicate)

    def give_back(self) -> tuple[list[tuple[Delivery, TaskMessage]], list[Job]]:
        """At stop: take every held message, and list the active jobs."""
        with self.cv:
            return self._held.take_all(), list(self._active)
