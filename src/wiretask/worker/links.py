"""A finished task's links: ``link`` callbacks and the chain after ``SUCCESS``,
``link_error`` errbacks after a failure.

Part of the tracer (``tracer.py``): it runs in whatever thread or child process ran the
task, after the final state was stored, and never raises (a link that cannot be sent or
that raises is logged, and the others still go).

Every signature is applied as Celery's worker applies it (``worker/canvas.py``): a
callback or chain step that is a group, chain or chord runs its canvas logic; several
callbacks go out as one group (each message with the group's id and its index) and
each group callback on its own; old-style errbacks go out as one group too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from wiretask import calling
from wiretask.canvas import TaskGroup, TaskSignature
from wiretask.protocol.signature import Signature
from wiretask.worker.canvas import as_canvas

if TYPE_CHECKING:
    from wiretask.app import App, Request, Task
    from wiretask.protocol.envelope import TaskMessage

__all__ = ["Links", "errback_runs_in_worker"]

logger = logging.getLogger("wiretask.worker")


def _positional_slots(task: Task[Any, Any], sig: Signature) -> float:
    """How many positional arguments a call of ``sig`` still has to supply (``inf`` for
    a ``*args`` function)."""
    parameters = list(inspect.signature(task.run).parameters.values())
    if task.bind and parameters:
        parameters = parameters[1:]  # ``self`` is supplied by the task, not the caller
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return float("inf")
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
        ) and parameter.name not in sig.kwargs:
            count += 1
    return count - len(sig.args)


def errback_runs_in_worker(app: App, sig: Signature) -> bool:
    """Whether an errback follows Celery's *new* convention and runs in the worker.

    Celery (``Backend._call_task_errbacks``) calls ``errback(request, exc, traceback)``
    in the worker when the errback's task is registered there and its function takes
    more than one positional argument; otherwise the errback is sent as a task with
    the failed task's id prepended. wiretask makes the count exact: it counts the
    positional parameters *still to fill* after the signature's own args and kwargs,
    not counting ``self`` of a bound task (Celery treats every bound task as old style,
    a side effect of how it wraps them). A ``*args`` function counts as many.
    An immutable errback takes no arguments from the failure, so it is always sent.
    """
    task = app.tasks.get(sig.task)
    if task is None or sig.immutable:
        return False
    return _positional_slots(task, sig) > 1


class Links:
    """Sends and calls the links of the app's task messages. Safe to share between
    threads (it keeps no state beyond the app)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def canvas(self, sig: Signature) -> TaskSignature:
        """A received signature as a canvas object to apply. Options a wiretask call
        does not know (Celery's stamps, for one) are dropped rather than failing the
        send, here and in the signatures nested in it."""
        return _known_options(as_canvas(self.app, sig))

    def send_signature(self, sig: Signature, args: Sequence[Any] = (), **options: Any) -> None:
        """Apply a signature (``args`` prepended, ``options`` merged) as a task message
        through the app (publish retry policy included)."""
        self.canvas(sig).apply_async(tuple(args), **options)

    def send_callbacks(self, message: TaskMessage, retval: Any) -> None:
        """``link`` callbacks and the next element of the chain, after ``SUCCESS``
        (Celery's ``_dispatch_callbacks_and_chain``).

        Each callback gets the return value prepended to its args (unless immutable),
        ``parent_id`` = this task and ``root_id`` = this task's root; two or more go out
        as one group (a group callback on its own). The chain is Celery's reversed list:
        the last element runs next, with the rest as its chain. A failure to send one is
        logged and does not stop the others.
        """
        root_id = message.root_id or message.id
        ids = {"parent_id": message.id, "root_id": root_id}
        callbacks = message.callbacks or ()
        if len(callbacks) == 1:
            self._send_logged(message, "callback", callbacks[0], (retval,), **ids)
        elif callbacks:
            self._send_callback_group(message, callbacks, retval, ids)
        if message.chain:
            self._send_logged(message, "chain", message.chain[-1], (retval,),
                              chain=[sig.to_dict() for sig in message.chain[:-1]], **ids)

    def _send_callback_group(
        self, message: TaskMessage, callbacks: Sequence[Signature], retval: Any,
        ids: dict[str, Any],
    ) -> None:
        plain: list[TaskSignature] = []
        for sig in callbacks:
            try:
                item = self.canvas(sig)
            except Exception:
                logger.exception("task %s[%s]: could not read callback %s",
                                 message.task, message.id, sig.task)
                continue
            if isinstance(item, TaskGroup):
                self._apply_logged(message, "callback", item, (retval,), ids)
            else:
                plain.append(item)
        if plain:
            self._apply_logged(message, "callbacks", TaskGroup(plain, app=self.app),
                               (retval,), ids)

    def _send_logged(self, message: TaskMessage, what: str, sig: Signature,
                     args: Sequence[Any], **options: Any) -> None:
        try:
            self.send_signature(sig, args, **options)
        except Exception:
            logger.exception(
                "task %s[%s]: could not send %s %s", message.task, message.id, what, sig.task
            )

    def _apply_logged(self, message: TaskMessage, what: str, sig: TaskSignature,
                      args: Sequence[Any], options: dict[str, Any]) -> None:
        try:
            sig.apply_async(tuple(args), **options)
        except Exception:
            logger.exception(
                "task %s[%s]: could not send %s %s", message.task, message.id, what, sig.task
            )

    def call_errbacks(
        self, message: TaskMessage, request: Request, exc: BaseException, tb: str | None
    ) -> None:
        """``link_error`` errbacks, after the failure was stored (see ``run_errbacks``)."""
        self.run_errbacks(message.errbacks or (), request, exc, tb, failed_id=message.id,
                          root_id=message.root_id or message.id)

    def run_errbacks(
        self, errbacks: Sequence[Signature], request: Request, exc: BaseException,
        tb: str | None, *, failed_id: str, root_id: str,
    ) -> None:
        """Errbacks of the failed task ``failed_id`` (Celery's ``_call_task_errbacks``).

        New convention (``errback_runs_in_worker``): called here, in order, as
        ``errback(request, exc, traceback)``. Old convention (anything else, including
        a task this worker does not know): sent together as one group with the failed
        task's id prepended, ``parent_id`` = the failed task. An exception in one
        errback is logged and the others still run.
        """
        sent: list[TaskSignature] = []
        for sig in errbacks:
            try:
                if errback_runs_in_worker(self.app, sig):
                    self._call_errback(sig, request, exc, tb)
                else:
                    sent.append(self.canvas(sig))
            except Exception:
                logger.exception("task %s[%s]: errback %s raised", request.task, failed_id,
                                 sig.task)
        if not sent:
            return
        try:
            TaskGroup(sent, app=self.app).apply_async(
                (failed_id,), parent_id=failed_id, root_id=root_id
            )
        except Exception:
            logger.exception("task %s[%s]: could not send errbacks %s", request.task,
                             failed_id, ", ".join(sig.task for sig in sent))

    def _call_errback(
        self, sig: Signature, request: Request, exc: BaseException, tb: str | None
    ) -> None:
        task = self.app.tasks[sig.task]
        merged = sig.clone((request, exc, tb))
        function: Callable[..., Any] = task
        function(*merged.args, **merged.kwargs)


#: Options a received signature may keep when it is applied: what a call accepts.
_APPLY_OPTIONS = calling.CALL_OPTIONS


def _known_options(sig: TaskSignature) -> TaskSignature:
    """``sig`` (changed in place) without the options a wiretask call does not know, in
    it and in the signatures nested in it (a chain's or group's tasks, a chord's header
    and body)."""
    dropped = set(sig.options) - _APPLY_OPTIONS
    if dropped:
        logger.debug("signature %s: ignoring options %s", sig.task, sorted(dropped))
        for key in dropped:
            del sig.options[key]
    nested = sig.kwargs.get("tasks") if sig.subtask_type in ("chain", "group") else None
    if sig.subtask_type == "chord":
        header = sig.kwargs.get("header")
        nested = [*(header.tasks if isinstance(header, TaskGroup) else header or ()),
                  *([sig.kwargs["body"]] if sig.kwargs.get("body") is not None else [])]
    for item in nested or ():
        if isinstance(item, TaskSignature):
            _known_options(item)
    return sig
