"""``wiretask beat`` as a real process: sending a 1-second schedule to a real worker over
SQLite and Redis, a restart that continues the runs, two beats on one broker (Redis,
SQLite) with the sending one killed (every run sent exactly once, one catch-up, a
bounded takeover), and the refusals of the command."""

from __future__ import annotations

import itertools
import json
import re
import shelve
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import Project

PROJECT = '''
import os
import time

from wiretask.app import App

app = App("proj")
app.conf.beat_schedule = {
    "tick": {"task": "proj.tick", "schedule": 1.0, "args": ("beat",)},
}


@app.task(name="proj.tick")
def tick(source):
    with open(os.environ["TICKS_FILE"], "a") as handle:
        handle.write(f"{time.time()} {source}\\n")
'''

SENDING = r"Sending due task tick \(proj\.tick\) \[run (\d+)\]"
SENT = r"proj\.tick sent\. id->([0-9a-f-]{36})"


def make_project(factory: Callable[[str], Project], broker_url: str) -> Project:
    project = factory(broker_url)
    (project.cwd / "proj.py").write_text(PROJECT)
    project.env["TICKS_FILE"] = str(project.cwd / "ticks.txt")
    return project


def logged_at(line: str) -> float:
    """The time stamp of a log line of the command (``[2026-12-04 21:36:15,551 INFO]``)."""
    stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
    assert stamp is not None, line
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def ticks(project: Project) -> list[float]:
    path = project.cwd / "ticks.txt"
    if not path.exists():
        return []
    return [float(line.split()[0]) for line in path.read_text().splitlines()]


def broker_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_beat_sends_a_one_second_schedule_to_a_real_worker(
    project_factory: Callable[[str], Project], tmp_path: Path, kind: str,
    request: pytest.FixtureRequest,
) -> None:
    project = make_project(project_factory, broker_of(kind, tmp_path, request))
    worker = project.wiretask("worker", "-A", "proj", "--pool", "solo")
    beat = project.wiretask("beat", "-A", "proj", "-l", "INFO")

    beat.wait_for(SENDING, count=4, timeout=60)
    assert beat.stop() == 0
    runs = [int(m.group(1)) for _, m in beat.lines(SENDING)]
    deadline = time.monotonic() + 30
    while len(ticks(project)) < len(runs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.stop() == 0

    assert runs == list(range(1, len(runs) + 1))
    ran = ticks(project)
    assert len(ran) == len(runs)  # each run sent ran once
    # On time, by beat's own log clock: one interval after it led (its entries' clocks
    # start a moment before it logs that, while it writes the runs), then every second
    # (a run is never early; late only by the time it takes to wake up and send).
    led = logged_at(beat.lines("leading: holds the lease")[0][1].string)
    sends = [logged_at(m.string) for _, m in beat.lines(SENDING)]
    assert sends[0] - led >= 0.9
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert all(gap >= 0.99 for gap in gaps), gaps
    assert statistics.median(gaps) < 1.1, gaps
    assert max(gaps) < 3, gaps
    assert "beat: Shutting down" in beat.text()
    stored = json.loads((project.cwd / "celerybeat-schedule").read_text())
    assert stored["entries"]["tick"]["total_run_count"] == len(runs)


@pytest.mark.slow
def test_a_restarted_beat_continues_the_runs(
    project_factory: Callable[[str], Project], tmp_path: Path
) -> None:
    project = make_project(project_factory, f"sqlite:///{tmp_path / 'broker.db'}")
    schedule = str(tmp_path / "var" / "beat-schedule")
    (tmp_path / "var").mkdir()

    first = project.wiretask("beat", "-A", "proj", "-l", "INFO", "-s", schedule)
    first.wait_for(SENT, count=2)
    assert first.stop() == 0
    second = project.wiretask("beat", "-A", "proj", "-l", "INFO", "-s", schedule)
    second.wait_for(SENT, count=2)
    assert second.stop() == 0

    runs = [int(m.group(1)) for p in (first, second) for _, m in p.lines(SENDING)]
    assert runs == list(range(1, len(runs) + 1))
    waiting = json.loads(project.run("queue", "show", "--json").stdout)["waiting"]
    assert waiting == len(runs)
    assert json.loads(Path(schedule).read_text())["entries"]["tick"]["total_run_count"] \
        == len(runs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis), "sqlite"])
