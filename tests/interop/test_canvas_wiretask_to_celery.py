"""wiretask's canvas, run by a real Celery 5.7 worker: chains, groups, chords, chunks,
map/starmap, a failing chord header, and the result fields a Celery worker writes with
``result_extended``.

One ``celery worker -P solo`` serves the module on its own Redis database; wiretask only
sends and reads. A chord's body fires only because wiretask wrote the chord's size
(``celery-taskset-meta-<group>.s``) before its last header task, as Celery's client does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from interop.support import WAIT, CeleryWorker, wait_for
from interop.wiretask_tasks import make_app
from wiretask.app import App, AsyncResult
from wiretask.canvas import GroupResult, chain, chord, group
from wiretask.errors import ChordError
from wiretask.protocol import states

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 12


@pytest.fixture(scope="module")
def celery_worker(interop_url: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, ["celery"]) as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    app = make_app(interop_url)
    yield app
    app.close()


def tasks(app: App) -> tuple[Any, Any, Any, Any]:
    return (app.tasks["interop.add"], app.tasks["interop.tsum"], app.tasks["interop.fail"],
            app.tasks["interop.errback"])


def test_a_chain_runs_on_celery_step_by_step(wt: App) -> None:
    add, _, _, _ = tasks(wt)
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()

    assert result.get(timeout=WAIT) == 10
    assert result.parent is not None and result.parent.get(timeout=WAIT) == 6


def test_a_group_runs_on_celery_and_celery_restores_the_saved_group(
    wt: App, celery_client: Celery
) -> None:
    add, _, _, _ = tasks(wt)
    result = group(add.s(1, 1), add.s(2, 2), add.s(3, 3)).apply_async()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=WAIT) == [2, 4, 6]

    result.save()
    theirs = celery_client.GroupResult.restore(result.id)
    assert [r.id for r in theirs.results] == [r.id for r in result.results]
    assert theirs.get(timeout=WAIT) == [2, 4, 6]


@pytest.mark.parametrize("form", ["chord(header, body)", "chord(header)(body)",
                                  "group | task"])
def test_a_chord_body_fires_on_celery(wt: App, form: str) -> None:
    add, tsum, _, _ = tasks(wt)
    header = [add.s(1, 1), add.s(2, 2), add.s(3, 3)]
    if form == "chord(header, body)":
        result = chord(header, tsum.s()).apply_async()
    elif form == "chord(header)(body)":
        result = chord(header)(tsum.s())
    else:
        result = (group(header) | tsum.s()).apply_async()

    assert result.get(timeout=WAIT) == 12
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=WAIT) == [2, 4, 6]


def test_a_chain_ending_in_a_group_runs_on_celery(wt: App) -> None:
    add, _, _, _ = tasks(wt)
    result = (add.s(1, 1) | group(add.s(10), add.s(20))).apply_async()

    assert isinstance(result, GroupResult)
    assert result.get(timeout=WAIT) == [12, 22]


def test_a_chain_through_a_chord_runs_on_celery(wt: App) -> None:
    add, tsum, _, _ = tasks(wt)
    result = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s(), add.s(100)).apply_async()

    assert result.get(timeout=WAIT) == 107


def test_chunks_map_and_starmap_run_on_celery(wt: App) -> None:
    add, _, _, _ = tasks(wt)
    assert add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply_async().get(timeout=WAIT) == [
        [2, 4], [6],
    ]
    echo = wt.tasks["interop.echo"]
    assert echo.map([1, "two"]).apply_async().get(timeout=WAIT) == [
        {"args": [1], "kwargs": {}}, {"args": ["two"], "kwargs": {}},
    ]
    assert add.starmap([(1, 1), (2, 2)]).apply_async().get(timeout=WAIT) == [2, 4]


def errback_results(client: redis.Redis) -> list[dict[str, Any]]:
    """The stored results of the ``interop.errback`` calls so far."""
    found = []
    for key in client.scan_iter(match="celery-task-meta-*"):
        meta = json.loads(client.get(key) or b"{}")
        result = meta.get("result")
        if isinstance(result, dict) and "failed_task_id" in result:
            found.append(result)
    return found


def test_a_failing_header_fails_the_body_with_celerys_chord_error(
    wt: App, redis_client: redis.Redis
) -> None:
    add, tsum, fail, errback = tasks(wt)
    bad = fail.s("bad header")
    body = tsum.s()
    body.link_error(errback.s())
    result = chord([add.s(1, 1), bad], body).apply_async()

    with pytest.raises(ChordError) as info:
        result.get(timeout=WAIT, follow_parents=False)
    failed_id = result.parent.results[1].id  # type: ignore[union-attr]
    assert str(info.value) == f"Dependency {failed_id} raised ValueError('bad header')"
    assert result.state == states.FAILURE
    stored = json.loads(redis_client.get(f"celery-task-meta-{result.id}") or b"{}")
    assert stored["result"] == {
        "exc_type": "ChordError", "exc_module": "celery.exceptions",
        "exc_message": [f"Dependency {failed_id} raised ValueError('bad header')"],
    }
    # The body's errback (old style: one argument) is sent with the body's id.
    assert wait_for(lambda: [r for r in errback_results(redis_client)
                             if r["failed_task_id"] == result.id],
                    what="the body's errback")


def test_celerys_extended_result_fields_are_read_by_wiretask(interop_url: str) -> None:
    with CeleryWorker(interop_url, ["extended"], name="interop-extended",
                      conf={"result_extended": True}):
        app = make_app(interop_url, main="extended-reader")
        try:
            result = app.send_task("interop.add", (2, 3), {}, queue="extended")
            assert result.get(timeout=WAIT) == 5
            theirs = AsyncResult(result.id, app=app)
            assert theirs.name == "interop.add"
            assert theirs.args == [2, 3]
            assert theirs.kwargs == {}
            assert theirs.queue == "extended"
            assert theirs.retries == 0
            assert (theirs.worker or "").startswith("interop-extended@")
        finally:
            app.close()
