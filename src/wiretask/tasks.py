"""Task options: what ``@app.task(...)``, a ``base=`` class and ``task_annotations`` may set.

Celery's task options are attributes of its ``Task`` class; every one of them is listed
here with what wiretask does with it. An honoured option is checked when the task is
registered (a wrong type names the option); a refused one raises at once with the reason;
an unknown one raises with the nearest known name (``autoretry_fro`` -> ``autoretry_for``).

Also here, the parts of a task that are pure functions of its options: Celery's rate
syntax (:func:`parse_rate`), the ``autoretry_for`` wrapper around ``run``
(:func:`autoretry`, Celery's ``celery/app/autoretry.py`` semantics) and the resolution of
``task_annotations`` (:func:`annotations_for`, Celery's ``celery/app/annotations.py``).
"""

from __future__ import annotations

import builtins
import difflib
import functools
import importlib
import inspect
import numbers
import random
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

import attrs

from wiretask.errors import ImproperlyConfigured, Retry, ValidationError

if TYPE_CHECKING:
    from wiretask.app import Task

__all__ = [
    "CALL_DEFAULTS",
    "HOOKS",
    "TASK_OPTIONS",
    "ExceptionInfo",
    "TaskOption",
    "annotations_for",
    "autoretry",
    "backoff",
    "check_annotations",
    "check_task_option",
    "parse_rate",
]


@attrs.frozen
class TaskOption:
    """One task option: honoured (with a value check) or refused (with why)."""

    name: str
    honoured: bool
    note: str = ""
    check: Callable[[str, Any], Any] | None = attrs.field(default=None, eq=False)


# -- value checks --------------------------------------------------------------------------


