"""The AMQP broker URL and transport options, parsed once and frozen.

URLs follow Kombu's rules (``kombu.utils.url``), so a Celery ``broker_url`` carries over:

* ``amqp://``, ``pyamqp://`` (the same) and ``amqps://`` (TLS, port 5671 by default);
* ``user:password@`` (default ``guest:guest``; ``%``-escapes are decoded);
* host and port (default ``localhost``, sent as ``127.0.0.1`` as Kombu does, and 5672);
* the virtual host is the path without its first ``/``, unquoted: ``amqp://h//`` and
  ``amqp://h/%2F`` are ``/``, ``amqp://h/app`` is ``app``, no path is ``/``;
* the query string holds options (below); a name that is not one is refused.

Options come as keyword arguments (what Celery users put in ``broker_transport_options``)
or in the query string; the query string wins. Every name is checked: a Kombu or Celery
option that means nothing here (``visibility_timeout``, ``max_retries``...) is refused by
name instead of being ignored.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import attrs

from wiretask._url import mask_url
from wiretask.errors import ImproperlyConfigured

__all__ = [
    "SETTINGS",
    "DelayMode",
    "ExchangeType",
    "Options",
    "QueueType",
    "from_settings",
    "parse",
]

DelayMode = Literal["auto", "ladder", "celery"]
QueueType = Literal["classic", "quorum"]
ExchangeType = Literal["direct", "topic", "fanout"]

SCHEMES = ("amqp", "pyamqp", "amqps")

#: Options whose meaning is Kombu's or Celery's but which wiretask does not take, with
#: what to use instead. Refused by name (a silently ignored option is a divergence).
_NOT_HERE = {
    "max_retries": "the publish retry policy (task_publish_retry_policy) governs retries",
    "interval_start": "the publish retry policy (task_publish_retry_policy) governs retries",
    "interval_step": "the publish retry policy (task_publish_retry_policy) governs retries",
    "interval_max": "the publish retry policy (task_publish_retry_policy) governs retries",
    "connect_retries_timeout": "the publish retry policy's timeout bounds reconnecting",
    "visibility_timeout": "AMQP has no visibility timeout: the broker redelivers the "
    "unacked messages of a lost connection",
    "failover_strategy": "failover URLs are not supported",
}

_SSL_QUERY = {
    "ssl_ca_certs": "ca_certs",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_cert_reqs": "cert_reqs",
    "ssl_server_hostname": "server_hostname",
}
#: What py-amqp's TLS wrapper takes (``SSLTransport._wrap_socket_sni`` / ``context``).
_SSL_KEYS = frozenset({
    "keyfile", "certfile", "server_side", "cert_reqs", "ca_certs", "do_handshake_on_connect",
    "suppress_ragged_eofs", "server_hostname", "ciphers", "ssl_version",
    "tls_maximum_version", "tls_minimum_version", "context",
})
_CERT_REQS = {
    "cert_required": ssl.CERT_REQUIRED, "required": ssl.CERT_REQUIRED,
    "cert_optional": ssl.CERT_OPTIONAL, "optional": ssl.CERT_OPTIONAL,
    "cert_none": ssl.CERT_NONE, "none": ssl.CERT_NONE,
}


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, not {text!r}")


#: Options that may appear in the query string, and how to read each.
_QUERY: dict[str, Callable[[str], Any]] = {
    "heartbeat": float,
    "heartbeat_checkrate": float,
    "connect_timeout": float,
    "confirm_timeout": float,
    "confirm_publish": _flag,
    "read_timeout": float,
    "write_timeout": float,
    "login_method": str,
    "frame_max": int,
    "channel_max": int,
    "ssl": _flag,
    "queue_type": str,
    "exchange_type": str,
    "max_priority": int,
    "delay_mode": str,
    "delayed_delivery_queue_type": str,
}
#: Options taken only as keyword arguments (mappings have no query-string form).
_KEYWORD_ONLY = frozenset({"queue_arguments", "exchange_types", "socket_settings",
                           "client_properties"})
KNOWN = frozenset(_QUERY) | _KEYWORD_ONLY


@attrs.frozen(kw_only=True)
class Options:
    """Everything an ``AMQPTransport`` was configured with (see its docstring)."""

    masked_url: str
    host: str
    port: int
    userid: str
    password: str
    virtual_host: str
    #: ``False``, or py-amqp's TLS options (``{}`` for the defaults).
    ssl: bool | Mapping[str, Any]
    heartbeat: float
    #: Heartbeat checks per interval (Celery's ``broker_heartbeat_checkrate``); ``None``:
    #: four checks, each sending a heartbeat when half an interval passed without one.
    heartbeat_checkrate: float | None
    connect_timeout: float
    confirm_timeout: float
    confirm_publish: bool
    #: Passed to ``amqp.Connection`` as they are.
    connection_extra: Mapping[str, Any]
    queue_type: QueueType
    queue_arguments: Mapping[str, Mapping[str, Any]]
    max_priority: int | None
    exchange_type: ExchangeType
    #: ``{exchange: type}`` of exchanges with a type of their own (the default queue's,
    #: from ``task_default_exchange_type``); others are ``exchange_type``.
    exchange_types: Mapping[str, ExchangeType]
    delay_mode: DelayMode
    delayed_delivery_queue_type: QueueType

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``amqp.Connection``."""
        return {
            "host": f"{self.host}:{self.port}" if ":" not in self.host
            else f"[{self.host}]:{self.port}",
            "userid": self.userid,
            "password": self.password,
            "virtual_host": self.virtual_host,
            "ssl": dict(self.ssl) if isinstance(self.ssl, Mapping) else self.ssl,
            "connect_timeout": self.connect_timeout,
            "heartbeat": self.heartbeat,
            **self.connection_extra,
        }

    def arguments_of(self, queue: str) -> dict[str, Any]:
        """The arguments Celery declares ``queue`` with under the same configuration:
        the queue's own (``queue_arguments``, as ``task_queues``), else ``x-queue-type``
        when the type is quorum (``task_default_queue_type``), plus ``x-max-priority``
        when ``max_priority`` is set and the queue has none (``task_queue_max_priority``)."""
        own = self.queue_arguments.get(queue)
        if own is not None:
            arguments = dict(own)
        elif self.queue_type == "quorum":
            arguments = {"x-queue-type": "quorum"}
        else:
            arguments = {}
        if self.max_priority is not None:
            arguments.setdefault("x-max-priority", self.max_priority)
        return arguments

    def queue_type_of(self, queue: str) -> str:
        own = self.queue_arguments.get(queue)
        if own is not None:
            return str(own.get("x-queue-type", "classic"))
        return self.queue_type


