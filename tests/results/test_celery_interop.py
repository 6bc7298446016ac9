"""Celery 5.7 and wiretask share a Redis result backend (no worker needed).

Celery reads what wiretask stored (``AsyncResult.get``, with ``on_message`` too), and
wiretask reads and streams what Celery's backend stored.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import celery.exceptions
import pytest
import redis
from celery import Celery

from wiretask.errors import TaskRevokedError
from wiretask.protocol import states
from wiretask.protocol.states import make_meta
from wiretask.results.exceptions import exception_from_meta, expired_meta_result
from wiretask.results.redis import RedisBackend

pytestmark = [pytest.mark.redis]

NOW = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def make_app(redis_url: str, **conf: Any) -> Celery:
    app = Celery("wt-interop", broker="memory://", backend=redis_url, set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"], **conf)
    return app


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Celery]:
    app = make_app(redis_url)
    yield app
    app.close()


@pytest.fixture
def wt(redis_url: str) -> Iterator[RedisBackend]:
    backend = RedisBackend(redis_url)
    yield backend
    backend.close()


def tid() -> str:
    return str(uuid.uuid4())


# -- Celery reads wiretask ------------------------------------------------------------------


def test_celery_reads_a_wiretask_success(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    wt.store(task_id, make_meta(task_id, states.SUCCESS, {"sum": 42, "items": [1, 2]},
                                date_done=NOW))
    result = celery_app.AsyncResult(task_id)
    assert result.get(timeout=5) == {"sum": 42, "items": [1, 2]}
    assert result.state == "SUCCESS"
    assert result.date_done == NOW


def test_celery_reads_a_wiretask_failure(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    wt.store(task_id, make_meta(task_id, states.FAILURE, ValueError("bad 1"),
                                traceback="Traceback (most recent call last): ...",
                                date_done=NOW))
    result = celery_app.AsyncResult(task_id)
    with pytest.raises(ValueError, match="bad 1"):
        result.get(timeout=5)
    exc = result.get(timeout=5, propagate=False)
    assert type(exc) is ValueError and exc.args == ("bad 1",)
    assert result.traceback.startswith("Traceback")


@pytest.mark.parametrize("result", [expired_meta_result(), TaskRevokedError("expired")])
def test_celery_reads_a_wiretask_revoked_as_task_revoked_error(
    celery_app: Celery, wt: RedisBackend, result: Any
) -> None:
    task_id = tid()
    wt.store(task_id, make_meta(task_id, states.REVOKED, result, date_done=NOW))
    with pytest.raises(celery.exceptions.TaskRevokedError, match="expired"):
        celery_app.AsyncResult(task_id).get(timeout=5)


def test_celery_reads_a_wiretask_custom_state(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    wt.store(task_id, make_meta(task_id, "PROGRESS", {"current": 3, "total": 10}))
    result = celery_app.AsyncResult(task_id)
    assert result.state == "PROGRESS"
    assert result.info == {"current": 3, "total": 10}


def test_celery_57_reads_wiretask_compressed_results(redis_url: str) -> None:
    app = make_app(redis_url)
    writer = RedisBackend(redis_url, compression="zlib")
    task_id = tid()
    writer.store(task_id, make_meta(task_id, states.SUCCESS, "z" * 2000, date_done=NOW))
    assert app.AsyncResult(task_id).get(timeout=5) == "z" * 2000
    writer.close()
    app.close()


def test_celery_on_message_receives_wiretask_states(
    celery_app: Celery, wt: RedisBackend, redis_url: str
) -> None:
    task_id = tid()
    received: list[dict[str, Any]] = []
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["value"] = celery_app.AsyncResult(task_id).get(
                timeout=15, on_message=received.append
            )
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    raw = redis.Redis.from_url(redis_url)
    before = {client["id"] for client in raw.client_list()}
    thread = threading.Thread(target=wait)
    thread.start()
    key = f"celery-task-meta-{task_id}"
    # Celery subscribes, then reads the stored state once (its on_wait_for_pending),
    # and only then hands what the subscription brings to on_message: a state stored
    # before that read would be read (not streamed) and end the wait early. So store
    # once it is listening and has made that read (a new connection whose last
    # command is GET).
    wait_until(lambda: raw.pubsub_numsub(key)[0][1] >= 1 and any(
        client["id"] not in before and client.get("cmd") == "get"
        for client in raw.client_list()))
    raw.close()
    wt.store(task_id, make_meta(task_id, "PROGRESS", {"current": 1}))
    wt.store(task_id, make_meta(task_id, "PROGRESS", {"current": 2}))
    wt.store(task_id, make_meta(task_id, states.SUCCESS, "done", date_done=NOW))
    thread.join(20)
    assert outcome == {"value": "done"}
    assert [(m["status"], m["result"]) for m in received] == [
        ("PROGRESS", {"current": 1}), ("PROGRESS", {"current": 2}), ("SUCCESS", "done"),
    ]
    assert received[-1] == make_meta(task_id, states.SUCCESS, "done", date_done=NOW)


# -- wiretask reads Celery ------------------------------------------------------------------


def test_wiretask_reads_a_celery_success(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    celery_app.backend.store_result(task_id, {"x": [1, 2]}, "SUCCESS")
    meta = wt.get(task_id)
    assert meta is not None
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", {"x": [1, 2]},
                                                                 task_id)
    assert datetime.fromisoformat(meta["date_done"]).utcoffset() is not None


def test_wiretask_reads_a_celery_failure(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    celery_app.backend.mark_as_failure(task_id, KeyError("boom"), traceback="Traceback ...")
    meta = wt.get(task_id)
    assert meta is not None and meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "KeyError", "exc_message": ["boom"],
                              "exc_module": "builtins"}
    exc = exception_from_meta(meta["result"])
    assert type(exc) is KeyError and exc.args == ("boom",)
    assert meta["traceback"] == "Traceback ..."


def test_wiretask_reads_a_celery_revoked(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    celery_app.backend.mark_as_revoked(task_id, reason="expired")
    meta = wt.get(task_id)
    assert meta is not None and meta["status"] == "REVOKED"
    assert meta["result"] == expired_meta_result()
    assert type(exception_from_meta(meta["result"])) is TaskRevokedError


def test_wiretask_reads_a_celery_custom_state(celery_app: Celery, wt: RedisBackend) -> None:
    task_id = tid()
    celery_app.backend.store_result(task_id, {"current": 5, "total": 9}, "PROGRESS")
    meta = wt.get(task_id)
    assert meta is not None
    assert (meta["status"], meta["result"], meta["date_done"]) == (
        "PROGRESS", {"current": 5, "total": 9}, None
    )


def test_wiretask_reads_celery_57_compressed_results(redis_url: str, wt: RedisBackend) -> None:
    app = make_app(redis_url, result_compression="zlib")
    task_id = tid()
    app.backend.store_result(task_id, "c" * 3000, "SUCCESS")
    raw = redis.Redis.from_url(redis_url)
    stored = raw.get(f"celery-task-meta-{task_id}")
    raw.close()
    assert isinstance(stored, bytes) and stored.startswith(b"\x00celery-compressed\x00")
    meta = wt.get(task_id)
    assert meta is not None and meta["result"] == "c" * 3000
    app.close()


def test_global_keyprefix_matches_celerys(redis_url: str) -> None:
    app = make_app(redis_url, result_backend_transport_options={"global_keyprefix": "tenant"})
    backend = RedisBackend(redis_url, global_keyprefix="tenant")
    task_id = tid()
    app.backend.store_result(task_id, 1, "SUCCESS")
    assert backend.get(task_id)["result"] == 1  # type: ignore[index]
    other = tid()
    backend.store(other, make_meta(other, states.SUCCESS, 2, date_done=NOW))
    assert app.AsyncResult(other).get(timeout=5) == 2
    backend.close()
    app.close()


def test_wiretask_streams_celery_progress_then_success(
    celery_app: Celery, wt: RedisBackend
) -> None:
    task_id = tid()
    with wt.subscribe(task_id) as sub:
        def produce() -> None:
            for i in range(3):
                celery_app.backend.store_result(task_id, {"current": i}, "PROGRESS")
            celery_app.backend.store_result(task_id, "finished", "SUCCESS")

        thread = threading.Thread(target=produce)
        thread.start()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not sub.finished and time.monotonic() < deadline:
            meta = sub.next(deadline - time.monotonic())
            if meta is not None:
                got.append(meta)
        thread.join(10)
    assert [(m["status"], m["result"]) for m in got] == [
        ("PROGRESS", {"current": 0}), ("PROGRESS", {"current": 1}),
        ("PROGRESS", {"current": 2}), ("SUCCESS", "finished"),
    ]


def test_celery_ignores_updates_after_a_wiretask_success(
    celery_app: Celery, wt: RedisBackend
) -> None:
    task_id = tid()
    wt.store(task_id, make_meta(task_id, states.SUCCESS, 1, date_done=NOW))
    celery_app.backend.store_result(task_id, 2, "SUCCESS")  # Celery's own rule
    wt.store(task_id, make_meta(task_id, states.FAILURE, ValueError("late"), date_done=NOW))
    assert celery_app.AsyncResult(task_id).get(timeout=5) == 1
