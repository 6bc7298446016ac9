"""Broker URLs: pick the transport for a URL (``mask_url``, which hides passwords for
display, lives in ``wiretask._url`` below transports and results, and is re-exported here).

Supported schemes:

* ``memory://`` and ``memory://name``: the in-process broker (``MemoryTransport``).
* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``: the embedded
  broker (``SQLiteTransport``). The slashes follow SQLAlchemy (and so kombu's
  ``sqla+sqlite://``): three for a path relative to the working directory, four for an
  absolute one.
* ``redis://`` and ``rediss://`` (TLS): ``wiretask.transports.redis.RedisTransport``,
  imported only when such a URL is used, so that redis-py is needed only by those who
  use Redis.

Transports are built with ``Transport.from_url(url, **options)``; construction does no
I/O, so a bad host is reported by the first ``connect()``, not here.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from wiretask._url import mask_url
from wiretask.errors import ImproperlyConfigured
from wiretask.transports.base import Transport

__all__ = ["SCHEMES", "mask_url", "transport_from_url"]

#: scheme → (module, class). Modules are imported on first use.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("wiretask.transports.memory", "MemoryTransport"),
    "sqlite": ("wiretask.transports.sqlite", "SQLiteTransport"),
    "redis": ("wiretask.transports.redis", "RedisTransport"),
    "rediss": ("wiretask.transports.redis", "RedisTransport"),
}

# What to install when a transport's module cannot be imported for want of its driver.
_EXTRAS = {"redis": "redis", "rediss": "redis"}


def transport_from_url(url: str, **options: Any) -> Transport:
    """The transport for a broker URL (not connected yet).

    Args:
        url: the broker URL.
        **options: transport options (e.g. ``visibility_timeout``), passed to the
            transport's ``from_url``, which refuses the ones it does not know.

    Raises:
        ImproperlyConfigured: not a string, an unknown scheme (the message names the
            supported ones), or a transport whose driver is not installed.
    """
    if not isinstance(url, str) or not url:
        raise ImproperlyConfigured(
            f"a broker URL must be a non-empty string, got {url!r}", setting="broker_url"
        )
    scheme = urlsplit(url).scheme.lower()
    if "://" not in url or scheme not in SCHEMES:
        supported = ", ".join(f"{name}://" for name in SCHEMES)
        raise ImproperlyConfigured(
            f"unsupported broker URL {mask_url(url)!r}: the scheme must be one of {supported}",
            setting="broker_url",
        )
    module_name, class_name = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # Only a missing *driver* is a configuration problem; an ImportError raised from
        # inside wiretask's own module is a bug and must surface as itself.
        missing = exc.name or ""
        if missing == module_name or missing.startswith(f"{module_name}."):
            raise ImproperlyConfigured(
                f"the {scheme}:// transport is not available in this wiretask build",
                setting="broker_url",
            ) from exc
        if missing.startswith("wiretask"):
            raise
        extra = _EXTRAS.get(scheme, scheme)
        raise ImproperlyConfigured(
            f"the {scheme}:// transport needs the {missing!r} package: "
            f"pip install 'wiretask[{extra}]'",
            setting="broker_url",
        ) from exc
    transport_class: type[Transport] = getattr(module, class_name)
    return transport_class.from_url(url, **options)
