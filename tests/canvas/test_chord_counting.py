"""Chord bookkeeping: Celery 5.7's Redis keys as wiretask's backend keeps them (each
header task counted once, one claim, done after the body, expiry, arrival order when
``result_chord_ordered`` is off), a header task run twice firing the body once, and
``celery.chord_unlock`` on the backends that do not count (its interval and its limit)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from wiretask.app import App
from wiretask.canvas import chord
from wiretask.errors import ChordError
from wiretask.protocol.celery import decode
from wiretask.results.redis import RedisBackend
from wiretask.worker import Worker
from wiretask.worker.tracer import Tracer

from .conftest import add_tasks

WAIT = 20.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    with RedisBackend(redis_url, expires=600) as opened:
        yield opened


def part(task_id: str, value: Any) -> bytes:
    return json.dumps([1, task_id, "SUCCESS", value]).encode()



@pytest.mark.redis
def test_each_header_task_counts_once_and_one_worker_claims_the_chord(
    backend: RedisBackend, client: redis.Redis
) -> None:
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 2)
    first = backend.add_chord_part(gid, "a", 0, part("a", 1), claim_seconds=10, token="t1")
    again = backend.add_chord_part(gid, "a", 0, part("a", 1), claim_seconds=10, token="t2")
    assert first is not None and again is not None
    assert (first.ready, first.size, first.complete) == (1, 2, False)
    assert again.ready == 1  # a redelivered copy is not counted twice
    last = backend.add_chord_part(gid, "b", 1, part("b", 2), claim_seconds=10, token="t3")
    assert last is not None and last.complete and last.claimed
    late = backend.add_chord_part(gid, "c", 1, part("c", 2), claim_seconds=10, token="t4")
    assert late is not None and not late.claimed  # the claim is taken
    assert [json.loads(p)[3] for p in backend.chord_parts(gid)] == [1, 2, 2]
    assert client.get(f"celery-taskset-meta-{gid}.c") == b"t3"
    assert 0 < client.ttl(f"celery-taskset-meta-{gid}.j") <= 600

    assert not backend.extend_chord_claim(gid, "t4", 20)
    assert backend.extend_chord_claim(gid, "t3", 20)
    assert not backend.finish_chord(gid, "t4", 300)
    assert backend.finish_chord(gid, "t3", 300)
    assert client.get(f"celery-taskset-meta-{gid}.c") == b"done"
    assert not client.exists(*(f"celery-taskset-meta-{gid}{s}" for s in (".j", ".d", ".s")))
    assert backend.add_chord_part(gid, "a", 0, part("a", 1), claim_seconds=10,
                                  token="t5") is None  # finished: nothing starts again

    backend.set_chord_size(gid, 1)  # a new run of the same chord drops the done mark
    rerun = backend.add_chord_part(gid, "a", 0, part("a", 1), claim_seconds=10, token="t6")
    assert rerun is not None and rerun.claimed


@pytest.mark.redis
def test_a_lapsed_claim_is_taken_again_while_the_chord_is_unfinished(
    backend: RedisBackend, client: redis.Redis
) -> None:
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 1)
    backend.add_chord_part(gid, "a", None, part("a", 1), claim_seconds=10, token="t1")
    client.delete(f"celery-taskset-meta-{gid}.c")
    assert backend.extend_chord_claim(gid, "t2", 10)
    assert client.get(f"celery-taskset-meta-{gid}.c") == b"t2"
    backend.drop_chord_size(gid)
    client.delete(f"celery-taskset-meta-{gid}.c")
    assert not backend.extend_chord_claim(gid, "t3", 10)


@pytest.mark.redis
def test_unordered_parts_keep_arrival_order_and_chord_keys_have_their_own_expiry(
    redis_url: str, client: redis.Redis
) -> None:
    with RedisBackend(redis_url, expires=600, result_chord_ordered=False) as backend:
        backend.chord_expires = 30
        gid = str(uuid.uuid4())
        backend.set_chord_size(gid, 2)
        backend.add_chord_part(gid, "b", 1, part("b", "second"), claim_seconds=5, token="x")
        backend.add_chord_part(gid, "a", 0, part("a", "first"), claim_seconds=5, token="y")
        assert client.type(f"celery-taskset-meta-{gid}.j") == b"list"
        assert [json.loads(p)[3] for p in backend.chord_parts(gid)] == ["second", "first"]
        assert 0 < client.ttl(f"celery-taskset-meta-{gid}.s") <= 30
    with pytest.raises(Exception, match="result_chord_ordered"):
        RedisBackend(redis_url, result_chord_ordered="yes")  # type: ignore[arg-type]


@pytest.mark.redis
def test_a_header_task_run_twice_fires_the_body_once(redis_url: str) -> None:
    app = App("twice", broker=redis_url, backend=redis_url)
    add_tasks(app)
    try:
        add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
        result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
        tracer = Tracer(app, "twice@test")
        messages = []
        for _ in range(2):
            delivery = app.transport.receive(["celery"], timeout=1)
            assert delivery is not None
            delivery.ack()
            messages.append(decode(delivery.frame, app.registry))
        info = {"routing_key": "celery", "queue": "celery"}
        for message in (messages[0], messages[0], messages[1], messages[1]):
            tracer.execute(message, delivery_info=info)
        body = app.transport.receive(["celery"], timeout=1)
        assert body is not None
        body.ack()
        body_message = decode(body.frame, app.registry)
        assert body_message.id == result.id and body_message.args == ([2, 4],)
        assert app.transport.receive(["celery"], timeout=0.2) is None  # only once
    finally:
        app.close()


def test_chord_unlock_polls_at_the_retry_interval(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'unlock.db'}"
    app = App("unlock", broker=url, backend=url, result_chord_retry_interval=0.05)
    add_tasks(app)
    try:
        add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
        with Worker(app, queues=["celery"], concurrency=2, shutdown_timeout=5):
            never = add.s(1, 1).set(queue="nobody")
            stuck = chord([add.s(1, 1), never], tsum.s()).apply_async(max_retries=3)
            with pytest.raises(ChordError, match="chord_unlock could not be retried"):
                stuck.get(timeout=WAIT, follow_parents=False)
            fine = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async(interval=0.05)
            assert fine.get(timeout=WAIT) == 6
    finally:
        app.close()
