"""The worker's events: Celery's task and worker events from wiretask's worker.

One part, ``WorkerEvents``, that the worker plugs in where the events happen:

* as a routing step (``unknown``, first), ``task-failed`` for a task the worker does not
  know (Celery's ``on_unknown_task``);
* as a routing step (``worker.routing.Step``), ``task-received`` for every message that
  is going to run (after the revoked-id check, before an early message is held: Celery's
  strategy sends it at receipt, eta or not);
* ``started(job)`` when a pool takes a job to run: ``task-started``;
* ``finished(message, outcome)`` when settlement gets the outcome: ``task-succeeded``
  (``result``: the return value's repr, ``runtime``), ``task-failed`` (``exception``,
  ``traceback``), ``task-retried`` (``exception``, ``traceback``), ``task-revoked``
  (``terminated``, ``signum``, ``expired``) or ``task-rejected`` (``requeue``; a
  ``Reject(requeue=False)`` sends ``task-failed`` first, as Celery), from the
  ``Outcome``'s ``event`` fields that the tracer filled in;
* a heart (``start``/``stop``): ``worker-online``, then ``worker-heartbeat`` every
  ``freq`` seconds (2 as Celery), ``worker-offline`` at stop, each with ``freq``,
  ``active``, ``processed``, ``loadavg`` and the software info;
* the control commands ``enable_events``, ``disable_events`` and ``heartbeat``.

As in Celery's worker, the ``worker`` group is always sent (unless the heart is off,
``--without-heartbeat``) and the ``task`` group only with ``-E`` /
``worker_send_task_events`` or after ``enable_events``. Sending is the dispatcher's
(``dispatcher.py``): queued, published by its own thread, never raised into a task.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import wiretask
from wiretask.control.mailbox import Command
from wiretask.control.wire import ok
from wiretask.protocol import states
from wiretask.protocol.timing import is_expired

if TYPE_CHECKING:
    from datetime import datetime

    from wiretask.events.dispatcher import EventDispatcher
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.transports.base import Delivery
    from wiretask.worker.job import Job
    from wiretask.worker.outcome import Outcome

__all__ = ["HEARTBEAT_FREQ", "SOFTWARE_INFO", "WorkerEvents", "load_average"]

logger = logging.getLogger("wiretask.worker")

#: Seconds between heartbeats (Celery's ``Heart`` default).
HEARTBEAT_FREQ: Final = 2.0
#: The software fields of every worker event (Celery's ``SOFTWARE_INFO``).
SOFTWARE_INFO: Final = {"sw_ident": "wiretask", "sw_ver": wiretask.__version__,
                        "sw_sys": platform.system()}
#: The ``freq`` of the heartbeat the ``heartbeat`` control command sends (Celery's).
_COMMAND_FREQ: Final = 5
#: The event of each outcome state, and the fields it always has.
_FINAL: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    states.SUCCESS: ("task-succeeded", {"result": None}),
    states.FAILURE: ("task-failed", {"exception": "", "traceback": ""}),
    states.RETRY: ("task-retried", {"exception": "", "traceback": ""}),
    states.REVOKED: ("task-revoked", {"terminated": False, "signum": None, "expired": False}),
}
#: Outcome states whose requeue means the task runs again.
_AGAIN: Final = frozenset({states.SUCCESS, states.FAILURE})


def load_average() -> list[float]:
    """Celery's ``load_average``: the three load averages rounded up to 2 decimals."""
    try:
        loads = os.getloadavg()
    except OSError:
        return [0.0, 0.0, 0.0]
    return [math.ceil(load * 1e2) / 1e2 for load in loads]