def _bool(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValidationError(name, f"must be True or False, got {value!r}", value=value)
    return value


def _optional_bool(name: str, value: Any) -> Any:
    return None if value is None else _bool(name, value)


def _only(*allowed: Any, why: str) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if not any(value is a for a in allowed):
            raise ValidationError(
                name, f"{value!r} is not supported by wiretask: {why}", value=value
            )
        return value

    return check


def _seconds(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValidationError(name, f"must be a number of seconds >= 0, got {value!r}",
                              value=value)
    return value


def _retries(name: str, value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise ValidationError(name, f"must be an integer >= 0 or None, got {value!r}",
                              value=value)
    return value


def _exceptions(name: str, value: Any) -> Any:
    """A tuple of exception classes (Celery accepts any iterable of them, or one)."""
    items = (value,) if isinstance(value, type) else value
    if not isinstance(items, list | tuple | set | frozenset) or not all(
        isinstance(item, type) and issubclass(item, BaseException) for item in items
    ):
        raise ValidationError(
            name, f"must be a tuple of exception classes, got {value!r}", value=value
        )
    return tuple(items)


#: What ``retry_kwargs`` may hold: ``Task.retry``'s parameters and the call options.
_RETRY_PARAMETERS = frozenset({"args", "kwargs", "exc", "throw", "eta", "countdown",
                               "max_retries"})


def _retry_kwargs(name: str, value: Any) -> Any:
    from wiretask.calling import CALL_OPTIONS  # noqa: PLC0415 - calling is heavier

    if not isinstance(value, Mapping):
        raise ValidationError(name, f"must be a mapping, got {value!r}", value=value)
    for key in value:
        if key not in _RETRY_PARAMETERS and key not in CALL_OPTIONS:
            known = sorted(_RETRY_PARAMETERS | CALL_OPTIONS)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValidationError(name, f"{key!r} is not a retry() argument{hint}",
                                  value=value)
    return dict(value)


def _backoff(name: str, value: Any) -> Any:
    if not isinstance(value, bool | int | float):
        raise ValidationError(name, f"must be True, False or a number, got {value!r}",
                              value=value)
    return value


def _int(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(name, f"must be an integer >= 0, got {value!r}", value=value)
    return value


def _string(name: str, value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValidationError(name, f"must be a non-empty string, got {value!r}", value=value)
    return value


def _rate(name: str, value: Any) -> Any:
    parse_rate(value, field=name)
    return value


def _any(name: str, value: Any) -> Any:
    del name
    return value


_ACKS_LATE = "the worker always acknowledges a message after its task ran and its " \
    "outcome was stored (at least once); Celery's early acknowledgement (at most once) " \
    "is refused rather than silently made late"
_LOST = "a task whose worker process died is failed and acknowledged, or requeued with " \
    "reject_on_worker_lost; retrying it as retry() would is not supported"

#: Every option of Celery's ``Task`` that a decorator, a base class or an annotation can
#: set, and what wiretask does with it.
TASK_OPTIONS: Mapping[str, TaskOption] = {
    option.name: option
    for option in (
        TaskOption("name", True, "the task's name (default: module.qualname)", _string),
        TaskOption("bind", True, "pass the task as the first argument (self)", _bool),
        TaskOption("base", True, "a wiretask Task subclass: its attributes are defaults"),
        TaskOption("typing", True, "check arguments against the signature before sending "
                   "(default: App(strict_typing=True))", _optional_bool),
        TaskOption("max_retries", True, "retries allowed by retry() (None: no limit)",
                   _retries),
        TaskOption("default_retry_delay", True, "retry() countdown when none is given",
                   _seconds),
        TaskOption("autoretry_for", True, "exceptions that make the task retry itself",
                   _exceptions),
        TaskOption("dont_autoretry_for", True, "exceptions never retried automatically",
                   _exceptions),
        TaskOption("retry_kwargs", True, "arguments of the automatic retry() call",
                   _retry_kwargs),
        TaskOption("retry_backoff", True, "exponential backoff factor (True: 1)", _backoff),
        TaskOption("retry_backoff_max", True, "the backoff's cap in seconds", _int),
        TaskOption("retry_jitter", True, "full jitter on the backoff", _bool),
        TaskOption("throws", True, "expected exceptions: a failure with one of them is "
                   "logged at INFO without a traceback, as Celery does", _exceptions),
        TaskOption("rate_limit", True, "'10/s', '100/m', '5/h' or a number per second, "
                   "enforced per worker as Celery's token bucket (Task.rate)", _rate),
        TaskOption("ignore_result", True, "", _optional_bool),
        TaskOption("track_started", True, "", _optional_bool),
        TaskOption("acks_late", True, "only True or None: " + _ACKS_LATE,
                   _only(True, None, why=_ACKS_LATE)),
        TaskOption("acks_on_failure_or_timeout", True, "False: acks_on_failure and "
                   "acks_on_timeout default to False", _optional_bool),
        TaskOption("acks_on_failure", True, "False: a failed task's message is rejected "
                   "(dead-lettered with the reason) after its FAILURE is stored",
                   _optional_bool),
        TaskOption("acks_on_timeout", True, "False: the message of a task past its hard "
                   "time limit is requeued to run again (no FAILURE stored)", _optional_bool),
        TaskOption("reject_on_worker_lost", True, "True: a task whose child process died "
                   "is requeued instead of failed (pool='processes')", _optional_bool),
        TaskOption("retry_on_worker_lost", True, "only False or None: " + _LOST,
                   _only(False, None, why=_LOST)),
        TaskOption("store_errors_even_if_ignored", True, "store the failures (and "
                   "retries) of an ignore_result task", _optional_bool),
        TaskOption("store_eager_result", True, "store eager results in the backend",
                   _optional_bool),
        TaskOption("trail", True, "record the tasks sent while it runs as its children, "
                   "stored with its state (AsyncResult.children), as Celery's worker",
                   _bool),
        TaskOption("time_limit", True, "hard time limit (seconds)", _seconds),
        TaskOption("soft_time_limit", True, "soft time limit (seconds)", _seconds),
        TaskOption("expires", True, "default expiry of the task's calls", _any),
        TaskOption("priority", True, "default priority of the task's calls", _any),
        TaskOption("queue", True, "default queue (beats task_routes, as in Celery)", _string),
        TaskOption("exchange", True, "default exchange", _any),
        TaskOption("routing_key", True, "default routing key", _string),
        TaskOption("serializer", True, "default serializer", _string),
        TaskOption("compression", True, "default compression", _string),
        TaskOption("delivery_mode", True, "default delivery mode", _any),
        TaskOption("shadow_name", False, "override the shadow option per call instead"),
        TaskOption("send_events", True, "False: the worker sends no task events for this "
                   "task (Celery's)", _bool),
        TaskOption("backend", False, "one result backend per app: set result_backend"),
        TaskOption("resultrepr_maxsize", False, "the worker's log format is fixed"),
        TaskOption("pydantic", False, "pydantic argument conversion is not supported"),
        TaskOption("pydantic_strict", False, "pydantic argument conversion is not supported"),
        TaskOption("pydantic_context", False, "pydantic argument conversion is not supported"),
        TaskOption("pydantic_dump_kwargs", False,
                   "pydantic argument conversion is not supported"),
        TaskOption("lazy", False, "wiretask registers a task when it is decorated"),
        TaskOption("shared", False, "use wiretask.shared_task for tasks shared by apps"),
        TaskOption("filter", False, "wrap the task yourself"),
        TaskOption("Request", False, "the request class cannot be replaced"),
        TaskOption("Strategy", False, "the execution strategy cannot be replaced"),
        TaskOption("abstract", False, "abstract tasks are plain Task subclasses (base=)"),
    )
}

#: Options that are per-call defaults (``calling.TASK_OPTIONS``): call > task > setting.
CALL_DEFAULTS = ("queue", "exchange", "routing_key", "priority", "serializer", "compression",
                 "delivery_mode", "time_limit", "soft_time_limit", "ignore_result", "expires")

#: Handler methods Celery's tracer calls on a Task subclass; the worker's tracer and the
#: eager path call the ones a subclass defines.
HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")


@attrs.frozen
class ExceptionInfo:
    """What ``on_failure`` and ``on_retry`` receive as ``einfo``: the attributes of
    Celery's (billiard's) ``ExceptionInfo``.

    Attributes:
        exception: the exception (for a retry, the ``Retry`` raised by ``retry()``).
        type: its class.
        traceback: the formatted traceback, as stored with the state.
        tb: the traceback object, if the exception was raised here.
        internal: True for an error outside the task body (Celery's flag).
    """

    exception: BaseException
    type: builtins.type[BaseException]
    traceback: str
    tb: types.TracebackType | None = None
    internal: bool = False

    @classmethod
    def of(cls, exc: BaseException, traceback: str, *, internal: bool = False) -> Self:
        return cls(exc, type(exc), traceback, exc.__traceback__, internal)

    @property
    def exc_info(self) -> tuple[builtins.type[BaseException], BaseException,
                                types.TracebackType | None]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback


def check_task_option(name: str, value: Any) -> Any:
    """Check one task option and return its value (normalised: exception lists become
    tuples).

    Raises:
        ValidationError: an unknown option (with the nearest known name), a refused one
            (with why), or a value of the wrong type; ``field`` names the option.
    """
    option = TASK_OPTIONS.get(name)
    if option is None:
        close = difflib.get_close_matches(name, list(TASK_OPTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValidationError(name, f"unknown task option{hint}", value=value)
    if not option.honoured:
        raise ValidationError(name, f"not supported by wiretask: {option.note}", value=value)
    return option.check(name, value) if option.check is not None else value


# -- rate limits ---------------------------------------------------------------------------

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: Any, *, field: str = "rate_limit") -> float | None:
    """Celery's rate syntax as tasks per second: ``"10/m"`` -> 0.1667, ``"100/h"``,
    ``"5/s"``, ``"5"`` (per second), a number (per second). ``None``, ``0`` and ``""``
    mean no limit (``None``).

    Raises:
        ValidationError: anything else, naming ``field``.
    """
    if value is None or value == "" or (isinstance(value, int | float) and value == 0):
        return None
    if isinstance(value, bool):
        raise ValidationError(field, f"must be a rate like '10/m', got {value!r}", value=value)
    if isinstance(value, int | float):
        if value < 0:
            raise ValidationError(field, f"must be >= 0, got {value!r}", value=value)
        return float(value)
    if isinstance(value, str):
        count, _, unit = value.strip().partition("/")
        try:
            number = float(count)
        except ValueError:
            number = -1.0
        if number >= 0 and unit.strip() in ("", *_PER):
            return number / _PER[unit.strip() or "s"] or None
    raise ValidationError(
        field, f"must be a rate like '10/s', '100/m' or '5/h', got {value!r}", value=value
    )


# -- automatic retries -----------------------------------------------------------------------


def backoff(factor: int, retries: int, maximum: int, *, full_jitter: bool,
            randrange: Callable[[int], int] = random.randrange) -> int:
    """Celery's exponential backoff: ``min(maximum, factor * 2**retries)`` seconds, then a
    random value in ``[0, that]`` with ``full_jitter``."""
    countdown = int(min(maximum, factor * (2 ** retries)))
    if full_jitter:
        countdown = randrange(countdown + 1)
    return max(0, countdown)


def autoretry(task: Task[Any, Any], run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` wrapped so that an exception in ``task.autoretry_for`` (and not in
    ``dont_autoretry_for``) calls ``task.retry(exc=exc, **task.retry_kwargs)``, with the
    backoff as ``countdown`` when ``retry_backoff`` is set: Celery's
    ``add_autoretry_behaviour``. ``Retry`` itself is never caught. The wrapper takes the
    same arguments as ``run``."""
    autoretry_for = tuple(task.autoretry_for)
    dont_autoretry_for = tuple(task.dont_autoretry_for)
    if inspect.iscoroutinefunction(run):
        return _autoretry_awaiting(task, run, autoretry_for, dont_autoretry_for)

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        except Retry:
            raise
        except dont_autoretry_for:
            raise
        except autoretry_for as exc:
            raise _autoretry_signal(task, exc) from None

    return wrapper


def _autoretry_awaiting(
    task: Task[Any, Any], run: Callable[..., Any],
    autoretry_for: tuple[type[BaseException], ...],
    dont_autoretry_for: tuple[type[BaseException], ...],
) -> Callable[..., Any]:
    """``autoretry`` of an ``async def`` task, which raises when awaited, not when
    called."""

    @functools.wraps(run)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await run(*args, **kwargs)
        except Retry:
            raise
        except dont_autoretry_for:
            raise
        except autoretry_for as exc:
            raise _autoretry_signal(task, exc) from None

    return wrapper


def _autoretry_signal(task: Task[Any, Any], exc: BaseException) -> BaseException:
    """``task.retry(exc=exc, ...)`` with the task's ``retry_kwargs`` and backoff (it
    raises ``Retry`` itself)."""
    retry_kwargs = dict(task.retry_kwargs)
    factor = task.retry_backoff
    if factor:
        retry_kwargs["countdown"] = backoff(
            int(max(1.0, float(factor))), task.request.retries,
            int(task.retry_backoff_max), full_jitter=bool(task.retry_jitter),
        )
    return task.retry(exc=exc, **retry_kwargs)


# -- annotations ---------------------------------------------------------------------------


def _expand(annotations: Any) -> list[Any]:
    """The ``task_annotations`` setting as a list of annotation objects and dicts."""
    if annotations is None:
        return []
    items = list(annotations) if isinstance(annotations, list | tuple) else [annotations]
    expanded = []
    for item in items:
        if not isinstance(item, str):
            expanded.append(item)
            continue
        module_name, _, attribute = item.replace(":", ".").rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"task_annotations: cannot import {item!r}: {exc}", setting="task_annotations",
            ) from exc
        expanded.append(target() if isinstance(target, type) else target)
    return expanded


def _check_values(where: str, values: Any) -> None:
    if not isinstance(values, Mapping):
        raise ImproperlyConfigured(
            f"task_annotations: {where} must map task options to values, got {values!r}",
            setting="task_annotations",
        )
    for key, value in values.items():
        if not isinstance(key, str):
            raise ImproperlyConfigured(
                f"task_annotations: {where}: option names are strings, got {key!r}",
                setting="task_annotations",
            )
        if key.startswith("@"):
            raise ImproperlyConfigured(
                f"task_annotations: {where}: {key!r} wraps a Task method; wiretask does not "
                "support method annotations (use a base= Task subclass)",
                setting="task_annotations",
            )
        if key in ("name", "bind", "base"):
            raise ImproperlyConfigured(
                f"task_annotations: {where}: {key!r} cannot be changed by an annotation",
                setting="task_annotations",
            )
        try:
            check_task_option(key, value)
        except ValidationError as exc:
            raise ImproperlyConfigured(
                f"task_annotations: {where}: {exc}", setting="task_annotations"
            ) from exc


def check_annotations(annotations: Any) -> None:
    """Check the ``task_annotations`` setting: dicts (task name or ``"*"`` to options),
    objects with ``annotate(task)``/``annotate_any()``, or dotted paths to them, alone or
    in a list. Dict values are checked now; what an object returns, when it is applied.

    Raises:
        ImproperlyConfigured: a malformed entry or an option wiretask cannot honour,
            naming it.
    """
    for index, item in enumerate(_expand(annotations)):
        if isinstance(item, Mapping):
            for name, values in item.items():
                _check_values(f"[{index}][{name!r}]", values)
        elif not callable(getattr(item, "annotate", None)) and not callable(
            getattr(item, "annotate_any", None)
        ):
            raise ImproperlyConfigured(
                f"task_annotations[{index}]: expected a dict or an object with "
                f"annotate(task), got {item!r}", setting="task_annotations",
            )


def _first(items: Iterable[Any], method: str, *args: Any) -> dict[str, Any] | None:
    """Celery's ``firstmethod``: the first non-None reply of ``item.method(*args)``."""
    for item in items:
        if isinstance(item, Mapping):
            key = args[0].name if args else "*"
            reply = item.get(key)
        else:
            function = getattr(item, method, None)
            if function is None:
                continue
            reply = function(*args)
        if reply is not None:
            return dict(reply)
    return None


def annotations_for(task: Task[Any, Any], annotations: Any) -> list[dict[str, Any]]:
    """The option dicts to apply to ``task``, in Celery's order: the first annotation
    naming the task, then the first one for every task (``"*"``), so the latter wins."""
    items = _expand(annotations)
    found = [_first(items, "annotate", task), _first(items, "annotate_any")]
    result = []
    for values in found:
        if values:
            _check_values(f"for {task.name}", values)
            result.append(values)
    return result
