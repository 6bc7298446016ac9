"""Celery 5.7 sends over RabbitMQ, wiretask's worker runs, Celery reads the outcome.

A Celery client (broker: the test RabbitMQ, a virtual host per fleet; results: Redis)
publishes with ``send_task``; wiretask ``Worker``s run the tasks in this process; every
assertion is made through Celery's own ``AsyncResult`` or on the broker. No Celery worker
runs here: what Celery sends must run on wiretask's workers alone, including Celery's
native delayed delivery on quorum queues (whose ladder and bindings wiretask's worker
declares, as Celery's worker would).
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

from interop.amqp_interop import CELERY_QUORUM, WIRETASK_QUORUM, ready, virtual_host
from interop.celery_tasks import make_client
from interop.support import WAIT, wait_for
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 11
COMPRESSIONS = ["zlib", "gzip", "bzip2", "lzma", "zstd", "brotli"]
ROUTED = "interop.routed"
QUORUM_QUEUE = "interop.quorum"
CLASSIC_CONF = {"task_queue_max_priority": 10}


@pytest.fixture(scope="module")
def classic_url(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "c2w-classic") as url:
        yield url


@pytest.fixture(scope="module")
def quorum_url(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "c2w-quorum") as url:
        yield url


@pytest.fixture(scope="module")
def wt(interop_url: str, classic_url: str) -> Iterator[App]:
    app = make_app(interop_url, broker=f"{classic_url}?max_priority=10")
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_worker(wt: App) -> Iterator[Worker]:
    worker = Worker(wt, queues=["celery", ROUTED], concurrency=2, shutdown_timeout=5)
    with worker:
        yield worker


@pytest.fixture(scope="module")
def wt_quorum(interop_url: str, quorum_url: str) -> Iterator[App]:
    app = make_app(interop_url, broker=f"{quorum_url}?{WIRETASK_QUORUM}")
    app.conf["task_default_queue"] = QUORUM_QUEUE
    yield app
    app.close()


@pytest.fixture(scope="module")
def quorum_worker(wt_quorum: App) -> Iterator[Worker]:
    worker = Worker(wt_quorum, queues=[QUORUM_QUEUE], concurrency=2, shutdown_timeout=5)
    with worker:
        yield worker


@pytest.fixture(scope="module")
def celery(interop_url: str, classic_url: str, wt_worker: Worker) -> Iterator[Celery]:
    """A Celery client on the classic fleet's virtual host, wiretask's worker consuming."""
    client = make_client(interop_url, broker=classic_url, conf=CLASSIC_CONF)
    yield client
    client.close()


@pytest.fixture(scope="module")
def celery_quorum(interop_url: str, quorum_url: str, quorum_worker: Worker) -> Iterator[Celery]:
    """A Celery client configured for quorum queues (it uses its delay ladder)."""
    client = make_client(interop_url, broker=quorum_url, conf=CELERY_QUORUM)
    client.conf.task_default_queue = QUORUM_QUEUE
    yield client
    client.close()


def ran_no_earlier_than_its_eta(outcome: dict[str, Any]) -> datetime:
    assert outcome["eta"] is not None, "wiretask's worker saw no eta"
    eta = datetime.fromisoformat(outcome["eta"])
    assert outcome["ran_at"] >= eta.timestamp(), (
        f"wiretask ran the task {eta.timestamp() - outcome['ran_at']:.3f} s before its eta"
    )
    return eta


# -- plain calls, serializers, compression ------------------------------------------


def test_send_task_runs_on_wiretask_and_celery_reads_success(celery: Celery) -> None:
    result = celery.send_task("interop.add", (2, 3))

    assert result.get(timeout=WAIT) == 5
    assert result.state == "SUCCESS"


def test_failure_is_rebuilt_by_celery(celery: Celery) -> None:
    result = celery.send_task("interop.fail", ("bad input",))

    with pytest.raises(ValueError, match="bad input"):
        result.get(timeout=WAIT)
    assert result.state == "FAILURE"


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


def test_a_plain_call_runs_on_a_quorum_fleet(celery_quorum: Celery) -> None:
    assert celery_quorum.send_task("interop.add", (4, 4)).get(timeout=WAIT) == 8


# -- countdown / eta / expires ----------------------------------------------------------


def test_an_early_message_goes_back_to_the_broker_not_held_unacked(
    celery: Celery, classic_url: str
) -> None:
    """Celery sends its own form on a classic queue (delivered at once); wiretask's
    worker hands it to the delay ladder instead of holding it unacked, so RabbitMQ's
    consumer_timeout can never close its channel, however far the eta."""
    sent_at = datetime.now(UTC)
    result = celery.send_task("interop.when", countdown=2.0)

    wait_for(lambda: ready(classic_url, "celery_delayed_1") == 1, timeout=2.0,
             what="the early message to wait in the ladder")
    eta = ran_no_earlier_than_its_eta(result.get(timeout=WAIT))
    assert eta >= sent_at + timedelta(seconds=2.0)


def test_eta_is_honoured(celery: Celery) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1.0)

    outcome = celery.send_task("interop.when", eta=eta).get(timeout=WAIT)

    assert datetime.fromisoformat(outcome["eta"]) == eta
    ran_no_earlier_than_its_eta(outcome)


def test_celerys_native_delayed_delivery_reaches_a_wiretask_only_fleet(
    celery_quorum: Celery, quorum_url: str
) -> None:
    """Celery 5.5+ on quorum queues publishes a countdown to ``celery_delayed_27``; the
    ladder and the queue's binding were declared by wiretask's worker, no Celery worker
    runs, and the message still reaches the queue at its eta."""
    sent_at = datetime.now(UTC)
    result = celery_quorum.send_task("interop.when", countdown=3.0)

    wait_for(lambda: ready(quorum_url, "celery_delayed_1") == 1, timeout=2.0,
             what="Celery's message to wait in the ladder")
    eta = ran_no_earlier_than_its_eta(result.get(timeout=WAIT))
    assert eta >= sent_at + timedelta(seconds=3.0)


def test_expired_task_is_stored_revoked_for_celery(celery: Celery) -> None:
    result = celery.send_task("interop.add", (1, 1),
                              expires=datetime.now(UTC) - timedelta(seconds=5))

    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=WAIT)
    assert result.state == "REVOKED"


# -- link / link_error / retry --------------------------------------------------------------


def test_celery_sent_link_callback_runs_on_wiretask(celery: Celery) -> None:
    callback_id = str(uuid.uuid4())
    callback = celery.signature("interop.add", args=(100,)).set(task_id=callback_id)

    result = celery.send_task("interop.add", (2, 3), link=callback)

    assert result.get(timeout=WAIT) == 5
    assert celery.AsyncResult(callback_id).get(timeout=WAIT) == 105


def test_celery_sent_link_error_gets_the_failed_task_id(celery: Celery) -> None:
    errback_id = str(uuid.uuid4())
    errback = celery.signature("interop.errback").set(task_id=errback_id)

    result = celery.send_task("interop.fail", ("boom",), link_error=errback)

    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=WAIT)
    assert celery.AsyncResult(errback_id).get(timeout=WAIT) == {"failed_task_id": result.id}


@pytest.mark.parametrize("fleet", ["classic", "quorum"])
def test_wiretask_retries_a_task_celery_sent(
    celery: Celery, celery_quorum: Celery, redis_client: redis.Redis, fleet: str
) -> None:
    client = celery if fleet == "classic" else celery_quorum
    key = f"interop:runs:{uuid.uuid4()}"

    outcome = client.send_task("interop.retry_once", (key, 1.0)).get(timeout=WAIT)

    first, second = outcome["runs"]
    assert outcome["retries"] == 1
    assert second - first >= 1.0


# -- priorities and routing ---------------------------------------------------------------


def test_celery_priorities_queued_before_wiretask_consumes_come_out_highest_first(
    celery: Celery, classic_url: str, wt: App
) -> None:
    queue = f"interop.prio.{uuid.uuid4().hex[:8]}"
    sent = [9, 0, 5, 0, 9, 3]
    results = [celery.send_task("interop.when", queue=queue, priority=p) for p in sent]
    # Celery publishes without confirms: its send returns before the broker has them all.
    wait_for(lambda: ready(classic_url, queue) == len(sent), timeout=5.0,
             what="Celery's messages to be on the broker")

    # A node name of its own: the module's worker holds wiretask@<host>'s control queue.
    with Worker(wt, queues=[queue], concurrency=1, prefetch=0, shutdown_timeout=5,
                hostname=f"prio-{uuid.uuid4().hex[:6]}@test"):
        outcomes = [r.get(timeout=WAIT) for r in results]

    run_order = [p for _, p in sorted((o["seq"], p) for o, p in zip(outcomes, sent, strict=True))]
    assert run_order == [9, 9, 5, 3, 0, 0]
    assert [o["priority"] for o in outcomes] == sent


def test_routing_by_queue_exchange_and_routing_key(celery: Celery) -> None:
    by_queue = celery.send_task("interop.add", (1, 2), queue=ROUTED)
    by_exchange = celery.send_task("interop.add", (3, 4), exchange=ROUTED, routing_key=ROUTED)

    assert by_queue.get(timeout=WAIT) == 3
    assert by_exchange.get(timeout=WAIT) == 7
