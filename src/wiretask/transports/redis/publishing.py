"""Publishing: Kombu list entries, written with a marker so that retries never duplicate.

Every publish attempt writes one marker key (``_wiretask.published.<id>``) atomically
with its pushes: one ``MULTI``/``EXEC`` transaction for one message or a whole batch,
sent in one write, so the messages and their marker land together or not at all. When
an attempt fails with ``ConnectionLost`` its outcome is unknown (the write may have run
and only the reply been lost); the ``Publisher`` remembers each staged message with its
attempt's marker, and when the same ``Frame`` object is published again (the publish
retry driver does exactly that) it reuses the delivery tag and checks that marker
first: a message that already landed is not pushed twice. Every attempt has its own
marker, so a retry that sends only part of an earlier batch, and fails again, still
leaves each message's fate readable. With ``publish_markers=False`` the same without
the marker, and a single ready message is one bare ``LPUSH``, as Kombu sends it.

A message not yet due is held in the delayed index, with its restore token, when the
delay mode says so (``hold``: always, never, or while a mover is alive); otherwise it is
pushed at once with its ``eta`` header, as Celery sends it
(spec/TRANSPORTS.md §1.5).

This is a hot path: one publish is a handful of dictionary and list operations around
one ``Commands`` round trip; keep it that way. (Only a publish with a message not yet
due asks ``hold``, which reads Redis at most once a second in ``auto`` mode.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from wiretask._ids import new_id, new_ids
from wiretask._redis.keys import Keys
from wiretask.errors import ConnectionLost
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.base import Prepared
from wiretask.transports.redis.database import Database, text
from wiretask.transports.redis.deadletters import dead_entry
from wiretask.transports.redis.envelope import SEP, bucket_for, encode, queue_key, route

__all__ = ["PUBLISH_MARKER_TTL", "Publisher"]

log = logging.getLogger(__name__)

#: Seconds a publish marker lives: how long after an attempt whose outcome is unknown a
#: retry of it is still recognised (publish retry policies run for seconds).
PUBLISH_MARKER_TTL = 300
#: Most publishes with an unknown outcome remembered for a retry (oldest dropped first).
_UNSETTLED_LIMIT = 10_000


class _Staged(NamedTuple):
    """A message encoded for publishing: its list entry, bucket and due time."""

    route: Route
    tag: str
    entry: str
    bucket: int
    due: float | None


#: A message of one attempt: the message, its staged form, and the marker of the
#: earlier attempt it was staged for when this is a retry (else ``None``).
_Attempt = tuple[Prepared, _Staged, str | None]


class Publisher:
    """Writes messages to their lists (or the delayed index), remembering the ones whose
    outcome is unknown so that a retry of the same frames does not duplicate them.

    Args:
        database: the Redis database.
        hold: asked once per publish call that has a message not yet due: whether to
            hold such messages in the delayed index (else they are pushed at once, and
            their ``eta`` header holds them in the consumer, as Celery sends them). It
            is the delay mode: always (``native``), never (``celery``), or while a
            mover is alive (``auto``: ``Movers.alive``). It may read Redis; it is
            called under the publish error boundary.
        visibility_timeout: a held message's restore token is scored ``due`` minus
            this, so a ``restore_visible`` with this timeout pushes it once it is due.
        markers: write a publish marker per attempt (``publish_markers``).
    """

    def __init__(
        self, database: Database, *, hold: Callable[[], bool], visibility_timeout: float,
        markers: bool,
    ) -> None:
        self._db = database
        self._keys = database.keys
        self._commands = database.commands
        self._errors = database.errors("publish")
        self._hold = hold
        self._visibility_timeout = visibility_timeout
        self._markers = markers
        #: id(frame) -> (frame, route, not_before, staged, marker, monotonic time) of
        #: publishes that failed with an unknown outcome; a retry of the same frame reuses
        #: ``staged``, and skips it if that attempt's ``marker`` exists.
        self._unsettled: dict[
            int, tuple[Frame, Route, datetime | None, _Staged, str, float]
        ] = {}
        self._unsettled_lock = threading.Lock()

    def publish(self, messages: Sequence[Prepared]) -> None:
        """The whole batch, with its publish marker, in one ``MULTI``/``EXEC``
        transaction (one round trip, plus one read of the binding tables of named
        exchanges, and one marker check when retrying): all of it lands or none.

        Raises:
            EncodeError: a header or property JSON cannot carry (nothing was sent).
            ConnectionLost: the outcome is unknown; publishing the same frames again
                will not duplicate what landed (see the module doc).
            TransportError: any other failure.
        """
        markers = self._markers
        hold = False
        now = time.time()
        for message in messages:
            if message.due is not None and message.due > now:
                with self._errors:  # asked before staging: a failure takes nothing out
                    hold = self._hold()  # of the unsettled memory
                break
        batch, fresh, retrying, routed = self._stage_all(messages, hold)
        if not batch:
            return
        # One marker per attempt, named after a tag that is new in this attempt (a
        # retried message's earlier marker must keep meaning "that attempt landed").
        marker = f"{self._keys.prefix}_wiretask.published.{fresh or new_id()}" \
            if markers else ""
        landed: set[str] = set()
        checked = False
        try:
            with self._errors:
                if retrying:
                    landed = self._landed(batch)
                checked = True
                self._write(batch, landed, marker, routed)
        except ConnectionLost:
            if markers:
                self._keep_unsettled([
                    (message, staged, marker if checked or earlier is None else earlier)
                    for message, staged, earlier in batch if earlier not in landed
                ])
            raise

    def _stage_all(
        self, messages: Sequence[Prepared], hold: bool
    ) -> tuple[list[_Attempt], str | None, bool, bool]:
        """Each message staged (a retried one as it was staged before; a new one held
        until due if ``hold``), the first tag new in this attempt, whether any message
        is retried and whether any goes to a named exchange."""
        markers = self._markers
        batch: list[_Attempt] = []
        fresh: str | None = None
        retrying = routed = False
        now = round(time.time(), 6)  # the publish time every entry of the attempt carries
        for message, tag in zip(messages, new_ids(len(messages)), strict=True):
            kept = self._take_unsettled(message) if markers else None
            if kept is not None:
                batch.append((message, *kept))
                retrying = True
            else:
                batch.append((message, self._prepare(message, tag, now, hold), None))
                fresh = fresh or tag
            routed = routed or bool(message.route.exchange)
        return batch, fresh, retrying, routed

    def _landed(self, batch: list[_Attempt]) -> set[str]:
        """The markers of the earlier attempts in ``batch`` that exist: those landed."""
        earlier = sorted({m for _, _, m in batch if m is not None})
        if not earlier:
            return set()
        found = self._commands.run([("EXISTS", m) for m in earlier])
        return {m for m, n in zip(earlier, found, strict=True) if n}

    def _write(
        self, batch: list[_Attempt], landed: set[str], marker: str, routed: bool
    ) -> None:
        """Send what did not land yet, with ``marker`` ('' for none): one transaction,
        or one bare command when that is all there is (atomic by itself)."""
        tables = self._tables(batch) if routed else {}
        writes = _Writes(self._keys, self._visibility_timeout)
        for _, item, earlier in batch:
            if earlier in landed:
                continue  # the attempt whose reply was lost did land
            where = item.route
            queues = (route(tables[where.exchange], where.key) if where.exchange
                      else [where.key])
            self._stage(writes, item, queues)
        writing = writes.commands(marker)
        if len(writing) == 1:
            # Without a marker, a ready message (or a batch for one list) is one LPUSH,
            # as Kombu's ``_put`` sends it.
            self._commands.run(writing)
        elif writing:
            self._commands.transaction(writing)

    def _tables(self, batch: list[_Attempt]) -> dict[str, list[str]]:
        """The binding table (its members, sorted) of each named exchange in ``batch``."""
        exchanges = sorted({s.route.exchange for _, s, _ in batch if s.route.exchange})
        read = self._commands.run([("SMEMBERS", self._keys.binding(exchange))
                                   for exchange in exchanges])
        return {exchange: sorted(text(m) for m in members)
                for exchange, members in zip(exchanges, read, strict=True)}

    def _keep_unsettled(self, batch: Sequence[tuple[Prepared, _Staged, str]]) -> None:
        now = time.monotonic()
        with self._unsettled_lock:
            for message, staged, marker in batch:
                self._unsettled[id(message.frame)] = (
                    message.frame, message.route, message.not_before, staged, marker, now
                )
            expired = now - PUBLISH_MARKER_TTL
            for key in [k for k, v in self._unsettled.items() if v[5] < expired]:
                del self._unsettled[key]
            while len(self._unsettled) > _UNSETTLED_LIMIT:
                del self._unsettled[next(iter(self._unsettled))]

    def _take_unsettled(self, message: Prepared) -> tuple[_Staged, str] | None:
        """The staged form of an earlier publish of this very frame (same route and
        ``not_before``) whose outcome is unknown, and that attempt's marker; or None."""
        if not self._unsettled:  # the common case; an entry for this frame would have
            return None          # been left by this thread's own earlier attempt
        with self._unsettled_lock:
            kept = self._unsettled.pop(id(message.frame), None)
        if kept is None:
            return None
        frame, where, not_before, staged, marker, _ = kept
        if frame is message.frame and where == message.route and not_before == message.not_before:
            return staged, marker
        return None

    def _prepare(self, message: Prepared, tag: str, now: float, hold: bool) -> _Staged:
        """Stage ``message``: held broker-side if it is not due at ``now`` and ``hold``
        says so; its list entry stamped with its publish time ``now`` (and its due time
        when it is held: queue statistics read both)."""
        where = message.route
        # An int outside 0..9 arrives clamped (``out_of_range_priority="clamp"``) and is
        # written as is, like Kombu (celery#8967): a worker re-publishing a Celery frame
        # with priority 15 must not fail. The calling API refuses such values earlier.
        priority = message.priority
        bucket = self._db.bucket0 if priority == 0 else bucket_for(priority, self._db.steps)
        due = message.due
        if due is not None and (not hold or due <= now):
            due = None
        entry = encode(message.frame, exchange=where.exchange, routing_key=where.key,
                       delivery_tag=tag, published=now, due=due)
        return _Staged(where, tag, entry, bucket, due)

    def _stage(self, writes: _Writes, staged: _Staged, queues: Sequence[str]) -> None:
        where = staged.route
        if not queues:
            # Kombu drops an unroutable message silently; wiretask keeps it.
            reason = f"unroutable: no queue bound to exchange {where.exchange!r} " \
                     f"with routing key {where.key!r}"
            log.warning("dead-lettering a message for %r: %s", where.queue, reason)
            writes.rpush(self._keys.dead(where.queue),
                         dead_entry(where.queue, reason, staged.entry.encode(),
                                    at=time.time()))
            return
        for queue in queues:
            name = queue_key(queue, staged.bucket)
            if staged.due is None:
                writes.lpush(self._keys.p(name), staged.entry)
            else:
                writes.schedule(queue, f"{staged.tag}{SEP}{queue}", staged.due, name,
                                staged.entry)


