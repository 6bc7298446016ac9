"""Routing: ``task_routes``, ``task_queues`` and the default queue, resolved as Celery does.

Celery decides where a call goes in three steps, and wiretask follows each:

1. The options of the call, over the task's own routing attributes (``queue``,
   ``exchange``, ``routing_key``, ``priority``), are looked up in ``task_routes``
   (``celery/app/routes.py``): a dict (exact names, ``*`` globs, ``re.compile`` keys), a
   list of them, router functions ``(name, args, kwargs, options, task=None)`` or dotted
   paths to one. The first router that answers gives a route (a dict, or a queue name);
   the call's and the task's own options win over it (Celery's ``lpmerge``).
2. A queue name becomes its declaration from ``task_queues`` (or a new direct queue when
   ``task_create_missing_queues`` is on, else ``QueueNotFound``); no queue at all means
   ``task_default_queue``.
3. The exchange and routing key (``celery/app/amqp.py``, ``send_task_message``): on a
   direct exchange, unless both an exchange and a routing key were given, the message
   goes to the default exchange ``""`` with the queue's name as its routing key;
   otherwise to the given exchange, else the queue's, with the given routing key, else
   the queue's.

Queue declarations come from kombu ``Queue``/``Exchange`` objects (read by their
attributes: kombu is not imported) or from dicts, as ``task_queues`` allows both.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from wiretask.errors import ImproperlyConfigured, ValidationError

__all__ = [
    "Declaration",
    "Exchange",
    "QueueBinding",
    "QueueNotFound",
    "Router",
    "declared_queues",
    "prepare_routes",
]

ExchangeType = Literal["direct", "topic"]

#: kombu ``Queue`` attributes that become queue arguments when the queue is declared.
_ARGUMENT_ATTRIBUTES = {
    "expires": "x-expires", "message_ttl": "x-message-ttl", "max_length": "x-max-length",
    "max_length_bytes": "x-max-length-bytes", "max_priority": "x-max-priority",
}
#: The keys a ``task_queues`` dict entry may hold (kombu's ``Queue.from_dict``).
_DICT_KEYS = frozenset({
    "exchange", "exchange_type", "routing_key", "binding_key", "queue_arguments", "durable",
    "auto_delete", "exclusive", "queue_durable", "queue_auto_delete", "exchange_durable",
    "exchange_auto_delete", "delivery_mode", "no_ack", "alias", "expires", "message_ttl",
    "max_length", "max_length_bytes", "max_priority",
})


class QueueNotFound(ImproperlyConfigured):
    """A call names a queue that is not in ``task_queues`` while
    ``task_create_missing_queues`` is off (Celery's ``QueueNotFound``)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} missing from task_queues", setting="task_queues")
        self.queue = queue


@runtime_checkable
class QueueBinding(Protocol):
    """A transport that binds queues to named exchanges (the Redis transport does, in
    Kombu's binding tables). The app binds a declared queue before publishing to its
    exchange, as Celery declares the queue it publishes to."""

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None: ...


@attrs.frozen
class Exchange:
    """An exchange a queue is bound to: a name and a type (``direct`` or ``topic``)."""

    name: str
    type: ExchangeType = "direct"


@attrs.frozen
class Declaration:
    """A queue as declared: its exchange, binding key and queue arguments
    (``x-max-priority``, ...; brokers that have them use them, as Kombu's Redis
    transport ignores them)."""

    name: str
    exchange: Exchange
    routing_key: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)


def _exchange_type(kind: Any, *, where: str) -> ExchangeType:
    if kind == "direct":
        return "direct"
    if kind == "topic":
        return "topic"
    raise ImproperlyConfigured(
        f"{where}: {kind!r} exchanges are not supported (direct or topic)",
        setting="task_queues",
    )


def _exchange_of(value: Any, *, where: str) -> Exchange | None:
    """An exchange given as a name, a kombu ``Exchange`` or None (unnamed)."""
    if value is None:
        return None
    if isinstance(value, str):
        return Exchange(value) if value else None
    name = getattr(value, "name", None)
    kind = getattr(value, "type", "direct") or "direct"
    if not isinstance(name, str):
        raise ImproperlyConfigured(f"{where}: not an exchange: {value!r}", setting="task_queues")
    return Exchange(name, _exchange_type(kind, where=f"{where}: exchange {name!r}")) \
        if name else None


