"""Celery's built-in tasks, registered in every app (Celery's ``app/builtins.py``).

A Celery client sends some of these as messages, and wiretask's canvas sends some of
them too, so a worker of either kind runs what the other sends:

* ``celery.chord_unlock(group_id, callback, interval=None, max_retries=None,
  result=None)``: for result backends that do not count chords (SQLite, memory here,
  like Celery's database or cache backends), the client sends this with the header's
  result tuples; it retries itself every ``interval`` seconds (default
  ``result_chord_retry_interval``) until every header task is ready, then sends the
  body with their results in header order, or fails it with ``ChordError``.
* ``celery.map(task, it)`` / ``celery.starmap(task, it)``: call ``task`` (a signature)
  here for each item (``task(item)`` / ``task(*item)``); the list of returns.
* ``celery.chunks(task, it, n)``: send ``it`` as a group of ``celery.starmap`` calls of
  ``n`` items (the group's result tuple is the return).
* ``celery.group(tasks, result, group_id, partial_args)``, ``celery.chord(header,
  body, ...)``: what Celery kept for compatibility, run as Celery runs them;
  ``celery.chain`` fails, as Celery's does ("chain is not a real task").
* ``celery.accumulate(*args, index=None)`` (used by Celery's ``Task.replace``) and
  ``celery.backend_cleanup`` (a no-op here, as on Celery's Redis backend: every bundled
  backend expires results itself).

A task whose return value is a result (a group's) returns its result tuple, which is
what Celery stores for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from wiretask.canvas import (
    GroupResult,
    TaskChord,
    TaskGroup,
    chunks,
    maybe_signature,
    result_from_tuple,
    signature,
)
from wiretask.errors import ChordError, Retry
from wiretask.worker.canvas import Chords, result_value
from wiretask.worker.links import Links

if TYPE_CHECKING:
    from wiretask.app import App, Task

__all__ = ["BUILTIN_TASKS", "register_builtins"]

logger = logging.getLogger("wiretask.worker")

#: The names registered, in Celery's order.
BUILTIN_TASKS = (
    "celery.backend_cleanup", "celery.accumulate", "celery.chord_unlock", "celery.map",
    "celery.starmap", "celery.chunks", "celery.group", "celery.chain", "celery.chord",
)


def register_builtins(app: App) -> None:
    """Register Celery's built-in tasks in ``app`` (skipping any name already taken)."""
    for name, register in (
        ("celery.backend_cleanup", _backend_cleanup),
        ("celery.accumulate", _accumulate),
        ("celery.chord_unlock", _chord_unlock),
        ("celery.map", _map),
        ("celery.starmap", _starmap),
        ("celery.chunks", _chunks),
        ("celery.group", _group),
        ("celery.chain", _chain),
        ("celery.chord", _chord),
    ):
        if name not in app._tasks:
            register(app)


def _backend_cleanup(app: App) -> None:
    @app.task(name="celery.backend_cleanup", typing=False)
    def backend_cleanup() -> None:
        """Every bundled backend expires results itself (as Celery's Redis backend,
        whose ``cleanup`` does nothing either)."""


def _accumulate(app: App) -> None:
    @app.task(name="celery.accumulate", bind=True, typing=False)
    def accumulate(self: Task[Any, Any], *args: Any, **kwargs: Any) -> Any:
        index = kwargs.get("index")
        return args[index] if index is not None else args


