"""The worker's part of the canvas: applying received signatures, chords, failing a
chain forward.

Part of the tracer (``tracer.py``), called after a task's final state was stored:

* ``apply``: a received signature (a callback, the next step of a chain, a chord's
  body) is applied as Celery's worker applies it, through ``wiretask.canvas``: a
  chain, group or chord signature runs its canvas logic (a chain ending in a group
  sends the group's tasks, not a ``celery.group`` message).
* ``Chords.part_returned``: a header task of a chord finished (``SUCCESS``,
  ``FAILURE``, ``REVOKED``). On a backend that counts chords itself (``ChordCounter``:
  Redis, Celery's ``on_chord_part_return``) its result is recorded, and the worker
  whose part completes the chord sends the body with the header's results in header
  order, or fails it with Celery's ``ChordError`` when a header task failed. Other
  backends are polled by ``celery.chord_unlock`` (``worker/builtins.py``).
* ``Chords.fail_chain``: a failed task's error is stored under the ids of the rest of
  its chain (a chord step's body included), and a chord member among them reports its
  part, so nothing waiting on them hangs (Celery's ``_fail_chain``).
* ``Chords.chord_error``: a chord that cannot fire: the body's errbacks are called and
  its ``ChordError`` stored under the body's id (Celery's ``chord_error_from_stack``).

Nothing here raises into the tracer: a failure to count, send or store is logged.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from wiretask.canvas import (
    GroupResult,
    TaskChord,
    TaskGroup,
    TaskSignature,
    maybe_signature,
    signature,
)
from wiretask.errors import ChordError
from wiretask.protocol import states
from wiretask.protocol.signature import Signature
from wiretask.results.base import ChordCounter
from wiretask.results.exceptions import exception_from_meta, exception_to_meta

if TYPE_CHECKING:
    from wiretask.app import App, Request
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.worker.links import Links

__all__ = ["Chords", "apply", "as_canvas", "chord_error_for", "extended_fields",
           "result_value"]

logger = logging.getLogger("wiretask.worker")

#: The least time a claim on a chord lasts (Celery: twice the join timeout, >= 5 s).
MIN_CLAIM_SECONDS: Final = 5
#: How long a finished chord stays marked done (Celery: at least 300 s).
MIN_DONE_SECONDS: Final = 300


def as_canvas(app: App, sig: Signature | Mapping[str, Any]) -> TaskSignature:
    """A received signature as the canvas object Celery's ``signature(d)`` makes."""
    value = sig.to_dict() if isinstance(sig, Signature) else dict(sig)
    return signature(value, app=app)


def apply(app: App, sig: Signature | Mapping[str, Any], args: Sequence[Any] = (),
          **options: Any) -> Any:
    """``signature(sig).apply_async(args, **options)``, as Celery's worker applies a
    callback or a chain step. Raises what sending raises."""
    return as_canvas(app, sig).apply_async(tuple(args), **options)


def result_value(value: Any) -> Any:
    """What is recorded for a return value: a result object as Celery's result tuple
    (Celery's ``prepare_value``), anything else as it is."""
    from wiretask.app import AsyncResult  # noqa: PLC0415 - app imports the worker lazily

    if isinstance(value, AsyncResult | GroupResult):
        return _plain(value.as_tuple())
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def extended_fields(
    app: App, message: TaskMessage, request: Request | None, hostname: str,
) -> dict[str, Any] | None:
    """With ``result_extended``, what Celery's ``_get_result_meta`` adds to every state
    it stores for a task: ``name``, ``args``, ``kwargs``, ``worker``, ``retries``,
    ``queue`` (the routing key it was delivered with), and its stamps; ``None`` when
    the setting is off."""
    if not app.conf.get("result_extended"):
        return None
    info = (request.delivery_info if request is not None else None) or {}
    fields: dict[str, Any] = {
        "name": message.task,
        "args": list(message.args),
        "kwargs": dict(message.kwargs),
        "worker": request.hostname if request is not None else hostname,
        "retries": message.retries,
        "queue": info.get("routing_key"),
    }
    if message.stamps:
        stamped = list(message.stamped_headers or ())
        fields["stamped_headers"] = stamped
        fields.update({k: v for k, v in message.stamps.items() if k in stamped})
    return fields


def chord_error_for(task_id: str, exc: BaseException) -> ChordError:
    """Celery's error for a chord whose header task ``task_id`` failed with ``exc``:
    ``ChordError("Dependency <id> raised <repr>")``, caused by ``exc``."""
    error = ChordError(f"Dependency {task_id} raised {exc!r}")
    if isinstance(exc, Exception):
        error.__cause__ = exc
    return error


