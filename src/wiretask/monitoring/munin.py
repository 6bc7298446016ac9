"""The Munin plugin: ``wiretask munin``, or the ``wiretask`` script linked as a plugin.

Install it the way Munin plugins are installed::

    ln -s "$(command -v wiretask)" /etc/munin/plugins/wiretask_celery     # one queue
    ln -s "$(command -v wiretask)" /etc/munin/plugins/wiretask_           # env.queues

and configure it in ``/etc/munin/plugin-conf.d/wiretask``::

    [wiretask_*]
    env.WIRETASK_BROKER_URL redis://127.0.0.1:6379/0
    env.queues celery emails          # for the bare wiretask_ link
    env.ready_warning 1000
    env.ready_critical 10000
    env.age_warning 60
    env.age_critical 300

The queue comes from the link name (``wiretask_<queue>``), else from ``env.queues``
(names separated by spaces or commas), else it is ``celery``. Per queue the plugin
draws, as a Munin multigraph, ``wiretask_<queue>`` (messages ready, scheduled, in flight
and dead), ``wiretask_<queue>_age`` (seconds the oldest ready message has waited) and,
where the broker keeps counters, ``wiretask_<queue>_rates`` (published, delivered, acked
and dead-lettered per second). ``<field>_warning`` / ``<field>_critical`` in the plugin
environment (fields ``ready``, ``scheduled``, ``in_flight``, ``dead``, ``age``, and the
counters) set Munin's thresholds, in Munin's syntax (``max`` or ``min:max``). A number
the broker cannot tell is ``U`` (unknown) in ``fetch``; a field the transport never
tells is left out of ``config``.

Pure: the functions take the readings and the environment and return lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from wiretask.errors import ImproperlyConfigured
from wiretask.monitoring.report import COUNTERS, STATES
from wiretask.transports.base import QueueStats

__all__ = [
    "FIELDS",
    "PLUGIN_PREFIX",
    "config_lines",
    "fetch_lines",
    "graph_name",
    "plugin_queues",
    "thresholds",
]

#: A plugin linked as ``wiretask_<queue>`` reads that queue.
PLUGIN_PREFIX = "wiretask_"

#: Fields whose thresholds the environment may set.
FIELDS: tuple[str, ...] = (*STATES, "age", *COUNTERS)

_LABELS = {
    "ready": "ready", "scheduled": "scheduled (delayed)", "in_flight": "in flight",
    "dead": "dead letters", "published": "published", "delivered": "delivered",
    "acked": "acked", "dead_lettered": "dead-lettered", "age": "oldest ready message",
}
_INFO = {
    "ready": "Messages a consumer could take now.",
    "scheduled": "Messages the broker holds until their eta/countdown.",
    "in_flight": "Messages delivered to a worker and not acknowledged yet.",
    "dead": "Messages that could not be processed, kept with the reason.",
}
# Munin's threshold syntax: "max", "min:max", "min:" or ":max".
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_THRESHOLD = re.compile(rf"^(?:{_NUMBER})?(?::(?:{_NUMBER})?)?$")


def plugin_queues(
    program: str | None, environ: Mapping[str, str], given: Sequence[str] | None = None
) -> list[str]:
    """The queues to report: ``given`` (``--queues``), else the suffix of a plugin linked
    as ``wiretask_<queue>``, else ``env.queues``, else ``celery``."""
    if given:
        return list(given)
    if program and program.startswith(PLUGIN_PREFIX) and program != PLUGIN_PREFIX:
        return [program[len(PLUGIN_PREFIX):]]
    listed = [name for name in re.split(r"[\s,]+", environ.get("queues", "")) if name]
    return listed or ["celery"]


def graph_name(queue: str) -> str:
    """A Munin-safe name for ``queue``'s graphs: ``wiretask_`` and the queue name with
    every character but letters, digits and ``_`` turned into ``_``."""
    return "wiretask_" + re.sub(r"[^A-Za-z0-9_]", "_", queue)


def thresholds(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{field: {"warning": ..., "critical": ...}}`` from ``<field>_warning`` and
    ``<field>_critical`` in the plugin environment.

    Raises:
        ImproperlyConfigured: a value that is not in Munin's threshold syntax (named).
    """
    found: dict[str, dict[str, str]] = {}
    for field in FIELDS:
        for level in ("warning", "critical"):
            name = f"{field}_{level}"
            value = environ.get(name)
            if value is None:
                continue
            value = value.strip()
            if not value or not _THRESHOLD.match(value):
                raise ImproperlyConfigured(
                    f"env.{name} must be a Munin threshold (max, or min:max), "
                    f"got {value!r}", setting=name,
                )
            found.setdefault(field, {})[level] = value
    return found


