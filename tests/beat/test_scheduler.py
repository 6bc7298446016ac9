"""The scheduler and the beat service in one process, on the memory broker: what is sent
and when (an injected clock), through the app's calling path; restarts and takeovers
(no run sent twice, one catch-up); a lost lease stops the sending; the embedded beat."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from wiretask.app import App
from wiretask.beat.entries import BeatLazyFunc, entries_from_schedule
from wiretask.beat.lease import _MEMORY, MemoryLease
from wiretask.beat.schedules import BaseSchedule, crontab, schedstate
from wiretask.beat.service import EmbeddedBeat, Scheduler, Service
from wiretask.beat.store import Run, ScheduleFile
from wiretask.errors import ImproperlyConfigured
from wiretask.transports.memory import reset

from .conftest import sent

T0 = datetime(2026, 6, 1, 9, 0, 0, tzinfo=UTC)
_names = itertools.count()


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def broker() -> Iterator[str]:
    name = f"beat-{next(_names)}"
    yield name
    reset(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_app(broker: str, clock: Callable[[], datetime] | None = None, **settings: Any) -> App:
    app = App("proj", broker=f"memory://{broker}", clock=clock, **settings)

    @app.task(name="proj.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="proj.report", queue="reports")
    def report() -> None:
        return None

    return app


def scheduler(app: App, schedule: dict[str, Any], max_interval: float = 300) -> Scheduler:
    return Scheduler(app, entries_from_schedule(app, schedule), max_interval=max_interval)


def test_tick_sends_what_is_due_on_the_injected_clock(broker: str, clock: Clock) -> None:
    app = make_app(broker, clock)
    beat = scheduler(app, {
        "every-10": {"task": "proj.add", "schedule": 10, "args": (1, 2)},
        "quarter": {"task": "proj.add", "schedule": crontab(minute="*/15"),
                    "kwargs": {"x": 5}},
    })

    assert beat.tick() == 10.0  # new entries start now: nothing is due yet
    assert sent(app) == []
    clock.advance(10)
    assert beat.tick() == 10.0
    clock.advance(10)
    assert beat.tick() == 10.0
    clock.advance(9.5)
    assert beat.tick() == 0.5
    clock.advance(0.5)
    assert beat.tick() == 10.0
    clock.now = T0 + timedelta(minutes=15)
    assert beat.tick() == 10.0  # both due: every-10 overdue since 9:00:40, sent once

    messages = sent(app)
    assert [(m.task, m.args, dict(m.kwargs)) for m in messages] == [
        ("proj.add", (1, 2), {}), ("proj.add", (1, 2), {}), ("proj.add", (1, 2), {}),
        ("proj.add", (1, 2), {}), ("proj.add", (), {"x": 5}),
    ]
    assert all(m.extra_headers["celery_beat_task"] is True for m in messages)
    assert beat.entries["every-10"].total_run_count == 4
    assert beat.entries["quarter"].last_run_at == T0 + timedelta(minutes=15)


def test_sends_go_through_the_calling_path_so_routing_applies(
    broker: str, clock: Clock
) -> None:
    app = make_app(broker, clock)
    beat = scheduler(app, {
        "routed": {"task": "proj.add", "schedule": 1, "args": (1,),
                   "options": {"queue": "math", "priority": 3, "expires": 60,
                               "headers": {"mine": 1}}},
        "task-default": {"task": "proj.report", "schedule": 1},
        "unregistered": {"task": "other.service.ping", "schedule": 1},
    })
    clock.advance(1)

    beat.tick()

    [routed] = sent(app, "math")
    assert routed.priority == 3
    assert routed.expires == T0 + timedelta(seconds=61)
    assert dict(routed.extra_headers) == {"mine": 1, "celery_beat_task": True}
    assert [m.task for m in sent(app, "reports")] == ["proj.report"]
    assert [m.task for m in sent(app)] == ["other.service.ping"]


def test_a_failed_send_is_logged_spent_and_the_others_still_go(
    broker: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(broker, clock)

    class Broken(BaseSchedule):
        def is_due(self, last_run_at: datetime) -> schedstate:
            raise RuntimeError("no idea")

    beat = scheduler(app, {
        "unencodable": {"task": "proj.add", "schedule": 1,
                        "args": (BeatLazyFunc(object),)},
        "broken": {"task": "proj.add", "schedule": Broken()},
        "fine": {"task": "proj.add", "schedule": 1, "args": (7,)},
    }, max_interval=42)
    clock.advance(1)

    with caplog.at_level(logging.INFO, logger="wiretask.beat"):
        assert beat.tick() == 1.0

    assert [m.args for m in sent(app)] == [(7,)]
    assert beat.entries["unencodable"].total_run_count == 1  # spent, not retried in a loop
    assert "Message Error: couldn't apply scheduled task unencodable" in caplog.text
    assert "Cannot calculate the next run of 'broken', trying again in 42.00 seconds" \
        in caplog.text
    assert "Scheduler: Sending due task fine (proj.add) [run 1]" in caplog.text


# -- the service ---------------------------------------------------------------------------


def run_for(service: Service, seconds: float) -> None:
    thread = threading.Thread(target=service.run)
    thread.start()
    time.sleep(seconds)
    service.stop()
    thread.join(10)
    assert not thread.is_alive()


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_restart_sends_one_catch_up_for_an_overdue_crontab(
    broker: str, clock: Clock, tmp_path: Path
) -> None:
    app = make_app(broker, clock, beat_schedule={
        "daily": {"task": "proj.add", "schedule": crontab(minute=0, hour=4), "args": (1,)},
        "recent": {"task": "proj.add", "schedule": 10, "args": (2,)},
    })
    file = ScheduleFile(tmp_path / "celerybeat-schedule")
    # Down for three days (three 4:00 runs missed); "recent" ran 2 s ago.
    file.save("UTC", {"daily": Run(T0 - timedelta(days=3), 7),
                      "recent": Run(T0 - timedelta(seconds=2), 3),
                      "removed": Run(T0, 1)})

    run_for(Service(app, schedule_filename=str(file.path)), 0.5)

    assert [m.args for m in sent(app)] == [(1,)]
    assert file.load("UTC") == {"daily": Run(T0, 8), "recent": Run(T0 - timedelta(seconds=2), 3)}
    assert MemoryLease("proj", broker).runs("UTC") == file.load("UTC")


def test_restart_does_not_resend_a_run_the_broker_recorded(
    broker: str, clock: Clock, tmp_path: Path
) -> None:
    app = make_app(broker, clock, beat_schedule={
        "every-60": {"task": "proj.add", "schedule": 60, "args": (1,)}})
    file = ScheduleFile(tmp_path / "s")
    file.save("UTC", {"every-60": Run(T0 - timedelta(minutes=5), 4)})  # stale file
    lease = MemoryLease("proj", broker)
    assert lease.acquire("dead-beat", 60)
    assert lease.replace_runs("dead-beat", {"every-60": Run(T0 - timedelta(seconds=30), 5)},
                              "UTC")
    lease.release("dead-beat")

    run_for(Service(app, schedule_filename=str(file.path)), 0.4)

    assert sent(app) == []  # the broker's run (30 s ago) wins over the file's
    assert file.load("UTC") == {"every-60": Run(T0 - timedelta(seconds=30), 5)}


def test_two_services_one_sends_and_the_standby_takes_over_without_repeating(
    broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    schedule = {"tick": {"task": "proj.add", "schedule": 0.2, "args": (1,)}}
    first = Service(make_app(broker, beat_schedule=schedule), lock_ttl=1.0,
                    schedule_filename=str(tmp_path / "one"))
    second = Service(make_app(broker, beat_schedule=schedule), lock_ttl=1.0,
                     schedule_filename=str(tmp_path / "two"))
    threads = [threading.Thread(target=s.run) for s in (first, second)]
    with caplog.at_level(logging.INFO, logger="wiretask.beat"):
        threads[0].start()
        wait_for(lambda: first.state == "leading")
        threads[1].start()
        wait_for(lambda: second.state == "standby")
        time.sleep(0.7)
        first.stop()
        threads[0].join(10)
        wait_for(lambda: second.state == "leading")
        time.sleep(0.7)
        second.stop()
        threads[1].join(10)

    runs = [int(n) for n in re.findall(r"Sending due task tick \(proj.add\) \[run (\d+)\]",
                                       caplog.text)]
    assert runs == list(range(1, len(runs) + 1))
    assert len(runs) >= 4
    app = make_app(broker)
    assert len(sent(app)) == len(runs)
    assert MemoryLease("proj", broker).runs("UTC")["tick"].total_run_count == len(runs)
    assert "standby: another beat holds the lease 'proj'" in caplog.text


def test_a_beat_that_lost_its_lease_sends_nothing_and_waits(
    broker: str, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(broker, clock, beat_schedule={
        "tick": {"task": "proj.add", "schedule": 0.3, "args": (1,)}})
    service = Service(app, lock_ttl=30, schedule_filename=str(tmp_path / "s"))
    thread = threading.Thread(target=service.run)
    with caplog.at_level(logging.INFO, logger="wiretask.beat"):
        thread.start()
        wait_for(lambda: service.state == "leading")
        # Another beat took the lease meanwhile (this one was paused past its expiry).
        record = _MEMORY[(broker, "proj")]
        record.owner, record.expires = "usurper", time.monotonic() + 30
        clock.advance(0.3)
        wait_for(lambda: service.state == "standby")
        service.stop()
        thread.join(10)

    assert sent(app) == []
    assert "lost the lease 'proj'" in caplog.text
    assert record.owner == "usurper"  # a standby does not release what it does not hold


def test_the_service_releases_its_lease_on_stop(broker: str, tmp_path: Path) -> None:
    app = make_app(broker, beat_schedule={})
    service = Service(app, schedule_filename=str(tmp_path / "s"))

    run_for(service, 0.2)

    assert service.state == "stopped"
    assert MemoryLease("proj", broker).holder() is None


def test_a_bad_entry_is_refused_before_anything_starts(broker: str, tmp_path: Path) -> None:
    app = make_app(broker, beat_schedule={"bad": {"task": "proj.add", "schedule": 1,
                                                  "arg": (1,)}})

    with pytest.raises(ImproperlyConfigured, match="unknown field 'arg'; did you mean 'args'"):
        Service(app, schedule_filename=str(tmp_path / "s")).run()
    assert MemoryLease("proj", broker).holder() is None


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"beat_scheduler": "django_celery_beat.schedulers:DatabaseScheduler"},
         "beat_scheduler='django_celery_beat.schedulers:DatabaseScheduler' is not supported"),
        ({"beat_enable_remote_control": True}, "beat_enable_remote_control=True"),
        ({"beat_max_loop_interval": "5"}, "beat_max_loop_interval must be a number"),
        ({"beat_schedule": [1]}, "beat_schedule must be a dict"),
    ],
)
def test_beat_settings_are_refused_by_name_when_set(
    broker: str, settings: dict[str, Any], words: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(words)):
        make_app(broker, **settings)


def test_beat_settings_are_honoured(broker: str, tmp_path: Path) -> None:
    app = make_app(broker, beat_schedule_filename=str(tmp_path / "from-setting"),
                   beat_max_loop_interval=timedelta(seconds=0.2),
                   beat_scheduler="celery.beat:PersistentScheduler", beat_sync_every=5,
                   beat_schedule={"tick": {"task": "proj.add", "schedule": 3600}})
    service = Service(app)

    run_for(service, 0.5)

    assert service.scheduler is not None
    assert service.scheduler.max_interval == 0.2
    assert ScheduleFile(tmp_path / "from-setting").load("UTC")["tick"].total_run_count == 0


def test_on_after_configure_entries_are_scheduled(broker: str, clock: Clock,
                                                  tmp_path: Path) -> None:
    app = make_app(broker, clock)
    file = ScheduleFile(tmp_path / "s")
    file.save("UTC", {"add every 10": Run(T0 - timedelta(seconds=10), 2)})

    @app.on_after_configure.connect
    def setup(sender: App, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, sender.signature("proj.add", (3,)),
                                 name="add every 10")

    run_for(Service(app, schedule_filename=str(file.path)), 0.4)

    assert [m.args for m in sent(app)] == [(3,)]


def test_embedded_beat_runs_in_a_thread(broker: str, tmp_path: Path) -> None:
    app = make_app(broker, beat_schedule={
        "tick": {"task": "proj.add", "schedule": 0.1, "args": (1,)}})
    beat = EmbeddedBeat(app, schedule_filename=str(tmp_path / "s"))

    beat.start()
    wait_for(lambda: len(sent(app)) >= 2)
    beat.stop()

    assert beat.service.state == "stopped"
    assert beat.error is None
