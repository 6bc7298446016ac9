"""Signatures: the ``link`` / ``link_error`` / ``chain`` / ``chord`` entries of a task message.

On the wire a signature is a plain mapping (Celery's ``Signature`` is a ``dict``
subclass) with exactly the keys ``task``, ``args``, ``kwargs``, ``options``,
``subtask_type`` and ``immutable``. Celery up to 5.0 also wrote ``chord_size``; it was
removed in 5.1 but consumers must tolerate it, and unknown keys in general
(``spec/PROTOCOL.md`` §6). wiretask keeps every unknown key in ``extra`` so that a
signature decoded from a peer re-encodes to the same dict.

Nested signatures inside ``kwargs`` or ``options`` (a chain's ``kwargs["tasks"]``, a
frozen ``options["chord"]``) are kept as plain data on decode: wiretask does not
interpret canvas primitives, it carries them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self, cast

import attrs

from wiretask.errors import MalformedMessage, ValidationError

__all__ = ["SIGNATURE_KEYS", "Signature"]

#: The keys Celery >= 5.1 writes for every signature, in Celery's order.
SIGNATURE_KEYS: tuple[str, ...] = (
    "task",
    "args",
    "kwargs",
    "options",
    "subtask_type",
    "immutable",
)
_KNOWN_KEYS = frozenset((*SIGNATURE_KEYS, "chord_size"))

# Celery's ``Signature._IMMUTABLE_OPTIONS``: when merging options, a stored value for
# one of these keys is never overridden (together with every name listed in the stored
# ``stamped_headers``), "implying that allowing their value to change would stall
# tasks" (celery/canvas.py, ``Signature._merge``).
_IMMUTABLE_OPTIONS = frozenset(("stamped_headers", "group_id"))


def _to_tuple(value: Sequence[Any]) -> tuple[Any, ...]:
    # Only lists and tuples are converted: a str is a Sequence too, and ``args="ab"``
    # silently becoming ("a", "b") is a classic bug. Anything else is left for
    # ``__attrs_post_init__`` to reject with a ValidationError naming the field.
    if type(value) is tuple:
        return value
    if isinstance(value, list | tuple):
        return tuple(value)
    return cast("tuple[Any, ...]", value)  # not a list or tuple: rejected in __attrs_post_init__


def _to_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return cast("dict[str, Any]", value)  # not a mapping: rejected in __attrs_post_init__


def _plain(value: Any) -> Any:
    """Replace any :class:`Signature` found inside containers by its wire dict.

    One Python frame per level of nesting (``map``, not a comprehension, which would be
    a second frame per level), so a value as deep as a message may be (``MAX_DEPTH``)
    stays far from the recursion limit."""
    if isinstance(value, Signature):
        return value.to_dict()
    if isinstance(value, dict):
        return dict(zip(value.keys(), map(_plain, value.values()), strict=True))
    if isinstance(value, list | tuple):
        return list(map(_plain, value))
    return value


@attrs.frozen(kw_only=True)
class Signature:
    """One task signature as Celery serialises it: a task name with partial arguments.

    Instances are immutable values; derive new ones with :meth:`clone` (Celery's partial
    semantics) or :func:`attrs.evolve`. The class may be subclassed with attrs (the App
    adds a non-compared ``app`` field to make signatures callable).

    Attributes:
        task: The task name. Required, non-empty.
        args: Positional arguments (a list on the wire).
        kwargs: Keyword arguments. Keys must be strings.
        options: Execution options (``countdown``, ``queue``, and after freezing
            ``task_id``, ``reply_to``, ``group_id``, ...), carried as data.
        subtask_type: ``None`` for a plain task, ``"chain"``, ``"group"`` or ``"chord"``
            for canvas primitives.
        immutable: ``True`` for ``.si()`` signatures: a parent's return value is not
            prepended to the args.
        chord_size: Only written by Celery <= 5.0; emitted only when not ``None``.
        extra: Unknown keys from a peer, kept and written back unchanged.
    """

    task: str
    args: tuple[Any, ...] = attrs.field(default=(), converter=_to_tuple)
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict)
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict)
    subtask_type: str | None = None
    immutable: bool = False
    chord_size: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict)

    def __attrs_post_init__(self) -> None:
        problem = _signature_problem(self)
        if problem is not None:
            field, text = problem
            raise ValidationError(field, text, value=getattr(self, field))

    def to_dict(self) -> dict[str, Any]:
        """Return Celery's wire dict for this signature.

        The keys are exactly Celery's, in Celery's order, then ``chord_size`` when set,
        then the unknown keys from ``extra``. Signatures nested anywhere inside ``args``,
        ``kwargs`` or ``options`` are converted too, so the result is plain data that
        any serializer can write.
        """
        out: dict[str, Any] = {
            "task": self.task,
            "args": _plain(self.args),
            "kwargs": _plain(self.kwargs),
            "options": _plain(self.options),
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        }
        if self.chord_size is not None:
            out["chord_size"] = self.chord_size
        if self.extra:
            out.update(_plain(self.extra))
        return out

    @classmethod
    def from_dict(cls, value: Any, *, field: str = "signature") -> Self:
        """Build a signature from its wire dict, as received from a peer.

        Missing ``args``/``kwargs``/``options``/``subtask_type``/``immutable`` take their
        defaults (Celery builds signatures from whatever the dict holds). ``args`` may be
        a list or a tuple.

        Args:
            value: The decoded mapping.
            field: Where the mapping sits in the message, used in error messages
                (for example ``"embed.callbacks[0]"``).

        Raises:
            MalformedMessage: The value is not a mapping, or a key has the wrong type.
                ``field`` names the key, e.g. ``"embed.callbacks[0].task"``.
        """
        if not isinstance(value, Mapping):
            raise MalformedMessage(field, f"a signature must be a mapping, got {_kind(value)}")
        extra = {k: v for k, v in value.items() if k not in _KNOWN_KEYS}
        for key in extra:
            if not isinstance(key, str):
                raise MalformedMessage(field, f"signature keys must be strings, got {key!r}")
        args = value.get("args", ())
        if args is None:  # Celery's Signature(args=None) means ()
            args = ()
        kwargs = value.get("kwargs", {})
        if kwargs is None:
            kwargs = {}
        options = value.get("options", {})
        if options is None:
            options = {}
        immutable = value.get("immutable", False)
        if immutable is None:
            immutable = False
        try:
            return cls(
                task=value.get("task"),  # type: ignore[arg-type]  # checked by the validator
                args=args,
                kwargs=kwargs,
                options=options,
                subtask_type=value.get("subtask_type"),
                immutable=immutable,
                chord_size=value.get("chord_size"),
                extra=extra,
            )
        except ValidationError as exc:
            raise MalformedMessage(f"{field}.{exc.field}", exc.problem) from None

    def clone(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """Return a copy with partial arguments applied, as Celery does for callbacks.

        This is the merge that Celery's ``Signature.apply_async`` performs before sending:

        * ``args`` are **prepended** to the stored args, unless the signature is
          immutable (the worker calls ``callback.clone((retval,))``, so a parent's
          return value becomes the first argument).
        * ``kwargs`` are merged over the stored kwargs, unless immutable.
        * ``options`` are merged over the stored options; options whose value is
          ``None`` are dropped first, and a stored ``group_id``, ``stamped_headers`` or
          stamped header value is never overridden (Celery's ``_IMMUTABLE_OPTIONS``).
          Options are merged even for immutable signatures.

        The subclass and every other field (including fields a subclass adds) are kept.
        """
        new_options: Mapping[str, Any] = self.options
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            protected = _IMMUTABLE_OPTIONS
            stamped = self.options.get("stamped_headers")
            if stamped:
                protected = protected.union(stamped)
            new_options = {
                **self.options,
                **{k: v for k, v in given.items() if k not in protected or k not in self.options},
            }
        if self.immutable:
            return attrs.evolve(self, options=new_options)
        new_args = tuple(args) + self.args if args else self.args
        new_kwargs = {**self.kwargs, **kwargs} if kwargs else self.kwargs
        return attrs.evolve(self, args=new_args, kwargs=new_kwargs, options=new_options)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _signature_problem(sig: Signature) -> tuple[str, str] | None:
    """Return ``(field, problem)`` for the first invalid field, or ``None``."""
    if not isinstance(sig.task, str) or not sig.task:
        return "task", f"must be a non-empty string, got {sig.task!r}"
    if type(sig.args) is not tuple:
        return "args", f"must be a list or tuple, got {_kind(sig.args)}"
    if not isinstance(sig.kwargs, dict):
        return "kwargs", f"must be a mapping, got {_kind(sig.kwargs)}"
    for key in sig.kwargs:
        if not isinstance(key, str):
            return "kwargs", f"keys must be strings, got {key!r}"
    if not isinstance(sig.options, dict):
        return "options", f"must be a mapping, got {_kind(sig.options)}"
    for key in sig.options:
        if not isinstance(key, str):
            return "options", f"keys must be strings, got {key!r}"
    if sig.subtask_type is not None and not isinstance(sig.subtask_type, str):
        return "subtask_type", f"must be a string or null, got {_kind(sig.subtask_type)}"
    if not isinstance(sig.immutable, bool):
        return "immutable", f"must be a boolean, got {_kind(sig.immutable)}"
    if sig.chord_size is not None and (
        not isinstance(sig.chord_size, int) or isinstance(sig.chord_size, bool)
    ):
        return "chord_size", f"must be an integer or null, got {_kind(sig.chord_size)}"
    if not isinstance(sig.extra, dict):
        return "extra", f"must be a mapping, got {_kind(sig.extra)}"
    for key in sig.extra:
        if key in _KNOWN_KEYS:
            return "extra", f"{key!r} is a signature field, not an extra key"
        if not isinstance(key, str):
            return "extra", f"keys must be strings, got {key!r}"
    return None
