"""The beat settings, read in one place.

Every ``beat_*`` setting beat honours is read here (``beat_settings``), and the one it
writes (``beat_schedule``, by ``add_periodic_task``) is reached through
``beat_schedule_of``. Reads go through ``app.conf.get`` with Celery's defaults, so they
work whether or not the app's settings table lists the name.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import attrs

from wiretask.errors import ImproperlyConfigured

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = [
    "CHECKS",
    "DEFAULT_MAX_INTERVAL",
    "DEFAULT_SCHEDULE_FILENAME",
    "PERSISTENT_SCHEDULER",
    "BeatSettings",
    "beat_schedule_of",
    "beat_settings",
    "check_scheduler",
]

#: Celery's ``DEFAULT_MAX_INTERVAL``: the longest sleep between two looks at the schedule
#: when ``beat_max_loop_interval`` is 0 (its default).
DEFAULT_MAX_INTERVAL = 300.0
#: Celery's default ``beat_schedule_filename``.
DEFAULT_SCHEDULE_FILENAME = "celerybeat-schedule"
#: The names of Celery's default scheduler, the only one wiretask has (its schedule
#: file and broker record stand for Celery's ``shelve`` file).
PERSISTENT_SCHEDULER = frozenset(
    {"celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler"}
)


@attrs.frozen
class BeatSettings:
    """The beat settings of an app, checked."""

    #: ``beat_schedule``: entry name -> entry (checked when the scheduler reads it).
    schedule: Mapping[str, Any]
    schedule_filename: str
    #: Seconds; ``beat_max_loop_interval`` or, when it is 0, ``DEFAULT_MAX_INTERVAL``.
    max_loop_interval: float
    #: ``beat_sync_every``: honoured by syncing after every send (which is at least as
    #: often as any value asks).
    sync_every: int
    #: ``beat_cron_starting_deadline``: seconds, or None.
    cron_starting_deadline: float | None
    #: ``timezone``: the zone name a schedule's history is recorded in (a change resets
    #: it, as in Celery).
    timezone: str = "UTC"


def _number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ImproperlyConfigured(
            f"{name} must be a number of seconds >= 0, got {value!r}", setting=name
        )
    return float(value)


def _seconds(name: str, value: Any) -> Any:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return _number(name, value, allow_none=name == "beat_cron_starting_deadline")


def _schedule(name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"{name} must be a dict of entries by name, got {type(value).__name__}",
            setting=name,
        )
    return value  # kept as given: entries added to it later are seen, as in Celery


def _filename(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f"{name} must be a path, got {value!r}", setting=name)
    return value


def _sync_every(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(f"{name} must be an integer >= 0, got {value!r}",
                                   setting=name)
    return value


#: The checks of the beat settings wiretask honours (``wiretask.config``'s table uses
#: them): each raises ``ImproperlyConfigured`` naming the setting, or returns the value.
CHECKS: Mapping[str, Callable[[str, Any], Any]] = {
    "beat_schedule": _schedule,
    "beat_schedule_filename": _filename,
    "beat_max_loop_interval": _seconds,
    "beat_sync_every": _sync_every,
    "beat_cron_starting_deadline": _seconds,
}


def check_scheduler(value: Any, *, setting: str = "beat_scheduler") -> None:
    """Refuse any scheduler but Celery's default ``PersistentScheduler``.

    Raises:
        ImproperlyConfigured: another scheduler class (``django_celery_beat``'s
            ``DatabaseScheduler``, a custom one), naming it.
    """
    if value not in PERSISTENT_SCHEDULER:
        raise ImproperlyConfigured(
            f"{setting}={value!r} is not supported by wiretask: its beat has one scheduler, "
            "Celery's default celery.beat:PersistentScheduler (a schedule file plus a "
            "record on the broker); custom and database schedulers cannot be loaded",
            setting=setting,
        )


def beat_settings(app: App) -> BeatSettings:
    """The app's beat settings, with Celery's defaults.

    Raises:
        ImproperlyConfigured: a beat setting of the wrong shape, a scheduler other than
            Celery's default, or ``beat_enable_remote_control`` (naming it).
    """
    conf = app.conf
    if conf.get("beat_enable_remote_control"):
        raise ImproperlyConfigured(
            "beat_enable_remote_control=True is not supported by wiretask: beat does not "
            "answer remote control (there is no remote control yet); watch its log, or its "
            "lease on the broker",
            setting="beat_enable_remote_control",
        )
    check_scheduler(conf.get("beat_scheduler") or "celery.beat:PersistentScheduler")

    def read(name: str, default: Any) -> Any:
        value = conf.get(name)
        return CHECKS[name](name, default if value is None else value)

    return BeatSettings(
        schedule=read("beat_schedule", {}),
        schedule_filename=read("beat_schedule_filename", DEFAULT_SCHEDULE_FILENAME),
        max_loop_interval=read("beat_max_loop_interval", 0) or DEFAULT_MAX_INTERVAL,
        sync_every=read("beat_sync_every", 0),
        cron_starting_deadline=CHECKS["beat_cron_starting_deadline"](
            "beat_cron_starting_deadline", conf.get("beat_cron_starting_deadline")),
        timezone=str(conf.get("timezone") or "UTC"),
    )


def beat_schedule_of(app: App) -> dict[str, Any]:
    """``app.conf.beat_schedule`` as the dict to add entries to (created if unset).

    Raises:
        ImproperlyConfigured: ``beat_schedule`` is set to something else than a dict.
    """
    schedule = app.conf.get("beat_schedule")
    if schedule is None:
        schedule = {}
        app.conf["beat_schedule"] = schedule
    if not isinstance(schedule, dict):
        raise ImproperlyConfigured(
            f"beat_schedule must be a dict of entries by name, got {type(schedule).__name__}",
            setting="beat_schedule",
        )
    return schedule
