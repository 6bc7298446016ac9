"""What Celery's tracer does, on wiretask's worker and eager path, through the public
API: a ``base=`` class's handlers with Celery's arguments and order, ``throws``, the
whole of ``self.request``, and the children a task records in its stored result."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pytest

from wiretask.app import App, AsyncResult, Task
from wiretask.errors import TimeLimitExceeded
from wiretask.protocol import states
from wiretask.tasks import ExceptionInfo

from .conftest import BOTH_POOLS, MakeApp, StartWorker, wait_until

pytestmark = pytest.mark.timeout(60)


class Calls:
    """What the handlers saw, in order (shared by the tasks of one test)."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def add(self, *item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def names(self) -> list[str]:
        with self.lock:
            return [item[0] for item in self.items]

    def named(self, name: str) -> tuple[Any, ...]:
        with self.lock:
            [found] = [item for item in self.items if item[0] == name]
            return found


CALLS = Calls()


class Hooked(Task[Any, Any]):
    """Records every handler call with its arguments, and the state stored by then."""

    def _stored(self, task_id: str) -> str | None:
        meta = self.app.backend.get(task_id)
        return None if meta is None else str(meta["status"])

    def before_start(self, task_id: str, args: Sequence[Any],
                     kwargs: Mapping[str, Any]) -> None:
        CALLS.add("before_start", task_id, list(args), dict(kwargs), self.request.id)

    def on_success(self, retval: Any, task_id: str, args: Sequence[Any],
                   kwargs: Mapping[str, Any]) -> None:
        CALLS.add("on_success", retval, task_id, list(args), dict(kwargs),
                  self._stored(task_id))

    def on_retry(self, exc: BaseException | None, task_id: str, args: Sequence[Any],
                 kwargs: Mapping[str, Any], einfo: ExceptionInfo) -> None:
        CALLS.add("on_retry", exc, task_id, list(args), dict(kwargs), einfo,
                  self._stored(task_id))

    def on_failure(self, exc: BaseException, task_id: str, args: Sequence[Any],
                   kwargs: Mapping[str, Any], einfo: ExceptionInfo) -> None:
        CALLS.add("on_failure", exc, task_id, list(args), dict(kwargs), einfo,
                  self._stored(task_id))

    def after_return(self, status: str, retval: Any, task_id: str, args: Sequence[Any],
                     kwargs: Mapping[str, Any], einfo: ExceptionInfo | None) -> None:
        CALLS.add("after_return", status, retval, task_id, list(args), dict(kwargs), einfo)


@pytest.fixture(autouse=True)
def _fresh_calls() -> Iterator[None]:
    CALLS.items.clear()
    yield
    CALLS.items.clear()


def _hooked_tasks(app: App) -> tuple[Task[Any, Any], Task[Any, Any], Task[Any, Any]]:
    @app.task(base=Hooked)
    def add(x: int, y: int = 0) -> int:
        CALLS.add("body", x, y)
        return x + y

    @app.task(base=Hooked)
    def boom(x: int) -> None:
        CALLS.add("body", x)
        raise KeyError(x)

    @app.task(base=Hooked, bind=True, max_retries=1)
    def flaky(self: Any, x: int) -> str:
        CALLS.add("body", self.request.retries)
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("again"), countdown=0.3)
        return "ok"

    return add, boom, flaky


# -- handlers ----------------------------------------------------------------------------


