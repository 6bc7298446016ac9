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
* ``amqp://``, ``pyamqp://`` and ``amqps://`` (TLS): ``wiretask.transports.amqp.AMQPTransport``
  (RabbitMQ, on py-amqp), imported only when such a URL is used.

**Third-party transports** plug in through the entry-point group ``wiretask.transports``:
the entry point's name is the URL scheme, its value the transport class
(``module:Class``), e.g. in ``pyproject.toml``::

    [project.entry-points."wiretask.transports"]
    mybroker = "mypackage.transport:MyBrokerTransport"

The group is read when a URL's scheme is not built in (built-in schemes never look at
it). A scheme registered by two entry points, an entry point that claims a built-in
scheme, or a value that is not a ``Transport`` subclass is refused with
``ImproperlyConfigured`` naming the entry points. (``App(transport=...)`` plugs in a
transport without a URL scheme.)

Transports are built with ``Transport.from_url(url, **options)``; construction does no
I/O, so a bad host is reported by the first ``connect()``, not here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from wiretask._url import mask_url
from wiretask.errors import ImproperlyConfigured
from wiretask.transports.base import Transport

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = [
    "ENTRY_POINT_GROUP",
    "SCHEMES",
    "mask_url",
    "registered_schemes",
    "transport_class",
    "transport_from_url",
]

#: scheme → (module, class). Modules are imported on first use.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("wiretask.transports.memory", "MemoryTransport"),
    "sqlite": ("wiretask.transports.sqlite", "SQLiteTransport"),
    "redis": ("wiretask.transports.redis", "RedisTransport"),
    "rediss": ("wiretask.transports.redis", "RedisTransport"),
    "amqp": ("wiretask.transports.amqp", "AMQPTransport"),
    "pyamqp": ("wiretask.transports.amqp", "AMQPTransport"),
    "amqps": ("wiretask.transports.amqp", "AMQPTransport"),
}

#: The entry-point group of third-party transports: name = URL scheme, value = class.
ENTRY_POINT_GROUP = "wiretask.transports"

# What to install when a transport's module cannot be imported for want of its driver.
_EXTRAS = {"redis": "redis", "rediss": "redis", "pyamqp": "amqp", "amqps": "amqp"}


def transport_from_url(url: str, **options: Any) -> Transport:
    """The transport for a broker URL (not connected yet).

    Args:
        url: the broker URL.
        **options: transport options (e.g. ``visibility_timeout``), passed to the
            transport's ``from_url``, which refuses the ones it does not know.

    Raises:
        ImproperlyConfigured: not a string, an unknown scheme (the message names the
            supported ones, entry points included), a transport whose driver is not
            installed, or a bad ``wiretask.transports`` entry point (see the module
            doc).
    """
    return transport_class(url).from_url(url, **options)


def transport_class(url: str) -> type[Transport]:
    """The transport class for a broker URL (its module imported), without building
    one: what the app asks for its ``options_from_settings``.

    Raises:
        ImproperlyConfigured: as ``transport_from_url``.
    """
    if not isinstance(url, str) or not url:
        raise ImproperlyConfigured(
            f"a broker URL must be a non-empty string, got {url!r}", setting="broker_url"
        )
    scheme = urlsplit(url).scheme.lower()
    if "://" in url and scheme in SCHEMES:
        return _builtin(scheme)
    plugins = registered_schemes()
    if "://" not in url or scheme not in plugins:
        known = [f"{name}://" for name in SCHEMES]
        known += [f"{name}:// ({_describe(entry)})" for name, entry in plugins.items()]
        raise ImproperlyConfigured(
            f"unsupported broker URL {mask_url(url)!r}: the scheme must be one of "
            f"{', '.join(known)}",
            setting="broker_url",
        )
    return _load(scheme, plugins[scheme])


def registered_schemes() -> dict[str, EntryPoint]:
    """The URL schemes that installed packages register in the ``wiretask.transports``
    entry-point group, by scheme (lower case).

    Raises:
        ImproperlyConfigured: a scheme registered twice, or one that is built in.
    """
    # Imported here: importlib.metadata costs milliseconds that built-in schemes skip.
    from importlib.metadata import entry_points  # noqa: PLC0415

    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        scheme = entry.name.lower()
        if scheme in SCHEMES:
            raise ImproperlyConfigured(
                f"the entry point {_describe(entry)} in group {ENTRY_POINT_GROUP!r} claims "
                f"the built-in scheme {scheme}://; uninstall it or give it another name",
                setting="broker_url",
            )
        if scheme in found:
            raise ImproperlyConfigured(
                f"the scheme {scheme}:// is registered twice in entry-point group "
                f"{ENTRY_POINT_GROUP!r}: {_describe(found[scheme])} and {_describe(entry)}",
                setting="broker_url",
            )
        found[scheme] = entry
    return found


def _describe(entry: EntryPoint) -> str:
    dist = entry.dist.name if entry.dist is not None else "an unknown distribution"
    return f"{entry.name} = {entry.value} from {dist}"


def _load(scheme: str, entry: EntryPoint) -> type[Transport]:
    try:
        loaded = entry.load()
    except (ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(
            f"the {scheme}:// transport ({_describe(entry)}) cannot be loaded: {exc}",
            setting="broker_url",
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Transport)):
        raise ImproperlyConfigured(
            f"the entry point {_describe(entry)} is not a Transport subclass "
            f"(got {loaded!r}); its value must name one as module:Class",
            setting="broker_url",
        )
    return loaded


def _builtin(scheme: str) -> type[Transport]:
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
    return transport_class
