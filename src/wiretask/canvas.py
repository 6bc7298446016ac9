"""Celery's canvas: signatures, chains, groups, chords, chunks, map/starmap, group results.

Everything here is a ``dict`` with Celery's keys (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), changed in place like Celery's, so that
what it sends is exactly what Celery sends (``spec/PROTOCOL.md`` §19):

* :class:`TaskSignature` (``task.s(...)``): ``link``, ``link_error`` and ``set`` change
  it and return what Celery returns; :meth:`TaskSignature.freeze` gives it its ids (a
  task id, and the ``reply_to``, ``root_id``, ``group_id``, ``group_index`` and
  ``chord`` options a frozen Celery signature has).
* :class:`TaskChain` (``a | b``, :func:`chain`): ``celery.chain`` with
  ``kwargs.tasks``. Sent as Celery sends it: every element is frozen first, the first
  one is sent with the rest (reversed) as its ``chain``. A group followed by a task
  becomes a chord, as in Celery.
* :class:`TaskGroup` (:func:`group`): ``celery.group``. Each member is sent with the
  group's id (``group`` header) and its index (``group_index``); the result is a
  :class:`GroupResult`.
* :class:`TaskChord` (:func:`chord`): ``celery.chord`` with ``kwargs.header`` and
  ``kwargs.body``. The body is frozen, every header task carries it (``embed.chord``),
  and the result backend is told the chord's size before the last header task is sent
  (on Redis the ``celery-taskset-meta-<group>.s`` key, which a Celery worker needs to
  fire the body); backends without chord support are polled by ``celery.chord_unlock``.
* :func:`chunks`, :func:`xmap`, :func:`xstarmap` (``task.chunks``, ``task.map``,
  ``task.starmap``): Celery's built-in tasks ``celery.chunks``, ``celery.map`` and
  ``celery.starmap``; chunks are sent as a group of ``celery.starmap`` calls.

Under ``task_always_eager`` every primitive runs here instead (Celery's ``apply``).

The algorithms (freezing, the chain's reversed walk and its chord upgrade, a chord's
size) follow ``celery/canvas.py`` of Celery 5.7, written again here; the wire value of a
received signature is the frozen ``wiretask.protocol.signature.Signature``
(:meth:`TaskSignature.to_signature` converts). Lazy (generator) groups are evaluated
when the group is built: the messages are the same.
"""

from __future__ import annotations

import copy
import functools
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from typing import TYPE_CHECKING, Any, Self, cast

from wiretask.calling import check_options, new_task_id
from wiretask.errors import (
    DecodeError,
    ImproperlyConfigured,
    NotRegistered,
    ValidationError,
)
from wiretask.protocol import states
from wiretask.protocol.signature import Signature
from wiretask.results.base import ChordCounter

if TYPE_CHECKING:
    from wiretask.app import App, AsyncResult, Task

__all__ = [
    "GroupResult",
    "ResultSet",
    "TaskChain",
    "TaskChord",
    "TaskGroup",
    "TaskSignature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "result_from_tuple",
    "signature",
    "xmap",
    "xstarmap",
]

#: Options whose stored value a merge never replaces (Celery's
#: ``Signature._IMMUTABLE_OPTIONS``: changing them "would stall tasks").
_IMMUTABLE_OPTIONS = frozenset({"group_id", "stamped_headers"})
#: A chain's own options that ``run`` consumes instead of passing them to its first task.
_CHAIN_RUN_OPTIONS = frozenset({
    "chord", "group_id", "group_index", "link", "link_error", "parent_id", "root_id",
    "task_id",
})
_KEYS = frozenset({"task", "args", "kwargs", "options", "subtask_type", "immutable"})


def _current_app() -> App:
    from wiretask.app import current_app  # noqa: PLC0415 - app imports this module

    return current_app()


def _async_result(task_id: str, app: App) -> AsyncResult:
    from wiretask.app import AsyncResult  # noqa: PLC0415 - app imports this module

    return AsyncResult(task_id, app=app)


def _as_list(value: Any) -> list[Any]:
    """Celery's ``maybe_list``: ``None`` -> ``[]``, one item -> ``[item]``."""
    if value is None:
        return []
    if isinstance(value, list | tuple) and not isinstance(value, Mapping):
        return list(value)
    return [value]


