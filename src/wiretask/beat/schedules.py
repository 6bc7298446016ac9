"""Schedules: when a periodic task is due (Celery's ``celery.schedules``).

* ``schedule(run_every)``: every ``run_every`` (seconds or a ``timedelta``) after the
  last run; ``relative=True`` rounds the next run down to the interval's resolution
  (days, hours, minutes) in the app's time zone, "by the clock".
* ``crontab(minute, hour, day_of_week, day_of_month, month_of_year)``: Celery's crontab,
  with its field syntax (``*``, ``*/15``, ``1-5``, ``1-30/2``, lists, ``mon-fri``,
  wrap-around ranges such as ``fri-mon``) and its rule that a day must match all three
  day and month fields. Fields are read in the app's time zone.
* ``solar``: refused by name (wiretask does not compute sun positions).

A schedule answers ``is_due(last_run_at) -> (is_due, next)``: whether the task is due
now, and in how many seconds to look again. "Now" is ``nowfun()`` if given, else the
app's ``now()`` (``App(clock=...)`` injects a clock), else the wall clock in UTC. The
time zone is the app's (``timezone``; UTC by default). Naive datetimes are read as UTC,
as Celery reads them.

The next run of a crontab is the first minute matching every field that comes strictly
after the minute of the last run, in wall-clock time of the app's zone; a schedule that
can never match (the 30th of February) is refused when it is made, as in Celery 5.7.
"""

from __future__ import annotations

import bisect
import calendar
import numbers
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple

from wiretask.beat.settings import beat_settings
from wiretask.errors import ImproperlyConfigured, ValidationError

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = [
    "BaseSchedule",
    "ParseException",
    "crontab",
    "crontab_parser",
    "humanize_seconds",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]

Nowfun = Callable[[], datetime]
Cronspec = int | str | Iterable[int]

_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)
_MINUTE = timedelta(minutes=1)

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
               "dec")
#: Days in each month, February of a leap year.
_LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31,
                  11: 30, 12: 31}


class schedstate(NamedTuple):
    """``(is_due, next)``: due now or not, and seconds until the schedule should be
    looked at again."""

    is_due: bool
    next: float


class ParseException(ValidationError):
    """A crontab field that cannot be parsed; ``field`` names it (``"minute"``, ...)."""


_TIME_UNITS = (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0))


def humanize_seconds(secs: float, prefix: str = "", now: str = "now") -> str:
    """Seconds in words, as Celery writes them: ``10.00 seconds``, ``1.00 minute``."""
    secs = float(format(float(secs), ".2f"))
    for unit, divider in _TIME_UNITS:
        if secs >= divider:
            amount = secs / divider
            plural = "" if amount == 1 else "s"
            return f"{prefix}{amount:.2f} {unit}{plural}"
    return now


