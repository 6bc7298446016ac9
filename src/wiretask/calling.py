"""From a call to a message: option resolution and validation for ``apply_async``.

This module turns ``(task name, args, kwargs, options)`` into a validated ``TaskMessage``
plus where and when to send it. It does no I/O and reads no clock (``now`` is passed in),
so every rule here is unit-testable on its own; ``wiretask.app`` adds the I/O.

The rules follow Celery's calling API (``celery/app/task.py`` ``apply_async``) with the documented
places where wiretask refuses what Celery silently accepts (``spec/PROTOCOL.md``
§12): unknown options, options of the wrong type, ``countdown`` with
``eta``, priorities outside the transport's range, and unknown codec names are all
``ValidationError``s naming the option, raised before anything is sent.
"""

from __future__ import annotations

import difflib
import inspect
import keyword
import numbers
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from wiretask._ids import new_id as new_task_id  # the one id generator, by its old name here
from wiretask._saferepr import safe_repr
from wiretask.codecs import Registry
from wiretask.errors import ArgumentsError, ValidationError
from wiretask.protocol.envelope import RESERVED_HEADERS, TaskMessage
from wiretask.protocol.frame import Route
from wiretask.protocol.signature import Signature
from wiretask.protocol.timing import resolve_eta, resolve_expires
from wiretask.retry import RetryPolicy
from wiretask.transports.base import Capabilities

__all__ = [
    "CALL_OPTIONS",
    "TASK_OPTIONS",
    "Call",
    "CallBuilder",
    "CallContext",
    "argument_checker",
    "build_call",
    "check_options",
    "new_task_id",
    "safe_repr",
]

#: Options that a task attribute may set and a call may override (call > task > setting).
TASK_OPTIONS: Mapping[str, str | None] = {
    # option          -> the app setting that provides the default (None: no setting)
    "queue": "task_default_queue",
    # The exchange and routing key come from the router (``wiretask.routing``), which
    # applies ``task_default_exchange``/``task_default_routing_key`` as Celery does (on a
    # direct exchange they are not used: the message goes to the default exchange).
    "exchange": None,
    "routing_key": None,
    "priority": "task_default_priority",
    "serializer": "task_serializer",
    "compression": "task_compression",
    "delivery_mode": "task_default_delivery_mode",
    "time_limit": "task_time_limit",
    "soft_time_limit": "task_soft_time_limit",
    "ignore_result": "task_ignore_result",
    "expires": None,
}

#: Options that must have a value: an explicit ``None`` falls back to the app setting
#: instead of clearing (a message always has a serializer, a queue and a delivery mode).
_REQUIRED = frozenset({"queue", "serializer", "delivery_mode", "ignore_result"})

#: Every option ``apply_async``/``send_task`` accepts. Anything else is refused by name.
CALL_OPTIONS = frozenset(
    {
        *TASK_OPTIONS,
        "countdown",
        "eta",
        "retry",
        "retry_policy",
        "link",
        "link_error",
        "headers",
        "task_id",
        "shadow",
        "argsrepr",
        "kwargsrepr",
        "reply_to",
        "stamps",
        "compression_threshold",
        # Canvas and task-retry internals, as in Celery: they map onto headers/embed.
        "group_id",
        "group_index",
        "root_id",
        "parent_id",
        "chain",
        "chord",
        "retries",
        "replaced_task_nesting",
        "add_to_parent",
        # Celery's: the exchange's type, read by the router (``wiretask.routing``).
        "exchange_type",
    }
)

_DELIVERY_MODES: Mapping[object, int] = {1: 1, 2: 2, "transient": 1, "persistent": 2}

