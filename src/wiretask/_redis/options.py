"""Options of the Redis transport, parsed once and frozen (the result backend reads
them too, to strip the transport's own options from a shared URL).

wiretask's own options may come as keyword arguments or in the URL query string
(``redis://host/0?delay_mode=celery&global_keyprefix=app1:``); the URL wins, which is
also redis-py's rule for its connection options. Query parameters that are not
wiretask's go to redis-py (``socket_timeout``, ``ssl_cert_reqs``, ...), as do unknown
keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from wiretask._redis.keys import PRIORITY_STEPS, Keys
from wiretask._url import mask_url
from wiretask.errors import ImproperlyConfigured

__all__ = ["DEFAULT_LEASE_TIMEOUT", "DELAY_MODES", "DelayMode", "RedisOptions", "parse"]

#: How the Redis transport treats a message published with ``not_before`` (see
#: ``RedisTransport``): ``"auto"`` holds it broker-side only while a mover is alive,
#: ``"native"`` always, ``"celery"`` never.
DelayMode = Literal["auto", "native", "celery"]
DELAY_MODES: tuple[DelayMode, ...] = ("auto", "native", "celery")

#: wiretask's options and how to read each from a query string.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "delay_mode": str,
    "global_keyprefix": str,
    "visibility_timeout": float,
    "lease_timeout": float,
    "lease_interval": float,
    "restore_interval": float,
    "restore_limit": int,
    "poll_interval": float,
    "publish_markers": lambda text: _flag("publish_markers", text),
    "priority_steps": lambda text: [int(step) for step in text.split(",")],
    "unacked_key": str,
    "unacked_index_key": str,
    "unacked_mutex_key": str,
    "unacked_mutex_expire": float,
}

#: How long a wiretask consumer's lease on a message lasts without renewal, by default
#: (spec TRANSPORTS.md §1.3): a message whose consumer died comes back after this, not after Kombu's
#: ``visibility_timeout``. The heartbeat renews it four times as often.
DEFAULT_LEASE_TIMEOUT = 60.0

#: Connection defaults. redis-py's are "wait forever", so a host that vanished without
#: closing the socket would hang a publish for good.
_REDIS_DEFAULTS: dict[str, Any] = {"socket_timeout": 15.0, "socket_connect_timeout": 5.0}


@attrs.frozen(kw_only=True)
class RedisOptions:
    """Everything ``RedisTransport`` was configured with (see its docstring)."""

    masked_url: str
    redis_url: str
    redis_kwargs: Mapping[str, Any]
    delay_mode: DelayMode
    priority_steps: tuple[int, ...]
    visibility_timeout: float
    lease_timeout: float
    lease_interval: float
    restore_interval: float
    restore_limit: int | None
    poll_interval: float | None
    publish_markers: bool
    mutex_expire: float
    keys: Keys


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {text!r}")


def _leases(take: Callable[[str, Any], Any]) -> tuple[float, float, float]:
    """``visibility_timeout``, ``lease_timeout`` and ``lease_interval``, checked."""
    visibility = float(take("visibility_timeout", 3600.0))
    lease_timeout = take("lease_timeout", None)
    lease_timeout = (float(lease_timeout) if lease_timeout is not None
                     else min(visibility, DEFAULT_LEASE_TIMEOUT))
    if not 0 < lease_timeout <= visibility:
        raise ImproperlyConfigured(
            f"need 0 < lease_timeout <= visibility_timeout, got {lease_timeout} and "
            f"{visibility}", setting="lease_timeout",
        )
    lease = take("lease_interval", None)
    lease = float(lease) if lease is not None else min(lease_timeout / 4, visibility / 6, 60.0)
    if not 0 < lease < lease_timeout:
        # A lease renewed less often than it lasts would let a restorer hand a running
        # message to a second consumer.
        raise ImproperlyConfigured(
            f"need 0 < lease_interval < lease_timeout (<= visibility_timeout), got {lease} "
            f"and {lease_timeout}", setting="lease_interval",
        )
    return visibility, lease_timeout, lease


def parse(url: str, options: Mapping[str, Any]) -> RedisOptions:
    """Read and check ``url`` and ``options``.

    Raises:
        ImproperlyConfigured: not a ``redis://``/``rediss://`` URL, or a bad option value.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ImproperlyConfigured(
            f"not a Redis URL (scheme {parts.scheme!r}): {mask_url(url)}", setting="broker_url"
        )
    merged = dict(options)
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _PARSERS:
            rest.append((name, value))
            continue
        try:
            merged[name] = _PARSERS[name](value)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"bad value {value!r} for {name!r} in the broker URL", setting=name
            ) from exc
    take = merged.pop
    delay_mode = take("delay_mode", "auto")
    if delay_mode not in DELAY_MODES:
        raise ImproperlyConfigured(
            f"delay_mode must be 'auto', 'native' or 'celery', not {delay_mode!r}",
            setting="delay_mode",
        )
    steps = tuple(int(step) for step in take("priority_steps", PRIORITY_STEPS))
    if not steps or steps[0] != 0 or list(steps) != sorted(set(steps)) or steps[-1] > 9:
        raise ImproperlyConfigured(
            f"priority_steps must rise from 0 to at most 9, got {list(steps)!r}",
            setting="priority_steps",
        )
    visibility, lease_timeout, lease = _leases(take)
    limit = take("restore_limit", None)
    poll = take("poll_interval", None)
    if poll is not None and not float(poll) > 0:
        raise ImproperlyConfigured("poll_interval must be positive", setting="poll_interval")
    restore_interval = float(take("restore_interval", min(30.0, lease_timeout / 4)))
    publish_markers = take("publish_markers", True)
    if not isinstance(publish_markers, bool):
        raise ImproperlyConfigured("publish_markers must be True or False",
                                   setting="publish_markers")
    mutex_expire = float(take("unacked_mutex_expire", 300.0))
    prefix = str(take("global_keyprefix", ""))
    keys = Keys(
        prefix=prefix,
        unacked=prefix + str(take("unacked_key", "unacked")),
        unacked_index=prefix + str(take("unacked_index_key", "unacked_index")),
        unacked_mutex=prefix + str(take("unacked_mutex_key", "unacked_mutex")),
        delayed=prefix + "_wiretask.delayed",
        delayed_messages=prefix + "_wiretask.delayed.messages",
    )
    # Everything left over is redis-py's (taken last, so nothing of ours leaks into it).
    return RedisOptions(
        masked_url=mask_url(url),
        redis_url=urlunsplit(parts._replace(query=urlencode(rest))),
        redis_kwargs={**_REDIS_DEFAULTS, **merged},
        delay_mode=delay_mode,
        priority_steps=steps,
        visibility_timeout=visibility,
        lease_timeout=lease_timeout,
        lease_interval=lease,
        restore_interval=restore_interval,
        restore_limit=int(limit) if limit is not None else None,
        poll_interval=float(poll) if poll is not None else None,
        publish_markers=publish_markers,
        mutex_expire=mutex_expire,
        keys=keys,
    )
