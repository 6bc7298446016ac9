"""The reference worker: consume task messages, honour eta and expires, run, report.

A ``Worker`` consumes one or more queues through its own transport, runs each task in a
pool of threads (default) or child processes, or one at a time in its consumer thread
(``pool="solo"``, like Celery's ``-P solo``), stores its states in the app's result
backend and sends its callbacks, and **acknowledges a message only after its task ran
and its outcome was stored** (at least once). It runs what Celery sends, and what it
sends back (callbacks, retries) runs on Celery.

Use it from Python::

    with Worker(app, queues=["celery"], concurrency=4):
        ...                                   # tasks run in the background

or block in it, as the ``wiretask worker`` command does (SIGTERM/SIGINT stop it
cleanly; a second one stops it at once, requeueing what is still running)::

    Worker(app, concurrency=4).run()

How it differs from Celery's worker, each for a reason written in ``spec/PROTOCOL.md``
("Worker"): an early eta message is re-published with a broker-side delay instead of
being held unacked (no visibility-timeout duplicates, no pile-up in memory); held eta
messages are bounded (``worker_eta_task_limit``); a message whose outcome could not be
stored is requeued rather than acked.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

from wiretask._pool import (
    ChildProcess,
    ThreadControl,
    find_app_path,
    portable_settings,
    spawn_context,
)
from wiretask._trace import Outcome, Tracer, WorkerLostError, format_traceback
from wiretask.errors import (
    ConnectionLost,
    DecodeError,
    ImproperlyConfigured,
    NotRegistered,
    TimeLimitExceeded,
    TransportError,
    ValidationError,
)
from wiretask.protocol import states
from wiretask.protocol.celery import decode
from wiretask.protocol.frame import Route
from wiretask.protocol.timing import is_expired
from wiretask.results.base import DeferredStore
from wiretask.transports.base import BrokerDelay, Delivery, FusedSettlement, Transport, queue_names

if TYPE_CHECKING:
    from wiretask.app import App
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.protocol.states import PendingState

__all__ = ["DEFAULT_ETA_TASK_LIMIT", "Worker", "WorkerLostError"]

logger = logging.getLogger("wiretask.worker")

#: Held eta messages per worker when ``worker_eta_task_limit`` is not set. Celery's
#: default is unlimited, which is how ETA messages pile up in worker memory (celery
#: #4843, #8069); only transports without native delayed delivery hold any at all.
DEFAULT_ETA_TASK_LIMIT = 1000
#: How often ``BrokerDelay.due()`` is called (moves due delayed messages on Redis).
DUE_INTERVAL = 0.5
#: Longest wait in one receive, so that stop() and due eta messages are noticed quickly.
POLL_INTERVAL = 0.2
#: Pause before requeueing a message whose outcome could not be stored (the backend is
#: probably down: requeueing at once would spin).
REQUEUE_PAUSE = 1.0
#: Longest pause after a broker error in the consume loop (doubling from 0.1 s).
MAX_BROKER_BACKOFF = 5.0
#: Seconds between attempts to acknowledge again a message whose ack failed.
ACK_RETRY_INTERVAL = 1.0
#: Solo pool: a task that has run this long gets the outcomes stored and the messages
#: acked that finished before it in its batch, instead of them waiting for its end.
SOLO_FLUSH_INTERVAL = 0.05

Pool = Literal["threads", "processes", "solo"]


class _Job:
    """One received message on its way through the worker, and the right to settle it.

    Exactly one settle takes effect (the slot that ran it, the hard time limit, or a
    stopping worker requeueing it), guarded by ``lock``.
    """

    def __init__(self, delivery: Delivery, message: TaskMessage) -> None:
        self.delivery = delivery
        self.message = message
        self.lock = threading.Lock()
        self.settled = False
        self.phase = "queued"  # queued -> claimed (a slot has it)
        self.control: ThreadControl | None = None
        self.abandoned = False  # requeued by a stopping worker; its outcome is ignored
        #: A SUCCESS state to write with the ack (``Outcome.pending``).
        self.pending: PendingState | None = None

    @property
    def describe(self) -> str:
        return f"{self.message.task}[{self.message.id}]"

    @property
    def delivery_info(self) -> dict[str, Any]:
        # Celery's delivery_info keys; ``queue`` is what Task.retry re-sends to.
        return {
            "exchange": "",
            "routing_key": self.delivery.queue,
            "queue": self.delivery.queue,
            "priority": self.delivery.frame.priority,
            "redelivered": self.delivery.redelivered,
        }


class Worker:
    """Consume queues and run the app's tasks.

    Args:
        app: the app; its ``tasks`` are what this worker runs, its backend stores the
            states, and it sends callbacks and retries.
        queues: queue names to consume (default ``app.conf.task_default_queue``).
        concurrency: tasks run at once (default ``worker_concurrency``, else the number
            of CPUs, like Celery; always 1 with ``pool="solo"``).
        pool: ``"threads"`` (default), ``"processes"`` (child processes started with
            ``spawn``; needs a broker and backend that other processes can reach) or
            ``"solo"`` (one task at a time, run by the thread that receives: no hand-off
            between threads, and the outcomes and acks of each batch of ``1 +
            prefetch`` messages written in one call; Celery's ``-P solo``).
        hostname: the node name in ``STARTED`` meta and ``self.request.hostname``
            (default ``wiretask@<host>``).
        app_path: ``"package.module:attribute"`` of the app, for child processes to
            import (default: found among the imported modules; required when the app
            lives in ``__main__``).
        prefetch: messages received beyond the free slots. A busy worker takes no more,
            so other workers get the rest. A solo worker receives only between batches,
            so a batch is up to ``1 + prefetch`` messages, run one after the other.
        eta_task_limit: most messages held for a future eta when the transport cannot
            delay them itself (default ``worker_eta_task_limit``, else 1000). At the
            limit the worker stops receiving until some come due.
        shutdown_timeout: seconds ``run()`` (and the context manager) waits for running
            tasks on stop before requeueing them; ``None`` waits for them to finish.
        transport: the transport to consume from (default ``app.new_transport()``).

    Raises:
        ValidationError: a bad queue name, concurrency or prefetch (or a concurrency
            other than 1 with ``pool="solo"``).
        ImproperlyConfigured: an unknown pool, or a process pool on an in-process broker
            or backend, or with no importable app path.
    """

    def __init__(
        self,
        app: App,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: Pool = "threads",
        hostname: str | None = None,
        app_path: str | None = None,
        prefetch: int = 1,
        eta_task_limit: int | None = None,
        shutdown_timeout: float | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.app = app
        self.queues: list[str] = queue_names(
            queues if queues is not None else [app.conf.task_default_queue]
        )
        if not self.queues:
            raise ValidationError("queues", "a worker needs at least one queue")
        if pool not in ("threads", "processes", "solo"):
            raise ImproperlyConfigured(
                f"unknown pool {pool!r}: use 'threads', 'processes' or 'solo'"
            )
        if pool == "solo":
            if concurrency not in (None, 1) or isinstance(concurrency, bool):
                raise ValidationError(
                    "concurrency",
                    f"pool='solo' runs one task at a time, so it must be 1, got {concurrency!r}",
                )
            concurrency = 1
        if concurrency is None:
            concurrency = app.conf.get("worker_concurrency") or os.cpu_count() or 1
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError("concurrency", f"must be an integer >= 1, got {concurrency!r}")
        self.concurrency: int = concurrency
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValidationError("prefetch", f"must be an integer >= 0, got {prefetch!r}")
        self.prefetch = prefetch
        if eta_task_limit is None:
            eta_task_limit = app.conf.get("worker_eta_task_limit") or DEFAULT_ETA_TASK_LIMIT
        self.eta_task_limit: int = eta_task_limit
        self.pool: Pool = pool
        self.hostname = hostname or f"wiretask@{socket.gethostname()}"
        self.shutdown_timeout = shutdown_timeout
        self.transport = transport if transport is not None else app.new_transport()
        self.app_path = app_path
        if pool == "processes":
            self._check_processes()

        self._tracer = Tracer(app, self.hostname)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._active: set[_Job] = set()  # dispatched (queued or running), not settled
        self._acks: list[_Job] = []  # settled as "ack", waiting for the flusher
        self._ack_lock = threading.Lock()
        self._acking = False  # a slot is flushing _acks
        #: Deliveries whose outcome is recorded but whose ack failed (the broker was
        #: unreachable): acknowledged again by the consumer until it goes through.
        self._unacked: list[Delivery] = []
        self._next_ack_retry = 0.0
        #: Held by whoever receives (the consumer, or a slot flushing acks), so that two
        #: receivers never count the same room.
        self._receiving = threading.Lock()
        self._held: list[tuple[float, int, Delivery, TaskMessage]] = []
        self._seq = itertools.count()
        self._slots: list[threading.Thread] = []
        self._children: list[ChildProcess] = []
        self._consumer: threading.Thread | None = None
        #: Solo pool: received jobs waiting for the consumer thread to run them; the
        #: consumer's generation (a new consumer takes over from one abandoned in a task
        #: at its hard time limit); when the running task started (monotonic), for the
        #: flusher thread.
        self._solo = pool == "solo"
        self._ready: collections.deque[_Job] = collections.deque()
        self._generation = 0
        self._running_since: float | None = None
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._stop_requested = threading.Event()  # stop taking work
        self._cold = threading.Event()  # stop waiting for running tasks
        self._stopped = threading.Event()
        self._lifecycle = threading.Lock()
        self._started = False
        self._stop_called = False

    def __repr__(self) -> str:
        return (
            f"<Worker {self.hostname} queues={self.queues} pool={self.pool} "
            f"concurrency={self.concurrency}>"
        )

    # -- life cycle -------------------------------------------------------------------

    def _check_processes(self) -> None:
        if not self.transport.capabilities.multi_process:
            raise ImproperlyConfigured(
                f"pool='processes' needs a broker other processes can reach; "
                f"{self.transport.url} is in-process"
            )
        if urllib.parse.urlsplit(self.app.backend_url).scheme == "memory":
            raise ImproperlyConfigured(
                "pool='processes' needs a result backend other processes can reach; "
                "memory:// is in-process"
            )
        if self.app_path is None:
            self.app_path = find_app_path(self.app)
        if self.app_path is None:
            raise ImproperlyConfigured(
                "pool='processes' needs to import the app in each child: pass "
                "app_path='package.module:app' (an app defined in __main__ cannot be found)"
            )

    def start(self) -> None:
        """Start consuming in background threads. Returns at once.

        Raises:
            ImproperlyConfigured: the worker was started before, or child processes
                could not load the app.
            TransportError: the broker cannot be reached.
        """
        with self._lifecycle:
            if self._started:
                raise ImproperlyConfigured("a Worker can be started only once")
            self._started = True
        try:
            self.transport.connect()
            for name in self.queues:
                self.transport.declare_queue(name)
            if self.pool == "processes":
                self._start_children()
            else:
                # Where the broker can write the backend's results in the script that
                # acks (Redis, same database), a plain SUCCESS is written with its ack:
                # one round trip for both, batched with the other slots' (``_flush``).
                backend = self.app.backend
                if (
                    isinstance(self.transport, FusedSettlement)
                    and isinstance(backend, DeferredStore)
                    and self.transport.stores_results_of(backend)
                ):
                    self._tracer.defer_results_of = backend
                if self._solo:
                    self._flusher = threading.Thread(
                        target=self._solo_flusher, name=f"wiretask-flusher-{self.hostname}",
                        daemon=True,
                    )
                    self._flusher.start()
                else:
                    for _ in range(self.concurrency):
                        self._add_thread_slot()
        except BaseException:
            self.stop(0)  # release what was started (threads, the connection)
            raise
        self._start_consumer()
        logger.info(
            "worker %s ready: queues %s, %s pool, concurrency %d",
            self.hostname, ",".join(self.queues), self.pool, self.concurrency,
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop: take no more messages, give back held eta messages and those not yet
        started, wait up to ``timeout`` seconds (None: as long as it takes) for running
        tasks, requeue the ones still running, and close the transport.

        Safe to call more than once and from any thread; later calls wait for the
        first one to finish.
        """
        with self._lifecycle:
            first = self._started and not self._stop_called
            self._stop_called = True
            self._stop_requested.set()
            if not self._started:
                self._stopped.set()
        if not first:
            self._stopped.wait()
            return
        try:
            self._shutdown(timeout)
        finally:
            self._stopped.set()

    def _shutdown(self, timeout: float | None) -> None:
        logger.info("worker %s stopping", self.hostname)
        with self._cv:
            self._cv.notify_all()
        if self._consumer is not None and not self._solo:
            # (A solo consumer runs the tasks: it is joined below with the slots, after
            # the wait for running tasks.)
            self._consumer.join()
        with self._cv:
            held, self._held = self._held, []
            dispatched = list(self._active)
        for _, _, delivery, message in held:
            self._reject_requeue(delivery, f"{message.task}[{message.id}]")
        for job in dispatched:
            # Not started yet: give it back now (a slot that takes it later skips it).
            self._settle(job, "requeue", only_if_queued=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._active and not self._cold.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cv.wait(POLL_INTERVAL if remaining is None else min(remaining, POLL_INTERVAL))
            unfinished = list(self._active)
        for job in unfinished:
            self._abandon(job)
        slots = list(self._slots)
        for _ in slots:
            self._jobs.put(None)
        join_until = time.monotonic() + 1.0
        for slot in slots:
            # An abandoned thread may never return (it is a daemon); the others do.
            slot.join(max(join_until - time.monotonic(), 0.0))
        if self._flusher is not None:
            self._flusher_stop.set()
            self._flusher.join()
        leftover = self._take_acks()  # a solo batch that finished as the wait ended
        if leftover:
            self._settle_batch(leftover, 0)
        if self._unacked:
            self._retry_acks(time.monotonic())  # a last try; the rest come back on close
        for child in self._children:
            child.close()
        self.transport.close()
        logger.info("worker %s stopped", self.hostname)

    def _abandon(self, job: _Job) -> None:
        """Requeue a running job's message at shutdown and ignore its outcome."""
        logger.warning("task %s still running at shutdown: requeued", job.describe)
        if job.control is not None:
            job.control.abandon()
        job.abandoned = True
        self._settle(job, "requeue")

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(self.shutdown_timeout)

    def run(self) -> None:
        """Start and block until stopped (``stop()`` from another thread, or a signal).

        On the main thread it handles SIGTERM and SIGINT: the first stops taking work
        and waits for running tasks (up to ``shutdown_timeout``), a second one requeues
        them at once. Returns normally, so a CLI process exits 0.
        """
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            while not self._stop_requested.wait(0.5):
                pass
            self.stop(self.shutdown_timeout)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if self._stop_requested.is_set():
            logger.warning("%s again: requeueing running tasks and stopping now", name)
            self._cold.set()
        else:
            logger.warning("%s: finishing running tasks, then stopping", name)
            self._stop_requested.set()

    # -- consuming --------------------------------------------------------------------

    def _room(self, freed: int = 0) -> int:
        """How many messages the worker may take now, or once ``freed`` of its active
        jobs are settled (under ``_cv``)."""
        return min(
            self.concurrency + self.prefetch - len(self._active) + freed,
            self.eta_task_limit - len(self._held),
        )

    def _start_consumer(self) -> None:
        """Start the consumer thread (again, for a solo worker whose consumer was
        abandoned in a task at its hard time limit)."""
        self._generation += 1
        thread = threading.Thread(
            target=self._consume, args=(self._generation,),
            name=f"wiretask-consumer-{self.hostname}", daemon=True,
        )
        self._consumer = thread
        if self._solo:
            self._slots.append(thread)  # it runs tasks: joined like a slot at stop
        thread.start()

    def _consume(self, generation: int) -> None:
        """The consumer thread: receive while there is room, route each message; a solo
        worker's consumer also runs them."""
        next_due = 0.0
        backoff = 0.0
        refill: Sequence[Delivery] = ()
        while not self._stop_requested.is_set():
            try:
                now = time.monotonic()
                if self._unacked and now >= self._next_ack_retry:
                    self._retry_acks(now)
                if now >= next_due:
                    if isinstance(self.transport, BrokerDelay):
                        self.transport.due()
                    next_due = now + DUE_INTERVAL
                self._release_due()
                if refill:
                    deliveries, refill = refill, ()
                    with self._receiving:
                        self._handle(deliveries)
                if self._solo and (self._ready or self._acks):
                    # Solo: run what was received, then store, ack and refill in one
                    # call (``_flush_solo``); acks settled meanwhile by a time limit
                    # are sent the same way.
                    if not self._run_ready(generation):
                        return  # abandoned in a task: a new consumer has taken over
                    refill = self._flush_solo()
                    backoff = 0.0
                    continue
                wait = min(POLL_INTERVAL, max(next_due - time.monotonic(), 0.0))
                with self._cv:
                    if self._held:
                        until_eta = self._held[0][0] - self.app.now().timestamp()
                        wait = min(wait, max(until_eta, 0.0))
                    if self._room() < 1:
                        self._cv.wait(wait)
                        continue
                with self._receiving:
                    with self._cv:
                        room = self._room()
                    if room < 1:
                        continue
                    # As many as there is room for, in one round trip where the broker
                    # can; dispatched before another receiver counts the room.
                    deliveries = self.transport.receive_many(
                        self.queues, limit=room, timeout=wait
                    )
                    self._handle(deliveries)
                backoff = 0.0
            except Exception as exc:
                # TransportError is the expected kind (broker down); anything else is a
                # bug in a transport, and neither may end the consumer thread.
                backoff = min(max(backoff * 2, 0.1), MAX_BROKER_BACKOFF)
                if isinstance(exc, TransportError):
                    logger.warning("broker error (%s); retrying in %.1fs", exc, backoff)
                else:
                    logger.exception("unexpected error consuming; retrying in %.1fs", backoff)
                if self._stop_requested.wait(backoff):
                    break
                try:
                    self.transport.connect()
                except TransportError:
                    pass
                continue
        if refill:  # taken by a solo flush as the worker stopped: given back
            with self._receiving:
                self._handle(refill)
        if generation == self._generation:
            # Solo: routed as stop() began, after it gathered what to give back.
            while self._ready:
                self._settle(self._ready.popleft(), "requeue", only_if_queued=True)

    def _handle(self, deliveries: Iterable[Delivery]) -> None:
        """Route received messages (the caller holds ``_receiving``)."""
        for delivery in deliveries:
            if self._stop_requested.is_set():
                self._reject_requeue(delivery, str(delivery.frame.task_id))
                continue
            try:
                self._on_delivery(delivery)
            except Exception as exc:
                # A bug here must not stop consumption, nor bring the message back to
                # fail again for ever: it is kept in the dead-letter place.
                logger.exception("error handling message %s", delivery.frame.task_id)
                self._dead_letter(delivery, f"worker error: {exc!r}")

    def _on_delivery(self, delivery: Delivery) -> None:
        try:
            message = decode(delivery.frame, self.app.registry)
        except DecodeError as exc:  # ContentDisallowed and MessageTooLarge included
            self._dead_letter(delivery, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            # decode() promises DecodeError; anything else is a bug there, and the
            # message must still not come back forever (a poison message).
            logger.exception("unexpected error decoding message %s", delivery.frame.task_id)
            self._dead_letter(delivery, f"{type(exc).__name__}: {exc}")
            return
        task = self.app.tasks.get(message.task)
        if task is None:
            self._unregistered(delivery, message)
            return
        logger.info("task %s[%s] received", message.task, message.id)
        if message.eta is not None:
            now = self.app.now()
            if message.eta > now and not is_expired(message.expires, now=now):
                self._delay(delivery, message)
                return
        # An expired message is dispatched too: the slot revokes it and calls errbacks.
        self._dispatch(delivery, message)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        logger.error(
            "message %s from %s dead-lettered: %s", delivery.frame.task_id, delivery.queue, reason
        )
        try:
            delivery.dead_letter(reason)
        except TransportError:
            logger.exception("could not dead-letter message %s", delivery.frame.task_id)

    def _unregistered(self, delivery: Delivery, message: TaskMessage) -> None:
        # Celery logs, rejects the message and stores FAILURE/NotRegistered for the id
        # (§E.2). wiretask dead-letters it instead of dropping it: nothing is lost.
        exc = NotRegistered(message.task)
        if not message.ignore_result:
            try:
                self._tracer.store(message, states.FAILURE, exc, tb=format_traceback(exc))
            except Exception:
                logger.exception("task %s[%s]: could not store FAILURE", message.task, message.id)
        self._dead_letter(delivery, f"unregistered task {message.task}")

    def _delay(self, delivery: Delivery, message: TaskMessage) -> None:
        """A message that arrived before its eta (Celery's Redis producers push eta
        messages straight to the list; the worker is expected to hold them)."""
        assert message.eta is not None
        if self.transport.capabilities.native_delay:
            # Hand it back to the broker with a delay, then ack the early copy: publish
            # first, so that a crash in between duplicates rather than loses (at least
            # once). Nothing is held unacked, so a visibility timeout cannot redeliver
            # it while it waits (celery #2599, #4400) and it costs no worker memory.
            try:
                self.transport.publish(
                    delivery.frame, Route(delivery.queue), not_before=message.eta
                )
            except TransportError:
                logger.exception(
                    "task %s[%s]: could not re-publish for its eta; holding it here",
                    message.task, message.id,
                )
            else:
                try:
                    delivery.ack()
                except TransportError:
                    logger.exception("task %s[%s]: could not ack the early copy",
                                     message.task, message.id)
                    self._ack_later([delivery])
                logger.info(
                    "task %s[%s] eta %s: re-published for delayed delivery",
                    message.task, message.id, message.eta.isoformat(),
                )
                return
        with self._cv:
            heapq.heappush(
                self._held, (message.eta.timestamp(), next(self._seq), delivery, message)
            )
        logger.info(
            "task %s[%s] held until its eta %s", message.task, message.id, message.eta.isoformat()
        )

    def _release_due(self) -> None:
        if not self._held:
            return
        now = self.app.now().timestamp()
        due: list[tuple[Delivery, TaskMessage]] = []
        with self._cv:
            while self._held and self._held[0][0] <= now:
                _, _, delivery, message = heapq.heappop(self._held)
                due.append((delivery, message))
        for delivery, message in due:
            self._dispatch(delivery, message)

    def _dispatch(self, delivery: Delivery, message: TaskMessage) -> None:
        job = _Job(delivery, message)
        with self._cv:
            self._active.add(job)
        if self._solo:
            self._ready.append(job)  # run by the consumer thread itself
        else:
            self._jobs.put(job)

    def _reject_requeue(self, delivery: Delivery, what: str) -> None:
        try:
            delivery.reject(requeue=True)
        except TransportError:
            logger.exception("could not requeue message %s", what)

    # -- settling ---------------------------------------------------------------------

    def _claim(self, job: _Job) -> bool:
        """A slot takes a job; False if it was settled meanwhile (requeued at stop)."""
        with job.lock:
            if job.settled:
                return False
            job.phase = "claimed"
            return True

    def _settle(
        self, job: _Job, action: Literal["ack", "requeue", "dead_letter"], *,
        only_if_queued: bool = False, reason: str = "",
    ) -> None:
        """Settle the job's delivery, once: later calls (and, with ``only_if_queued``,
        a job a slot has claimed) are left alone."""
        with job.lock:
            if job.settled or (only_if_queued and job.phase != "queued"):
                return
            job.settled = True
        if action == "ack":
            self._ack(job)
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
            with self._cv:
                self._active.discard(job)
                self._cv.notify_all()

    def _ack(self, job: _Job) -> None:
        """Acknowledge a job's message, batched with the acks of the other slots (group
        commit): the first slot to finish becomes the flusher and acknowledges every
        job queued meanwhile in one call, round after round until no job is left; the
        others return at once. A job stays active (taking room) until its ack went
        through, so ``stop()`` waits for it, and an ack is still sent only after its
        outcome was stored. A solo worker's consumer (or its flusher) sends them after
        its batch (``_flush_solo``)."""
        with self._ack_lock:
            self._acks.append(job)
            if self._acking or self._solo:
                return
            self._acking = True
        while True:
            with self._ack_lock:
                batch, self._acks = self._acks, []
                if not batch:
                    self._acking = False
                    return
            self._flush(batch)

    def _flush(self, batch: list[_Job]) -> None:
        """Acknowledge ``batch`` and, when no one else is receiving, take as many new
        messages as the acks make room for in the same call (``ack_and_receive``: one
        round trip on Redis), so a busy worker refills without a separate receive."""
        receiving = not self._stop_requested.is_set() and self._receiving.acquire(
            blocking=False
        )
        try:
            room = 0
            if receiving:
                with self._cv:
                    room = self._room(freed=len(batch))
            self._handle(self._settle_batch(batch, room))
        finally:
            if receiving:
                self._receiving.release()

    def _settle_batch(self, batch: list[_Job], room: int) -> Sequence[Delivery]:
        """One call that writes the batch's pending results, acknowledges its messages
        and takes up to ``room`` new ones (the caller may receive: it holds
        ``_receiving``, or ``room`` is 0). The jobs stop counting as active."""
        deliveries: Sequence[Delivery] = ()
        stored = [j for j in batch if j.pending is not None]
        try:
            if stored:
                deliveries = self._store_ack_and_receive(batch, stored, room)
            elif room > 0:
                deliveries = self.transport.ack_and_receive(
                    [j.delivery for j in batch], self.queues, limit=room
                )
            else:
                self.transport.ack_many([j.delivery for j in batch])
        except Exception:
            # Their outcomes are recorded: the consumer acks them again later, so that
            # a broker blip does not make them run twice (at least once if it never
            # comes back before the worker stops).
            logger.exception(
                "could not ack the messages of %s; retrying every %gs",
                ", ".join(j.describe for j in batch), ACK_RETRY_INTERVAL,
            )
            self._ack_later([j.delivery for j in batch])
        finally:
            with self._cv:
                self._active.difference_update(batch)
                # The consumer takes the room the flush did not fill (an empty queue,
                # or another receiver busy) and stop() counts what is left.
                if len(deliveries) < room or room <= 0:
                    self._cv.notify_all()
        return deliveries

    def _store_ack_and_receive(
        self, batch: list[_Job], stored: list[_Job], room: int
    ) -> Sequence[Delivery]:
        """The flush of a batch with results to write (``Outcome.pending``): one call
        writes each result and acks its message (store before ack, in one script),
        acks the others and refills. A result whose task already has a state stored
        is written under the backend's full rules, then acked. If the call fails, the
        results may not be stored: their messages are requeued (after a pause, as for a
        failed store) to run again."""
        transport = self.transport
        assert isinstance(transport, FusedSettlement)  # only then has a job a pending state
        plain = [j.delivery for j in batch if j.pending is None]
        deliveries: Sequence[Delivery]
        skipped: list[int]
        try:
            deliveries, skipped = transport.store_ack_and_receive(
                [(j.delivery, j.pending) for j in stored if j.pending is not None], plain,
                self.queues,
                limit=max(room, 0),
            )
        except Exception:
            logger.exception(
                "could not store the results of %s; their messages are requeued to run "
                "again", ", ".join(j.describe for j in stored),
            )
            self._stop_requested.wait(REQUEUE_PAUSE)
            for job in stored:
                self._reject_requeue(job.delivery, job.describe)
            self._ack_later(plain)  # their outcomes are recorded
            return ()
        backend = self._tracer.defer_results_of
        assert backend is not None
        for index in skipped:
            job = stored[index]
            assert job.pending is not None  # what ``stored`` holds
            try:
                backend.store_pending(job.pending)
            except Exception:
                logger.exception(
                    "task %s: could not store SUCCESS; the message is requeued to run "
                    "again", job.describe,
                )
                self._stop_requested.wait(REQUEUE_PAUSE)
                self._reject_requeue(job.delivery, job.describe)
                continue
            try:
                job.delivery.ack()
            except TransportError:
                logger.exception("task %s: could not ack its message", job.describe)
                self._ack_later([job.delivery])
        return deliveries

    def _ack_later(self, deliveries: Iterable[Delivery]) -> None:
        with self._ack_lock:
            self._unacked.extend(deliveries)

    def _retry_acks(self, now: float) -> None:
        """Acknowledge again the messages whose ack failed, one by one, until the broker
        is unreachable again (the rest wait ``ACK_RETRY_INTERVAL``). An ack is
        idempotent where it can fail this way (Redis: ZREM and HDEL of its tag); one
        that is settled after all (the broker refuses it) is dropped."""
        self._next_ack_retry = now + ACK_RETRY_INTERVAL
        with self._ack_lock:
            retry, self._unacked = self._unacked, []
        for index, delivery in enumerate(retry):
            try:
                delivery.ack()
            except ConnectionLost:
                self._ack_later(retry[index:])
                return
            except Exception as exc:  # settled after all, or a transport bug: not again
                logger.warning("message %s: not acked again: %r", delivery.frame.task_id, exc)
        logger.info("acked %d message(s) whose ack had failed", len(retry))

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        if outcome.settle == "none":
            return
        job.pending = outcome.pending
        if outcome.settle == "requeue":
            # The backend failed: wait a little so the message does not spin.
            self._stop_requested.wait(REQUEUE_PAUSE)
        self._settle(job, outcome.settle, reason=outcome.reason)

    def _limits(self, message: TaskMessage) -> tuple[float | None, float | None]:
        """``(hard, soft)`` seconds: the message's ``timelimit``, else the app's
        ``task_time_limit``/``task_soft_time_limit`` (as Celery's worker defaults)."""
        hard, soft = message.timelimit
        if hard is None:
            hard = self.app.conf.get("task_time_limit")
        if soft is None:
            soft = self.app.conf.get("task_soft_time_limit")
        # A limit past what a timer can wait (threading.TIMEOUT_MAX, centuries) is none.
        if hard is not None and hard >= threading.TIMEOUT_MAX:
            hard = None
        if soft is not None and soft >= threading.TIMEOUT_MAX:
            soft = None
        return (hard or None), (soft or None)

    def _time_limit_exceeded(self, job: _Job, hard: float) -> None:
        """Record a hard time limit: ``FAILURE``/``TimeLimitExceeded`` (Celery stores
        ``TimeLimitExceeded(<hard>)``), errbacks, ack."""
        exc = TimeLimitExceeded(hard)
        request = self._tracer.request_for(job.message, job.delivery_info)
        outcome = self._tracer.fail(job.message, request, exc, tb=format_traceback(exc))
        self._finish(job, outcome)

    # -- thread pool ------------------------------------------------------------------

    def _add_thread_slot(self) -> None:
        thread = threading.Thread(
            target=self._thread_slot,
            name=f"wiretask-slot-{len(self._slots)}",
            daemon=True,
        )
        self._slots.append(thread)
        thread.start()

    def _thread_slot(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._claim(job) and not self._run(job):
                return  # abandoned in the task: a new thread has this slot

    def _run(self, job: _Job) -> bool:
        """Run a claimed job's task in this thread, under its time limits, and settle
        it. False if the run was abandoned (its hard time limit passed, and a new
        thread took over from this one; or a stopping worker requeued it): the thread
        must then stop working for the worker."""
        hard, soft = self._limits(job.message)

        def on_hard(job: _Job = job, hard: float | None = hard) -> None:
            # This thread is stuck in the task: a new one takes over its work.
            if not self._stop_requested.is_set():
                if self._solo:
                    self._start_consumer()
                else:
                    self._add_thread_slot()
            self._time_limit_exceeded(job, hard or 0.0)

        job.control = ThreadControl(soft=soft, hard=hard, on_hard=on_hard, describe=job.describe)
        try:
            outcome = self._tracer.execute(
                job.message, delivery_info=job.delivery_info, control=job.control
            )
        except Exception as exc:
            # A bug in the worker, not in the task: keep the message, but out of the
            # queue, where it would fail the same way again and again.
            logger.exception("task %s: unexpected error in the worker", job.describe)
            outcome = Outcome(states.FAILURE, "dead_letter", reason=f"worker error: {exc!r}")
        if outcome.settle == "none":
            return False  # the outcome was recorded elsewhere
        self._finish(job, outcome)
        return True

    # -- solo pool --------------------------------------------------------------------

    def _run_ready(self, generation: int) -> bool:
        """Solo: run the received jobs one after the other in this, the consumer
        thread; their acks wait for ``_flush_solo``. Jobs left when the worker stops
        are requeued. False if this thread was abandoned in a task (hard time limit,
        or a stopping worker gave up on it)."""
        while self._ready:
            job = self._ready.popleft()
            if self._stop_requested.is_set():
                self._settle(job, "requeue", only_if_queued=True)
                continue
            if not self._claim(job):
                continue
            self._running_since = time.monotonic()
            try:
                going_on = self._run(job)
            finally:
                if generation == self._generation:
                    self._running_since = None
            if not going_on or generation != self._generation:
                return False
        return True

    def _take_acks(self) -> list[_Job]:
        with self._ack_lock:
            batch, self._acks = self._acks, []
        return batch

    def _flush_solo(self) -> Sequence[Delivery]:
        """Solo: after a batch ran, write its results, ack its messages and take the
        next batch, in one call (one round trip on Redis). Returns what it took."""
        batch = self._take_acks()
        if not batch:
            return ()
        with self._cv:
            room = 0 if self._stop_requested.is_set() else self._room(freed=len(batch))
        with self._receiving:
            return self._settle_batch(batch, room)

    def _solo_flusher(self) -> None:
        """Solo: while a task runs longer than ``SOLO_FLUSH_INTERVAL``, the outcomes of
        the tasks that finished before it in its batch are stored and acked from here,
        so a long task does not hold back the results of quick ones."""
        while not self._flusher_stop.wait(SOLO_FLUSH_INTERVAL):
            since = self._running_since
            # Also while stopping: a consumer that has exited leaves acks behind (one
            # settled by a hard time limit after it left), and stop() waits for them.
            if not self._stop_requested.is_set() and (
                since is None or time.monotonic() - since < SOLO_FLUSH_INTERVAL
            ):
                continue
            batch = self._take_acks()
            if batch:
                self._settle_batch(batch, 0)

    # -- process pool -----------------------------------------------------------------

    def _new_child(self, index: int) -> ChildProcess:
        assert self.app_path is not None
        return ChildProcess(
            spawn_context(),
            app_path=self.app_path,
            settings=portable_settings(self.app.conf),
            hostname=self.hostname,
            log_level=logging.getLogger("wiretask").getEffectiveLevel(),
            index=index,
        )

    def _start_children(self) -> None:
        children = [self._new_child(i) for i in range(self.concurrency)]
        try:
            for child in children:
                child.wait_ready()
        except ImproperlyConfigured:
            for child in children:
                child.kill()
            raise
        self._children = children
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._process_slot, args=(index,), name=f"wiretask-slot-{index}",
                daemon=True,
            )
            self._slots.append(thread)
            thread.start()

    def _replace_child(self, index: int) -> bool:
        """Start a new child for slot ``index`` (retrying until it starts or the
        worker stops). False if the worker is stopping."""
        delay = 0.5
        while not self._stop_requested.is_set():
            try:
                child = self._new_child(index)
                child.wait_ready()
            except ImproperlyConfigured:
                logger.exception("could not start a worker child process; retrying")
                if self._stop_requested.wait(delay):
                    return False
                delay = min(delay * 2, MAX_BROKER_BACKOFF)
                continue
            self._children[index] = child
            return True
        return False

    def _process_slot(self, index: int) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not self._claim(job):
                continue
            child = self._children[index]
            hard, soft = self._limits(job.message)
            deadline = None if hard is None else time.monotonic() + hard
            outcome: Outcome | None = None
            lost = False
            try:
                child.submit(job.message, job.delivery_info, soft)
            except (OSError, ValueError):
                lost = True
            while not lost:
                if job.abandoned:  # requeued by a stopping worker
                    child.kill()
                    return
                wait = POLL_INTERVAL
                if deadline is not None:
                    wait = max(min(wait, deadline - time.monotonic()), 0.0)
                try:
                    outcome = child.wait(wait)
                except (EOFError, OSError):
                    lost = True
                    break
                if outcome is not None or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    break
            if outcome is not None:
                self._finish(job, outcome)
                continue
            child.kill()
            if lost:
                exc = WorkerLostError(f"worker process exited with exit code {child.exitcode}")
                logger.error("task %s: %s", job.describe, exc)
                request = self._tracer.request_for(job.message, job.delivery_info)
                self._finish(job, self._tracer.fail(job.message, request, exc))
            else:
                logger.error(
                    "task %s: hard time limit (%gs) exceeded; child process %s killed",
                    job.describe, hard, child.pid,
                )
                self._time_limit_exceeded(job, hard or 0.0)
            if not self._replace_child(index):
                return

    # -- introspection ----------------------------------------------------------------

    @property
    def active(self) -> int:
        """Messages dispatched to the pool and not settled yet (queued or running)."""
        with self._cv:
            return len(self._active)

    @property
    def held(self) -> int:
        """Messages held for a future eta (transports without native delay only)."""
        with self._cv:
            return len(self._held)

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._started and not self._stopped.is_set()

