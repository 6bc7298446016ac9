"""Celery's ``celery.schedules`` under wiretask's name: ``from celery.schedules import
crontab`` ports as ``from wiretask.schedules import crontab``. The schedules live in
``wiretask.beat.schedules``."""

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

__all__ = [
    "BaseSchedule",
    "ParseException",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]
