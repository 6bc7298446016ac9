"""The app's periodic-task API: ``on_after_configure`` (Celery's signal semantics),
``add_periodic_task`` before and after it, entries as Celery names and writes them, and
``beat_schedule`` entries read (or refused, by name) as Celery reads them."""

from __future__ import annotations

import gc
import logging
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from wiretask.app import App
from wiretask.beat.entries import BeatLazyFunc, entries_from_schedule
from wiretask.beat.schedules import crontab, schedule
from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.signals import Signal


def test_signal_connect_send_and_sender_filter() -> None:
    signal = Signal("test", providing_args={"value"})
    calls: list[tuple[str, Any, Any]] = []

    @signal.connect
    def anyone(sender: Any, **kwargs: Any) -> str:
        calls.append(("anyone", sender, kwargs["value"]))
        return "a"

    @signal.connect(sender="x")
    def only_x(sender: Any, **kwargs: Any) -> str:
        calls.append(("only_x", sender, kwargs["value"]))
        return "x"

    assert signal.send("y", value=1) == [(anyone, "a")]
    assert signal.send("x", value=2) == [(anyone, "a"), (only_x, "x")]
    assert calls == [("anyone", "y", 1), ("anyone", "x", 2), ("only_x", "x", 2)]
    assert signal.has_listeners("x")
    assert signal.disconnect(anyone)
    assert signal.send("y", value=3) == []


def test_signal_connects_a_receiver_once_and_drops_collected_ones() -> None:
    signal = Signal("test")

    def receiver(**kwargs: Any) -> int:
        return 1

    signal.connect(receiver)
    signal.connect(receiver)
    signal.connect(lambda **kwargs: 2, dispatch_uid="uid")
    signal.connect(lambda **kwargs: 3, dispatch_uid="uid")  # same uid: ignored
    gc.collect()  # the lambdas were held weakly: both are gone
    assert signal.send(None) == [(receiver, 1)]

    kept = lambda **kwargs: 4  # noqa: E731
    signal.connect(kept, weak=False)
    del kept
    gc.collect()
    assert [response for _, response in signal.send(None)] == [1, 4]


def test_a_receiver_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal = Signal("test")

    @signal.connect
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("boom")

    @signal.connect
    def fine(**kwargs: Any) -> str:
        return "ok"

    with caplog.at_level(logging.ERROR, logger="wiretask.signals"):
        responses = signal.send(None)

    assert isinstance(responses[0][1], RuntimeError)
    assert responses[1] == (fine, "ok")
    assert "Signal handler" in caplog.text and "boom" in caplog.text


def test_signal_refuses_what_celerys_would() -> None:
    signal = Signal("test")
    with pytest.raises(ValidationError, match=r"\*\*kwargs"):
        signal.connect(lambda sender: None)
    with pytest.raises(ValidationError, match="retry=True"):
        signal.connect(lambda **kwargs: None, retry=True)
    with pytest.raises(ValidationError, match="callable"):
        signal.connect(42)


def make_app(**settings: Any) -> App:
    return App("proj", broker="memory://periodic-api", **settings)


def test_on_after_configure_is_sent_once_when_the_app_is_first_used() -> None:
    app = make_app()
    seen: list[tuple[Any, Any]] = []

    @app.task(name="proj.say")
    def say(what: str) -> None:
        print(what)

    @app.on_after_configure.connect
    def setup(sender: App, **kwargs: Any) -> None:
        seen.append((sender, kwargs["source"]))
        sender.add_periodic_task(10.0, say.s("hello"), name="add every 10")
        sender.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1),
                                 say.s("Happy Mondays!"))

    assert not app.configured and seen == []
    assert app.conf.beat_schedule == {}
    app.transport  # noqa: B018 - first use
    app.transport  # noqa: B018
    app.configure()

    assert seen == [(app, app.conf)]
    assert app.configured
    assert app.conf.beat_schedule == {
        "add every 10": {"schedule": 10.0, "task": "proj.say", "args": ("hello",),
                         "kwargs": {}, "options": {}},
        "proj.say('Happy Mondays!')": {
            "schedule": crontab(hour=7, minute=30, day_of_week=1), "task": "proj.say",
            "args": ("Happy Mondays!",), "kwargs": {}, "options": {}},
    }
    app.close()


