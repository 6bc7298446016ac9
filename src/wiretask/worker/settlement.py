"""Settlement: acknowledging, requeueing and dead-lettering what the worker received.

A message is acknowledged only after its task ran and its outcome was stored (at least
once). The rules, in the order a job meets them:

* **Settle once.** A pool reports a job's ``Outcome`` (``finish``); exactly one settle
  of a job takes effect (``Job.take_settlement``), whoever tries first.
* **Batched acks (group commit).** Acks are queued; ``commit()`` sends every ack queued
  so far in one call, and whoever finds a commit under way leaves its ack to it, so
  concurrent pool threads share round trips. A pool that finishes jobs one batch at a
  time (solo) sends each batch with ``flush()`` instead.
* **Acks take the next messages.** The call that acks also receives as many messages
  as the acks make room for (``Transport.ack_and_receive``), and where the broker can
  write the results of the backend too (``FusedSettlement`` with a ``DeferredStore``
  backend, detected with ``isinstance``), a plain ``SUCCESS`` is written in that same
  call (``store_ack_and_receive``): one round trip for results, acks and refill.
* **Settle retry.** An ack that fails after the outcome was stored is tried again by the
  consumer (``AckRetry``), first after ``ACK_RETRY_INTERVAL``, then backing off to
  ``MAX_SETTLE_RETRY_INTERVAL`` while the broker stays away, so a broker outage does not
  make a task run twice. So is a result that was to be written with the ack: it is
  stored (under the backend's full rules) and then acked, whatever the call that failed
  had done. The tracer keeps trying to store the other outcomes itself, in the pool
  (``Tracer``); a message is requeued only when the task asked for it or the worker gave
  up on the run, after ``REQUEUE_PAUSE``.

Threading: ``finish`` runs in the thread that saw the outcome (a pool thread, a
time-limit timer); ``commit`` in any of them; ``flush`` in the solo pool's consumer or
flusher thread. ``_lock`` guards the queued acks and the committing flag; ``AckRetry``
has its own lock; the ledger's ``receiving`` lock is held while acks take new messages
(``Ledger``). Settlement talks to the transport only through its public methods and the
capability protocols of ``transports.base``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from wiretask.errors import ConnectionLost, TransportError
from wiretask.results.base import DeferredStore
from wiretask.transports.base import Delivery, FusedSettlement, Transport

if TYPE_CHECKING:
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.protocol.states import PendingState
    from wiretask.worker.job import Job
    from wiretask.worker.ledger import Ledger
    from wiretask.worker.outcome import Outcome

__all__ = [
    "ACK_RETRY_INTERVAL",
    "MAX_SETTLE_RETRY_INTERVAL",
    "REQUEUE_PAUSE",
    "AckRetry",
    "Settlement",
    "dead_letter",
    "requeue",
]

logger = logging.getLogger("wiretask.worker")

#: Pause before requeueing a message whose outcome could not be stored (the backend is
#: probably down: requeueing at once would spin).
REQUEUE_PAUSE = 1.0
#: Seconds before the first attempt to acknowledge again a message whose ack failed
#: (or to store the result that was to go with it).
ACK_RETRY_INTERVAL = 1.0
#: The longest pause between such attempts while the broker stays away (doubling).
MAX_SETTLE_RETRY_INTERVAL = 5.0


def requeue(delivery: Delivery, what: str) -> None:
    """Give a message back to its queue; a broker error is logged (the broker will
    redeliver an unsettled message anyway)."""
    try:
        delivery.reject(requeue=True)
    except TransportError:
        logger.exception("could not requeue message %s", what)


def dead_letter(delivery: Delivery, reason: str) -> None:
    """Move a message that cannot be processed to the dead-letter place, with the
    reason: never dropped, never back to fail again for ever."""
    logger.error(
        "message %s from %s dead-lettered: %s", delivery.frame.task_id, delivery.queue, reason
    )
    try:
        delivery.dead_letter(reason)
    except TransportError:
        logger.exception("could not dead-letter message %s", delivery.frame.task_id)


class AckRetry:
    """Deliveries whose outcome is recorded but whose ack failed (the broker was
    unreachable), and deliveries whose result was to be written with their ack by a
    call that failed: settled again, by the consumer, until it goes through. The pause
    between rounds doubles from ``interval`` to ``max_interval`` while the broker
    stays away, and starts again from ``interval`` once a round goes through."""

    def __init__(
        self, interval: float = ACK_RETRY_INTERVAL,
        max_interval: float = MAX_SETTLE_RETRY_INTERVAL,
    ) -> None:
        self.interval = interval
        self.max_interval = max_interval
        self._pause = interval
        self._lock = threading.Lock()
        self._unacked: list[tuple[Delivery, PendingState | None]] = []
        self._next = 0.0
        #: Writes the results (``Settlement.use_fused`` sets it with its backend).
        self.store: DeferredStore | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._unacked)

    def add(self, deliveries: Iterable[Delivery]) -> None:
        """Deliveries whose outcome is stored: ack them again."""
        with self._lock:
            self._unacked.extend((d, None) for d in deliveries)

    def add_unstored(self, results: Iterable[tuple[Delivery, PendingState]]) -> None:
        """Deliveries whose result (prepared, not known to be written) must be stored,
        then the delivery acked."""
        self._add(results)

    def _add(self, entries: Iterable[tuple[Delivery, PendingState | None]]) -> None:
        with self._lock:
            self._unacked.extend(entries)

    def due(self, now: float) -> bool:
        """Whether there is something to retry at ``now`` (``time.monotonic()``)."""
        return bool(self._unacked) and now >= self._next

    def retry(self, now: float) -> None:
        """Settle them again, one by one, until the broker is unreachable again (the
        rest wait, longer each time). A result is stored under the backend's full rules
        (a state stored meanwhile stays), then its delivery is acked. An ack is
        idempotent where it can fail this way (Redis: ZREM and HDEL of its tag); one
        that is settled after all (the broker refuses it) is dropped."""
        with self._lock:
            retry, self._unacked = self._unacked, []
        for index, (delivery, result) in enumerate(retry):
            unstored = result
            try:
                if result is not None:
                    self._store(result)
                    unstored = None
                delivery.ack()
            except (ConnectionLost, _StoreFailed) as exc:
                self._add([(delivery, unstored), *retry[index + 1:]])
                self._next = now + self._pause
                logger.warning("%d message(s) still to settle (%s); trying again in %gs",
                               len(retry) - index, exc, self._pause)
                self._pause = min(self._pause * 2, self.max_interval)
                return
            except Exception as exc:  # settled after all, or a transport bug: not again
                logger.warning("message %s: not acked again: %r", delivery.frame.task_id, exc)
        self._pause = self.interval
        self._next = now + self.interval
        logger.info("settled %d message(s) whose ack had failed", len(retry))

    def _store(self, pending: PendingState) -> None:
        store = self.store
        if store is None:  # only the fused path prepares results, and it sets a store
            raise _StoreFailed("no result backend to write to")
        try:
            store.store_pending(pending)
        except Exception as exc:
            raise _StoreFailed(f"result of {pending.task_id} not stored: {exc}") from exc


class _StoreFailed(Exception):
    """A result waiting in ``AckRetry`` could not be stored yet."""


class Settlement:
    """Settles the worker's jobs (see the module docstring for the rules).

    Args:
        transport: the worker's transport.
        queues: the queues to take new messages from with the acks.
        ledger: the worker's ledger: settled jobs stop taking room.
        unacked: where failed acks wait to be retried.
        stopping: set when the worker stops taking work (no refill then, and a requeue
            pause ends at once).
        route: routes the messages taken with the acks (the caller holds the ledger's
            ``receiving`` lock).
    """

    def __init__(
        self,
        transport: Transport,
        queues: Sequence[str],
        ledger: Ledger,
        unacked: AckRetry,
        stopping: threading.Event,
        route: Callable[[Sequence[Delivery]], None],
    ) -> None:
        self._transport = transport
        self._queues = list(queues)
        self._ledger = ledger
        self._unacked = unacked
        self._stopping = stopping
        self._route = route
        self._lock = threading.Lock()
        self._acks: list[Job] = []  # settled as "ack", waiting for a commit or flush
        self._committing = False
        self._fused: FusedSettlement | None = None
        self._deferred: DeferredStore | None = None
        #: Told every outcome settled here (the worker's task events), or None.
        self.on_outcome: Callable[[TaskMessage, Outcome], None] | None = None

    def use_fused(self, backend: object) -> DeferredStore | None:
        """Write ``backend``'s plain ``SUCCESS`` states with the acks, if the transport
        can (``FusedSettlement``) and the backend can defer them (``DeferredStore``).
        Returns the backend for the tracer to defer to, or None."""
        transport = self._transport
        if (
            isinstance(transport, FusedSettlement)
            and isinstance(backend, DeferredStore)
            and transport.stores_results_of(backend)
        ):
            self._fused, self._deferred = transport, backend
            self._unacked.store = backend
        return self._deferred

    # -- one job ----------------------------------------------------------------------

    def finish(self, job: Job, outcome: Outcome) -> None:
        """The pool's report: settle ``job`` as its ``outcome`` says. An ack is queued
        (sent by the next ``commit()`` or ``flush()``); a requeue (the backend failed)
        waits ``REQUEUE_PAUSE`` first, so that the message does not spin."""
        if outcome.settle == "none":
            return  # someone else settled it (a hard time limit came first)
        if self.on_outcome is not None:
            self.on_outcome(job.message, outcome)
        job.pending = outcome.pending
        if outcome.settle == "requeue":
            self._stopping.wait(REQUEUE_PAUSE)
        self.settle(job, outcome.settle, reason=outcome.reason)

    def settle(
        self, job: Job, action: Literal["ack", "requeue", "dead_letter"], *,
        only_if_queued: bool = False, reason: str = "",
    ) -> None:
        """Settle the job's delivery, once: later calls (and, with ``only_if_queued``,
        a job a pool has claimed) are left alone. An ack is queued."""
        if not job.take_settlement(only_if_queued=only_if_queued):
            return
        if action == "ack":
            with self._lock:
                self._acks.append(job)
            return
        try:
            if action == "requeue":
                job.delivery.reject(requeue=True)
            else:
                logger.warning("task %s dead-lettered: %s", job.describe, reason)
                job.delivery.dead_letter(reason)
        except TransportError:
            # The broker will redeliver an unsettled message (at least once).
            logger.exception("task %s: could not %s its message", job.describe, action)
        finally:
            self._ledger.discard(job)

    @property
    def acks_waiting(self) -> bool:
        """Whether acks are queued (read without the lock: a hint for the solo pool)."""
        return bool(self._acks)

    # -- sending acks -----------------------------------------------------------------

    def commit(self) -> None:
        """Send the queued acks (group commit): the first caller to find none under way
        becomes the committer and acknowledges every job queued meanwhile in one call,
        round after round until none is left; the others return at once. A job stays
        active (taking room) until its ack went through, so ``stop()`` waits for it."""
        with self._lock:
            if self._committing or not self._acks:
                return
            self._committing = True
        while True:
            with self._lock:
                batch, self._acks = self._acks, []
                if not batch:
                    self._committing = False
                    return
            self._commit(batch)

    def _commit(self, batch: list[Job]) -> None:
        """Acknowledge ``batch`` and, when no one else is receiving, take as many new
        messages as the acks make room for in the same call (one round trip on Redis),
        so a busy worker refills without a separate receive."""
        receiving = not self._stopping.is_set() and self._ledger.receiving.acquire(
            blocking=False
        )
        try:
            room = self._ledger.room(freed=len(batch)) if receiving else 0
            self._route(self.settle_batch(batch, room))
        finally:
            if receiving:
                self._ledger.receiving.release()

    def flush(self, *, receive: bool) -> Sequence[Delivery]:
        """Send the queued acks now, in this thread (the solo pool, after its batch).
        With ``receive``, take as many new messages as they make room for in the same
        call and return them, for the caller to route."""
        with self._lock:
            batch, self._acks = self._acks, []
        if not batch:
            return ()
        if not receive:
            return self.settle_batch(batch, 0)
        room = 0 if self._stopping.is_set() else self._ledger.room(freed=len(batch))
        with self._ledger.receiving:
            return self.settle_batch(batch, room)

    def settle_batch(self, batch: list[Job], room: int) -> Sequence[Delivery]:
        """One call that writes the batch's pending results, acknowledges its messages
        and takes up to ``room`` new ones (the caller may receive: it holds
        ``receiving``, or ``room`` is 0). The jobs stop counting as active."""
        deliveries: Sequence[Delivery] = ()
        stored = [j for j in batch if j.pending is not None]
        try:
            if stored:
                deliveries = self._store_ack_and_receive(batch, stored, room)
            elif room > 0:
                deliveries = self._transport.ack_and_receive(
                    [j.delivery for j in batch], self._queues, limit=room
                )
            else:
                self._transport.ack_many([j.delivery for j in batch])
        except Exception:
            # Their outcomes are recorded: the consumer acks them again later, so that
            # a broker blip does not make them run twice (at least once if it never
            # comes back before the worker stops).
            logger.exception(
                "could not ack the messages of %s; retrying every %gs",
                ", ".join(j.describe for j in batch), self._unacked.interval,
            )
            self._unacked.add(j.delivery for j in batch)
        finally:
            # The consumer takes the room the call did not fill (an empty queue, or
            # another receiver busy) and stop() counts what is left.
            self._ledger.discard_batch(batch, wake=len(deliveries) < room or room <= 0)
        return deliveries

    def _store_ack_and_receive(
        self, batch: list[Job], stored: list[Job], room: int
    ) -> Sequence[Delivery]:
        """The call for a batch with results to write (``Outcome.pending``): it writes
        each result and acks its message (store before ack, in one step), acks the
        others and refills. A result whose task already has a state stored is written
        under the backend's full rules, then acked. If the call fails, the results may
        not be stored: their messages are requeued (after a pause, as for a failed
        store) to run again."""
        fused = self._fused
        assert fused is not None  # only then has a job a pending state
        plain = [j.delivery for j in batch if j.pending is None]
        deliveries: Sequence[Delivery]
        skipped: list[int]
        try:
            deliveries, skipped = fused.store_ack_and_receive(
                [(j.delivery, j.pending) for j in stored if j.pending is not None], plain,
                self._queues,
                limit=max(room, 0),
            )
        except Exception as exc:
            # The call may or may not have landed (a lost reply): store each result
            # under the backend's full rules (a state stored by it stays), then ack,
            # until the broker answers. The tasks ran; they do not run again.
            logger.warning(
                "could not store the results of %s with their acks (%s); storing them "
                "and acking again until the broker answers",
                ", ".join(j.describe for j in stored), exc,
            )
            self._unacked.add_unstored(
                (j.delivery, j.pending) for j in stored if j.pending is not None
            )
            self._unacked.add(plain)  # their outcomes are recorded
            return ()
        for index in skipped:
            self._store_then_ack(stored[index])
        return deliveries

    def _store_then_ack(self, job: Job) -> None:
        """A result the fused call did not write (its task had a state already): write
        it under the backend's full rules, then ack."""
        deferred = self._deferred
        assert deferred is not None  # the fused call ran
        assert job.pending is not None  # what ``stored`` holds
        try:
            deferred.store_pending(job.pending)
        except Exception as exc:
            logger.warning("task %s: could not store SUCCESS (%s); storing it and acking "
                           "again until the backend answers", job.describe, exc)
            self._unacked.add_unstored([(job.delivery, job.pending)])
            return
        try:
            job.delivery.ack()
        except TransportError:
            logger.exception("task %s: could not ack its message", job.describe)
            self._unacked.add([job.delivery])

    def close(self) -> None:
        """At stop: send the acks still queued (a solo batch that finished as the wait
        ended) and try the failed ones a last time (the rest come back on close)."""
        self.flush(receive=False)
        if len(self._unacked):
            self._unacked.retry(time.monotonic())
