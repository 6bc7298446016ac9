"""Periodic tasks: schedules, entries, the scheduler and the ``wiretask beat`` service
(see ``docs/periodic-tasks.md``).

* ``schedules``: ``schedule``, ``crontab`` (also importable as ``wiretask.schedules``);
* ``entries``: ``beat_schedule`` entries and what ``add_periodic_task`` writes;
* ``periodic``: the app's ``on_after_configure`` and ``add_periodic_task``;
* ``store``: the schedule file; ``lease``: the lease on the broker;
* ``service``: the scheduler, the service and the embedded beat (``worker -B``);
* ``settings``: the beat settings, read in one place.
"""

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
from wiretask.beat.service import EmbeddedBeat, Scheduler, SchedulingError, Service
from wiretask.beat.settings import BeatSettings, beat_settings

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
