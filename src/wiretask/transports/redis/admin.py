"""Admin and inspection: bindings, and looking at queues without consuming them.

``Admin`` is the transport's ``Inspection`` capability (``size``, ``purge``, ``peek``,
``dead_letters``), its ``QueueStatistics`` (``queue_stats``) and its binding table
writer (``bind_queue``). It reads and writes on
redis-py's client (the cold paths), never on the hot paths' connections. Commands that
report on queues or the database (counts, statistics) belong here, each exposed on
``RedisTransport`` by a one-line delegate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal, cast

from wiretask._redis import scripts
from wiretask._redis.keys import Keys
from wiretask.errors import ValidationError
from wiretask.transports.base import DeadLetter, Peeked, QueueStats, queue_names
from wiretask.transports.redis.database import Database, text
from wiretask.transports.redis.deadletters import read_dead_entry
from wiretask.transports.redis.envelope import (
    binding_member,
    frame_or_none,
    queue_key,
    ready_at,
    route,
    topic_pattern,
)

__all__ = ["Admin", "binding_writes"]


def binding_writes(
    keys: Keys, queue: str, exchange: str, routing_key: str, *,
    exchange_type: Literal["direct", "topic"] = "direct",
) -> list[tuple[str, str, str]]:
    """The commands that bind ``queue`` to a named exchange (Kombu's ``_queue_bind``):
    the member added to ``_kombu.binding.<exchange>`` and to
    ``_kombu.binding_permanent.<exchange>`` too, so that Kombu 5.7's sweep of expiring
    bindings keeps the table. Fanout exchanges are not supported (Kombu routes them over
    pub/sub, which has no queue to hold a message). The sync transport and its asyncio
    twin both send these.

    Raises:
        ValidationError: an empty queue or exchange name, or another exchange type.
    """
    queue_names([queue])
    if not exchange:
        raise ValidationError("exchange", "the default exchange needs no binding")
    if exchange_type not in ("direct", "topic"):
        raise ValidationError("exchange_type", "must be 'direct' or 'topic'",
                              value=exchange_type)
    pattern = topic_pattern(routing_key) if exchange_type == "topic" else ""
    member = binding_member(routing_key, pattern, queue)
    return [("SADD", keys.binding(exchange), member),
            ("SADD", keys.binding_permanent(exchange), member)]


class Admin:
    """Bindings and inspection of one Redis database's queues (see the module doc)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        """Bind ``queue`` to a named exchange (Kombu's ``_queue_bind``, see
        ``binding_writes``).

        Raises:
            ValidationError: an empty queue or exchange name, or another exchange type.
            ConnectionLost, TransportError: Redis failed.
        """
        writes = binding_writes(self._db.keys, queue, exchange, routing_key,
                                exchange_type=exchange_type)
        db = self._db
        with db.errors("bind_queue"):
            pipe = db.client.pipeline()
            for _, key, member in writes:  # SADD key member
                pipe.sadd(key, member)
            pipe.execute()

    def size(self, queue: str) -> int:
        """Ready and scheduled messages of ``queue`` (every bucket list, and its share of
        the delayed index); not the ones in flight."""
        queue_names([queue])
        db = self._db
        with db.errors("size"):
            pipe = db.client.pipeline(transaction=False)
            for step in db.steps:
                pipe.llen(db.keys.p(queue_key(queue, step)))
            pipe.zcard(db.keys.delayed_queue(queue))
            return sum(int(n) for n in pipe.execute())

    def purge(self, queue: str) -> int:
        """Remove the ready and scheduled messages of ``queue`` in one ``PURGE`` script
        run; return how many."""
        queue_names([queue])
        db = self._db
        with db.errors("purge"):
            return int(cast(int, db.commands.script(
                scripts.purge(db.keys, queue, lists=db.lists([queue])))))

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        """Ready messages in delivery order (bucket 0 first, oldest first), then scheduled
        ones by due time. Entries that are not envelopes are left out."""
        queue_names([queue])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", f"must be an int >= 0, got {limit!r}")
        db = self._db
        found: list[Peeked] = []
        with db.errors("peek"):
            for step in db.steps:
                if len(found) >= limit:
                    return found
                entries = cast(list[bytes], db.client.lrange(
                    db.keys.p(queue_key(queue, step)), -(limit - len(found)), -1))
                for raw in reversed(entries):
                    frame = frame_or_none(raw, queue=queue)
                    if frame is not None:
                        found.append(Peeked(frame=frame, queue=queue, state="ready"))
            if len(found) >= limit:
                return found
            rows = cast(list[tuple[bytes, float]], db.client.zrange(
                db.keys.delayed_queue(queue), 0, limit - len(found) - 1, withscores=True))
            stored = cast(list[bytes | None], db.client.hmget(
                db.keys.delayed_messages, [m for m, _ in rows])) if rows else []
        return found + self._scheduled(queue, rows, stored)

    @staticmethod
    def _scheduled(
        queue: str, rows: list[tuple[bytes, float]], stored: list[bytes | None]
    ) -> list[Peeked]:
        """The delayed messages of ``peek``: index ``rows`` (member, due time) and their
        ``stored`` entries (``None`` for one that moved meanwhile)."""
        found: list[Peeked] = []
        for (_, due), item in zip(rows, stored, strict=True):
            if item is None:
                continue
            frame = frame_or_none(json.loads(item)[2], queue=queue)
            if frame is not None:
                found.append(Peeked(frame=frame, queue=queue, state="scheduled",
                                    not_before=datetime.fromtimestamp(due, UTC)))
        return found

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Entries of ``<queue>.dead``, oldest first."""
        queue_names([queue])
        db = self._db
        with db.errors("dead_letters"):
            rows = cast(list[bytes], db.client.lrange(db.keys.dead(queue), 0, -1))
        return [read_dead_entry(queue, row) for row in rows]

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """``QueueStatistics``: the numbers of every queue in one ``STATS`` script run
        (one atomic step, one round trip; a second one only to read the binding tables
        of named exchanges that in-flight messages came through).

        * ``ready``: ``LLEN`` of the priority lists; ``scheduled`` and ``next_due``:
          ``ZCARD`` and the first score of ``_wiretask.delayed.queue.<queue>`` (0 and
          ``None`` with ``delay_mode=celery``, where the worker holds early messages:
          they count as in flight); ``dead``: ``LLEN <queue>.dead``.
        * ``in_flight``: the entries of Kombu's ``unacked`` hash (shared by every
          consumer, wiretask or Celery) whose exchange and routing key route to the
          queue, as a restore would route them; values that are not Kombu's
          ``[message, exchange, routing_key]`` count nowhere. This reads each held
          message once, in the script: its cost grows with what consumers hold, not
          with the depth of any queue.
        * ``oldest_ready_at``: the ``ready_at`` of the head entry of each priority list
          (the one the next pop takes; the lists are FIFO, so it is the oldest but for
          a message pushed back to the end by ``reject(requeue=True)``), the later of
          its ``x-wiretask-published`` and ``x-wiretask-due`` properties. ``None``
          (unknown) when a head carries no publish time: Celery and Kombu write none.
        * The counters are ``None``: Redis keeps none per list, and Celery's publishers
          and consumers would not update one of ours.
        """
        names = queue_names(queues)
        if not names:
            return []
        db = self._db
        lists = [[db.keys.p(queue_key(name, step)) for step in db.steps] for name in names]
        with db.errors("queue_stats"):
            reply = db.commands.script(scripts.stats(db.keys, names, lists=lists))
            at = time.time()
            held, _, lanes = scripts.read_stats(reply, len(db.steps))
            exchanges = sorted({exchange for exchange, _ in held if exchange})
            tables: dict[str, list[str]] = {}
            if exchanges:
                read = db.commands.run([("SMEMBERS", db.keys.binding(exchange))
                                        for exchange in exchanges])
                tables = {exchange: sorted(text(m) for m in members)
                          for exchange, members in zip(exchanges, read, strict=True)}
        in_flight = dict.fromkeys(names, 0)
        for (exchange, routing_key), count in held.items():
            for queue in (route(tables[exchange], routing_key) if exchange
                          else [routing_key]):
                if queue in in_flight:
                    in_flight[queue] += count
        return [
            QueueStats(
                queue=name, at=at, ready=sum(lane.lengths), scheduled=lane.scheduled,
                next_due=lane.next_due, in_flight=in_flight[name], dead=lane.dead,
                oldest_ready_at=_oldest(lane.heads),
            )
            for name, lane in zip(names, lanes, strict=True)
        ]


def _oldest(heads: Sequence[bytes]) -> float | None:
    """The oldest ``ready_at`` of a queue's bucket heads; ``None`` when there is none, or
    when any carries no time (it may be the oldest: the queue's age is then unknown)."""
    times = [ready_at(head) for head in heads]
    known = [t for t in times if t is not None]
    return min(known) if known and len(known) == len(times) else None
