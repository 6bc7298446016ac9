"""wiretask sends, a real Celery 5.7 worker runs, wiretask reads the outcome.

One ``celery worker -P solo`` (``interop.celery_tasks``) serves the whole module on its
own Redis database; every assertion is about what the *other* side did: the value
Celery computed, the state Celery stored, when Celery ran the task.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from interop.support import WAIT, CeleryWorker, subprocess_env
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.errors import TaskRevokedError
from wiretask.protocol import states
from wiretask.transports.redis import RedisTransport

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 14
COMPRESSIONS = ["zlib", "gzip", "bzip2", "lzma", "zstd", "brotli"]


@pytest.fixture(scope="module")
def celery_worker(interop_url: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, ["celery"]) as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    """wiretask's app (sender) on the worker's database; native broker-side delays."""
    app = make_app(interop_url)
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_celery_delays(interop_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    """The same, with ``delay_mode=celery``: eta messages go straight to the list."""
    app = make_app(f"{interop_url}?delay_mode=celery")
    yield app
    app.close()


def ran_no_earlier_than_its_eta(outcome: dict[str, Any]) -> datetime:
    """Check a ``interop.when`` result: Celery saw an eta and ran the task after it."""
    assert outcome["eta"] is not None, "Celery received no eta"
    eta = datetime.fromisoformat(outcome["eta"])
    assert eta.tzinfo is not None
    assert outcome["ran_at"] >= eta.timestamp(), (
        f"Celery ran the task {eta.timestamp() - outcome['ran_at']:.3f} s before its eta"
    )
    return eta


# -- plain calls, serializers, compression --------------------------------------------


def test_delay_runs_on_celery_and_wiretask_reads_success(wt: App) -> None:
    result = wt.tasks["interop.add"].delay(2, 3)

    assert result.get(timeout=WAIT) == 5
    assert result.state == states.SUCCESS


def test_celery_client_reads_the_same_result(wt: App, celery_client: Celery) -> None:
    result = wt.send_task("interop.add", (20, 22))
    result.get(timeout=WAIT)

    theirs = celery_client.AsyncResult(result.id)
    assert theirs.state == "SUCCESS"
    assert theirs.result == 42


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializers_round_trip_through_celery(wt: App, serializer: str) -> None:
    args = (1, "two", [3.5, None], {"nested": True})
    kwargs = {"unicode": "héllo ✓", "big": 2**40}

    result = wt.send_task("interop.echo", args, kwargs, serializer=serializer)

    assert result.get(timeout=WAIT) == {"args": list(args), "kwargs": kwargs}


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_celery_compressor_is_accepted(wt: App, compression: str) -> None:
    payload = "x" * 2000  # compressible, so the codec really does something

    result = wt.send_task("interop.echo", (payload,), compression=compression)

    assert result.get(timeout=WAIT) == {"args": [payload], "kwargs": {}}


# -- countdown / eta / expires ---------------------------------------------------------


def test_countdown_waits_broker_side_then_celery_runs_it_after_its_eta(
    wt: App, interop_url: str, scheduler: None
) -> None:
    sent_at = datetime.now(UTC)
    result = wt.send_task("interop.when", countdown=1.0)

    # Native delay: the message sits in wiretask's zset, not in Celery's list.
    transport = RedisTransport(interop_url)
    try:
        states_seen = [p.state for p in transport.peek("celery")
                       if p.frame.task_id == result.id]
    finally:
        transport.close()
    assert states_seen == ["scheduled"]

    eta = ran_no_earlier_than_its_eta(result.get(timeout=WAIT))
    assert eta >= sent_at + timedelta(seconds=1.0)


def test_eta_moved_by_the_wiretask_scheduler_command(wt: App, interop_url: str) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1.0)
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "scheduler", "--broker", interop_url,
         "--interval", "0.1", "--loglevel", "WARNING"],
        env=subprocess_env(interop_url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        result = wt.send_task("interop.when", eta=eta)
        outcome = result.get(timeout=WAIT)
    finally:
        scheduler.terminate()
        _, err = scheduler.communicate(timeout=10)
    assert scheduler.returncode == 0, err.decode()

    assert datetime.fromisoformat(outcome["eta"]) == eta
    ran_no_earlier_than_its_eta(outcome)


def test_delay_mode_celery_pushes_to_the_list_and_celery_holds_it(
    wt_celery_delays: App, interop_url: str
) -> None:
    sent_at = datetime.now(UTC)
    # No scheduler runs here: had the message gone to wiretask's zset, it would never
    # reach Celery and the get would time out.
    result = wt_celery_delays.send_task("interop.when", countdown=1.0)

    eta = ran_no_earlier_than_its_eta(result.get(timeout=WAIT))
    assert eta >= sent_at + timedelta(seconds=1.0)


def test_expired_task_is_revoked_by_celery(wt: App) -> None:
    result = wt.send_task("interop.add", (1, 1),
                          expires=datetime.now(UTC) - timedelta(seconds=5))

    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)
    assert result.state == states.REVOKED
    assert isinstance(result.info, TaskRevokedError)
    assert "expired" in str(result.info)


# -- link / link_error -----------------------------------------------------------------


def test_link_callback_runs_on_celery_with_the_parent_result(wt: App) -> None:
    callback_id = str(uuid.uuid4())
    callback = wt.signature("interop.add", (100,)).set(task_id=callback_id)

    result = wt.send_task("interop.add", (2, 3), link=callback)

    assert result.get(timeout=WAIT) == 5
    assert wt.AsyncResult(callback_id).get(timeout=WAIT) == 105  # add(5, 100)


def test_link_error_sends_the_failed_task_id_to_an_old_style_errback(wt: App) -> None:
    errback_id = str(uuid.uuid4())
    errback = wt.signature("interop.errback").set(task_id=errback_id)

    result = wt.send_task("interop.fail", ("boom",), link_error=errback)

    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=WAIT)
    assert result.state == states.FAILURE
    assert wt.AsyncResult(errback_id).get(timeout=WAIT) == {"failed_task_id": result.id}


# -- on_message ------------------------------------------------------------------------


def test_on_message_receives_celerys_progress_then_success(
    wt: App, redis_client: redis.Redis
) -> None:
    seen: list[dict[str, Any]] = []
    gate = f"interop:gate:{uuid.uuid4()}"

    def on_message(meta: dict[str, Any]) -> None:
        seen.append(meta)
        redis_client.set(gate, 1)  # listening: the task may go on

    # wiretask's get() subscribes when called and first hands over the current state;
    # the task waits after its first state until that state reached us.
    result = wt.send_task("interop.progress", (3,), {"gate": gate})
    value = result.get(timeout=WAIT, on_message=on_message)

    assert value == "done"
    assert [(m["status"], m["result"]) for m in seen] == [
        ("PROGRESS", {"current": 0, "total": 3}),
        ("PROGRESS", {"current": 1, "total": 3}),
        ("PROGRESS", {"current": 2, "total": 3}),
        ("SUCCESS", "done"),
    ]
    assert all(m["task_id"] == result.id for m in seen)


# -- priorities ------------------------------------------------------------------------


def test_priorities_queued_while_no_worker_runs_come_out_in_kombus_order(
    interop_url: str, wt: App
) -> None:
    queue = f"interop.prio.{uuid.uuid4().hex[:8]}"
    sent = [9, 0, 5, 0, 9, 3]
    results = [wt.send_task("interop.when", queue=queue, priority=p) for p in sent]

    with CeleryWorker(interop_url, [queue], name="prio"):
        outcomes = [r.get(timeout=WAIT) for r in results]

    run_order = [priority for _, priority in sorted(
        (o["seq"], sent_priority) for o, sent_priority in zip(outcomes, sent, strict=True)
    )]
    # Redis buckets [0, 3, 6, 9]: lower number first, FIFO inside a bucket.
    assert run_order == [0, 0, 5, 3, 9, 9]
    assert [o["priority"] for o in outcomes] == sent
