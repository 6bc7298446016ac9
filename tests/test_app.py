"""The calling API through the public surface, against the real memory and SQLite brokers.

The calling tests take ``calls`` (``tests/conftest.py``): each runs twice, against the
sync API and against its asyncio twin (``adelay``, ``aapply_async``, ``asend_task``,
``aget``, ...), so both send the same messages and refuse the same mistakes.

Each test sends with ``App``/``Task`` and then reads the message back off the broker and
decodes it, so what is asserted is what goes on the wire.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from wiretask import errors
from wiretask.app import App, AsyncResult, TaskSignature
from wiretask.protocol import states
from wiretask.protocol.celery import decode
from wiretask.protocol.envelope import TaskMessage
from wiretask.protocol.signature import Signature
from wiretask.results.exceptions import exception_to_meta

if TYPE_CHECKING:
    from conftest import Calls  # tests/conftest.py: the sync and asyncio calling API

NOW = datetime(2026, 11, 23, 19, 0, 0, tzinfo=UTC)


@pytest.fixture
def app() -> Iterator[App]:
    name = f"memory://test-app-{uuid.uuid4().hex}"
    application = App("proj", broker=name, backend=name, clock=lambda: NOW)
    yield application
    application.close()


def received(app: App, queue: str = "celery") -> TaskMessage:
    delivery = app.transport.receive([queue], timeout=1.0)
    assert delivery is not None, f"nothing in {queue!r}"
    delivery.ack()
    return decode(delivery.frame, app.registry)


def test_direct_call_runs_here_without_a_message(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert app.transport.size("celery") == 0
    assert add.name == "tests.test_app.add" or add.name.endswith(".add")


def test_bound_direct_call_sees_a_direct_request(app: App) -> None:
    seen: dict[str, Any] = {}

    @app.task(bind=True)
    def who(self: Any) -> None:
        seen["id"] = self.request.id
        seen["direct"] = self.request.called_directly

    who()
    assert seen == {"id": None, "direct": True}


def test_delay_sends_every_keyword_as_a_task_kwarg(app: App, calls: Calls) -> None:
    @app.task
    def greet(name: str, **extra: Any) -> str:
        return name

    result = calls(greet).delay("ada", countdown=5)
    message = received(app)
    assert isinstance(result, AsyncResult)
    assert message.id == result.id
    assert message.args == ("ada",)
    assert message.kwargs == {"countdown": 5}
    assert message.eta is None
    assert message.root_id == message.id
    assert message.parent_id is None
    assert message.argsrepr == "('ada',)"
    assert message.origin is not None
    assert message.origin.startswith(f"gen{os.getpid()}@")


def test_properties_carry_the_id_and_reply_to_like_celery(
    app: App, calls: Calls
) -> None:
    result = calls(app).send_task("remote.task")
    delivery = app.transport.receive(["celery"], timeout=1.0)
    assert delivery is not None
    delivery.ack()
    assert delivery.frame.properties["correlation_id"] == result.id
    assert delivery.frame.properties["delivery_mode"] == 2
    assert uuid.UUID(delivery.frame.properties["reply_to"])


def test_apply_async_options_reach_the_wire(app: App, calls: Calls) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    cb = add.s(10)
    eb = add.si(1, 1)
    calls(add).apply_async(
        (2, 2), countdown=10, expires=120, link=cb, link_error=[eb], priority=5,
        time_limit=30, soft_time_limit=20, headers={"x-custom": "v"}, shadow="adder",
        task_id="fixed-id", queue="math", serializer="msgpack", compression="zstd",
    )
    message = received(app, "math")
    assert message.id == "fixed-id"
    assert message.eta == NOW + timedelta(seconds=10)
    assert message.expires == NOW + timedelta(seconds=120)
    assert message.expiration == "120000"
    assert message.priority == 5
    assert message.timelimit == (30, 20)
    assert message.extra_headers == {"x-custom": "v"}
    assert message.shadow == "adder"
    assert message.content_type == "application/x-msgpack"
    assert message.compression == "application/zstd"
    assert message.callbacks is not None
    assert message.callbacks[0].to_dict() == {
        "task": add.name, "args": [10], "kwargs": {}, "options": {},
        "subtask_type": None, "immutable": False,
    }
    assert message.errbacks is not None
    assert message.errbacks[0].immutable


def test_call_option_beats_task_attribute_beats_setting(
    app: App, calls: Calls
) -> None:
    app.conf.task_serializer = "msgpack"
    app.conf.task_default_priority = 1

    @app.task(queue="slow", priority=3, soft_time_limit=50, time_limit=60, expires=30)
    def job() -> None:
        return None

    calls(job).delay()
    message = received(app, "slow")
    assert message.priority == 3  # task beats setting
    assert message.content_type == "application/x-msgpack"  # setting applies
    assert message.timelimit == (60, 50)
    assert message.expires == NOW + timedelta(seconds=30)

    # An explicit None clears a task default (Celery: soft_time_limit=None sends none).
    calls(job).apply_async(priority=7, soft_time_limit=None, expires=None, queue="fast")
    message = received(app, "fast")
    assert message.priority == 7
    assert message.timelimit == (60, None)
    assert message.expires is None
    assert message.expiration is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"contdown": 5}, "contdown"),
        ({"countdown": "soon"}, "countdown"),
        ({"countdown": 5, "eta": NOW}, "eta"),
        ({"eta": "not a date"}, "eta"),
        ({"eta": datetime(1969, 12, 31, tzinfo=UTC)}, "eta"),
        ({"expires": "garbage"}, "expires"),
        ({"priority": 256}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"queue": 5}, "queue"),
        ({"queue": ""}, "queue"),
        ({"serializer": "yaml"}, "serializer"),
        ({"compression": "lz5"}, "compressor"),
        ({"retry_policy": {"max_retrys": 3}}, "max_retrys"),
        ({"link": "not a signature"}, "link"),
        ({"delivery_mode": 3}, "delivery_mode"),
        ({"time_limit": -1}, "time_limit"),
        ({"retry": "yes"}, "retry"),
        ({"headers": {"task": "other.task"}}, "headers"),
        ({"headers": {"compression": "zlib"}}, "headers"),
    ],
)
def test_bad_options_are_refused_by_name_before_sending(
    app: App, options: dict[str, Any], field: str, calls: Calls
) -> None:
    @app.task
    def noop() -> None:
        return None

    with pytest.raises(errors.ValidationError) as info:
        calls(noop).apply_async(**options)
    assert field in str(info.value)
    assert app.transport.size("celery") == 0


def test_unknown_option_suggests_the_close_one(app: App, calls: Calls) -> None:
    @app.task
    def noop() -> None:
        return None

    with pytest.raises(errors.ValidationError, match="did you mean 'countdown'"):
        calls(noop).apply_async(contdown=1)


def test_arguments_are_checked_against_the_signature(app: App, calls: Calls) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="missing a required argument"):
        calls(add).delay(1)
    with pytest.raises(errors.ArgumentsError) as info:
        calls(add).apply_async(5)  # type: ignore[arg-type]
    assert info.value.field == "args"
    with pytest.raises(TypeError):
        calls(add).apply_async((1, 2), kwargs=[1])  # type: ignore[arg-type]
    assert app.transport.size("celery") == 0


def test_a_value_that_cannot_be_encoded_is_refused_before_sending(
    app: App, calls: Calls
) -> None:
    @app.task
    def take(x: Any) -> None:
        return None

    with pytest.raises(errors.EncodeError):
        calls(take).delay({1, 2, 3})
    assert app.transport.size("celery") == 0


def test_send_task_by_name_needs_no_local_function(app: App, calls: Calls) -> None:
    result = calls(app).send_task(
        "other.service.task", args=(1,), kwargs={"a": "b"}, countdown=3
    )
    message = received(app)
    assert (message.task, message.id) == ("other.service.task", result.id)
    assert message.args == (1,)
    assert message.kwargs == {"a": "b"}


def test_signatures_partial_args_prepend_and_options_merge(
    app: App, calls: Calls
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    sig = add.s(2).set(countdown=5, queue="q")
    assert isinstance(sig, TaskSignature)
    assert sig.to_dict()["options"] == {"countdown": 5, "queue": "q"}
    assert sig(3) == 5  # runs here, partial args prepended
    calls(sig).delay(7)
    message = received(app, "q")
    assert message.args == (7, 2)
    assert message.eta == NOW + timedelta(seconds=5)
    immutable = add.si(1, 1)
    calls(immutable).apply_async((99,))
    assert received(app).args == (1, 1)
    assert add.signature((1,), {"y": 2}, priority=4).apply_async().id


def test_link_accepts_a_list_and_dicts(app: App, calls: Calls) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    calls(add).apply_async((1, 1), link=[add.s(1), Signature(task="remote.cb").to_dict()])
    message = received(app)
    assert message.callbacks is not None
    assert [s.task for s in message.callbacks] == [add.name, "remote.cb"]


def test_apply_many_sends_all_with_the_same_options(app: App, calls: Calls) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = calls(add).apply_many(
        [(1, 2), ([3, 4], {}), [5, 6]], priority=2, queue="batch"
    )
    assert len({r.id for r in results}) == 3
    messages = [received(app, "batch") for _ in range(3)]
    assert [m.args for m in messages] == [(1, 2), (3, 4), (5, 6)]
    assert {m.priority for m in messages} == {2}
    with pytest.raises(TypeError):
        calls(add).apply_many([(1,)])
    assert app.transport.size("batch") == 0


def test_apply_many_resolves_the_options_once_and_checks_every_call(
    app: App, calls: Calls
) -> None:
    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    built = app.build_many(add.name, [((1,), {}), ([2], {"y": 3})], countdown=30, expires=60,
                           headers={"tenant": "a"})
    first, second = (c.message for c in built)
    assert first.id != second.id
    assert (first.root_id, second.root_id) == (first.id, second.id)
    assert first.eta == second.eta and first.expires == second.expires
    assert first.extra_headers == second.extra_headers == {"tenant": "a"}
    assert (first.argsrepr, second.argsrepr) == ("(1,)", "(2,)")
    assert (first.kwargsrepr, second.kwargsrepr) == ("{}", "{'y': 3}")

    with pytest.raises(errors.ValidationError) as info:
        calls(add).apply_many([(1,), (2,)], task_id="same")
    assert info.value.field == "task_id"
    with pytest.raises(errors.ArgumentsError) as args_info:
        calls(add).apply_many([(1,), ((1, 2), {"z": 1})])
    assert args_info.value.field == "args"
    with pytest.raises(errors.ArgumentsError) as kwargs_info:
        calls(add).apply_many([(1,), ((1,), {2: 1})])
    assert kwargs_info.value.field == "kwargs"
    assert app.transport.size("celery") == 0
    assert [r.id for r in calls(add).apply_many([(5,)], task_id="only")] == ["only"]


def test_timezone_setting_gives_offsets_like_celery(calls: Calls) -> None:
    name = f"memory://tz-{uuid.uuid4().hex}"
    berlin = App("proj", broker=name, backend=name, timezone="Europe/Berlin")
    try:
        calls(berlin).send_task("t", countdown=1)
        message = received(berlin)
        assert message.eta is not None
        assert message.eta.utcoffset() in {timedelta(hours=1), timedelta(hours=2)}
    finally:
        berlin.close()


def test_update_state_and_async_result_read_the_backend(
    app: App, calls: Calls
) -> None:
    @app.task
    def job() -> None:
        return None

    result = job.AsyncResult("abc")
    assert result.state == states.PENDING
    assert not result.ready()
    job.update_state(task_id="abc", state="PROGRESS", meta={"done": 1})
    assert result.state == "PROGRESS"
    assert result.info == {"done": 1}
    seen: list[dict[str, Any]] = []
    app.backend.store("abc", states.make_meta("abc", states.SUCCESS, 42, date_done="x"))
    assert calls(result).get(timeout=1, on_message=seen.append) == 42
    assert [m["status"] for m in seen] == [states.SUCCESS]
    assert result.successful()
    result.forget()
    assert result.state == states.PENDING


def test_failed_result_raises_and_get_times_out_with_the_state(
    app: App, calls: Calls
) -> None:
    result = app.AsyncResult("bad")
    with pytest.raises(errors.TimeoutError, match=r"bad.*PENDING"):
        calls(result).get(timeout=0.2)
    app.backend.store(
        "bad", states.make_meta("bad", states.FAILURE, exception_to_meta(ValueError("no")))
    )
    with pytest.raises(ValueError, match="no"):
        calls(result).get(timeout=1)
    assert isinstance(calls(result).get(timeout=1, propagate=False), ValueError)
    assert result.failed()


def test_ignore_result_get_returns_none_at_once(app: App, calls: Calls) -> None:
    @app.task(ignore_result=True)
    def quiet() -> None:
        return None

    assert calls(calls(quiet).delay()).get(timeout=0.1) is None


def test_publish_error_after_the_policy_on_an_unusable_sqlite_broker(
    tmp_path: Path, calls: Calls
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    missing = blocker / "broker.db"  # its "directory" is a file: cannot be opened
    app = App("proj", broker=f"sqlite:///{missing}", backend="memory://x")
    policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.01, "interval_max": 0.01}
    try:
        with pytest.raises(errors.PublishError) as info:
            calls(app).send_task("t", retry_policy=policy)
        assert info.value.attempts == 3
        assert isinstance(info.value.cause, errors.ConnectionLost)
        with pytest.raises(errors.PublishError) as info:
            calls(app).send_task("t", retry=False)
        assert info.value.attempts == 1
    finally:
        app.close()


def test_embedded_default_is_a_sqlite_file_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("WIRETASK_BROKER_URL", raising=False)
    monkeypatch.delenv("WIRETASK_RESULT_BACKEND", raising=False)
    app = App("proj")
    # One file whatever the app is called (issue 14: ``App("proj")`` and a command
    # without -A used to pick different files, and never met).
    assert App("other").broker_url == App().broker_url == app.broker_url
    try:
        assert app.broker_url == f"sqlite:///{tmp_path}/wiretask/wiretask.db"
        assert app.backend_url == app.broker_url
        (tmp_path / "wiretask").mkdir()
        result = app.send_task("remote.task", (1,))
        assert app.transport.size("celery") == 1
        assert result.state == states.PENDING
    finally:
        app.close()


def test_unknown_broker_scheme_names_the_supported_ones() -> None:
    app = App("proj", broker="kafka://localhost")
    with pytest.raises(errors.ImproperlyConfigured, match="sqlite"):
        app.send_task("t")


def test_unknown_task_decorator_option(app: App) -> None:
    with pytest.raises(errors.ValidationError, match="serialiser"):
        app.task(serialiser="json")


def test_ids_are_unique_across_many_sends(app: App, calls: Calls) -> None:
    ids = {calls(app).send_task("t").id for _ in itertools.repeat(None, 50)}
    assert len(ids) == 50
