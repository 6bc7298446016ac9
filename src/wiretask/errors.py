"""One exception tree for everything wiretask raises.

The tree is split by *whose fault it is*, so that a caller can tell what to do:

* ``ValidationError`` / ``EncodeError``: a value **you built** is wrong (an option, an
  argument that cannot be serialized). Fix the call; retrying will not help.
* ``DecodeError`` and its children: **bytes you received** are wrong. The message is
  dead-lettered with the reason; the sender has to be fixed.
* ``TransportError`` and its children: **the broker** is in trouble. Recoverable ones
  (``ConnectionLost``) are retried by the publish retry policy.
* ``PublishError``: the retry policy gave up; the last cause is chained and kept.
* ``TaskError`` and its children: things that happen to a task's execution or result.

Every error carries structured fields (the field or header, the limit, the content type)
next to a message that names what was wrong. Driver exceptions (redis-py, py-amqp,
sqlite3) never escape a transport: they are translated and chained with ``from``.
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "ArgumentsError",
    "ChordError",
    "ConnectionLost",
    "ContentDisallowed",
    "DecodeError",
    "EncodeError",
    "ImproperlyConfigured",
    "MalformedMessage",
    "MaxRetriesExceededError",
    "MessageTooLarge",
    "NotRegistered",
    "PublishError",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "TransportError",
    "UnknownCodec",
    "ValidationError",
    "WiretaskError",
    "WorkerLostError",
    "WouldBlock",
]


class WiretaskError(Exception):
    """Root of every exception wiretask raises on purpose."""


class ImproperlyConfigured(WiretaskError, ValueError):
    """A setting, URL or registry entry is wrong (e.g. a broker URL with an unknown scheme)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


# -- values you built -------------------------------------------------------------------


