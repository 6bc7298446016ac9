"""A finished task's links: ``link`` callbacks and the chain after ``SUCCESS``,
``link_error`` errbacks after a failure.

Part of the tracer (``tracer.py``): it runs in whatever thread or child process ran the
task, after the final state was stored, and never raises (a link that cannot be sent or
that raises is logged, and the others still go).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wiretask import calling
from wiretask.protocol.signature import Signature

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

    def send_signature(self, sig: Signature) -> None:
        """Send a signature as a task message through the app (publish retry policy
        included). Options a wiretask call does not know (Celery's stamps, for one) are
        dropped rather than failing the send."""
        options = {k: v for k, v in sig.options.items() if k in calling.CALL_OPTIONS}
        dropped = set(sig.options) - set(options)
        if dropped:
            logger.debug("signature %s: ignoring options %s", sig.task, sorted(dropped))
        self.app.send_task(sig.task, sig.args, sig.kwargs, **options)

    def send_callbacks(self, message: TaskMessage, retval: Any) -> None:
        """``link`` callbacks and the next element of the chain, after ``SUCCESS``.

        Each callback gets the return value prepended to its args (unless immutable),
        ``parent_id`` = this task and ``root_id`` = this task's root. The chain is
        Celery's reversed list: the last element runs next, with the rest as its chain.
        A failure to send one is logged and does not stop the others.
        """
        root_id = message.root_id or message.id
        for sig in message.callbacks or ():
            self._send_logged(
                message, "callback",
                sig.clone((retval,), parent_id=message.id, root_id=root_id),
            )
        if message.chain:
            rest = message.chain[:-1]
            following = message.chain[-1].clone(
                (retval,), parent_id=message.id, root_id=root_id, chain=rest or None
            )
            self._send_logged(message, "chain", following)

    def _send_logged(self, message: TaskMessage, what: str, sig: Signature) -> None:
        try:
            self.send_signature(sig)
        except Exception:
            logger.exception(
                "task %s[%s]: could not send %s %s", message.task, message.id, what, sig.task
            )

    def call_errbacks(
        self, message: TaskMessage, request: Request, exc: BaseException, tb: str | None
    ) -> None:
        """``link_error`` errbacks, in order, after the failure was stored.

        New convention (``errback_runs_in_worker``): called here as
        ``errback(request, exc, traceback)``. Old convention (anything else, including a
        task this worker does not know): sent as a task with the failed task's id
        prepended, ``parent_id`` = the failed task. An exception in one errback is
        logged and the others still run.
        """
        root_id = message.root_id or message.id
        for sig in message.errbacks or ():
            try:
                if errback_runs_in_worker(self.app, sig):
                    self._call_errback(sig, request, exc, tb)
                else:
                    self.send_signature(
                        sig.clone((message.id,), parent_id=message.id, root_id=root_id)
                    )
            except Exception:
                logger.exception(
                    "task %s[%s]: errback %s raised", message.task, message.id, sig.task
                )

    def _call_errback(
        self, sig: Signature, request: Request, exc: BaseException, tb: str | None
    ) -> None:
        task = self.app.tasks[sig.task]
        merged = sig.clone((request, exc, tb))
        function: Callable[..., Any] = task
        function(*merged.args, **merged.kwargs)
