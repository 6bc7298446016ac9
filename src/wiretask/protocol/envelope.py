"""The task message: one typed, immutable value for a Celery protocol-2 message.

A :class:`TaskMessage` holds everything a Celery task message says: the protocol-2
application headers, the body (``args``, ``kwargs`` and the embed: callbacks,
errbacks, chain, chord) and the message properties. It knows nothing about bytes:
:mod:`wiretask.protocol.celery` turns it into a :class:`~wiretask.protocol.frame.Frame`
and back.

It validates on construction, so an invalid message cannot exist; derive new ones with
:func:`attrs.evolve`.

Building a message is on the hot path of every ``apply_async``, and the benchmark holds it
to a small fraction of Celery's ``as_task_v2``. attrs' generated ``__init__`` stores all 36
fields one by one and would cost more than that on its own, so ``TaskMessage`` declares
its fields with attrs (repr, equality, ``attrs.evolve``, ``attrs.fields``) but has a
hand-written ``__init__``: it stores only the fields you pass, checks only those (a
default is valid by construction), and leaves every other field to a class-level default.
A message with four fields is built with four checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import attrs

from wiretask.errors import ArgumentsError, ValidationError
from wiretask.protocol.signature import Signature
from wiretask.protocol.timing import EPOCH

__all__ = [
    "CONTENT_ENCODINGS",
    "EMBED_KEYS",
    "PROPERTY_NAMES",
    "PROTOCOL_HEADERS",
    "RESERVED_HEADERS",
    "TaskMessage",
]

#: The protocol-2 application headers in the order Celery 5.7 writes them
#: (``celery/app/amqp.py``, ``AMQP.as_task_v2``). Every one is always present on the wire.
PROTOCOL_HEADERS: tuple[str, ...] = (
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
)

#: Header names a custom header may not use: the protocol headers and ``compression``
#: (which kombu adds when the body is compressed).
RESERVED_HEADERS: frozenset[str] = frozenset((*PROTOCOL_HEADERS, "compression"))

#: The keys of the body's third element, the embed, in Celery's order.
EMBED_KEYS: tuple[str, ...] = ("callbacks", "errbacks", "chain", "chord")

#: Message properties that have their own :class:`TaskMessage` field.
PROPERTY_NAMES: frozenset[str] = frozenset(
    (
        "correlation_id",
        "reply_to",
        "priority",
        "delivery_mode",
        "expiration",
        "content_type",
        "content_encoding",
    )
)

#: The ``content_encoding`` that goes with each serializer content type (Kombu's
#: registrations). Used to default ``content_encoding`` from ``content_type``.
CONTENT_ENCODINGS: Mapping[str, str] = {
    "application/json": "utf-8",
    "application/x-msgpack": "binary",
    "application/x-yaml": "utf-8",
    "application/x-python-serialize": "binary",
    "application/data": "binary",
    "application/text": "utf-8",
    "text/plain": "utf-8",
}


class _EmptyMapping(dict[str, Any]):
    """The shared default for mapping fields: an empty ``dict`` that refuses mutation.

    It is a ``dict`` so that serializers and ``==`` treat it as one; it refuses
    mutation because one instance is shared by every message that did not set the field.
    """

    __slots__ = ()

    def _immutable(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a TaskMessage's mappings are read-only; use attrs.evolve")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __repr__(self) -> str:
        return "{}"


_EMPTY: Mapping[str, Any] = _EmptyMapping()


# slots=False: a field the caller did not pass is not stored at all and reads the class
# attribute holding its default (set just after the class), which needs an instance
# __dict__ (a slot has no such fallback). Assignment still raises FrozenInstanceError.
@attrs.frozen(kw_only=True, slots=False, init=False)
class TaskMessage:
    """One Celery protocol-2 task message: headers, body and properties.

    Build it with keyword arguments; ``task`` and ``id`` are required, everything else
    has a default. A bad value raises :class:`~wiretask.errors.ValidationError` naming
    the field (:class:`~wiretask.errors.ArgumentsError`, also a ``TypeError``, for
    ``args``/``kwargs``); an unknown or missing keyword raises ``TypeError``.

    Header fields (protocol 2, in wire order):

    Attributes:
        task: Task name. Required, non-empty.
        id: Task id. Required, non-empty (Celery uses a UUID4 string).
        lang: Implementation language; always ``"py"`` from Celery.
        shadow: Display name for logs and events, or ``None``.
        eta: Do not run before this aware datetime (not before 1970), or ``None``.
        expires: Do not run after this aware datetime, or ``None``.
        group: Group id, or ``None``.
        group_index: Position within the group, or ``None``.
        retries: How many times the task has been retried (>= 0).
        timelimit: ``(hard, soft)`` seconds, each a non-negative number or ``None``.
            Hard first, as Celery's code sends it (its docs say otherwise).
        root_id: Id of the first task of the workflow, or ``None``.
        parent_id: Id of the task that sent this one, or ``None``.
        argsrepr: Display form of ``args`` (Celery: ``saferepr``), or ``None``.
        kwargsrepr: Display form of ``kwargs``, or ``None``.
        origin: Node name of the sender (``gen<pid>@<host>``), or ``None``.
        ignore_result: Do not store the result.
        replaced_task_nesting: How many times the task was replaced (>= 0).
        stamped_headers: Names of the stamps, or ``None``.
        stamps: Stamp values by name.
        extra_headers: Any other application headers, round-tripped untouched. A name
            that collides with a protocol header (or ``compression``) is refused.

    Body fields:

    Attributes:
        args: Positional arguments. A list is accepted and stored as a tuple.
        kwargs: Keyword arguments; keys must be strings.
        callbacks: ``link`` signatures (run on success), or ``None``. A single
            signature or a list is accepted and stored as a tuple.
        errbacks: ``link_error`` signatures (run on failure), or ``None``.
        chain: The rest of a chain, **next task last** (Celery's order), or ``None``.
        chord: The chord body to run when the group completes, or ``None``.
        extra_embed: Any other keys of a received embed, written back after the four
            known ones. Celery writes none; kept so that nothing a peer sent is lost.

    Property fields:

    Attributes:
        correlation_id: ``None`` means "the task id" (what Celery sends); a value equal
            to ``id`` is stored as ``None``.
        reply_to: Reply queue / sender oid, or ``None`` (written as ``""``); ``""`` is
            stored as ``None``.
        priority: 0-255, or ``None`` for "not set" (the property is omitted).
        delivery_mode: 2 persistent (default) or 1 transient.
        expiration: Broker TTL in milliseconds as a decimal string, or ``None``.
        content_type: Serializer MIME type of the uncompressed body.
        content_encoding: Character encoding of the uncompressed body. When not given
            it follows ``content_type`` (``binary`` for msgpack, ``utf-8`` for JSON).
        compression: Canonical compression MIME type (the ``compression`` header), or
            ``None`` for an uncompressed body.
        extra_properties: Any other message properties, round-tripped untouched. A name
            that has its own field is refused.

    Containers are not copied when they already have the stored type (a ``dict`` for
    mappings, a ``tuple`` for sequences): the message takes ownership, so do not mutate
    them afterwards. Mapping fields that were not given share one read-only empty dict.
    """

    # -- headers ----------------------------------------------------------------------
    task: str
    id: str
    lang: str = "py"
    shadow: str | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    group: str | None = None
    group_index: int | None = None
    retries: int = 0
    timelimit: tuple[float | None, float | None] = (None, None)
    root_id: str | None = None
    parent_id: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    replaced_task_nesting: int = 0
    stamped_headers: tuple[str, ...] | None = None
    stamps: Mapping[str, Any] = _EMPTY
    extra_headers: Mapping[str, Any] = _EMPTY
    # -- body -------------------------------------------------------------------------
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = _EMPTY
    callbacks: tuple[Signature, ...] | None = None
    errbacks: tuple[Signature, ...] | None = None
    chain: tuple[Signature, ...] | None = None
    chord: Signature | None = None
    extra_embed: Mapping[str, Any] = _EMPTY
    # -- properties -------------------------------------------------------------------
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    delivery_mode: int = 2
    expiration: str | None = None
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    compression: str | None = None
    extra_properties: Mapping[str, Any] = _EMPTY

    if TYPE_CHECKING:
        # The signature type checkers see. At run time ``__init__`` takes ``**fields``
        # (see the module docstring); tests/protocol/test_envelope.py checks that this
        # list matches the attrs fields, names and defaults.
        def __init__(
            self,
            *,
            task: str,
            id: str,
            lang: str = "py",
            shadow: str | None = None,
            eta: datetime | None = None,
            expires: datetime | None = None,
            group: str | None = None,
            group_index: int | None = None,
            retries: int = 0,
            timelimit: tuple[float | None, float | None] | list[float | None] = (None, None),
            root_id: str | None = None,
            parent_id: str | None = None,
            argsrepr: str | None = None,
            kwargsrepr: str | None = None,
            origin: str | None = None,
            ignore_result: bool = False,
            replaced_task_nesting: int = 0,
            stamped_headers: tuple[str, ...] | list[str] | None = None,
            stamps: Mapping[str, Any] = _EMPTY,
            extra_headers: Mapping[str, Any] = _EMPTY,
            args: tuple[Any, ...] | list[Any] = (),
            kwargs: Mapping[str, Any] = _EMPTY,
            callbacks: Signature | tuple[Signature, ...] | list[Signature] | None = None,
            errbacks: Signature | tuple[Signature, ...] | list[Signature] | None = None,
            chain: tuple[Signature, ...] | list[Signature] | None = None,
            chord: Signature | None = None,
            extra_embed: Mapping[str, Any] = _EMPTY,
            correlation_id: str | None = None,
            reply_to: str | None = None,
            priority: int | None = None,
            delivery_mode: int = 2,
            expiration: str | None = None,
            content_type: str = "application/json",
            content_encoding: str = "utf-8",
            compression: str | None = None,
            extra_properties: Mapping[str, Any] = _EMPTY,
        ) -> None: ...

    else:

        def __init__(self, **fields: Any) -> None:
            if "task" not in fields or "id" not in fields:
                missing = [n for n in ("task", "id") if n not in fields]
                raise TypeError(f"TaskMessage() missing required keyword argument(s): {missing}")
            _store(self.__dict__, fields)

    @classmethod
    def derive(
        cls,
        base: TaskMessage,
        fields: Mapping[str, Any],
        *,
        valid: Mapping[str, Any] | None = None,
    ) -> TaskMessage:
        """A message equal to ``base`` with ``fields`` replaced, checking only ``fields``.

        What :func:`attrs.evolve` does, without checking ``base``'s fields again: the
        calling API validates the options that do not change between calls once, into a
        template message, and derives each call's message from it.

        ``valid`` holds fields stored without a check, for values the caller's own code
        made valid by construction (a fresh task id, an eta computed from a checked
        countdown, a ``repr``); they must be in the field's stored form.
        """
        message = object.__new__(cls)
        d = message.__dict__
        d.update(base.__dict__)
        if valid:
            d.update(valid)
        _store(d, fields)
        return message


    @classmethod
    def _from_checked(cls, fields: dict[str, Any]) -> TaskMessage:
        """A message made of ``fields`` as they are, for a decoder that has already
        checked every one at least as strictly as the field checks below, and put it
        in its stored form (``protocol.celery.decode``; its property tests rebuild
        every decoded message through the checking constructor and compare)."""
        message = object.__new__(cls)
        message.__dict__.update(fields)
        return message


def _store(d: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Check ``fields`` and store them in a message's ``__dict__``."""
    checks = _CHECKS
    for name, value in fields.items():
        try:
            check = checks[name]
        except KeyError:
            raise TypeError(f"TaskMessage() got an unexpected keyword argument {name!r}") from None
        d[name] = check(value)
    if "content_encoding" not in fields and "content_type" in fields:
        d["content_encoding"] = CONTENT_ENCODINGS.get(d["content_type"], "utf-8")
    # One value, one form: a correlation id equal to the task id is the default (None),
    # and an empty reply_to is none, as they are on the wire.
    if d.get("correlation_id") is not None and d["correlation_id"] == d["id"]:
        del d["correlation_id"]
    if d.get("reply_to") == "":
        del d["reply_to"]


# attrs removes the class attributes of a dict class's fields; put the defaults back so
# that a field the caller did not pass reads its default without being stored.
for _field in attrs.fields(TaskMessage):
    if _field.default is not attrs.NOTHING:
        setattr(TaskMessage, _field.name, _field.default)
del _field


# -- field checks ---------------------------------------------------------------------
#
# One function per field: takes the given value, returns the value to store (maybe
# normalised, e.g. list -> tuple) or raises ValidationError naming the field. The fast
# path of each is one or two type tests.

_Check = Callable[[Any], Any]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(field: str, problem: str, value: Any) -> NoReturn:
    raise ValidationError(field, problem, value=value)


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _required_str(name: str) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is str and value:
            return value
        if not isinstance(value, str):
            _fail(name, f"must be a string, got {_kind(value)}", value)
        if not value:
            _fail(name, "must not be empty", value)
        return value  # a non-empty str subclass

    return check


def _optional_str(name: str) -> _Check:
    def check(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        _fail(name, f"must be a string or None, got {_kind(value)}", value)

    return check


def _aware(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        _fail(name, f"must be an aware datetime or None, got {_kind(value)}", value)
    if value.tzinfo is None or value.utcoffset() is None:
        _fail(name, "must be an aware datetime (naive datetimes are ambiguous)", value)
    if value.year in (1, 9999):
        # At the very ends of datetime's range an offset can push the UTC instant out of
        # it, and every consumer that converts to UTC (or to a timestamp) would then fail.
        try:
            value.astimezone(UTC)
        except OverflowError:
            _fail(name, f"{value.isoformat()} is outside the representable range", value)
    return value


def _check_eta(value: Any) -> Any:
    if value is None:
        return None
    if _aware("eta", value) < EPOCH:
        _fail("eta", f"{value.isoformat()} is before 1970", value)
    return value


def _check_expires(value: Any) -> Any:
    return None if value is None else _aware("expires", value)


def _non_negative_int(name: str, *, optional: bool = False) -> _Check:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value) or value < 0:
            _fail(name, f"must be a non-negative integer{' or None' if optional else ''}", value)
        return value

    return check


def _check_timelimit(value: Any) -> Any:
    if not isinstance(value, tuple | list) or len(value) != 2:
        _fail("timelimit", "must be a (hard, soft) pair", value)
    for limit in value:
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            _fail("timelimit", "limits must be numbers of seconds or None", value)
        if (isinstance(limit, float) and not math.isfinite(limit)) or limit < 0:
            _fail("timelimit", "limits must be finite and non-negative", value)
    return value if type(value) is tuple else tuple(value)


def _check_bool(value: Any) -> Any:
    if type(value) is not bool:
        _fail("ignore_result", f"must be a bool, got {_kind(value)}", value)
    return value


def _check_stamped_headers(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, tuple | list):
        _fail("stamped_headers", f"must be a list of strings or None, got {_kind(value)}", value)
    for name in value:
        if not isinstance(name, str):
            _fail("stamped_headers", f"must hold strings, got {_kind(name)}", name)
    return value if type(value) is tuple else tuple(value)


def _mapping(name: str, reserved: frozenset[str] = frozenset(), why: str = "") -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not dict:
            if not isinstance(value, Mapping):
                _fail(name, f"must be a mapping, got {_kind(value)}", value)
            if not isinstance(value, _EmptyMapping):
                value = dict(value)
        for key in value:
            if not isinstance(key, str):
                _fail(name, f"keys must be strings, got {key!r}", key)
            if key in reserved:
                _fail(name, f"{key!r} {why}", key)
        return value

    return check


def _check_args(value: Any) -> Any:
    if type(value) is tuple:
        return value
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ArgumentsError("args", f"must be a list or tuple, got {_kind(value)}", value=value)


def _check_kwargs(value: Any) -> Any:
    if type(value) is not dict:
        if not isinstance(value, Mapping):
            raise ArgumentsError("kwargs", f"must be a mapping, got {_kind(value)}", value=value)
        if not isinstance(value, _EmptyMapping):
            value = dict(value)
    for key in value:
        if type(key) is not str and not isinstance(key, str):
            raise ArgumentsError("kwargs", f"keys must be strings, got {key!r}", value=key)
    return value


def _signatures(name: str, *, single: bool) -> _Check:
    def check(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, Signature) and single:
            return (value,)
        if not isinstance(value, tuple | list):
            _fail(name, f"must be a sequence of signatures or None, got {_kind(value)}", value)
        for i, sig in enumerate(value):
            if not isinstance(sig, Signature):
                _fail(f"{name}[{i}]", f"must be a Signature, got {_kind(sig)}", sig)
        return value if type(value) is tuple else tuple(value)

    return check


def _check_chord(value: Any) -> Any:
    if value is None or isinstance(value, Signature):
        return value
    _fail("chord", f"must be a Signature or None, got {_kind(value)}", value)


def _check_priority(value: Any) -> Any:
    # AMQP's priority is an octet; brokers use 0-9 (Redis buckets) or 0-255 (RabbitMQ).
    if value is None or (_is_int(value) and 0 <= value <= 255):
        return value
    _fail("priority", "must be an integer from 0 to 255 or None", value)


def _check_delivery_mode(value: Any) -> Any:
    if _is_int(value) and value in (1, 2):
        return value
    _fail("delivery_mode", "must be 1 (transient) or 2 (persistent)", value)


def _check_expiration(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return value
    _fail("expiration", "must be a TTL in milliseconds as a decimal string or None", value)


def _check_compression(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    _fail("compression", "must be a non-empty string or None", value)


_CHECKS: dict[str, _Check] = {
    "task": _required_str("task"),
    "id": _required_str("id"),
    "lang": _required_str("lang"),
    "shadow": _optional_str("shadow"),
    "eta": _check_eta,
    "expires": _check_expires,
    "group": _optional_str("group"),
    "group_index": _non_negative_int("group_index", optional=True),
    "retries": _non_negative_int("retries"),
    "timelimit": _check_timelimit,
    "root_id": _optional_str("root_id"),
    "parent_id": _optional_str("parent_id"),
    "argsrepr": _optional_str("argsrepr"),
    "kwargsrepr": _optional_str("kwargsrepr"),
    "origin": _optional_str("origin"),
    "ignore_result": _check_bool,
    "replaced_task_nesting": _non_negative_int("replaced_task_nesting"),
    "stamped_headers": _check_stamped_headers,
    "stamps": _mapping("stamps"),
    # Celery merges ``headers=`` over the protocol headers, so a custom header named
    # "task" silently replaces the task name (Celery's ``Task.apply_async``). wiretask refuses.
    "extra_headers": _mapping(
        "extra_headers", RESERVED_HEADERS, "is a protocol header; set its field instead"
    ),
    "args": _check_args,
    "kwargs": _check_kwargs,
    "callbacks": _signatures("callbacks", single=True),
    "errbacks": _signatures("errbacks", single=True),
    "chain": _signatures("chain", single=False),
    "chord": _check_chord,
    "extra_embed": _mapping("extra_embed", frozenset(EMBED_KEYS), "is an embed field"),
    "correlation_id": _optional_str("correlation_id"),
    "reply_to": _optional_str("reply_to"),
    "priority": _check_priority,
    "delivery_mode": _check_delivery_mode,
    "expiration": _check_expiration,
    "content_type": _required_str("content_type"),
    "content_encoding": _required_str("content_encoding"),
    "compression": _check_compression,
    "extra_properties": _mapping(
        "extra_properties", PROPERTY_NAMES, "has its own field; set it instead"
    ),
}