class WorkerEvents:
    """The events of one worker (see the module docstring).

    Args:
        dispatcher: sends them; its groups say which are on.
        tasks: the tasks the worker knows, by name (a task whose ``send_events`` is
            False has no task events, as in Celery).
        now: the app's clock (``App.now``), to tell an expired message.
        active: the number of tasks the worker has running or reserved (heartbeats'
            ``active``).
        freq: seconds between heartbeats.
        heartbeat: False: no worker events (Celery's ``--without-heartbeat``).
        on_toggle: called with True/False when ``enable_events``/``disable_events``
            turn task events on or off.
    """

    def __init__(
        self, dispatcher: EventDispatcher, *, tasks: Mapping[str, Any],
        now: Callable[[], datetime], active: Callable[[], int],
        freq: float = HEARTBEAT_FREQ, heartbeat: bool = True,
        on_toggle: Callable[[bool], None] | None = None,
    ) -> None:
        self._on_toggle = on_toggle
        self.dispatcher = dispatcher
        self._tasks = tasks
        self._now = now
        #: An early message is handed back to the broker to wait (the transport delays
        #: natively), not held here: set by the worker.
        self.defers_early = False
        self.freq = freq
        self.heartbeat = heartbeat
        self._active = active
        self._lock = threading.Lock()
        #: Tasks finished (Celery's ``all_total_count``).
        self.processed = 0
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None

    @property
    def task_events(self) -> bool:
        """Whether task events are being sent now."""
        return self.dispatcher.wants("task-received")

    # -- task events ------------------------------------------------------------------

    def unknown(self, delivery: Delivery, message: TaskMessage) -> bool:
        """A routing step before the others: for a task this worker does not know,
        ``task-failed`` with ``exception`` ``NotRegistered('<name>')`` (Celery's
        ``on_unknown_task``). Never takes the message (``RefuseUnregistered`` does)."""
        if message.task not in self._tasks:
            self.dispatcher.send("task-failed", uuid=message.id,
                                 exception=f"NotRegistered({message.task!r})")
        return False

    def _quiet(self, message: TaskMessage) -> bool:
        task = self._tasks.get(message.task)
        return task is not None and not getattr(task, "send_events", True)

    def _expired(self, message: TaskMessage) -> bool:
        return message.expires is not None and is_expired(message.expires, now=self._now())

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        """The routing step: ``task-received``, unless the message has expired (Celery
        then sends only ``task-revoked``, with ``expired``) or is early and goes back to
        the broker to wait (``defers_early``: it is received when it comes back, as
        Celery's worker receives a message from the delay ladder when it is due). Never
        takes the message."""
        dispatcher = self.dispatcher
        if (not dispatcher.wants("task-received") or self._quiet(message)
                or self._expired(message)):
            return False
        if self.defers_early and message.eta is not None and message.eta > self._now():
            return False
        dispatcher.publish("task-received", {
            "uuid": message.id, "name": message.task,
            "args": message.argsrepr or "", "kwargs": message.kwargsrepr or "",
            "root_id": message.root_id, "parent_id": message.parent_id,
            "retries": message.retries,
            "eta": message.eta.isoformat() if message.eta is not None else None,
            "expires": message.expires.isoformat() if message.expires is not None
            else None,
        })
        return False

    def started(self, job: Job) -> None:
        """A pool took ``job`` to run: ``task-started`` (not for an expired message: the
        tracer revokes it without running it). Counted in ``processed`` (Celery counts a
        task when the pool accepts it)."""
        with self._lock:
            self.processed += 1
        dispatcher = self.dispatcher
        if (dispatcher.wants("task-started") and not self._quiet(job.message)
                and not self._expired(job.message)):
            dispatcher.publish("task-started", {"uuid": job.message.id})

    def finished(self, message: TaskMessage, outcome: Outcome) -> None:
        """The outcome of ``message`` is known: the event that says so. A task that
        will run again (requeued: a lost child with ``reject_on_worker_lost``, a hard
        time limit with ``acks_on_timeout`` off, a final state that could not be
        stored) is ``task-rejected`` with ``requeue``, as Celery's ``reject``."""
        dispatcher = self.dispatcher
        if not dispatcher.wants("task-succeeded") or self._quiet(message):
            return
        state, requeue = outcome.state, outcome.settle == "requeue"
        if state == states.REJECTED or (requeue and state in _AGAIN):
            if not requeue and outcome.event and "exception" in outcome.event:
                # Reject(requeue=False): Celery stores FAILURE and says task-failed first.
                dispatcher.publish("task-failed", {
                    "uuid": message.id, "exception": outcome.event["exception"],
                    "traceback": outcome.event.get("traceback", ""),
                })
            dispatcher.publish("task-rejected", {"uuid": message.id, "requeue": requeue})
            return
        known = _FINAL.get(state)
        if known is None:
            return
        type_, defaults = known
        fields: dict[str, Any] = {"uuid": message.id, **defaults}  # uuid first, as Celery
        if outcome.event:
            fields.update(outcome.event)
        if state == states.SUCCESS:
            fields["runtime"] = outcome.runtime
        dispatcher.publish(type_, fields)

    # -- worker events ----------------------------------------------------------------

    def _beat(self, type_: str) -> None:
        self.dispatcher.send(type_, freq=self.freq, active=self._active(),
                             processed=self.processed, loadavg=load_average(),
                             **SOFTWARE_INFO)

    def start(self) -> None:
        """``worker-online`` now, then a heartbeat every ``freq`` seconds."""
        if not self.heartbeat:
            return
        self._beat("worker-online")
        self._heart = threading.Thread(target=self._run, name="wiretask-heart", daemon=True)
        self._heart.start()

    def _run(self) -> None:
        while not self._stop.wait(self.freq):
            self._beat("worker-heartbeat")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the heart, send ``worker-offline`` and publish what is queued (up to
        ``timeout`` seconds)."""
        self._stop.set()
        heart, self._heart = self._heart, None
        if heart is not None:
            heart.join(timeout)
            self._beat("worker-offline")
        self.dispatcher.close(timeout)

    # -- control commands -------------------------------------------------------------

    def commands(self) -> dict[str, Command]:
        """``enable_events``, ``disable_events`` and ``heartbeat``, as Celery's worker
        answers them."""
        return {"enable_events": self.enable_events, "disable_events": self.disable_events,
                "heartbeat": self.send_heartbeat}

    def enable_events(self, **_: Any) -> dict[str, Any]:
        if self.dispatcher.enable_group("task"):
            logger.info("Events of group {task} enabled by remote.")
            if self._on_toggle is not None:
                self._on_toggle(True)
            return ok("task events enabled")
        return ok("task events already enabled")

    def disable_events(self, **_: Any) -> dict[str, Any]:
        if self.dispatcher.disable_group("task"):
            logger.info("Events of group {task} disabled by remote.")
            if self._on_toggle is not None:
                self._on_toggle(False)
            return ok("task events disabled")
        return ok("task events already disabled")

    def send_heartbeat(self, **_: Any) -> None:
        """Celery's answers None (its reply, when one is asked for, is ``null``)."""
        logger.debug("Heartbeat requested by remote.")
        self.dispatcher.send("worker-heartbeat", freq=_COMMAND_FREQ, **SOFTWARE_INFO)
