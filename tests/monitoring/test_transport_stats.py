"""What each transport's ``queue_stats`` reads in the states the common test does not
reach: due rows not promoted yet and lapsed leases (SQLite), messages held through a
named exchange, Celery's ``delay_mode`` and the script's builder (Redis), requeues and
counters (memory)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from wiretask._redis import scripts
from wiretask._redis.keys import Keys
from wiretask.errors import ValidationError
from wiretask.protocol.frame import Outgoing, Route
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.sqlite import SQLiteTransport

from .conftest import frame


def test_sqlite_due_rows_and_lapsed_leases_are_ready(tmp_db: Path) -> None:
    """A delayed row whose time came is ready before any receive promotes it, from its
    due time; a row whose consumer stopped renewing its lease is ready again."""
    consumer = SQLiteTransport(tmp_db, visibility_timeout=60)
    reader = SQLiteTransport(tmp_db)
    try:
        soon = datetime.now(UTC) + timedelta(seconds=0.2)
        consumer.publish(frame(b"later"), Route("q"), not_before=soon)
        consumer.publish(frame(b"held"), Route("q"))
        held = consumer.receive(["q"], timeout=1)
        assert held is not None and held.frame.body == b"held"
        [before] = reader.queue_stats(["q"])
        assert (before.ready, before.scheduled, before.in_flight) == (0, 1, 1)
        assert before.next_due == pytest.approx(soon.timestamp(), abs=1e-6)
        time.sleep(0.3)
        with sqlite3.connect(tmp_db) as conn:  # the consumer died: its lease ran out
            conn.execute("UPDATE wiretask_messages SET visible_at = ? WHERE owner IS NOT NULL",
                         (time.time() - 1,))
        [after] = reader.queue_stats(["q"])
        assert (after.ready, after.scheduled, after.in_flight) == (2, 0, 0)
        # The due row counts from its due time, the lapsed one from its publish.
        with sqlite3.connect(tmp_db) as conn:
            published = conn.execute("SELECT MIN(published_at) FROM wiretask_messages "
                                     "WHERE not_before IS NULL").fetchone()[0]
        assert after.oldest_ready_at == published
        assert after.oldest_ready_at < soon.timestamp()
    finally:
        consumer.close()
        reader.close()


def test_sqlite_oldest_is_the_oldest_lane_head(tmp_db: Path) -> None:
    transport = SQLiteTransport(tmp_db)
    try:
        for priority, when in ((1, 100.0), (9, 300.0), (5, 200.0), (9, 50.0)):
            with pytest.MonkeyPatch.context() as clock:
                clock.setattr(time, "time", lambda when=when: when)
                transport.publish(frame(str(when).encode(), priority=priority), Route("q"))
        [stats] = transport.queue_stats(["q"])
        # Lane 9's head is the row published at 300 (FIFO by id), lane 1's at 100.
        assert (stats.ready, stats.oldest_ready_at) == (4, 100.0)
    finally:
        transport.close()


def test_redis_in_flight_through_a_named_exchange(redis_url: str) -> None:
    transport = RedisTransport(redis_url)
    try:
        transport.bind_queue("a", "topics", "job.*", exchange_type="topic")
        transport.bind_queue("b", "topics", "job.#", exchange_type="topic")
        transport.publish_many([Outgoing(frame(f"{i}".encode()), Route("a", "topics",
                                                                       "job.x"))
                                for i in range(3)])
        held = transport.receive_many(["a", "b"], limit=6, timeout=1)
        assert len(held) == 6
        transport.publish(frame(b"plain"), Route("c"))
        plain = transport.receive(["c"], timeout=1)
        assert plain is not None
        stats = {s.queue: s for s in transport.queue_stats(["a", "b", "c", "d"])}
        # The copies of one publish share its delivery tag (as with Kombu), so unacked
        # holds one record per publish, and a record counts under every queue its
        # exchange and routing key reach, as a restore would push it to each.
        assert {q: s.in_flight for q, s in stats.items()} == {"a": 3, "b": 3, "c": 1, "d": 0}
        for delivery in [*held, plain]:
            delivery.ack()
        assert {s.in_flight for s in transport.queue_stats(["a", "b", "c"])} == {0}
    finally:
        transport.close()


def test_redis_unreadable_unacked_values_count_nowhere(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset("unacked", mapping={"t1": "not json", "t2": '[{}, "", "q"]',
                                    "t3": '[{"x": "\\"q\\""}, "", "q\\"odd"]'})
    transport = RedisTransport(redis_url)
    try:
        assert {s.queue: s.in_flight for s in transport.queue_stats(["q", 'q"odd'])} == {
            "q": 1, 'q"odd': 1}
    finally:
        transport.close()


def test_redis_celery_delay_mode_holds_nothing_broker_side(redis_url: str) -> None:
    transport = RedisTransport(redis_url, delay_mode="celery")
    try:
        later = datetime.now(UTC) + timedelta(minutes=5)
        before = time.time()
        transport.publish(frame(b"eta"), Route("q"), not_before=later)
        [stats] = transport.queue_stats(["q"])
        # In the list at once (a Celery worker would take and hold it): ready since
        # its publish, not its eta.
        assert (stats.ready, stats.scheduled, stats.next_due) == (1, 0, None)
        assert stats.oldest_ready_at is not None
        assert before - 1e-6 <= stats.oldest_ready_at <= time.time()
    finally:
        transport.close()


def test_redis_native_delay_counts_from_the_due_time(redis_url: str) -> None:
    transport = RedisTransport(redis_url, delay_mode="native")
    try:
        due = datetime.now(UTC) + timedelta(seconds=0.2)
        transport.publish(frame(b"soon"), Route("q"), not_before=due)
        time.sleep(0.3)
        assert transport.due() == 1
        [stats] = transport.queue_stats(["q"])
        assert stats.ready == 1
        assert stats.oldest_ready_at == pytest.approx(due.timestamp(), abs=1e-6)
    finally:
        transport.close()


def test_the_stats_builder_refuses_lists_that_do_not_fit() -> None:
    keys = Keys(prefix="", unacked="unacked", unacked_index="unacked_index",
                unacked_mutex="unacked_mutex", delayed="_wiretask.delayed",
                delayed_messages="_wiretask.delayed.messages")
    call = scripts.stats(keys, ["a", "b"], lists=[["a", "a\x06\x163"], ["b", "b\x06\x163"]])
    assert call.keys == ["unacked", "a", "a\x06\x163", "_wiretask.delayed.queue.a",
                         "a.dead", "b", "b\x06\x163", "_wiretask.delayed.queue.b", "b.dead"]
    assert call.args == [2, 2]
    for queues, lists in ((["a"], []), (["a", "b"], [["a"]]), (["a", "b"], [["a"], []]),
                          ([], [])):
        with pytest.raises(ValidationError, match="STATS needs"):
            scripts.stats(keys, queues, lists=lists)


def test_memory_requeued_messages_keep_their_age() -> None:
    transport = MemoryTransport(f"stats-{uuid.uuid4().hex}")
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(time, "time", lambda: 1000.0)
        transport.publish(frame(b"old"), Route("q"))
    transport.publish(frame(b"new"), Route("q"))
    old = transport.receive(["q"], timeout=0)
    assert old is not None and old.frame.body == b"old"
    [held] = transport.queue_stats(["q"])
    assert (held.ready, held.in_flight) == (1, 1)
    assert held.oldest_ready_at is not None and held.oldest_ready_at > 1000.0
    old.reject(requeue=True)
    [back] = transport.queue_stats(["q"])
    assert (back.ready, back.in_flight, back.oldest_ready_at) == (2, 0, 1000.0)
    for _ in range(300):  # many pushes and pops: the age heap stays bounded
        again = transport.receive(["q"], timeout=0)
        assert again is not None
        again.reject(requeue=True)
    [churned] = transport.queue_stats(["q"])
    assert (churned.ready, churned.oldest_ready_at, churned.delivered) == (2, 1000.0, 301)
    assert len(transport._broker.queues["q"].ages) <= 2 * 2 + 64 + 1
    assert transport.purge("q") == 2
    [empty] = transport.queue_stats(["q"])
    assert (empty.ready, empty.oldest_ready_at, empty.published) == (0, None, 2)