class Chords:
    """Chord bookkeeping and forward failures for one app's worker (no state of its
    own: safe to share between threads)."""

    def __init__(self, app: App, links: Links) -> None:
        self.app = app
        self.links = links

    # -- a header task finished ------------------------------------------------------

    def message_returned(self, message: TaskMessage, state: str, result: Any) -> None:
        """``message``'s task finished in ``state`` with ``result``: its part of a
        chord, if it is a header task of one."""
        if message.chord is not None:
            self.part_returned(task_id=message.id, group_id=message.group,
                               group_index=message.group_index, chord=message.chord,
                               state=state, result=result)

    def message_failed(self, message: TaskMessage, exc: BaseException, tb: str) -> None:
        """``message``'s task failed (its ``FAILURE`` stored): its part of a chord, then
        the rest of its chain failed forward (Celery's ``mark_as_failure`` order)."""
        self.message_returned(message, states.FAILURE, exc)
        self.fail_chain(message.chain, exc, tb=tb, store=not message.ignore_result)

    def part_returned(
        self, *, task_id: str | None, group_id: str | None, group_index: int | None,
        chord: Signature | Mapping[str, Any] | None, state: str, result: Any,
    ) -> None:
        """A task that is part of a chord (it carries the chord's body) finished in
        ``state`` with ``result`` (its value or its exception). Never raises."""
        if chord is None or not group_id or not task_id:
            return
        backend = self.app.backend
        if not isinstance(backend, ChordCounter):
            return  # celery.chord_unlock polls this chord
        try:
            self._count(backend, task_id, group_id, group_index, chord, state, result)
        except Exception:
            logger.exception("chord %s: could not count the part of task %s", group_id,
                             task_id)

    def _count(
        self, backend: ChordCounter, task_id: str, group_id: str, group_index: int | None,
        chord: Signature | Mapping[str, Any], state: str, result: Any,
    ) -> None:
        value = exception_to_meta(result) if (
            state in states.EXCEPTION_STATES and isinstance(result, BaseException)
        ) else result_value(result)
        part = self.app.backend.codec.encode_value([1, task_id, state, value]).data
        join_timeout = self.app.conf.get("result_chord_join_timeout") or 5.0
        claim = max(MIN_CLAIM_SECONDS, int(join_timeout * 2))
        token = uuid.uuid4().hex
        progress = backend.add_chord_part(group_id, task_id, group_index, part,
                                          claim_seconds=claim, token=token)
        if progress is None or progress.size is None:
            return
        if not (progress.complete and progress.claimed):
            return
        callback = as_canvas(self.app, chord)
        try:
            values = self._header_values(backend, group_id, join_timeout)
        except ChordError as exc:
            logger.exception("chord %s failed", group_id)
            self._fail_and_drop(backend, group_id, callback, exc)
            return
        except Exception as exc:
            logger.exception("chord %s: could not join its header", group_id)
            self._fail_and_drop(backend, group_id, callback, ChordError(f"Join error: {exc!r}"))
            return
        self._fire(backend, group_id, callback, values, token,
                   claim=claim, done=max(claim * 2, MIN_DONE_SECONDS))

    def _fail_and_drop(self, backend: ChordCounter, group_id: str, callback: TaskSignature,
                       exc: ChordError) -> None:
        try:
            self.chord_error(callback, exc)
        finally:
            backend.drop_chord_size(group_id)

    def _header_values(self, backend: ChordCounter, group_id: str,
                       join_timeout: float) -> list[Any]:
        """The header's results in header order: from the recorded parts, or, when the
        client kept a header that nests groups, by joining it (their structure kept)."""
        saved = GroupResult.restore(group_id, app=self.app)
        if saved is not None:
            return saved.join(timeout=join_timeout, propagate=True,
                              disable_sync_subtasks=False) or []
        return [self._unpack(raw) for raw in backend.chord_parts(group_id)]

    def _unpack(self, raw: bytes) -> Any:
        entry = self.app.backend.codec.decode_value(raw)
        _, task_id, state, value = entry
        if state in states.EXCEPTION_STATES and isinstance(value, Mapping):
            value = exception_from_meta(value)
        if state in states.PROPAGATE_STATES:
            raise chord_error_for(str(task_id), value if isinstance(value, BaseException)
                                  else Exception(value))
        return value

    def _fire(
        self, backend: ChordCounter, group_id: str, callback: TaskSignature,
        values: list[Any], token: str, *, claim: int, done: int,
    ) -> None:
        if not backend.extend_chord_claim(group_id, token, claim * 2):
            logger.warning("chord %s: body not sent, another worker holds the chord",
                           group_id)
            return
        try:
            callback.apply_async((values,))
        except Exception as exc:
            logger.exception("chord %s: could not send its body %s", group_id, callback.task)
            self.chord_error(callback, ChordError(f"Callback error: {exc!r}"))
        finally:
            if not backend.finish_chord(group_id, token, done):
                logger.warning("chord %s: the claim was lost before clean-up; its keys "
                               "are left to expire", group_id)

    # -- a chord that cannot fire ------------------------------------------------------

    def chord_error(self, callback: TaskSignature, exc: BaseException) -> None:
        """The body ``callback`` will not run: call its errbacks and store ``exc`` as its
        result, then fail the rest of its chain (Celery's ``chord_error_from_stack``).
        A group body fails each of its tasks with the header's own error."""
        if isinstance(callback, TaskGroup):
            self._group_chord_error(callback, exc)
            self.fail_chain(callback.options.get("chain"), exc)
            return
        callback_id = callback.id or str(callback.options.setdefault("task_id",
                                                                     _new_id()))
        errbacks = [Signature.from_dict(dict(sig)) for sig in
                    _as_list(callback.options.get("link_error"))]
        self._fail_result(callback_id, callback.task, callback.args, callback.kwargs,
                          errbacks, exc)
        self.fail_chain(callback.options.get("chain"), exc)

    def _group_chord_error(self, group: TaskGroup, exc: BaseException) -> None:
        original = exc.__cause__ if isinstance(exc, ChordError) and exc.__cause__ else exc
        frozen = group.freeze()
        group_errbacks = _as_list(group.options.get("link_error"))
        own = dict(_result_errbacks(self.app, task) for task in group.tasks)
        for task, result in zip(group.tasks, frozen.results, strict=False):
            errbacks: list[Any] = []
            for errback in (*own.get(result.id, ()), *group_errbacks):
                if errback not in errbacks:
                    errbacks.append(errback)
            self._fail_result(result.id, task.task, task.args, task.kwargs,
                              [Signature.from_dict(dict(e)) for e in errbacks], original)
        self._store_failure(frozen.id, original)

    def _fail_result(self, task_id: str, name: str, args: Sequence[Any],
                     kwargs: Mapping[str, Any], errbacks: Sequence[Signature],
                     exc: BaseException) -> None:
        from wiretask.app import Request  # noqa: PLC0415 - app imports the worker lazily

        request = Request(id=task_id, task=name, args=tuple(args), kwargs=dict(kwargs),
                          root_id=task_id, called_directly=False, delivery_info={})
        self.links.run_errbacks(errbacks, request, exc, None, failed_id=task_id,
                                root_id=task_id)
        self._store_failure(task_id, exc)

    def _store_failure(self, task_id: str, exc: BaseException, *, tb: str | None = None,
                       group_id: str | None = None, parent_id: str | None = None) -> None:
        if tb is None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self.app.backend.store(task_id, states.make_meta(
                task_id, states.FAILURE, exc, traceback=tb, date_done=self.app.now(),
                group_id=group_id, parent_id=parent_id,
            ))
        except Exception:
            logger.exception("task %s: could not store FAILURE", task_id)

    # -- failing a chain forward -----------------------------------------------------------

    def fail_chain(self, chain: Iterable[Any] | None, exc: BaseException, *,
                   tb: str | None = None, store: bool = True) -> None:
        """Store ``exc`` under the ids of the rest of a chain (Celery's ``_fail_chain``):
        each element with a task id; a chord member reports its part (once); a chord
        step's body too, since it is the step's result."""
        pending: deque[Any] = deque(chain or ())
        while pending:
            element = pending.popleft()
            sig = element.to_dict() if isinstance(element, Signature) else dict(element)
            options = sig.get("options") or {}
            task_id = options.get("task_id")
            member = "chord" in options
            already_failed = member and task_id is not None and self._state(task_id) in (
                states.PROPAGATE_STATES
            )
            if store and task_id is not None:
                self._store_failure(str(task_id), exc, tb=tb,
                                    group_id=options.get("group_id"),
                                    parent_id=options.get("parent_id"))
            if member and not already_failed:
                self.part_returned(task_id=task_id, group_id=options.get("group_id"),
                                   group_index=options.get("group_index"),
                                   chord=options.get("chord"), state=states.FAILURE,
                                   result=exc)
            if sig.get("subtask_type") == "chord":
                body = (sig.get("kwargs") or {}).get("body")
                if body is not None:
                    pending.append(body)

    def _state(self, task_id: str) -> str | None:
        try:
            meta = self.app.backend.get(task_id)
        except Exception:
            logger.exception("task %s: could not read its state", task_id)
            return None
        return None if meta is None else str(meta.get("status"))


def _new_id() -> str:
    from wiretask.calling import new_task_id  # noqa: PLC0415 - one id generator

    return new_task_id()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _result_errbacks(app: App, sig: Any) -> tuple[str | None, list[Any]]:
    """The id of the result of ``sig`` and the errbacks linked to it (a chord's body's,
    a group's tasks' too), as Celery's ``_result_errbacks``."""
    sig = maybe_signature(sig, app=app)
    errbacks: list[Any] = []
    while isinstance(sig, TaskChord) and sig.body is not None:
        errbacks.extend(_as_list(sig.options.get("link_error")))
        sig = maybe_signature(sig.body, app=app)
    errbacks.extend(_as_list(sig.options.get("link_error")))
    if isinstance(sig, TaskGroup):
        for task in sig.tasks:
            errbacks.extend(_result_errbacks(app, task)[1])
    return sig.options.get("task_id"), errbacks
