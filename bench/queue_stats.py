"""What reading a queue's statistics costs at depth: ``queue_stats`` on a queue of
1,000,000 messages against the same call on an empty queue, on SQLite and on Redis.

``QueueStatistics`` promises that counting does not walk the messages (the broker's
counters and indexes do it), so the deep read should cost a small multiple of the empty
one, not a million times more. On SQLite a count is an index scan inside SQLite
(no Python loop, but linear in the rows). On Redis the lengths are O(1); what the read
does look at one by one is the messages consumers hold (``unacked``, bounded by their
prefetch), measured separately with 1,000 in flight. Each side's time is the minimum
over interleaved repeats (``_common``'s method).

    python bench/queue_stats.py               # 1,000,000 messages (a minute to fill)
    python bench/queue_stats.py --scale 0.01  # 10,000
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import redis
from _common import (
    REDIS_DB,
    Row,
    arguments,
    compare,
    machine_facts,
    print_ratio_lines,
    print_table,
    redis_url,
    scaled,
)

from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.base import QueueStatistics, Transport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.sqlite import SQLiteTransport

DEEP, EMPTY = "bench.deep", "bench.empty"
BATCH = 10_000


def fill(transport: Transport, messages: int) -> float:
    """Publish ``messages`` small task-like messages to ``DEEP``; return the seconds it
    took."""
    frame = Frame(body=b'[[42, "user@example.com"], {"notify": true}, {}]',
                  content_type="application/json", content_encoding="utf-8",
                  headers={"task": "bench.stats", "id": "x"})
    started = time.perf_counter()
    for start in range(0, messages, BATCH):
        count = min(BATCH, messages - start)
        transport.publish_many([Outgoing(frame, Route(DEEP))] * count)
    return time.perf_counter() - started


def measure(name: str, source: QueueStatistics, messages: int, repeat: int) -> Row:
    [deep] = source.queue_stats([DEEP])
    assert (deep.ready, deep.in_flight) == (messages, 0), deep
    ours, reference = compare(lambda: source.queue_stats([DEEP]),
                              lambda: source.queue_stats([EMPTY]), number=5, repeat=repeat)
    return Row(f"{name} queue_stats, {messages:,} messages", ours, reference,
               "same, empty queue", kind="overhead")


def measure_held(held_by: QueueStatistics, idle: QueueStatistics, held: int,
                 repeat: int) -> Row:
    """The in-flight count reads each held message once: ``held_by`` has ``held``
    messages in flight, ``idle`` (another key prefix on the same server) none."""
    [busy] = held_by.queue_stats([DEEP])
    assert busy.in_flight == held, busy
    ours, reference = compare(lambda: held_by.queue_stats([EMPTY]),
                              lambda: idle.queue_stats([EMPTY]), number=5, repeat=repeat)
    return Row(f"Redis queue_stats, {held:,} in flight (any queue)", ours, reference,
               "same, none in flight", kind="overhead")


def main() -> None:
    args = arguments(__doc__ or "", default_scale=1.0)
    messages = scaled(1_000_000, args.scale, minimum=100)
    held = min(scaled(1_000, args.scale, minimum=10), messages // 2)
    repeat = args.repeat or 5
    rows: list[Row] = []
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="wiretask-bench-stats-") as folder:
        sqlite = SQLiteTransport(Path(folder) / "broker.db")
        try:
            notes.append(f"SQLite: filled {messages:,} in {fill(sqlite, messages):.1f} s")
            rows.append(measure("SQLite", sqlite, messages, repeat))
        finally:
            sqlite.close()

    with redis_url() as base:
        url = f"{base}/{REDIS_DB}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        transport = RedisTransport(url)
        idle = RedisTransport(url, global_keyprefix="bench.idle:")
        try:
            notes.append(f"Redis: filled {messages:,} in {fill(transport, messages):.1f} s")
            rows.append(measure("Redis", transport, messages, repeat))
            taken = transport.receive_many([DEEP], limit=held, timeout=5)
            rows.append(measure_held(transport, idle, len(taken), repeat))
            transport.ack_many(taken)
        finally:
            transport.close()
            idle.close()
            client.flushdb()
            client.close()

    print(f"queue_stats at depth | {machine_facts()}")
    for note in notes:
        print(note)
    print_table("queue_stats: one queue at depth vs the same call on an empty queue", rows)
    for row in rows:
        print(f"{row.operation}: {row.ours_us / 1000:.2f} ms ({row.reference}: "
              f"{row.reference_us / 1000:.2f} ms)")
    print_ratio_lines(rows)


if __name__ == "__main__":
    main()
