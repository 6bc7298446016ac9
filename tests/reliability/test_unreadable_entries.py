"""Stored messages that cannot be read as frames (issue 13, items 1 and 2): written
straight into the broker as an operator, another writer or a bug would leave them. Each
is dead-lettered with its raw content and the reason; the messages around it are
delivered; nothing stays leased to nobody."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from wiretask.protocol.frame import Frame, Route
from wiretask.transports.base import Delivery
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.sqlite import SQLiteTransport

Q = Route("q")
DEEP = 100_000


def frame(name: str) -> Frame:
    return Frame(body=b"[[], {}, null]", content_type="application/json",
                 content_encoding="utf-8", headers={"task": "t", "id": name})


def ids(deliveries: Sequence[Delivery]) -> list[str | None]:
    return [d.frame.task_id for d in deliveries]


# -- SQLite -----------------------------------------------------------------------------

#: (what is wrong, column values that replace a good row's)
BAD_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("headers nested 100,000 deep", {"headers": '{"a":' * DEEP + "1" + "}" * DEEP}),
    ("body stored as TEXT", {"body": "[[], {}, null]"}),
    ("headers not JSON", {"headers": "{not json"}),
    ("properties a JSON list", {"properties": "[1, 2]"}),
    ("headers stored as a number", {"headers": 7}),
    ("body stored as a number", {"body": 12345}),
    ("headers not UTF-8", {"headers": b'{"a": "\xff"}'}),
]


def insert_raw(path: Path, **columns: Any) -> None:
    """A row as another writer might leave it (every other column a good row's)."""
    row = {"queue": "q", "priority": 0, "visible_at": 0.0, "published_at": time.time(),
           "content_type": "application/json", "content_encoding": "utf-8",
           "headers": '{"task": "t", "id": "raw"}', "properties": "{}",
           "body": b"[[], {}, null]", **columns}
    with sqlite3.connect(path) as conn:
        conn.execute(f"INSERT INTO wiretask_messages ({', '.join(row)}) "
                     f"VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    conn.close()


@pytest.fixture
def sqlite_transport(tmp_db: Path) -> Iterator[SQLiteTransport]:
    transport = SQLiteTransport(tmp_db, visibility_timeout=2.0)
    transport.connect()
    yield transport
    transport.close()


@pytest.mark.parametrize(("problem", "columns"), BAD_ROWS, ids=[p for p, _ in BAD_ROWS])
def test_an_unreadable_sqlite_row_is_dead_lettered_and_the_queue_goes_on(
    sqlite_transport: SQLiteTransport, tmp_db: Path, problem: str, columns: dict[str, Any]
) -> None:
    sqlite_transport.publish(frame("before"), Q)
    insert_raw(tmp_db, **columns)
    sqlite_transport.publish(frame("after"), Q)
    # One call that takes the good message before the bad row and the one after it.
    taken = sqlite_transport.receive_many(["q"], limit=3, timeout=1)
    assert ids(taken) == ["before", "after"], problem
    for delivery in taken:
        delivery.ack()
    [dead] = sqlite_transport.dead_letters("q")
    assert dead.reason.startswith("unreadable stored frame"), dead.reason
    assert dead.frame is None
    assert dead.raw is not None  # the stored body, as it was
    assert sqlite_transport.receive(["q"], timeout=0) is None
    # Nothing is left leased: every row was settled or dead-lettered.
    with sqlite3.connect(tmp_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM wiretask_messages").fetchone() == (0,)
    conn.close()


def test_peek_leaves_an_unreadable_row_out(sqlite_transport: SQLiteTransport,
                                           tmp_db: Path) -> None:
    insert_raw(tmp_db, body="text")
    sqlite_transport.publish(frame("good"), Q)
    assert [p.frame.task_id for p in sqlite_transport.peek("q")] == ["good"]


def test_receive_many_hands_over_what_it_took_when_a_later_receive_fails() -> None:
    """The default ``receive_many`` (several ``_receive`` calls): a taken message is
    returned even if a later call fails with anything at all, so that it does not stay
    held by nobody."""

    class Flaky(MemoryTransport):
        calls = 0

        def _receive(self, queues: list[str], timeout: float) -> Delivery | None:
            self.calls += 1
            if self.calls == 2:
                raise RecursionError("a bug in a transport")
            return super()._receive(queues, timeout)

    transport = Flaky("flaky-receive-many")
    transport.connect()
    try:
        transport.publish(frame("one"), Q)
        transport.publish(frame("two"), Q)
        assert ids(transport.receive_many(["q"], limit=2, timeout=0)) == ["one"]
        assert ids(transport.receive_many(["q"], limit=2, timeout=0)) == ["two"]
    finally:
        transport.close()


# -- Redis -------------------------------------------------------------------------------


#: Entries pushed straight into a Redis list, and what is wrong with each.
BAD_ENTRIES: list[tuple[str, bytes]] = [
    ("nested 50,000 deep", b"[" * 50_000 + b"]" * 50_000),
    ("headers nested 100,000 deep",
     b'{"body": "", "properties": {"delivery_tag": "deep"}, "headers": '
     + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}"),
    ("not JSON", b"{not json"),
    ("not UTF-8", b'{"body": "\xff"}'),
    ("no delivery tag", b'{"body": "", "properties": {}}'),
    ("bad base64", b'{"body": "!!", "properties": {"delivery_tag": "b64", '
                   b'"body_encoding": "base64"}}'),
    ("a JSON list", b"[1, 2, 3]"),
    ("delivery tag a lone surrogate",
     b'{"body": "", "properties": {"delivery_tag": "\\udcff"}}'),
    ("a huge integer", b'{"body": "", "properties": {"delivery_tag": "int", "priority": '
     + b"9" * 5000 + b"}}"),
]


@pytest.fixture
def redis_transport(redis_url: str) -> Iterator[RedisTransport]:
    transport = RedisTransport(redis_url, visibility_timeout=30)
    transport.connect()
    yield transport
    transport.close()


@pytest.mark.redis
@pytest.mark.parametrize(("problem", "entry"), BAD_ENTRIES, ids=[p for p, _ in BAD_ENTRIES])
def test_an_unreadable_redis_entry_is_dead_lettered_and_its_batch_delivered(
    redis_transport: RedisTransport, redis_url: str, problem: str, entry: bytes
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        redis_transport.publish(frame("before"), Q)
        client.lpush("q", entry)
        redis_transport.publish(frame("after"), Q)
        taken = redis_transport.receive_many(["q"], limit=3, timeout=1)
        assert ids(taken) == ["before", "after"], problem
        for delivery in taken:
            delivery.ack()
        [dead] = redis_transport.dead_letters("q")
        assert dead.raw == entry
        assert dead.frame is None
        # Nothing stays recorded as unacked (nor refreshed by the lease heartbeat).
        assert client.hlen("unacked") == 0
        assert client.zcard("unacked_index") == 0
    finally:
        client.close()
