"""Exceptions in results: an exception instance ⇄ Celery's exception dict.

Under a non-pickle result serializer Celery stores a task's exception as
``{"exc_type": <qualname>, "exc_message": <args as a list>, "exc_module": <module>}``
(``spec/PROTOCOL.md`` §18.1; Celery's ``Backend.prepare_exception``), and rebuilds it with
``Backend.exception_to_python``. This module does both, pure and without a registry. It
belongs to the protocol layer because the exception dict is part of the result meta dict
(``wiretask.protocol.states.make_meta``); ``wiretask.results.exceptions`` re-exports it.

Rebuilding is the dangerous direction: the dict comes from the result store, which
anyone who can write to it controls. The rules, Celery's first and wiretask's on top:

* The class is looked up **only among modules already imported** (``sys.modules``);
  nothing is ever imported because wire data named it (Celery's rule too).
* The lookup walks the module's and classes' ``__dict__`` rather than ``getattr``, so a
  module-level ``__getattr__`` (a lazy importer) or a descriptor never runs.
* What is found must be a ``BaseException`` subclass, otherwise ``DecodeError`` (Celery
  raises ``SecurityError``: ``{"exc_module": "os", "exc_type": "system"}`` must never
  call ``os.system``).
* A class that is missing, that is a ``BaseException`` but not an ``Exception``
  (``SystemExit``, ``KeyboardInterrupt``: wire data must not be able to make
  ``AsyncResult.get`` exit the caller's process), or whose constructor refuses the
  stored arguments, is replaced by a **synthesized** ``Exception`` subclass with the
  same name, qualname and module (Celery synthesizes too), so the name survives a
  round trip.
* Celery's own task exceptions map to wiretask's (``TaskRevokedError``,
  ``TimeLimitExceeded``, ``SoftTimeLimitExceeded``, ``NotRegistered``) even when Celery
  is imported, so wiretask code catches one class; and wiretask's are written under
  Celery's names, so Celery's ``AsyncResult`` raises its own classes for them.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import reprlib
import sys
import uuid
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Final

from wiretask.errors import (
    ChordError,
    DecodeError,
    NotRegistered,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)

__all__ = [
    "WIRE_NAMES",
    "exception_from_meta",
    "exception_to_meta",
    "expired_meta_result",
    "is_exception_meta",
    "revoked_meta_result",
]

#: wiretask exception classes written under Celery's names. Celery's worker stores the
#: time-limit errors under ``billiard.exceptions`` (where Celery's classes live and from
#: where ``celery.exceptions`` re-exports them), so wiretask writes the same.
WIRE_NAMES: Final[Mapping[type[BaseException], tuple[str, str]]] = {
    TaskRevokedError: ("celery.exceptions", "TaskRevokedError"),
    ChordError: ("celery.exceptions", "ChordError"),
    TimeLimitExceeded: ("billiard.exceptions", "TimeLimitExceeded"),
    SoftTimeLimitExceeded: ("billiard.exceptions", "SoftTimeLimitExceeded"),
    NotRegistered: ("celery.exceptions", "NotRegistered"),
    WorkerLostError: ("billiard.exceptions", "WorkerLostError"),
}

#: (exc_module, exc_type) pairs read as wiretask's classes.
_READ_ALIASES: Final[Mapping[tuple[str, str], type[BaseException]]] = {
    ("celery.exceptions", "TaskRevokedError"): TaskRevokedError,
    ("celery.exceptions", "ChordError"): ChordError,
    ("celery.exceptions", "TimeLimitExceeded"): TimeLimitExceeded,
    ("billiard.exceptions", "TimeLimitExceeded"): TimeLimitExceeded,
    ("celery.exceptions", "SoftTimeLimitExceeded"): SoftTimeLimitExceeded,
    ("billiard.exceptions", "SoftTimeLimitExceeded"): SoftTimeLimitExceeded,
    ("celery.exceptions", "NotRegistered"): NotRegistered,
    ("billiard.exceptions", "WorkerLostError"): WorkerLostError,
    ("celery.exceptions", "WorkerLostError"): WorkerLostError,
}

#: Module given to classes synthesized for a dict without ``exc_module``.
_SYNTHETIC_MODULE: Final = __name__

_repr = reprlib.Repr()
_repr.maxstring = 1024
_repr.maxother = 1024
_repr.maxlevel = 4

#: Leaf types the Kombu JSON dialect encodes (§7); an argument made of these is kept.
_JSON_LEAVES: Final = (
    str, int, float, bool, type(None), bytes, _dt.datetime, _dt.date, _dt.time,
    decimal.Decimal, uuid.UUID,
)


def _json_safe(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if isinstance(value, _JSON_LEAVES):
        return True
    if isinstance(value, list | tuple):
        return all(_json_safe(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and _json_safe(v, depth + 1) for k, v in value.items()
        )
    return False


def exception_to_meta(
    exc: BaseException, *, is_serializable: Callable[[Any], bool] | None = None
) -> dict[str, Any]:
    """Celery's exception dict for ``exc``.

    Args:
        exc: the exception.
        is_serializable: tells whether one argument can be serialized by the result
            serializer. Celery tries to encode each argument and replaces the ones that
            fail with their ``repr`` (``ensure_serializable``); the default accepts what
            the Kombu JSON dialect encodes.

    Returns:
        ``{"exc_type": qualname, "exc_message": [args...], "exc_module": module}``.
    """
    cls = type(exc)
    module, qualname = WIRE_NAMES.get(cls, (cls.__module__, cls.__qualname__))
    args: tuple[Any, ...] = exc.args
    if isinstance(exc, NotRegistered):
        # Celery's NotRegistered(name) carries the bare task name; wiretask's args hold
        # the formatted message, so write the name to round-trip through either side.
        args = (exc.name,)
    check = is_serializable or _json_safe
    return {
        "exc_type": qualname,
        "exc_message": [a if check(a) else _repr.repr(a) for a in args],
        "exc_module": module,
    }


def is_exception_meta(value: object) -> bool:
    """Whether ``value`` looks like Celery's exception dict (has a string ``exc_type``)."""
    return isinstance(value, Mapping) and isinstance(value.get("exc_type"), str)


