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

The logic lives in ``Staging`` (encoding, markers, the commands of each step, the
memory of unknown outcomes) and ``Attempt`` (one attempt's steps); ``Publisher`` is the
sync driver that sends each step's commands, and the asyncio twin
(``transports.redis.aio``) the other, so both write the same bytes and keep the same
promise.

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

__all__ = ["PUBLISH_MARKER_TTL", "Attempt", "Publisher", "Staging", "needs_hold"]

log = logging.getLogger(__name__)

#: Seconds a publish marker lives: how long after an attempt whose outcome is unknown a
#: retry of it is still recognised (publish retry policies run for seconds).
PUBLISH_MARKER_TTL = 300
#: Most publishes with an unknown outcome remembered for a retry (oldest dropped first).
_UNSETTLED_LIMIT = 10_000
#: Most list names a publisher remembers (``Staging._list``).
_LISTS_LIMIT = 4096


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


class Attempt:
    """One publish attempt, staged: what to check, read and write, in that order, and
    what its outcome leaves to remember when it is unknown. The I/O is the driver's
    (``Publisher.publish``, and the asyncio twin's in ``transports.redis.aio``), which
    sends each step's commands and hands the replies back.

    Steps: ``marker_checks()`` when ``retrying`` (the markers of earlier attempts whose
    outcome was unknown; ``read_landed`` their replies), ``table_reads()`` when
    ``routed`` (the binding tables of named exchanges; ``read_tables``), then
    ``writes()``. If an attempt fails with its outcome unknown (a lost connection, a
    cancelled ``await``), ``Staging.keep_unsettled(attempt)``.
    """

    __slots__ = ("_staging", "batch", "checked", "fresh", "landed", "marker", "retrying",
                 "routed", "tables")

    def __init__(
        self, staging: Staging, batch: list[_Attempt], fresh: str | None, retrying: bool,
        routed: bool,
    ) -> None:
        self._staging = staging
        self.batch = batch
        self.fresh = fresh
        self.retrying = retrying
        self.routed = routed
        # One marker per attempt, named after a tag that is new in this attempt (a
        # retried message's earlier marker must keep meaning "that attempt landed").
        self.marker = f"{staging.keys.prefix}_wiretask.published.{fresh or new_id()}" \
            if staging.markers else ""
        #: Markers of earlier attempts that exist: those attempts landed.
        self.landed: set[str] = set()
        #: The marker checks were done (or there were none): what is written from here
        #: on is this attempt's.
        self.checked = not retrying
        self.tables: dict[str, list[str]] = {}

    def marker_checks(self) -> list[tuple[Any, ...]]:
        """``EXISTS`` of each earlier attempt's marker in the batch."""
        return [("EXISTS", m) for m in self._earlier()]

    def _earlier(self) -> list[str]:
        return sorted({m for _, _, m in self.batch if m is not None})

    def read_landed(self, replies: Sequence[Any]) -> None:
        self.landed = {m for m, n in zip(self._earlier(), replies, strict=True) if n}
        self.checked = True

    def table_reads(self) -> list[tuple[Any, ...]]:
        """``SMEMBERS`` of the binding table of each named exchange in the batch."""
        keys = self._staging.keys
        return [("SMEMBERS", keys.binding(exchange)) for exchange in self._exchanges()]

    def _exchanges(self) -> list[str]:
        return sorted({s.route.exchange for _, s, _ in self.batch if s.route.exchange})

    def read_tables(self, replies: Sequence[Any]) -> None:
        self.tables = {exchange: sorted(text(m) for m in members)
                       for exchange, members in zip(self._exchanges(), replies, strict=True)}

    def writes(self) -> tuple[list[tuple[Any, ...]], bool]:
        """What did not land yet, with the marker: the commands, and whether they go in
        a ``MULTI``/``EXEC`` transaction (False: one bare command, atomic by itself, or
        nothing at all)."""
        writes = _Writes(self._staging.keys, self._staging.visibility_timeout)
        for message, item, earlier in self.batch:
            if earlier in self.landed:
                continue  # the attempt whose reply was lost did land
            where = item.route
            # ``message.queue``: the routing key of a default-exchange message, read by
            # ``prepare`` already (``Route.key`` is a property: a call each time)
            queues = (route(self.tables[where.exchange], where.key) if where.exchange
                      else [message.queue])
            self._staging.stage(writes, item, queues)
        writing = writes.commands(self.marker)
        # Without a marker, a ready message (or a batch for one list) is one LPUSH, as
        # Kombu's ``_put`` sends it.
        return writing, len(writing) > 1

    def unknown(self) -> list[tuple[Prepared, _Staged, str]]:
        """The messages whose fate an interrupted attempt leaves unknown, each with the
        marker that tells it: this attempt's, or (before the checks were done) the
        earlier attempt's it was retrying."""
        return [
            (message, staged, self.marker if self.checked or earlier is None else earlier)
            for message, staged, earlier in self.batch if earlier not in self.landed
        ]


def needs_hold(messages: Sequence[Prepared]) -> bool:
    """Whether a message of ``messages`` is not due yet: only then does a publish ask
    the delay mode whether to hold it (which may read Redis)."""
    now = None
    for message in messages:  # the clock is read only for a message with a due time
        due = message.due
        if due is not None:
            if now is None:
                now = time.time()
            if due > now:
                return True
    return False


class Staging:
    """What the sync and asyncio publishers share: messages encoded as list entries,
    markers, the commands of a write, and the memory of publishes whose outcome is
    unknown, so that a retry of the same frames does not duplicate them.

    Args:
        keys: the key names; ``steps``/``bucket0``: Kombu's priority steps and the
            bucket of priority 0.
        visibility_timeout: a held message's restore token is scored ``due`` minus
            this, so a ``restore_visible`` with this timeout pushes it once it is due.
        markers: write a publish marker per attempt (``publish_markers``).
    """

    def __init__(
        self, keys: Keys, steps: Sequence[int], bucket0: int, *, visibility_timeout: float,
        markers: bool,
    ) -> None:
        self.keys = keys
        self.steps = steps
        self.bucket0 = bucket0
        self.visibility_timeout = visibility_timeout
        self.markers = markers
        #: id(frame) -> (frame, route, not_before, staged, marker, monotonic time) of
        #: publishes that failed with an unknown outcome; a retry of the same frame reuses
        #: ``staged``, and skips it if that attempt's ``marker`` exists.
        self._unsettled: dict[
            int, tuple[Frame, Route, datetime | None, _Staged, str, float]
        ] = {}
        self._unsettled_lock = threading.Lock()
        #: (queue, bucket) -> the prefixed name of that list: every publish writes to
        #: one, and the lookup is one dict read instead of two calls (``stage``).
        self._lists: dict[tuple[str, int], str] = {}

    def attempt(self, messages: Sequence[Prepared], hold: bool) -> Attempt | None:
        """Stage ``messages`` for one attempt (a retried message as it was staged
        before; a new one held until due if ``hold``: the delay mode's answer, which the
        driver asks, see ``needs_hold``); ``None`` when there is nothing to send."""
        markers = self.markers
        batch: list[_Attempt] = []
        fresh: str | None = None
        retrying = routed = False
        now = round(time.time(), 6)  # the publish time every entry of the attempt carries
        # One read of the random source for the tags of a batch; one id for one message.
        tags = new_ids(len(messages)) if len(messages) > 1 else (new_id(),)
        for message, tag in zip(messages, tags, strict=True):
            # ``_unsettled`` is read here first: empty, the common case, costs no call
            # (an entry for this frame would have been left by this thread's own earlier
            # attempt, so reading it without the lock cannot miss it).
            kept = self._take_unsettled(message) if markers and self._unsettled else None
            if kept is not None:
                batch.append((message, *kept))
                retrying = True
            else:
                batch.append((message, self._prepare(message, tag, now, hold), None))
                fresh = fresh or tag
            routed = routed or bool(message.route.exchange)
        if not batch:
            return None
        return Attempt(self, batch, fresh, retrying, routed)

    def keep_unsettled(self, attempt: Attempt) -> None:
        """Remember the messages of an attempt whose outcome is unknown (``markers``
        only: without them a retry cannot tell)."""
        if not self.markers:
            return
        now = time.monotonic()
        with self._unsettled_lock:
            for message, staged, marker in attempt.unknown():
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
        bucket = self.bucket0 if priority == 0 else bucket_for(priority, self.steps)
        due = message.due
        if due is not None and (not hold or due <= now):
            due = None
        entry = encode(message.frame, exchange=where.exchange,
                       routing_key=where.key if where.exchange else message.queue,
                       delivery_tag=tag, published=now, due=due)
        return _Staged(where, tag, entry, bucket, due)

    def stage(self, writes: _Writes, staged: _Staged, queues: Sequence[str]) -> None:
        where = staged.route
        if not queues:
            # Kombu drops an unroutable message silently; wiretask keeps it.
            reason = f"unroutable: no queue bound to exchange {where.exchange!r} " \
                     f"with routing key {where.key!r}"
            log.warning("dead-lettering a message for %r: %s", where.queue, reason)
            writes.rpush(self.keys.dead(where.queue),
                         dead_entry(where.queue, reason, staged.entry.encode(),
                                    at=time.time()))
            return
        bucket, lists = staged.bucket, self._lists
        for queue in queues:
            if staged.due is None:
                key = lists.get((queue, bucket))
                if key is None:
                    key = self._list(queue, bucket)
                pushes = writes.pushes.get(key)
                if pushes is None:
                    writes.pushes[key] = [staged.entry]
                else:
                    pushes.append(staged.entry)
            else:
                writes.schedule(queue, f"{staged.tag}{SEP}{queue}", staged.due,
                                queue_key(queue, bucket), staged.entry)

    def _list(self, queue: str, bucket: int) -> str:
        """The prefixed name of ``queue``'s list of ``bucket``, remembered (a bounded
        memory: forgotten all at once when full)."""
        lists = self._lists
        if len(lists) >= _LISTS_LIMIT:
            lists.clear()
        key = lists[queue, bucket] = self.keys.p(queue_key(queue, bucket))
        return key


class Publisher:
    """The sync publisher: one ``Staging`` and the ``Commands`` client.

    Args:
        database: the Redis database.
        hold: asked once per publish call that has a message not yet due: whether to
            hold such messages in the delayed index (else they are pushed at once, and
            their ``eta`` header holds them in the consumer, as Celery sends them). It
            is the delay mode: always (``native``), never (``celery``), or while a
            mover is alive (``auto``: ``Movers.alive``). It may read Redis; it is
            called under the publish error boundary.
        visibility_timeout, markers: as ``Staging``.
    """

    def __init__(
        self, database: Database, *, hold: Callable[[], bool], visibility_timeout: float,
        markers: bool,
    ) -> None:
        self._commands = database.commands
        self._errors = database.errors("publish")
        self._hold = hold
        self.staging = Staging(database.keys, database.steps, database.bucket0,
                               visibility_timeout=visibility_timeout, markers=markers)

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
        hold = False
        if needs_hold(messages):
            with self._errors:  # asked before staging: a failure takes nothing out
                hold = self._hold()  # of the unsettled memory
        attempt = self.staging.attempt(messages, hold)
        if attempt is None:
            return
        run = self._commands.run
        try:
            with self._errors:
                if attempt.retrying:
                    attempt.read_landed(run(attempt.marker_checks()))
                if attempt.routed:
                    attempt.read_tables(run(attempt.table_reads()))
                writing, transaction = attempt.writes()
                if writing:
                    run(writing, atomic=transaction)
        except ConnectionLost:
            self.staging.keep_unsettled(attempt)
            raise


class _Writes:
    """The commands of one publish transaction: the pushes of each list grouped, in
    their order, into one variadic ``LPUSH``; dead letters into one ``RPUSH`` per list;
    delayed holds into one ``HSET`` of their entries, one ``ZADD`` per index, and one
    ``HSET`` and ``ZADD`` of their restore tokens."""

    def __init__(self, keys: Keys, visibility_timeout: float) -> None:
        self._names = keys
        self._visibility_timeout = visibility_timeout
        #: list key -> the entries pushed to it, in order (``Staging.stage`` adds them)
        self.pushes: dict[str, list[str]] = {}
        self._dead: dict[str, list[str]] = {}
        #: (queue, member, due, list, entry) of each held message
        self._held: list[tuple[str, str, float, str, str]] = []

    def rpush(self, key: str, text: str) -> None:
        self._dead.setdefault(key, []).append(text)

    def schedule(self, queue: str, member: str, due: float, name: str, entry: str) -> None:
        self._held.append((queue, member, due, name, entry))

    def commands(self, marker: str) -> list[tuple[Any, ...]]:
        """The transaction's commands, the ``marker`` ('' for none) first; none at all
        when there is nothing to write. A delayed message's entry is written with its
        index entries and its token, so ``DUE`` never finds a member without them."""
        commands: list[tuple[Any, ...]] = []
        if not (self.pushes or self._dead or self._held):
            return commands
        if marker:
            commands.append(("SET", marker, 1, "EX", PUBLISH_MARKER_TTL))
        for key, entries in self.pushes.items():
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
