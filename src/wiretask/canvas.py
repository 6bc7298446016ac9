"""The user-facing signature (``task.s(...)``) and chains (``sig | sig``), as Celery's.

Celery's ``Signature`` is a ``dict`` that is changed in place: ``sig.link(cb)``,
``sig.link_error(eb)`` and ``sig.set(...)`` modify ``sig`` (``link`` returns the
callback, ``set`` returns the signature), so that ``sig.link(cb); sig.delay()`` sends the
callback. :class:`TaskSignature` behaves the same way and is the same dict on the wire
(``task``, ``args``, ``kwargs``, ``options``, ``subtask_type``, ``immutable``). The wire
value of a received signature is the frozen ``wiretask.protocol.signature.Signature``;
:meth:`TaskSignature.to_signature` converts.

A chain (:class:`TaskChain`) is sent the way Celery's worker and wiretask's both run it:
each element gets its task id up front, the first is sent with the rest (reversed) as its
``chain`` option, and the result of the last element is returned, with ``parent`` links
back to the first. Groups, chords and chunks are not here yet.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterable, Mapping, MutableSequence, Sequence
from typing import TYPE_CHECKING, Any

from wiretask.calling import check_options, new_task_id
from wiretask.errors import NotRegistered, ValidationError
from wiretask.protocol.signature import Signature

if TYPE_CHECKING:
    from wiretask.app import App, AsyncResult, Task

__all__ = ["TaskChain", "TaskSignature", "signature"]


class TaskSignature(dict[str, Any]):
    """A task call to make later: a task name, partial arguments and options.

    It is a ``dict`` with Celery's keys, so it serializes as Celery's signature does and
    can be passed wherever a signature dict is expected (``link=``, ``link_error=``).
    Build one with ``task.s(...)``, ``task.si(...)``, ``task.signature(...)`` or
    ``app.signature(name, ...)``.
    """

    app: App

    def __init__(
        self,
        task: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: App,
    ) -> None:
        if not isinstance(task, str) or not task:
            raise ValidationError("task", f"must be a non-empty string, got {task!r}")
        if args is not None and not isinstance(args, list | tuple):
            raise ValidationError("args", f"must be a list or tuple, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValidationError("kwargs", f"must be a mapping, got {kwargs!r}")
        super().__init__(
            task=task,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=subtask_type,
            immutable=bool(immutable),
        )
        self.app = app

    # -- Celery's attribute view of the dict ----------------------------------------------

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self["options"]
        return options

    @property
    def subtask_type(self) -> str | None:
        value = self.get("subtask_type")
        return None if value is None else str(value)

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        """The task id, once frozen (``options['task_id']``)."""
        value = self.options.get("task_id")
        return None if value is None else str(value)

    @property
    def name(self) -> str:
        return self.task

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its dict; rebuilt for the current app (as Celery's signature is).
        return _rebuild, (dict(self),)

    def __copy__(self) -> TaskSignature:
        return self.clone()

    def __deepcopy__(self, memo: dict[int, Any]) -> TaskSignature:
        return signature(copy.deepcopy(dict(self), memo), app=self.app)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        flag = "i" if self.immutable else ""
        return f"{self.task}.s{flag}({', '.join(parts)})"

    # -- changing it in place (Celery returns what it returns) ---------------------------

    def set(self, immutable: bool | None = None, **options: Any) -> TaskSignature:
        """Merge ``options`` into the stored ones, in place; returns the signature."""
        check_options(options)
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = bool(immutable)

    def _append(self, key: str, value: Any) -> Any:
        """Celery's ``append_to_list_option``: add ``value`` to the list option ``key``
        (made a list if it held one signature), unless it is there already."""
        if not isinstance(value, Mapping):
            raise ValidationError(key, f"must be a signature (task.s(...)), got {value!r}")
        items = self.options.get(key)
        if items is None:
            items = self.options[key] = []
        elif not isinstance(items, MutableSequence):
            items = self.options[key] = [items]
        if value not in items:
            items.append(value)
        return value

    def link(self, callback: Mapping[str, Any]) -> Any:
        """Add a success callback to ``options['link']``, in place; returns ``callback``."""
        return self._append("link", callback)

    def link_error(self, errback: Mapping[str, Any]) -> Any:
        """Add an error callback to ``options['link_error']``, in place; returns
        ``errback``."""
        return self._append("link_error", errback)

    def on_error(self, errback: Mapping[str, Any]) -> TaskSignature:
        """``link_error(errback)``, returning the signature (Celery's ``on_error``)."""
        self.link_error(errback)
        return self

    def freeze(self, _id: str | None = None) -> AsyncResult:
        """Give the signature its task id now (``options['task_id']``) and return the
        result it will have."""
        from wiretask.app import AsyncResult  # noqa: PLC0415 - app imports this module

        task_id = _id or self.id or new_task_id()
        self.options["task_id"] = task_id
        return AsyncResult(task_id, app=self.app)

    # -- new signatures -------------------------------------------------------------------

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskSignature:
        """A copy with partial arguments applied: ``args`` prepended and ``kwargs`` merged
        (unless immutable), ``options`` merged (``None`` values dropped; a stored
        ``group_id`` or stamp is kept). Nested lists of links are copied, so changing
        the copy leaves this signature alone."""
        merged = self.to_signature().clone(args or (), kwargs, **options)
        copy = TaskSignature(
            merged.task, merged.args, merged.kwargs,
            {k: (list(v) if isinstance(v, list) else v) for k, v in merged.options.items()},
            subtask_type=merged.subtask_type, immutable=merged.immutable, app=self.app,
        )
        for key, value in self.items():
            if key not in copy:
                copy[key] = value
        return copy

    partial = clone

    def replace(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TaskSignature:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (not merged)."""
        copy = self.clone()
        if args is not None:
            copy["args"] = tuple(args)
        if kwargs is not None:
            copy["kwargs"] = dict(kwargs)
        if options is not None:
            copy["options"] = dict(options)
        return copy

    def to_signature(self) -> Signature:
        """The wire value (``wiretask.protocol.signature.Signature``)."""
        extra = {k: v for k, v in self.items() if k not in _KEYS}
        return Signature(
            task=self.task, args=self.args, kwargs=self.kwargs, options=self.options,
            subtask_type=self.subtask_type, immutable=self.immutable,
            chord_size=extra.pop("chord_size", None), extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """Celery's wire dict (plain data: nested signatures become dicts too)."""
        return self.to_signature().to_dict()

    # -- calling --------------------------------------------------------------------------

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send it: partial args prepended (unless immutable), kwargs and options merged.
        A task registered here goes through its ``apply_async`` (so ``task_always_eager``
        applies, as in Celery); any other is sent by name."""
        sig = self.clone(args, kwargs, **options)
        task = self.app.tasks.get(sig.task)
        if task is not None:
            return task.apply_async(sig.args, sig.kwargs, **sig.options)
        return self.app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    # -- asyncio: sending from coroutines (``apply_async``/``delay``, awaited) -------------

    async def aapply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async``, awaited (``Task.aapply_async``, or ``App.asend_task`` for a
        task not registered here)."""
        sig = self.clone(args, kwargs, **options)
        task = self.app.tasks.get(sig.task)
        if task is not None:
            return await task.aapply_async(sig.args, sig.kwargs, **sig.options)
        return await self.app.asend_task(sig.task, sig.args, sig.kwargs, **sig.options)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.aapply_async(args, kwargs)

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Run it here through the eager path (``Task.apply``) and return its result."""
        sig = self.clone(args, kwargs, **options)
        return self._task(sig.task).apply(sig.args, sig.kwargs, **sig.options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task body here (no message, no state), partial args prepended."""
        sig = self.clone(args, kwargs)
        return self._task(sig.task)(*sig.args, **sig.kwargs)

    def _task(self, name: str) -> Task[Any, Any]:
        task = self.app.tasks.get(name)
        if task is None:
            raise NotRegistered(name)
        return task

    # A signature is a dict, but ``|`` chains signatures (Celery's ``Signature.__or__``)
    # instead of merging dicts: the override is meant to differ from dict's.
    def __or__(self, other: Any) -> TaskChain:  # type: ignore[override]
        if isinstance(other, TaskChain):
            return TaskChain([self, *other.tasks], app=self.app)
        if isinstance(other, TaskSignature):
            return TaskChain([self, other], app=self.app)
        return NotImplemented

    def __ror__(self, other: Any) -> TaskChain:  # type: ignore[override]  # as __or__
        if isinstance(other, TaskChain):
            return TaskChain([*other.tasks, self], app=self.app)
        return NotImplemented


_KEYS = frozenset({"task", "args", "kwargs", "options", "subtask_type", "immutable"})


def signature(value: Mapping[str, Any] | TaskSignature, *, app: App) -> TaskSignature:
    """A ``TaskSignature`` from a signature dict (Celery's ``signature(d)``)."""
    if isinstance(value, TaskSignature):
        return value
    wire = Signature.from_dict(dict(value))
    return TaskSignature(
        wire.task, wire.args, wire.kwargs, wire.options, subtask_type=wire.subtask_type,
        immutable=wire.immutable, app=app,
    )


def _rebuild(value: dict[str, Any]) -> TaskSignature:
    from wiretask.app import current_app  # noqa: PLC0415 - app imports this module

    return signature(value, app=current_app())


class TaskChain:
    """Signatures run one after the other, each getting the previous one's result
    (``a.s() | b.s() | c.s()``). ``apply_async`` returns the last task's result; its
    ``parent`` is the one before, and so on back to the first."""

    def __init__(self, tasks: Iterable[TaskSignature], *, app: App) -> None:
        self.tasks: list[TaskSignature] = list(tasks)
        if not self.tasks:
            raise ValidationError("tasks", "a chain needs at least one signature")
        self.app = app

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks)

    def __or__(self, other: Any) -> TaskChain:
        if isinstance(other, TaskChain):
            return TaskChain([*self.tasks, *other.tasks], app=self.app)
        if isinstance(other, TaskSignature):
            return TaskChain([*self.tasks, other], app=self.app)
        return NotImplemented

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the first task (``args``/``kwargs`` applied to it, ``options`` to every
        task) with the rest as its chain. Under ``task_always_eager`` the tasks run here,
        in order."""
        steps, results = self._freeze(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return self._run_eagerly(steps, results)
        rest = [step.to_dict() for step in reversed(steps[1:])]
        steps[0].apply_async(chain=rest or None)
        return results[-1]

    def _freeze(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> tuple[list[TaskSignature], list[AsyncResult]]:
        """The chain's steps with ``options`` applied (and ``args``/``kwargs`` to the
        first), each with its task id, and their results linked to their parents."""
        check_options(options)
        steps = [task.clone(**options) for task in self.tasks]
        steps[0] = steps[0].clone(args, kwargs)
        results = [step.freeze() for step in steps]
        for parent, child in itertools.pairwise(results):
            child.parent = parent
        return steps, results

    @staticmethod
    def _run_eagerly(steps: list[TaskSignature], results: list[AsyncResult]) -> AsyncResult:
        value: Any = None
        for index, step in enumerate(steps):
            done = step.apply((value,) if index else ())
            value = done.get(disable_sync_subtasks=False)
            done.parent = results[index - 1] if index else None
            results[index] = done
        return results[-1]

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    # -- asyncio: sending from coroutines (``apply_async``/``delay``, awaited) -------------

    async def aapply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async``, awaited: the first task is sent with the rest as its chain
        (under ``task_always_eager`` the tasks run in a worker thread, in order)."""
        steps, results = self._freeze(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return await asyncio.to_thread(self._run_eagerly, steps, results)
        rest = [step.to_dict() for step in reversed(steps[1:])]
        await steps[0].aapply_async(chain=rest or None)
        return results[-1]

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.aapply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """As in Celery, calling a chain sends it."""
        return self.apply_async(args, kwargs)
