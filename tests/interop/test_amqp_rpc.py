"""``rpc://`` results over RabbitMQ, both directions, with ``on_message``.

* wiretask sends, a real Celery 5.7 worker (``result_backend = "rpc://"``) runs and
  answers on wiretask's reply queue; wiretask's ``get(on_message=...)`` sees every state
  (``STARTED``, each ``PROGRESS``, the final one).
* A Celery client with ``rpc://`` sends, wiretask's worker runs and answers on Celery's
  reply queue (its ``reply_to``); Celery's ``get(on_message=...)`` sees every state.

The broker is a virtual host of the test RabbitMQ; Redis only holds the tasks' gates and
the Celery worker's readiness (``REDIS_DB``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from interop.amqp_interop import virtual_host
from interop.celery_tasks import make_client
from interop.support import WAIT, CeleryWorker
from interop.wiretask_tasks import make_app
from wiretask.app import App
from wiretask.errors import ValidationError
from wiretask.protocol import states
from wiretask.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 9
#: The Celery side's configuration: rpc:// results, STARTED tracked.
CELERY_RPC = {"result_backend": "rpc://", "task_track_started": True}
#: Celery's queue for the wiretask -> Celery direction, wiretask's for the other.
TO_CELERY = "interop.rpc.celery"
TO_WIRETASK = "interop.rpc.wiretask"


@pytest.fixture(scope="module")
def vhost(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "rpc") as url:
        yield url


@pytest.fixture(scope="module")
def celery_worker(interop_url: str, vhost: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, [TO_CELERY], name="rpc", broker=vhost,
                      conf=CELERY_RPC) as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, vhost: str) -> Iterator[App]:
    """wiretask's app: RabbitMQ broker, rpc:// results, STARTED tracked."""
    app = make_app(interop_url, broker=vhost)
    app.conf.update(result_backend="rpc://", task_track_started=True)
    yield app
    app.close()


@pytest.fixture(scope="module")
def wt_worker(wt: App) -> Iterator[Worker]:
    with Worker(wt, queues=[TO_WIRETASK], concurrency=2, shutdown_timeout=5) as worker:
        yield worker


@pytest.fixture(scope="module")
def celery(interop_url: str, vhost: str, wt_worker: Worker) -> Iterator[Celery]:
    """A Celery client with rpc:// results; wiretask's worker consumes its queue."""
    client = make_client(interop_url, broker=vhost, conf=CELERY_RPC)
    yield client
    client.close()


def progress_listener(
    redis_client: redis.Redis, gate: str
) -> tuple[list[dict[str, Any]], Any]:
    """``on_message`` that records every state and opens the task's gate (the task waits
    after its first state until then: the rest happen while the caller listens)."""
    seen: list[dict[str, Any]] = []

    def on_message(meta: dict[str, Any]) -> None:
        seen.append(meta)
        redis_client.set(gate, 1)

    return seen, on_message


PROGRESS_THEN_SUCCESS = [
    ("STARTED", None),
    ("PROGRESS", {"current": 0, "total": 3}),
    ("PROGRESS", {"current": 1, "total": 3}),
    ("PROGRESS", {"current": 2, "total": 3}),
    ("SUCCESS", "done"),
]


def statuses(seen: list[dict[str, Any]], task_id: str) -> list[tuple[str, Any]]:
    return [(m["status"], None if m["status"] == "STARTED" else m["result"])
            for m in seen if m["task_id"] == task_id]


# -- wiretask sends, Celery runs -----------------------------------------------------------


def test_wiretask_reads_celerys_rpc_result(wt: App, celery_worker: CeleryWorker) -> None:
    seen: list[dict[str, Any]] = []
    result = wt.send_task("interop.add", (2, 3), queue=TO_CELERY)

    assert result.get(timeout=WAIT, on_message=seen.append) == 5
    assert [m["status"] for m in seen] == [states.STARTED, states.SUCCESS]
    assert seen[0]["result"]["pid"] != 0  # Celery's STARTED meta: its worker's pid
    assert result.state == states.SUCCESS and result.result == 5