def _bad(name: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"AMQP transport option {name!r}: {problem}", setting=name)


def _number(name: str, value: Any, *, minimum: float, inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(name, f"must be a number, got {value!r}")
    if value < minimum or (not inclusive and value == minimum):
        relation = ">=" if inclusive else ">"
        raise _bad(name, f"must be {relation} {minimum:g}, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise _bad(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def parse(url: str, options: Mapping[str, Any]) -> Options:
    """Read and check ``url`` and ``options``.

    Raises:
        ImproperlyConfigured: not an AMQP URL, several hosts, or an unknown or bad option.
    """
    parts, masked = _split(url)
    scheme = parts.scheme.lower()
    merged = dict(options)
    ssl_from_query = _read_query(parts.query, merged)
    for name in merged:
        if name not in KNOWN:
            _unknown(name)
    take = merged.pop
    tls = _tls(take("ssl", scheme == "amqps"), ssl_from_query)
    confirm_publish = take("confirm_publish", True)
    if not isinstance(confirm_publish, bool):
        raise _bad("confirm_publish", f"must be True or False, got {confirm_publish!r}")
    max_priority = take("max_priority", None)
    if max_priority is not None and (
        isinstance(max_priority, bool) or not isinstance(max_priority, int)
        or not 1 <= max_priority <= 255
    ):
        raise _bad("max_priority", f"must be an int within 1..255, got {max_priority!r}")
    host = unquote(parts.hostname or "") or "localhost"
    if host == "localhost":
        host = "127.0.0.1"  # as Kombu: no IPv6 lookup for the usual case
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return Options(
        masked_url=masked,
        host=host,
        port=parts.port or (5671 if tls else 5672),
        userid=unquote(parts.username or "") or "guest",
        password=unquote(parts.password or "") or "guest",
        virtual_host=unquote(path) or "/",
        ssl=tls,
        heartbeat=_number("heartbeat", take("heartbeat", 60.0), minimum=0),
        heartbeat_checkrate=_optional_rate(take("heartbeat_checkrate", None)),
        connect_timeout=_number("connect_timeout", take("connect_timeout", 4.0), minimum=0,
                                inclusive=False),
        confirm_timeout=_number("confirm_timeout", take("confirm_timeout", 30.0), minimum=0,
                                inclusive=False),
        confirm_publish=confirm_publish,
        queue_type=_choice("queue_type", take("queue_type", "classic"), ("classic", "quorum")),
        queue_arguments=_queue_arguments(take("queue_arguments", {})),
        max_priority=max_priority,
        exchange_type=_choice("exchange_type", take("exchange_type", "direct"),
                              ("direct", "topic", "fanout")),
        exchange_types=_exchange_types(take("exchange_types", {})),
        delay_mode=_choice("delay_mode", take("delay_mode", "auto"),
                           ("auto", "ladder", "celery")),
        delayed_delivery_queue_type=_choice(
            "delayed_delivery_queue_type", take("delayed_delivery_queue_type", "quorum"),
            ("classic", "quorum")),
        # Last: what is left are py-amqp's own options.
        connection_extra=_connection_extra(merged),
    )


def _split(url: object) -> tuple[SplitResult, str]:
    """The URL's parts and its masked form (every host's password masked)."""
    if not isinstance(url, str):
        raise ImproperlyConfigured(f"the broker URL must be a string, got {url!r}",
                                   setting="broker_url")
    masked = ";".join(map(mask_url, url.split(";")))
    if ";" in url:
        raise ImproperlyConfigured(
            f"failover URLs (several hosts separated by ';') are not supported: {masked}",
            setting="broker_url",
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here, not later
    except ValueError as exc:
        raise ImproperlyConfigured(f"cannot parse the broker URL {masked}: {exc}",
                                   setting="broker_url") from exc
    if parts.scheme.lower() not in SCHEMES:
        raise ImproperlyConfigured(
            f"not an AMQP URL (scheme {parts.scheme!r}): {masked}", setting="broker_url"
        )
    return parts, masked


def _read_query(query: str, merged: dict[str, Any]) -> dict[str, Any]:
    """Put the query's options into ``merged`` (over the keyword options); return the
    TLS options it holds (``ssl_*``)."""
    tls: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _SSL_QUERY:
            key = _SSL_QUERY[name]
            if key != "cert_reqs":
                tls[key] = value
            elif value.lower() in _CERT_REQS:
                tls[key] = _CERT_REQS[value.lower()]
            else:
                raise _bad(name, "must be one of CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE, "
                                 f"got {value!r}")
            continue
        reader = _QUERY.get(name)
        if reader is None:
            _unknown(name)
        try:
            merged[name] = reader(value)
        except ValueError as exc:
            raise _bad(name, f"bad value {value!r} in the broker URL ({exc})") from exc
    return tls


def _tls(value: Any, from_query: dict[str, Any]) -> bool | dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - _SSL_KEYS)
        if unknown:
            raise _bad("ssl", f"unknown TLS option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(_SSL_KEYS))}")
        return {**value, **from_query}
    if isinstance(value, bool):
        return dict(from_query) if from_query else value
    raise _bad("ssl", f"must be True, False or a dict of TLS options, got {value!r}")


def _connection_extra(rest: dict[str, Any]) -> dict[str, Any]:
    """py-amqp's own connection options, checked."""
    extra: dict[str, Any] = {}
    for name, value in rest.items():
        if name in ("read_timeout", "write_timeout"):
            extra[name] = _number(name, value, minimum=0, inclusive=False)
        elif name in ("frame_max", "channel_max"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(name, f"must be a positive int, got {value!r}")
            extra[name] = value
        elif name == "login_method":
            extra[name] = _choice(name, value, ("AMQPLAIN", "PLAIN", "EXTERNAL", "GSSAPI"))
        else:  # socket_settings, client_properties
            if not isinstance(value, Mapping):
                raise _bad(name, f"must be a mapping, got {value!r}")
            extra[name] = dict(value)
    return extra


def _unknown(name: str) -> NoReturn:
    hint = _NOT_HERE.get(name)
    if hint is not None:
        raise _bad(name, f"not supported by the AMQP transport: {hint}")
    raise _bad(name, f"unknown option; known: {', '.join(sorted(KNOWN))}")


def _queue_arguments(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise _bad("queue_arguments", f"must map queue names to argument dicts, got {value!r}")
    result: dict[str, dict[str, Any]] = {}
    for queue, arguments in value.items():
        if not isinstance(queue, str) or not queue:
            raise _bad("queue_arguments", f"queue names must be non-empty strings, got {queue!r}")
        if not isinstance(arguments, Mapping) or not all(isinstance(k, str) for k in arguments):
            raise _bad("queue_arguments",
                       f"the arguments of {queue!r} must be a dict with string keys")
        kind = arguments.get("x-queue-type", "classic")
        if kind not in ("classic", "quorum"):
            raise _bad("queue_arguments",
                       f"x-queue-type of {queue!r} must be 'classic' or 'quorum', got {kind!r}")
        result[queue] = dict(arguments)
    return result


def _optional_rate(value: Any) -> float | None:
    if value is None:
        return None
    return _number("heartbeat_checkrate", value, minimum=0, inclusive=False)


def _exchange_types(value: Any) -> dict[str, ExchangeType]:
    if not isinstance(value, Mapping):
        raise _bad("exchange_types", f"must map exchange names to types, got {value!r}")
    result: dict[str, ExchangeType] = {}
    for name, kind in value.items():
        if not isinstance(name, str) or not name:
            raise _bad("exchange_types", f"exchange names must be non-empty strings, got "
                                         f"{name!r}")
        result[name] = _choice("exchange_types", kind, ("direct", "topic", "fanout"))
    return result


# -- Celery's settings ---------------------------------------------------------------

#: Celery settings whose value (when set) is the option of the same meaning.
_SCALAR_SETTINGS = {
    "broker_heartbeat": "heartbeat",
    "broker_heartbeat_checkrate": "heartbeat_checkrate",
    "broker_connection_timeout": "connect_timeout",
    "broker_login_method": "login_method",
    "broker_native_delayed_delivery_queue_type": "delayed_delivery_queue_type",
    "task_queue_max_priority": "max_priority",
    "task_create_missing_queue_exchange_type": "exchange_type",
}
#: Every Celery setting ``from_settings`` reads (``AMQPTransport.honoured_settings``).
SETTINGS = frozenset({
    *_SCALAR_SETTINGS, "broker_use_ssl", "task_create_missing_queue_type",
    "task_default_queue_type", "task_default_exchange_type",
})


def from_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's broker and queue settings (``app.conf``) as the options of the same
    meaning (``broker_transport_options`` and the URL's query go over them):

    * ``broker_heartbeat`` -> ``heartbeat``, ``broker_heartbeat_checkrate`` ->
      ``heartbeat_checkrate``, ``broker_connection_timeout`` -> ``connect_timeout``,
      ``broker_use_ssl`` (True or py-amqp's TLS options) -> ``ssl``,
      ``broker_login_method`` -> ``login_method``,
      ``broker_native_delayed_delivery_queue_type`` -> ``delayed_delivery_queue_type``,
      ``task_queue_max_priority`` -> ``max_priority``: each when set;
    * queues made on first use (Celery's ``Queues.new_missing``):
      ``task_create_missing_queue_type`` ``quorum`` -> ``queue_type``,
      ``task_create_missing_queue_exchange_type`` -> ``exchange_type``;
    * the default queue, when ``task_queues`` is empty (Celery's ``app.amqp.Queues``):
      ``task_default_queue_type`` ``quorum`` -> its own ``x-queue-type`` argument
      (``queue_arguments``), ``task_default_exchange_type`` ``topic`` -> its exchange's
      type (``exchange_types``; the exchange is ``task_default_exchange``, else the
      queue's name).

    Values the settings table has checked already; ``parse`` checks the options again.
    """
    options: dict[str, Any] = {}
    for setting, option in _SCALAR_SETTINGS.items():
        value = settings.get(setting)
        if value is not None:
            options[option] = value
    tls = settings.get("broker_use_ssl")
    if tls:
        options["ssl"] = dict(tls) if isinstance(tls, Mapping) else True
    if settings.get("task_create_missing_queue_type") == "quorum":
        options["queue_type"] = "quorum"
    if not settings.get("task_queues"):
        queue = settings.get("task_default_queue") or "celery"
        if settings.get("task_default_queue_type") == "quorum":
            options["queue_arguments"] = {queue: {"x-queue-type": "quorum"}}
        if settings.get("task_default_exchange_type") == "topic":
            exchange = settings.get("task_default_exchange") or queue
            options["exchange_types"] = {exchange: "topic"}
    return options
