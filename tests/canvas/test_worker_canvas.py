"""wiretask's worker runs every canvas primitive on each bundled backend: Redis counts a
chord's header itself (Celery's ``on_chord_part_return``), SQLite and memory are polled
by ``celery.chord_unlock`` (as Celery's backends without chord support are)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import Calls
from wiretask.app import App, AsyncResult
from wiretask.canvas import GroupResult, chain, chord, group
from wiretask.errors import ChordError, TaskRevokedError
from wiretask.protocol import states
from wiretask.worker import Worker

from .conftest import MakeApp

WAIT = 20.0


def t(app: App, name: str) -> Any:
    return app.tasks[f"canvas.{name}"]


def test_a_group_runs_and_its_result_is_saved_and_restored(app: App, worker: Worker) -> None:
    add = t(app, "add")
    result = group(add.s(i, i) for i in range(5)).apply_async()
    assert result.get(timeout=WAIT) == [0, 2, 4, 6, 8]
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 5
    result.save()
    restored = GroupResult.restore(result.id, app=app)
    assert restored == result and restored is not None
    assert restored.get(timeout=WAIT) == [0, 2, 4, 6, 8]
    restored.delete()
    assert GroupResult.restore(result.id, app=app) is None


def test_group_members_carry_the_group_id(app: App, worker: Worker) -> None:
    echo = t(app, "echo")
    result = group(echo.s(1), echo.s(2)).apply_async()
    assert result.get(timeout=WAIT) == [{"args": [1], "kwargs": {}},
                                        {"args": [2], "kwargs": {}}]
    for member in result:
        meta = app.backend.get(member.id)
        assert meta is not None and meta["group_id"] == result.id
    assert len({r.id for r in result}) == len(result) == 2


@pytest.mark.parametrize("form", ["chord(header, body)", "chord(header)(body)",
                                  "group | task"])
def test_a_chord_fires_its_body_with_the_results_in_header_order(
    app: App, worker: Worker, form: str, calls: Calls
) -> None:
    """Sent with the sync API and with the asyncio one (``calls``)."""
    add, tsum, echo = t(app, "add"), t(app, "tsum"), t(app, "echo")
    header = [add.s(i, 0) for i in range(6)]
    body = tsum.s()
    if form == "chord(header, body)":
        result = calls(chord(header, body)).apply_async()
    elif form == "chord(header)(body)":
        if calls.runner is None:
            result = chord(header)(body)
        else:  # a call that sends, awaited
            result = calls.runner.run(app.asend_canvas(lambda: chord(header)(body)))
    else:
        result = calls(group(header) | body).apply_async()
    assert calls(result).get(timeout=WAIT) == 15
    ordered = calls(chord([echo.s(i) for i in range(6)], echo.s())).apply_async()
    assert ordered.get(timeout=WAIT)["args"][0] == [{"args": [i], "kwargs": {}}
                                                    for i in range(6)]


def test_a_chain_ending_in_a_group_and_a_chain_through_a_chord(
    app: App, worker: Worker, calls: Calls
) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    assert calls(add.s(1, 1) | group(add.s(10), add.s(20))).apply_async().get(
        timeout=WAIT) == [12, 22]
    through = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s(), add.s(100))
    result = calls(through).apply_async()
    assert calls(result).get(timeout=WAIT) == 107
    assert calls(chord([add.s(1, 1), add.s(2, 2)], tsum.s() | add.s(5))).apply_async().get(
        timeout=WAIT) == 11


def test_a_header_that_nests_a_group_gives_the_body_its_structure(
    app: App, worker: Worker
) -> None:
    add, echo = t(app, "add"), t(app, "echo")
    result = chord([add.s(1, 1), chain(add.s(1, 1), group(add.s(1), add.s(2)))],
                   echo.s()).apply_async()
    assert result.get(timeout=WAIT) == {"args": [[2, [3, 4]]], "kwargs": {}}


def test_an_empty_header_sends_the_body_with_an_empty_list(app: App, worker: Worker) -> None:
    echo = t(app, "echo")
    result = chord([], echo.s()).apply_async()
    assert result.get(timeout=WAIT) == {"args": [[]], "kwargs": {}}


def test_chunks_map_and_starmap_run_as_celerys_builtin_tasks(
    app: App, worker: Worker, calls: Calls
) -> None:
    add, echo = t(app, "add"), t(app, "echo")
    assert calls(add.chunks([(i, i) for i in range(5)], 2)).apply_async().get(
        timeout=WAIT) == [[0, 2], [4, 6], [8]]
    assert calls(echo.map(["a", "b"])).apply_async().get(timeout=WAIT) == [
        {"args": ["a"], "kwargs": {}}, {"args": ["b"], "kwargs": {}},
    ]
    assert calls(add.starmap([(1, 2), (3, 4)])).delay().get(timeout=WAIT) == [3, 7]


def test_several_callbacks_go_out_as_one_group(app: App, worker: Worker) -> None:
    add = t(app, "add")
    sig = add.s(1, 1)
    sig.link(add.s(10))
    sig.link(add.s(20))
    parent = sig.apply_async()
    parent.get(timeout=WAIT)

    def children() -> list[dict[str, Any]]:
        metas = [app.backend.get(task_id) for task_id in _result_ids(app)]
        return [m for m in metas if m is not None and m.get("parent_id") == parent.id
                and m["status"] == states.SUCCESS]

    deadline = time.monotonic() + WAIT
    while len(children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    metas = children()
    assert sorted(m["result"] for m in metas) == [12, 22]
    groups = {m.get("group_id") for m in metas}
    assert len(groups) == 1 and None not in groups  # one group for both callbacks


def _result_ids(app: App) -> list[str]:
    """Every stored task id (a test helper reading each backend's own store)."""
    backend: Any = app.backend
    if hasattr(backend, "_store"):  # memory
        return list(backend._store.entries)
    if hasattr(backend, "_commands"):  # redis
        keys = backend.client.keys(f"{backend.keyprefix}*")
        return [k.decode().removeprefix(backend.keyprefix) for k in keys]
    rows = backend._conn().execute("SELECT task_id FROM wiretask_results").fetchall()
    return [row[0] for row in rows]


def test_a_failing_header_task_fails_the_body_with_chord_error_and_calls_its_errbacks(
    app: App, worker: Worker
) -> None:
    add, tsum, fail = t(app, "add"), t(app, "tsum"), t(app, "fail")
    body = tsum.s()
    body.link_error(t(app, "on_error").s())
    body.link_error(t(app, "report").s())
    result = chord([add.s(1, 1), fail.s("bad"), add.s(2, 2)], body).apply_async()
    with pytest.raises(ChordError) as info:
        result.get(timeout=WAIT, follow_parents=False)
    failed = result.parent.results[1]  # type: ignore[union-attr]
    assert str(info.value) == f"Dependency {failed.id} raised ValueError('bad')"
    with pytest.raises(ValueError, match="bad"):  # following the parents: the header's
        result.get(timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while len(app.calls) < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)
    assert sorted(app.calls) == sorted([  # type: ignore[attr-defined]
        ("new", result.id, repr(info.value)), ("old", result.id),
    ])


def test_a_failing_header_fails_each_task_of_a_group_body(app: App, worker: Worker) -> None:
    add, tsum, fail = t(app, "add"), t(app, "tsum"), t(app, "fail")
    result = chord([add.s(1, 1), fail.s("bad")], group(tsum.s(), tsum.s())).apply_async()
    assert isinstance(result, GroupResult)
    for member in result.results:
        with pytest.raises(ValueError, match="bad"):
            member.get(timeout=WAIT, follow_parents=False)


def test_a_failure_is_stored_forward_through_the_chain_and_its_chord(
    app: App, worker: Worker
) -> None:
    add, tsum, fail = t(app, "add"), t(app, "tsum"), t(app, "fail")
    result = chain(fail.s("first"), group(add.s(1), add.s(2)), tsum.s(),
                   add.s(1)).apply_async()
    with pytest.raises(ValueError, match="first"):  # stored forward: the last one's own
        result.get(timeout=WAIT, follow_parents=False)
    chord_body = result.parent  # the chord step's result is its body's
    assert chord_body is not None
    with pytest.raises(ValueError, match="first"):
        chord_body.get(timeout=WAIT, follow_parents=False)


def test_an_expired_header_task_fails_the_chord(app: App, worker: Worker) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    late = add.s(2, 2).set(expires=-1)
    result = chord([add.s(1, 1), late], tsum.s()).apply_async()
    with pytest.raises(ChordError, match="raised TaskRevokedError"):
        result.get(timeout=WAIT, follow_parents=False)
    with pytest.raises(TaskRevokedError):
        result.parent.results[1].get(timeout=WAIT)  # type: ignore[union-attr]


def test_result_extended_stores_celerys_fields(make_app: MakeApp) -> None:
    app = make_app(result_extended=True)
    plain = make_app()
    with Worker(app, concurrency=1, hostname="canvas@test", shutdown_timeout=5):
        result = t(app, "add").apply_async((2, 3))
        assert result.get(timeout=WAIT) == 5
        reread = AsyncResult(result.id, app=app)
        assert (reread.name, reread.args, reread.kwargs, reread.worker, reread.queue,
                reread.retries) == ("canvas.add", [2, 3], {}, "canvas@test", "celery", 0)
        meta = app.backend.get(result.id)
        assert meta is not None
        assert list(meta)[-7:] == ["name", "args", "kwargs", "worker", "retries", "queue",
                                   "task_id"]
    with Worker(plain, concurrency=1, shutdown_timeout=5):
        result = t(plain, "add").delay(1, 1)
        assert result.get(timeout=WAIT) == 2
        assert result.name is None and result.worker is None and result.args is None


def test_celerys_compatibility_builtins_sent_by_name(app: App, worker: Worker) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    members = [add.s(1), add.s(2)]
    for sig in members:
        sig.freeze()
    gid = "group-by-name"
    tuple_ = GroupResult(gid, [AsyncResult(s.id, app=app) for s in members],
                         app=app).as_tuple()
    sent = app.send_task("celery.group", (), {
        "tasks": [s.to_dict() for s in members], "result": tuple_, "group_id": gid,
        "partial_args": [10],
    })
    assert sent.get(timeout=WAIT) == [[gid, None], [[[m.id, None], None] for m in members]]
    assert GroupResult(gid, [AsyncResult(s.id, app=app) for s in members],
                       app=app).get(timeout=WAIT) == [11, 12]

    body = tsum.s()
    ran = app.send_task("celery.chord", (), {
        "header": [add.s(1, 1).to_dict(), add.s(2, 2).to_dict()], "body": body.to_dict(),
        "interval": 0.05,
    })
    body_tuple = ran.get(timeout=WAIT)
    assert AsyncResult(body_tuple[0][0], app=app).get(timeout=WAIT) == 6

    assert app.send_task("celery.accumulate", (1, 2, 3), {"index": 1}).get(timeout=WAIT) == 2
    assert app.send_task("celery.accumulate", (1, 2)).get(timeout=WAIT) == [1, 2]
    assert app.send_task("celery.backend_cleanup").get(timeout=WAIT) is None
    with pytest.raises(NotImplementedError, match="chain is not a real task"):
        app.send_task("celery.chain").get(timeout=WAIT)
    assert set(app.tasks) >= {"celery.chord_unlock", "celery.map", "celery.starmap",
                              "celery.chunks", "celery.group", "celery.chain",
                              "celery.chord", "celery.accumulate", "celery.backend_cleanup"}


def test_a_header_chain_failing_early_still_reports_its_part(app: App, worker: Worker) -> None:
    add, tsum, fail = t(app, "add"), t(app, "tsum"), t(app, "fail")
    # The chain's last task carries the chord; it never runs, its failure is carried
    # forward to it and counted, so the chord fails instead of waiting for ever.
    result = chord([chain(fail.s("early"), add.s(1)), add.s(2, 2)], tsum.s()).apply_async()
    with pytest.raises(ChordError, match=r"raised ValueError\('early'\)"):
        result.get(timeout=WAIT, follow_parents=False)
