"""wiretask sends over RabbitMQ, a real Celery 5.7 worker runs, wiretask reads the outcome.

The broker is the test RabbitMQ (a virtual host per fleet), the result backend Redis.
No wiretask worker or scheduler runs in this module: what wiretask sends must run on a
Celery fleet alone. Two fleets: classic queues (Celery's defaults, with
``task_queue_max_priority``) and quorum queues behind topic exchanges (where Celery 5.5+
uses its native delayed delivery); each side is configured alike (Celery settings on the
worker, the same as AMQP transport options on wiretask's app).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from interop.amqp_interop import CELERY_QUORUM, WIRETASK_QUORUM, ready, virtual_host
from interop.support import WAIT, CeleryWorker
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.errors import TaskRevokedError
from wiretask.protocol import states

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 12
COMPRESSIONS = ["zlib", "gzip", "bzip2", "lzma", "zstd", "brotli"]
ROUTED = "interop.routed"
CLASSIC_CONF = {"task_queue_max_priority": 10}
QUORUM_QUEUE = "interop.quorum"


@pytest.fixture(scope="module")
def classic_url(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "w2c-classic") as url:
        yield url


@pytest.fixture(scope="module")
def quorum_url(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "w2c-quorum") as url:
        yield url


@pytest.fixture(scope="module")
def celery_worker(interop_url: str, classic_url: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, ["celery", ROUTED], broker=classic_url,
                      conf=CLASSIC_CONF) as worker:
        yield worker


@pytest.fixture(scope="module")
def quorum_worker(interop_url: str, quorum_url: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, [QUORUM_QUEUE], name="quorum", broker=quorum_url,
                      conf=CELERY_QUORUM) as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, classic_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    app = make_app(interop_url, broker=f"{classic_url}?max_priority=10")
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_ladder(interop_url: str, classic_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    """Classic queues with the delay ladder chosen explicitly."""
    app = make_app(interop_url, broker=f"{classic_url}?max_priority=10&delay_mode=ladder")
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_quorum(interop_url: str, quorum_url: str, quorum_worker: CeleryWorker) -> Iterator[App]:
    app = make_app(interop_url, broker=f"{quorum_url}?{WIRETASK_QUORUM}")
    app.conf["task_default_queue"] = QUORUM_QUEUE
    yield app
    app.close()


def ran_no_earlier_than_its_eta(outcome: dict[str, Any]) -> datetime:
    assert outcome["eta"] is not None, "Celery received no eta"
    eta = datetime.fromisoformat(outcome["eta"])
    assert outcome["ran_at"] >= eta.timestamp(), (
        f"Celery ran the task {eta.timestamp() - outcome['ran_at']:.3f} s before its eta"
    )
    return eta


# -- plain calls, serializers, compression ------------------------------------------


def test_delay_runs_on_celery_and_wiretask_reads_success(wt: App) -> None:
    result = wt.tasks["interop.add"].delay(2, 3)

    assert result.get(timeout=WAIT) == 5
    assert result.state == states.SUCCESS


def test_celery_client_reads_the_same_result(wt: App, celery_client: Celery) -> None:
    result = wt.send_task("interop.add", (20, 22))
    result.get(timeout=WAIT)

    theirs = celery_client.AsyncResult(result.id)  # the results are in Redis
    assert (theirs.state, theirs.result) == ("SUCCESS", 42)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializers_round_trip_through_celery(wt: App, serializer: str) -> None:
    args = (1, "two", [3.5, None], {"nested": True})
    kwargs = {"unicode": "héllo ✓", "big": 2**40}

    result = wt.send_task("interop.echo", args, kwargs, serializer=serializer)

    assert result.get(timeout=WAIT) == {"args": list(args), "kwargs": kwargs}


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_celery_compressor_is_accepted(wt: App, compression: str) -> None:
    payload = "x" * 2000

    result = wt.send_task("interop.echo", (payload,), compression=compression)

    assert result.get(timeout=WAIT) == {"args": [payload], "kwargs": {}}


def test_a_plain_call_runs_on_a_quorum_fleet(wt_quorum: App) -> None:
    assert wt_quorum.send_task("interop.add", (4, 4)).get(timeout=WAIT) == 8


# -- countdown / eta / expires ----------------------------------------------------------


def test_countdown_on_classic_queues_is_celerys_own_form(wt: App) -> None:
    """By default a classic queue gets what a Celery fleet on it expects: the eta in the
    header, the message delivered at once (the consumer holds it)."""
    sent_at = datetime.now(UTC)
    result = wt.send_task("interop.when", countdown=1.0)

    outcome = result.get(timeout=WAIT)
    eta = ran_no_earlier_than_its_eta(outcome)
    assert eta >= sent_at + timedelta(seconds=1.0)
    assert outcome["exchange"] == ""  # straight to the queue, not through the ladder


def test_countdown_through_the_ladder_on_classic_queues_when_chosen(
    wt_ladder: App, classic_url: str
) -> None:
    sent_at = datetime.now(UTC)
    result = wt_ladder.send_task("interop.when", countdown=2.0)
    assert ready(classic_url, "celery_delayed_1") == 1  # waiting broker-side, 2 s level

    outcome = result.get(timeout=WAIT)
    eta = ran_no_earlier_than_its_eta(outcome)
    assert eta >= sent_at + timedelta(seconds=2.0)
    assert outcome["exchange"].startswith("celery_delayed_")


def test_countdown_through_the_ladder_on_quorum_queues(wt_quorum: App, quorum_url: str) -> None:
    """Quorum queues: the delay ladder, as Celery 5.5+ uses it there, with only Celery
    workers running; the ladder's queues are quorum queues like Celery's."""
    sent_at = datetime.now(UTC)
    result = wt_quorum.send_task("interop.when", countdown=3.0)
    assert ready(quorum_url, "celery_delayed_1") == 1  # 3 s = 2 s (level 1) + 1 s (level 0)

    outcome = result.get(timeout=WAIT)
    eta = ran_no_earlier_than_its_eta(outcome)
    assert eta >= sent_at + timedelta(seconds=3.0)
    assert outcome["exchange"].startswith("celery_delayed_")


def test_eta_through_the_ladder_on_quorum_queues(wt_quorum: App) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1.5)

    outcome = wt_quorum.send_task("interop.when", eta=eta).get(timeout=WAIT)

    assert datetime.fromisoformat(outcome["eta"]) == eta
    ran_no_earlier_than_its_eta(outcome)


def test_expired_task_is_revoked_by_celery(wt: App) -> None:
    result = wt.send_task("interop.add", (1, 1), expires=datetime.now(UTC) + timedelta(seconds=0.5),
                          countdown=1.0)

    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)
    assert result.state == states.REVOKED
    assert "expired" in str(result.info)


# -- link / link_error / retry --------------------------------------------------------------


def test_link_callback_runs_on_celery_with_the_parent_result(wt: App) -> None:
    callback_id = str(uuid.uuid4())
    callback = wt.signature("interop.add", (100,)).set(task_id=callback_id)

    result = wt.send_task("interop.add", (2, 3), link=callback)

    assert result.get(timeout=WAIT) == 5
    assert wt.AsyncResult(callback_id).get(timeout=WAIT) == 105


def test_link_error_sends_the_failed_task_id_to_an_old_style_errback(wt: App) -> None:
    errback_id = str(uuid.uuid4())
    errback = wt.signature("interop.errback").set(task_id=errback_id)

    result = wt.send_task("interop.fail", ("boom",), link_error=errback)

    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=WAIT)
    assert wt.AsyncResult(errback_id).get(timeout=WAIT) == {"failed_task_id": result.id}


@pytest.mark.parametrize("fleet", ["classic", "quorum"])
def test_celery_retries_a_task_wiretask_sent(
    wt: App, wt_quorum: App, redis_client: redis.Redis, fleet: str
) -> None:
    app = wt if fleet == "classic" else wt_quorum
    key = f"interop:runs:{uuid.uuid4()}"

    outcome = app.send_task("interop.retry_once", (key, 1.0)).get(timeout=WAIT)

    first, second = outcome["runs"]
    assert outcome["retries"] == 1
    assert second - first >= 1.0


# -- priorities and routing ---------------------------------------------------------------


def test_priorities_queued_while_no_worker_runs_come_out_highest_first(
    interop_url: str, classic_url: str, wt: App
) -> None:
    queue = f"interop.prio.{uuid.uuid4().hex[:8]}"
    sent = [9, 0, 5, 0, 9, 3]
    results = [wt.send_task("interop.when", queue=queue, priority=p) for p in sent]
    assert ready(classic_url, queue) == len(sent)

    with CeleryWorker(interop_url, [queue], name="prio", broker=classic_url,
                      conf=CLASSIC_CONF):
        outcomes = [r.get(timeout=WAIT) for r in results]

    run_order = [p for _, p in sorted((o["seq"], p) for o, p in zip(outcomes, sent, strict=True))]
    assert run_order == [9, 9, 5, 3, 0, 0]  # AMQP: higher first, FIFO within a priority
    assert [o["priority"] for o in outcomes] == sent


def test_routing_by_queue_exchange_and_routing_key(wt: App) -> None:
    by_queue = wt.send_task("interop.add", (1, 2), queue=ROUTED)
    by_exchange = wt.send_task("interop.add", (3, 4), queue=ROUTED, exchange=ROUTED,
                               routing_key=ROUTED)

    assert by_queue.get(timeout=WAIT) == 3
    assert by_exchange.get(timeout=WAIT) == 7

