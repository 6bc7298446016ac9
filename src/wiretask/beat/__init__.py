"""Periodic tasks: schedules, the scheduler and the ``wiretask beat`` service."""

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

__all__ = [
    "BaseSchedule",
    "BeatSettings",
    "ParseException",
    "beat_settings",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]
