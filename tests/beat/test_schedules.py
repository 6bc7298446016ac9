"""Schedules against Celery 5.7's, with an injected clock: the same ``is_due`` answers
for ``crontab`` and ``schedule`` (plain and relative) in UTC and in zones with DST, on
random fields and times (hypothesis), and the field syntax, the refusals and the
``beat_cron_starting_deadline`` rule on their own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab as celery_crontab
from celery.schedules import schedule as celery_schedule
from hypothesis import assume, given
from hypothesis import strategies as st

from wiretask import schedules as public
from wiretask.app import App
from wiretask.beat.schedules import (
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedstate,
    schedule,
    solar,
)
from wiretask.errors import ImproperlyConfigured, ValidationError

ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
#: Instants near the 2026 DST changes of those zones (US, EU, Lord Howe's half hour).
DST_CHANGES = [
    datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC),
    datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
    datetime(2026, 4, 4, 15, tzinfo=UTC), datetime(2026, 10, 3, 15, tzinfo=UTC),
]


def apps(zone: str, **settings: Any) -> tuple[Celery, App]:
    celery = Celery(set_as_current=False)
    celery.conf.timezone = zone
    celery.conf.update(settings)
    return celery, App("t", broker="memory://", timezone=zone, **settings)


def field(low: int, high: int) -> st.SearchStrategy[Any]:
    number = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        st.builds(lambda s: f"*/{s}", st.integers(1, high - low + 1)),
        st.builds(lambda a, b: f"{a}-{b}", number, number),
        st.builds(lambda a, b, s: f"{min(a, b)}-{max(a, b)}/{s}", number, number,
                  st.integers(1, 7)),
        st.lists(number, min_size=1, max_size=4).map(lambda xs: ",".join(map(str, xs))),
        number,
        st.sets(number, min_size=1, max_size=4),
    )


CRON_FIELDS = st.fixed_dictionaries({
    "minute": field(0, 59),
    "hour": field(0, 23),
    "day_of_week": field(0, 6),
    "day_of_month": st.one_of(st.just("*"), field(1, 28)),
    "month_of_year": st.one_of(st.just("*"), field(1, 12)),
})


@st.composite
def moments(draw: st.DrawFn, spread: float) -> tuple[str, datetime, datetime]:
    """A zone, a last run and a later now, near a DST change or anywhere in two years."""
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        base = draw(st.sampled_from(DST_CHANGES)) + timedelta(
            seconds=draw(st.floats(-2 * 86400, 2 * 86400)))
    else:
        base = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
            seconds=draw(st.floats(0, 2 * 365 * 86400)))
    later = base + timedelta(seconds=draw(st.floats(0, spread)))
    tz = ZoneInfo(zone)
    return zone, base.astimezone(tz), later.astimezone(tz)


def same(ours: schedstate, theirs: tuple[bool, float]) -> None:
    assert ours.is_due == theirs[0]
    assert ours.next == pytest.approx(theirs[1], abs=1e-6)


@given(fields=CRON_FIELDS, when=moments(spread=20 * 86400))
def test_crontab_is_due_as_celerys(fields: dict[str, Any], when: Any) -> None:
    zone, last, now = when
    # Celery loses the second pass of a repeated hour (a last run or a now in it): see
    # test_a_crontab_started_in_the_second_pass_of_a_repeated_hour_does_not_flood.
    assume(not last.fold and not now.fold)
    celery, app = apps(zone)

    try:
        theirs = celery_crontab(app=celery, nowfun=lambda: now, **fields).is_due(last)
    except ValueError:
        with pytest.raises(ValidationError):
            crontab(app=app, nowfun=lambda: now, **fields)
        return
    ours = crontab(app=app, nowfun=lambda: now, **fields).is_due(last)

    same(ours, theirs)


@given(fields=CRON_FIELDS, when=moments(spread=10 * 86400),
       deadline=st.integers(0, 3 * 86400))
def test_crontab_starting_deadline_as_celerys(
    fields: dict[str, Any], when: Any, deadline: int
) -> None:
    zone, last, now = when
    since = (now.astimezone(UTC) - timedelta(seconds=deadline, microseconds=1)).astimezone(
        now.tzinfo)
    assume(not last.fold and not now.fold and not since.fold)  # as above
    celery, app = apps(zone, beat_cron_starting_deadline=deadline)
    try:
        theirs = celery_crontab(app=celery, nowfun=lambda: now, **fields).is_due(last)
    except ValueError:
        return

    same(crontab(app=app, nowfun=lambda: now, **fields).is_due(last), theirs)


@given(
    every=st.one_of(st.floats(0.5, 100), st.integers(1, 200).map(lambda m: m * 60.0),
                    st.integers(1, 30).map(lambda h: h * 3600.0),
                    st.integers(1, 3).map(lambda d: d * 86400.0), st.floats(60, 90000)),
    relative=st.booleans(),
    when=moments(spread=3 * 86400),
)
def test_schedule_is_due_as_celerys(every: float, relative: bool, when: Any) -> None:
    zone, last, now = when
    celery, app = apps(zone)
    run_every = timedelta(seconds=every)

    theirs = celery_schedule(run_every, relative, nowfun=lambda: now, app=celery).is_due(last)

    same(schedule(run_every, relative, nowfun=lambda: now, app=app).is_due(last), theirs)


def test_crontab_runs_each_matching_minute_once_on_a_fake_clock() -> None:
    """Driven as beat drives it: after each due answer the last run becomes now."""
    clock = [datetime(2026, 6, 1, 9, 58, 30, tzinfo=UTC)]
    cron = crontab(minute="*/15", hour="10-11", nowfun=lambda: clock[0])
    last = clock[0]
    runs = []
    while clock[0] < datetime(2026, 6, 2, 12, tzinfo=UTC):
        due, wait = cron.is_due(last)
        if due:
            runs.append(clock[0])
            last = clock[0]
        clock[0] += timedelta(seconds=max(wait, 0.5))

    first_day = [datetime(2026, 6, 1, h, m, tzinfo=UTC) for h in (10, 11) for m in (0, 15, 30, 45)]
    second_day = [t + timedelta(days=1) for t in first_day]
    assert runs == first_day + second_day


def drive(schedule_at: Callable[[Callable[[], datetime]], Any], zone: str, start: datetime,
          end: datetime, most: int = 100) -> list[datetime]:
    """Drive a schedule as beat does, on a fake UTC clock read in ``zone``: the times it
    said "due" (at most ``most``)."""
    tz = ZoneInfo(zone)
    clock = [start]

    def now() -> datetime:
        return clock[0].astimezone(tz)

    cron = schedule_at(now)
    last, runs = now(), []
    while clock[0] < end and len(runs) < most:
        due, wait = cron.is_due(last)
        if due:
            runs.append(now())
            last = now()
        clock[0] += timedelta(seconds=max(wait, 0.001))
    return runs


def test_a_crontab_started_in_the_second_pass_of_a_repeated_hour_does_not_flood() -> None:
    """Where wiretask departs from Celery 5.7 on purpose. New York's clocks fall back at
    2026-11-01 02:00 EDT to 01:00 EST; a beat started at the second 01:10 records that
    (fold=1) as the last run. Celery's next-run arithmetic drops the fold, finds the
    next run an hour in the past, and answers "due, look again in 0 s" after every send:
    a flood of messages until 02:00. wiretask keeps the fold and sends each quarter."""
    start = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST, the second pass
    end = datetime(2026, 11, 1, 7, 31, tzinfo=UTC)  # 02:31 EST
    zone = "America/New_York"
    celery, app = apps(zone)

    ours = drive(lambda now: crontab(minute="*/15", app=app, nowfun=now), zone, start, end)
    theirs = drive(lambda now: celery_crontab(minute="*/15", app=celery, nowfun=now), zone,
                   start, end)

    assert [(t.strftime("%H:%M"), t.fold) for t in ours] == [
        ("01:15", 1), ("01:30", 1), ("01:45", 1), ("02:00", 0), ("02:15", 0), ("02:30", 0),
    ]
    assert len(theirs) == 100  # the cap: Celery sends without pause
    assert theirs[-1] - theirs[0] < timedelta(seconds=1)


def test_a_crontab_skips_the_second_pass_when_it_ran_in_the_first() -> None:
    """Wall-clock minutes, as Celery: a quarter-hourly crontab that ran at 01:45 EDT
    runs next at 02:00 EST, an hour and a quarter later (the repeated 01:00-01:59 is not
    run twice)."""
    zone = "America/New_York"
    celery, app = apps(zone)
    start = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    end = datetime(2026, 11, 1, 7, 31, tzinfo=UTC)

    ours = drive(lambda now: crontab(minute="*/15", app=app, nowfun=now), zone, start, end)
    theirs = drive(lambda now: celery_crontab(minute="*/15", app=celery, nowfun=now), zone,
                   start, end)

    assert ours == theirs
    assert [t.astimezone(UTC).strftime("%H:%M") for t in ours] == [
        "05:45", "07:00", "07:15", "07:30"]


def test_schedule_first_run_one_interval_after_the_last() -> None:
    now = [datetime(2026, 1, 1, 12, tzinfo=UTC)]
    every = schedule(30, nowfun=lambda: now[0])
    start = now[0]

    assert every.is_due(start) == (False, 30.0)
    now[0] += timedelta(seconds=29.5)
    assert every.is_due(start) == (False, 0.5)
    now[0] += timedelta(seconds=0.5)
    assert every.is_due(start) == (True, 30.0)
    # Long overdue: still one answer "due", not one per missed interval.
    now[0] += timedelta(hours=5)
    assert every.is_due(start) == (True, 30.0)


def test_naive_times_are_utc_and_the_app_zone_applies() -> None:
    app = App("t", broker="memory://", timezone="Asia/Kolkata")  # UTC+05:30
    now = datetime(2026, 1, 1, 4, 29, tzinfo=UTC)  # 09:59 in Kolkata
    daily = crontab(minute=0, hour=10, app=app, nowfun=lambda: now)

    assert daily.is_due(datetime(2025, 12, 31, 5, 0)) == (False, 60.0)  # naive: UTC
    now = datetime(2026, 1, 1, 4, 30, tzinfo=UTC)
    assert daily.is_due(datetime(2025, 12, 31, 5, 0)) == (True, 86400.0)


def test_the_app_clock_is_the_default_now() -> None:
    moment = datetime(2026, 5, 5, 5, 5, tzinfo=UTC)
    app = App("t", broker="memory://", clock=lambda: moment)

    assert schedule(60, app=app).now() is moment
    assert maybe_schedule(10, app=app).is_due(moment - timedelta(seconds=10)).is_due


@pytest.mark.parametrize(
    ("text", "limits", "names", "expected"),
    [
        ("*/15", (60, 0), None, {0, 15, 30, 45}),
        ("*", (24, 0), None, set(range(24))),
        ("0,8-17/2", (24, 0), None, {0, 8, 10, 12, 14, 16}),
        ("1,13,30-45,50-59/2", (60, 0), None,
         {1, 13, *range(30, 46), 50, 52, 54, 56, 58}),
        ("22-2", (24, 0), None, {22, 23, 0, 1, 2}),
        ("mon-fri", (7, 0), "day", {1, 2, 3, 4, 5}),
        ("fri-mon", (7, 0), "day", {5, 6, 0, 1}),
        ("Sunday,THU", (7, 0), "day", {0, 4}),
        ("*/3", (12, 1), "month", {1, 4, 7, 10}),
        ("2-12/2", (12, 1), "month", {2, 4, 6, 8, 10, 12}),
        ("jan,dec", (12, 1), "month", {1, 12}),
        ("*/3", (31, 1), None, {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31}),
    ],
)
def test_parser_reads_celerys_syntax(
    text: str, limits: tuple[int, int], names: str | None, expected: set[int]
) -> None:
    assert crontab_parser(*limits, names=names).parse(text) == expected


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"minute": "*/0"}, "minute", "the step must be at least 1"),
        ({"minute": "*/"}, "minute", "empty step"),
        ({"minute": "1,,2"}, "minute", "empty part"),
        ({"minute": "60"}, "minute", "60 is above the highest value, 59"),
        ({"hour": "-1"}, "hour", "negative numbers"),
        ({"day_of_month": "0"}, "day_of_month", "0 is below the lowest value, 1"),
        ({"day_of_week": "funday"}, "day_of_week", "'funday' is not a number or a name"),
        ({"hour": "mon"}, "hour", "'mon' is a day name, not a value of hour"),
        ({"day_of_week": "jan"}, "day_of_week", "'jan' is a month name"),
        ({"minute": 60}, "minute", "valid range is 0-59, 60 was found"),
        ({"minute": [1, "2"]}, "minute", "must hold integers"),
        ({"minute": True}, "minute", "must be an int, a string or integers"),
        ({"minute": 1.5}, "minute", "must be an int, a string or integers"),
        ({"day_of_month": 30, "month_of_year": 2}, "day_of_month", "never occurs"),
    ],
)
def test_bad_crontab_fields_are_refused_by_name(
    fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        crontab(**fields)

    assert raised.value.field == field
    assert words in str(raised.value)


def test_parse_errors_are_parse_exceptions_and_value_errors() -> None:
    with pytest.raises(ParseException) as raised:
        crontab(minute="*/x")
    assert isinstance(raised.value, ValueError)
    assert raised.value.field == "minute"


def test_crontab_from_string_repr_and_equality() -> None:
    cron = crontab.from_string("*/5 9-17 1 * mon-fri")

    assert cron == crontab(minute="*/5", hour="9-17", day_of_month=1, day_of_week="mon-fri")
    assert cron != crontab(minute="*/5")
    assert repr(cron) == "<crontab: */5 9-17 1 * mon-fri (m/h/dM/MY/d)>"
    assert cron.day_of_week == {1, 2, 3, 4, 5}
    with pytest.raises(ValidationError, match="5 fields"):
        crontab.from_string("* * * *")


def test_a_february_29th_on_a_monday_is_found_years_ahead() -> None:
    cron = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon")

    assert cron.next_run_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2044, 2, 29, tzinfo=UTC)


@pytest.mark.parametrize("value", [0, -1, timedelta(0), "10", None, True])
def test_schedule_refuses_what_would_not_be_an_interval(value: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        schedule(value)
    assert raised.value.field == "run_every"


def test_schedule_repr_and_equality() -> None:
    assert repr(schedule(10)) == "<freq: 10.00 seconds>"
    assert repr(schedule(timedelta(minutes=1))) == "<freq: 1.00 minute>"
    assert schedule(10) == schedule(timedelta(seconds=10)) == timedelta(seconds=10)
    assert schedule(10) != schedule(11)


def test_maybe_schedule_binds_the_app() -> None:
    app = App("t", broker="memory://")
    cron = crontab()

    assert maybe_schedule(cron, app=app) is cron
    assert cron.app is app
    assert maybe_schedule(timedelta(seconds=3), relative=True, app=app) == schedule(3)
    bound = maybe_schedule(2.5, app=app)
    assert isinstance(bound, schedule) and bound.app is app
    with pytest.raises(ValidationError, match="must be a number of seconds, a timedelta"):
        maybe_schedule(celery_crontab())
    with pytest.raises(ValidationError, match="more than 0 seconds") as raised:
        maybe_schedule(0)
    assert raised.value.field == "schedule"


def test_solar_is_refused_by_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="solar schedules are not supported"):
        solar("sunset", -37.81753, 144.96715)


def test_wiretask_schedules_is_celerys_module_under_wiretasks_name() -> None:
    assert public.crontab is crontab
    assert public.schedule is schedule
    assert public.solar is solar
