"""Task states, their precedence, which state may follow which, and the result meta dict.

Everything here is pure: no I/O and no clock (``make_meta`` takes ``date_done`` from the
caller). The values are Celery's (``celery.states``; the meta dict is ``spec/PROTOCOL.md`` §18.1),
so a meta dict built here is byte-for-byte what a Celery backend stores and what
Celery's ``AsyncResult`` reads.

States:

* ``PENDING`` is never stored: it is what an unknown task id reads as.
* ``RECEIVED`` is an event state in Celery; ``REJECTED`` and ``IGNORED`` are not stored
  by Celery's worker either. They are accepted here so that a store of any of them is
  still well-defined.
* Any other string is a *custom* state (``PROGRESS``). Custom states are unready, are not
  exception states, and rank between ``FAILURE`` and ``REVOKED`` in precedence.

Transitions (``FOLLOWERS``, ``may_follow``): Celery's key-value backends ignore every
update once a task is ``SUCCESS`` (a lost worker's late write must not overwrite the
result). wiretask extends that to **every ready state**: once ``SUCCESS``, ``FAILURE``
or ``REVOKED`` is stored, later stores for that task are ignored, so the first final
outcome wins and a subscriber's final state never changes under it. Unready states may
be followed by anything, because delivery is at least once: a redelivered or retried
task goes ``STARTED → RETRY → STARTED → …`` and may report the same custom state again.
A result that has expired (or was forgotten) reads as ``PENDING`` again, so a new
outcome may then be stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from wiretask.errors import ValidationError
from wiretask.protocol.exceptions import exception_to_meta
from wiretask.protocol.timing import format_iso

__all__ = [
    "ALL_STATES",
    "EXCEPTION_STATES",
    "FAILURE",
    "FOLLOWERS",
    "IGNORED",
    "META_KEYS",
    "PENDING",
    "PRECEDENCE",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
    "PendingState",
    "is_ready",
    "make_meta",
    "may_follow",
    "precedence",
]

PENDING: Final = "PENDING"
RECEIVED: Final = "RECEIVED"
STARTED: Final = "STARTED"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
REJECTED: Final = "REJECTED"
RETRY: Final = "RETRY"
IGNORED: Final = "IGNORED"

#: The states after which a task will not change any more (Celery's sets, verbatim).
READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES: Final = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
#: States whose ``result`` is an exception (stored as ``exc_type/exc_message/exc_module``).
EXCEPTION_STATES: Final = frozenset({RETRY, FAILURE, REVOKED})
#: States whose exception ``AsyncResult.get(propagate=True)`` re-raises.
PROPAGATE_STATES: Final = frozenset({FAILURE, REVOKED})
#: Celery's ``ALL_STATES`` (which, like Celery's, leaves out ``REJECTED`` and ``IGNORED``).
ALL_STATES: Final = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

#: Celery's precedence list, highest first. ``None`` stands for every custom state.
PRECEDENCE: Final[tuple[str | None, ...]] = (
    SUCCESS,
    FAILURE,
    None,
    REVOKED,
    STARTED,
    RECEIVED,
    REJECTED,
    RETRY,
    PENDING,
)
_PRECEDENCE_INDEX: Final[Mapping[str | None, int]] = {s: i for i, s in enumerate(PRECEDENCE)}

#: Which states may follow a stored state. ``None`` means *any state*, custom ones
#: included; an empty set means the state is final and later stores are ignored.
#: A custom (unlisted) state behaves like ``None``: anything may follow it.
FOLLOWERS: Final[Mapping[str, frozenset[str] | None]] = {
    PENDING: None,
    RECEIVED: None,
    STARTED: None,
    # A retried task runs again under the same id: RETRY -> STARTED/SUCCESS/FAILURE/...
    RETRY: None,
    # A rejected message may be requeued and run again.
    REJECTED: None,
    IGNORED: None,
    # Ready states are final (Celery: "SUCCESS is final"; wiretask: every ready state).
    SUCCESS: frozenset(),
    FAILURE: frozenset(),
    REVOKED: frozenset(),
}

#: The keys of every meta dict, in Celery's order (``group_id``/``parent_id`` and the
#: ``result_extended`` fields, when present, sit between ``date_done`` and ``task_id``).
META_KEYS: Final = ("status", "result", "traceback", "children", "date_done", "task_id")
_OPTIONAL_KEYS: Final = frozenset({"group_id", "parent_id"})


def precedence(state: str) -> int:
    """Celery's precedence index of ``state``: **lower means higher precedence**.

    Custom states get the index of ``None`` in ``PRECEDENCE``: below ``SUCCESS`` and
    ``FAILURE``, above ``REVOKED`` and every other built-in state (Celery's rule).

    >>> precedence(SUCCESS) < precedence("PROGRESS") < precedence(STARTED)
    True
    """
    return _PRECEDENCE_INDEX.get(state, _PRECEDENCE_INDEX[None])


def is_ready(state: str) -> bool:
    """Whether ``state`` is final (``SUCCESS``, ``FAILURE`` or ``REVOKED``)."""
    return state in READY_STATES


def may_follow(previous: str | None, new: str) -> bool:
    """Whether a store of ``new`` is applied when ``previous`` is the stored state.

    ``previous=None`` means nothing is stored (the task reads as ``PENDING``), after
    which anything may be stored.
    """
    if previous is None:
        return True
    allowed = FOLLOWERS.get(previous)
    return allowed is None or new in allowed


def make_meta(
    task_id: str,
    status: str,
    result: Any,
    *,
    traceback: str | None = None,
    children: Iterable[Any] = (),
    date_done: datetime | str | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the meta dict a backend stores and ``on_message`` receives (Celery's shape).

    The keys and their order are Celery's: ``status, result, traceback, children,
    date_done``, then ``group_id`` and ``parent_id`` when set, then ``extra`` (the
    ``result_extended`` fields: ``name``, ``args``, ``kwargs``, ``worker``, ...), and
    ``task_id`` last.

    Args:
        task_id: the task's id.
        status: the state (a built-in one or a custom string such as ``"PROGRESS"``).
        result: the return value, the custom state's meta, or for an exception state
            (``FAILURE``, ``RETRY``, ``REVOKED``) an exception instance, which is
            converted with ``wiretask.protocol.exceptions.exception_to_meta``, or an
            already converted ``{"exc_type", "exc_message", "exc_module"}`` dict.
        traceback: the formatted traceback of an exception state.
        children: result tuples of subtasks (Celery's ``[[id, parent], null]`` form).
        date_done: when the task finished. Celery sets it only for ready states, so it
            is written only for those and is ``None`` otherwise; a datetime is written
            with ``isoformat()`` and an offset (naive means UTC), a string as given.
        group_id: the group the task belongs to (written only when set).
        parent_id: the task that sent this one (written only when set).
        extra: further keys (``result_extended``); they may not replace the keys above.

    Raises:
        ValidationError: a non-string ``task_id``/``status``, or ``extra`` that would
            replace one of Celery's keys.
    """
    if not isinstance(task_id, str) or not task_id:
        raise ValidationError("task_id", "must be a non-empty string", value=task_id)
    if not isinstance(status, str) or not status:
        raise ValidationError("status", "must be a non-empty string", value=status)
    if status in EXCEPTION_STATES and isinstance(result, BaseException):
        result = exception_to_meta(result)
    done: str | None = None
    if status in READY_STATES and date_done is not None:
        # A datetime: naive means UTC, as everywhere in wiretask (Celery's worker reads
        # naive times as UTC); the written value always carries an offset: isoformat's
        # text (format_iso: orjson writes it for UTC at a third of the cost; every
        # result the worker stores has one).
        done = date_done if isinstance(date_done, str) else format_iso(date_done)
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": list(children),
        "date_done": done,
    }
    # Celery writes these only when the request has them (``if request.group``).
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    if extra:
        clash = sorted((set(META_KEYS) | _OPTIONAL_KEYS) & set(extra))
        if clash:
            raise ValidationError(
                "extra", f"may not replace the meta keys {', '.join(clash)}", value=clash
            )
        meta.update(extra)
    meta["task_id"] = task_id
    return meta


@attrs.frozen(kw_only=True)
class PendingState:
    """A task state checked and encoded for its result backend's layout, not written
    yet: what a broker that can write results in the step that acknowledges a message
    (``transports.base.FusedSettlement``) writes for a backend that defers its stores
    (``results.base.DeferredStore``). A plain value, so neither side imports the other.
    """

    task_id: str
    meta: Mapping[str, Any]
    status: str
    #: Where the backend keeps the state (Celery's ``celery-task-meta-<id>`` key).
    key: str
    #: The encoded meta dict, exactly as the backend would store it.
    data: bytes | str
    #: Seconds until the stored state expires (``None``: never).
    expires: float | None
