"""The eta heap: messages that arrived before their eta, held until it comes.

Only transports without native delayed delivery make the worker hold anything: where
the broker can delay a message, an early one is re-published with a broker-side delay
instead (``routing.HoldEarly``). Held messages stay unacked, count against
``worker_eta_task_limit`` (``ledger.Ledger.room``), and are given back to the broker
when the worker stops.

Threading: an ``EtaHeap`` is a plain value with no lock of its own; the ledger owns the
worker's one and reads and changes it under its condition variable.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.transports.base import Delivery

__all__ = ["EtaHeap"]


class EtaHeap:
    """Held messages ordered by eta (a Unix timestamp), then by arrival."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Delivery, TaskMessage]] = []
        self._seq = itertools.count()  # ties keep their arrival order

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def next_eta(self) -> float | None:
        """The earliest eta held, or None."""
        return self._heap[0][0] if self._heap else None

    def push(self, eta: float, delivery: Delivery, message: TaskMessage) -> None:
        """Hold ``message`` until ``eta``."""
        heapq.heappush(self._heap, (eta, next(self._seq), delivery, message))

    def pop_due(self, now: float) -> list[tuple[Delivery, TaskMessage]]:
        """Take the messages whose eta is ``now`` or earlier, earliest first."""
        due: list[tuple[Delivery, TaskMessage]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, delivery, message = heapq.heappop(self._heap)
            due.append((delivery, message))
        return due

    def take_all(self) -> list[tuple[Delivery, TaskMessage]]:
        """Take every held message (earliest first), leaving the heap empty."""
        held = [(delivery, message) for _, _, delivery, message in sorted(self._heap)]
        self._heap = []
        return held

    def entries(self) -> list[tuple[float, Delivery, TaskMessage]]:
        """``(eta, delivery, message)`` of every held message, earliest first (a copy)."""
        return [(eta, delivery, message) for eta, _, delivery, message in sorted(self._heap)]

    def remove(
        self, predicate: Callable[[TaskMessage], bool]
    ) -> list[tuple[Delivery, TaskMessage]]:
        """Take the held messages ``predicate`` selects (a revoked one: its task must not
        run), earliest first."""
        taken = [entry for entry in self._heap if predicate(entry[3])]
        if taken:
            self._heap = [entry for entry in self._heap if not predicate(entry[3])]
            heapq.heapify(self._heap)
        return [(delivery, message) for _, _, delivery, message in sorted(taken)]