def _chord_unlock(app: App) -> None:
    @app.task(name="celery.chord_unlock", bind=True, typing=False, max_retries=None,
              ignore_result=True,
              default_retry_delay=app.conf.get("result_chord_retry_interval") or 1.0)
    def unlock_chord(self: Task[Any, Any], /, group_id: str, callback: Mapping[str, Any],
                     interval: float | None = None, max_retries: int | None = None,
                     result: Sequence[Any] | None = None, **kwargs: Any) -> None:
        """Poll the header ``result`` of the chord ``group_id``; when every task is
        ready, send ``callback`` with their results (Celery's ``unlock_chord``)."""
        del kwargs  # Celery's _chord_unlock_exchange_type: routing is the queue's here
        if interval is None:
            interval = self.default_retry_delay
        header = GroupResult(group_id, [result_from_tuple(r, app) for r in result or ()],
                             app=app)
        body = signature(dict(callback), app=app)
        chords = Chords(app, Links(app))
        ready_error: Exception | None = None
        try:
            try:
                ready = header.ready()
            except Exception as exc:
                ready_error = exc
                self.retry(exc=exc, countdown=interval, max_retries=max_retries)
            if not ready:
                self.retry(countdown=interval, max_retries=max_retries)
        except Retry:
            raise
        except Exception as exc:
            logger.exception("chord %s: chord_unlock could not be retried", group_id)
            reason = f"chord_unlock could not be retried: {exc!r}"
            if ready_error is not None and ready_error is not exc:
                reason += f" (after deps.ready() raised {ready_error!r})"
            error = ChordError(reason)
            error.__cause__ = exc
            chords.chord_error(body, error)
            raise
        _unlock(app, chords, header, body)


def _unlock(app: App, chords: Chords, header: GroupResult, body: Any) -> None:
    """Join a ready header and send the body, or fail it (Celery's ``unlock_chord``)."""
    try:
        values = header.join(timeout=app.conf.get("result_chord_join_timeout"),
                             propagate=True, disable_sync_subtasks=False)
    except Exception as exc:
        culprit = next(header.failed_join_report(), None)
        reason = (f"Dependency {culprit.id} raised {exc!r}" if culprit is not None
                  else repr(exc))
        logger.exception("chord %s: %s", header.id, reason)
        error = ChordError(reason)
        error.__cause__ = exc
        chords.chord_error(body, error)
        return
    try:
        body.apply_async((values,))
    except Exception as exc:
        logger.exception("chord %s: could not send its body", header.id)
        error = ChordError(f"Callback error: {exc!r}")
        error.__cause__ = exc
        chords.chord_error(body, error)


def _map(app: App) -> None:
    @app.task(name="celery.map", typing=False)
    def xmap(task: Mapping[str, Any], it: Sequence[Any]) -> list[Any]:
        function = signature(dict(task), app=app).type
        return [function(item) for item in it]


def _starmap(app: App) -> None:
    @app.task(name="celery.starmap", typing=False)
    def xstarmap(task: Mapping[str, Any], it: Sequence[Sequence[Any]]) -> list[Any]:
        function = signature(dict(task), app=app).type
        return [function(*item) for item in it]


def _chunks(app: App) -> None:
    @app.task(name="celery.chunks", typing=False)
    def chunks_task(task: Mapping[str, Any], it: Sequence[Any], n: int) -> Any:
        return result_value(chunks(signature(dict(task), app=app), it, n, app=app)())


def _group(app: App) -> None:
    @app.task(name="celery.group", bind=True, typing=False)
    def group_task(self: Task[Any, Any], tasks: Sequence[Mapping[str, Any]], result: Any,
                   group_id: str, partial_args: Sequence[Any],
                   add_to_parent: bool = True) -> Any:
        del self, add_to_parent
        restored = result_from_tuple(result, app)
        for task in tasks:
            maybe_signature(dict(task), app=app).clone(partial_args).apply_async(
                group_id=group_id
            )
        return result_value(restored)


def _chain(app: App) -> None:
    @app.task(name="celery.chain", typing=False)
    def chain_task(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("chain is not a real task")


def _chord(app: App) -> None:
    @app.task(name="celery.chord", bind=True, ignore_result=False, typing=False)
    def chord_task(self: Task[Any, Any], /, header: Any, body: Any,
                   partial_args: Sequence[Any] = (), interval: float | None = None,
                   countdown: float = 1, max_retries: int | None = None,
                   eager: bool = False, **kwargs: Any) -> Any:
        del self, eager
        members = header.get("kwargs", {}).get("tasks", []) if (
            isinstance(header, Mapping) and header.get("subtask_type") == "group"
        ) else header
        group = TaskGroup([maybe_signature(task, app=app) for task in members], app=app)
        callback = maybe_signature(body, app=app)
        run = TaskChord(group, callback, app=app).run(
            group, callback, tuple(partial_args), interval=interval, countdown=countdown,
            max_retries=max_retries, **kwargs,
        )
        return result_value(run)