class _Writes:
    """The commands of one publish transaction: the pushes of each list grouped, in
    their order, into one variadic ``LPUSH``; dead letters into one ``RPUSH`` per list;
    delayed holds into one ``HSET`` of their entries, one ``ZADD`` per index, and one
    ``HSET`` and ``ZADD`` of their restore tokens."""

    def __init__(self, keys: Keys, visibility_timeout: float) -> None:
        self._names = keys
        self._visibility_timeout = visibility_timeout
        self._pushes: dict[str, list[str]] = {}
        self._dead: dict[str, list[str]] = {}
        #: (queue, member, due, list, entry) of each held message
        self._held: list[tuple[str, str, float, str, str]] = []

    def lpush(self, key: str, entry: str) -> None:
        entries = self._pushes.get(key)
        if entries is None:
            self._pushes[key] = [entry]
        else:
            entries.append(entry)

    def rpush(self, key: str, text: str) -> None:
        self._dead.setdefault(key, []).append(text)

    def schedule(self, queue: str, member: str, due: float, name: str, entry: str) -> None:
        self._held.append((queue, member, due, name, entry))

    def commands(self, marker: str) -> list[tuple[Any, ...]]:
        """The transaction's commands, the ``marker`` ('' for none) first; none at all
        when there is nothing to write. A delayed message's entry is written with its
        index entries and its token, so ``DUE`` never finds a member without them."""
        commands: list[tuple[Any, ...]] = []
        if not (self._pushes or self._dead or self._held):
            return commands
        if marker:
            commands.append(("SET", marker, 1, "EX", PUBLISH_MARKER_TTL))
        for key, entries in self._pushes.items():
            commands.append(("LPUSH", key, *entries))
        for key, texts in self._dead.items():
            commands.append(("RPUSH", key, *texts))
        if self._held:
            commands += self._delayed()
        return commands

    def _delayed(self) -> list[tuple[Any, ...]]:
        """A held message is ``[list, queue, entry, 1]`` in the entry hash (the 1: it has
        a token), its member in the due index and its queue's index, and its restore
        token: Kombu's unacked record ``[entry, "", queue]`` under the same member,
        scored so that a ``restore_visible`` pushes it to ``queue`` once it is due."""
        names = self._names
        held: list[str] = []
        everything: list[str] = []
        per_queue: dict[str, list[str]] = {}
        tokens: list[str] = []
        restore_at: list[str] = []
        for queue, member, due, name, entry in self._held:
            at = repr(due)
            held += (member, json.dumps([name, queue, entry, 1]))
            everything += (at, member)
            per_queue.setdefault(queue, []).extend((at, member))
            tokens += (member, f'[{entry}, "", {json.dumps(queue)}]')
            restore_at += (repr(due - self._visibility_timeout), member)
        return [("HSET", names.delayed_messages, *held),
                *[("ZADD", names.delayed_queue(queue), *pairs)
                  for queue, pairs in per_queue.items()],
                ("ZADD", names.delayed, *everything),
                ("HSET", names.unacked, *tokens),
                ("ZADD", names.unacked_index, *restore_at)]