def test_two_beats_on_one_broker_send_every_run_once_when_the_sender_is_killed(
    project_factory: Callable[[str], Project], tmp_path: Path, kind: str,
    request: pytest.FixtureRequest,
) -> None:
    project = make_project(project_factory, broker_of(kind, tmp_path, request))
    ttl = 2.0
    # Separate schedule files, as two machines would have.
    one = project.wiretask("beat", "-A", "proj", "-l", "INFO", "--lock-ttl", str(ttl),
                           "-s", str(tmp_path / "one"))
    one.wait_for("leading: holds the lease 'proj'")
    two = project.wiretask("beat", "-A", "proj", "-l", "INFO", "--lock-ttl", str(ttl),
                           "-s", str(tmp_path / "two"))
    two.wait_for("standby: another beat holds the lease 'proj'")
    # Kill the sender just after a send: the next run is a second away.
    one.wait_for(SENT, count=3)
    killed_at = time.time()
    one.kill()
    sent_by_two = two.wait_for(SENT, count=3, timeout=30)
    assert two.stop() == 0

    runs_one = [int(m.group(1)) for _, m in one.lines(SENDING)]
    runs_two = [int(m.group(1)) for _, m in two.lines(SENDING)]
    # Every run once, across both beats, in order: nothing repeated, nothing skipped.
    assert runs_one + runs_two == list(range(1, len(runs_one) + len(runs_two) + 1))
    assert runs_one == [1, 2, 3]
    ids = [m.group(1) for _, m in one.lines(SENT) + two.lines(SENT)]
    listing = json.loads(project.run("queue", "show", "--json", "--limit", "1000").stdout)
    assert sorted(m["id"] for m in listing["messages"]) == sorted(ids)
    assert len(set(ids)) == len(runs_one) + len(runs_two)
    # The standby took over within the lease's lifetime plus one standby poll, sent one
    # catch-up at once, then kept the one-second rhythm (no burst of missed runs).
    # (By the beats' own log clocks, which are the wall clock.)
    takeover = logged_at(two.lines("leading: holds the lease 'proj'")[0][1].string)
    assert takeover - killed_at <= ttl + ttl / 4 + 2.0
    first_two = [logged_at(m.string) for _, m in two.lines(SENDING)]
    assert first_two[0] - takeover < 0.5
    assert first_two[1] - first_two[0] >= 0.99
    assert sent_by_two


def test_bad_entries_settings_and_flags_are_usage_errors(
    project_factory: Callable[[str], Project], tmp_path: Path
) -> None:
    project = make_project(project_factory, f"sqlite:///{tmp_path / 'broker.db'}")
    (project.cwd / "bad.py").write_text(
        "from wiretask.app import App\n"
        "app = App('bad')\n"
        "app.conf.beat_schedule = {'x': {'task': 't', 'schedule': 5, 'kwarg': {}}}\n"
    )
    with shelve.open(str(tmp_path / "celery-schedule")) as db:
        db["entries"] = {}
    celery_file = next(p for p in tmp_path.iterdir() if p.name.startswith("celery-schedule"))

    cases = [
        (["beat", "-A", "bad"], "beat_schedule['x']: unknown field 'kwarg'; did you mean "
                                "'kwargs'?"),
        (["beat", "-A", "proj", "-S", "django_celery_beat.schedulers:DatabaseScheduler"],
         "-S/--scheduler='django_celery_beat.schedulers:DatabaseScheduler' is not supported"),
        (["beat", "-A", "proj", "--detach"], "--detach is not supported"),
        (["beat", "-A", "proj", "-s", str(celery_file)], "Celery beat's shelve database"),
        (["beat", "-A", "proj", "--max-interval", "0"], "--max-interval: must be > 0"),
        (["beat", "-A", "proj", "--scheduler-typo", "x"], "unrecognized arguments: "
                                                           "--scheduler-typo"),
    ]
    for argv, words in cases:
        done = project.run(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert words in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_bad_entry_in_add_periodic_task_names_the_call(
    project_factory: Callable[[str], Project], tmp_path: Path
) -> None:
    project = make_project(project_factory, f"sqlite:///{tmp_path / 'broker.db'}")
    (project.cwd / "late.py").write_text(
        "from wiretask.app import App\n"
        "app = App('late')\n"
        "@app.on_after_configure.connect\n"
        "def setup(sender, **kwargs):\n"
        "    sender.add_periodic_task(0, sender.signature('t'))\n"
    )

    beat = project.wiretask("beat", "-A", "late", "-l", "INFO")
    beat.wait_for("Signal handler .* raised")
    assert beat.stop() == 0
    assert re.search(r"schedule: must be more than 0 seconds, got 0", beat.text())


@pytest.mark.slow
def test_worker_b_embeds_beat_and_two_such_workers_send_each_run_once(
    project_factory: Callable[[str], Project], tmp_path: Path
) -> None:
    project = make_project(project_factory, f"sqlite:///{tmp_path / 'broker.db'}")
    workers = [
        project.wiretask("worker", "-A", "proj", "--pool", "solo", "-B", "-s",
                         str(tmp_path / name))
        for name in ("one", "two")
    ]
    deadline = time.monotonic() + 60
    while len(ticks(project)) < 4:
        assert time.monotonic() < deadline, [w.text() for w in workers]
        time.sleep(0.05)
    codes = [worker.stop() for worker in workers]

    assert codes == [0, 0]
    runs = sorted(int(m.group(1)) for w in workers for _, m in w.lines(SENDING))
    assert runs == list(range(1, len(runs) + 1))
    # Only one of them sent, the other waited on the lease.
    senders = [w for w in workers if w.lines(SENDING)]
    assert len(senders) == 1
    assert any("standby: another beat holds the lease 'proj'" in w.text() for w in workers)
    assert len(ticks(project)) == len(runs)


def test_worker_b_checks_the_schedule_before_it_starts(
    project_factory: Callable[[str], Project], tmp_path: Path
) -> None:
    project = make_project(project_factory, f"sqlite:///{tmp_path / 'broker.db'}")
    (project.cwd / "bad.py").write_text(
        "from wiretask.app import App\n"
        "app = App('bad')\n"
        "app.conf.beat_schedule = {'x': {'task': 't', 'schedule': 'hourly'}}\n"
    )

    done = project.run("worker", "-A", "bad", "-B")

    assert done.returncode == 2, done.stderr
    assert "beat_schedule['x']: 'schedule' must be a number of seconds" in done.stderr