def test_add_periodic_task_keys_and_entries_are_celerys() -> None:
    celery = Celery("proj", set_as_current=False)
    app = make_app()

    @celery.task(name="proj.add")
    def c_add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="proj.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    calls = [
        ((30.0, "s", (1,), {"y": 2}), {}),
        ((timedelta(seconds=5), "s", (), {}), {"args": (3,), "kwargs": {"y": 4}}),
        ((60, "s", (), {}), {"name": "named", "expires": 10, "queue": "math"}),
    ]
    for (every, _, args, kwargs), extra in calls:
        theirs = celery.add_periodic_task(every, c_add.s(*args, **kwargs), **extra)
        ours = app.add_periodic_task(every, add.s(*args, **kwargs), **extra)
        assert ours == theirs
    app.configure()
    celery_schedule = celery.conf.beat_schedule
    for key, entry in app.conf.beat_schedule.items():
        assert celery_schedule[key]["task"] == entry["task"]
        assert tuple(celery_schedule[key]["args"]) == entry["args"]
        assert celery_schedule[key]["kwargs"] == entry["kwargs"]
        assert celery_schedule[key]["options"] == entry["options"]


def test_add_periodic_task_after_configure_writes_at_once_and_warns_on_shadowing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    app.configure()
    sig = app.signature("proj.ping")

    assert app.add_periodic_task(5, sig) == "proj.ping()"
    assert "proj.ping()" in app.conf.beat_schedule
    with caplog.at_level(logging.WARNING, logger="wiretask.beat"):
        app.add_periodic_task(6, sig)
    assert "shadowed a previous unnamed periodic task" in caplog.text
    assert app.conf.beat_schedule["proj.ping()"]["schedule"] == 6


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda app: app.add_periodic_task(5, "proj.ping"), "must be a task signature"),
        (lambda app: app.add_periodic_task(5, app.signature("t"), quue="x"),
         "did you mean 'queue'"),
        (lambda app: app.add_periodic_task(0, app.signature("t")), "more than 0 seconds"),
        (lambda app: app.add_periodic_task("daily", app.signature("t")),
         "must be a number of seconds, a timedelta"),
    ],
)
def test_add_periodic_task_refuses_bad_calls_at_once(call: Any, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        call(make_app())


def test_beat_schedule_entries_are_read_as_celery_reads_them() -> None:
    app = make_app()
    lazy = BeatLazyFunc(lambda a, b: a + b, 2, b=3)
    entries = entries_from_schedule(app, {
        "every-30": {"task": "tasks.add", "schedule": 30.0, "args": (16, 16)},
        "monday": {"task": "tasks.add", "schedule": crontab(hour=7, minute=30,
                                                            day_of_week=1),
                   "args": [1], "kwargs": {"y": lazy}, "options": {"expires": 10}},
        "rounded": {"task": "tasks.tick", "schedule": timedelta(minutes=1), "relative": True},
    })

    assert entries["every-30"].schedule == schedule(30)
    assert entries["every-30"].args == (16, 16)
    assert entries["monday"].call_arguments() == ([1], {"y": 5})
    assert entries["monday"].options == {"expires": 10}
    rounded = entries["rounded"].schedule
    assert isinstance(rounded, schedule) and rounded.relative and rounded.app is app
    assert entries["every-30"].total_run_count == 0


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"task": "t", "schedule": 1, "kwarg": {}}, "unknown field 'kwarg'; did you mean 'kwargs'"),
        ({"schedule": 1}, "'task' must be the task's name"),
        ({"task": "t"}, "'schedule' is missing"),
        ({"task": "t", "schedule": "1"}, "'schedule' must be a number of seconds"),
        ({"task": "t", "schedule": -1}, "'schedule' must be more than 0 seconds"),
        ({"task": "t", "schedule": 1, "args": "16"}, "'args' must be a list or tuple"),
        ({"task": "t", "schedule": 1, "args": (16)}, "one-item tuple needs its comma"),
        ({"task": "t", "schedule": 1, "kwargs": [1]}, "'kwargs' must be a dict"),
        ({"task": "t", "schedule": 1, "options": {"countdwn": 1}},
         "did you mean 'countdown'"),
        ({"task": "t", "schedule": 1, "relative": "yes"}, "'relative' must be True or False"),
        ("t", "an entry is a dict"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry_and_field(entry: Any, words: str) -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        entries_from_schedule(make_app(), {"my-entry": entry})

    assert raised.value.setting == "beat_schedule"
    assert "beat_schedule['my-entry']" in str(raised.value)
    assert words in str(raised.value)
