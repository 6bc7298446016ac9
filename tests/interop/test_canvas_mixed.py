"""Chords shared by the two kinds of worker: some header tasks run on a Celery 5.7 worker,
the others on wiretask's, and the body on either. Both count their parts in the same
Redis keys (``celery-taskset-meta-<group>.j/.d/.s/.c``); whichever completes the chord
sends the body with every result in header order. Sent by a Celery client and by a
wiretask client.

The Celery worker consumes ``celery_side``, wiretask's ``wt_side``; each signature is
routed to one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery import chain as celery_chain
from celery import chord as celery_chord
from celery.exceptions import ChordError as CeleryChordError

from interop.support import WAIT, CeleryWorker
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.canvas import chain, chord
from wiretask.errors import ChordError
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 10
CELERY_SIDE = "celery_side"
WT_SIDE = "wt_side"


@pytest.fixture(scope="module")
def celery_worker(interop_url: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, [CELERY_SIDE], name="mixed") as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    app = make_app(interop_url, main="mixed")
    with Worker(app, queues=[WT_SIDE], concurrency=2, shutdown_timeout=5):
        yield app
    app.close()


def wt_sig(app: App, name: str, *args: Any, queue: str) -> Any:
    return app.signature(f"interop.{name}", args, queue=queue)


def celery_sig(client: Celery, name: str, *args: Any, queue: str) -> Any:
    return client.signature(f"interop.{name}", args, queue=queue)


@pytest.mark.parametrize("body_side", [WT_SIDE, CELERY_SIDE])
def test_a_wiretask_chord_with_header_tasks_on_both_workers(wt: App, body_side: str) -> None:
    header = [wt_sig(wt, "add", i, i, queue=side)
              for i, side in enumerate([CELERY_SIDE, WT_SIDE, CELERY_SIDE, WT_SIDE], 1)]
    result = chord(header, wt_sig(wt, "tsum", queue=body_side)).apply_async()

    assert result.get(timeout=WAIT) == 20
    assert result.parent.get(timeout=WAIT) == [2, 4, 6, 8]  # type: ignore[union-attr]


@pytest.mark.parametrize("body_side", [WT_SIDE, CELERY_SIDE])
def test_a_celery_chord_with_header_tasks_on_both_workers(
    wt: App, celery_client: Celery, body_side: str
) -> None:
    header = [celery_sig(celery_client, "add", i, i, queue=side)
              for i, side in enumerate([WT_SIDE, CELERY_SIDE, WT_SIDE, CELERY_SIDE], 1)]
    result = celery_chord(header, celery_sig(celery_client, "tsum", queue=body_side)).apply_async()

    assert result.get(timeout=WAIT) == 20
    assert result.parent.get(timeout=WAIT) == [2, 4, 6, 8]


def test_a_header_task_failing_on_celery_fails_the_chord_for_wiretask(wt: App) -> None:
    header = [wt_sig(wt, "add", 1, 1, queue=WT_SIDE),
              wt_sig(wt, "fail", "celery side", queue=CELERY_SIDE)]
    result = chord(header, wt_sig(wt, "tsum", queue=WT_SIDE)).apply_async()

    with pytest.raises(ChordError, match=r"raised ValueError\('celery side'\)"):
        result.get(timeout=WAIT, follow_parents=False)


def test_a_header_task_failing_on_wiretask_fails_the_chord_for_celery(
    wt: App, celery_client: Celery
) -> None:
    header = [celery_sig(celery_client, "add", 1, 1, queue=CELERY_SIDE),
              celery_sig(celery_client, "fail", "wiretask side", queue=WT_SIDE)]
    result = celery_chord(header, celery_sig(celery_client, "tsum",
                                             queue=CELERY_SIDE)).apply_async()

    with pytest.raises(CeleryChordError, match=r"raised ValueError\('wiretask side'\)"):
        result.get(timeout=WAIT, follow_parents=False)


def test_a_chain_crossing_sides_through_a_chord(wt: App, celery_client: Celery) -> None:
    ours = chain(
        wt_sig(wt, "add", 1, 1, queue=CELERY_SIDE),
        chord([wt_sig(wt, "add", 10, queue=WT_SIDE), wt_sig(wt, "add", 20, queue=CELERY_SIDE)],
              wt_sig(wt, "tsum", queue=WT_SIDE)),
        wt_sig(wt, "add", 100, queue=CELERY_SIDE),
    ).apply_async()
    theirs = celery_chain(
        celery_sig(celery_client, "add", 1, 1, queue=WT_SIDE),
        celery_chord([celery_sig(celery_client, "add", 10, queue=CELERY_SIDE),
                      celery_sig(celery_client, "add", 20, queue=WT_SIDE)],
                     celery_sig(celery_client, "tsum", queue=CELERY_SIDE)),
        celery_sig(celery_client, "add", 100, queue=WT_SIDE),
    ).apply_async()

    assert ours.get(timeout=WAIT) == 134
    assert theirs.get(timeout=WAIT) == 134
