"""Routing: what happens to a received message before a pool runs it.

A delivery is decoded (one that cannot be is dead-lettered with the reason), then
passed through a short pipeline of **steps**, each a small callable that either takes
the message (handles it and returns True: the pipeline stops) or lets it through
(False). What every step lets through is dispatched to the pool as a ``Job``. Today's
steps, in order:

1. ``RefuseUnregistered``: a task this worker does not know is failed and dead-lettered.
2. ``LogReceived``: the "received" log line (a hook: it never takes the message).
3. ``HoldEarly``: a message before its eta is re-published with a broker-side delay
   where the transport can delay, else held in the eta heap until it is due. An expired
   message goes through: the tracer revokes it and calls its errbacks.
4. ``RateLimit`` (unless ``worker_disable_rate_limits``): a message of a task with a
   ``rate_limit`` (or ``task_default_rate_limit``) that comes before its task type's next
   token is held in the eta heap until then, so it waits without taking a pool slot or
   holding back other tasks (Celery's token bucket per task type and worker). A message
   released from the heap is dispatched at once, as Celery's eta tasks skip the bucket.

A feature that looks at messages before they run (a revoked-id check, task events) is
one more step in that list, not another branch here.

Threading: ``Router.handle`` runs in whichever thread received the deliveries (the
consumer, or a pool thread whose acks took new messages), always under the ledger's
``receiving`` lock; steps keep their state in the ledger (which has its own lock) or
nowhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from wiretask.errors import DecodeError, NotRegistered, TransportError
from wiretask.protocol import states
from wiretask.protocol.celery import decode
from wiretask.protocol.frame import Route
from wiretask.protocol.timing import is_expired
from wiretask.tasks import parse_rate
from wiretask.worker.job import Job
from wiretask.worker.settlement import dead_letter, requeue
from wiretask.worker.tracer import format_traceback

if TYPE_CHECKING:
    from wiretask.app import App
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.transports.base import Delivery, Transport
    from wiretask.worker.ledger import Ledger
    from wiretask.worker.settlement import AckRetry
    from wiretask.worker.tracer import Tracer

__all__ = ["HoldEarly", "LogReceived", "RateLimit", "RefuseUnregistered", "Router", "Step"]

logger = logging.getLogger("wiretask.worker")


class Step(Protocol):
    """One step of routing. Returns True if it took the message (settled it, held it,
    or re-published it): routing stops there. False lets it go on."""

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool: ...


class Router:
    """Decodes received messages, runs them through ``steps`` and dispatches the rest.

    Args:
        app: decodes with its codec registry.
        steps: the pipeline, in order.
        ledger: dispatched jobs are active in it.
        submit: hands a dispatched job to the pool.
        stopping: once set, received messages are given back instead of routed.
    """

    def __init__(
        self,
        app: App,
        steps: Sequence[Step],
        ledger: Ledger,
        submit: Callable[[Job], None],
        stopping: threading.Event,
    ) -> None:
        self._app = app
        self._steps = tuple(steps)
        self._ledger = ledger
        self._submit = submit
        self._stopping = stopping

    def handle(self, deliveries: Iterable[Delivery]) -> None:
        """Route received messages (the caller holds the ledger's ``receiving``)."""
        for delivery in deliveries:
            if self._stopping.is_set():
                requeue(delivery, str(delivery.frame.task_id))
                continue
            try:
                self.route(delivery)
            except Exception as exc:
                # A bug here must not stop consumption, nor bring the message back to
                # fail again for ever: it is kept in the dead-letter place.
                logger.exception("error handling message %s", delivery.frame.task_id)
                dead_letter(delivery, f"worker error: {exc!r}")

    def route(self, delivery: Delivery) -> None:
        message = self._decode(delivery)
        if message is None:
            return
        for step in self._steps:
            if step(delivery, message):
                return
        self.dispatch(delivery, message)

    def dispatch(self, delivery: Delivery, message: TaskMessage) -> None:
        """Hand the message to the pool (it counts as active from now on)."""
        job = Job(delivery, message)
        self._ledger.add(job)
        self._submit(job)

    def _decode(self, delivery: Delivery) -> TaskMessage | None:
        try:
            return decode(delivery.frame, self._app.registry)
        except DecodeError as exc:  # ContentDisallowed and MessageTooLarge included
            dead_letter(delivery, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # decode() promises DecodeError; anything else is a bug there, and the
            # message must still not come back forever (a poison message).
            logger.exception("unexpected error decoding message %s", delivery.frame.task_id)
            dead_letter(delivery, f"{type(exc).__name__}: {exc}")
        return None


class RefuseUnregistered:
    """A task this worker does not know: Celery logs, rejects the message and stores
    FAILURE/NotRegistered for the id (PROTOCOL.md §17.9). wiretask dead-letters it instead of
    dropping it: nothing is lost."""

    def __init__(self, app: App, tracer: Tracer) -> None:
        self._app = app
        self._tracer = tracer

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        if message.task in self._app.tasks:
            return False
        exc = NotRegistered(message.task)
        if not message.ignore_result:
            try:
                self._tracer.store(message, states.FAILURE, exc, tb=format_traceback(exc))
            except Exception:
                logger.exception("task %s[%s]: could not store FAILURE", message.task, message.id)
        dead_letter(delivery, f"unregistered task {message.task}")
        return True


class LogReceived:
    """The "received" log line of every message that is going to run."""

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        logger.info("task %s[%s] received", message.task, message.id)
        return False


class HoldEarly:
    """A message that arrived before its eta (Celery's Redis producers push eta
    messages straight to the list; the worker is expected to hold them).

    Where the transport delays messages itself (``capabilities.native_delay``), it is
    handed back to the broker with a delay and the early copy is acked; otherwise (or
    if that publish fails) it is held in the ledger's eta heap until it is due.
    """

    def __init__(
        self, app: App, transport: Transport, ledger: Ledger, unacked: AckRetry
    ) -> None:
        self._now = app.now
        self._transport = transport
        self._ledger = ledger
        self._unacked = unacked

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        if message.eta is None:
            return False
        now = self._now()
        if message.eta <= now or is_expired(message.expires, now=now):
            return False
        if self._transport.capabilities.native_delay and self._republish(delivery, message):
            return True
        self._ledger.hold(message.eta.timestamp(), delivery, message)
        logger.info(
            "task %s[%s] held until its eta %s", message.task, message.id, message.eta.isoformat()
        )
        return True

    def _republish(self, delivery: Delivery, message: TaskMessage) -> bool:
        """Publish first, then ack the early copy, so that a crash in between duplicates
        rather than loses (at least once). Nothing is held unacked, so a visibility
        timeout cannot redeliver it while it waits (celery #2599, #4400) and it costs
        no worker memory. False if the publish failed."""
        assert message.eta is not None
        try:
            self._transport.publish(delivery.frame, Route(delivery.queue), not_before=message.eta)
        except TransportError:
            logger.exception(
                "task %s[%s]: could not re-publish for its eta; holding it here",
                message.task, message.id,
            )
            return False
        try:
            delivery.ack()
        except TransportError:
            logger.exception("task %s[%s]: could not ack the early copy",
                             message.task, message.id)
            self._unacked.add([delivery])
        logger.info(
            "task %s[%s] eta %s: re-published for delayed delivery",
            message.task, message.id, message.eta.isoformat(),
        )
        return True


class RateLimit:
    """Celery's rate limits: a token bucket per task type in this worker (Kombu's
    ``TokenBucket(rate, capacity=1)``: one task at once, then one every ``1/rate``
    seconds), kept here as the time its next token is free (the same schedule: a
    bucket of capacity 1 that refills at ``rate``). A message that comes before that
    time is held in the ledger's eta heap until then and its token taken, so messages
    of one task type start ``1/rate`` apart in the order they came, while the pool runs
    other tasks meanwhile.

    The rate is the task's ``rate_limit`` (``Task.rate``), else
    ``task_default_rate_limit``, read when a message comes (annotations and a changed
    setting apply at once).
    """

    def __init__(self, app: App, ledger: Ledger, clock: Callable[[], float]) -> None:
        self._app = app
        self._ledger = ledger
        self._clock = clock
        #: Per task name: when its next token is free (the clock's time).
        self._next: dict[str, float] = {}

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        task = self._app.tasks.get(message.task)
        rate = task.rate if task is not None else None
        if rate is None and (task is None or task.rate_limit is None):
            rate = parse_rate(self._app.conf.get("task_default_rate_limit"),
                              field="task_default_rate_limit")
        if rate is None:
            return False
        now = self._clock()
        start = max(now, self._next.get(message.task, now))
        self._next[message.task] = start + 1.0 / rate
        if start <= now:
            return False
        self._ledger.hold(start, delivery, message)
        logger.info("task %s[%s] rate limited (%s): held %.3fs", message.task, message.id,
                    task.rate_limit if task is not None else "", start - now)
        return True
