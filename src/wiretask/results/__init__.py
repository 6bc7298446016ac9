"""Result backends: store task states, read them, stream state changes (``on_message``).

``backend_from_url`` opens one by URL scheme:

* ``memory://`` / ``memory://name`` — in this process (``wiretask.results.memory``);
* ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` — a file shared by processes
  (``wiretask.results.sqlite``);
* ``redis://`` / ``rediss://`` — Celery's Redis layout, readable by Celery
  (``wiretask.results.redis``, needs the ``redis`` extra);
* ``rpc://`` — Celery's RPC backend: states as messages to the sending client's reply
  queue on a RabbitMQ broker (``wiretask.results.rpc``, needs the ``amqp`` extra and an
  app's broker: ``via``).

The interface and the rules every backend follows are in ``wiretask.results.base``;
exceptions in results are converted by ``wiretask.results.exceptions``.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from wiretask.errors import ImproperlyConfigured
from wiretask.results.base import (
    DEFAULT_EXPIRES,
    MetaCodec,
    ReplyRouted,
    ResultBackend,
    Subscription,
    ViaBroker,
    mask_url,
)

if TYPE_CHECKING:
    from wiretask.codecs import Registry

__all__ = [
    "DEFAULT_EXPIRES",
    "SCHEMES",
    "MetaCodec",
    "ReplyRouted",
    "ResultBackend",
    "Subscription",
    "ViaBroker",
    "backend_from_url",
]

#: URL scheme -> (module, class, the transport options it takes). Modules are imported
#: when first used, so that a driver (redis-py) is needed only by those who use it.
SCHEMES: Final[Mapping[str, tuple[str, str, frozenset[str]]]] = {
    "memory": ("wiretask.results.memory", "MemoryBackend", frozenset()),
    "sqlite": (
        "wiretask.results.sqlite", "SQLiteBackend",
        frozenset({"busy_timeout", "event_retention"}),
    ),
    "redis": (
        "wiretask.results.redis", "RedisBackend",
        frozenset({"global_keyprefix", "socket_timeout", "socket_connect_timeout",
                   "result_chord_ordered"}),
    ),
    "rediss": (
        "wiretask.results.redis", "RedisBackend",
        frozenset({"global_keyprefix", "socket_timeout", "socket_connect_timeout",
                   "result_chord_ordered"}),
    ),
    "rpc": ("wiretask.results.rpc", "RPCBackend", frozenset()),
}
#: What to install when a backend's module cannot be imported for want of its driver.
_EXTRAS: Final[Mapping[str, str]] = {"redis": "redis", "rediss": "redis", "rpc": "amqp"}


def backend_from_url(
    url: str,
    *,
    serializer: str = "json",
    expires: float | timedelta | None = DEFAULT_EXPIRES,
    registry: Registry | None = None,
    compression: str | None = None,
    transport_options: Mapping[str, Any] | None = None,
    via: Callable[[], ViaBroker] | None = None,
) -> ResultBackend:
    """Open the result backend for ``url``. No I/O happens until it is used.

    Args:
        url: ``memory://[name]``, ``sqlite:///path.db``, ``redis://host:port/db``.
        serializer: the result serializer (Celery's ``result_serializer``, ``json``).
        expires: seconds a result is kept (Celery's ``result_expires``, default one
            day; ``None`` or ``0`` = forever); a ``timedelta`` is accepted.
        registry: the codec registry (default: ``wiretask.codecs.default_registry()``).
        compression: compress stored values (Celery 5.7's ``result_compression``; only
            Celery 5.7 and later read them). Compressed values are read either way.
        transport_options: backend options (Celery's
            ``result_backend_transport_options``): ``global_keyprefix``,
            ``socket_timeout``, ``socket_connect_timeout``, ``result_chord_ordered``
            for Redis; ``busy_timeout``,
            ``event_retention`` for SQLite.
        via: the app's broker and reply queue, for a backend that sends states
            through the broker (``rpc://``); called only by such a backend's opening
            (``App.backend`` gives it).

    Raises:
        ImproperlyConfigured: an unknown scheme (the message names the supported
            ones), a malformed URL, an unknown option, or a missing driver.
        UnknownCodec: the registry has no such serializer or compressor.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in SCHEMES or "://" not in url:
        shown = mask_url(url) if isinstance(url, str) else repr(url)
        raise ImproperlyConfigured(
            f"unsupported result backend URL {shown!r}: the scheme must be one of "
            f"{', '.join(f'{s}://' for s in SCHEMES)}",
            setting="result_backend",
        )
    module_name, class_name, known = SCHEMES[scheme]
    options = dict(transport_options or {})
    unknown = sorted(set(options) - known)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown {scheme}:// result backend option(s) {', '.join(unknown)}"
            f" (known: {', '.join(sorted(known)) or 'none'})",
            setting="result_backend_transport_options",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # Only a missing driver is a configuration problem; an ImportError from inside
        # wiretask itself is a bug and surfaces as itself.
        if (exc.name or "").startswith("wiretask"):
            raise
        raise ImproperlyConfigured(
            f"the {scheme}:// result backend needs the {exc.name!r} package: "
            f"pip install 'wiretask[{_EXTRAS.get(scheme, scheme)}]'",
            setting="result_backend",
        ) from exc
    backend_class: type[ResultBackend] = getattr(module, class_name)
    if backend_class.sends_through_broker:
        if via is None:
            raise ImproperlyConfigured(
                f"the {scheme}:// result backend sends states through the broker: open it "
                "through an App (App(broker='amqp://...', backend='rpc://')), which gives "
                "it its broker and reply queue", setting="result_backend",
            )
        options["via"] = via()
    return backend_class(  # type: ignore[call-arg]
        url, serializer=serializer, expires=expires, registry=registry,
        compression=compression, **options,
    )
