"""Result backends: store task states, read them, stream state changes (``on_message``).

``backend_from_url`` opens one by URL scheme:

* ``memory://`` / ``memory://name`` — in this process (``wiretask.results.memory``);
* ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` — a file shared by processes
  (``wiretask.results.sqlite``);

The interface and the rules every backend follows are in ``wiretask.results.base``;
exceptions in results are converted by ``wiretask.results.exceptions``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from wiretask.errors import ImproperlyConfigured
from wiretask.results.base import (
    DEFAULT_EXPIRES,
    MetaCodec,
    ResultBackend,
    Subscription,
    mask_url,
)

if TYPE_CHECKING:
    from wiretask.codecs import Registry

__all__ = [
    "DEFAULT_EXPIRES",
    "SCHEMES",
    "MetaCodec",
    "ResultBackend",
    "Subscription",
    "backend_from_url",
]


def _memory(
    url: str, serializer: str, expires: float | timedelta | None, registry: Registry | None,
    options: Mapping[str, Any],
) -> ResultBackend:
    from wiretask.results.memory import MemoryBackend  # noqa: PLC0415

    _check_options("memory", options, set())
    return MemoryBackend(url, serializer=serializer, expires=expires, registry=registry)


def _sqlite(
    url: str, serializer: str, expires: float | timedelta | None, registry: Registry | None,
    options: Mapping[str, Any],
) -> ResultBackend:
    from wiretask.results.sqlite import SQLiteBackend  # noqa: PLC0415

    known = {"busy_timeout", "event_retention"}
    _check_options("sqlite", options, known)
    return SQLiteBackend(
        url, serializer=serializer, expires=expires, registry=registry,
        **{k: float(v) for k, v in options.items()},
    )


def _check_options(scheme: str, options: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown {scheme} result backend option(s) {', '.join(unknown)}"
            f" (known: {', '.join(sorted(known)) or 'none'})",
            setting="result_backend_transport_options",
        )


_Factory = Callable[
    [str, str, "float | timedelta | None", "Registry | None", Mapping[str, Any]], ResultBackend
]

#: URL scheme -> factory. Backends are imported when first used, so that the drivers
#: (redis-py) are needed only by those who use them.
SCHEMES: Final[Mapping[str, _Factory]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


def backend_from_url(
    url: str,
    *,
    serializer: str = "json",
    expires: float | timedelta | None = DEFAULT_EXPIRES,
    registry: Registry | None = None,
    transport_options: Mapping[str, Any] | None = None,
) -> ResultBackend:
    """Open the result backend for ``url``. No I/O happens until it is used.

    Args:
        url: ``memory://[name]``, ``sqlite:///path.db``.
        serializer: the result serializer (Celery's ``result_serializer``, ``json``).
        expires: seconds a result is kept (Celery's ``result_expires``, default one
            day; ``None`` or ``0`` = forever); a ``timedelta`` is accepted.
        registry: the codec registry (default: ``wiretask.codecs.default_registry()``).
        transport_options: backend-specific options (Celery's
            ``result_backend_transport_options``).

    Raises:
        ImproperlyConfigured: an unknown scheme (the message names the supported
            ones), a malformed URL or an unknown option.
        UnknownCodec: the registry has no such serializer.
    """
    scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else ""
    factory = SCHEMES.get(scheme)
    if factory is None:
        shown = mask_url(url) if isinstance(url, str) else repr(url)
        raise ImproperlyConfigured(
            f"unsupported result backend URL {shown!r}: the scheme must be one of "
            f"{', '.join(f'{s}://' for s in SCHEMES)}",
            setting="result_backend",
        )
    return factory(url, serializer, expires, registry, dict(transport_options or {}))
