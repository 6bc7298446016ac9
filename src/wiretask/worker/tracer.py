"""The tracer: running one task message, its states, the task body, its links.

This is the part of the worker that is the same whether a task runs in a thread of the
worker process or in a child process (``pools/_child.py``): Celery calls it the *tracer*
(``celery/app/trace.py``). It takes a decoded ``TaskMessage`` and returns an
``Outcome`` that tells settlement (``settlement.py``) how to settle the delivery; it
never touches the delivery itself, so a child process can run it and send the outcome
back.

The order of events follows Celery's tracer (``celery/app/trace.py``):

1. ``expires`` is checked first; an expired task is not run, ``REVOKED`` is stored with
   Celery's exact meta and its errbacks are called.
2. ``STARTED`` (``{"pid", "hostname"}``) is stored when tracking is on.
3. ``before_start`` and the body run with the request current (``Task.running``), so
   ``self.request``, ``self.retry`` and ``self.update_state`` work inside them; the body
   through the class's own ``__call__`` when it has one (``Task._trace_call``).
4. Success: the callbacks and the chain's next step are sent (``links.py``), *then*
   ``SUCCESS`` is stored (Celery sends them first, so that the stored result lists them
   among its ``children``; a store that fails and requeues the message may send them
   twice, at least once as in Celery), then ``on_success``, then ``after_return``.
   Retry: ``RETRY`` is stored, then ``on_retry``. Failure: ``FAILURE`` is stored, *then*
   the errbacks run (as in Celery: errbacks "run after FAILURE is stored", PROTOCOL.md
   §17.5), then ``on_failure`` and ``after_return``. A failure whose exception the task ``throws``
   is logged at INFO without a traceback, as Celery does.

The request stays current until the run is recorded, so every task sent meanwhile (by
the body, a handler, or as a callback) is one of its ``children``, stored with each
state (``Task.trail``).

Threading: a ``Tracer`` keeps no per-run state, so every pool thread (and the time-limit
timers that record a hard limit) share the worker's one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from wiretask import calling
from wiretask.errors import (
    EncodeError,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    ValidationError,
    WorkerLostError,
)
from wiretask.protocol import states
from wiretask.protocol.timing import is_expired
from wiretask.results.base import DeferredStore
from wiretask.results.exceptions import expired_meta_result, revoked_meta_result
from wiretask.tasks import ExceptionInfo
from wiretask.worker.canvas import Chords, extended_fields
from wiretask.worker.links import Links
from wiretask.worker.outcome import NO_LIMITS, Control, Outcome, Settle

if TYPE_CHECKING:
    from wiretask.app import App, Request, Task
    from wiretask.protocol.envelope import TaskMessage

__all__ = ["Run", "Started", "Tracer", "format_traceback"]

logger = logging.getLogger("wiretask.worker")

_RESULT_REPR_LIMIT = 256
#: The length of a ``task-succeeded`` event's ``result`` (Celery's
#: ``resultrepr_maxsize``).
_EVENT_REPR_LIMIT = 1024
#: Handlers that run after ``SUCCESS`` is stored.
_AFTER_SUCCESS = frozenset({"on_success", "after_return"})
#: First pause before storing a final state again after a backend error; it doubles up
#: to ``STORE_RETRY_MAX`` while the backend stays away.
STORE_RETRY_START = 0.5
STORE_RETRY_MAX = 5.0


def _short_repr(value: object) -> str:
    return calling.safe_repr(value, _RESULT_REPR_LIMIT)


def _exc_repr(exc: BaseException | None) -> str:
    """Kombu's ``safe_repr`` of an exception, as Celery's task events carry it."""
    try:
        return repr(exc)
    except Exception:
        return object.__repr__(exc)


def format_traceback(exc: BaseException) -> str:
    """The traceback string stored with an exception state (Celery stores a string)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class Tracer:
    """Runs task messages for one app. Safe to share between the threads of a worker.

    Args:
        app: the app whose tasks, backend and transport are used.
        hostname: the worker's node name (``STARTED`` meta, ``Request.hostname``).
    """

    def __init__(self, app: App, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        #: Leave a plain ``SUCCESS`` (no callbacks, no chain, no earlier state stored by
        #: this run) for the caller to write with the ack (``Outcome.pending``), while
        #: the app's backend is this one: set by a worker whose broker can write this
        #: backend's results in its ack.
        self.defer_results_of: DeferredStore | None = None
        self.links = Links(app)
        self.chords = Chords(app, self.links)
        #: The run this thread is tracing (its ``Control``, which says how long to keep
        #: trying to store its outcome); absent outside ``execute`` (a time-limit timer
        #: recording a failure): then as long as the process lives.
        self._run = threading.local()
        #: Whether a success's ``Outcome.event`` gets the return value's repr (the
        #: ``result`` of ``task-succeeded``): set by a worker that sends task events.
        self.describe_results: bool = False

    # -- the request ------------------------------------------------------------------

    def request_for(self, message: TaskMessage, delivery_info: Mapping[str, Any]) -> Request:
        """The ``Request`` a running task sees as ``self.request``."""
        from wiretask.app import Request  # noqa: PLC0415 - app imports the worker lazily

        return Request.from_message(
            message, hostname=self.hostname, is_eager=False, delivery_info=delivery_info
        )

    # -- storing states ---------------------------------------------------------------

    def _meta(
        self, message: TaskMessage, status: str, result: Any, *, tb: str | None = None,
        task_id: str | None = None, request: Request | None = None,
    ) -> dict[str, Any]:
        own = task_id is None or task_id == message.id
        children = request.children if own and request is not None else ()
        return states.make_meta(
            task_id or message.id,
            status,
            result,
            traceback=tb,
            children=[child.as_tuple() for child in children],
            date_done=self.app.now() if status in states.READY_STATES else None,
            group_id=message.group if own else None,
            parent_id=message.parent_id if own else None,
            extra=extended_fields(self.app, message, request, self.hostname) if own else None,
        )

    def store(self, message: TaskMessage, status: str, result: Any, *, tb: str | None = None,
              task_id: str | None = None, request: Request | None = None) -> None:
        """Store a state for the message's task (or ``task_id``), with the children
        ``request`` recorded, addressed to where the
        message's sender listens (``reply_to``: ``rpc://`` sends it there; other backends
        ignore it). Raises what the backend raises; callers decide whether that is fatal
        for the delivery."""
        own = task_id is None or task_id == message.id
        self.app.backend.store_reply(
            task_id or message.id,
            self._meta(message, status, result, tb=tb, task_id=task_id, request=request),
            reply_to=message.reply_to,
            correlation_id=(message.correlation_id or message.id) if own else task_id,
        )

    def _try_store(self, message: TaskMessage, status: str, result: Any, *,
                   tb: str | None = None, task_id: str | None = None,
                   request: Request | None = None) -> bool:
        """Store, logging a failure instead of raising. True if it was stored."""
        try:
            self.store(message, status, result, tb=tb, task_id=task_id, request=request)
        except Exception:
            logger.exception(
                "task %s[%s]: could not store state %s", message.task,
                task_id or message.id, status,
            )
            return False
        return True

    def _store_final(self, message: TaskMessage, status: str, result: Any, *,
                     tb: str | None = None, request: Request | None = None,
                     even_if_ignored: bool = False) -> Settle:
        """Store a final state; ``ack`` if stored (or ignored). While the backend fails
        (it is down, or restarting), keep trying with backoff for as long as the worker
        wants the run (``Control.wait``): the task ran, and running it again because the
        backend was away a while is worse than waiting for it. ``requeue`` only if the
        worker gave up on the run first (it is stopping): then it runs again (at least
        once). ``even_if_ignored``: store it for an ``ignore_result`` message too."""
        if message.ignore_result and not even_if_ignored:
            return "ack"
        control: Control = getattr(self._run, "control", NO_LIMITS)
        delay = STORE_RETRY_START
        while True:
            try:
                self.store(message, status, result, tb=tb, request=request)
            except (EncodeError, ValidationError):
                # Permanent: storing it again later would fail the same way.
                logger.exception("task %s[%s]: could not store %s", message.task, message.id,
                                 status)
                return "ack"
            except Exception as exc:
                logger.warning("task %s[%s]: could not store %s (%s); trying again in %gs",
                               message.task, message.id, status, exc, delay)
                if not control.wait(delay):
                    logger.warning("task %s[%s]: %s not stored; the worker gave up on it, "
                                   "so its message is requeued to run again",
                                   message.task, message.id, status)
                    return "requeue"
                delay = min(delay * 2, STORE_RETRY_MAX)
                continue
            return "ack"

    def track_started(self, task: Task[Any, Any]) -> bool:
        return bool(self.option(task, "track_started", "task_track_started"))

    def option(self, task: Task[Any, Any] | None, *names: str, default: Any = None) -> Any:
        """A task option as Celery resolves it: ``names`` alternate a task attribute
        and the setting it defaults to (``Task.from_config``), the first that is not
        None wins; else ``default``."""
        conf = self.app.conf
        for index, name in enumerate(names):
            value = (getattr(task, name, None) if task is not None else None) \
                if index % 2 == 0 else conf.get(name)
            if value is not None:
                return value
        return default

    def _store_errors(self, task: Task[Any, Any] | None) -> bool:
        """``store_errors_even_if_ignored``: the failures of an ``ignore_result`` task
        are stored."""
        return bool(self.option(task, "store_errors_even_if_ignored",
                                "task_store_errors_even_if_ignored"))

    def _failed_settle(self, task: Task[Any, Any] | None, exc: BaseException) -> Settle:
        """How to settle a failed task's message, as Celery's worker with
        ``acks_late``: ack, unless ``acks_on_timeout`` (a hard time limit) is False,
        which requeues it (before anything is recorded: it runs again), or
        ``acks_on_failure`` is False, which rejects it once its failure is recorded
        (here: dead-lettered, with the reason, as a rejected AMQP message goes to its
        dead-letter exchange)."""
        if isinstance(exc, TimeLimitExceeded):
            if not self.option(task, "acks_on_timeout", "task_acks_on_timeout",
                               "acks_on_failure_or_timeout",
                               "task_acks_on_failure_or_timeout", default=True):
                return "requeue"
        elif not self.option(task, "acks_on_failure", "task_acks_on_failure",
                             "acks_on_failure_or_timeout", "task_acks_on_failure_or_timeout",
                             default=True):
            return "dead_letter"
        return "ack"

    # -- running ----------------------------------------------------------------------

    def execute(
        self,
        message: TaskMessage,
        *,
        delivery_info: Mapping[str, Any],
        control: Control = NO_LIMITS,
    ) -> Outcome:
        """Run one message to its end and return how to settle its delivery.

        Never raises for anything the task does; ``control`` arms the time limits.
        """
        self._run.control = control
        try:
            started = self._prepare(message, delivery_info)
            if isinstance(started, Outcome):
                return started
            task, request = started
            with task.running(request):  # until the run is recorded: children, handlers
                tracked = self._track(task, message, request)
                return self._conclude(message, Started(task, request, tracked),
                                      _run_body(task, message, control))
        finally:
            self._run.control = NO_LIMITS

    # The two halves of ``execute`` around the body, for a pool that runs the body
    # elsewhere (the asyncio pool awaits an ``async def`` body on its event loop, with
    # the request current there too, and runs these, which store states and send
    # callbacks, in a thread). The request is the same object throughout, so what the
    # body sends joins the children stored with the final state.

    def start(
        self, message: TaskMessage, delivery_info: Mapping[str, Any],
        control: Control = NO_LIMITS,
    ) -> Outcome | Started:
        """Everything before the body: the task looked up, ``expires`` checked,
        ``STARTED`` stored. An ``Outcome`` when the body must not run."""
        self._run.control = control
        try:
            started = self._prepare(message, delivery_info)
            if isinstance(started, Outcome):
                return started
            task, request = started
            with task.running(request):
                return Started(task, request, self._track(task, message, request))
        finally:
            self._run.control = NO_LIMITS

    def start_without_io(
        self, message: TaskMessage, delivery_info: Mapping[str, Any]
    ) -> Started | None:
        """``start``, for a message whose start stores nothing (its task is registered,
        it has not expired, ``STARTED`` is not tracked): then nothing here blocks, and
        the asyncio pool calls it on its event loop instead of handing it to a thread.
        ``None`` for any other message: call ``start``, where blocking is fine (it
        decides again, with the clock as it is then)."""
        task = self.app.tasks.get(message.task)
        if task is None or self._tracks(task, message):
            return None
        if message.expires is not None and is_expired(message.expires, now=self.app.now()):
            return None
        return Started(task, self.request_for(message, delivery_info), False)

    def conclude(
        self, message: TaskMessage, started: Started, run: Run, control: Control = NO_LIMITS
    ) -> Outcome:
        """Everything after the body: the final state stored, then callbacks or
        errbacks; how to settle the delivery. ``control`` says how long to keep trying
        to store it."""
        self._run.control = control
        try:
            with started.task.running(started.request):
                return self._conclude(message, started, run)
        finally:
            self._run.control = NO_LIMITS

    def _prepare(
        self, message: TaskMessage, delivery_info: Mapping[str, Any]
    ) -> Outcome | tuple[Task[Any, Any], Request]:
        """The task and its request, or the outcome of a message not to run (its task
        is not registered, or it expired)."""
        task = self.app.tasks.get(message.task)
        if task is None:
            return self._unregistered(message)
        request = self.request_for(message, delivery_info)
        if message.expires is not None and is_expired(message.expires, now=self.app.now()):
            return self.revoke_expired(message, request)
        return task, request

    def _track(self, task: Task[Any, Any], message: TaskMessage, request: Request) -> bool:
        """Store ``STARTED`` if tracking is on; whether it was (or may have been)
        stored. The request is current."""
        if not self._tracks(task, message):
            return False
        self._try_store(
            message, states.STARTED, {"pid": os.getpid(), "hostname": self.hostname},
            request=request,
        )
        return True

    def _tracks(self, task: Task[Any, Any], message: TaskMessage) -> bool:
        """Whether ``STARTED`` is stored for this message (Celery: ``track_started`` is
        off for ``ignore_result`` tasks)."""
        return not message.ignore_result and self.track_started(task)

    def _conclude(self, message: TaskMessage, started: Started, run: Run) -> Outcome:
        """After the body (the request is current): store, then callbacks or errbacks."""
        if not run.claimed:
            return Outcome("", "none", run.runtime)
        task, request = started.task, started.request
        if run.error is None:
            # The fused store-with-ack writes the result after on_success would
            # run: not for a task whose handlers follow the store.
            defer = (not started.tracked and self.defer_results_of is not None
                     and not task.custom_hooks & _AFTER_SUCCESS)
            return self._succeeded(task, message, request, run.retval, run.runtime,
                                   defer=defer)
        return self._raised(message, request, run.error, run.runtime)

    def _unregistered(self, message: TaskMessage) -> Outcome:
        # The worker checks on receipt; a child process whose app module does not
        # import the task's module lacks it. Same treatment as on receipt.
        exc = NotRegistered(message.task)
        tb = format_traceback(exc)
        if not message.ignore_result:
            self._try_store(message, states.FAILURE, exc, tb=tb)
        return Outcome(states.FAILURE, "dead_letter", reason=f"unregistered task {message.task}",
                       event={"exception": _exc_repr(exc), "traceback": tb})

    def _raised(
        self, message: TaskMessage, request: Request, error: BaseException, runtime: float
    ) -> Outcome:
        """The body raised ``error``: a retry, a rejection, or a failure."""
        if isinstance(error, Retry):
            return self._retried(message, request, error, runtime)
        if isinstance(error, Reject):
            logger.info(
                "task %s[%s] rejected (requeue=%s): %s",
                message.task, message.id, error.requeue, error.reason,
            )
            if error.requeue:
                return Outcome(states.REJECTED, "requeue", runtime)
            return Outcome(
                states.REJECTED, "dead_letter", runtime, f"rejected by the task: {error}",
                event={"exception": _exc_repr(error), "traceback": format_traceback(error)},
            )
        return self.fail(message, request, error, runtime=runtime)

    def _succeeded(
        self, task: Task[Any, Any], message: TaskMessage, request: Request, retval: Any,
        runtime: float, *, defer: bool = False,
    ) -> Outcome:
        backend = self.defer_results_of
        current: object = self.app.backend
        if defer and backend is not None and backend is current and not (
            message.ignore_result or message.callbacks or message.chain or message.chord
        ):
            # Nothing has to happen between the store and the ack: encode now (a value
            # the serializer refuses still fails the task), write with the ack.
            try:
                pending = backend.pending(
                    message.id, self._meta(message, states.SUCCESS, retval, request=request)
                )
            except (EncodeError, ValidationError) as exc:
                return self.fail(message, request, exc, runtime=runtime)
            self._log_success(message, runtime, retval)
            return Outcome(states.SUCCESS, "ack", runtime, pending=pending,
                           event=self._result_event(retval))
        # Celery sends the callbacks before storing, so the result lists them as children.
        self.links.send_callbacks(message, retval)
        if not message.ignore_result:
            try:
                self.store(message, states.SUCCESS, retval, request=request)
            except (EncodeError, ValidationError) as exc:
                # Celery: a return value the result serializer refuses fails the task.
                return self.fail(message, request, exc, runtime=runtime)
            except Exception as exc:
                # A broker error: keep trying, as for every final state.
                logger.debug("task %s[%s]: first SUCCESS store failed: %s",
                             message.task, message.id, exc)
                if self._store_final(message, states.SUCCESS, retval,
                                     request=request) == "requeue":
                    return Outcome(states.SUCCESS, "requeue", runtime)
        # Celery's mark_as_done: the chord's part right after the store.
        self.chords.message_returned(message, states.SUCCESS, retval)
        args, kwargs = list(message.args), dict(message.kwargs)
        raised = task.call_hook("on_success", retval, message.id, args, kwargs)
        if raised is not None:
            # Celery: an error in on_success is the task's failure (errbacks and
            # on_failure follow; the SUCCESS stored stays, as Celery's backends keep it).
            return self.fail(message, request, raised, runtime=runtime)
        self._log_success(message, runtime, retval)
        task.call_hook("after_return", states.SUCCESS, retval, message.id, args, kwargs, None)
        return Outcome(states.SUCCESS, "ack", runtime, event=self._result_event(retval))

    def _result_event(self, retval: Any) -> dict[str, Any] | None:
        if not self.describe_results:
            return None
        return {"result": calling.safe_repr(retval, _EVENT_REPR_LIMIT)}

    @staticmethod
    def _log_success(message: TaskMessage, runtime: float, retval: Any) -> None:
        if logger.isEnabledFor(logging.INFO):  # the repr is not free; skip it when unused
            logger.info(
                "task %s[%s] succeeded in %.3fs: %s",
                message.task, message.id, runtime, _short_repr(retval),
            )

    def _retried(
        self, message: TaskMessage, request: Request, signal: Retry, runtime: float
    ) -> Outcome:
        # Task.retry has already re-sent the message (same id, retries + 1). RETRY is not
        # final, so a failure to store it is logged and the original is acked anyway:
        # requeueing it would run the task twice next to its re-sent copy.
        reason: BaseException = signal.exc if signal.exc is not None else signal
        # An ``exc`` that was never raised has no traceback: use the retry's own,
        # with the reason's type and value (Celery's ExceptionInfo does the same).
        tb = "".join(traceback.format_exception(
            type(reason), reason, reason.__traceback__ or signal.__traceback__
        ))
        task = self.app.tasks.get(message.task)
        if not message.ignore_result or self._store_errors(task):
            self._try_store(message, states.RETRY, reason, tb=tb, request=request)
        if task is not None:
            task.call_hook("on_retry", signal.exc, message.id, list(message.args),
                           dict(message.kwargs), ExceptionInfo.of(reason, tb))
        logger.info("task %s[%s] retry: %s", message.task, message.id, signal)
        return Outcome(states.RETRY, "ack", runtime,
                       event={"exception": _exc_repr(signal.exc), "traceback": tb})

    def fail(
        self, message: TaskMessage, request: Request, exc: BaseException, *,
        runtime: float = 0.0, tb: str | None = None, handlers: bool = True,
    ) -> Outcome:
        """Record a failure: store ``FAILURE`` (and fail the rest of the chain forward),
        call the errbacks, then the task's ``on_failure`` and ``after_return`` (unless
        ``handlers`` is False: a lost worker process, as Celery)."""
        tb = tb if tb is not None else format_traceback(exc)
        task = self.app.tasks.get(message.task)
        if self._failed_settle(task, exc) == "requeue":
            # acks_on_timeout is False: the task is not over, it runs again. Its FAILURE
            # is not stored (a stored final state is never replaced here, and the next
            # run's outcome is the one that counts), nor are errbacks or handlers called.
            logger.warning("task %s[%s] %s; acks_on_timeout is False: requeued to run "
                           "again", message.task, message.id, exc)
            return Outcome(states.FAILURE, "requeue", runtime)
        settle = self._store_final(message, states.FAILURE, exc, tb=tb, request=request,
                                   even_if_ignored=self._store_errors(task))
        if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
            logger.error("task %s[%s] %s", message.task, message.id, exc)
        elif task is not None and task.throws and isinstance(exc, task.throws):
            # Celery's policy for expected errors: INFO, no traceback.
            logger.info("task %s[%s] raised expected: %r", message.task, message.id, exc)
        else:
            logger.error(
                "task %s[%s] raised unexpected: %r\n%s",
                message.task, message.id, exc, tb.rstrip(),
            )
        failed = {"exception": _exc_repr(exc), "traceback": tb}
        if settle == "requeue":
            return Outcome(states.FAILURE, settle, runtime, event=failed)
        # Celery: the chord's part, then the failure stored under the ids of the chain's
        # remaining elements, so that waiting on the chain's last result does not hang
        # (PROTOCOL.md §17.4), then the errbacks.
        self.chords.message_failed(message, exc, tb)
        self.links.call_errbacks(message, request, exc, tb)
        if handlers and task is not None:
            args, kwargs = list(message.args), dict(message.kwargs)
            task.call_hook("on_failure", exc, message.id, args, kwargs,
                           ExceptionInfo.of(exc, tb))
            task.call_hook("after_return", states.FAILURE, exc, message.id, args, kwargs,
                           None)
        settle = self._failed_settle(task, exc)
        reason = ""
        if settle == "dead_letter":
            reason = f"task failed with {type(exc).__name__} and acks_on_failure is False"
        return Outcome(states.FAILURE, settle, runtime, reason, event=failed)

    def fail_outside(
        self, message: TaskMessage, delivery_info: Mapping[str, Any], exc: BaseException
    ) -> Outcome:
        """Record a failure that happened outside the task body, where the pool saw it:
        a hard time limit (Celery stores ``TimeLimitExceeded(<hard>)`` and calls
        ``on_failure`` and ``after_return``) or a child process that died
        (``WorkerLostError``: Celery calls no handler). Stores ``FAILURE``, calls
        errbacks."""
        request = self.request_for(message, delivery_info)
        task = self.app.tasks.get(message.task)
        handlers = not isinstance(exc, WorkerLostError)
        if not handlers and self.option(task, "reject_on_worker_lost",
                                        "task_reject_on_worker_lost"):
            # Celery: requeued, and no FAILURE stored (a task that kills its process
            # every time comes back every time: Celery's documented risk).
            logger.warning("task %s[%s]: %s; reject_on_worker_lost: requeued", message.task,
                           message.id, exc)
            return Outcome(states.FAILURE, "requeue")
        context = task.running(request) if task is not None else contextlib.nullcontext()
        with context:
            return self.fail(message, request, exc, tb=format_traceback(exc),
                             handlers=handlers)

    def time_limits(self, message: TaskMessage) -> tuple[float | None, float | None]:
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

    def revoke(self, message: TaskMessage, reason: str, signum: int | None = None) -> Outcome:
        """Record that the task was revoked while it ran (``reason``: ``"terminated"``
        when its process was killed on request, ``signum`` the signal that killed it):
        store ``REVOKED`` with Celery's ``TaskRevokedError(reason)``, as Celery's
        ``Backend.mark_as_revoked`` does (no errbacks), and ack."""
        settle = self._store_final(message, states.REVOKED, revoked_meta_result(reason))
        logger.warning("task %s[%s] revoked: %s", message.task, message.id, reason)
        if settle == "ack":
            self.chords.message_returned(message, states.REVOKED, TaskRevokedError(reason))
        return Outcome(states.REVOKED, settle,
                       event={"terminated": reason == "terminated", "signum": signum,
                              "expired": False})

    def revoke_expired(self, message: TaskMessage, request: Request) -> Outcome:
        """Do not run an expired task: store ``REVOKED`` with the meta Celery stores
        (``TaskRevokedError('expired')`` under ``celery.exceptions``) and call the
        errbacks with that exception."""
        settle = self._store_final(message, states.REVOKED, expired_meta_result(),
                                   request=request)
        logger.warning(
            "task %s[%s] expired at %s: revoked, not run",
            message.task, message.id,
            message.expires.isoformat() if message.expires else "?",
        )
        if settle == "ack":
            self.chords.message_returned(message, states.REVOKED, TaskRevokedError("expired"))
            self.links.call_errbacks(message, request, TaskRevokedError("expired"), None)
        return Outcome(states.REVOKED, settle,
                       event={"terminated": False, "signum": None, "expired": True})


class Started(NamedTuple):  # a tuple: made once per task, on the hot path
    """What ``Tracer.start`` found: the task, the request it runs with, and whether a
    ``STARTED`` state was stored."""

    task: Task[Any, Any]
    request: Request
    tracked: bool


class Run(NamedTuple):  # a tuple: made once per task, on the hot path
    """How the body went: what it returned or raised, for how long, and whether the
    run is still ours to record (``Control.end``)."""

    claimed: bool
    runtime: float
    retval: Any = None
    error: BaseException | None = None


def _run_body(task: Task[Any, Any], message: TaskMessage, control: Control) -> Run:
    """Run ``before_start`` and the task's body (the request is current), between
    ``control.begin()`` and ``control.end()``."""
    error: BaseException | None = None
    retval: Any = None
    started = time.monotonic()
    control.begin()
    try:
        if task.custom_hooks:
            task.before_start(message.id, list(message.args), dict(message.kwargs))
        retval = task._trace_call(message.args, message.kwargs)
        if inspect.iscoroutine(retval):
            # An ``async def`` task on a pool without an event loop: run it on a
            # loop of its own, never return the coroutine object as the result.
            retval = asyncio.run(_ticking(retval))
    except BaseException as exc:  # a task never kills the worker
        error = exc
    claimed, late = _end(control)
    if error is None and late is not None:
        error = late  # a time limit that landed right as the body returned
    return Run(claimed, time.monotonic() - started, retval, error)


#: How often the event loop of an ``async def`` task run by ``asyncio.run`` wakes up.
_TICK = 0.05


async def _ticking(body: Coroutine[Any, Any, Any]) -> Any:
    """Await ``body`` with the loop waking every ``_TICK`` seconds: a time limit raised
    in this thread (``PyThreadState_SetAsyncExc``) is delivered when Python code runs,
    and a loop asleep in ``epoll_wait`` would deliver it only when its next timer fell
    due. The limit then ends the run (the loop stops, the coroutine is cancelled) and
    the task fails with it; the asyncio pool raises it inside the coroutine instead."""
    loop = asyncio.get_running_loop()
    timer: list[asyncio.TimerHandle] = []

    def tick() -> None:
        timer[:] = [loop.call_later(_TICK, tick)]

    tick()
    try:
        return await body
    finally:
        timer[0].cancel()


def _end(control: Control) -> tuple[bool, BaseException | None]:
    """Call ``control.end()``; a time-limit exception that lands while it runs (it was
    queued just before the limit was disarmed) is returned instead of escaping."""
    late: BaseException | None = None
    while True:
        try:
            return control.end(), late
        except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
            late = exc
