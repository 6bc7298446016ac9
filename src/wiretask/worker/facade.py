"""The ``Worker`` facade: arguments, start/stop/run, signals, introspection.

It checks its arguments, builds the parts and wires them together, and owns the life
cycle; the work itself is done by the parts (see the package docstring). Stopping, in
order: take no more work (``stopping``), wait until the consumer can dispatch nothing
more, give back the held eta messages and the jobs not started yet, wait up to the
timeout for the running ones, requeue what still runs (``Pool.abandon``), stop the
pool, send the last acks, close the transport.

Threading: ``start`` and ``stop`` may be called from any thread; ``_lifecycle`` guards
the started/stopping flags, so a second ``stop`` waits for the first one (``_stopped``).
``run`` blocks the calling thread and, on the main thread, turns SIGTERM/SIGINT into a
stop (a second signal sets ``_cold``: the running tasks are requeued at once).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from wiretask.control.mailbox import Command, Mailbox
from wiretask.control.revoked import RevokedStore
from wiretask.control.wire import (
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_EXPIRES,
    DEFAULT_QUEUE_TTL,
    LamportClock,
    node_queue,
)
from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.events.dispatcher import EventDispatcher
from wiretask.events.wire import DEFAULT_EXCHANGE, event_exchange
from wiretask.events.worker import HEARTBEAT_FREQ, WorkerEvents
from wiretask.transports.base import Broadcast, Transport, queue_names
from wiretask.worker.consumer import Consumer
from wiretask.worker.ledger import Ledger
from wiretask.worker.pools import POOLS, Pool, PoolContext, PoolName, PoolSetup
from wiretask.worker.remote import RemoteControl
from wiretask.worker.routing import (
    HoldEarly,
    LogReceived,
    RateLimit,
    RefuseUnregistered,
    Router,
    Step,
)
from wiretask.worker.settlement import AckRetry, Settlement, requeue
from wiretask.worker.tracer import Tracer

if TYPE_CHECKING:
    from wiretask.app import App
    from wiretask.worker.job import Job

__all__ = ["DEFAULT_ETA_TASK_LIMIT", "Worker"]

logger = logging.getLogger("wiretask.worker")

#: Held eta messages per worker when ``worker_eta_task_limit`` is not set. Celery's
#: default is unlimited, which is how ETA messages pile up in worker memory (celery
#: #4843, #8069); only transports without native delayed delivery hold any at all.
DEFAULT_ETA_TASK_LIMIT = 1000
#: How long ``stop()`` waits for pool and consumer threads to end once it gave up on
#: what they run (an abandoned thread may never return).
JOIN_TIMEOUT = 1.0


def _pool_class(pool: PoolName | type[Pool]) -> type[Pool]:
    if isinstance(pool, type) and issubclass(pool, Pool):
        return pool
    found = POOLS.get(pool) if isinstance(pool, str) else None
    if found is None:
        raise ImproperlyConfigured(
            f"unknown pool {pool!r}: use 'threads', 'processes' or 'solo'"
        )
    return found


def _positive(name: str, given: int | None, setting: int | None) -> int | None:
    value = given if given is not None else setting
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValidationError(name, f"must be an integer >= 1, got {value!r}")
    return value


def _prefetch(
    app: App, concurrency: int, prefetch: int | None, multiplier: int | None
) -> int | None:
    """Messages reserved beyond the running ones (None: no limit), Celery's way:
    ``concurrency * worker_prefetch_multiplier``, 0 meaning no limit, none at all
    with ``worker_disable_prefetch``; an explicit ``prefetch`` wins."""
    if prefetch is not None and multiplier is not None:
        raise ValidationError(
            "prefetch", "give prefetch or prefetch_multiplier, not both", value=prefetch
        )
    if prefetch is not None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValidationError("prefetch", f"must be an integer >= 0, got {prefetch!r}")
        return prefetch
    if multiplier is None:
        if app.conf.get("worker_disable_prefetch"):
            return 0
        multiplier = app.conf.get("worker_prefetch_multiplier", 4)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 0:
        raise ValidationError(
            "prefetch_multiplier", f"must be an integer >= 0, got {multiplier!r}"
        )
    return None if multiplier == 0 else concurrency * multiplier


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
            prefetch`` messages written in one call; Celery's ``-P solo``); or a
            ``wiretask.worker.pools.Pool`` subclass.
        hostname: the node name in ``STARTED`` meta and ``self.request.hostname``
            (default ``wiretask@<host>``).
        app_path: ``"package.module:attribute"`` of the app, for child processes to
            import (default: found among the imported modules; required when the app
            lives in ``__main__``).
        prefetch_multiplier: Celery's ``worker_prefetch_multiplier`` (default: that
            setting, 4): the worker reserves ``concurrency * prefetch_multiplier``
            messages beyond the ones running, as Celery's worker (which acks a message
            when it starts) reserves that many unacked ones. ``0``: no limit, as in
            Celery (the worker takes what it is given, ``UNLIMITED_RECEIVE`` per call).
            ``worker_disable_prefetch`` makes it reserve none.
        prefetch: wiretask's own, instead of the multiplier: exactly this many messages
            reserved beyond the free slots. A busy worker takes no more, so other
            workers get the rest. A solo worker receives only between batches, so a
            batch is up to ``1 + prefetch`` messages, run one after the other.
        eta_task_limit: most messages held for a future eta (or for a rate limit) when
            the transport cannot delay them itself (default ``worker_eta_task_limit``,
            else 1000). At the limit the worker stops receiving until some come due.
        max_tasks_per_child: ``pool="processes"``: replace a child process after it ran
            this many tasks (default ``worker_max_tasks_per_child``; Celery's
            ``--max-tasks-per-child``). Other pools refuse it: they have no child.
        max_memory_per_child: ``pool="processes"``: replace a child process after a
            task that left its resident memory above this many KiB (default
            ``worker_max_memory_per_child``).
        shutdown_timeout: seconds ``run()`` (and the context manager) waits for running
            tasks on stop before requeueing them; ``None`` waits for them to finish.
        transport: the transport to consume from (default ``app.new_transport()``).
        statedb: file that keeps the revoked task ids across restarts (default
            ``worker_state_db``; Celery's ``--statedb``; ``control.revoked`` says what
            it holds).
        remote_control: listen on Celery's control channel (ping, inspect, revoke;
            default ``worker_enable_remote_control``, else True). Needs a transport that
            offers ``Broadcast``; without one a warning says remote control is off.
        send_events: send Celery's task events (``task-received`` ... ``task-failed``;
            default ``worker_send_task_events``, else False; Celery's ``-E``). The
            ``enable_events``/``disable_events`` control commands turn them on and off.
            Needs a transport that offers ``Broadcast`` (``events.worker``).
        heartbeat: send the worker events (``worker-online``, ``worker-heartbeat``,
            ``worker-offline``), as Celery's worker does unless ``--without-heartbeat``
            (default True, on a transport that offers ``Broadcast``).
        heartbeat_interval: seconds between heartbeats (default 2, as Celery).

    Raises:
        ValidationError: a bad queue name, concurrency, prefetch or prefetch
            multiplier (or a concurrency other than 1 with ``pool="solo"``).
        ImproperlyConfigured: an unknown pool, or a process pool on an in-process broker
            or backend, or with no importable app path.
    """

    def __init__(
        self,
        app: App,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: PoolName | type[Pool] = "threads",
        hostname: str | None = None,
        app_path: str | None = None,
        prefetch_multiplier: int | None = None,
        prefetch: int | None = None,
        eta_task_limit: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        shutdown_timeout: float | None = None,
        transport: Transport | None = None,
        statedb: str | os.PathLike[str] | None = None,
        remote_control: bool | None = None,
        send_events: bool | None = None,
        heartbeat: bool = True,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.app = app
        self.queues: list[str] = queue_names(
            queues if queues is not None else [app.conf.task_default_queue]
        )
        if not self.queues:
            raise ValidationError("queues", "a worker needs at least one queue")
        pool_class = _pool_class(pool)
        concurrency = pool_class.resolve_concurrency(concurrency)
        if concurrency is None:
            concurrency = app.conf.get("worker_concurrency") or os.cpu_count() or 1
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError("concurrency", f"must be an integer >= 1, got {concurrency!r}")
        self.concurrency: int = concurrency
        #: Messages reserved beyond the running ones; None: no limit.
        self.prefetch: int | None = _prefetch(app, concurrency, prefetch, prefetch_multiplier)
        if eta_task_limit is None:
            eta_task_limit = app.conf.get("worker_eta_task_limit") or DEFAULT_ETA_TASK_LIMIT
        self.eta_task_limit: int = eta_task_limit
        self.pool: str = pool_class.name
        self.hostname = hostname or f"wiretask@{socket.gethostname()}"
        self.shutdown_timeout = shutdown_timeout
        self.transport = transport if transport is not None else app.new_transport()
        self._pool = pool_class(PoolSetup(
            app=app, transport=self.transport, hostname=self.hostname,
            concurrency=concurrency, app_path=app_path,
            max_tasks_per_child=_positive(
                "max_tasks_per_child", max_tasks_per_child,
                app.conf.get("worker_max_tasks_per_child"),
            ),
            max_memory_per_child=_positive(
                "max_memory_per_child", max_memory_per_child,
                app.conf.get("worker_max_memory_per_child"),
            ),
        ))
        self.app_path = self._pool.app_path
        if statedb is None:
            statedb = app.conf.get("worker_state_db")
        self.statedb = statedb
        if remote_control is None:
            remote_control = app.conf.get("worker_enable_remote_control", True)
        self.remote_control = bool(remote_control)
        if send_events is None:
            send_events = app.conf.get("worker_send_task_events", False)
        #: Task events are sent from the start (``-E``).
        self.send_events = bool(send_events)
        self.heartbeat = bool(heartbeat)
        self.heartbeat_interval = (HEARTBEAT_FREQ if heartbeat_interval is None
                                   else float(heartbeat_interval))
        if not self.heartbeat_interval > 0:
            raise ValidationError("heartbeat_interval",
                                  f"must be a number of seconds > 0, got {heartbeat_interval!r}")
        self._build()

        self._stopped = threading.Event()
        self._cold = threading.Event()  # stop waiting for running tasks
        self._lifecycle = threading.Lock()
        self._started = False
        self._stop_called = False

    def _build(self) -> None:
        """The parts, wired together (see the package docstring)."""
        app = self.app
        self._stopping = threading.Event()  # stop taking work
        self._tracer = Tracer(app, self.hostname)

        def clock() -> float:
            return app.now().timestamp()

        self._ledger = Ledger(
            None if self.prefetch is None else self._pool.capacity + self.prefetch,
            self.eta_task_limit,
            clock,
        )
        self._unacked = AckRetry()
        self._clock = LamportClock()
        self._revoked = RevokedStore(path=self.statedb)
        self._clock.adjust(self._revoked.saved_clock)
        self._remote = RemoteControl(
            app=app, hostname=self.hostname, queues=self.queues, pool=self._pool,
            ledger=self._ledger, tracer=self._tracer, unacked=self._unacked,
            revoked=self._revoked, clock=self._clock, stopping=self._stopping,
            prefetch=self.prefetch,
        )
        self._mailbox: Mailbox | None = None
        self._events = self._build_events()
        steps: list[Step] = [
            RefuseUnregistered(app, self._tracer),
            LogReceived(),
            self._remote.step,
            HoldEarly(app, self.transport, self._ledger, self._unacked),
        ]
        if self._events is not None:
            steps.insert(0, self._events.unknown)
            steps.insert(steps.index(self._remote.step) + 1, self._events)
        if not app.conf.get("worker_disable_rate_limits"):
            steps.append(RateLimit(app, self._ledger, clock))
        self._router = Router(
            app,
            steps,
            self._ledger,
            self._pool.submit,
            self._stopping,
        )
        self._settlement = Settlement(
            self.transport, self.queues, self._ledger, self._unacked, self._stopping,
            self._router.handle,
        )
        self._consumer = Consumer(
            transport=self.transport, queues=self.queues, ledger=self._ledger,
            router=self._router, unacked=self._unacked, pool=self._pool,
            stopping=self._stopping, hostname=self.hostname,
        )
        if self._events is not None:
            self._settlement.on_outcome = self._events.finished
            self._remote.discard.on_outcome = self._events.finished

    def _build_events(self) -> WorkerEvents | None:
        """Celery's events (``events.worker``), where the transport can broadcast."""
        transport = self.transport
        if not isinstance(transport, Broadcast):
            if self.send_events:
                logger.warning(
                    "task events are off: %s cannot broadcast (its transport does not "
                    "offer Broadcast)", transport.url,
                )
            return None
        conf = self.app.conf
        dispatcher = EventDispatcher(
            transport,
            event_exchange(transport.url.partition(":")[0],
                           str(conf.get("event_exchange") or DEFAULT_EXCHANGE)),
            hostname=self.hostname, registry=self.app.registry,
            serializer=str(conf.get("event_serializer") or "json"), clock=self._clock,
            groups=() if self.send_events else ("worker",),
            enabled=self.send_events or self.heartbeat,
        )
        ledger = self._ledger
        tracer = self._tracer

        def running() -> int:
            return sum(1 for job in ledger.jobs() if job.claimed)

        def toggled(on: bool) -> None:
            tracer.describe_results = on

        events = WorkerEvents(dispatcher, tasks=self.app.tasks, now=self.app.now,
                              active=running,
                              freq=self.heartbeat_interval, heartbeat=self.heartbeat,
                              on_toggle=toggled)
        toggled(events.task_events)
        events.defers_early = transport.capabilities.native_delay
        return events

    def __repr__(self) -> str:
        return (
            f"<Worker {self.hostname} queues={self.queues} pool={self.pool} "
            f"concurrency={self.concurrency}>"
        )

    # -- life cycle -------------------------------------------------------------------

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
            # Where the broker can write the backend's results in the step that acks
            # (Redis, same database), a plain SUCCESS is written with its ack: one round
            # trip for both, batched with the other jobs' (``Settlement``).
            self._tracer.defer_results_of = self._settlement.use_fused(self.app.backend)
            self._pool.start(PoolContext(
                tracer=self._tracer, settlement=self._settlement, consumer=self._consumer,
                stopping=self._stopping,
                on_start=self._events.started if self._events is not None else None,
            ))
        except BaseException:
            self.stop(0)  # release what was started (threads, the connection)
            raise
        self._consumer.start()
        self._start_mailbox()
        if self._events is not None:
            self._events.start()
        logger.info(
            "worker %s ready: queues %s, %s pool, concurrency %d, prefetch %s",
            self.hostname, ",".join(self.queues), self.pool, self.concurrency,
            "unlimited" if self.prefetch is None else self.prefetch,
        )

    def _start_mailbox(self) -> None:
        """Listen on Celery's control channel (``control.mailbox``), if remote control
        is on and the transport can broadcast."""
        if not self.remote_control:
            return
        transport = self.transport
        if not isinstance(transport, Broadcast):
            logger.warning(
                "remote control is off: %s cannot broadcast (its transport does not offer "
                "Broadcast), so ping, inspect and revoke do not reach this worker",
                transport.url,
            )
            return
        conf = self.app.conf
        namespace = str(conf.get("control_exchange") or DEFAULT_NAMESPACE)
        self._mailbox = Mailbox(
            transport=transport, hostname=self.hostname, namespace=namespace,
            queue=node_queue(
                self.hostname, namespace,
                expires=conf.get("control_queue_expires", DEFAULT_QUEUE_EXPIRES),
                message_ttl=conf.get("control_queue_ttl", DEFAULT_QUEUE_TTL),
            ),
            commands=self._commands(), registry=self.app.registry,
            serializer=str(conf.task_serializer), clock=self._clock,
        )
        self._mailbox.start()

    def _commands(self) -> dict[str, Command]:
        """The control commands this worker answers: remote control's, and the events'
        (``enable_events``, ``disable_events``, ``heartbeat``)."""
        commands = self._remote.commands()
        if self._events is not None:
            commands.update(self._events.commands())
        return commands

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
            self._stopping.set()
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
        if self._mailbox is not None:
            self._mailbox.stop()
        self._revoked.save(self._clock.value)
        self._ledger.wake()
        self._consumer.quiesce()
        held, dispatched = self._ledger.give_back()
        for delivery, message in held:
            requeue(delivery, f"{message.task}[{message.id}]")
        for job in dispatched:
            # Not started yet: give it back now (a pool that takes it later skips it).
            self._settlement.settle(job, "requeue", only_if_queued=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self._ledger.wait_idle(deadline, self._cold):
            self._abandon(job)
        join_until = time.monotonic() + JOIN_TIMEOUT
        self._consumer.join(join_until)
        self._pool.stop(join_until)
        self._settlement.close()
        if self._events is not None:
            self._events.stop()
        self.transport.close()
        logger.info("worker %s stopped", self.hostname)

    def _abandon(self, job: Job) -> None:
        """Requeue a running job's message at shutdown and ignore its outcome."""
        logger.warning("task %s still running at shutdown: requeued", job.describe)
        self._pool.abandon(job)
        self._settlement.settle(job, "requeue")

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
            while not self._stopping.wait(0.5):
                pass
            self.stop(self.shutdown_timeout)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            logger.warning("%s again: requeueing running tasks and stopping now", name)
            self._cold.set()
        else:
            logger.warning("%s: finishing running tasks, then stopping", name)
            self._stopping.set()

    # -- introspection ----------------------------------------------------------------

    @property
    def active(self) -> int:
        """Messages dispatched to the pool and not settled yet (queued or running)."""
        return self._ledger.active

    @property
    def held(self) -> int:
        """Messages held for a future eta (transports without native delay only)."""
        return self._ledger.held

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._started and not self._stopped.is_set()