def _declaration(
    name: str, exchange: Exchange | None, routing_key: str | None,
    arguments: Mapping[str, Any], defaults: _Defaults,
) -> Declaration:
    """Celery's ``Queues._add``: an unnamed exchange becomes the default exchange and an
    empty routing key the default routing key; ``task_queue_max_priority`` fills in a
    missing ``x-max-priority``."""
    args = dict(arguments)
    if defaults.max_priority is not None:
        args.setdefault("x-max-priority", defaults.max_priority)
    return Declaration(
        name=name,
        exchange=exchange if exchange is not None else defaults.exchange,
        routing_key=routing_key or defaults.routing_key,
        arguments=args,
    )


def _from_object(queue: Any, defaults: _Defaults, *, where: str) -> Declaration:
    """A declaration from a kombu ``Queue`` (any object with its attributes)."""
    name = getattr(queue, "name", None)
    if not isinstance(name, str) or not name:
        raise ImproperlyConfigured(f"{where}: a queue needs a name, got {queue!r}",
                                   setting="task_queues")
    if getattr(queue, "bindings", None):
        raise ImproperlyConfigured(
            f"{where}: queue {name!r} has several bindings; wiretask binds a queue to one "
            "exchange", setting="task_queues",
        )
    arguments = dict(getattr(queue, "queue_arguments", None) or {})
    for attribute, argument in _ARGUMENT_ATTRIBUTES.items():
        value = getattr(queue, attribute, None)
        if value is not None:
            arguments.setdefault(argument, value)
    routing_key = getattr(queue, "routing_key", None) or None
    if routing_key is not None and not isinstance(routing_key, str):
        raise ImproperlyConfigured(f"{where}: routing_key must be a string",
                                   setting="task_queues")
    exchange = _exchange_of(getattr(queue, "exchange", None), where=where)
    return _declaration(name, exchange, routing_key, arguments, defaults)


def _from_dict(name: str, options: Mapping[str, Any], defaults: _Defaults, *,
               where: str) -> Declaration:
    """A declaration from a ``task_queues`` dict entry (Celery's ``add_compat``: the
    routing key defaults to the queue's name)."""
    unknown = sorted(set(options) - _DICT_KEYS)
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown queue option {unknown[0]!r}",
                                   setting="task_queues")
    routing_key = options.get("routing_key") or options.get("binding_key") or name
    exchange_value = options.get("exchange")
    kind = options.get("exchange_type") or "direct"
    if isinstance(exchange_value, str) or exchange_value is None:
        kind = _exchange_type(kind, where=where)
        exchange = Exchange(exchange_value, kind) if exchange_value else None
    else:
        exchange = _exchange_of(exchange_value, where=where)
    arguments = dict(options.get("queue_arguments") or {})
    for attribute, argument in _ARGUMENT_ATTRIBUTES.items():
        if options.get(attribute) is not None:
            arguments.setdefault(argument, options[attribute])
    return _declaration(name, exchange, routing_key, arguments, defaults)


@attrs.frozen
class _Defaults:
    exchange: Exchange
    routing_key: str
    max_priority: int | None


def _defaults(settings: Mapping[str, Any]) -> _Defaults:
    default_queue = settings.get("task_default_queue") or "celery"
    kind = _exchange_type(settings.get("task_default_exchange_type") or "direct",
                          where="task_default_exchange_type")
    return _Defaults(
        exchange=Exchange(settings.get("task_default_exchange") or default_queue, kind),
        routing_key=settings.get("task_default_routing_key") or default_queue,
        max_priority=settings.get("task_queue_max_priority"),
    )


def declared_queues(
    value: Any, settings: Mapping[str, Any] | None = None
) -> dict[str, Declaration]:
    """The ``task_queues`` setting as declarations by name: a list of kombu ``Queue``
    objects, or a dict of name to ``Queue`` or to a dict of options.

    Raises:
        ImproperlyConfigured: a malformed entry, an unsupported exchange type, or a queue
            with several bindings, naming it.
    """
    defaults = _defaults(settings or {})
    if value is None:
        return {}
    declarations: dict[str, Declaration] = {}
    if isinstance(value, Mapping):
        for name, options in value.items():
            where = f"task_queues[{name!r}]"
            if not isinstance(name, str) or not name:
                raise ImproperlyConfigured(f"{where}: queue names are strings",
                                           setting="task_queues")
            if isinstance(options, Mapping):
                declarations[name] = _from_dict(name, options, defaults, where=where)
            else:
                declarations[name] = _from_object(options, defaults, where=where)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, queue in enumerate(value):
            declaration = _from_object(queue, defaults, where=f"task_queues[{index}]")
            declarations[declaration.name] = declaration
    else:
        raise ImproperlyConfigured(
            f"task_queues must be a list of Queue objects or a dict, got {value!r}",
            setting="task_queues",
        )
    return declarations