def _as_utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class BaseSchedule:
    """What beat asks of a schedule: ``is_due(last_run_at)`` and ``remaining_estimate``.

    Subclass it (as Celery's ``schedule``) for a custom schedule type.

    Args:
        nowfun: returns the current time (default: the app's ``now()``).
        app: the app whose time zone and clock the schedule uses (beat sets it on the
            schedules of its entries).
    """

    def __init__(self, nowfun: Nowfun | None = None, app: App | None = None) -> None:
        if nowfun is not None and not callable(nowfun):
            raise ValidationError("nowfun", f"must be a function returning a datetime, "
                                  f"got {nowfun!r}", value=nowfun)
        self.nowfun = nowfun
        self._app = app

    @property
    def app(self) -> App | None:
        return self._app

    @app.setter
    def app(self, app: App | None) -> None:
        self._app = app

    @property
    def tz(self) -> tzinfo:
        """The app's time zone (UTC without an app)."""
        return UTC if self._app is None else self._app.timezone

    def now(self) -> datetime:
        if self.nowfun is not None:
            return self.nowfun()
        if self._app is not None:
            return self._app.now()
        return datetime.now(UTC)

    def maybe_make_aware(self, dt: datetime) -> datetime:
        """``dt`` unchanged if aware; a naive one read as UTC, in the app's zone."""
        if dt.tzinfo is None or dt.utcoffset() is None:
            return dt.replace(tzinfo=UTC).astimezone(self.tz)
        return dt

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the run that follows ``last_run_at`` (negative: overdue)."""
        raise NotImplementedError

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Whether the run after ``last_run_at`` is due now, and when to look again."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseSchedule):
            return other.nowfun == self.nowfun
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by value, and mutable (app)


def _timedelta(field: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    raise ValidationError(
        field, f"must be a number of seconds or a timedelta, got {value!r}", value=value
    )


class schedule(BaseSchedule):
    """Every ``run_every`` after the last run (Celery's ``schedule``).

    Args:
        run_every: seconds (a number) or a ``timedelta``; more than zero (Celery takes
            zero and then sends without pause; wiretask refuses it).
        relative: round the next run down to the resolution of ``run_every`` (whole
            days, hours or minutes; seconds otherwise) in the app's time zone.
        nowfun, app: as ``BaseSchedule``.

    Raises:
        ValidationError: ``run_every`` is not a positive number of seconds or timedelta.
    """

    def __init__(
        self, run_every: float | timedelta, relative: bool = False,
        nowfun: Nowfun | None = None, app: App | None = None,
    ) -> None:
        every = _timedelta("run_every", run_every)
        if every <= timedelta(0):
            raise ValidationError(
                "run_every", f"must be more than 0 seconds, got {run_every!r} (a schedule "
                "of 0 would send without pause)", value=run_every,
            )
        self.run_every = every
        self.relative = bool(relative)
        super().__init__(nowfun=nowfun, app=app)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0.0)

    @property
    def human_seconds(self) -> str:
        return humanize_seconds(self.seconds)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        start = self.maybe_make_aware(last_run_at)
        if self.relative:
            end = _relative_end(start, self.run_every)
        else:
            end = _as_utc(start) + self.run_every
        return end - _as_utc(self.maybe_make_aware(self.now()))

    def is_due(self, last_run_at: datetime) -> schedstate:
        last_run_at = self.maybe_make_aware(last_run_at)
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0.0)
        if remaining > 0:
            return schedstate(False, remaining)
        next_check = self.seconds
        if self.relative:
            # Realign to the next rounded boundary after now (a late run, a restart or a
            # DST change can put it closer than one interval), as Celery 5.7 does.
            now = self.maybe_make_aware(self.now()).astimezone(last_run_at.tzinfo)
            ahead = self.remaining_estimate(now).total_seconds()
            if ahead > 0:
                next_check = ahead
        return schedstate(True, next_check)

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        return self.run_every == other

    __hash__ = None  # compared by value, and mutable (app)


# -- relative schedules: Celery 5.7's rounding rule --------------------------------------


def _exists(dt: datetime) -> bool:
    """Whether the aware wall time ``dt`` exists in its zone (not in a DST gap)."""
    back = dt.astimezone(UTC).astimezone(dt.tzinfo)
    return back.replace(tzinfo=None, fold=0) == dt.replace(tzinfo=None, fold=0)


def _occurrences(wall: datetime, tz: tzinfo | None) -> list[datetime]:
    """The UTC instants of a local wall time (two in a repeated hour); a time in a DST
    gap moves forward by the gap, as ``dateutil.tz.resolve_imaginary``."""
    found = []
    for fold in (0, 1):
        candidate = wall.replace(tzinfo=tz, fold=fold)
        if not _exists(candidate):
            after, before = (candidate + _DAY).utcoffset(), (candidate - _DAY).utcoffset()
            if after is not None and before is not None and after > before:
                candidate = candidate + (after - before)
        found.append(candidate.astimezone(UTC))
    return found


def _rounded(dt: datetime, every: timedelta) -> list[datetime]:
    """``dt`` rounded down to the resolution of ``every`` (day, hour, minute; else the
    second), as its UTC instants."""
    if every >= _DAY:
        wall = datetime(dt.year, dt.month, dt.day)
    elif every >= _HOUR:
        wall = datetime(dt.year, dt.month, dt.day, dt.hour)
    elif every >= _MINUTE:
        wall = datetime(dt.year, dt.month, dt.day, dt.hour, dt.minute)
    else:
        wall = dt.replace(tzinfo=None, microsecond=0)
    return _occurrences(wall.replace(fold=dt.fold), dt.tzinfo)


def _relative_end(start: datetime, every: timedelta) -> datetime:
    """The next run of a relative schedule last run at ``start``: the last rounded local
    boundary at or before ``start + every`` in real time, never at or before ``start``;
    intervals of a day or more count calendar days."""
    start_utc = _as_utc(start)
    if every >= _DAY:
        end = start + every  # wall-clock arithmetic: calendar days
        future = [c for c in _rounded(end, every) if c > start_utc]
        return min(future, default=_as_utc(end))
    end_utc = start_utc + every
    end = end_utc.astimezone(start.tzinfo)
    candidates = _rounded(end, every)
    before_end = [c for c in candidates if c <= end_utc]
    rounded = max(before_end) if before_end else min(candidates)
    if every >= _MINUTE and rounded <= start_utc:
        # A partial-hour DST rollback can put the boundary before the start: consider
        # the next clock boundary and the calendar one too.
        unit = _HOUR if every >= _HOUR else _MINUTE
        candidates += _rounded(end + unit, every) + _rounded(start + every, every)
        future = [c for c in candidates if c > start_utc]
        before_end = [c for c in future if c <= end_utc]
        rounded = max(before_end) if before_end else min(future, default=end_utc)
    return rounded


# -- crontab ---------------------------------------------------------------------------


_RANGE_STEPS = re.compile(r"(\w+?)-(\w+)/(\w+)?")
_RANGE = re.compile(r"(\w+?)-(\w+)")
_STAR_STEPS = re.compile(r"\*/(\w+)?")
_STAR = re.compile(r"^\*$")


class crontab_parser:
    """Celery's parser of one crontab field into the set of values it matches::

        crontab_parser(60).parse("*/15")       == {0, 15, 30, 45}
        crontab_parser(24).parse("0,8-17/2")   == {0, 8, 10, 12, 14, 16}
        crontab_parser(7, names="day").parse("fri-mon") == {5, 6, 0, 1}
        crontab_parser(12, 1, names="month").parse("*/3") == {1, 4, 7, 10}

    Grammar (Celery's): ``groups :: expr (',' expr)*``, ``expr :: ('*' | number
    ['-' number]) ['/' steps]``; a range whose end is below its start wraps around.
    Names are the first three letters of a day (``names="day"``) or a month
    (``names="month"``), case-insensitive; Celery also reads either kind in any field,
    wiretask refuses a name in a field it does not belong to.

    Raises:
        ParseException: the text cannot be parsed or names a value out of range (the
            exception's ``field`` is ``field``).
    """

    def __init__(
        self, max_: int = 60, min_: int = 0, *, field: str = "cronspec",
        names: str | None = None,
    ) -> None:
        self.max_ = max_
        self.min_ = min_
        self.field = field
        self.names = names

    def _fail(self, text: str, problem: str) -> ParseException:
        return ParseException(self.field, f"invalid crontab field {text!r}: {problem}",
                              value=text)

    def parse(self, spec: str) -> set[int]:
        found: set[int] = set()
        for part in spec.split(","):
            if not part:
                raise self._fail(spec, "empty part")
            found.update(self._part(part))
        return found

    def _part(self, part: str) -> list[int]:
        match = _RANGE_STEPS.match(part)
        if match:
            start, end, step = match.groups()
            if not step:
                raise self._fail(part, "empty step")
            return self._stepped(self._range(start, end, part), step, part)
        match = _RANGE.match(part)
        if match:
            start, end = match.groups()
            return self._range(start, end, part)
        match = _STAR_STEPS.match(part)
        if match:
            (step,) = match.groups()
            if not step:
                raise self._fail(part, "empty step")
            return self._stepped(self._all(), step, part)
        if _STAR.match(part):
            return self._all()
        return [self._number(part, part)]

    def _all(self) -> list[int]:
        return list(range(self.min_, self.max_ + self.min_))

    def _stepped(self, values: list[int], step: str, part: str) -> list[int]:
        try:
            every = int(step)
        except ValueError:
            raise self._fail(part, f"the step {step!r} is not a number") from None
        if every < 1:
            raise self._fail(part, "the step must be at least 1")
        return values[::every]

    def _range(self, start: str, end: str, part: str) -> list[int]:
        low, high = self._number(start, part), self._number(end, part)
        if high < low:  # wraps around, as Celery's: fri-mon, 22-2
            return list(range(low, self.min_ + self.max_)) + list(range(self.min_, high + 1))
        return list(range(low, high + 1))

    def _number(self, text: str, part: str) -> int:
        if text.startswith("-"):
            raise self._fail(part, "negative numbers are not supported")
        value = int(text) if text.isdigit() else self._name(text, part)
        highest = self.min_ + self.max_ - 1
        if value > highest:
            raise self._fail(part, f"{value} is above the highest value, {highest}")
        if value < self.min_:
            raise self._fail(part, f"{value} is below the lowest value, {self.min_}")
        return value

    def _name(self, text: str, part: str) -> int:
        key = text[:3].lower()
        if self.names == "day" and key in DAY_NAMES:
            return DAY_NAMES.index(key)
        if self.names == "month" and key in MONTH_NAMES:
            return MONTH_NAMES.index(key) + 1
        if key in DAY_NAMES or key in MONTH_NAMES:
            raise self._fail(part, f"{text!r} is a {'day' if key in DAY_NAMES else 'month'} "
                             f"name, not a value of {self.field}")
        raise self._fail(part, f"{text!r} is not a number or a name")


def _cronfield(value: Cronspec | None) -> Cronspec:
    return "*" if value is None else value


class crontab(BaseSchedule):
    """Celery's crontab schedule: every minute matching all five fields.

    Each field is an integer, a string in crontab syntax (``crontab_parser``) or an
    iterable of integers: ``minute`` 0-59, ``hour`` 0-23, ``day_of_week`` 0-6 (Sunday
    is 0; names ``sun``..``sat``), ``day_of_month`` 1-31, ``month_of_year`` 1-12 (names
    ``jan``..``dec``). A day must match ``day_of_week``, ``day_of_month`` and
    ``month_of_year`` all three (Celery's rule, not cron's "either day field").

    Raises:
        ValidationError: a field of the wrong type or out of range (``ParseException``
            for text that does not parse), or days of the month that no month in
            ``month_of_year`` has (the 30th of February); the error's ``field`` names
            the field.
    """

    def __init__(
        self,
        minute: Cronspec = "*",
        hour: Cronspec = "*",
        day_of_week: Cronspec = "*",
        day_of_month: Cronspec = "*",
        month_of_year: Cronspec = "*",
        nowfun: Nowfun | None = None,
        app: App | None = None,
    ) -> None:
        self._orig_minute = _cronfield(minute)
        self._orig_hour = _cronfield(hour)
        self._orig_day_of_week = _cronfield(day_of_week)
        self._orig_day_of_month = _cronfield(day_of_month)
        self._orig_month_of_year = _cronfield(month_of_year)
        self.hour = self._expand("hour", self._orig_hour, 24)
        self.minute = self._expand("minute", self._orig_minute, 60)
        self.day_of_week = self._expand("day_of_week", self._orig_day_of_week, 7,
                                        names="day")
        self.day_of_month = self._expand("day_of_month", self._orig_day_of_month, 31, 1)
        self.month_of_year = self._expand("month_of_year", self._orig_month_of_year, 12, 1,
                                          names="month")
        if not any(day <= _LONGEST_MONTH[month]
                   for month in self.month_of_year for day in self.day_of_month):
            raise ValidationError(
                "day_of_month",
                f"day_of_month {self._orig_day_of_month!r} never occurs in month_of_year "
                f"{self._orig_month_of_year!r}",
                value=self._orig_day_of_month,
            )
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)
        self._days = sorted(self.day_of_month)
        self._months = sorted(self.month_of_year)
        super().__init__(nowfun=nowfun, app=app)

    @classmethod
    def from_string(cls, text: str) -> crontab:
        """A crontab from a cron line, ``"minute hour day_of_month month day_of_week"``
        (note the order: cron's, not the constructor's)."""
        fields = text.split(" ")
        if len(fields) != 5:
            raise ValidationError(
                "crontab", f"a cron line has 5 fields separated by spaces "
                f"(minute hour day_of_month month day_of_week), got {text!r}", value=text,
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    @staticmethod
    def _expand(
        field: str, spec: Cronspec, max_: int, min_: int = 0, *, names: str | None = None
    ) -> frozenset[int]:
        if isinstance(spec, bool):
            raise ValidationError(field, f"must be an int, a string or integers, got {spec!r}",
                                  value=spec)
        if isinstance(spec, int):
            values: set[int] = {spec}
        elif isinstance(spec, str):
            values = crontab_parser(max_, min_, field=field, names=names).parse(spec)
        elif isinstance(spec, Iterable):
            values = set()
            for item in spec:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise ValidationError(
                        field, f"must hold integers, got {item!r} in {spec!r}", value=spec
                    )
                values.add(item)
        else:
            raise ValidationError(
                field, f"must be an int, a string or integers, got {type(spec).__name__}",
                value=spec,
            )
        if not values:
            raise ValidationError(field, "matches no value", value=spec)
        for number in values:
            if number >= max_ + min_ or number < min_:
                raise ValidationError(
                    field, f"invalid crontab pattern: valid range is {min_}-{max_ - 1 + min_}, "
                    f"{number!r} was found", value=spec,
                )
        return frozenset(values)

    # -- the next run -------------------------------------------------------------------

    def _date_matches(self, day: date) -> bool:
        return (day.month in self.month_of_year and day.day in self.day_of_month
                and day.isoweekday() % 7 in self.day_of_week)

    def _time_after(self, hour: int, minute: int) -> tuple[int, int] | None:
        """The first (hour, minute) of the fields after ``hour:minute`` on one day."""
        if hour in self.hour:
            index = bisect.bisect_right(self._minutes, minute)
            if index < len(self._minutes):
                return hour, self._minutes[index]
        index = bisect.bisect_right(self._hours, hour)
        if index < len(self._hours):
            return self._hours[index], self._minutes[0]
        return None

    def _date_after(self, day: date) -> date:
        """The first matching date after ``day``. One exists within the 400-year
        Gregorian cycle (the constructor refused fields that never meet)."""
        for year in range(day.year, day.year + 401):
            for month in self._months:
                if (year, month) < (day.year, day.month):
                    continue
                last = calendar.monthrange(year, month)[1]
                for dom in self._days:
                    if dom > last:
                        break
                    candidate = date(year, month, dom)
                    if candidate > day and candidate.isoweekday() % 7 in self.day_of_week:
                        return candidate
        raise ValidationError(  # pragma: no cover - unreachable, see the docstring
            "crontab", f"{self!r} has no run in the 400 years after {day}"
        )

    def next_run_after(self, last_run_at: datetime) -> datetime:
        """The first matching minute strictly after the minute of ``last_run_at``, in
        the app's time zone (aware)."""
        last = self.maybe_make_aware(last_run_at).astimezone(self.tz)
        day = last.date()
        found = self._time_after(last.hour, last.minute) if self._date_matches(day) else None
        if found is None:
            day = self._date_after(day)
            found = self._hours[0], self._minutes[0]
        hour, minute = found
        # The last run's fold, as Celery's field replacement keeps it: a run in the
        # second pass of a repeated hour is followed by one in that same pass.
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=last.tzinfo,
                        fold=last.fold)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return _as_utc(self.next_run_after(last_run_at)) - _as_utc(
            self.maybe_make_aware(self.now()))

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when the run after ``last_run_at`` has come. With
        ``beat_cron_starting_deadline`` set, a run missed by more than that many seconds
        is not made up (no run time fell within the deadline before now)."""
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        due = remaining <= 0
        deadline = None if self._app is None else beat_settings(
            self._app).cron_starting_deadline
        stale = False
        if deadline is not None and remaining < 0:
            now = self.maybe_make_aware(self.now())
            # One microsecond more, so that a run exactly at now - deadline still counts.
            since = (_as_utc(now) - timedelta(seconds=deadline, microseconds=1)).astimezone(
                now.tzinfo)
            if self.remaining_estimate(since).total_seconds() > 0:
                stale, due = True, False
        if due or stale:
            remaining = self.remaining_estimate(self.now()).total_seconds()
        return schedstate(due, max(remaining, 0.0))

    def __repr__(self) -> str:
        return (f"<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} "
                f"{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d)>")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return (
                other.month_of_year == self.month_of_year
                and other.day_of_month == self.day_of_month
                and other.day_of_week == self.day_of_week
                and other.hour == self.hour
                and other.minute == self.minute
                and super().__eq__(other)
            )
        return NotImplemented

    __hash__ = None  # compared by value, and mutable (app)


class solar(BaseSchedule):
    """Celery's solar schedule, refused: wiretask does not compute sun positions.

    Raises:
        ImproperlyConfigured: always, naming ``solar``.
    """

    def __init__(self, event: str, lat: float, lon: float, **kwargs: Any) -> None:
        del event, lat, lon, kwargs
        raise ImproperlyConfigured(
            "solar schedules are not supported by wiretask (Celery computes them with the "
            "ephem package): use a crontab at the local time of the event, or a schedule",
            setting="beat_schedule",
        )


def maybe_schedule(
    value: float | timedelta | BaseSchedule, relative: bool = False, app: App | None = None
) -> BaseSchedule:
    """A schedule from a ``beat_schedule`` entry's ``schedule``: a number of seconds or a
    ``timedelta`` becomes ``schedule(value, relative)``; a schedule object is bound to
    ``app`` (as Celery's does) and returned.

    Raises:
        ValidationError: anything else (the field is ``schedule``).
    """
    if isinstance(value, BaseSchedule):
        value.app = app
        return value
    if isinstance(value, timedelta) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
    ):
        try:
            return schedule(value, relative, app=app)
        except ValidationError as exc:
            raise ValidationError("schedule", exc.problem, value=value) from None
    raise ValidationError(
        "schedule", "must be a number of seconds, a timedelta, a crontab or a schedule "
        f"(wiretask.schedules), got {type(value).__module__}.{type(value).__qualname__}",
        value=value,
    )