def test_wiretask_on_message_sees_every_celery_state(
    wt: App, celery_worker: CeleryWorker, redis_client: redis.Redis
) -> None:
    gate = f"interop:gate:{uuid.uuid4()}"
    seen, on_message = progress_listener(redis_client, gate)
    result = wt.send_task("interop.progress", (3,), {"gate": gate}, queue=TO_CELERY)

    assert result.get(timeout=WAIT, on_message=on_message) == "done"
    assert statuses(seen, result.id) == PROGRESS_THEN_SUCCESS


def test_wiretask_sees_every_state_of_a_task_celery_finished_before_get(
    wt: App, celery_worker: CeleryWorker, redis_client: redis.Redis
) -> None:
    """The states wait in wiretask's reply queue: a get() that begins after the task
    finished still streams all of them, the final one last."""
    gate = f"interop:gate:{uuid.uuid4()}"
    redis_client.set(gate, 1)  # no waiting in the task
    first = wt.send_task("interop.progress", (3,), {"gate": gate}, queue=TO_CELERY)
    marker = wt.send_task("interop.add", (1, 1), queue=TO_CELERY)  # runs after it (solo)
    assert marker.get(timeout=WAIT) == 2

    seen: list[dict[str, Any]] = []
    assert first.get(timeout=WAIT, on_message=seen.append) == "done"
    assert statuses(seen, first.id) == PROGRESS_THEN_SUCCESS


def test_celerys_failure_propagates_to_wiretask(wt: App, celery_worker: CeleryWorker) -> None:
    result = wt.send_task("interop.fail", ("from celery",), queue=TO_CELERY)
    with pytest.raises(ValueError, match="from celery"):
        result.get(timeout=WAIT)
    assert result.state == states.FAILURE


def test_a_celery_rpc_result_is_only_for_the_client_that_sent_it(
    wt: App, celery_worker: CeleryWorker, interop_url: str, vhost: str
) -> None:
    result = wt.send_task("interop.add", (4, 4), queue=TO_CELERY)
    assert result.get(timeout=WAIT) == 8
    other = make_app(interop_url, "interop-other", broker=vhost)
    other.conf.result_backend = "rpc://"
    try:
        with pytest.raises(ValidationError, match="only to the app that sent it"):
            other.AsyncResult(result.id).get(timeout=WAIT)
    finally:
        other.close()


# -- Celery sends, wiretask runs -----------------------------------------------------------


def test_celery_reads_wiretasks_rpc_result(celery: Celery) -> None:
    seen: list[dict[str, Any]] = []
    result = celery.send_task("interop.add", (20, 22), queue=TO_WIRETASK)

    assert result.get(timeout=WAIT, on_message=seen.append) == 42
    assert [m["status"] for m in seen if m["task_id"] == result.id] == ["STARTED", "SUCCESS"]
    assert result.state == "SUCCESS"


def test_celery_on_message_sees_every_wiretask_state(
    celery: Celery, redis_client: redis.Redis
) -> None:
    gate = f"interop:gate:{uuid.uuid4()}"
    seen, on_message = progress_listener(redis_client, gate)
    result = celery.send_task("interop.progress", (3,), {"gate": gate}, queue=TO_WIRETASK)

    assert result.get(timeout=WAIT, on_message=on_message) == "done"
    assert statuses(seen, result.id) == PROGRESS_THEN_SUCCESS


def test_wiretasks_failure_propagates_to_celery(celery: Celery) -> None:
    result = celery.send_task("interop.fail", ("from wiretask",), queue=TO_WIRETASK)
    with pytest.raises(ValueError, match="from wiretask"):
        result.get(timeout=WAIT)
    assert result.state == "FAILURE"


def test_celery_reads_a_result_wiretask_finished_before_get(celery: Celery) -> None:
    result = celery.send_task("interop.add", (1, 2), queue=TO_WIRETASK)
    marker = celery.send_task("interop.add", (0, 0), queue=TO_WIRETASK)
    assert marker.get(timeout=WAIT) == 0
    assert result.get(timeout=WAIT) == 3
