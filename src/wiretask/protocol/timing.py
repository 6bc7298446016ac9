"""Time rules: countdown / eta / expires to absolute aware datetimes, and back to the wire.

Everything here is a pure function of its arguments; the caller passes ``now`` (an
aware datetime), so the rules can be tested without a clock.

Conventions, following Celery protocol 2 (``spec/PROTOCOL.md`` §10):

* On the wire ``eta`` and ``expires`` are ISO 8601 strings written by
  ``datetime.isoformat()`` with an offset, e.g. ``2026-11-23T19:29:02.846359+00:00``.
* A **naive** datetime or ISO string means **UTC**. Celery's worker reads naive values
  with ``maybe_make_aware(..., naive_as_utc=True)`` whatever its own time zone, so
  wiretask does the same on both sides and always writes an explicit offset.
* Inside wiretask every datetime is aware. Offsets are kept as given (an eta built
  from a ``+05:30`` datetime is written with ``+05:30``); comparisons are by instant.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from wiretask.errors import MalformedMessage, ValidationError

__all__ = [
    "EPOCH",
    "format_iso",
    "is_expired",
    "parse_iso",
    "resolve_eta",
    "resolve_expires",
    "to_aware",
]

#: 1970-01-01T00:00:00+00:00. An eta before it is refused: workers and delayed-delivery
#: transports turn the eta into a POSIX timestamp (Celery's ``to_timestamp``, a sorted-set
#: score on Redis), and a negative one is always a bug in the sender.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_aware(value: datetime) -> datetime:
    """Return ``value`` with a time zone: naive datetimes are taken as **UTC**.

    This matches how a Celery worker reads naive ``eta``/``expires`` values
    (``naive_as_utc=True``). Note that ``datetime.now()`` on a host whose local zone is
    not UTC is therefore *not* "now": pass aware datetimes.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value


def format_iso(value: datetime) -> str:
    """Format a datetime as Celery writes ``eta``/``expires``: ``isoformat()`` with offset.

    Naive values are taken as UTC first, so the result always carries an offset.
    """
    if type(value) is datetime and value.tzinfo is UTC:
        # orjson writes the same text for UTC (RFC 3339 is a profile of what isoformat
        # writes; tests/protocol/test_timing.py checks them against each other), at a
        # third of the cost. Other offsets can differ (isoformat keeps offset seconds).
        return orjson.dumps(value)[1:-1].decode()
    return to_aware(value).isoformat()


def parse_iso(value: Any, *, field: str, decoding: bool = False) -> datetime:
    """Parse an ISO 8601 string into an aware datetime (naive means UTC).

    ``datetime.fromisoformat`` is used: on Python 3.11 it reads every form Celery and
    Kombu have written (``+00:00`` offsets, a trailing ``Z``, with or without
    microseconds).

    Args:
        value: The string to parse.
        field: The name used in the error (``"eta"`` when sending,
            ``"headers.eta"`` when decoding).
        decoding: ``False`` (send side): a bad value is a :class:`ValidationError`.
            ``True`` (receive side): it is a :class:`MalformedMessage`.

    Raises:
        ValidationError: ``decoding`` is false and the value is not an ISO 8601 string.
        MalformedMessage: ``decoding`` is true and the value is not an ISO 8601 string.
    """
    if not isinstance(value, str):
        problem = f"expected an ISO 8601 string, got {type(value).__name__}"
    else:
        try:
            return to_aware(datetime.fromisoformat(value))
        except ValueError:
            problem = f"not an ISO 8601 date-time: {value!r}"
    if decoding:
        raise MalformedMessage(field, problem)
    raise ValidationError(field, problem, value=value)


def is_expired(expires: datetime | None, *, now: datetime) -> bool:
    """Whether a message with this ``expires`` has expired at ``now``.

    Expired means strictly after: Celery's worker revokes when ``now > expires``.
    """
    return expires is not None and now > expires