class TaskSignature(dict[str, Any]):
    """A task call to make later: a task name, partial arguments and options.

    It is a ``dict`` with Celery's keys, so it serializes as Celery's signature does and
    can be passed wherever a signature dict is expected (``link=``, ``link_error=``).
    Build one with ``task.s(...)``, ``task.si(...)``, ``task.signature(...)`` or
    ``app.signature(name, ...)``; :func:`signature` turns a received dict into the right
    kind (a chain, group or chord by its ``subtask_type``).
    """

    def __init__(
        self,
        task: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: App | None = None,
    ) -> None:
        if not isinstance(task, str) or not task:
            raise ValidationError("task", f"must be a non-empty string, got {task!r}")
        if args is not None and not isinstance(args, list | tuple):
            raise ValidationError("args", f"must be a list or tuple, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValidationError("kwargs", f"must be a mapping, got {kwargs!r}")
        if options is not None and not isinstance(options, Mapping):
            raise ValidationError("options", f"must be a mapping, got {options!r}")
        super().__init__(
            task=task,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=subtask_type,
            immutable=bool(immutable),
        )
        self._app = app

    # -- Celery's attribute view of the dict ----------------------------------------------

    @property
    def app(self) -> App:
        """The app this signature sends through (the current app if it has none)."""
        return self._app if self._app is not None else _current_app()

    @app.setter
    def app(self, value: App | None) -> None:
        self._app = value

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @args.setter
    def args(self, value: Sequence[Any]) -> None:
        self["args"] = tuple(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @kwargs.setter
    def kwargs(self, value: Mapping[str, Any]) -> None:
        self["kwargs"] = value

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self["options"]
        return options

    @options.setter
    def options(self, value: Mapping[str, Any]) -> None:
        self["options"] = dict(value)

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

    @id.setter
    def id(self, value: str | None) -> None:
        self.options["task_id"] = value

    @property
    def name(self) -> str:
        return self.task

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its dict; rebuilt for the current app (as Celery's signature is).
        return _rebuild, (dict(self),)

    def __copy__(self) -> TaskSignature:
        return self.clone()

    def __deepcopy__(self, memo: dict[int, Any]) -> TaskSignature:
        # The same kind with every value copied, built without __init__: re-reading the
        # dict would turn a chord's frozen header group back into a list.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.items():
            dict.__setitem__(new, key, copy.deepcopy(value, memo))
        new._app = self._app
        return new

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

    def _list_option(self, key: str) -> MutableSequence[Any]:
        items = self.options.get(key)
        if items is None:
            items = self.options[key] = []
        elif not isinstance(items, MutableSequence):
            items = self.options[key] = [items]
        return items

    def append_to_list_option(self, key: str, value: Any) -> Any:
        """Celery's ``append_to_list_option``: add ``value`` to the list option ``key``
        (made a list if it held one signature), unless it is there already."""
        if not isinstance(value, Mapping):
            raise ValidationError(key, f"must be a signature (task.s(...)), got {value!r}")
        items = self._list_option(key)
        if value not in items:
            items.append(value)
        return value

    def extend_list_option(self, key: str, value: Any) -> None:
        """Add every signature of ``value`` (one or a list) to the list option ``key``."""
        self._list_option(key).extend(_as_list(value))

    def link(self, callback: Mapping[str, Any]) -> Any:
        """Add a success callback to ``options['link']``, in place; returns ``callback``."""
        return self.append_to_list_option("link", callback)

    def link_error(self, errback: Mapping[str, Any]) -> Any:
        """Add an error callback to ``options['link_error']``, in place; returns
        ``errback``."""
        return self.append_to_list_option("link_error", errback)

    def on_error(self, errback: Mapping[str, Any]) -> TaskSignature:
        """``link_error(errback)``, returning the signature (Celery's ``on_error``)."""
        self.link_error(errback)
        return self

    def freeze(
        self, _id: str | None = None, group_id: str | None = None,
        chord: TaskSignature | None = None, root_id: str | None = None,
        parent_id: str | None = None, group_index: int | None = None,
    ) -> Any:
        """Give the signature its task id now and return the result it will have.

        As Celery's ``freeze``: a stored ``task_id`` is kept (else ``_id`` or a new
        one); ``root_id``/``parent_id`` are set when given; ``reply_to`` is set to this
        thread's id unless present; ``group_id`` unless present; ``chord`` (the body a
        header task fires) and ``group_index`` when given.
        """
        opts = self.options
        task_id = opts.get("task_id")
        if task_id is None:
            task_id = opts["task_id"] = _id or new_task_id()
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        if "reply_to" not in opts:
            opts["reply_to"] = self.app._thread_context().reply_to
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        return _async_result(str(task_id), self.app)

    # -- new signatures -------------------------------------------------------------------

    def _merge(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Celery's ``_merge``: ``args`` prepended and ``kwargs`` merged unless
        immutable; ``options`` merged (a stored ``group_id``/stamp is kept)."""
        new_options = self.options
        if options:
            protected = _IMMUTABLE_OPTIONS.union(self.options.get("stamped_headers") or ())
            new_options = {
                **self.options,
                **{k: v for k, v in options.items()
                   if k not in protected or k not in self.options},
            }
        if self.immutable:
            return self.args, self.kwargs, new_options
        new_args = tuple(args) + self.args if args else self.args
        new_kwargs = {**self.kwargs, **kwargs} if kwargs else self.kwargs
        return new_args, new_kwargs, new_options

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskSignature:
        """A copy with partial arguments applied: ``args`` prepended and ``kwargs``
        merged (unless immutable), ``options`` merged (``None`` values dropped; a stored
        ``group_id`` or stamp is kept). The options are copied deeply, so changing the
        copy's links leaves this signature alone."""
        options = {k: v for k, v in options.items() if v is not None}
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        if new_kwargs is self.kwargs:
            new_kwargs = dict(new_kwargs)
        value = {
            "task": self.task, "args": new_args, "kwargs": new_kwargs,
            "options": copy.deepcopy(new_options), "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        }
        for key, extra in self.items():
            if key not in _KEYS:
                value[key] = extra
        return signature(value, app=self._app)

    partial = clone

    def replace(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TaskSignature:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (not merged)."""
        new = self.clone()
        if args is not None:
            new["args"] = tuple(args)
        if kwargs is not None:
            new["kwargs"] = dict(kwargs)
        if options is not None:
            new["options"] = dict(options)
        return new

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
    ) -> Any:
        """Send it: partial args prepended (unless immutable), kwargs and options merged
        (``None`` options dropped). A task registered here goes through its
        ``apply_async`` (so ``task_always_eager`` applies, as in Celery); any other is
        sent by name."""
        # Merged, not cloned (Celery's apply_async does not copy the options either: a
        # chain step's options hold the rest of the chain).
        call_args, call_kwargs, call_options = self._merge(
            args, kwargs, {k: v for k, v in options.items() if v is not None}
        )
        call_args, call_kwargs = _as_arguments(call_args), _as_arguments(call_kwargs)
        task = self.app.tasks.get(self.task)
        if task is not None:
            return task.apply_async(call_args, call_kwargs, **call_options)
        return self.app.send_task(self.task, call_args, call_kwargs, **call_options)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    # -- asyncio: sending from coroutines (``apply_async``/``delay``, awaited) -------------

    async def aapply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """``apply_async``, awaited, for every kind of signature (a task, a chain, a
        group, a chord, chunks, map): the same canvas code decides what to send, and the
        loop's transport sends it (``App.asend_canvas``)."""
        return await self.app.asend_canvas(
            functools.partial(self.apply_async, args, kwargs, **options)
        )

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        """``delay``, awaited."""
        return await self.aapply_async(args, kwargs)

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run it here through the eager path (``Task.apply``) and return its result."""
        sig = self.clone(args, kwargs, **options)
        return self._task(sig.task).apply(sig.args, sig.kwargs, **sig.options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task body here (no message, no state), partial args prepended."""
        sig = self.clone(args, kwargs)
        return self._task(sig.task)(*sig.args, **sig.kwargs)

    @property
    def type(self) -> Task[Any, Any]:
        """The registered task (Celery's ``Signature.type``)."""
        return self._task(self.task)

    def _task(self, name: str) -> Task[Any, Any]:
        task = self.app.tasks.get(name)
        if task is None:
            raise NotRegistered(name)
        return task

    # A signature is a dict, but ``|`` chains signatures (Celery's ``Signature.__or__``)
    # instead of merging dicts: the override is meant to differ from dict's.
    def __or__(self, other: Any) -> TaskSignature:  # type: ignore[override]
        if isinstance(other, TaskChain):
            return TaskChain([self, *other.unchain_tasks()], app=self._app)
        if isinstance(other, TaskGroup):
            return TaskChain([self, maybe_unroll_group(other)], app=self._app)
        if isinstance(other, TaskSignature):
            return TaskChain([self, other], app=self._app)
        return NotImplemented

    def __ror__(self, other: Any) -> TaskSignature:  # type: ignore[override]  # as __or__
        if isinstance(other, TaskSignature):
            return other.__or__(self)
        return NotImplemented

    __ior__ = __or__


def _as_arguments(values: Any) -> Any:
    """Signatures among a call's arguments as plain dicts: the same on the wire, and
    ``argsrepr``/``kwargsrepr`` show them as Celery's ``saferepr`` does (as dicts)."""
    if isinstance(values, dict):
        return {k: dict(v) if isinstance(v, TaskSignature) else v for k, v in values.items()}
    return tuple(dict(v) if isinstance(v, TaskSignature) else v for v in values)


def _app_of(items: Iterable[Any]) -> App | None:
    """The first app found among signatures (a chain or group has none of its own)."""
    for item in items:
        if isinstance(item, TaskSignature):
            if item._app is not None:
                return item._app
            if isinstance(item, TaskChain | TaskGroup):
                found = _app_of(item.tasks)
                if found is not None:
                    return found
    return None


def maybe_signature(
    value: Mapping[str, Any] | TaskSignature | None, app: App | None = None,
    clone: bool = False,
) -> Any:
    """Celery's ``maybe_signature``: a signature for a dict (``None`` stays ``None``);
    a signature is cloned when ``clone``, and given ``app`` when one is passed."""
    if value is None:
        return None
    if isinstance(value, TaskSignature):
        sig = value.clone() if clone else value
    else:
        sig = signature(value, app=app)
    if app is not None:
        sig._app = app
    return sig


def signature(
    value: Mapping[str, Any] | TaskSignature, *, app: App | None = None,
) -> TaskSignature:
    """A signature from a signature dict (Celery's ``signature(d)``): a
    :class:`TaskChain`, :class:`TaskGroup` or :class:`TaskChord` by its
    ``subtask_type``, else a :class:`TaskSignature`. A signature is returned as is.

    Raises:
        ValidationError: the dict is not a signature, or its ``subtask_type`` is one
            wiretask does not know (it would be sent as a task of that name).
    """
    if isinstance(value, TaskSignature):
        return value
    if not isinstance(value, Mapping):
        raise ValidationError("signature", f"must be a signature dict, got {value!r}")
    kind = value.get("subtask_type")
    if kind:
        from_dict = _TYPES.get(str(kind))
        if from_dict is None:
            raise ValidationError(
                "subtask_type", f"unknown canvas type {kind!r} (known: "
                f"{', '.join(sorted(_TYPES))})", value=kind,
            )
        return from_dict(value, app=app)
    return _plain_from_dict(value, app)


def _plain_from_dict(value: Mapping[str, Any], app: App | None) -> TaskSignature:
    try:
        wire = Signature.from_dict(dict(value))
    except DecodeError as exc:
        raise ValidationError("signature", str(exc)) from exc
    sig = TaskSignature(
        wire.task, wire.args, dict(wire.kwargs), dict(wire.options),
        subtask_type=wire.subtask_type, immutable=wire.immutable, app=app,
    )
    sig.update(wire.extra)
    if wire.chord_size is not None:
        sig["chord_size"] = wire.chord_size
    return sig


def _rebuild(value: dict[str, Any]) -> TaskSignature:
    return signature(value, app=_current_app())


def _options_of(value: Mapping[str, Any]) -> dict[str, Any]:
    options = value.get("options") or {}
    if not isinstance(options, Mapping):
        raise ValidationError("options", f"must be a mapping, got {options!r}")
    return dict(options)


def _kwargs_of(value: Mapping[str, Any]) -> Mapping[str, Any]:
    kwargs = value.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValidationError("kwargs", f"must be a mapping, got {kwargs!r}")
    return kwargs


def _signature_list(value: Any, field: str, app: App | None) -> list[TaskSignature]:
    if isinstance(value, Mapping):
        return [maybe_signature(value, app=app)]
    if not isinstance(value, list | tuple):
        raise ValidationError(field, f"must be a list of signatures, got {value!r}")
    return [maybe_signature(item, app=app) for item in value]


def _is_empty_group(task: Any) -> bool:
    return isinstance(task, TaskGroup) and not task.tasks


def maybe_unroll_group(task: TaskGroup) -> TaskSignature:
    """A group of one task is that task (Celery #1656)."""
    return task.tasks[0] if len(task.tasks) == 1 else task


class _TaskList(TaskSignature):
    """A chain's or a group's signature: its members are ``kwargs["tasks"]``, as in
    Celery's dict form."""

    if TYPE_CHECKING:  # each subclass reads its members its own way
        def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None: ...

    @classmethod
    def from_dict(cls, value: Mapping[str, Any], app: App | None = None) -> Self:
        tasks = _signature_list(_kwargs_of(value).get("tasks") or [], "kwargs.tasks", app)
        return cls(tasks, app=app, **_options_of(value))

    @property
    def tasks(self) -> list[TaskSignature]:
        tasks: list[TaskSignature] = self.kwargs["tasks"]
        return tasks

    @tasks.setter
    def tasks(self, value: Iterable[TaskSignature]) -> None:
        self.kwargs["tasks"] = list(value)


# -- chains ---------------------------------------------------------------------------------


class TaskChain(_TaskList):
    """Signatures run one after the other, each getting the previous one's result
    (``a.s() | b.s() | c.s()``; Celery's ``celery.chain`` signature).

    ``apply_async`` returns the last task's result; its ``parent`` is the one before, and
    so on back to the first. Build it with ``|`` or :func:`chain` (which fold a group
    followed by a task into a chord, as Celery's do); ``TaskChain(a, b, c)`` keeps the
    tasks as given (the chord upgrade then happens when it is sent).
    """

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        members: Iterable[Any] = tasks
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            members = tasks[0]
        listed = [maybe_signature(task, app=app) for task in members]
        super().__init__("celery.chain", (), {"tasks": listed}, options,
                         subtask_type="chain", app=app if app is not None else _app_of(listed))

    def __repr__(self) -> str:
        if not self.tasks:
            return "<chain: empty>"
        return " | ".join(repr(task) for task in self.tasks)

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskChain:
        new = cast("TaskChain", super().clone(args, kwargs, **options))
        new.tasks = [maybe_signature(task, app=self._app, clone=True) for task in new.tasks]
        return new

    def unchain_tasks(self) -> list[TaskSignature]:
        """Copies of the tasks; the chain's ``link`` goes to the last one, its
        ``link_error`` to every one (Celery's ``unchain_tasks``)."""
        tasks = [task.clone() for task in self.tasks]
        for sig in _as_list(self.options.get("link")):
            tasks[-1].link(sig)
        for sig in _as_list(self.options.get("link_error")):
            for task in tasks:
                task.link_error(sig)
        return tasks

    def __or__(self, other: Any) -> TaskSignature:  # type: ignore[override]  # as base
        if _is_empty_group(other):
            return self
        if isinstance(other, TaskGroup):
            unrolled = maybe_unroll_group(other)
            if not isinstance(unrolled, TaskGroup):
                return self | unrolled
            tasks = self.unchain_tasks()
            if not tasks:
                return unrolled
            if isinstance(tasks[-1], TaskChord):
                tasks[-1].body = tasks[-1].body | unrolled
                return type(self)(tasks, app=self._app)
            return type(self)([*tasks, unrolled], app=self._app)
        if isinstance(other, TaskChain):
            return functools.reduce(operator.or_, other.unchain_tasks(), self)
        if isinstance(other, TaskSignature):
            return self._append_task(other)
        return NotImplemented

    def _append_task(self, other: TaskSignature) -> TaskSignature:
        if self.tasks and isinstance(self.tasks[-1], TaskGroup):
            # chain [.., group] | task -> the group and the task become a chord
            sig = self.clone()
            tasks = sig.tasks
            tasks[-1] = TaskChord(tasks[-1], other, app=self._app)
            if len(tasks) > 1 and isinstance(tasks[-2], TaskChord):
                tasks[-2].body = tasks[-2].body | tasks[-1]
                sig.tasks = tasks[:-1]
            return sig
        if self.tasks and isinstance(self.tasks[-1], TaskChord) and not isinstance(
            other, TaskChord
        ):
            sig = self.clone()
            last = cast("TaskChord", sig.tasks[-1])
            last.body = last.body | other
            return sig
        return type(self)([*self.unchain_tasks(), other], app=self._app)

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the first task (``args``/``kwargs`` applied to it) with the rest as its
        chain; ``options`` go to the first task (Celery's rule). Under
        ``task_always_eager`` the tasks run here, in order."""
        check_options({k: v for k, v in options.items() if k not in _RUN_KEYWORDS})
        if self.app.conf.get("task_always_eager"):
            return self.apply(args, kwargs, **options)
        return self.run(args, kwargs, **{**self.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """As in Celery, calling a chain sends it."""
        if self.tasks:
            return self.apply_async(args, kwargs)
        return None

    def run(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        group_id: str | None = None, chord: TaskSignature | None = None,
        task_id: str | None = None, link: Any = None, link_error: Any = None,
        root_id: str | None = None, parent_id: str | None = None,
        group_index: int | None = None, **options: Any,
    ) -> Any:
        """Freeze every element and send the first (Celery's ``_chain.run``)."""
        args = tuple(args or ())
        args = args + self.args if args and not self.immutable else self.args
        tasks, results = self.prepare_steps(
            args, kwargs, self.tasks, root_id, parent_id, link_error, task_id, group_id,
            chord, group_index=group_index,
        )
        if not results:
            return None
        if link:
            tasks[0].extend_list_option("link", link)
        first = tasks.pop()
        rest: list[TaskSignature] = [*(options.get("chain") or ()), *tasks]
        sent = first.apply_async(**{**options, "chain": rest})
        return sent if not tasks else results[0]

    def freeze(
        self, _id: str | None = None, group_id: str | None = None,
        chord: TaskSignature | None = None, root_id: str | None = None,
        parent_id: str | None = None, group_index: int | None = None,
    ) -> Any:
        _, results = self.prepare_steps(
            self.args, self.kwargs, self.tasks, root_id, parent_id, None, _id, group_id,
            chord, clone=False, group_index=group_index,
        )
        return results[0]

    def prepare_steps(
        self, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
        tasks: Sequence[Any], root_id: str | None = None, parent_id: str | None = None,
        link_error: Any = None, last_task_id: str | None = None,
        group_id: str | None = None, chord_body: TaskSignature | None = None,
        clone: bool = True, group_index: int | None = None,
    ) -> tuple[list[TaskSignature], list[Any]]:
        """Freeze the elements from the last to the first (Celery's
        ``prepare_steps``): nested chains are spliced, a group followed by a task
        becomes a chord, the last element gets ``last_task_id``, ``group_id``,
        ``chord_body`` and ``group_index``. Returns the frozen elements and their
        results, both last first."""
        del parent_id  # Celery's takes it and does not use it
        steps = _chain_head(deque(tasks), self._app, clone=clone)
        app = self.app
        prev_task: TaskSignature | None = None
        prev_res: Any = None
        frozen: list[TaskSignature] = []
        results: list[Any] = []
        index = 0
        while steps:
            is_last = not index
            task = self._next_step(steps, args, kwargs, clone=clone,
                                   after=prev_task is not None)
            if task is None:
                continue
            if isinstance(task, TaskGroup) and prev_task is not None:
                task, prev_task, prev_res = _upgrade_to_chord(
                    task, frozen, results, prev_res, root_id, app,
                )
            if is_last:
                res = task.freeze(last_task_id, root_id=root_id, group_id=group_id,
                                  chord=chord_body, group_index=group_index)
            else:
                res = task.freeze(root_id=root_id)
            index += 1
            if prev_task is not None and prev_res is not None and not prev_res.parent:
                prev_res.parent = res
            _link_errbacks(task, link_error)
            frozen.append(task)
            results.append(res)
            prev_task, prev_res = task, res
            if isinstance(task, TaskChord):
                # The result to link the previous one to is the header's, not the
                # body's (the body may be a chain: its first result without a parent).
                prev_res = _first_ancestor(res)
        self.id = results[0].id if results else last_task_id
        if clone:
            for task in frozen:
                _strip_chord_header_links(task)
        return frozen, results

    def _next_step(
        self, steps: deque[Any], args: Sequence[Any], kwargs: Mapping[str, Any] | None,
        *, clone: bool, after: bool,
    ) -> TaskSignature | None:
        """Pop the next element (from the end) and make it a step: a copy (the first
        one with the chain's partial arguments). ``None`` when it was spliced into
        ``steps`` instead (a nested chain, a chord whose body is a chain led by a task)
        or skipped (an empty group, unless it is all there is)."""
        task = maybe_signature(steps.pop(), app=self._app)
        is_first = not steps
        if isinstance(task, TaskGroup):
            task = maybe_unroll_group(task)
            if _is_empty_group(task) and (steps or after):
                return None
        if clone and isinstance(task, TaskChord) and _is_chain_led_by_task(task.body):
            steps.extend(task._unroll_body())
            return None
        if clone:
            task = task.clone(args, kwargs) if is_first else task.clone()
        elif is_first:
            task.args = (*args, *task.args)
        if isinstance(task, TaskChain):
            steps.extend(task.tasks)
            return None
        return cast("TaskSignature", task)

    def _unroll_chords(self) -> None:
        """Split nested chord bodies led by a task (in place, on an execution copy)."""
        pending = deque(self.tasks)
        tasks: list[TaskSignature] = []
        while pending:
            task = pending.popleft()
            if isinstance(task, TaskChain):
                task = task.clone()
                task._unroll_chords()
            if isinstance(task, TaskChord) and _is_chain_led_by_task(task.body):
                pending.extendleft(reversed(task._unroll_body()))
            else:
                tasks.append(task)
        self.tasks = tasks

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every task here, in order, each with the previous result (Celery's
        eager chain); returns the last result, with ``parent`` links."""
        tasks = list(self.tasks)
        task_options = {**self.options, **options}
        link = task_options.pop("link", None)
        last_index = max(
            (i for i, task in enumerate(tasks) if not _is_empty_group(task)),
            default=len(tasks) - 1,
        )
        last: Any = None
        first_args: Sequence[Any] | None = args or ()
        first_kwargs: Mapping[str, Any] | None = kwargs or {}
        for index, task in enumerate(tasks):
            if _is_empty_group(task) and (index < len(tasks) - 1 or last is not None):
                continue
            step = task.clone()
            if link and index == last_index:
                target = step.body if isinstance(step, TaskChord) else step
                target.extend_list_option("link", link)
            call_args = (last.get(disable_sync_subtasks=False),) if last is not None else (
                first_args
            )
            res = step.apply(call_args, first_kwargs, **task_options)
            res.parent, last = last, res
            first_kwargs = None
            if getattr(res, "state", None) in (states.IGNORED, states.REJECTED):
                break
        return last


#: Keywords of the canvas ``run``/``apply_async`` methods that are not task options.
_RUN_KEYWORDS = frozenset({"link", "link_error", "chain", "chord", "group_id",
                           "group_index", "task_id", "root_id", "parent_id",
                           "add_to_parent", "interval", "max_retries", "header_delay",
                           "kwargs", "body", "producer", "publisher", "connection",
                           "router", "result_cls", "route_name"})


def _link_errbacks(task: TaskSignature, link_error: Any) -> None:
    """A chain's ``link_error`` on one of its steps (and on a chord step's body, where
    the chord's error handling reads it)."""
    for errback in _as_list(link_error):
        task.link_error(errback)
        if isinstance(task, TaskChord) and task.body is not None:
            task.body.link_error(errback)


def _first_ancestor(result: Any) -> Any:
    node = result
    while node.parent:
        node = node.parent
    return node


def _chain_head(steps: deque[Any], app: App | None, *, clone: bool) -> deque[Any]:
    """Make the first real task the one popped last: splice leading chains, drop
    leading empty groups (Celery #9772)."""
    stripped = None
    while steps:
        head = steps[0] = maybe_signature(steps[0], app=app)
        if isinstance(head, TaskChain):
            steps.popleft()
            if clone:
                head = head.clone()
            steps.extendleft(reversed(head.tasks))
            continue
        if isinstance(head, TaskGroup):
            head = steps[0] = maybe_unroll_group(head)
            if len(steps) > 1 and _is_empty_group(head):
                stripped = steps.popleft()
                continue
        break
    if stripped is not None and not steps:
        steps.append(stripped)
    return steps


def _upgrade_to_chord(
    task: TaskGroup, frozen: list[TaskSignature], results: list[Any], prev_res: Any,
    root_id: str | None, app: App,
) -> tuple[TaskChord, TaskSignature | None, Any]:
    """A group followed by a task in a chain: the group and the task after it (already
    frozen, the last of ``frozen``) become a chord whose body is that task."""
    body = frozen.pop()
    body_res = results.pop()
    options: dict[str, Any] = {"root_id": root_id}
    if not isinstance(prev_res, ResultSet):
        options = {"task_id": prev_res.id, **options}
    chord_ = TaskChord(task, body=body, app=app, **options)
    prev_task = frozen[-1] if frozen else None
    # The rest of the chain is linked to the chord's result, not to the body's.
    node = results[-1] if results else None
    while node is not None and node.parent is not body_res:
        node = node.parent
    if node is not None:
        node.parent = None
        prev_res = node
    return chord_, prev_task, prev_res


def _is_chain_led_by_task(body: Any) -> bool:
    return isinstance(body, TaskChain) and bool(body.tasks) and not isinstance(
        body.tasks[0], TaskGroup
    )


def _clear_chord_option(sig: TaskSignature) -> None:
    sig.options.pop("chord", None)
    if isinstance(sig, TaskGroup):
        for task in sig.tasks:
            _clear_chord_option(task)
    elif isinstance(sig, TaskChain) and sig.tasks:
        _clear_chord_option(sig.tasks[-1])
    elif isinstance(sig, TaskChord) and sig.body is not None:
        _clear_chord_option(sig.body)


def _strip_chord_header_links(sig: TaskSignature) -> None:
    """A pending chord carries its body in its kwargs: drop the copies freezing put on
    its header tasks (the chord puts them back when it sends the header)."""
    if isinstance(sig, TaskChord):
        header = sig.tasks
        if isinstance(header, TaskSignature):
            _clear_chord_option(header)
            _strip_chord_header_links(header)
        else:
            for task in header:
                _clear_chord_option(task)
                _strip_chord_header_links(task)
        if sig.body is not None:
            _strip_chord_header_links(sig.body)
    elif isinstance(sig, TaskGroup | TaskChain):
        for task in sig.tasks:
            _strip_chord_header_links(task)


def chain(*tasks: Any, app: App | None = None, **options: Any) -> TaskSignature:
    """Celery's ``chain(a, b, c)``, the same as ``a | b | c`` (a group followed by a task
    becomes a chord); one iterable argument is taken as the tasks. With keywords (options
    or ``app``) or no tasks, a :class:`TaskChain` of exactly the given tasks (the chord
    upgrade then happens when it is sent), as Celery's."""
    if options or app is not None or not tasks or (
        len(tasks) == 1 and isinstance(tasks[0], Mapping)
    ):
        # Celery folds only ``chain(a, b, ...)`` without keywords (``app=`` included).
        return TaskChain(*tasks, app=app, **options)
    members: Sequence[Any] = list(tasks[0]) if len(tasks) == 1 else tasks
    folded: TaskSignature = TaskChain(app=_app_of([maybe_signature(t) for t in members]))
    for task in members:
        folded = folded | maybe_signature(task)
    return folded


# -- groups ---------------------------------------------------------------------------------


class TaskGroup(_TaskList):
    """Signatures run in parallel (Celery's ``celery.group``); the result is a
    :class:`GroupResult`. One iterable argument is taken as the tasks."""

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        members: Iterable[Any] = tasks
        if len(tasks) == 1:
            only = tasks[0]
            if isinstance(only, TaskGroup):
                members = only.tasks
            elif isinstance(only, TaskSignature):
                members = [only.clone()]
            elif not isinstance(only, Mapping):
                members = only
        listed = [maybe_signature(task, app=app) for task in members]
        super().__init__("celery.group", (), {"tasks": listed}, options,
                         subtask_type="group", app=app if app is not None else _app_of(listed))

    def __len__(self) -> int:  # Celery's: the number of tasks
        return len(self.tasks)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"group({self.tasks!r})" if self.tasks else "group(<empty>)"

    def __call__(self, *args: Any, **options: Any) -> Any:
        return self.apply_async(args, **options)

    def __or__(self, other: Any) -> TaskSignature:  # type: ignore[override]  # as base
        if _is_empty_group(other):
            return self
        if isinstance(other, TaskSignature):
            return TaskChord(self, body=other, app=self._app)
        return NotImplemented

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskGroup:
        # Celery's group keeps its task list shared by a clone; a copy is safer and
        # sends the same messages.
        new = cast("TaskGroup", super().clone(args, kwargs, **options))
        new.tasks = list(new.tasks)
        return new

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            task.set_immutable(immutable)

    def link(self, callback: Mapping[str, Any]) -> Any:
        """Celery's: an immutable copy of ``callback`` linked to the first task."""
        sig = maybe_signature(callback, app=self._app).clone()
        sig.set(immutable=True)
        return self.tasks[0].link(sig)

    def link_error(self, errback: Mapping[str, Any]) -> Any:
        """Celery's: a copy of ``errback`` linked to every task."""
        sig = maybe_signature(errback, app=self._app)
        return tuple(task.link_error(sig.clone()) for task in self.tasks)

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        add_to_parent: bool = True, producer: Any = None, link: Any = None,
        link_error: Any = None, **options: Any,
    ) -> Any:
        """Send every task with the group's id and its index; returns a
        :class:`GroupResult` (Celery's ``group.apply_async``).

        Raises:
            ValidationError: ``link``/``link_error`` (use a chord, or link the tasks),
                as Celery refuses them.
        """
        del add_to_parent, producer  # Celery's result trail and producer: none here
        if link is not None:
            raise ValidationError("link", "cannot add link to group: use a chord")
        if link_error is not None:
            raise ValidationError(
                "link_error", "cannot add link_error to group: do that on individual tasks"
            )
        check_options({k: v for k, v in options.items() if k not in _RUN_KEYWORDS})
        if self.app.conf.get("task_always_eager"):
            return self.apply(args, kwargs, **options)
        if not self.tasks:
            return self.freeze()
        merged, group_id, root_id = self._freeze_gid(options)
        prepared = list(self._prepared(self.tasks, (), group_id, root_id))
        results = self._apply_tasks(prepared, args or (), kwargs or {}, **merged)
        result = GroupResult(group_id, results, app=self.app)
        if len(results) == 1 and isinstance(results[0], GroupResult):
            return results[0]
        return result

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every task here and return a :class:`GroupResult` of their results."""
        if not self.tasks:
            return self.freeze()
        merged, group_id, root_id = self._freeze_gid(options)
        merged.pop("chord", None)
        return GroupResult(group_id, [
            sig.apply(args, kwargs, **merged)
            for sig, _ in self._prepared(self.tasks, (), group_id, root_id, freeze=False)
        ], app=self.app)

    def _freeze_gid(self, options: Mapping[str, Any]) -> tuple[dict[str, Any], str, Any]:
        """The group's options merged with ``options``; its ``task_id`` becomes the
        ``group_id`` of every task."""
        merged = {
            **self.options,
            **{k: v for k, v in options.items()
               if k not in _IMMUTABLE_OPTIONS or k not in self.options},
        }
        group_id = merged.pop("task_id", None) or new_task_id()
        merged["group_id"] = group_id
        return merged, group_id, merged.get("root_id")

    def _prepared(
        self, tasks: Iterable[Any], partial_args: Sequence[Any], group_id: str,
        root_id: str | None, *, freeze: bool = True,
    ) -> Iterator[tuple[TaskSignature, Any]]:
        """Copies of the tasks, nested groups flattened, each frozen with the group's
        id and its index (Celery's ``_prepared``)."""
        for index, item in enumerate(tasks):
            task = maybe_signature(item, app=self._app).clone() if isinstance(
                item, TaskSignature
            ) else maybe_signature(item, app=self._app)
            if isinstance(task, TaskGroup):
                yield from task._prepared(task.tasks, partial_args, group_id, root_id,
                                          freeze=freeze)
            elif isinstance(task, TaskChain) and not task.tasks:
                continue
            else:
                if partial_args and not task.immutable:
                    task.args = (*partial_args, *task.args)
                result = task.freeze(group_id=group_id, root_id=root_id,
                                     group_index=index) if freeze else None
                yield task, result

    def _apply_tasks(
        self, prepared: list[tuple[TaskSignature, Any]], args: Sequence[Any],
        kwargs: Mapping[str, Any], chord: TaskSignature | None = None,
        group_index: int | None = None, add_to_parent: bool | None = None,
        **options: Any,
    ) -> list[Any]:
        """Send the prepared tasks; before the last one of a chord's header, tell the
        backend the chord's size (Celery's ``_apply_tasks``)."""
        del group_index, add_to_parent  # the group's own: not passed to its tasks
        size = 0
        results = []
        for position, (sig, result) in enumerate(prepared):
            body = chord if chord is not None else sig.options.get("chord")
            size += _chord_size(sig)
            if body is not None and position == len(prepared) - 1:
                backend = self.app.backend
                if isinstance(backend, ChordCounter):
                    self.app._backend_step(functools.partial(
                        backend.set_chord_size, options["group_id"], size))
            sig.apply_async(args, kwargs, chord=body, **options)
            results.append(result)
        return results

    def freeze(
        self, _id: str | None = None, group_id: str | None = None,
        chord: TaskSignature | None = None, root_id: str | None = None,
        parent_id: str | None = None, group_index: int | None = None,
    ) -> Any:
        """Give the group its id (``options['task_id']``; Celery ignores ``_id`` here)
        and every task its own (nested groups flattened); returns the
        :class:`GroupResult`."""
        del _id
        return GroupResult(*self._freeze_group_tasks(
            group_id=group_id, chord=chord, root_id=root_id, parent_id=parent_id,
            group_index=group_index,
        ), app=self.app)

    def _freeze_group_tasks(
        self, group_id: str | None = None, chord: TaskSignature | None = None,
        root_id: str | None = None, parent_id: str | None = None,
        group_index: int | None = None,
    ) -> tuple[str, list[Any]]:
        opts = self.options
        gid = opts.get("task_id")
        if gid is None:
            gid = opts["task_id"] = new_task_id()
        if group_id:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        root_id = opts.setdefault("root_id", root_id)
        parent_id = opts.setdefault("parent_id", parent_id)
        flat: list[TaskSignature] = []
        results: list[Any] = []
        stack = deque(self.tasks)
        while stack:
            task = maybe_signature(stack.popleft(), app=self._app).clone()
            if isinstance(task, TaskGroup):
                stack.extendleft(task.tasks)
            elif isinstance(task, TaskChain) and not task.tasks:
                continue
            else:
                flat.append(task)
                results.append(task.freeze(group_id=group_id, chord=chord, root_id=root_id,
                                           parent_id=parent_id, group_index=len(results)))
        self.tasks = flat
        return str(gid), results


#: Celery's ``group(a, b, ...)`` (or ``group([a, b, ...])``).
group = TaskGroup


def _chord_size(sig: Any) -> int:
    """How many completions ``sig`` adds to a chord (Celery's ``_chord._descend``): each
    task of a group, the last non-empty element of a chain, a nested chord's body."""
    if not isinstance(sig, TaskSignature) and isinstance(sig, Mapping):
        sig = signature(sig)
    if isinstance(sig, TaskGroup):
        return sum(_chord_size(task) for task in sig.tasks)
    if isinstance(sig, TaskChain):
        for child in reversed(sig.tasks):
            size = _chord_size(child)
            if size > 0:
                return size
        return 0
    if isinstance(sig, TaskChord):
        return _chord_size(sig.body)
    if isinstance(sig, TaskSignature):
        return 1
    return len(sig)


# -- chords ---------------------------------------------------------------------------------


class TaskChord(TaskSignature):
    """A header (tasks run in parallel) and a body called with the list of their
    results, in header order (Celery's ``celery.chord``): ``chord(header)(body)`` or
    ``chord(header, body).apply_async()``; the result is the body's, whose ``parent`` is
    the header's :class:`GroupResult`."""

    def __init__(
        self, header: Any, body: Any = None, task: str = "celery.chord",
        args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        app: App | None = None, **options: Any,
    ) -> None:
        header_value = _maybe_group(header, app)
        body_value = maybe_signature(body, app=app)
        found = app if app is not None else _app_of(
            [*(header_value.tasks if isinstance(header_value, TaskGroup) else header_value),
             *([body_value] if body_value is not None else [])]
        )
        super().__init__(
            task, args,
            {**(kwargs or {"kwargs": {}}), "header": header_value, "body": body_value},
            options, subtask_type="chord", app=found,
        )

    @classmethod
    def from_dict(cls, value: Mapping[str, Any], app: App | None = None) -> TaskChord:
        kwargs = dict(_kwargs_of(value))
        header = kwargs.pop("header", None)
        body = kwargs.pop("body", None)
        if header is None:
            raise ValidationError("kwargs.header", "a chord needs a header")
        return cls(header, body, task=str(value.get("task") or "celery.chord"),
                   args=tuple(value.get("args") or ()), kwargs=kwargs, app=app,
                   **_options_of(value))

    @property
    def tasks(self) -> Any:
        """The header: a :class:`TaskGroup` or a list of signatures."""
        return self.kwargs["header"]

    @tasks.setter
    def tasks(self, value: Any) -> None:
        self.kwargs["header"] = value

    @property
    def body(self) -> Any:
        return self.kwargs["body"]

    @body.setter
    def body(self, value: Any) -> None:
        self.kwargs["body"] = value

    def _header_tasks(self) -> list[TaskSignature]:
        header = self.tasks
        return list(header.tasks if isinstance(header, TaskGroup) else header)

    def __repr__(self) -> str:
        if self.body is not None:
            return f"chord({self._header_tasks()!r}, {self.body!r})"
        return f"<chord without body: {self._header_tasks()!r}>"

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """``chord(header)(body)``: send with this body."""
        return self.apply_async((), {"body": body} if body else {}, **options)

    def __or__(self, other: Any) -> TaskSignature:  # type: ignore[override]  # as base
        if isinstance(other, TaskSignature) and not isinstance(other, TaskGroup | TaskChain):
            sig = self.clone()
            sig.body = sig.body | other
            return sig
        if isinstance(other, TaskGroup) and len(other.tasks) == 1:
            sig = self.clone()
            sig.body = sig.body | maybe_unroll_group(other)
            return sig
        return super().__or__(other)

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskChord:
        new = cast("TaskChord", super().clone(args, kwargs, **options))
        if new.body is not None:
            new.body = maybe_signature(new.body, app=self._app, clone=True)
        header = new.tasks
        if isinstance(header, list):
            new.tasks = list(header)
        return new

    def link(self, callback: Mapping[str, Any]) -> Any:
        """Celery's: the callback goes to the body."""
        self.body.link(callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Any:
        """Celery's (with ``task_allow_error_cb_on_chord_header`` False, the only value
        wiretask honours): the errback goes to the body, and to nested chords."""
        sig = maybe_signature(errback, app=self._app)
        for task in self._header_tasks():
            if isinstance(task, TaskChord):
                task.link_error(sig)
        self.body.link_error(sig)
        return sig

    def set_immutable(self, immutable: bool) -> None:
        for task in self._header_tasks():
            task.set_immutable(immutable)

    def freeze(
        self, _id: str | None = None, group_id: str | None = None,
        chord: TaskSignature | None = None, root_id: str | None = None,
        parent_id: str | None = None, group_index: int | None = None,
    ) -> Any:
        """Freeze the header (its tasks carry the body as ``chord``) and the body;
        returns the body's result, whose first ancestor is the header's result."""
        if not isinstance(self.tasks, TaskGroup):
            self.tasks = TaskGroup(self.tasks, app=self._app)
        header_result = self.tasks.freeze(parent_id=parent_id, root_id=root_id,
                                          chord=self.body)
        self.id = self.tasks.id
        if self.body is None:
            return None
        body_result = self.body.freeze(_id, root_id=root_id, chord=chord,
                                       group_id=group_id, group_index=group_index)
        node, seen = body_result, set()
        while node is not None:
            if node.id in seen:
                raise ValidationError("chord", "the results of the body form a loop")
            seen.add(node.id)
            if node.parent is None:
                node.parent = header_result
                break
            node = node.parent
        return body_result

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None, **options: Any,
    ) -> Any:
        """Send the header with the body frozen in every header task (Celery's
        ``chord.apply_async``): ``countdown``/``eta`` delay the header, ``link`` and
        ``link_error`` go to the body, other options to both."""
        check_options({k: v for k, v in options.items() if k not in _RUN_KEYWORDS})
        args = tuple(args or ())
        args = args + self.args if args and not self.immutable else self.args
        call_kwargs = dict(kwargs or {})
        body = call_kwargs.pop("body", None) or self.body
        if body is None:
            raise ValidationError("body", "a chord needs a body: chord(header)(body)")
        body = maybe_signature(body, app=self._app)
        merged_kwargs = {**self.kwargs["kwargs"], **call_kwargs}
        header_delay = {key: options.pop(key) for key in ("countdown", "eta")
                        if options.get(key) is not None}
        callbacks: dict[str, Any] = {
            key: options.pop(key) for key in ("link", "link_error") if key in options
        }
        body = body.clone(**_body_options(
            {k: v for k, v in options.items() if k not in _CHORD_RUN_OPTIONS}
        ))
        header = self.tasks
        if isinstance(header, TaskGroup):
            header = header.clone()
        else:
            header = TaskGroup(list(header), app=self.app,
                               task_id=self.options.get("task_id") or new_task_id())
        if self.app.conf.get("task_always_eager"):
            body = _add_body_callbacks(body, {**self.options, **callbacks})
            return self.apply(args, merged_kwargs, body=body, **options)
        merged = {**self.options, **options, **callbacks}
        for key in ("countdown", "eta"):
            merged.pop(key, None)
        option_task_id = merged.pop("task_id", None)
        return self.run(header, body, args, task_id=task_id or option_task_id,
                        kwargs=merged_kwargs, header_delay=header_delay, **merged)

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        propagate: bool = True, body: Any = None, **options: Any,
    ) -> Any:
        """Run the header here, then the body with the list of its results."""
        del options
        body = self.body if body is None else body
        header = self.tasks.clone() if isinstance(self.tasks, TaskGroup) else TaskGroup(
            list(self.tasks), app=self.app
        )
        values = header.apply(args, kwargs).get(propagate=propagate,
                                                disable_sync_subtasks=False)
        return maybe_signature(body, app=self._app).apply((values,))

    def run(
        self, header: TaskGroup, body: TaskSignature, partial_args: Sequence[Any],
        interval: float | None = None, countdown: float = 1, max_retries: int | None = None,
        task_id: str | None = None, kwargs: Mapping[str, Any] | None = None,
        header_delay: Mapping[str, Any] | None = None, **options: Any,
    ) -> Any:
        """Freeze the body, tell the backend about the chord, send the header (Celery's
        ``chord.run``). An empty header sends the body at once with ``[]``."""
        app = self.app
        group_id = header.options.get("task_id") or new_task_id()
        root_id = body.options.get("root_id")
        options = {**self.options, **options}
        delay = dict(header_delay or {})
        for key in ("countdown", "eta"):
            if key not in delay and options.get(key) is not None:
                delay[key] = options[key]
            options.pop(key, None)
        if options:
            options.pop("task_id", None)
            body = _add_body_callbacks(body, options)
            body.options.update(_body_options(options))
        if isinstance(body, TaskChain):
            body._unroll_chords()
        body_result = body.freeze(task_id or new_task_id(), group_id=group_id,
                                  root_id=root_id)
        _strip_chord_header_links(body)
        for key in ("chain", "chord", "task_id"):
            options.pop(key, None)
        header.options["task_id"] = group_id
        gid, results = header._freeze_group_tasks(group_id=group_id, chord=body,
                                                  root_id=root_id)
        if header.tasks:
            _apply_chord(app, GroupResult(gid, results, app=app), body, interval=interval,
                         countdown=countdown, max_retries=max_retries)
            header_result = header.apply_async(partial_args, kwargs, task_id=group_id,
                                               **{**options, **delay})
        else:
            body.delay([])
            header_result = GroupResult(gid, results, app=app)
        body_result.parent = header_result
        return body_result

    def _unroll_body(self) -> list[TaskSignature]:
        """``chord(header, chain(a, b, c))`` -> ``chord(header, a), b, c``."""
        task = self.clone()
        body_tasks = task.body.unchain_tasks()
        first_options = {k: v for k, v in task.body.options.items()
                         if k not in _CHAIN_RUN_OPTIONS}
        task.body = body_tasks[0].clone(**first_options)
        return [task, *body_tasks[1:]]


#: A chord's own ``apply_async`` options (how ``celery.chord_unlock`` polls). Celery
#: also copies them into the body's options, where they end up as junk message
#: properties; wiretask keeps them off the body (spec/PROTOCOL.md §19.9).
_CHORD_RUN_OPTIONS = frozenset({"interval", "max_retries"})


def _maybe_group(tasks: Any, app: App | None) -> Any:
    """A chord's header as Celery keeps it: the task list of a group or chain, a list
    for one signature or an iterable."""
    if isinstance(tasks, Mapping) and not isinstance(tasks, TaskSignature):
        tasks = signature(tasks, app=app)
    if isinstance(tasks, TaskGroup | TaskChain):
        return tasks.tasks
    if isinstance(tasks, TaskSignature):
        return [tasks]
    return [maybe_signature(task, app=app) for task in tasks]


def _body_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """What of a chord's options the body gets: all but ``parent_id`` (the header
    task that fires the body is its parent)."""
    return {k: v for k, v in options.items() if k != "parent_id"}


def _add_body_callbacks(body: TaskSignature, options: dict[str, Any]) -> TaskSignature:
    """Move a chord's ``link``/``link_error`` options to its body (a copy)."""
    callbacks = _as_list(options.pop("link", None))
    errbacks = _as_list(options.pop("link_error", None))
    if not (callbacks or errbacks):
        return body
    body = _clone_with_members(body)
    for callback in callbacks:
        cb = _clone_with_members(maybe_signature(callback, app=body._app))
        if isinstance(body, TaskGroup) and not body.tasks:
            body.append_to_list_option("link", cb)
        else:
            body.link(cb)
    for errback in errbacks:
        if isinstance(body, TaskGroup):
            _link_error_to_body_tasks(body, maybe_signature(errback, app=body._app))
        else:
            body.append_to_list_option("link_error", errback)
    return body


def _clone_with_members(sig: TaskSignature) -> TaskSignature:
    sig = maybe_signature(sig, clone=True)
    if isinstance(sig, TaskGroup):
        sig.tasks = [_clone_with_members(task) for task in sig.tasks]
    elif isinstance(sig, TaskChord):
        sig.body = _clone_with_members(sig.body)
    return sig


def _link_error_to_body_tasks(sig: TaskSignature, errback: TaskSignature,
                              runs_as_group: bool = True) -> None:
    if isinstance(sig, TaskGroup):
        if runs_as_group and sig.options.get("link_error") is not None:
            sig.append_to_list_option("link_error", errback.clone())
        else:
            for task in sig.tasks:
                _link_error_to_body_tasks(task, errback, runs_as_group=False)
    elif isinstance(sig, TaskChord):
        _link_error_to_body_tasks(sig.body, errback)
    else:
        sig.link_error(errback.clone())


def _apply_chord(
    app: App, header_result: GroupResult, body: TaskSignature, *,
    interval: float | None, countdown: float, max_retries: int | None,
) -> None:
    """Tell the result backend about a chord about to be sent. A backend with chord
    support (Redis) keeps the header's structure when it is nested; any other is polled
    by ``celery.chord_unlock`` (Celery's ``fallback_chord_unlock``)."""
    backend = app.backend
    if isinstance(backend, ChordCounter):
        # Only a header that nests groups is kept, as Celery's Redis backend does: the
        # body then gets their results in their structure.
        if any(isinstance(r, ResultSet) for r in header_result.results):
            app._backend_step(functools.partial(
                backend.save_chord_header, header_result.id,
                {"result": _plain(header_result.as_tuple())}))
        return
    body_task = app.tasks.get(body.task)
    queue = body.options.get("queue") or (body_task.defaults.get("queue")
                                          if body_task is not None else None)
    priority = body.options.get("priority")
    if priority is None and body_task is not None:
        priority = body_task.defaults.get("priority")
    routing = {key: body.options[key] for key in ("exchange", "routing_key", "headers")
               if body.options.get(key) is not None
               and key not in (body.options.get("stamped_headers") or ())}
    unlock_kwargs: dict[str, Any] = {
        "interval": interval, "max_retries": max_retries,
        "result": [r.as_tuple() for r in header_result.results],
    }
    app.send_task(
        "celery.chord_unlock", _as_arguments((header_result.id, body)), unlock_kwargs,
        countdown=countdown, queue=queue, priority=priority or 0, **routing,
    )


#: Celery's ``chord(header, body)`` / ``chord(header)(body)``.
chord = TaskChord


# -- chunks, map and starmap ------------------------------------------------------------------


class _MapSignature(TaskSignature):
    """``celery.map``/``celery.starmap``: one message that calls the task for each item
    of ``it`` in the worker (Celery's ``xmap``/``xstarmap``; ``subtask_type`` null on
    the wire, as Celery 5.7 writes it)."""

    _task_name = "celery.map"

    def __init__(self, task: Any, it: Iterable[Any], app: App | None = None,
                 **options: Any) -> None:
        sig = maybe_signature(task, app=app)
        super().__init__(self._task_name, (), {"task": sig, "it": list(it)}, options,
                         immutable=True, app=app if app is not None else sig._app)

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        _, _, merged = self._merge(None, None, {k: v for k, v in options.items()
                                                if v is not None})
        merged.pop("route_name", None)
        kwargs = _as_arguments({"task": self.kwargs["task"], "it": list(self.kwargs["it"])})
        task = self.app.tasks.get(self._task_name)  # Celery: self.type.apply_async
        if task is not None:
            return task.apply_async((), kwargs, **merged)
        return self.app.send_task(self._task_name, (), kwargs, **merged)


class xmap(_MapSignature):
    """``task.map(it)``: ``[task(x) for x in it]`` in one worker (``celery.map``)."""

    _task_name = "celery.map"


class xstarmap(_MapSignature):
    """``task.starmap(it)``: ``[task(*x) for x in it]`` in one worker
    (``celery.starmap``)."""

    _task_name = "celery.starmap"


class chunks(TaskSignature):
    """``task.chunks(it, n)``: ``it`` cut into parts of ``n`` items, sent as a group of
    ``celery.starmap`` calls (Celery's ``chunks``; ``celery.chunks`` when it travels as
    a signature)."""

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: App | None = None,
                 **options: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationError("n", f"must be a chunk size >= 1, got {n!r}")
        sig = maybe_signature(task, app=app)
        super().__init__("celery.chunks", (), {"task": sig, "it": list(it), "n": n},
                         options, immutable=True, app=app if app is not None else sig._app)

    def __call__(self, **options: Any) -> Any:  # Celery's: calling sends it
        return self.apply_async(**options)

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        options.pop("route_name", None)
        return self.group().apply_async(args, kwargs, **options)

    def group(self) -> TaskGroup:
        """The group of ``celery.starmap`` calls, one per chunk."""
        task, items, size = self.kwargs["task"], list(self.kwargs["it"]), self.kwargs["n"]
        return TaskGroup(
            [xstarmap(task, items[start:start + size], app=self._app)
             for start in range(0, len(items), size)],
            app=self._app,
        )


#: ``subtask_type`` -> how a received dict of that kind becomes a signature.
_TYPES: dict[str, Callable[..., TaskSignature]] = {
    "chain": TaskChain.from_dict,
    "group": TaskGroup.from_dict,
    "chord": TaskChord.from_dict,
}


# -- group results --------------------------------------------------------------------------


class ResultSet:  # noqa: PLW1641 - mutable, so unhashable (Celery's is too)
    """Several results read as one (Celery's ``ResultSet``): ``ready()`` when all are,
    ``get()``/``join()`` returns their values in order."""

    def __init__(self, results: Iterable[Any], app: App | None = None) -> None:
        self.results: list[Any] = list(results)
        self._app = app
        self._parent: Any = None

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = self.results[0].app if self.results else _current_app()
        return self._app

    @property
    def parent(self) -> Any:
        return self._parent

    @parent.setter
    def parent(self, value: Any) -> None:
        self._parent = value

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"

    def add(self, result: Any) -> None:
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Any) -> None:
        self.results.remove(result)

    def discard(self, result: Any) -> None:
        if result in self.results:
            self.results.remove(result)

    def update(self, results: Iterable[Any]) -> None:
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        self.results.clear()

    def revoke(
        self, connection: object = None, terminate: bool = False, signal: str | None = None,
        wait: bool = False, timeout: float | None = None,
    ) -> None:
        """Tell every worker to revoke every task of the set (Celery's
        ``ResultSet.revoke``: one broadcast with the list of ids; see
        ``AsyncResult.revoke``)."""
        if not self.results:
            return
        self.app.control.revoke([r.id for r in self.results], connection=connection,
                                timeout=timeout, terminate=terminate, signal=signal,
                                reply=wait)

    def successful(self) -> bool:
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        return any(result.failed() for result in self.results)

    def waiting(self) -> bool:
        return any(not result.ready() for result in self.results)

    def ready(self) -> bool:
        return all(result.ready() for result in self.results)

    def completed_count(self) -> int:
        return sum(int(result.successful()) for result in self.results)

    def forget(self) -> None:
        for result in self.results:
            result.forget()

    def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the error of the first result that failed (or was revoked)."""
        for result in self.results:
            result.maybe_throw(propagate=propagate)

    def get(
        self, timeout: float | None = None, propagate: bool = True,
        interval: float | None = None, callback: Callable[[str, Any], object] | None = None,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> list[Any] | None:
        """:meth:`join`."""
        return self.join(timeout=timeout, propagate=propagate, interval=interval,
                         callback=callback, on_message=on_message,
                         disable_sync_subtasks=disable_sync_subtasks)

    def join(
        self, timeout: float | None = None, propagate: bool = True,
        interval: float | None = None, callback: Callable[[str, Any], object] | None = None,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> list[Any] | None:
        """Wait for every result, in order, and return their values (Celery's
        ``join``): ``timeout`` is for all of them together; a failed one raises its
        error when ``propagate`` (else its exception is the value); ``callback(task_id,
        value)`` instead of the list. ``on_message`` gets every state change of each.

        Raises:
            TimeoutError: not all finished in time (naming the first still waiting).
        """
        values: list[Any] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            value = result.get(timeout=remaining, propagate=propagate, interval=interval,
                               on_message=on_message,
                               disable_sync_subtasks=disable_sync_subtasks)
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return None if callback is not None else values

    join_native = join

    def failed_join_report(self) -> Iterator[Any]:
        """The results that failed (or were revoked)."""
        return (r for r in self.results if r.state in states.PROPAGATE_STATES)


class GroupResult(ResultSet):
    """The result of a group: its id and the results of its tasks (Celery's
    ``GroupResult``). ``save()`` stores it (on Redis under Celery's
    ``celery-taskset-meta-<id>``) so that ``GroupResult.restore(id)`` finds it again,
    in this process or another, wiretask's or Celery's."""

    def __init__(self, id: str, results: Iterable[Any] = (), parent: Any = None,
                 app: App | None = None) -> None:
        super().__init__(results, app=app)
        self.id = id
        self._parent = parent

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __bool__(self) -> bool:
        return bool(self.id or self.results)

    def __str__(self) -> str:
        return str(self.id)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    @property
    def children(self) -> list[Any]:
        return self.results

    def as_tuple(self) -> tuple[Any, Any]:
        """Celery's result tuple: ``((id, parent_tuple), [child tuples])``."""
        parent = self._parent.as_tuple() if self._parent is not None else None
        return (self.id, parent), [r.as_tuple() for r in self.results]

    def save(self, backend: Any = None) -> GroupResult:
        """Store the group's structure for :meth:`restore` (Celery's ``save``)."""
        backend = backend or self.app.backend
        _group_store(backend, "save_group")(self.id, {"result": _plain(self.as_tuple())})
        return self

    def delete(self, backend: Any = None) -> None:
        """Remove what :meth:`save` stored."""
        backend = backend or self.app.backend
        _group_store(backend, "delete_group")(self.id)

    @classmethod
    def restore(cls, id: str, backend: Any = None, app: App | None = None) -> GroupResult | None:
        """The group saved under ``id`` (by wiretask or Celery), or ``None``."""
        app = app or _current_app()
        backend = backend or app.backend
        meta = _group_store(backend, "restore_group")(id)
        if meta is None:
            return None
        restored = result_from_tuple(meta.get("result"), app, "result")
        if not isinstance(restored, GroupResult):
            raise DecodeError("result", f"the group {id} is stored as a single result")
        return restored


def _group_store(backend: Any, action: str) -> Any:
    """``backend.<action>`` of a backend that stores group results (every bundled one);
    one that does not is refused by name."""
    method = getattr(backend, action, None)
    if method is None:
        raise ImproperlyConfigured(
            f"the result backend {backend.url} cannot store group results",
            setting="result_backend",
        )
    return method


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def result_from_tuple(value: Any, app: App, field: str = "result") -> Any:
    """Celery's ``result_from_tuple``: ``[[id, parent], null]`` is a task's result,
    ``[[id, parent], [children...]]`` a group's.

    Raises:
        DecodeError: not a result tuple (``field`` names where it was).
    """
    from wiretask.app import AsyncResult  # noqa: PLC0415 - app imports this module

    if isinstance(value, list | tuple) and len(value) == 2:
        head, nodes = value
        parent = None
        if isinstance(head, list | tuple) and len(head) == 2:
            head, parent_tuple = head
            if parent_tuple:
                parent = result_from_tuple(parent_tuple, app, f"{field}.parent")
        if isinstance(head, str) and head:
            if nodes is not None:
                if not isinstance(nodes, list | tuple):
                    raise DecodeError(field, f"group children must be a list: {nodes!r}")
                children = [result_from_tuple(child, app, f"{field}[{i}]")
                            for i, child in enumerate(nodes)]
                return GroupResult(head, children, parent=parent, app=app)
            return AsyncResult(head, app=app, parent=parent)
    raise DecodeError(field, f"not a result tuple: {value!r:.200}")

