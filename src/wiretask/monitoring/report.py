"""Queue statistics for people and scripts: a JSON record, a table, rates between two
readings, and threshold checks. Pure: values in, text out (no clock, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from wiretask.transports.base import QueueStats

__all__ = [
    "COUNTERS",
    "STATES",
    "Breach",
    "breaches",
    "duration",
    "iso",
    "rates",
    "stats_record",
    "stats_table",
]

#: The message states of a queue, in the order every output shows them.
STATES: tuple[str, ...] = ("ready", "scheduled", "in_flight", "dead")
#: The monotonic counters, in the order every output shows them.
COUNTERS: tuple[str, ...] = ("published", "delivered", "acked", "dead_lettered")


def stats_record(stats: QueueStats) -> dict[str, Any]:
    """``stats`` as a JSON-ready mapping: every field (``None`` for what the broker
    cannot tell, or for an oldest time / next due time that does not exist), plus
    ``oldest_age`` in seconds."""
    record: dict[str, Any] = {
        "queue": stats.queue,
        "at": stats.at,
        **{state: getattr(stats, state) for state in STATES},
        "next_due": stats.next_due,
        "oldest_ready_at": stats.oldest_ready_at,
        "oldest_age": stats.oldest_age,
    }
    for counter in COUNTERS:
        record[counter] = getattr(stats, counter)
    return record


def rates(before: QueueStats, after: QueueStats) -> dict[str, float | None]:
    """Per-second rates of the counters between two readings of one queue; ``None`` for a
    counter the broker does not keep, or when no time passed. A counter that went down
    (the broker restarted) counts from zero, as Prometheus' ``rate()`` does."""
    elapsed = after.at - before.at
    found: dict[str, float | None] = {}
    for counter in COUNTERS:
        old, new = getattr(before, counter), getattr(after, counter)
        if old is None or new is None or elapsed <= 0:
            found[counter] = None
        else:
            found[counter] = (new - old if new >= old else new) / elapsed
    return found


def duration(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h03m`` or ``3d04h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _age(stats: QueueStats) -> str:
    if stats.ready == 0:
        return "-"
    age = stats.oldest_age
    return "?" if age is None else duration(age)


def _next_due(stats: QueueStats) -> str:
    if stats.next_due is None:
        return "?" if stats.scheduled is None else "-"
    return "in " + duration(max(0.0, stats.next_due - stats.at))


def stats_table(
    readings: Sequence[QueueStats],
    per_second: Mapping[str, Mapping[str, float | None]] | None = None,
) -> list[str]:
    """The human table: one row per queue. ``?`` is a number the broker cannot tell,
    ``-`` one that does not exist (no ready message has an age). Counter columns are
    shown when any queue has counters: their totals, or with ``per_second`` (queue ->
    ``rates()``) their rates."""
    headers = ["QUEUE", "READY", "SCHEDULED", "NEXT DUE", "IN FLIGHT", "DEAD", "OLDEST"]
    counted = any(getattr(s, c) is not None for s in readings for c in COUNTERS)
    if counted:
        suffix = "/s" if per_second is not None else ""
        headers += [c.upper().replace("_", " ") + suffix for c in COUNTERS]
    rows: list[list[str]] = []
    for stats in readings:
        row = [stats.queue, str(stats.ready), _count(stats.scheduled), _next_due(stats),
               _count(stats.in_flight), _count(stats.dead), _age(stats)]
        if counted:
            if per_second is not None:
                speeds = per_second.get(stats.queue, {})
                row += ["?" if speeds.get(c) is None else f"{speeds[c]:.1f}"
                        for c in COUNTERS]
            else:
                row += [_count(getattr(stats, c)) for c in COUNTERS]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        # The queue name left-aligned, the numbers right-aligned under their headers.
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                             zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


@attrs.frozen
class Breach:
    """A threshold a queue crossed, or could not be checked against."""

    queue: str
    #: ``"ready"`` (``--fail-above``) or ``"age"`` (``--max-age``).
    what: str
    #: The reading (``None``: the broker cannot tell it).
    value: float | None
    limit: float

    def __str__(self) -> str:
        if self.what == "ready":
            return (f"queue {self.queue!r}: {self.value:g} ready messages, above "
                    f"{self.limit:g}")
        if self.value is None:
            return (f"queue {self.queue!r}: the age of its oldest ready message cannot be "
                    f"told (a message without a publish time heads it), so --max-age "
                    f"{self.limit:g} cannot be checked")
        return (f"queue {self.queue!r}: its oldest ready message has waited "
                f"{duration(self.value)}, above {duration(self.limit)}")


def breaches(
    readings: Sequence[QueueStats], *, max_ready: int | None = None,
    max_age: float | None = None,
) -> list[Breach]:
    """The thresholds crossed: more than ``max_ready`` ready messages, or an oldest ready
    message older than ``max_age`` seconds. An age the broker cannot tell while messages
    are ready is a breach too: a health check that cannot look must not pass."""
    found: list[Breach] = []
    for stats in readings:
        if max_ready is not None and stats.ready > max_ready:
            found.append(Breach(stats.queue, "ready", stats.ready, max_ready))
        if max_age is not None and stats.ready:
            age = stats.oldest_age
            if age is None or age > max_age:
                found.append(Breach(stats.queue, "age", age, max_age))
    return found


def iso(when: float) -> str:
    """A Unix time as ISO 8601 UTC, to the second."""
    text = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")
