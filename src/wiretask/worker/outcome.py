"""What a pool and the tracer exchange: a ``Control`` for the run's time limits goes
in, an ``Outcome`` (how to settle the delivery) comes back.

Both cross a process boundary with the process pool (the outcome is pickled back from
the child), so they are plain values; settlement reads nothing else of a run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState

__all__ = ["NO_LIMITS", "Control", "Outcome", "Settle"]

#: How the worker settles a delivery after the tracer is done with it.
#: ``ack``: processed. ``requeue``: give it back to run again (the final state could not
#: be stored, or the task raised ``Reject(requeue=True)``). ``dead_letter``: the task
#: raised ``Reject(requeue=False)``; the message goes to the dead-letter place with the
#: reason, as a rejected AMQP message goes to its dead-letter exchange.
#: ``none``: someone else settled it (a hard time limit fired first).
Settle = Literal["ack", "requeue", "dead_letter", "none"]

@attrs.frozen
class Outcome:
    """What the tracer did with one message, and how to settle its delivery.

    Attributes:
        state: the state recorded (``SUCCESS``, ``FAILURE``, ``RETRY``, ``REVOKED``),
            ``REJECTED`` for a ``Reject``, or ``""`` when the run was abandoned.
        settle: how to settle the delivery (see ``Settle``).
        runtime: seconds the body ran (0 when it did not run).
        reason: why, for ``dead_letter``.
        pending: a ``SUCCESS`` state checked and encoded but not written yet (only
            with ``Tracer.defer_results_of``): the worker writes it in the same call that
            acknowledges the delivery.
        event: the fields of the task event that reports it, as far as the tracer knows
            them (``result``, ``exception``/``traceback``, ``expired``/``terminated``):
            ``events.worker.WorkerEvents.finished`` sends them. None: nothing to add.
    """

    state: str
    settle: Settle
    runtime: float = 0.0
    reason: str = ""
    pending: PendingState | None = None
    event: Mapping[str, Any] | None = None


class Control(Protocol):
    """Arms and disarms a run's time limits around the task body, and says how long
    the worker still wants the run's outcome.

    ``begin`` is called right before the body runs and ``end`` right after it (whether
    it returned or raised). ``end`` returns False when the run was abandoned meanwhile
    (a hard time limit already recorded the outcome): the tracer then records nothing.
    ``wait`` pauses between attempts to store the outcome while the backend is away;
    it returns False once the worker gave up on the run (it is stopping and requeues
    the message), so that the tracer stops trying.
    """

    def begin(self) -> None: ...

    def end(self) -> bool: ...

    def wait(self, seconds: float) -> bool: ...


class _NoLimits:
    def begin(self) -> None:
        return None

    def end(self) -> bool:
        return True

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return True


NO_LIMITS: Control = _NoLimits()
