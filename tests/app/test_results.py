"""``AsyncResult`` as Celery's: ``date_done`` is a datetime, ``get(interval=)`` polls,
``parent``/``children`` are read from the stored meta, and ``get()`` inside a running
task refuses to block the worker."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from wiretask import App
from wiretask.app import AsyncResult, GroupResult, allow_join_result
from wiretask.errors import DecodeError, ValidationError, WouldBlock
from wiretask.protocol import states

from .conftest import StartWorker

DONE = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def store(app: App, task_id: str, status: str, result: Any, **meta: Any) -> None:
    app.backend.store(task_id, states.make_meta(task_id, status, result, **meta))


def test_date_done_is_an_aware_datetime(app: App, start_worker: StartWorker) -> None:
    store(app, "a", states.SUCCESS, 1, date_done=DONE)
    assert app.AsyncResult("a").date_done == DONE
    store(app, "b", states.SUCCESS, 1, date_done="2026-03-04T05:06:07")  # naive: UTC
    assert app.AsyncResult("b").date_done == DONE
    assert app.AsyncResult("pending").date_done is None
    store(app, "c", states.SUCCESS, 1, date_done="yesterday")
    with pytest.raises(DecodeError, match="date_done"):
        _ = app.AsyncResult("c").date_done

    @app.task
    def job() -> int:
        return 1

    start_worker(app)
    result = job.delay()
    result.get(timeout=10)
    done = result.date_done
    assert isinstance(done, datetime) and done.tzinfo is not None
    assert abs((datetime.now(UTC) - done).total_seconds()) < 30


def test_get_with_an_interval_polls_at_that_interval(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[float] = []
    backend = app.backend
    real_get = backend.get

    def counting_get(task_id: str) -> Any:
        reads.append(time.monotonic())
        return real_get(task_id)

    monkeypatch.setattr(backend, "get", counting_get)
    later = threading.Timer(0.35, store, (app, "slow", states.SUCCESS, "done"))
    later.start()
    seen: list[str] = []
    assert app.AsyncResult("slow").get(
        timeout=5, interval=0.1, on_message=lambda m: seen.append(m["status"])
    ) == "done"
    later.join()
    assert 3 <= len(reads) <= 8  # about one read per 0.1 s over 0.35 s
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert min(gaps) >= 0.09
    assert seen == [states.SUCCESS]
    with pytest.raises(ValidationError, match="interval"):
        app.AsyncResult("slow").get(interval=0)
    with pytest.raises(TimeoutError):
        app.AsyncResult("never").get(timeout=0.2, interval=0.05)


def test_parent_and_children_come_from_the_meta(app: App) -> None:
    store(app, "child", states.SUCCESS, 1, parent_id="root")
    store(app, "root", states.SUCCESS, 2,
          children=[[["child", None], None], [["other", None], None]])
    child = app.AsyncResult("child")
    assert child.parent == app.AsyncResult("root")
    assert child.parent is not None and child.parent.get(timeout=1) == 2
    assert app.AsyncResult("root").parent is None
    assert app.AsyncResult("root").children == [app.AsyncResult("child"),
                                                 app.AsyncResult("other")]
    assert app.AsyncResult("pending").children is None
    store(app, "group-parent", states.SUCCESS, 3,
          children=[[["g", None], [[["m", None], None]]]])
    # A group among the children (Celery stores [[gid, parent], [members...]]).
    (group_child,) = app.AsyncResult("group-parent").children or []
    assert isinstance(group_child, GroupResult) and group_child.id == "g"
    assert group_child.results == [app.AsyncResult("m")]
    store(app, "bad-children", states.SUCCESS, 3, children=[["not", "a", "tuple"]])
    with pytest.raises(DecodeError, match="children"):
        _ = app.AsyncResult("bad-children").children
    explicit = AsyncResult("x", app=app, parent=app.AsyncResult("y"))
    assert explicit.parent == app.AsyncResult("y")


def test_get_inside_a_task_raises_unless_the_caller_opts_out(
    app: App, start_worker: StartWorker
) -> None:
    @app.task
    def inner() -> int:
        return 7

    @app.task
    def outer(mode: str) -> Any:
        result = inner.delay()
        if mode == "block":
            return result.get(timeout=5)
        if mode == "allowed":
            with allow_join_result():
                return result.get(timeout=5)
        return result.get(timeout=5, disable_sync_subtasks=False)

    start_worker(app, concurrency=3)
    with pytest.raises(RuntimeError, match=r"never call result\.get"):
        outer.delay("block").get(timeout=10)
    assert outer.delay("opt-out").get(timeout=10) == 7
    assert outer.delay("allowed").get(timeout=10) == 7
    failed = outer.delay("block")
    with pytest.raises(WouldBlock):
        failed.get(timeout=10)
