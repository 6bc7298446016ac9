"""Celery 5.7's canvas, run by wiretask's worker: chains, groups, chords, chunks,
map/starmap (Celery's built-in tasks), a failing chord header, and ``result_extended``.

A Celery app (client only) sends; a wiretask ``Worker`` runs everything in this process;
every assertion is made through Celery's own ``AsyncResult``/``GroupResult``, so it is
about what Celery sees of what wiretask did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, chain, chord, group
from celery.canvas import chunks, xmap, xstarmap
from celery.exceptions import ChordError

from interop.support import WAIT, wait_for
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.canvas import GroupResult
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 11


@pytest.fixture(scope="module")
def wt(interop_url: str) -> Iterator[App]:
    app = make_app(interop_url)
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_worker(wt: App) -> Iterator[Worker]:
    worker = Worker(wt, queues=["celery"], concurrency=2, shutdown_timeout=5)
    with worker:
        yield worker


@pytest.fixture
def celery(celery_client: Celery, wt_worker: Worker) -> Celery:
    assert wt_worker.running
    return celery_client


def sigs(celery: Celery) -> tuple[Any, Any, Any, Any]:
    """Signatures by name: the Celery client has no task functions of its own."""
    return (lambda *a: celery.signature("interop.add", a),
            lambda: celery.signature("interop.tsum"),
            lambda *a: celery.signature("interop.fail", a),
            lambda: celery.signature("interop.errback"))


def test_a_celery_chain_runs_on_wiretask(celery: Celery) -> None:
    add, _, _, _ = sigs(celery)
    result = chain(add(1, 2), add(3), add(4)).apply_async()

    assert result.get(timeout=WAIT) == 10
    assert result.parent.get(timeout=WAIT) == 6


def test_a_celery_group_runs_on_wiretask_and_wiretask_restores_it(
    celery: Celery, wt: App
) -> None:
    add, _, _, _ = sigs(celery)
    result = group(add(1, 1), add(2, 2), add(3, 3)).apply_async()
    assert result.get(timeout=WAIT) == [2, 4, 6]

    result.save()
    ours = GroupResult.restore(result.id, app=wt)
    assert ours is not None
    assert [r.id for r in ours.results] == [r.id for r in result.results]
    assert ours.get(timeout=WAIT) == [2, 4, 6]


@pytest.mark.parametrize("form", ["chord(header, body)", "chord(header)(body)",
                                  "group | task"])
def test_a_celery_chord_fires_its_body_on_wiretask(celery: Celery, form: str) -> None:
    add, tsum, _, _ = sigs(celery)
    header = [add(1, 1), add(2, 2), add(3, 3)]
    if form == "chord(header, body)":
        result = chord(header, tsum()).apply_async()
    elif form == "chord(header)(body)":
        result = chord(header)(tsum())
    else:
        result = (group(header) | tsum()).apply_async()

    assert result.get(timeout=WAIT) == 12
    assert result.parent.get(timeout=WAIT) == [2, 4, 6]


def test_a_celery_chain_ending_in_a_group_runs_on_wiretask(celery: Celery) -> None:
    add, _, _, _ = sigs(celery)
    result = (add(1, 1) | group(add(10), add(20))).apply_async()

    assert result.get(timeout=WAIT) == [12, 22]


def test_a_celery_chain_through_a_chord_runs_on_wiretask(celery: Celery) -> None:
    add, tsum, _, _ = sigs(celery)
    result = chain(add(1, 1), group(add(1), add(2)), tsum(), add(100)).apply_async()

    assert result.get(timeout=WAIT) == 107


def test_celery_chunks_map_and_starmap_run_on_wiretasks_builtins(celery: Celery) -> None:
    add, _, _, _ = sigs(celery)
    echo = celery.signature("interop.echo")
    result = chunks(add(), [(1, 1), (2, 2), (3, 3)], 2, app=celery).apply_async()
    assert result.get(timeout=WAIT) == [[2, 4], [6]]
    assert xmap(echo, [1, "two"], app=celery).apply_async().get(timeout=WAIT) == [
        {"args": [1], "kwargs": {}}, {"args": ["two"], "kwargs": {}},
    ]
    starmap = xstarmap(add(), [(1, 1), (2, 2)], app=celery)
    assert starmap.apply_async().get(timeout=WAIT) == [2, 4]


def test_a_failing_header_fails_the_celery_body_with_chord_error(
    celery: Celery, redis_client: redis.Redis
) -> None:
    add, tsum, fail, errback = sigs(celery)
    body = tsum()
    body.link_error(errback())
    result = chord([add(1, 1), fail("bad header")], body).apply_async()

    with pytest.raises(ChordError) as info:
        result.get(timeout=WAIT, propagate=True, follow_parents=False)
    failed_id = result.parent.results[1].id
    assert str(info.value) == f"Dependency {failed_id} raised ValueError('bad header')"
    assert result.state == "FAILURE"

    def errback_ran() -> bool:
        for key in redis_client.scan_iter(match="celery-task-meta-*"):
            value = json.loads(redis_client.get(key) or b"{}").get("result")
            if isinstance(value, dict) and value.get("failed_task_id") == result.id:
                return True
        return False

    assert wait_for(errback_ran, what="the body's errback with the body's id")


def test_wiretasks_extended_result_fields_are_read_by_celery(
    interop_url: str, celery_client: Celery
) -> None:
    app = make_app(interop_url, main="extended")
    app.conf.result_extended = True
    with Worker(app, queues=["extended"], concurrency=1, shutdown_timeout=5,
                hostname="wt-extended@test"):
        result = celery_client.send_task("interop.add", (2, 3), queue="extended")
        assert result.get(timeout=WAIT) == 5
        assert result.name == "interop.add"
        assert result.args == [2, 3]
        assert result.kwargs == {}
        assert result.worker == "wt-extended@test"
        assert result.queue == "extended"
        assert result.retries == 0
    app.close()