def _graph_names(readings: Sequence[QueueStats]) -> list[str]:
    names = [graph_name(stats.queue) for stats in readings]
    seen: dict[str, str] = {}
    for stats, name in zip(readings, names, strict=True):
        if name in seen and seen[name] != stats.queue:
            raise ImproperlyConfigured(
                f"queues {seen[name]!r} and {stats.queue!r} both make the Munin graph "
                f"name {name!r}: report them from separate plugins", setting="queues",
            )
        seen[name] = stats.queue
    return names


def _field_config(field: str, limits: Mapping[str, dict[str, str]]) -> list[str]:
    lines = [f"{field}.label {_LABELS.get(field, field)}", f"{field}.min 0"]
    for level, value in sorted(limits.get(field, {}).items()):
        lines.append(f"{field}.{level} {value}")
    return lines


def config_lines(
    readings: Sequence[QueueStats], limits: Mapping[str, dict[str, str]], broker: str
) -> list[str]:
    """The ``config`` answer: the graphs of each queue. A number the transport cannot
    tell (``None`` in a reading: transports tell the same numbers every time) is left
    out; the age field is always there."""
    lines: list[str] = []
    for stats, name in zip(readings, _graph_names(readings), strict=True):
        lines += [
            f"multigraph {name}",
            f"graph_title wiretask queue {stats.queue}",
            "graph_category wiretask",
            "graph_vlabel messages",
            "graph_args --base 1000 --lower-limit 0",
            f"graph_info Messages of queue {stats.queue} on {broker}, by state.",
        ]
        for state in STATES:
            if getattr(stats, state) is not None:
                lines += _field_config(state, limits)
                lines.append(f"{state}.info {_INFO[state]}")
        lines += [
            f"multigraph {name}_age",
            f"graph_title wiretask queue {stats.queue}: oldest ready message",
            "graph_category wiretask",
            "graph_vlabel seconds",
            "graph_args --base 1000 --lower-limit 0",
            f"graph_info How long the oldest ready message of {stats.queue} has waited "
            "(0 when none is ready).",
            *_field_config("age", limits),
        ]
        if any(getattr(stats, counter) is not None for counter in COUNTERS):
            lines += [
                f"multigraph {name}_rates",
                f"graph_title wiretask queue {stats.queue}: throughput",
                "graph_category wiretask",
                "graph_vlabel messages per ${graph_period}",
                "graph_args --base 1000 --lower-limit 0",
            ]
            for counter in COUNTERS:
                if getattr(stats, counter) is not None:
                    lines += _field_config(counter, limits)
                    lines.append(f"{counter}.type DERIVE")
    return lines


def fetch_lines(readings: Sequence[QueueStats]) -> list[str]:
    """The ``fetch`` answer: the values of the graphs ``config_lines`` describes."""
    lines: list[str] = []
    for stats, name in zip(readings, _graph_names(readings), strict=True):
        lines.append(f"multigraph {name}")
        lines += [f"{state}.value {getattr(stats, state)}" for state in STATES
                  if getattr(stats, state) is not None]
        if stats.ready == 0:
            age = "0"
        else:
            known = stats.oldest_age
            age = "U" if known is None else f"{known:.3f}"
        lines += [f"multigraph {name}_age", f"age.value {age}"]
        if any(getattr(stats, counter) is not None for counter in COUNTERS):
            lines.append(f"multigraph {name}_rates")
            lines += [f"{counter}.value {getattr(stats, counter)}" for counter in COUNTERS
                      if getattr(stats, counter) is not None]
    return lines