# -- task_routes ---------------------------------------------------------------------------

RouterFunction = Callable[..., Any]


class _MapRoute:
    """A ``task_routes`` dict: exact names first, then patterns in order."""

    def __init__(self, routes: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        items = routes.items() if isinstance(routes, Mapping) else routes
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, route in items:
            if not isinstance(route, str | Mapping):
                raise ImproperlyConfigured(
                    f"task_routes[{key!r}]: a route is a queue name or a dict, got {route!r}",
                    setting="task_routes",
                )
            if isinstance(key, re.Pattern):
                self.patterns.append((key, route))
            elif not isinstance(key, str):
                raise ImproperlyConfigured(
                    f"task_routes: keys are task names, globs or re.compile() patterns, "
                    f"got {key!r}", setting="task_routes",
                )
            elif "*" in key:
                self.patterns.append((re.compile(fnmatch.translate(key)), route))
            else:
                self.exact[key] = route

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        route = self.exact.get(name)
        if route is None:
            for pattern, candidate in self.patterns:
                if pattern.match(name):
                    route = candidate
                    break
        if route is None:
            return None
        return {"queue": route} if isinstance(route, str) else dict(route)


def _import(path: str) -> Any:
    module_name, _, attribute = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImproperlyConfigured(f"task_routes: cannot import router {path!r}: {exc}",
                                   setting="task_routes") from exc


class _LazyRouter:
    """A router given by its dotted path, imported on first use (Celery's ``mlazy``); a
    class with ``route_for_task`` is instantiated, as Celery does for pre-4.0 routers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._router: Any = None

    def resolve(self) -> Any:
        if self._router is None:
            router = _import(self.path)
            if isinstance(router, type) and hasattr(router, "route_for_task"):
                router = router()
            self._router = router
        return self._router


def prepare_routes(routes: Any) -> list[Any]:
    """The ``task_routes`` setting as a list of routers (Celery's ``routes.prepare``).

    Raises:
        ImproperlyConfigured: an entry that is not a dict, a list of pairs, a callable or
            a dotted path, naming it.
    """
    if routes is None:
        return []
    items = list(routes) if isinstance(routes, list | tuple) else [routes]
    prepared: list[Any] = []
    for item in items:
        if isinstance(item, (Mapping, list | tuple)):
            prepared.append(_MapRoute(item))
        elif isinstance(item, str):
            prepared.append(_LazyRouter(item))
        elif callable(item) or hasattr(item, "route_for_task"):
            prepared.append(item)
        else:
            raise ImproperlyConfigured(
                f"task_routes: a route is a dict, a router function or a dotted path, "
                f"got {item!r}", setting="task_routes",
            )
    return prepared


def _query(router: Any, name: str, args: Any, kwargs: Any, options: Mapping[str, Any],
           task: Any) -> Any:
    if isinstance(router, _LazyRouter):
        router = router.resolve()
    if hasattr(router, "route_for_task"):  # a pre-4.0 router class
        return router.route_for_task(name, args, kwargs)
    return router(name, args, kwargs, options, task=task)


#: The options routing reads and writes.
ROUTING_OPTIONS = ("queue", "exchange", "routing_key", "exchange_type")


class Router:
    """Routes calls for one app's settings (rebuilt when the settings change).

    ``route`` returns the routing options of a call (``queue`` as a name, ``exchange``,
    ``routing_key``, and what else the route set, such as ``priority``), or ``None``
    when nothing is configured that could change the plain answer (no ``task_routes``,
    no ``task_queues``, direct default exchange, missing queues created, and no exchange
    or routing key given): then the message goes to the queue named by the options (or
    the default queue) on the default exchange, which is what the calling layer does by
    itself.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.routes = prepare_routes(settings.get("task_routes"))
        self.default_queue: str = settings.get("task_default_queue") or "celery"
        self.create_missing = bool(settings.get("task_create_missing_queues", True))
        self._defaults = _defaults(settings)
        declared = declared_queues(settings.get("task_queues"), settings)
        #: The queues consumed by default (Celery's ``consume_from``): the declared ones,
        #: else the default queue.
        self.consume_from: list[str] = list(declared) or [self.default_queue]
        if not declared:
            declared = {self.default_queue: _declaration(
                self.default_queue, None, None, {}, self._defaults)}
        self.queues: dict[str, Declaration] = declared
        self.trivial = (
            not self.routes and settings.get("task_queues") is None and self.create_missing
            and self._defaults.exchange.type == "direct"
        )

    def declaration(self, queue: Any) -> Declaration:
        """The declaration of a queue given by name or as a kombu ``Queue``; a missing
        one is created (a direct queue of its own name) or refused."""
        if not isinstance(queue, str):
            if not isinstance(getattr(queue, "name", None), str):
                raise ValidationError(
                    "queue", f"must be a queue name or a kombu Queue, got {queue!r}", value=queue
                )
            return _from_object(queue, self._defaults, where="queue")
        found = self.queues.get(queue)
        if found is not None:
            return found
        if not self.create_missing:
            raise QueueNotFound(queue)
        return Declaration(queue, Exchange(queue), queue, {})

    def route(
        self, name: str, args: Any, kwargs: Any, options: Mapping[str, Any], task: Any = None
    ) -> dict[str, Any] | None:
        """The options of a call after routing, or ``None`` when routing changes nothing.

        ``options`` are the call's over the task's own. The result is ``options`` with
        the route's values where ``options`` has none (Celery's ``lpmerge``), ``queue``
        as the declared queue's name, and the final ``exchange`` and ``routing_key``
        (``exchange_type`` is consumed).

        Raises:
            QueueNotFound: the queue is not declared and missing queues are not created.
            ValidationError: a router returned something that is not a route.
        """
        given = {k: v for k, v in options.items() if v is not None}
        if self.trivial and "exchange" not in given and "routing_key" not in given and (
            "exchange_type" not in given and isinstance(given.get("queue", ""), str)
        ):
            return None
        result = dict(options)
        found = self._lookup(name, args, kwargs, given, task)
        for key, value in found.items():
            if result.get(key) is None:  # the call's and the task's own options win
                result[key] = value
        declaration = self.declaration(result.get("queue") or self.default_queue)
        exchange, routing_key = self._destination(declaration, result)
        result.update(queue=declaration.name, exchange=exchange, routing_key=routing_key)
        return result

    def _lookup(self, name: str, args: Any, kwargs: Any, options: Mapping[str, Any],
                task: Any) -> Mapping[str, Any]:
        """The first route a router gives (Celery's ``lookup_route``), as a dict."""
        for router in self.routes:
            found = _query(router, name, args, kwargs, options, task)
            if found is None:
                continue
            if isinstance(found, str):
                return {"queue": found}
            if not isinstance(found, Mapping):
                raise ValidationError(
                    "task_routes", f"a router returned {found!r} for {name!r}; expected a "
                    "dict or a queue name",
                )
            return found
        return {}

    def _destination(
        self, declaration: Declaration, result: dict[str, Any]
    ) -> tuple[str, str | None]:
        """The exchange and routing key of a message for a declared queue (Celery's
        ``send_task_message``); consumes ``exchange_type`` from ``result``."""
        exchange = result.get("exchange")
        if exchange is not None and not isinstance(exchange, str):
            exchange = getattr(exchange, "name", None)
            if not isinstance(exchange, str):
                raise ValidationError("exchange", f"not an exchange: {result['exchange']!r}")
        routing_key = result.get("routing_key")
        if routing_key is not None and not isinstance(routing_key, str):
            raise ValidationError("routing_key", f"must be a string, got {routing_key!r}",
                                  value=routing_key)
        exchange_type = result.pop("exchange_type", None) or declaration.exchange.type
        if exchange_type not in ("direct", "topic"):
            raise ValidationError(
                "exchange_type", f"must be 'direct' or 'topic', got {exchange_type!r}",
                value=exchange_type,
            )
        if (not exchange or not routing_key) and exchange_type == "direct":
            return "", None  # the default exchange, keyed by the queue's name
        if exchange is None:
            exchange = declaration.exchange.name or self._defaults.exchange.name
            routing_key = routing_key or declaration.routing_key or self._defaults.routing_key
        return exchange, routing_key