def argument_checker(signature: inspect.Signature) -> Callable[..., None] | None:
    """A function with ``signature``'s parameters and an empty body (Celery's
    ``head_from_fun``): calling it binds arguments the way calling the task would, in C,
    about 15x faster than ``Signature.bind``. It raises ``TypeError`` when they do not
    bind. Defaults become ``None`` and annotations are dropped: only the shape counts.
    ``None`` if the signature cannot be written as a ``def`` (never for a real function).
    """
    params = list(signature.parameters.values())
    last_positional_only = max(
        (i for i, param in enumerate(params) if param.kind is param.POSITIONAL_ONLY), default=-1
    )
    parts: list[str] = []
    keyword_only = False
    for index, param in enumerate(params):
        kind = param.kind
        if not param.name.isidentifier() or keyword.iskeyword(param.name):
            return None
        if kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
            keyword_only = True
        elif kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
        else:
            if kind is param.KEYWORD_ONLY and not keyword_only:
                parts.append("*")
                keyword_only = True
            parts.append(param.name if param.default is param.empty else f"{param.name}=None")
            if index == last_positional_only:
                parts.append("/")
    namespace: dict[str, Any] = {}
    try:
        exec(f"def check({', '.join(parts)}):\n    return None\n", namespace)  # noqa: S102
    except SyntaxError:
        return None
    checker: Callable[..., None] = namespace["check"]
    return checker


@attrs.frozen(kw_only=True)
class CallContext:
    """Who is calling: the parts of a message that come from the sender, not the call."""

    origin: str
    reply_to: str
    #: The request of the task running in this thread, if the call happens inside one
    #: (so children get ``parent_id``/``root_id`` like Celery's).
    parent_id: str | None = None
    root_id: str | None = None


@attrs.frozen(kw_only=True)
class Call:
    """A validated call, ready to encode and publish."""

    message: TaskMessage
    route: Route
    #: Hand to the transport as ``not_before`` (the eta) when it delays natively.
    eta: datetime | None
    retry: bool
    retry_policy: RetryPolicy
    compression_threshold: int | None = None


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse unknown options by name, with a suggestion for likely typos."""
    for key in options:
        if key not in CALL_OPTIONS:
            close = difflib.get_close_matches(key, CALL_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValidationError(key, f"unknown option{hint}", value=options[key])


def _check_args(args: object, kwargs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's args as a tuple and a copy of its kwargs (the message must not share
    the caller's dict), or ``ArgumentsError``."""
    if type(args) is tuple and type(kwargs) is dict:  # the common case, by exact type
        for key in kwargs:
            if type(key) is not str:
                break
        else:
            return args, kwargs.copy()
    if args is None:
        args = ()
    elif not isinstance(args, list | tuple):
        raise ArgumentsError(
            "args", f"task args must be a list or tuple, got {type(args).__name__}", value=args
        )
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, Mapping):
        raise ArgumentsError(
            "kwargs", f"task kwargs must be a mapping, got {type(kwargs).__name__}", value=kwargs
        )
    else:
        for key in kwargs:
            if not isinstance(key, str):
                raise ArgumentsError("kwargs", f"keyword names must be strings, got {key!r}")
    return tuple(args), dict(kwargs)


