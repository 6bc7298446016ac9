"""A job: one received message on its way through the worker, and the right to settle it.

The consumer makes a ``Job`` for every message it dispatches to the pool; the pool runs
it and reports its outcome to settlement, which acks, requeues or dead-letters it.

Threading: several threads may try to settle the same job (the pool thread that ran
it, a time-limit timer that gave up on it, a stopping worker requeueing it). ``lock``
guards ``claimed`` and ``settled``, so that exactly one settle takes effect
(``take_settlement``) and a job given back at stop is never started afterwards
(``claim``). The other fields are written by one thread at a time, in order: the pool
sets ``control`` before the body runs, settlement sets ``pending`` before the ack.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.protocol.states import PendingState
    from wiretask.transports.base import Delivery

__all__ = ["Abandonable", "Job"]


class Abandonable(Protocol):
    """How a pool gives up on a run it cannot stop (``ThreadControl``: a thread cannot
    be killed, so its later outcome is ignored instead)."""

    def abandon(self) -> bool:
        """Give up on the run; False if it had already finished."""
        ...


class Job:
    """One received message on its way through the worker, and the right to settle it.

    Exactly one settle takes effect (the pool that ran it, the hard time limit, or a
    stopping worker requeueing it): see ``take_settlement``.
    """

    __slots__ = (
        "abandoned", "claimed", "control", "delivery", "lock", "message", "pending",
        "settled", "started", "terminated",
    )

    def __init__(self, delivery: Delivery, message: TaskMessage) -> None:
        self.delivery = delivery
        self.message = message
        self.lock = threading.Lock()
        self.settled = False
        #: A pool has taken it to run (before that it is "queued").
        self.claimed = False
        #: When a pool took it to run (``time.time()``; ``inspect active``'s
        #: ``time_start``), or None while queued.
        self.started: float | None = None
        #: How the pool gives up on the run at shutdown, while it runs in a thread.
        self.control: Abandonable | None = None
        #: Requeued by a stopping worker while it ran: its outcome is ignored.
        self.abandoned = False
        #: Ended on request while it ran (``Pool.terminate``): its outcome is REVOKED.
        self.terminated = False
        #: A SUCCESS state to write with the ack (``Outcome.pending``).
        self.pending: PendingState | None = None

    def __repr__(self) -> str:
        return f"<Job {self.describe}>"

    @property
    def describe(self) -> str:
        """``name[id]``, for log lines."""
        return f"{self.message.task}[{self.message.id}]"

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Celery's ``delivery_info`` keys; ``queue`` is what ``Task.retry`` re-sends to."""
        return {
            "exchange": "",
            "routing_key": self.delivery.queue,
            "queue": self.delivery.queue,
            "priority": self.delivery.frame.priority,
            "redelivered": self.delivery.redelivered,
        }

    def claim(self) -> bool:
        """A pool takes the job to run it; False if it was settled meanwhile (given
        back by a stopping worker): the pool then skips it."""
        with self.lock:
            if self.settled:
                return False
            self.claimed = True
            self.started = time.time()
            return True

    def take_settlement(self, *, only_if_queued: bool = False) -> bool:
        """The right to settle the job's delivery: True exactly once. With
        ``only_if_queued``, False as well once a pool has claimed the job (a stopping
        worker gives back only what has not started)."""
        with self.lock:
            if self.settled or (only_if_queued and self.claimed):
                return False
            self.settled = True
            return True
