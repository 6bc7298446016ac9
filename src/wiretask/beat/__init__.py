"""Periodic tasks: schedules, entries, the scheduler and the ``wiretask beat`` service
(see ``docs/periodic-tasks.md``).

* ``schedules``: ``schedule``, ``crontab`` (also importable as ``wiretask.schedules``);
* ``entries``: ``beat_schedule`` entries and what ``add_periodic_task`` writes;
* ``periodic``: the app's ``on_after_configure`` and ``add_periodic_task``;
* ``store``: the schedule file; ``lease``: the lease on the broker;
* ``service``: the scheduler, the service and the embedded beat (``worker -B``);
* ``settings``: the beat settings, read in one place.
"""

from typing import TYPE_CHECKING, Any

from wiretask.beat.entries import BeatLazyFunc, ScheduleEntry
from wiretask.beat.schedules import (
    BaseSchedule,
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedstate,
    schedule,
    solar,
)
from wiretask.beat.settings import BeatSettings, beat_settings

if TYPE_CHECKING:
    from wiretask.beat.service import EmbeddedBeat, Scheduler, SchedulingError, Service

#: Loaded on first use: the service brings the lease's SQLite driver (``sqlite3``, ~1 MiB
#: of RSS), which a worker without ``-B`` and a sending app never need (issue 18's bound
#: on the worker's RSS); ``wiretask.app`` imports this package for ``periodic``.
_SERVICE = frozenset({"EmbeddedBeat", "Scheduler", "SchedulingError", "Service"})


def __getattr__(name: str) -> Any:
    if name in _SERVICE:
        from wiretask.beat import service  # noqa: PLC0415 - see _SERVICE

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BaseSchedule",
    "BeatLazyFunc",
    "BeatSettings",
    "EmbeddedBeat",
    "ParseException",
    "ScheduleEntry",
    "Scheduler",
    "SchedulingError",
    "Service",
    "beat_settings",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]
