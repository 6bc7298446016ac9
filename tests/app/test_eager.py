"""``task_always_eager`` and ``Task.apply``: tasks run here through the message path and
return an ``EagerResult`` that behaves like Celery's."""

from __future__ import annotations

from typing import Any

import pytest

from wiretask import App
from wiretask.app import EagerResult
from wiretask.errors import WouldBlock
from wiretask.protocol import states

from .conftest import MakeApp, received


@pytest.fixture
def eager(make_app: MakeApp) -> App:
    return make_app(task_always_eager=True)


def test_delay_runs_here_and_sends_nothing(eager: App) -> None:
    seen: list[Any] = []

    @eager.task(bind=True)
    def add(self: Any, x: Any, y: Any) -> Any:
        seen.append((self.request.is_eager, self.request.called_directly, self.request.id))
        return [x, y]

    result = add.delay((1, 2), y={"k": (3,)})
    assert isinstance(result, EagerResult)
    assert result.get() == [[1, 2], {"k": [3]}]  # through JSON, as a worker sees it
    assert (result.state, result.status, result.result, result.traceback) == (
        states.SUCCESS, states.SUCCESS, [[1, 2], {"k": [3]}], None
    )
    assert result.ready() and result.successful() and not result.failed()
    assert seen == [(True, False, result.id)]
    assert eager.transport.size("celery") == 0
    assert eager.backend.get(result.id) is None  # task_store_eager_result is off


def test_a_failure_is_kept_in_the_result_and_raised_by_get(eager: App) -> None:
    @eager.task
    def boom() -> None:
        raise ValueError("nope")

    result = boom.apply_async()
    assert result.state == states.FAILURE and result.failed()
    assert isinstance(result.result, ValueError)
    assert result.traceback is not None and "ValueError: nope" in result.traceback
    with pytest.raises(ValueError, match="nope"):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)


def test_eager_propagates_raises_at_once(make_app: MakeApp) -> None:
    app = make_app(task_always_eager=True, task_eager_propagates=True)

    @app.task
    def boom() -> None:
        raise KeyError("at once")

    with pytest.raises(KeyError, match="at once"):
        boom.delay()
    result = boom.apply(throw=False)
    assert result.state == states.FAILURE


def test_links_run_eagerly_and_errbacks_as_in_the_worker(eager: App) -> None:
    log: list[Any] = []

    @eager.task
    def add(x: int, y: int) -> int:
        return x + y

    @eager.task
    def record(value: Any) -> None:
        log.append(("record", value))

    @eager.task
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        log.append(("errback", request.id, type(exc).__name__))

    result = add.apply_async((2, 3), link=record.s())
    assert result.get() == 5
    failed = add.apply_async((2, "x"), link_error=on_error.s(), link=record.s())
    assert failed.state == states.FAILURE
    assert log == [("record", 5), ("errback", failed.id, "TypeError")]
    assert eager.transport.size("celery") == 0


def test_retry_runs_the_task_again_at_once(eager: App) -> None:
    tries: list[int] = []

    @eager.task(bind=True, autoretry_for=(ConnectionError,), max_retries=3)
    def flaky(self: Any) -> str:
        tries.append(self.request.retries)
        if len(tries) < 3:
            raise ConnectionError("down")
        return "ok"

    assert flaky.delay().get() == "ok"
    assert tries == [0, 1, 2]


def test_store_eager_result_writes_the_backend(make_app: MakeApp) -> None:
    app = make_app(task_always_eager=True, task_store_eager_result=True)

    @app.task
    def answer() -> int:
        return 42

    result = answer.delay()
    assert app.AsyncResult(result.id).get(timeout=1) == 42


def test_apply_works_without_always_eager_and_send_task_still_sends(app: App) -> None:
    @app.task
    def double(x: int) -> int:
        return 2 * x

    assert double.apply((4,)).get() == 8
    assert app.transport.size("celery") == 0
    app.conf.task_always_eager = True
    app.send_task(double.name, (1,))
    assert received(app).args == (1,)
    assert double.s(5).apply_async().get() == 10  # a registered signature runs eagerly
    with pytest.raises(TypeError):
        double.delay(1, 2)  # arguments are still checked


def test_get_inside_an_eager_task_would_block(eager: App) -> None:
    @eager.task
    def inner() -> int:
        return 1

    @eager.task
    def outer(join: bool) -> int:
        result = inner.delay()
        if join:
            return int(result.get())
        return int(result.get(disable_sync_subtasks=False))

    assert outer.delay(False).get() == 1
    with pytest.raises(WouldBlock):
        outer.apply((True,), throw=True)
    assert issubclass(WouldBlock, RuntimeError)  # what Celery raises


def test_apply_many_runs_each_call_eagerly(eager: App) -> None:
    @eager.task
    def square(x: int) -> int:
        return x * x

    results = square.apply_many([(2,), ([3], {})])
    assert all(isinstance(r, EagerResult) for r in results)
    assert [r.get() for r in results] == [4, 9]
    assert eager.transport.size("celery") == 0