class ValidationError(WiretaskError, ValueError):
    """A value you passed or built is invalid. ``field`` names it (``"eta"``, ``"priority"``)."""

    def __init__(self, field: str, problem: str, *, value: Any = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.value = value


_PICKLE_NAMES = frozenset({"pickle", "application/x-python-serialize"})


class UnknownCodec(ValidationError, LookupError):
    """A serializer or compressor name/content type that the registry does not know.

    ``kind`` is ``"serializer"`` or ``"compressor"``; ``known`` lists what is available.
    """

    def __init__(self, kind: str, name: str, known: tuple[str, ...] = ()) -> None:
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        if kind == "serializer" and str(name).lower() in _PICKLE_NAMES:
            hint += (
                "; pickle is off by default because decoding it runs code chosen by whoever "
                "can publish to your broker. To opt in, give the app a registry with it: "
                "App(..., registry=wiretask.default_registry(pickle=True, "
                "accept=['json', 'pickle'])), or call "
                "wiretask.codecs.enable_pickle(registry, accept=True)"
            )
        super().__init__(kind, f"unknown {kind} {name!r}{hint}", value=name)
        self.kind = kind
        self.name = name
        self.known = known


class ArgumentsError(ValidationError, TypeError):
    """Task arguments that do not fit: args not a list/tuple, kwargs not a mapping, or a call
    that does not bind to the task's signature. A ``TypeError`` too, as in Celery."""


class EncodeError(WiretaskError):
    """A value cannot be encoded (serialized or compressed). ``field`` names where it sits."""

    def __init__(self, field: str, problem: str, *, content_type: str | None = None) -> None:
        super().__init__(f"cannot encode {field}: {problem}")
        self.field = field
        self.problem = problem
        self.content_type = content_type


# -- bytes you received -----------------------------------------------------------------


class DecodeError(WiretaskError):
    """Received bytes or headers are malformed. ``field`` names the part that was wrong
    (``"body"``, ``"headers.eta"``, ``"compression"``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"cannot decode {field}: {problem}")
        self.field = field
        self.problem = problem


class ContentDisallowed(DecodeError):
    """The content type or compression is not in the accept policy. Raised *before* any
    decompression or deserialization happens."""

    def __init__(self, content_type: str, *, field: str = "content_type") -> None:
        super().__init__(field, f"refusing untrusted content of type {content_type!r}")
        self.content_type = content_type


class MessageTooLarge(DecodeError):
    """A body (or its decompressed form) is larger than the configured limit."""

    def __init__(self, field: str, limit: int, size: int | None = None) -> None:
        got = f"more than {limit}" if size is None else str(size)
        super().__init__(field, f"{got} bytes exceeds the limit of {limit} bytes")
        self.limit = limit
        self.size = size


# -- the broker -------------------------------------------------------------------------


class TransportError(WiretaskError):
    """The broker or its driver failed. ``url`` never contains a password.

    ``recoverable`` says whether the publish retry policy may retry the operation
    (reconnecting first).
    """

    recoverable: bool = False

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(f"{message} [{url}]" if url else message)
        self.url = url


class ConnectionLost(TransportError):
    """The connection was refused, dropped or timed out. Retried by the publish retry policy."""

    recoverable = True


class PublishError(WiretaskError):
    """Publishing failed for good: the retry policy gave up (or retry was off).

    ``attempts`` is how many publish attempts were made; ``cause`` is the last error,
    also chained as ``__cause__``. ``task_id`` identifies the message that was not sent.
    """

    def __init__(
        self, message: str, *, attempts: int, cause: BaseException, task_id: str | None = None
    ) -> None:
        super().__init__(f"{message} after {attempts} attempt(s): {cause}")
        self.attempts = attempts
        self.cause = cause
        self.task_id = task_id


# -- tasks ------------------------------------------------------------------------------


class TaskError(WiretaskError):
    """Base for errors about running tasks and reading their results."""


class NotRegistered(TaskError, KeyError):
    """A task name that the app (or worker) has not registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unregistered task {name!r}")
        self.name = name

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class TimeoutError(TaskError, builtins.TimeoutError):
    """``AsyncResult.get`` gave up waiting. Names the task id and the last state seen."""

    def __init__(self, task_id: str, timeout: float, state: str) -> None:
        super().__init__(
            f"task {task_id} did not finish within {timeout:g} s (last state: {state})"
        )
        self.task_id = task_id
        self.timeout = timeout
        self.state = state


class TaskRevokedError(TaskError):
    """The task was revoked (for example because it expired before it ran)."""


class ChordError(TaskError):
    """A task of a chord's header failed (or its body could not be sent), so the body
    does not run: its result is this error (Celery's ``celery.exceptions.ChordError``,
    with Celery's message, e.g. ``Dependency <id> raised ValueError('bad')``)."""


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a running task when its soft time limit passes."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and was ended."""


class WorkerLostError(TaskError):
    """The process running the task exited before reporting an outcome (it crashed, was
    killed by the OOM killer, or called ``os._exit``). Celery's name for the same case
    (``billiard.exceptions.WorkerLostError``)."""


class Retry(TaskError):
    """Raised by ``Task.retry()`` to tell the worker the task was re-sent.

    ``sig`` is ``(args, kwargs)`` of the next run when the task runs eagerly
    (``Task.apply``), which runs it again at once instead of sending it.
    """

    def __init__(self, message: str = "", *, exc: BaseException | None = None,
                 when: Any = None, sig: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
                 ) -> None:
        if not message:
            message = f"retry in {when}" if when is not None else "retry"
        super().__init__(message)
        self.exc = exc
        self.when = when
        self.sig = sig


class MaxRetriesExceededError(TaskError):
    """``Task.retry()`` was called past the task's ``max_retries`` with no ``exc`` to
    raise instead (Celery's exception of the same name). ``task_args`` and
    ``task_kwargs`` are the arguments the retry would have had."""

    def __init__(self, message: str = "", *, task_args: Any = None,
                 task_kwargs: Any = None) -> None:
        super().__init__(message)
        self.task_args = task_args
        self.task_kwargs = task_kwargs


class WouldBlock(TaskError, RuntimeError):
    """``AsyncResult.get()`` inside a running task: waiting for another task from a
    worker slot can deadlock the worker (Celery raises ``RuntimeError`` for it; this is
    one). Pass ``disable_sync_subtasks=False`` or use ``allow_join_result()``."""


class Reject(TaskError):
    """Raised by a task to reject its message (``requeue`` to put it back)."""

    def __init__(self, reason: str = "", *, requeue: bool = False) -> None:
        super().__init__(reason or "rejected")
        self.reason = reason
        self.requeue = requeue


# -- bytes you received: protocol shape ------------------------------------------------


class MalformedMessage(DecodeError):
    """The body deserialised, but the message does not have the shape of a Celery task
    message: a missing or non-string ``task``/``id`` header, a body that is not
    ``[args, kwargs, embed]``, an unparsable ``eta``, a malformed signature in the embed.

    ``field`` names the place on the wire: ``"body"``, ``"headers.id"``,
    ``"headers.eta"``, ``"properties.priority"``, ``"embed.callbacks[0].task"``.
    """
