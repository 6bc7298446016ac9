"""Canvas under ``task_always_eager`` (everything runs here, as Celery's ``apply``), and
the group result API: join with a shared timeout, propagation, callbacks, ``on_message``,
saving groups on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from wiretask.app import App, AsyncResult, EagerResult
from wiretask.canvas import GroupResult, ResultSet, chain, chord, group
from wiretask.errors import TimeoutError, WouldBlock
from wiretask.protocol import states
from wiretask.worker import Worker

from .conftest import MakeApp

WAIT = 20.0


def t(app: App, name: str) -> Any:
    return app.tasks[f"canvas.{name}"]


def test_eager_canvas_runs_here(make_app: MakeApp) -> None:
    app = make_app(task_always_eager=True)
    add, tsum, echo = t(app, "add"), t(app, "tsum"), t(app, "echo")
    result = group(add.s(1, 1), add.s(2, 2)).apply_async()
    assert isinstance(result, GroupResult)
    assert all(isinstance(r, EagerResult) for r in result)
    assert result.get() == [2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async().get() == 6
    assert chord([add.s(1, 1)])(tsum.s()).get() == 2
    assert (group(add.s(1, 1), add.s(2, 2)) | tsum.s()).apply_async().get() == 6
    assert (add.s(1, 1) | group(add.s(1), add.s(2))).apply_async().get() == [3, 4]
    assert chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()).delay().get() == 7
    assert add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply_async().get() == [[2, 4], [6]]
    assert echo.map([1]).apply_async().get() == [{"args": [1], "kwargs": {}}]
    assert add.starmap([(1, 2)]).apply_async().get() == [3]
    assert app.transport.size("celery") == 0  # nothing was sent


def test_join_waits_for_all_within_one_timeout(app: App) -> None:
    add = t(app, "add")
    pending = group(add.s(1, 1), add.s(2, 2)).apply_async()  # no worker: never done
    assert not pending.ready() and pending.waiting() and pending.completed_count() == 0
    with pytest.raises(TimeoutError) as info:
        pending.join(timeout=0.3)
    assert info.value.task_id == pending.results[0].id


def test_join_propagates_or_returns_the_exception(app: App, worker: Worker) -> None:
    add, fail = t(app, "add"), t(app, "fail")
    result = group(add.s(1, 1), fail.s("bad"), add.s(2, 2)).apply_async()
    with pytest.raises(ValueError, match="bad"):
        result.get(timeout=WAIT)
    values = result.join(timeout=WAIT, propagate=False)
    assert values is not None and values[0] == 2 and values[2] == 4
    assert isinstance(values[1], ValueError)
    assert result.failed() and not result.successful() and result.completed_count() == 2
    assert [r.id for r in result.failed_join_report()] == [result.results[1].id]
    with pytest.raises(ValueError, match="bad"):
        result.maybe_throw()
    seen: list[tuple[str, Any]] = []
    assert result.join(timeout=WAIT, propagate=False, callback=lambda i, v: seen.append(
        (i, v))) is None
    assert [i for i, _ in seen] == [r.id for r in result]
    states_seen: list[str] = []
    group(add.s(3, 3)).apply_async().get(
        timeout=WAIT, on_message=lambda meta: states_seen.append(meta["status"])
    )
    assert states_seen[-1] == states.SUCCESS


def test_join_inside_a_task_needs_the_callers_consent(app: App, worker: Worker) -> None:
    add = t(app, "add")
    inner = group(add.s(1, 1)).apply_async()
    inner.get(timeout=WAIT)

    @app.task(name="canvas.joins", bind=True)
    def joins(self: Any, allowed: bool) -> Any:
        return ResultSet([AsyncResult(inner.results[0].id, app=app)]).join(
            timeout=WAIT, disable_sync_subtasks=not allowed
        )

    assert app.tasks["canvas.joins"].delay(True).get(timeout=WAIT) == [2]
    with pytest.raises(Exception, match=r"never call result\.get") as info:
        app.tasks["canvas.joins"].delay(False).get(timeout=WAIT)
    assert type(info.value).__name__ == WouldBlock.__name__


def test_a_result_set_of_results(app: App, worker: Worker) -> None:
    add = t(app, "add")
    one, two = add.delay(1, 1), add.delay(2, 2)
    results = ResultSet([one])
    results.add(two)
    results.add(two)
    assert len(results) == 2 and results.get(timeout=WAIT) == [2, 4]
    results.discard(one)
    results.update([one])
    assert [r.id for r in results] == [two.id, one.id]
    results.remove(two)
    results.clear()
    assert len(results) == 0 and results.ready()


def test_an_eager_result_stored_with_result_extended_has_celerys_fields(
    make_app: MakeApp,
) -> None:
    app = make_app(task_always_eager=True, task_store_eager_result=True,
                   result_extended=True)
    result = t(app, "add").delay(2, 3)
    stored = AsyncResult(result.id, app=app)
    assert (stored.name, stored.args, stored.kwargs, stored.retries, stored.queue) == (
        "canvas.add", [2, 3], {}, 0, None,
    )
    assert stored.worker