def _seconds(value: Any, field: str) -> float:
    kind = type(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return value  # type: ignore[no-any-return]
    # bool is an int subclass; ``countdown=True`` is a bug, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            field, f"must be a number of seconds, got {type(value).__name__}", value=value
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(field, f"must be finite, got {value!r}", value=value)
    return value


def _require_aware(now: datetime) -> None:
    if type(now) is datetime and now.tzinfo is UTC:
        return
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValidationError("now", "must be an aware datetime", value=now)


def _add(now: datetime, seconds: float, field: str) -> datetime:
    try:
        return now + timedelta(seconds=seconds)
    except OverflowError:
        raise ValidationError(
            field, f"{seconds!r} seconds is out of range", value=seconds
        ) from None


def resolve_eta(
    *,
    now: datetime,
    countdown: float | None = None,
    eta: datetime | str | None = None,
) -> datetime | None:
    """Turn the ``countdown`` / ``eta`` calling options into an absolute aware eta.

    Rules:

    * ``countdown`` (seconds, int or float) gives ``now + countdown``. ``0`` means
      "not set", as in Celery (``if countdown:``); a negative countdown gives an eta in
      the past, which runs at once.
    * ``eta`` may be a datetime (naive = UTC) or an ISO 8601 string, which is parsed
      here so that a bad value fails at the call site and not in a worker.
    * Giving a non-zero ``countdown`` **and** an ``eta`` is an error. Celery lets the
      countdown win silently although its docstring says they may not be combined.
    * An eta before 1970-01-01 UTC is an error.

    Args:
        now: The current time, aware.
        countdown: Seconds from ``now``.
        eta: Absolute time.

    Returns:
        The aware eta, or ``None`` if neither option was set.

    Raises:
        ValidationError: ``field`` is ``"countdown"``, ``"eta"`` or ``"now"``.
    """
    result: datetime | None
    if countdown is not None:
        countdown = _seconds(countdown, "countdown")
    if countdown:
        if eta is not None:
            raise ValidationError(
                "countdown",
                "countdown and eta are mutually exclusive (Celery would silently drop eta)",
                value=countdown,
            )
        _require_aware(now)
        result = _add(now, countdown, "countdown")
        field = "countdown"
    elif eta is None:
        return None
    elif isinstance(eta, datetime):
        result = to_aware(eta)
        field = "eta"
    elif isinstance(eta, str):
        result = parse_iso(eta, field="eta")
        field = "eta"
    else:
        raise ValidationError(
            "eta", f"must be a datetime or an ISO 8601 string, got {type(eta).__name__}",
            value=eta,
        )
    if result < EPOCH:
        raise ValidationError(field, f"eta {result.isoformat()} is before 1970", value=result)
    return result


def resolve_expires(
    *,
    now: datetime,
    expires: float | datetime | timedelta | str | None,
) -> tuple[datetime | None, str | None]:
    """Turn the ``expires`` calling option into the ``expires`` header and TTL property.

    ``expires`` may be seconds from ``now`` (int or float), a :class:`~datetime.timedelta`
    from ``now``, an absolute datetime (naive = UTC) or an ISO 8601 string.

    Like Celery >= 5.2 (``send_task``), every form also yields the per-message broker TTL
    that goes into the AMQP ``expiration`` property: the seconds left until ``expires``
    (``expires - now`` for absolute values), **clamped to 0** when already past, written
    in milliseconds as ``str(int(seconds * 1000))``. Celery refuses a ``timedelta``
    (``TypeError``); wiretask accepts it as a relative time, like a number.

    Args:
        now: The current time, aware.
        expires: The option value.

    Returns:
        ``(expires, expiration)``: the aware absolute time and the TTL string, or
        ``(None, None)`` when ``expires`` is ``None``.

    Raises:
        ValidationError: ``field`` is ``"expires"`` or ``"now"``.
    """
    if expires is None:
        return None, None
    _require_aware(now)
    if isinstance(expires, datetime):
        at = to_aware(expires)
        ttl = (at - now).total_seconds()
    elif isinstance(expires, timedelta):
        at = _add(now, expires.total_seconds(), "expires")
        ttl = expires.total_seconds()
    elif isinstance(expires, str):
        at = parse_iso(expires, field="expires")
        ttl = (at - now).total_seconds()
    else:
        ttl = _seconds(expires, "expires")
        at = _add(now, ttl, "expires")
    return at, str(int(max(ttl, 0) * 1000))
