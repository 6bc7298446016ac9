"""The pool interface: what runs the jobs the consumer dispatches.

A pool is one object behind this small interface; the worker's facade and consumer use
nothing else of it, so a new way to run tasks (an asyncio event loop with many
``async def`` tasks in flight) is one more ``Pool`` subclass, not branches in the
worker. Its life:

1. **Constructed** with a ``PoolSetup`` when the ``Worker`` is: it checks what it needs
   (the process pool: a broker and backend other processes can reach, an importable
   app) and raises ``ImproperlyConfigured`` at once. ``resolve_concurrency`` lets a
   pool fix its concurrency (solo: 1).
2. **Started** with a ``PoolContext`` (the tracer, settlement, the consumer, the
   stopping event) when the worker starts, before the consumer.
3. **Fed** with ``submit(job)`` by the consumer, from whichever thread routed the
   message; it must return at once. The pool ``claim()``s a job before it runs it (a
   job given back by a stopping worker is then skipped), runs it with the tracer under
   the message's time limits (``Tracer.time_limits``), and hands the outcome to
   settlement through ``report``: the hook by which every pool reports an outcome.
4. **Stopped**: the worker gives back what has not started, waits for what runs,
   ``abandon``s what is still running at its deadline (its message is requeued; the
   pool must ignore what the run does later) and calls ``stop``.

``run_in_consumer`` lets a pool use the consumer thread itself (solo: no hand-off
between threads). ``terminate`` ends one running task at once where the pool can (the
process pool kills the child; a thread cannot be killed, so the others refuse).

The asyncio pool (``asyncio.py``) fits the same shape: ``start`` runs an event loop in
a thread of its own, ``submit`` hands the job to it (``call_soon_threadsafe``), each job
runs as an asyncio task under its time limits, ``report`` is called from a thread that
may block (settlement does I/O), ``capacity`` is how many tasks may be in flight, and
``abandon`` cancels the task.

Threading: ``submit`` is called with the ledger's ``receiving`` lock held; ``report``
from the pool's own threads (and time-limit timers); ``abandon``, ``terminate`` and
``stop`` from the thread that stops the worker.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import attrs

from wiretask.errors import ImproperlyConfigured

if TYPE_CHECKING:
    from wiretask.app import App
    from wiretask.transports.base import Delivery, Transport
    from wiretask.worker.job import Job
    from wiretask.worker.outcome import Outcome
    from wiretask.worker.settlement import Settlement
    from wiretask.worker.tracer import Tracer

__all__ = ["ConsumerHandle", "Pool", "PoolContext", "PoolName", "PoolSetup"]

#: The pools the worker has built in (``Worker(pool=...)``).
PoolName = Literal["threads", "processes", "solo", "asyncio"]


@attrs.frozen
class PoolSetup:
    """What a pool is constructed with.

    Attributes:
        app: the worker's app.
        transport: the worker's transport.
        hostname: the worker's node name.
        concurrency: how many tasks may run at once (already checked, >= 1).
        app_path: ``"package.module:attribute"`` of the app, if given.
        max_tasks_per_child: replace a child process after it ran this many tasks
            (Celery's ``worker_max_tasks_per_child``), if set.
        max_memory_per_child: replace a child process after a task that left its
            resident memory above this many KiB (``worker_max_memory_per_child``).
    """

    app: App
    transport: Transport
    hostname: str
    concurrency: int
    app_path: str | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None


class ConsumerHandle(Protocol):
    """The consumer thread, for a pool that runs tasks in it (``run_in_consumer``)."""

    def replace(self) -> None:
        """Start a new consumer thread that takes over from the calling one (stuck in
        a task past its hard time limit); the old one leaves when it comes back."""
        ...

    def current(self) -> bool:
        """Whether the calling thread is the current consumer thread."""
        ...


@attrs.frozen
class PoolContext:
    """What a started pool works with.

    Attributes:
        tracer: runs a job's message (``Tracer.execute``) and records failures seen
            outside the task body (``Tracer.fail_outside``).
        settlement: takes the outcomes (``Settlement.finish``) and sends the acks.
        consumer: the consumer thread.
        stopping: set when the worker stops taking work.
        on_start: called with each job as it starts to run (the pool took it).
    """

    tracer: Tracer
    settlement: Settlement
    consumer: ConsumerHandle
    stopping: threading.Event
    #: Told when a job starts to run (the worker's ``task-started`` event), or None.
    on_start: Callable[[Job], None] | None = None


class Pool(abc.ABC):
    """Runs the worker's jobs. See the module docstring for the life cycle.

    Args:
        setup: the worker's app, transport, hostname, concurrency and app path.

    Raises:
        ImproperlyConfigured: the pool cannot run with this setup.
    """

    #: The pool's name, as ``Worker(pool=...)`` takes it and logs show it.
    name: ClassVar[str]
    #: Whether it runs tasks in child processes it can replace
    #: (``max_tasks_per_child``, ``max_memory_per_child``).
    replaces_children: ClassVar[bool] = False

    def __init__(self, setup: PoolSetup) -> None:
        if not self.replaces_children:
            for option, value in (("max_tasks_per_child", setup.max_tasks_per_child),
                                  ("max_memory_per_child", setup.max_memory_per_child)):
                if value is not None:
                    raise ImproperlyConfigured(
                        f"worker_{option}={value!r}: pool={self.name!r} runs tasks in this "
                        "process, so there is no child process to replace; use "
                        "pool='processes' (--pool prefork) or leave it unset"
                    )
        self.setup = setup
        #: How many jobs run at once.
        self.capacity = setup.concurrency
        #: The app's import path, for pools that load the app elsewhere.
        self.app_path = setup.app_path
        self._context: PoolContext | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} capacity={self.capacity}>"

    @classmethod
    def resolve_concurrency(cls, requested: int | None) -> int | None:
        """The concurrency to use for ``requested`` (None: the worker's default).

        Raises:
            ValidationError: a concurrency this pool cannot run with.
        """
        return requested

    @property
    def context(self) -> PoolContext:
        """What ``start`` was given.

        Raises:
            ImproperlyConfigured: the pool was not started.
        """
        if self._context is None:
            raise ImproperlyConfigured(f"the {self.name} pool was not started")
        return self._context

    @abc.abstractmethod
    def start(self, context: PoolContext) -> None:
        """Start the pool's threads or processes. Keep ``context`` (``self._context``).

        Raises:
            ImproperlyConfigured: the pool could not start (what it started is stopped
                again by the worker's ``stop``).
        """

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Take ``job`` to run; returns at once."""

    def run_in_consumer(self) -> Sequence[Delivery] | None:
        """Called by the consumer thread at each turn of its loop, before it receives.
        A pool that runs tasks in the consumer thread runs what it was given, sends
        their acks and returns the messages taken with them (routed at the next turn);
        the consumer then goes round again instead of receiving. None: nothing was
        done here (the default)."""
        return None

    def report(self, job: Job, outcome: Outcome) -> None:
        """Hand a job's outcome to settlement and send its ack with the others'
        (group commit). A pool that sends its acks per batch overrides this."""
        settlement = self.context.settlement
        settlement.finish(job, outcome)
        settlement.commit()

    def abandon(self, job: Job) -> None:
        """Give up on a job still running when the worker stops: its message is
        requeued right after, so whatever the run does later must be ignored."""
        job.abandoned = True
        if job.control is not None:
            job.control.abandon()

    def terminate(self, job: Job) -> bool:
        """End ``job``'s task now, if it is running in this pool (Celery's
        ``revoke(terminate=True)``). False if it is not running here.

        Raises:
            ImproperlyConfigured: this pool cannot end a running task.
        """
        raise ImproperlyConfigured(
            f"pool={self.name!r} cannot terminate a running task (a thread cannot be "
            "stopped from outside); use pool='processes'"
        )

    def processes(self) -> list[int]:
        """The pids of the processes that run tasks (``inspect stats``): this one, for
        pools that run tasks in threads of the worker process."""
        return [os.getpid()]

    def worker_pid(self, job: Job) -> int | None:
        """The pid of the process running ``job`` (``inspect active``'s ``worker_pid``),
        or None if it is not running."""
        return os.getpid() if job.claimed else None

    @abc.abstractmethod
    def stop(self, until: float) -> None:
        """Stop the pool's threads and processes; wait for threads until ``until``
        (``time.monotonic()``): one abandoned in a task may never return."""