@BOTH_POOLS
def test_success_calls_before_start_on_success_after_return_in_celerys_order(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()
    add, _, _ = _hooked_tasks(app)
    start_worker(app)
    result = add.apply_async((2,), {"y": 3})
    assert result.get(timeout=10) == 5
    wait_until(lambda: "after_return" in CALLS.names(), what="after_return")

    assert CALLS.names() == ["before_start", "body", "on_success", "after_return"]
    assert CALLS.named("before_start") == ("before_start", result.id, [2], {"y": 3}, result.id)
    # on_success runs after SUCCESS is stored, as in Celery.
    assert CALLS.named("on_success") == ("on_success", 5, result.id, [2], {"y": 3}, "SUCCESS")
    assert CALLS.named("after_return") == (
        "after_return", "SUCCESS", 5, result.id, [2], {"y": 3}, None,
    )


@BOTH_POOLS
def test_failure_calls_on_failure_after_the_store_and_the_errbacks(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()
    _, boom, _ = _hooked_tasks(app)

    @app.task
    def report(task_id: str) -> None:
        CALLS.add("errback", task_id)

    start_worker(app)
    result = boom.apply_async((7,), link_error=report.s())
    with pytest.raises(KeyError):
        result.get(timeout=10)
    wait_until(lambda: "after_return" in CALLS.names(), what="after_return")

    names = CALLS.names()
    assert names[:2] == ["before_start", "body"]
    assert names.index("on_failure") < names.index("after_return")
    _, exc, task_id, args, kwargs, einfo, stored = CALLS.named("on_failure")
    assert isinstance(exc, KeyError) and exc.args == (7,)
    assert (task_id, args, kwargs, stored) == (result.id, [7], {}, "FAILURE")
    assert isinstance(einfo, ExceptionInfo)
    assert einfo.exception is exc and einfo.type is KeyError
    assert "raise KeyError(x)" in einfo.traceback and "KeyError" in str(einfo)
    assert einfo.exc_info[0] is KeyError
    status, retval, *_, einfo_after = CALLS.named("after_return")[1:]
    assert (status, retval, einfo_after) == ("FAILURE", exc, None)
    wait_until(lambda: "errback" in CALLS.names(), what="the errback")


@BOTH_POOLS
def test_retry_calls_on_retry_after_retry_is_stored_and_no_after_return(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()
    _, _, flaky = _hooked_tasks(app)
    start_worker(app)
    result = flaky.delay(1)
    assert result.get(timeout=10) == "ok"
    wait_until(lambda: CALLS.names().count("after_return") == 1, what="after_return")

    assert CALLS.names() == [
        "before_start", "body", "on_retry",  # the first run: no after_return for RETRY
        "before_start", "body", "on_success", "after_return",
    ]
    _, exc, task_id, args, _, einfo, stored = CALLS.named("on_retry")
    assert isinstance(exc, ValueError) and str(exc) == "again"
    assert (task_id, args, stored) == (result.id, [1], "RETRY")
    assert einfo.exception is exc


def test_an_error_in_on_success_is_the_tasks_failure_as_in_celery(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    class Picky(Task[Any, Any]):
        def on_success(self, retval: Any, task_id: str, args: Sequence[Any],
                       kwargs: Mapping[str, Any]) -> None:
            raise RuntimeError(f"not {retval}")

        def on_failure(self, exc: BaseException, task_id: str, args: Sequence[Any],
                       kwargs: Mapping[str, Any], einfo: ExceptionInfo) -> None:
            CALLS.add("on_failure", exc)

    @app.task(base=Picky)
    def one() -> int:
        return 1

    start_worker(app)
    result = one.delay()
    # Celery's tracer treats it as the task's failure (errbacks, on_failure), but
    # SUCCESS was stored first and a stored SUCCESS is never replaced (Celery's
    # backends keep it too).
    wait_until(lambda: "on_failure" in CALLS.names(), what="on_failure")
    [(_, exc)] = CALLS.items
    assert isinstance(exc, RuntimeError) and str(exc) == "not 1"
    assert result.get(timeout=10) == 1


def test_an_error_in_on_failure_is_logged_and_the_failure_stands(
    make_app: MakeApp, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    class Clumsy(Task[Any, Any]):
        def on_failure(self, exc: BaseException, task_id: str, args: Sequence[Any],
                       kwargs: Mapping[str, Any], einfo: ExceptionInfo) -> None:
            raise RuntimeError("handler bug")

    @app.task(base=Clumsy)
    def bad() -> None:
        raise ValueError("task bug")

    start_worker(app)
    with caplog.at_level(logging.ERROR, logger="wiretask"):
        with pytest.raises(ValueError, match="task bug"):
            bad.delay().get(timeout=10)
        wait_until(lambda: "on_failure raised" in caplog.text, what="the handler's error")
    assert "handler bug" in caplog.text


def test_a_hard_time_limit_calls_on_failure_with_time_limit_exceeded(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()
    gate = threading.Event()

    class Timed(Hooked):
        pass

    @app.task(base=Timed, time_limit=0.3)
    def stuck() -> None:
        while not gate.wait(0.01):
            pass

    start_worker(app)
    try:
        result = stuck.delay()
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=10)
        wait_until(lambda: "after_return" in CALLS.names(), what="after_return")
    finally:
        gate.set()
    _, exc, task_id, *_ = CALLS.named("on_failure")
    assert isinstance(exc, TimeLimitExceeded) and task_id == result.id
    assert CALLS.named("after_return")[1] == "FAILURE"


def test_handlers_run_in_eager_mode(make_app: MakeApp) -> None:
    app = make_app()
    add, boom, flaky = _hooked_tasks(app)

    assert add.apply((4,)).get() == 4
    assert CALLS.names() == ["before_start", "body", "on_success", "after_return"]
    CALLS.items.clear()

    result = boom.apply((1,))
    assert result.state == states.FAILURE
    assert CALLS.names() == ["before_start", "body", "on_failure", "after_return"]
    CALLS.items.clear()

    assert flaky.apply((1,)).get() == "ok"
    assert CALLS.names() == [
        "before_start", "body", "on_retry", "before_start", "body", "on_success",
        "after_return",
    ]
    CALLS.items.clear()

    # task_eager_propagates: Celery's eager tracer re-raises at once, no handler after.
    with pytest.raises(KeyError):
        boom.apply((2,), throw=True)
    assert CALLS.names() == ["before_start", "body"]


def test_a_base_class_defining_handlers_is_accepted(make_app: MakeApp) -> None:
    """(Refused until the worker called them: issue 14.)"""
    app = make_app()

    class Handled(Task[Any, Any]):
        def on_failure(self, *args: Any) -> None:
            return None

    task = app.task(base=Handled)(lambda: None)
    assert task.custom_hooks == frozenset({"on_failure"})


# -- a custom __call__ -----------------------------------------------------------------------


@BOTH_POOLS
def test_a_custom_call_is_run_by_the_tracer_with_the_request_current(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()

    class Wrapping(Task[Any, Any]):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            CALLS.add("call", self.request.id, args)
            return {"wrapped": self.run(*args, **kwargs)}

    @app.task(base=Wrapping, bind=True)
    def echo(self: Any, x: int) -> list[Any]:
        return [x, self.request.id]

    assert echo.run(5) == [5, None]  # bound: run takes the arguments alone, as Celery's
    start_worker(app)
    result = echo.delay(3)
    assert result.get(timeout=10) == {"wrapped": [3, result.id]}
    assert CALLS.named("call") == ("call", result.id, (3,))
    assert echo.apply((4,)).get()["wrapped"][0] == 4


# -- throws ----------------------------------------------------------------------------------


def test_expected_errors_are_logged_at_info_without_a_traceback(
    make_app: MakeApp, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.task(throws=(KeyError,))
    def lookup(key: str) -> None:
        raise KeyError(key)

    @app.task(throws=(KeyError,))
    def other() -> None:
        raise ValueError("unexpected")

    start_worker(app)
    with caplog.at_level(logging.INFO, logger="wiretask"):
        expected = lookup.delay("missing")
        unexpected = other.delay()
        with pytest.raises(KeyError):
            expected.get(timeout=10)
        with pytest.raises(ValueError):
            unexpected.get(timeout=10)
        wait_until(lambda: "raised unexpected" in caplog.text
                   and "raised expected" in caplog.text, what="log lines")
    [line] = [r for r in caplog.records if expected.id in r.getMessage()
              and "raised" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert "raised expected: KeyError('missing')" in line.getMessage()
    assert "Traceback" not in line.getMessage()
    [bad] = [r for r in caplog.records if unexpected.id in r.getMessage()
             and "raised" in r.getMessage()]
    assert bad.levelno == logging.ERROR and "Traceback" in bad.getMessage()
    # The failure is stored either way.
    assert expected.state == unexpected.state == states.FAILURE


# -- self.request ----------------------------------------------------------------------------


def _fields(request: Any) -> dict[str, Any]:
    names = (
        "id", "task", "args", "kwargs", "headers", "reply_to", "correlation_id", "timelimit",
        "origin", "callbacks", "errbacks", "chain", "chord", "shadow", "stamps",
        "stamped_headers", "argsrepr", "kwargsrepr", "properties", "delivery_info",
        "hostname", "is_eager", "group", "group_index", "root_id", "parent_id", "retries",
        "eta", "expires", "ignore_result", "called_directly", "time_limit",
        "soft_time_limit", "replaced_task_nesting", "taskset",
    )
    return {name: getattr(request, name) for name in names}


@BOTH_POOLS
def test_the_request_has_every_field_of_celerys_context(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app()
    seen: dict[str, Any] = {}

    @app.task(bind=True)
    def look(self: Any, x: int, y: int = 0) -> None:
        seen.update(_fields(self.request))
        seen["get"] = self.request.get("shadow"), self.request.get("nothing", "dflt")

    @app.task
    def after(value: Any) -> None:
        return None

    @app.task
    def report(task_id: str) -> None:
        return None

    start_worker(app, hostname="w1@example")
    result = look.apply_async(
        (1,), {"y": 2}, headers={"trace": "abc"}, link=after.s(), link_error=report.s(),
        shadow="looking", time_limit=30, soft_time_limit=20, countdown=0.05, expires=60,
        root_id="root-1", parent_id="parent-1", priority=3,
    )
    result.get(timeout=10)

    assert seen["id"] == result.id and seen["task"] == look.name
    assert (seen["args"], seen["kwargs"]) == ((1,), {"y": 2})
    assert seen["headers"] == {"trace": "abc"}
    assert seen["correlation_id"] == result.id
    assert isinstance(seen["reply_to"], str)  # the sender's oid, as Celery's
    assert seen["timelimit"] == [30, 20]
    assert (seen["time_limit"], seen["soft_time_limit"]) == (30, 20)
    assert isinstance(seen["origin"], str) and seen["origin"]
    assert [cb["task"] for cb in seen["callbacks"]] == [after.name]
    assert [eb["task"] for eb in seen["errbacks"]] == [report.name]
    assert seen["chain"] is None and seen["chord"] is None
    assert seen["shadow"] == "looking"
    assert seen["get"] == ("looking", "dflt")
    assert seen["stamps"] is None and seen["stamped_headers"] is None
    assert seen["argsrepr"] == "(1,)" and seen["kwargsrepr"] == "{'y': 2}"
    assert seen["properties"]["correlation_id"] == result.id
    assert seen["properties"]["priority"] == 3
    info = seen["delivery_info"]
    assert {"exchange", "routing_key", "priority", "redelivered"} <= set(info)
    assert info["routing_key"] == "celery" and info["redelivered"] is False
    assert seen["hostname"] == "w1@example"
    assert seen["is_eager"] is False and seen["called_directly"] is False
    assert seen["group"] is None and seen["group_index"] is None and seen["taskset"] is None
    assert (seen["root_id"], seen["parent_id"]) == ("root-1", "parent-1")
    assert seen["retries"] == 0 and seen["replaced_task_nesting"] == 0
    assert isinstance(seen["eta"], datetime) and isinstance(seen["expires"], datetime)
    assert seen["ignore_result"] is False


def test_the_eager_request_and_the_direct_call(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[dict[str, Any]] = []

    @app.task(bind=True)
    def look(self: Any, x: int) -> None:
        seen.append(_fields(self.request))

    look.apply((1,), headers={"h": 1})
    look(2)
    eager, direct = seen
    assert eager["is_eager"] is True and eager["called_directly"] is False
    assert eager["headers"] == {"h": 1} and eager["timelimit"] == [None, None]
    assert eager["delivery_info"]["is_eager"] is True
    # A direct call: Celery's defaults.
    assert direct["called_directly"] is True and direct["id"] is None
    assert direct["headers"] is None and direct["callbacks"] is None
    assert direct["retries"] == 0 and direct["ignore_result"] is False


# -- children ----------------------------------------------------------------------------


@BOTH_POOLS
def test_the_stored_result_lists_the_tasks_sent_and_the_callbacks_as_children(
    make_app: MakeApp, kind: str, start_worker: StartWorker
) -> None:
    app = make_app(kind)

    @app.task
    def leaf(i: int) -> int:
        return i

    @app.task
    def fan(n: int) -> list[str]:
        return [leaf.delay(i).id for i in range(n)]

    @app.task(trail=False)
    def quiet() -> str:
        return leaf.delay(9).id

    start_worker(app)
    result = fan.apply_async((2,), link=leaf.si(5))
    sent = result.get(timeout=10)
    children = result.children
    assert children is not None
    ids = [child.id for child in children]
    assert ids[:2] == sent and len(ids) == 3  # the two it sent, then the callback
    assert all(isinstance(child, AsyncResult) for child in children)
    assert [child.get(timeout=10) for child in children] == [0, 1, 5]
    meta = app.backend.get(result.id)
    assert meta is not None and meta["children"] == [[[i, None], None] for i in ids]

    silent = quiet.delay()
    silent.get(timeout=10)
    assert silent.children == []  # trail=False: none recorded, as in Celery


def test_children_of_an_eager_run_and_of_a_failure(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app(task_store_eager_result=True)

    @app.task
    def leaf() -> None:
        return None

    @app.task
    def sends_then_fails() -> None:
        leaf.delay()
        raise RuntimeError("after sending")

    eager = sends_then_fails.apply()
    assert eager.state == states.FAILURE
    stored = AsyncResult(eager.id, app=app).children
    assert stored is not None and len(stored) == 1
    start_worker(app)
    failed = sends_then_fails.delay()
    with pytest.raises(RuntimeError):
        failed.get(timeout=10)
    assert failed.children is not None and len(failed.children) == 1
