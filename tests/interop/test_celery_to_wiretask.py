"""Celery 5.7 sends, wiretask's worker runs, Celery reads the outcome.

A Celery app (client only, ``interop.celery_tasks.make_client``) publishes with
``send_task`` to Redis; a wiretask ``Worker`` (``interop.wiretask_tasks``) runs the tasks
in this process; every assertion is made through Celery's own ``AsyncResult``, so it is
about what Celery sees of what wiretask did.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import TaskRevokedError

from interop.support import WAIT, wait_for
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.transports.redis import RedisTransport
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 13
COMPRESSIONS = ["zlib", "gzip", "bzip2", "lzma", "zstd", "brotli"]


@pytest.fixture(scope="module")
def wt(interop_url: str) -> Iterator[App]:
    app = make_app(interop_url)
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_worker(wt: App) -> Iterator[Worker]:
    """wiretask's worker on ``celery``, shared by the module."""
    worker = Worker(wt, queues=["celery"], concurrency=2, shutdown_timeout=5)
    with worker:
        yield worker


@pytest.fixture
def celery(celery_client: Celery, wt_worker: Worker) -> Celery:
    """The Celery client, with wiretask's worker consuming."""
    assert wt_worker.running
    return celery_client


def ran_no_earlier_than_its_eta(outcome: dict[str, Any]) -> datetime:
    assert outcome["eta"] is not None, "wiretask's worker saw no eta"
    eta = datetime.fromisoformat(outcome["eta"])
    assert outcome["ran_at"] >= eta.timestamp(), (
        f"wiretask ran the task {eta.timestamp() - outcome['ran_at']:.3f} s before its eta"
    )
    return eta


# -- plain calls, serializers, compression --------------------------------------------


def test_send_task_runs_on_wiretask_and_celery_reads_success(celery: Celery) -> None:
    result = celery.send_task("interop.add", (2, 3))

    assert result.get(timeout=WAIT) == 5
    assert result.state == "SUCCESS"
    assert result.date_done is not None


def test_failure_is_rebuilt_by_celery(celery: Celery) -> None:
    result = celery.send_task("interop.fail", ("bad input",))

    with pytest.raises(ValueError, match="bad input"):
        result.get(timeout=WAIT)
    assert result.state == "FAILURE"
    assert "ValueError" in (result.traceback or "")


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializers_round_trip_through_wiretask(celery: Celery, serializer: str) -> None:
    args = (1, "two", [3.5, None], {"nested": True})
    kwargs = {"unicode": "héllo ✓", "big": 2**40}

    result = celery.send_task("interop.echo", args, kwargs, serializer=serializer)

    assert result.get(timeout=WAIT) == {"args": list(args), "kwargs": kwargs}


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_celery_compressor_is_decoded_by_wiretask(celery: Celery, compression: str) -> None:
    payload = "x" * 2000

    result = celery.send_task("interop.echo", (payload,), compression=compression)

    assert result.get(timeout=WAIT) == {"args": [payload], "kwargs": {}}


# -- countdown / eta / expires ---------------------------------------------------------


def test_countdown_is_rescheduled_broker_side_not_run_early(
    celery: Celery, interop_url: str
) -> None:
    sent_at = datetime.now(UTC)
    result = celery.send_task("interop.when", countdown=2.0)

    # Celery pushed it straight to the list; wiretask's worker hands it back to the
    # broker's delayed set instead of holding it unacked.
    transport = RedisTransport(interop_url)
    try:
        wait_for(
            lambda: any(p.frame.task_id == result.id and p.state == "scheduled"
                        for p in transport.peek("celery")),
            timeout=2.0, what="the message to be re-scheduled broker-side",
        )
    finally:
        transport.close()

    eta = ran_no_earlier_than_its_eta(result.get(timeout=WAIT))
    assert eta >= sent_at + timedelta(seconds=2.0)
    assert result.state == "SUCCESS"


def test_eta_is_honoured(celery: Celery) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1.0)

    result = celery.send_task("interop.when", eta=eta)

    outcome = result.get(timeout=WAIT)
    assert datetime.fromisoformat(outcome["eta"]) == eta
    ran_no_earlier_than_its_eta(outcome)


def test_expired_task_is_stored_revoked_for_celery(celery: Celery) -> None:
    result = celery.send_task("interop.add", (1, 1),
                              expires=datetime.now(UTC) - timedelta(seconds=5))

    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=WAIT)
    assert result.state == "REVOKED"


# -- link / link_error -----------------------------------------------------------------


def test_celery_sent_link_callback_runs_on_wiretask(celery: Celery) -> None:
    callback_id = str(uuid.uuid4())
    callback = celery.signature("interop.add", args=(100,)).set(task_id=callback_id)

    result = celery.send_task("interop.add", (2, 3), link=callback)

    assert result.get(timeout=WAIT) == 5
    callback_result = celery.AsyncResult(callback_id)
    assert callback_result.get(timeout=WAIT) == 105
    assert callback_result.state == "SUCCESS"


def test_celery_sent_link_error_gets_the_failed_task_id(celery: Celery) -> None:
    errback_id = str(uuid.uuid4())
    errback = celery.signature("interop.errback").set(task_id=errback_id)

    result = celery.send_task("interop.fail", ("boom",), link_error=errback)

    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=WAIT)
    assert celery.AsyncResult(errback_id).get(timeout=WAIT) == {"failed_task_id": result.id}


# -- on_message ------------------------------------------------------------------------


def test_celery_on_message_receives_wiretask_progress_then_success(
    celery: Celery, redis_client: redis.Redis
) -> None:
    seen: list[dict[str, Any]] = []
    gate = f"interop:gate:{uuid.uuid4()}"

    def on_message(meta: dict[str, Any]) -> None:
        seen.append(meta)
        redis_client.set(gate, 1)  # listening: the task may go on

    # Celery subscribes before it publishes and get() hands the buffered states to
    # on_message, unless the task finished before get() began (then get() returns the
    # stored result and on_message sees nothing): hence the gate.
    result = celery.send_task("interop.progress", (3,), {"gate": gate})
    value = result.get(timeout=WAIT, on_message=on_message)

    assert value == "done"
    # Celery's result consumer is shared by the client: its on_message also gets late
    # messages of earlier tasks still buffered on the connection. Ours are these:
    assert [(m["status"], m["result"]) for m in seen if m["task_id"] == result.id] == [
        ("PROGRESS", {"current": 0, "total": 3}),
        ("PROGRESS", {"current": 1, "total": 3}),
        ("PROGRESS", {"current": 2, "total": 3}),
        ("SUCCESS", "done"),
    ]


# -- priorities ------------------------------------------------------------------------


def test_celery_priorities_queued_before_wiretask_consumes_come_out_lowest_first(
    celery_client: Celery, wt: App
) -> None:
    queue = f"interop.prio.{uuid.uuid4().hex[:8]}"
    sent = [9, 0, 5, 0, 9, 3]
    results = [celery_client.send_task("interop.when", queue=queue, priority=p) for p in sent]

    with Worker(wt, queues=[queue], concurrency=1, shutdown_timeout=5):
        outcomes = [r.get(timeout=WAIT) for r in results]

    run_order = [p for _, p in sorted(
        (o["seq"], p) for o, p in zip(outcomes, sent, strict=True)
    )]
    assert run_order == [0, 0, 5, 3, 9, 9]
    assert [o["priority"] for o in outcomes] == sent