def _number(field: str, value: object, *, minimum: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValidationError(field, f"must be a number of seconds, got {value!r}", value=value)
    number = float(value)
    if minimum is not None and number < minimum:
        raise ValidationError(field, f"must be >= {minimum:g}, got {value!r}", value=value)
    return number


def _limit(field: str, value: object) -> float | None:
    """A time limit for the ``timelimit`` header, as Celery writes it: the number as
    given (an int stays an int: ``30``, not ``30.0``, on every wire)."""
    number = _number(field, value, minimum=0)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return number


def _string(field: str, value: object, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"must be a non-empty string, got {value!r}", value=value)
    return value


def _signatures(
    field: str, value: object, *, keep_empty: bool = False
) -> tuple[Signature, ...] | None:
    """``link``/``link_error``/``chain``: one signature, a list of them, or None. An
    empty list is None, unless ``keep_empty`` (a chain's last task carries ``[]``, as
    Celery sends it)."""
    if value is None:
        return None
    items: Iterable[object] = (
        [value] if isinstance(value, Signature | Mapping) else value  # type: ignore[assignment]
    )
    if not isinstance(items, list | tuple):
        raise ValidationError(field, f"must be a signature or a list of signatures, got {value!r}")
    result = []
    for index, item in enumerate(items):
        if isinstance(item, Signature):
            result.append(item)
        elif isinstance(item, Mapping):
            result.append(Signature.from_dict(dict(item), field=f"{field}[{index}]"))
        else:
            raise ValidationError(
                f"{field}[{index}]", f"must be a signature (task.s(...)), got {item!r}"
            )
    return tuple(result) if result or keep_empty else None


def _priority(value: object, capabilities: Capabilities | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("priority", f"must be an integer, got {value!r}", value=value)
    top = capabilities.max_priority if capabilities is not None else 255
    if not 0 <= value <= top:
        raise ValidationError(
            "priority", f"must be between 0 and {top} on this transport, got {value}", value=value
        )
    return value


#: The last ``task_publish_retry_policy`` setting parsed, as ``(snapshot, policy)``: the
#: setting is a dict that rarely changes, and parsing it is a third of a call's cost.
_last_policy: tuple[list[tuple[object, type, object]], RetryPolicy] | None = None


def _settings_policy(setting: object) -> RetryPolicy:
    """The ``task_publish_retry_policy`` setting as a ``RetryPolicy``.

    A dict setting is parsed again only when its content changed (compared key by key,
    with the value's type, so ``1`` and ``True`` differ, and a copy of list values); the
    check is cheaper than parsing it.
    """
    global _last_policy
    if isinstance(setting, RetryPolicy):
        return setting
    if setting is None:
        setting = {}
    if type(setting) is not dict and not isinstance(setting, Mapping):  # dict: no ABC check
        return RetryPolicy.from_options(setting)  # type: ignore[arg-type]  # raises
    snapshot = [
        (key, type(value), tuple(value) if isinstance(value, list | set) else value)
        for key, value in setting.items()
    ]
    last = _last_policy
    if last is not None and last[0] == snapshot:
        return last[1]
    policy = RetryPolicy.from_options(setting)
    _last_policy = (snapshot, policy)
    return policy


#: Options that do not change from call to call in a typical program: their resolved,
#: validated form is a :class:`_Plan`, cached per task name and option values.
_STATIC = frozenset(
    {*(key for key in TASK_OPTIONS if key != "expires"), "retry", "compression_threshold",
     "shadow", "reply_to"}
)

#: Per-call options that are rare in a hot loop; their handling is skipped when absent.
_RARE = CALL_OPTIONS - _STATIC - {"countdown", "eta", "expires", "task_id", "retry_policy"}


def resolve_options(
    options: Mapping[str, Any],
    task_defaults: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge call options over task attributes over app settings.

    A call-time ``None`` clears a task default (Celery: ``soft_time_limit=None`` sends no
    soft limit even if the task has one), except for options a message must have
    (``queue``, ``serializer``, ``delivery_mode``), which then fall back to the setting.
    """
    merged = dict(options)
    for key, setting in TASK_OPTIONS.items():
        if key in options:
            value = options[key]
            if value is None and key in _REQUIRED and setting is not None:
                value = settings.get(setting)
        else:
            value = task_defaults.get(key)
            if value is None and setting is not None:
                value = settings.get(setting)
        merged[key] = value
    return merged


@attrs.frozen(kw_only=True, eq=False)
class _Plan:
    """What a task's static options resolve to: validated once, shared by its calls.

    ``template`` is a message with every static field set and checked (its ``id`` is a
    placeholder); each call derives its own message from it, checking only the fields
    that vary per call. The plan also remembers what it was resolved against, so a
    changed setting, codec registry, transport or task default makes a new one.
    """

    template: TaskMessage
    route: Route
    retry: bool
    compression_threshold: int | None
    #: The task's default ``expires`` (a call's ``expires=`` replaces it, ``None`` too).
    expires: object
    #: An explicit ``reply_to`` option; otherwise each call uses its context's.
    reply_to: str | None
    # What the plan was resolved against (compared by identity or version on each use).
    task_defaults: Mapping[str, Any] | None
    settings_version: object
    registry_version: int
    capabilities: Capabilities | None


def _plan(
    name: str,
    options: Mapping[str, Any],
    *,
    task_defaults: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    settings_version: object,
    registry: Registry,
    capabilities: Capabilities | None,
) -> _Plan:
    """Resolve and validate the static options of a call (see ``_STATIC``)."""
    _string("task", name, optional=False)
    opts = resolve_options(options, task_defaults or {}, settings)

    queue = _string("queue", opts["queue"], optional=False)
    assert queue is not None
    exchange = opts["exchange"]
    if exchange is None:
        exchange = ""  # the default exchange
    if not isinstance(exchange, str):
        raise ValidationError("exchange", f"must be a string, got {exchange!r}", value=exchange)
    routing_key = _string("routing_key", opts["routing_key"])
    priority = _priority(opts["priority"], capabilities)

    serializer = registry.serializer(_string("serializer", opts["serializer"], optional=False)
                                     or "json")
    compression_name = _string("compression", opts["compression"])
    compression = (
        registry.compressor(compression_name).content_type if compression_name else None
    )
    threshold = opts.get("compression_threshold", settings.get("task_compression_threshold"))
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0
    ):
        raise ValidationError(
            "compression_threshold", f"must be a byte count >= 0, got {threshold!r}"
        )

    delivery_mode = _DELIVERY_MODES.get(opts["delivery_mode"])
    if delivery_mode is None:
        raise ValidationError(
            "delivery_mode",
            f"must be 1, 2, 'transient' or 'persistent', got {opts['delivery_mode']!r}",
        )

    hard = _limit("time_limit", opts["time_limit"])
    soft = _limit("soft_time_limit", opts["soft_time_limit"])

    retry = opts.get("retry", settings.get("task_publish_retry", True))
    if not isinstance(retry, bool):
        raise ValidationError("retry", f"must be True or False, got {retry!r}", value=retry)

    ignore_result = opts["ignore_result"]
    if not isinstance(ignore_result, bool):
        raise ValidationError("ignore_result", f"must be True or False, got {ignore_result!r}")

    # Only fields that differ from TaskMessage's defaults are passed (None: left out): a
    # default is valid by construction. The order is the field order, so the first bad
    # value is the one reported.
    fields: tuple[tuple[str, Any], ...] = (
        ("task", name),
        ("id", "-"),  # each call sets its own
        ("shadow", _string("shadow", opts.get("shadow"))),
        ("timelimit", None if hard is None and soft is None else (hard, soft)),
        ("ignore_result", ignore_result),
        ("priority", priority),
        ("delivery_mode", delivery_mode),
        ("content_type", serializer.content_type),
        ("content_encoding", serializer.content_encoding),
        ("compression", compression),
    )
    template = TaskMessage(**{key: value for key, value in fields if value is not None})
    return _Plan(
        template=template,
        route=Route(queue, exchange, routing_key),
        retry=retry,
        compression_threshold=threshold,
        expires=opts["expires"],
        reply_to=opts.get("reply_to") or None,
        task_defaults=task_defaults,
        settings_version=settings_version,
        registry_version=registry.version,
        capabilities=capabilities,
    )


class _Shape:
    """A call's options, checked and resolved (``CallBuilder._shape``); ``call`` builds
    the message of one ``(args, kwargs)`` with them: the per-call step that
    ``CallBuilder.build`` runs once and ``CallBuilder.build_many`` once per call."""

    __slots__ = ("argsrepr", "eta", "fields", "kwargsrepr", "own_root", "plan", "policy",
                 "task_id", "valid")

    def __init__(
        self, plan: _Plan, fields: dict[str, Any], valid: dict[str, Any],
        task_id: str | None, eta: datetime | None, policy: RetryPolicy, own_root: bool,
    ) -> None:
        self.plan = plan
        self.fields = fields
        self.valid = valid
        self.task_id = task_id
        self.eta = eta
        self.policy = policy
        self.own_root = own_root
        self.argsrepr = fields.get("argsrepr")
        self.kwargsrepr = fields.get("kwargsrepr")

    def call(
        self, args: object, kwargs: object,
        check_arguments: Callable[[tuple[Any, ...], dict[str, Any]], None] | None,
        new_id: Callable[[], str], *, first: bool,
    ) -> Call:
        """The call of ``args``/``kwargs`` (``first``: the first of its batch; a
        ``task_id`` option can name only that one)."""
        call_args, call_kwargs = _check_args(args, kwargs)
        if check_arguments is not None:
            check_arguments(call_args, call_kwargs)
        own = self.valid.copy()
        task_id = self.task_id
        if task_id is None:
            own["id"] = call_id = new_id()
        elif not first:
            raise ValidationError(
                "task_id", "one task id cannot name several calls", value=task_id
            )
        else:
            call_id = task_id
        if self.own_root:
            own["root_id"] = call_id
        own["args"] = call_args
        own["kwargs"] = call_kwargs
        if self.argsrepr is None:
            own["argsrepr"] = safe_repr(call_args)
        if self.kwargsrepr is None:
            own["kwargsrepr"] = safe_repr(call_kwargs)
        plan = self.plan
        return Call(
            message=TaskMessage.derive(plan.template, self.fields, valid=own),
            route=plan.route,
            eta=self.eta,
            retry=plan.retry,
            retry_policy=self.policy,
            compression_threshold=plan.compression_threshold,
        )


class CallBuilder:
    """Builds calls for one app: ``(name, args, kwargs, options)`` to a validated ``Call``.

    Every option is validated on every call, but the static ones (routing, codecs,
    limits, ``retry``: see ``_STATIC``) only once per distinct set of values: their
    validated form is a plan, cached per task name and static option values and rebuilt
    when the settings (``settings._version``), the codec registry, the transport's
    capabilities or the task's defaults change. Per call there remain the argument
    checks, the task id, the clock-dependent ``eta``/``expires``, the ``argsrepr`` and the
    options that vary by nature (links, headers, ids).

    Args:
        registry: Where serializers and compressors are looked up.
        settings: The app settings (a mapping; if it has an integer ``_version`` that
            changes on every mutation, as ``wiretask.app.Settings`` has, plans are cached).
        max_plans: How many plans to keep (the cache is emptied when full).
    """

    def __init__(
        self, registry: Registry, settings: Mapping[str, Any], *, max_plans: int = 256
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.max_plans = max_plans
        self._plans: dict[tuple[object, ...], _Plan] = {}

    def build(
        self,
        name: str,
        args: object,
        kwargs: object,
        options: Mapping[str, Any],
        *,
        now: datetime,
        context: CallContext,
        task_defaults: Mapping[str, Any] | None = None,
        capabilities: Capabilities | None = None,
        check_arguments: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
        new_id: Callable[[], str] = new_task_id,
    ) -> Call:
        """Validate a call and build its message. Raises before anything is sent:

        * ``ArgumentsError`` (also a ``TypeError``) for args/kwargs of the wrong type or
          that do not bind to the task's signature (``check_arguments``);
        * ``ValidationError`` naming the option for an unknown option, a value of the
          wrong type, ``countdown`` with ``eta``, an unparsable or pre-1970
          ``eta``/``expires``, a priority outside the transport's range, or a malformed
          header;
        * ``UnknownCodec`` for an unknown serializer or compressor name.

        The single-call path of ``apply_async``/``delay``/``send_task``: the same two
        steps as :meth:`build_many` (the options' ``_Shape``, then ``_Shape.call``)
        without a batch of one around them.
        """
        shape = self._shape(name, options, now=now, context=context,
                            task_defaults=task_defaults, capabilities=capabilities)
        return shape.call(args, kwargs, check_arguments, new_id, first=True)

    def build_many(
        self,
        name: str,
        arguments: Iterable[tuple[object, object]],
        options: Mapping[str, Any],
        *,
        now: datetime,
        context: CallContext,
        task_defaults: Mapping[str, Any] | None = None,
        capabilities: Capabilities | None = None,
        check_arguments: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
        new_id: Callable[[], str] = new_task_id,
    ) -> list[Call]:
        """Several calls of one task with the same options: one ``(args, kwargs)`` pair
        each. The options are resolved once (one ``now``: the same ``eta``/``expires``
        for all); each call gets its own id and argument checks. Raises as :meth:`build`,
        and ``ValidationError`` for a ``task_id`` option given to more than one call."""
        shape = self._shape(name, options, now=now, context=context,
                            task_defaults=task_defaults, capabilities=capabilities)
        call = shape.call
        calls: list[Call] = []
        for args, kwargs in arguments:
            calls.append(call(args, kwargs, check_arguments, new_id, first=not calls))
        return calls

    def _shape(
        self,
        name: str,
        options: Mapping[str, Any],
        *,
        now: datetime,
        context: CallContext,
        task_defaults: Mapping[str, Any] | None,
        capabilities: Capabilities | None,
    ) -> _Shape:
        """Everything about a call that its arguments do not change: the options
        checked and resolved (the cached plan, and the per-call options at ``now``)."""
        if type(name) is not str or not name:
            _string("task", name, optional=False)
        static: list[tuple[str, type, object]] = []
        rare = False
        for key in options:
            if key in _STATIC:
                value = options[key]
                static.append((key, type(value), value))
            elif key not in CALL_OPTIONS:
                check_options(options)  # raises, naming it
            elif key in _RARE:
                rare = True
        plan = self._plan(name, options, static, task_defaults, capabilities)

        # ``valid``: what this code makes valid by construction; ``fields``: what comes
        # from the caller, checked by TaskMessage.
        get = options.get
        valid: dict[str, Any] = {"origin": context.origin}
        fields: dict[str, Any] = {}
        task_id = get("task_id")
        if task_id is not None:
            if type(task_id) is not str or not task_id:
                _string("task_id", task_id)
            fields["id"] = task_id
        eta = None
        if "countdown" in options or "eta" in options:
            eta = resolve_eta(now=now, countdown=_number("countdown", get("countdown")),
                              eta=get("eta"))
            if eta is not None:
                fields["eta"] = eta  # checked again: the aware/range rules live there
        expires = get("expires", plan.expires)
        if expires is not None:
            fields["expires"], valid["expiration"] = resolve_expires(now=now, expires=expires)

        policy = _settings_policy(self.settings.get("task_publish_retry_policy"))
        call_policy = get("retry_policy")
        if call_policy is not None:
            if isinstance(call_policy, RetryPolicy):
                policy = call_policy
            elif isinstance(call_policy, Mapping):
                policy = policy.merge(call_policy)
            else:
                raise ValidationError(
                    "retry_policy", f"must be a mapping or a RetryPolicy, got {call_policy!r}"
                )

        if rare:
            _rare_fields(options, fields)
        if "parent_id" not in fields and context.parent_id is not None:
            valid["parent_id"] = context.parent_id
        if plan.reply_to is not None:
            fields["reply_to"] = plan.reply_to
        elif context.reply_to:
            valid["reply_to"] = context.reply_to
        # What differs per call: the id (and root id), the arguments and their reprs.
        own_root = False  # each call is its own root: no root_id option, no parent task
        if "root_id" not in fields:
            if context.root_id is None:
                own_root = True
            else:
                valid["root_id"] = context.root_id
        return _Shape(plan, fields, valid, task_id, eta, policy, own_root)

    def _plan(
        self,
        name: str,
        options: Mapping[str, Any],
        static: list[tuple[str, type, object]],
        task_defaults: Mapping[str, Any] | None,
        capabilities: Capabilities | None,
    ) -> _Plan:
        settings_version = getattr(self.settings, "_version", None)
        key = (name, *static)
        try:
            plan = self._plans.get(key)
        except TypeError:  # an unhashable option value: not cached (and likely invalid)
            plan = None
            settings_version = None
        if (
            plan is not None
            and plan.settings_version == settings_version
            and plan.task_defaults is task_defaults
            and plan.registry_version == self.registry.version
            # Equal capabilities will do: an app's asyncio transport (one per event
            # loop) has capabilities equal to its sync transport's, not the same object.
            and (plan.capabilities is capabilities or plan.capabilities == capabilities)
        ):
            return plan
        plan = _plan(
            name, {key: options[key] for key, _, _ in static}, task_defaults=task_defaults,
            settings=self.settings, settings_version=settings_version,
            registry=self.registry, capabilities=capabilities,
        )
        if settings_version is not None:
            if len(self._plans) >= self.max_plans:
                self._plans.clear()
            self._plans[key] = plan
        return plan


def _rare_fields(options: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """Validate the per-call options a hot loop rarely passes, into message fields."""
    get = options.get
    headers = get("headers") or {}
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) for k in headers):
        raise ValidationError("headers", f"must be a mapping with string keys, got {headers!r}")
    clash = sorted(RESERVED_HEADERS.intersection(headers))
    if clash:
        # Celery merges custom headers over its own, so headers={"task": ...} silently
        # re-routes the message; wiretask refuses (spec: "Stricter than Celery").
        raise ValidationError(
            "headers", f"{', '.join(map(repr, clash))} would override protocol headers; "
            "use the option of the same meaning instead", value=dict(headers),
        )
    stamps = get("stamps") or {}
    if not isinstance(stamps, Mapping):
        raise ValidationError("stamps", f"must be a mapping, got {stamps!r}")
    chord = get("chord")
    if chord is not None and not isinstance(chord, Signature):
        chord = Signature.from_dict(chord, field="chord")
    # The order is the field order, so the first bad value is the one reported.
    rare: tuple[tuple[str, Any], ...] = (
        ("group", _string("group_id", get("group_id"))),
        ("group_index", get("group_index")),
        ("retries", get("retries") or None),
        ("root_id", _string("root_id", get("root_id"))),
        ("parent_id", _string("parent_id", get("parent_id"))),
        ("argsrepr", get("argsrepr") or None),  # "" means "not given", as Celery reads it
        ("kwargsrepr", get("kwargsrepr") or None),
        ("replaced_task_nesting", get("replaced_task_nesting") or None),
        ("stamped_headers", tuple(stamps) or None),
        ("stamps", dict(stamps) if stamps else None),
        ("extra_headers", dict(headers) if headers else None),
        ("callbacks", _signatures("link", get("link"))),
        ("errbacks", _signatures("link_error", get("link_error"))),
        ("chain", _signatures("chain", get("chain"), keep_empty=True)),
        ("chord", chord),
    )
    for key, value in rare:
        if value is not None:
            fields[key] = value


def build_call(
    name: str,
    args: object,
    kwargs: object,
    options: Mapping[str, Any],
    *,
    now: datetime,
    registry: Registry,
    settings: Mapping[str, Any],
    context: CallContext,
    task_defaults: Mapping[str, Any] | None = None,
    capabilities: Capabilities | None = None,
    check_arguments: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
    new_id: Callable[[], str] = new_task_id,
) -> Call:
    """One call, with nothing cached: ``CallBuilder(registry, settings).build(...)``."""
    return CallBuilder(registry, settings, max_plans=0).build(
        name, args, kwargs, options, now=now, context=context, task_defaults=task_defaults,
        capabilities=capabilities, check_arguments=check_arguments, new_id=new_id,
    )
