"""Schedule entries: ``beat_schedule`` read as Celery reads it, and what
``add_periodic_task`` writes into it.

An entry is a dict with Celery's fields::

    app.conf.beat_schedule = {
        "add-every-30-seconds": {
            "task": "tasks.add",            # the task name (required)
            "schedule": 30.0,               # seconds, a timedelta, crontab(...) or
                                            # schedule(...) (required)
            "args": (16, 16),               # a list or tuple
            "kwargs": {},                   # a dict
            "options": {"expires": 10},     # apply_async options
            "relative": False,              # round a timedelta schedule by the clock
        },
    }

Anything else (an unknown field, a missing task, args that are not a list or tuple, an
unknown option) is refused with ``ImproperlyConfigured`` naming the entry and the field,
when beat reads the schedule, before it sends anything.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from wiretask import calling
from wiretask.beat.schedules import BaseSchedule, maybe_schedule
from wiretask.canvas import TaskChain, TaskSignature
from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.protocol.signature import Signature

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = [
    "ENTRY_FIELDS",
    "BeatLazyFunc",
    "ScheduleEntry",
    "entries_from_schedule",
    "periodic_task_entry",
    "reprcall",
]

#: The fields of a ``beat_schedule`` entry (Celery's "Available Fields").
ENTRY_FIELDS = ("task", "schedule", "args", "kwargs", "options", "relative")


class BeatLazyFunc:
    """A value computed when the entry is sent (Celery's ``celery.beat.BeatLazyFunc``)::

        "kwargs": {"sent_at": BeatLazyFunc(datetime.now)}
    """

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs

    def __call__(self) -> Any:
        return self.delay()

    def delay(self) -> Any:
        return self._func(*self._args, **self._kwargs)

    def __repr__(self) -> str:
        name = getattr(self._func, "__name__", repr(self._func))
        return f"BeatLazyFunc({reprcall(name, self._args, self._kwargs)})"


def reprcall(name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> str:
    """``name(arg, key=value)``, as Celery (kombu's ``reprcall``) writes a call."""
    parts = [repr(arg) for arg in args]
    parts += [f"{key}={value!r}" for key, value in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


class ScheduleEntry:
    """One periodic task: what to send, on which schedule, and when it last was sent.

    ``last_run_at`` is the time of the last send (aware); a new entry starts at "now",
    so its first run is one interval (or the next crontab minute) after beat started, as
    in Celery. ``total_run_count`` counts the sends.
    """

    def __init__(
        self,
        *,
        name: str,
        task: str,
        schedule: BaseSchedule,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        last_run_at: datetime | None = None,
        total_run_count: int = 0,
    ) -> None:
        self.name = name
        self.task = task
        self.schedule = schedule
        self.args = args
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.options: dict[str, Any] = dict(options or {})
        self.last_run_at = last_run_at if last_run_at is not None else self.default_now()
        self.total_run_count = total_run_count

    def default_now(self) -> datetime:
        return self.schedule.now()

    def is_due(self) -> tuple[bool, float]:
        """``schedule.is_due(last_run_at)``."""
        return self.schedule.is_due(self.last_run_at)

    def next(self, last_run_at: datetime | None = None) -> ScheduleEntry:
        """A copy run once more, last at ``last_run_at`` (default: now)."""
        return ScheduleEntry(
            name=self.name, task=self.task, schedule=self.schedule, args=self.args,
            kwargs=self.kwargs, options=self.options,
            last_run_at=last_run_at or self.default_now(),
            total_run_count=self.total_run_count + 1,
        )

    __next__ = next

    def update(self, other: ScheduleEntry) -> None:
        """Take ``other``'s editable fields (task, schedule, args, kwargs, options),
        keeping the run history, as Celery's ``merge_inplace`` does."""
        self.task, self.schedule = other.task, other.schedule
        self.args, self.kwargs, self.options = other.args, other.kwargs, other.options

    def call_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """The args and kwargs to send, ``BeatLazyFunc`` values evaluated now."""
        args = [value() if isinstance(value, BeatLazyFunc) else value for value in self.args]
        kwargs = {key: value() if isinstance(value, BeatLazyFunc) else value
                  for key, value in self.kwargs.items()}
        return args, kwargs

    def editable_fields_equal(self, other: ScheduleEntry) -> bool:
        return all(getattr(self, field) == getattr(other, field)
                   for field in ("task", "args", "kwargs", "options", "schedule"))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScheduleEntry):
            return self.editable_fields_equal(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by its editable fields

    def __repr__(self) -> str:
        return (f"<ScheduleEntry: {self.name} {reprcall(self.task, self.args, self.kwargs)} "
                f"{self.schedule!r}>")


def _refuse(entry: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"beat_schedule[{entry!r}]: {problem}", setting="beat_schedule")


def _check_shape(name: object, raw: object) -> Mapping[Any, Any]:
    if not isinstance(name, str) or not name:
        raise ImproperlyConfigured(
            f"beat_schedule: entry names must be non-empty strings, got {name!r}",
            setting="beat_schedule",
        )
    if not isinstance(raw, Mapping):
        raise _refuse(name, f"an entry is a dict of {', '.join(ENTRY_FIELDS)}, got "
                      f"{type(raw).__name__}")
    for key in raw:
        if key not in ENTRY_FIELDS:
            close = difflib.get_close_matches(str(key), ENTRY_FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _refuse(name, f"unknown field {key!r}{hint} (the fields are "
                          f"{', '.join(ENTRY_FIELDS)})")
    return raw


def _schedule_of(app: App, name: str, raw: Mapping[Any, Any]) -> BaseSchedule:
    if "schedule" not in raw:
        raise _refuse(name, "'schedule' is missing (seconds, a timedelta, a crontab or a "
                      "schedule)")
    relative = raw.get("relative", False)
    if not isinstance(relative, bool):
        raise _refuse(name, f"'relative' must be True or False, got {relative!r}")
    try:
        return maybe_schedule(raw["schedule"], relative, app=app)
    except ValidationError as exc:
        raise _refuse(name, f"'schedule' {exc.problem}") from None


def _call_of(
    name: str, raw: Mapping[Any, Any]
) -> tuple[tuple[Any, ...], Mapping[str, Any], Mapping[str, Any]]:
    args = raw.get("args", ())
    if args is None:
        args = ()
    if not isinstance(args, list | tuple):
        raise _refuse(name, f"'args' must be a list or tuple, got {args!r} (a one-item "
                      "tuple needs its comma: (16,))")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise _refuse(name, f"'kwargs' must be a dict with string keys, got {kwargs!r}")
    options = raw.get("options") or {}
    if not isinstance(options, Mapping):
        raise _refuse(name, f"'options' must be a dict of apply_async options, got "
                      f"{options!r}")
    try:
        calling.check_options(options)
    except ValidationError as exc:
        raise _refuse(name, f"'options': {exc}") from None
    return tuple(args), kwargs, options


def _entry(app: App, name: object, raw: object) -> ScheduleEntry:
    entry = _check_shape(name, raw)
    assert isinstance(name, str)
    task = entry.get("task")
    if not isinstance(task, str) or not task:
        raise _refuse(name, f"'task' must be the task's name, got {task!r}")
    schedule = _schedule_of(app, name, entry)
    args, kwargs, options = _call_of(name, entry)
    return ScheduleEntry(name=name, task=task, schedule=schedule, args=args, kwargs=kwargs,
                         options=options)


def entries_from_schedule(app: App, beat_schedule: Mapping[Any, Any]) -> dict[str, ScheduleEntry]:
    """``beat_schedule`` as entries (each starting at "now", before the stored history
    is merged in).

    Raises:
        ImproperlyConfigured: an entry that is not as Celery's, naming it and its field.
    """
    return {name: _entry(app, name, raw) for name, raw in beat_schedule.items()}


def periodic_task_entry(
    app: App, schedule: Any, sig: Any, args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None, name: str | None = None, **options: Any,
) -> tuple[str, dict[str, Any]]:
    """``add_periodic_task``'s entry: its key (``name``, else Celery's ``repr`` of the
    call, ``proj.say('hello')``) and its ``beat_schedule`` dict.

    Raises:
        ValidationError: ``sig`` is not a task signature or a task, or an option is
            unknown.
    """
    if isinstance(sig, TaskChain):
        raise ValidationError(
            "sig", "a chain cannot be a periodic task (beat sends one task per run): "
            "schedule a task that starts it", value=sig,
        )
    if isinstance(sig, TaskSignature):
        sig = sig.to_signature()
    if isinstance(sig, Signature):
        if sig.subtask_type is not None:
            raise ValidationError(
                "sig", f"a {sig.subtask_type} cannot be a periodic task (beat sends one "
                "task per run): schedule a task that starts it", value=sig,
            )
        call = sig.clone(tuple(args), dict(kwargs or {}))
    elif isinstance(getattr(sig, "name", None), str):  # a task, as Celery takes it
        call = app.signature(sig.name, tuple(args), dict(kwargs or {})).to_signature()
    else:
        raise ValidationError(
            "sig", f"must be a task signature (task.s(...)) or a task, got {sig!r}", value=sig
        )
    calling.check_options(options)
    maybe_schedule(schedule, app=app)  # refused now rather than when beat reads it
    key = name or reprcall(call.task, call.args, call.kwargs)
    return key, {
        "schedule": schedule,
        "task": call.task,
        "args": call.args,
        "kwargs": dict(call.kwargs),
        "options": {**call.options, **options},
    }