def revoked_meta_result(reason: str) -> dict[str, Any]:
    """The ``result`` of a ``REVOKED`` meta, as Celery writes it (§18.1).

    Celery's ``AsyncResult`` rebuilds this as ``celery.exceptions.TaskRevokedError``.
    """
    return exception_to_meta(TaskRevokedError(reason))


def expired_meta_result() -> dict[str, Any]:
    """The ``result`` Celery stores for a task that expired before it ran:
    ``{"exc_type": "TaskRevokedError", "exc_message": ["expired"],
    "exc_module": "celery.exceptions"}``."""
    return revoked_meta_result("expired")


def _lookup(module_name: str, qualname: str) -> object | None:
    """Find ``qualname`` in an *already imported* module, reading ``__dict__`` only."""
    module = sys.modules.get(module_name)
    if not isinstance(module, ModuleType):
        return None
    obj: object = module
    for part in qualname.split("."):
        # Only modules and classes are walked, through their own namespace: no
        # __getattr__ hook, no descriptor, no instance attribute runs.
        if not isinstance(obj, ModuleType | type) or part not in obj.__dict__:
            return None
        obj = obj.__dict__[part]
    return obj


def _is_qualname(name: str) -> bool:
    # A class name the interpreter could have produced; this also keeps NUL bytes and
    # megabyte names out of type() (which refuses the former).
    return 0 < len(name) <= 256 and all(part.isidentifier() for part in name.split("."))


def _synthesize(qualname: str, module: str) -> type[Exception]:
    name = qualname.rpartition(".")[2]
    return type(name, (Exception,), {"__module__": module, "__qualname__": qualname})


def exception_from_meta(meta: Mapping[str, Any]) -> BaseException:
    """Rebuild an exception from Celery's exception dict, safely (see the module doc).

    Args:
        meta: ``{"exc_type", "exc_message", "exc_module"}``; ``exc_module`` may be
            missing (a synthesized class is used then), and so may ``exc_message``
            (Celery passes ``""`` then).

    Returns:
        The exception instance (never raised here).

    Raises:
        DecodeError: ``meta`` is not a mapping, ``exc_type`` is missing or not a
            dotted Python name, ``exc_module`` is not a string, or the name resolves to something
            that is not an exception class.
    """
    if not isinstance(meta, Mapping):
        raise DecodeError("result", f"an exception must be a mapping, got {type(meta).__name__}")
    exc_type = meta.get("exc_type")
    if not isinstance(exc_type, str) or not _is_qualname(exc_type):
        raise DecodeError(
            "result.exc_type", f"must be a dotted Python class name, got {exc_type!r:.100}"
        )
    exc_module = meta.get("exc_module")
    if exc_module is not None and not isinstance(exc_module, str):
        raise DecodeError("result.exc_module", f"must be a string, got {exc_module!r}")
    message = meta.get("exc_message", "")
    args: tuple[Any, ...] = tuple(message) if isinstance(message, list | tuple) else (message,)

    cls: type[BaseException]
    if exc_module is None:
        cls = _synthesize(exc_type, _SYNTHETIC_MODULE)
    elif (exc_module, exc_type) in _READ_ALIASES:
        cls = _READ_ALIASES[(exc_module, exc_type)]
    else:
        found = _lookup(exc_module, exc_type)
        if found is None:
            cls = _synthesize(exc_type, exc_module)
        elif not (isinstance(found, type) and issubclass(found, BaseException)):
            # Celery's SecurityError rule: never call a non-exception named by wire data.
            raise DecodeError(
                "result.exc_type",
                f"{exc_module}.{exc_type} is not an exception class (refusing to call it)",
            )
        elif not issubclass(found, Exception):
            cls = _synthesize(exc_type, exc_module)
        else:
            cls = found
    try:
        return cls(*args)
    except Exception:  # a class whose __init__ refuses the stored arguments
        return _synthesize(exc_type, exc_module or _SYNTHETIC_MODULE)(*args)
