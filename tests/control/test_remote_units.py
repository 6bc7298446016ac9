"""Small parts of the worker's command table on their own: argument shapes Celery's
clients send, the settings ``conf`` shows, the signal names ``terminate`` takes."""

from __future__ import annotations

import signal
import uuid
from datetime import timedelta

import pytest
from celery.worker.control import Panel

from wiretask.app import App
from wiretask.worker import Worker
from wiretask.worker.remote import UNSUPPORTED, _ids, _jsonable, _signum


@pytest.mark.parametrize(("value", "expected"), [
    ("a", ["a"]), (["a", "b"], ["a", "b"]), (("a",), ["a"]), (None, []),
])
def test_ids_come_as_one_or_a_list(value: object, expected: list[str]) -> None:
    assert _ids(value) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM), ("kill", signal.SIGKILL),
    ("9", signal.SIGKILL), (15, signal.SIGTERM),
])
def test_signal_names_as_celery_takes_them(name: object, expected: signal.Signals) -> None:
    assert _signum(name) is expected


@pytest.mark.parametrize("name", ["NOPE", "", None, 1.5])
def test_an_unknown_signal_is_refused(name: object) -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        _signum(name)


def test_conf_hides_secrets_and_passwords() -> None:
    assert _jsonable("broker_url", "redis://:s3cret@host:6379/0") == "redis://:**@host:6379/0"
    assert _jsonable("secret_key", "abc") == "********"
    assert _jsonable("result_backend_transport_options", {"password": "x", "db": 1}) == {
        "password": "********", "db": 1}
    assert _jsonable("task_routes", ("a", 1)) == ["a", 1]
    assert _jsonable("result_expires", timedelta(seconds=5)) == repr(timedelta(seconds=5))


def test_every_celery_command_has_an_answer() -> None:
    """Each command of Celery 5.7's worker (``celery.worker.control.Panel``) is carried
    out or refused by name: none falls through to "no such command"."""
    app = App("units", broker=f"memory://{uuid.uuid4().hex}")
    table = Worker(app, concurrency=1)._commands()  # built, not started

    assert set(Panel.data) <= set(table)
    for name, why in UNSUPPORTED.items():
        assert table[name]() == {"error": f"unsupported control command {name!r}: {why}"}
    app.close()
