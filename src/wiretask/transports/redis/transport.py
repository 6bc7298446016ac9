"""Redis transport, wire-compatible with Kombu 5.7's Redis transport (Celery's default).

What wiretask publishes runs on a Celery worker and what Celery publishes runs on
wiretask's worker, sharing queues, ack bookkeeping and bindings. Keys (all behind the
``global_keyprefix`` option, exactly like Kombu):

===================================== ====== ==============================================
key                                   type   content
===================================== ====== ==============================================
``<queue>``, ``<queue>\\x06\\x16<3|6|9>`` list   Kombu envelopes (JSON), one list per
                                             priority bucket; LPUSH in, RPOP/BRPOP out
``_kombu.binding.<exchange>``         set    ``routing_key\\x06\\x16pattern\\x06\\x16queue``
``_kombu.binding_permanent.<ex>``     set    the same members (keeps Kombu 5.7's sweeper off)
``unacked`` / ``unacked_index``       hash / tag -> ``[envelope, exchange, routing_key]`` /
                                      zset   tag -> delivery (or last lease) time
``unacked_mutex``                     string redis-py lock guarding ``restore_visible``
``_wiretask.delayed``                 zset   member -> due time (unix s), all queues
``_wiretask.delayed.messages``        hash   member -> ``[list, queue, envelope]`` JSON
``_wiretask.delayed.queue.<queue>``   zset   member -> due time, one queue's share
``_wiretask.published.<id>``          string publish marker of one publish attempt (one
                                             message or a batch), set by the same script
                                             as the pushes; expires after
                                             ``PUBLISH_MARKER_TTL``
``<queue>.dead``                      list   dead letters, oldest first (RPUSH), each
                                             ``{"reason", "raw", "raw_encoding", "queue",
                                             "at"}``; ``raw_encoding`` is ``"text"`` (raw
                                             is the entry text) or ``"base64"``
===================================== ====== ==============================================

A delayed member is ``<delivery_tag>\\x06\\x16<queue>``: one per destination queue.

**Priorities** follow Kombu: ``priority_steps`` ``[0, 3, 6, 9]``, values clamped to 0..9, and
BRPOP drains bucket 0 first, so on Redis **a lower number is a higher priority**.

**Consuming** first runs the ``POP`` script, which pops *and* records the message in
``unacked``/``unacked_index`` in one atomic step (Kombu's BRPOP + MULTI leaves a gap);
``receive_many`` pops up to ``limit`` of them in the same script run, exactly those that
as many single receives would get. ``ack`` (and ``ack_many``, for a batch) is one
``ACK`` script run. Only
when every bucket is empty does the transport block in BRPOP (Redis cannot block and move
from several lists at once); a message that arrives during that wait is recorded right
after the pop, so a consumer killed (or a connection lost) in that one round trip loses
that message, as with Kombu (kombu#305, celery#4354). With the ``poll_interval`` option
the transport never blocks in BRPOP: it runs ``POP`` again every ``poll_interval``
seconds, which closes that window for good at the price of latency and idle polling.
Entries that are not envelopes are popped by ``POP`` without being recorded and then
written to ``<queue>.dead`` (one round trip in which a crash loses them).

**Delayed delivery** (``delay_mode="native"``): a ``not_before`` message waits in the
``_wiretask.delayed*`` keys, not in ``unacked``, so no visibility timeout can redeliver it
however long it waits (kombu#337). ``receive`` moves the due messages of the queues it
consumes inside ``POP`` and never blocks past the next one, so a wiretask consumer needs
no scheduler; ``due()`` (which the worker calls periodically) and ``run_scheduler`` move
those of every queue, which Celery consumers need. Moved messages are plain entries
with their ``eta`` header, so Celery workers run them too.

**Publishing is idempotent across retries.** Every publish attempt writes one marker key
atomically with its pushes (one ``MULTI``/``EXEC`` transaction for one message or a
whole batch, sent in one write), so the messages and their marker land together or not
at all. When a publish fails with ``ConnectionLost`` its outcome is unknown (the
write may have run and only the reply been lost); the transport remembers each staged
message with its attempt's marker, and when the same ``Frame`` object is published again
(the publish retry driver does exactly that) it reuses the delivery tag and checks that
marker first: a message that already landed is not pushed twice. Every attempt has its
own marker, so a retry that sends only part of an earlier batch, and fails again, still
leaves each message's fate readable. The guarantee lasts ``PUBLISH_MARKER_TTL``
seconds after the first attempt; the cost is one short-lived key per publish call (about
300 s x the call rate keys alive at once) and a transaction instead of a bare LPUSH. The
``publish_markers=False`` option turns this off and publishes exactly as Kombu does.

The hot paths (receive, ack, publish, and the result backend's store) send their
commands through ``wiretask._redis.client.Commands``, on connections it keeps, instead of through
``redis.Redis``: redis-py 8 spends more CPU on its client and pool per command than a
loopback round trip takes.

**Leases.** While this process holds a delivery a heartbeat thread refreshes its
``unacked_index`` score (``ZADD XX``) every ``lease_interval`` seconds, so neither wiretask's
nor Celery's ``restore_visible`` hands a running message to a second consumer. Set
``lease_interval`` below the smallest ``visibility_timeout`` of any consumer on the database.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.exceptions import LockError
from redis.retry import Retry

from wiretask._errormap import map_exceptions
from wiretask._ids import new_id, new_ids
from wiretask._redis import scripts
from wiretask._redis.client import Commands, Target, target_of
from wiretask._redis.errors import REDIS_ERRORS
from wiretask._redis.keys import Keys
from wiretask._redis.options import DelayMode, parse
from wiretask.errors import (
    ConnectionLost,
    ImproperlyConfigured,
    TransportError,
    ValidationError,
)
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.base import (
    Capabilities,
    DeadLetter,
    Delivery,
    Peeked,
    Prepared,
    Settlement,
    Transport,
    queue_names,
)
from wiretask.transports.redis.envelope import (
    SEP,
    BadEntry,
    binding_member,
    bucket_for,
    clamp_priority,
    decode,
    encode,
    mark_redelivered,
    matches_binding,
    queue_key,
    topic_pattern,
)

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState

__all__ = ["RedisDelivery", "RedisTransport", "run_scheduler"]

log = logging.getLogger(__name__)

#: Seconds a publish marker lives: how long after an attempt whose outcome is unknown a
#: retry of it is still recognised (publish retry policies run for seconds).
PUBLISH_MARKER_TTL = 300
#: Most publishes with an unknown outcome remembered for a retry (oldest dropped first).
_UNSETTLED_LIMIT = 10_000

#: Most due delayed messages one ``receive`` moves per queue before it pops (bounds the
#: time the ``POP`` script blocks Redis; the rest move on the next call).
_PROMOTE_LIMIT = 100


class RedisDelivery(Delivery):
    """A message received from Redis; settle it with ``ack``/``reject``/``dead_letter``."""

    def __init__(
        self, transport: RedisTransport, *, frame: Frame, queue: str, redelivered: bool,
        delivery_tag: str, entry: str, exchange: str, routing_key: str,
    ) -> None:
        super().__init__(transport, frame, queue, redelivered)
        #: Kombu's ``properties.delivery_tag``: the field in ``unacked`` and ``unacked_index``.
        self.delivery_tag = delivery_tag
        #: The list entry text as received.
        self.entry = entry
        self.exchange = exchange
        self.routing_key = routing_key
        self._redis = transport

    def _return_on_close(self) -> None:
        """Give the message back (RPUSH, as Kombu's ``restore_unacked``) unless settled."""
        with self._lock:
            if self._settled is None:
                self._redis._restore_tag(self.delivery_tag, False)
                self._settled = "returned to its queue when the transport closed"


class RedisTransport(Transport):
    """Kombu-compatible Redis transport for ``redis://`` and ``rediss://`` URLs.

    Args:
        url: ``redis[s]://[[user]:password@]host[:port][/db][?option=value&...]``. Query
            options are wiretask's own (below) or redis-py connection options; the URL
            wins over keyword arguments.
        delay_mode: ``"native"`` (default): messages with ``not_before`` wait in
            ``_wiretask.delayed`` until ``due()`` moves them; ``"celery"``: they go
            straight to the queue with their ``eta`` header, as Celery sends them, and the
            worker holds them (``capabilities.native_delay`` is then False).
        global_keyprefix: Prepended to every key, as Kombu's option of that name.
        visibility_timeout: Seconds after which an unacked message of a dead consumer is
            restored (Kombu's default 3600).
        lease_interval: Seconds between lease refreshes of held deliveries (default:
            ``visibility_timeout / 6``, at most 60).
        restore_interval: Least seconds between two ``restore_visible`` scans that
            ``receive`` runs (default 30; Kombu's effective cadence is about 100).
        restore_limit: Most messages restored per scan (default: all).
        poll_interval: Seconds between atomic ``POP`` attempts while the queues are
            empty, instead of blocking in BRPOP (default: None, BRPOP). See above.
        publish_markers: Write a marker per message so that retried publishes do not
            duplicate (default True, see above). False publishes as Kombu does (one
            LPUSH, no extra key) for fleets that accept at-least-once publishing.
        priority_steps: Kombu's ``priority_steps`` (default ``[0, 3, 6, 9]``).
        unacked_key, unacked_index_key, unacked_mutex_key, unacked_mutex_expire: Kombu's
            options of those names.
        **redis_options: Passed to ``redis.ConnectionPool`` (``socket_timeout`` defaults to
            15 s and ``socket_connect_timeout`` to 5 s; redis-py's own retries are off,
            the publish retry policy above decides).

    Raises:
        ImproperlyConfigured: bad URL scheme or option.
    """

    def __init__(self, url: str, **options: Any) -> None:
        config = parse(url, options)
        self.url = config.masked_url
        self.delay_mode: DelayMode = config.delay_mode
        self.visibility_timeout = config.visibility_timeout
        self.lease_interval = config.lease_interval
        self.restore_interval = config.restore_interval
        self.restore_limit = config.restore_limit
        self.poll_interval = config.poll_interval
        self.publish_markers = config.publish_markers
        self._steps = config.priority_steps
        self._bucket0 = bucket_for(0, self._steps)
        self._mutex_expire = config.mutex_expire
        self._keys = config.keys
        self.capabilities = Capabilities(
            native_delay=config.delay_mode == "native",
            priorities=True,
            priority_order="lower-first",
            max_priority=9,
            out_of_range_priority="clamp",
            per_message_ttl=False,
            visibility_timeout=config.visibility_timeout,
        )
        # redis-py's own retries are off: a retried LPUSH after a timeout can publish
        # twice, and the publish retry policy above the transport decides anyway.
        redis_options = {**config.redis_kwargs, "retry": Retry(NoBackoff(), 0)}
        try:
            self._pool = redis.ConnectionPool.from_url(config.redis_url, **redis_options)
            # Building (not connecting) one connection checks the options now, not later.
            self._pool.connection_class(**self._pool.connection_kwargs)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"bad Redis connection option for {self.url}: {exc}", setting="broker_url"
            ) from exc
        self._password = self._pool.connection_kwargs.get("password")
        #: Which database this is (``stores_results_of`` compares it with a backend's).
        self._redis = Target.of(self._pool)
        #: One error boundary per action (they keep no state, see ``_errors``).
        self._boundaries: dict[str, map_exceptions] = {}
        timeout = self._pool.connection_kwargs.get("socket_timeout")
        self._socket_timeout: float | None = float(timeout) if timeout else None
        self._client = redis.Redis(connection_pool=self._pool)
        #: The hot paths (receive, ack, publish) go through this, not ``_client``.
        self._commands = Commands(self._pool)
        self._lock = threading.Lock()
        self._held: dict[str, RedisDelivery] = {}
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._cycles: dict[tuple[str, ...], list[str]] = {}
        self._next_restore = 0.0
        #: id(frame) -> (frame, route, not_before, staged, marker, monotonic time) of
        #: publishes that failed with an unknown outcome; a retry of the same frame reuses
        #: ``staged``, and skips it if that attempt's ``marker`` exists.
        self._unsettled: dict[
            int, tuple[Frame, Route, datetime | None, _Staged, str, float]
        ] = {}
        self._unsettled_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RedisTransport {self.url} delay_mode={self.delay_mode}>"

    # -- errors ---------------------------------------------------------------------

    def _errors(self, action: str) -> map_exceptions:
        """``with self._errors(action):`` translates redis-py exceptions by
        ``REDIS_ERRORS`` (the only place they are caught), scrubbing the password. The
        context managers keep no state, so one per action is made once and reused."""
        boundary = self._boundaries.get(action)
        if boundary is None:
            boundary = self._boundaries[action] = map_exceptions(
                REDIS_ERRORS, action, url=self.url, secret=self._password)
        return boundary

    # -- life cycle -----------------------------------------------------------------

    def connect(self) -> None:
        """Check the connection and load the scripts (so that the first ``EVALSHA`` of
        each needs no ``EVAL`` fallback), in one round trip."""
        with self._errors("connect"):
            self._commands.run([("PING",), *(("SCRIPT", "LOAD", script.text)
                                             for script in scripts.TRANSPORT_SCRIPTS)])

    def close(self) -> None:
        """Stop the lease heartbeat, return held deliveries to the front of their queues
        (RPUSH, flagged redelivered, like Kombu's ``restore_unacked``) and disconnect.
        If Redis is unreachable the messages stay in ``unacked`` and come back through
        ``restore_visible`` after ``visibility_timeout``."""
        self._heartbeat_stop.set()
        with self._lock:
            held = list(self._held.values())
            thread, self._heartbeat = self._heartbeat, None
        if thread is not None:
            thread.join(timeout=5)
        for delivery in held:
            try:
                delivery._return_on_close()
            except TransportError as exc:
                log.warning("could not return %s on close: %s", delivery.delivery_tag, exc)
            self._release(delivery)
        self._commands.disconnect()
        self._pool.disconnect()

    # -- producing ------------------------------------------------------------------

    def _declare(self, queue: str) -> None:
        """What Celery's declare does for a queue on its default direct exchange of the
        same name: bind ``queue`` to exchange ``queue`` with routing key ``queue``."""
        self.bind_queue(queue, queue, queue)

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        """Bind ``queue`` to a named exchange (Kombu's ``_queue_bind``), adding the member
        to ``_kombu.binding_permanent.<exchange>`` too so that Kombu 5.7's sweep of
        expiring bindings keeps the table. Fanout exchanges are not supported (Kombu
        routes them over pub/sub, which has no queue to hold a message)."""
        queue_names([queue])
        if not exchange:
            raise ValidationError("exchange", "the default exchange needs no binding")
        if exchange_type not in ("direct", "topic"):
            raise ValidationError("exchange_type", "must be 'direct' or 'topic'",
                                  value=exchange_type)
        pattern = topic_pattern(routing_key) if exchange_type == "topic" else ""
        member = binding_member(routing_key, pattern, queue)
        with self._errors("bind_queue"):
            pipe = self._client.pipeline()
            pipe.sadd(self._keys.binding(exchange), member)
            pipe.sadd(self._keys.binding_permanent(exchange), member)
            pipe.execute()

    def _publish(self, messages: Sequence[Prepared]) -> None:
        """The whole batch, with its publish marker, in one ``MULTI``/``EXEC``
        transaction (one round trip, plus one read of the binding tables of named
        exchanges, and one marker check when retrying): all of it lands or none. With
        ``publish_markers=False`` the same without the marker, and a single ready
        message is one bare ``LPUSH``, as Kombu sends it.

        Raises:
            ConnectionLost: the outcome is unknown; publishing the same frames again
                will not duplicate what landed (see the module doc).
            TransportError: any other failure.
        """
        markers = self.publish_markers
        # (message, staged, marker of its earlier attempt when this is a retry)
        batch: list[tuple[Prepared, _Staged, str | None]] = []
        tags = new_ids(len(messages))
        fresh: str | None = None
        retrying = routed = False  # any retried message; any named exchange
        for message, tag in zip(messages, tags, strict=True):
            kept = self._take_unsettled(message) if markers else None
            if kept is not None:
                batch.append((message, *kept))
                retrying = True
            else:
                batch.append((message, self._prepare(message, tag), None))
                fresh = fresh or tag
            routed = routed or bool(message.route.exchange)
        if not batch:
            return
        # One marker per attempt, named after a tag that is new in this attempt (a
        # retried message's earlier marker must keep meaning "that attempt landed").
        marker = self._marker(fresh or new_id()) if markers else ""
        commands = self._commands
        landed: set[str] = set()
        checked = False
        try:
            with self._errors("publish"):
                earlier = sorted({m for _, _, m in batch if m is not None}) \
                    if retrying else ()
                if earlier:
                    found = commands.run([("EXISTS", m) for m in earlier])
                    landed = {m for m, n in zip(earlier, found, strict=True) if n}
                checked = True
                exchanges = sorted({s.route.exchange for _, s, _ in batch
                                    if s.route.exchange}) if routed else ()
                tables: dict[str, list[str]] = {}
                if exchanges:
                    read = commands.run([("SMEMBERS", self._keys.binding(exchange))
                                         for exchange in exchanges])
                    for exchange, members in zip(exchanges, read, strict=True):
                        tables[exchange] = sorted(_text(m) for m in members)
                writes = _Writes(self._keys)
                for _, item, earlier_marker in batch:
                    if earlier_marker in landed:
                        continue  # the attempt whose reply was lost did land
                    route = item.route
                    queues = (_route(tables[route.exchange], route.key) if route.exchange
                              else [route.key])
                    self._stage(writes, item, queues)
                writing = writes.commands(marker)
                if len(writing) == 1:
                    # One command is atomic by itself: without a marker, a ready message
                    # (or a batch for one list) is one LPUSH, as Kombu's ``_put`` sends it.
                    commands.run(writing)
                elif writing:
                    commands.transaction(writing)
        except ConnectionLost:
            if markers:
                self._keep_unsettled([
                    (message, staged, marker if checked or earlier_marker is None
                     else earlier_marker)
                    for message, staged, earlier_marker in batch
                    if earlier_marker not in landed
                ])
            raise

    def _marker(self, tag: str) -> str:
        return f"{self._keys.prefix}_wiretask.published.{tag}"

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
        frame, route, not_before, staged, marker, _ = kept
        if frame is message.frame and route == message.route and not_before == message.not_before:
            return staged, marker
        return None

    def _prepare(self, message: Prepared, tag: str | None = None) -> _Staged:
        frame = message.frame
        route = message.route
        key = route.key
        # An int outside 0..9 arrives clamped (``out_of_range_priority="clamp"``) and is
        # written as is, like Kombu (celery#8967): a worker re-publishing a Celery frame
        # with priority 15 must not fail. The calling API refuses such values earlier.
        priority = message.priority
        bucket = self._bucket0 if priority == 0 else bucket_for(priority, self._steps)
        due = message.due
        if due is not None and (self.delay_mode == "celery" or due <= time.time()):
            due = None
        if tag is None:
            tag = new_id()
        entry = encode(frame, exchange=route.exchange, routing_key=key, delivery_tag=tag)
        return _Staged(route, tag, entry, bucket, due)

    def _stage(self, writes: _Writes, staged: _Staged, queues: Sequence[str]) -> None:
        route = staged.route
        if not queues:
            # Kombu drops an unroutable message silently; wiretask keeps it.
            reason = f"unroutable: no queue bound to exchange {route.exchange!r} " \
                     f"with routing key {route.key!r}"
            log.warning("dead-lettering a message for %r: %s", route.queue, reason)
            writes.rpush(self._keys.dead(route.queue),
                         _dead_entry(route.queue, reason, staged.entry.encode()))
            return
        for queue in queues:
            name = queue_key(queue, staged.bucket)
            if staged.due is None:
                writes.lpush(self._keys.p(name), staged.entry)
            else:
                writes.schedule(queue, f"{staged.tag}{SEP}{queue}", staged.due,
                                json.dumps([name, queue, staged.entry]))

    def _lookup(self, reader: redis.Redis, exchange: str, routing_key: str) -> list[str]:
        """The queues a message reaches (``virtual.Channel._lookup``): the default
        exchange routes to the queue named by the routing key; a named one through its
        binding table."""
        if not exchange:
            return [routing_key] if routing_key else []
        members = cast(set[bytes], reader.smembers(self._keys.binding(exchange)))
        return _route(sorted(_text(m) for m in members), routing_key)

    # -- consuming ------------------------------------------------------------------

    def _receive(self, queues: list[str], timeout: float) -> RedisDelivery | None:
        """Next message from ``queues``: priority bucket first (0 before 3, 6, 9), then
        queue order, rotated round-robin after each delivery (Kombu's default
        ``queue_order_strategy``), FIFO within a list. Waits up to ``timeout`` seconds.

        Delayed messages of ``queues`` that are due are moved into their lists first, in
        the same script, so a consumer needs no scheduler for its own queues; Celery
        consumers of a queue rely on ``due()`` (the worker's or ``run_scheduler``)."""
        received = self._receive_many(queues, 1, timeout)
        return received[0] if received else None

    def _receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> list[RedisDelivery]:
        """Up to ``limit`` messages in one round trip: exactly those that ``limit``
        consecutive ``receive`` calls would return (same priority and queue order, same
        round robin), each recorded in ``unacked`` by the same ``POP`` script. Waits up
        to ``timeout`` seconds for the first one, never for more."""
        names, deadline = queues, time.monotonic() + timeout
        self._maybe_restore()
        while True:
            deliveries, popped, next_due, _ = self._pop(names, limit, (), ())
            if deliveries:
                return deliveries
            if popped:
                continue  # only dead letters came out: look again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if next_due is not None:  # never sleep past the next delayed message here
                remaining = min(remaining, max(next_due - time.time(), 0.0))
            if self.poll_interval is not None:
                time.sleep(min(remaining, self.poll_interval))
                continue
            order = self._order(names)
            lists = [self._keys.p(queue_key(queue, step))
                     for step in self._steps for queue in order]
            owners = dict(zip(lists, [q for _ in self._steps for q in order], strict=True))
            with self._errors("receive"):
                blocked = self._commands.call("BRPOP", *lists, self._block_for(remaining))
            if blocked:
                key, raw = cast(list[bytes], blocked)
                deliveries = self._take_all(names, [(owners[_text(key)], raw, "")])
                if deliveries:
                    return deliveries

    def _ack_and_receive(
        self, deliveries: list[Delivery], queues: list[str], limit: int
    ) -> list[RedisDelivery]:
        """Acknowledge ``deliveries`` and take up to ``limit`` messages, in one ``POP``
        script run: the acks land with the pops or neither does. Never waits. A
        delivery that was settled already raises ``TransportError`` before anything is
        done; deliveries of another transport are acknowledged by their own ``ack()``
        first."""
        return self._store_ack_and_receive((), deliveries, queues, limit)[0]

    def stores_results_of(self, backend: object) -> bool:
        """Whether ``backend`` keeps its results in this transport's Redis database, so
        that ``store_ack_and_receive`` can write them in the script that acks."""
        return target_of(backend) == self._redis

    def store_ack_and_receive(
        self, results: Sequence[tuple[Delivery, PendingState]], deliveries: Sequence[Delivery],
        queues: Sequence[str], *, limit: int,
    ) -> tuple[list[RedisDelivery], list[int]]:
        """One ``POP`` run that writes each result of ``results`` (a state the
        result backend prepared, for a delivery of this transport) and acknowledges
        its delivery, if the task has no state stored yet; acknowledges
        ``deliveries``; and takes up to ``limit`` (0: none) messages, never waiting.
        Returns the messages taken and the positions in ``results`` that were not
        written because a state was already stored: their deliveries stay
        unacknowledged, for the caller to store under the full rules
        (``RedisBackend.store_pending``) and then ack. Only for a result backend on
        this same database (``stores_results_of``)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", f"must be an int >= 0, got {limit!r}")
        names = queue_names(queues, required=True)
        return self._store_ack_and_receive(results, deliveries, names, limit)

    def _store_ack_and_receive(
        self, results: Sequence[tuple[Delivery, PendingState]], deliveries: Sequence[Delivery],
        names: list[str], limit: int,
    ) -> tuple[list[RedisDelivery], list[int]]:
        self._maybe_restore()
        by_delivery = {id(d): p for d, p in results}
        received: list[RedisDelivery] = []
        not_stored: list[int] = []

        def write(pending: list[RedisDelivery]) -> list[RedisDelivery]:
            plain = [d.delivery_tag for d in pending if id(d) not in by_delivery]
            stores = [(d, by_delivery[id(d)]) for d in pending if id(d) in by_delivery]
            got, _, _, skipped = self._pop(names, limit, plain, stores)
            received.extend(got)
            skipped_ids = {id(stores[i][0]) for i in skipped}
            not_stored.extend(i for i, (d, _) in enumerate(results) if id(d) in skipped_ids)
            # Those stay unsettled: the caller stores them under the full rules first.
            return [d for d in pending if id(d) in skipped_ids]

        self._settle_many([*deliveries, *(d for d, _ in results)], write, strict=True)
        return received, not_stored

    def _pop(
        self, names: list[str], limit: int, ack: Sequence[str],
        results: Sequence[tuple[RedisDelivery, PendingState]],
    ) -> tuple[list[RedisDelivery], int, float | None, list[int]]:
        """One ``POP`` run (writing ``results`` and acknowledging the tags in ``ack``
        first): the deliveries, how many entries were popped (dead letters included),
        the due time of the next delayed message of these queues when none was, and
        the positions of the results that were not written."""
        k = self._keys
        order = self._order(names)
        lists = [k.p(queue_key(queue, step)) for step in self._steps for queue in order]
        call = scripts.pop(k, queues=order, lists=lists, now=time.time(),
                           promote_limit=_PROMOTE_LIMIT, limit=limit, ack_tags=ack,
                           results=[(d.delivery_tag, p) for d, p in results] if results else ())
        with self._errors("receive"):
            reply = scripts.read_pop(self._commands.script(call), order)
        if not reply.taken:
            return [], 0, reply.next_due, reply.not_stored
        return self._take_all(names, reply.entries), reply.taken, None, reply.not_stored

    def _take_all(
        self, names: list[str], popped: list[tuple[str, bytes, str]]
    ) -> list[RedisDelivery]:
        """Deliveries for popped ``(queue, entry, tag)``s, rotating the round robin for
        each, as ``POP`` did. Every entry is handled even if one fails (a dead-letter
        write, the BRPOP path's recording); the failure is raised only when no
        delivery came out, so none is left held without its caller knowing."""
        deliveries: list[RedisDelivery] = []
        error: TransportError | None = None
        for queue, raw, tag in popped:
            try:
                delivery = self._take(queue, raw, tag or None)
            except TransportError as exc:
                error = error or exc
                continue
            if delivery is not None:
                self._rotate(names, queue)
                deliveries.append(delivery)
        if error is not None:
            if not deliveries:
                raise error
            log.warning("receive: %s", error)
        return deliveries

    def _block_for(self, remaining: float) -> float:
        # One BRPOP must answer before the socket timeout: block at most half of it
        # (and receive loops). Never 0, which means "forever" to Redis; its timeout
        # resolution is a millisecond, 10 ms keeps the number exact.
        if self._socket_timeout:
            remaining = min(remaining, self._socket_timeout / 2)
        return max(round(remaining, 3), 0.01)

    def _order(self, names: list[str]) -> list[str]:
        with self._lock:
            return list(self._cycles.get(tuple(names), names))

    def _rotate(self, names: list[str], served: str) -> None:
        if len(names) < 2:
            return
        with self._lock:
            order = [q for q in self._cycles.get(tuple(names), names) if q != served]
            self._cycles[tuple(names)] = [*order, served]

    def _take(self, queue: str, raw: bytes, tag: str | None) -> RedisDelivery | None:
        """Turn a popped entry into a delivery; dead-letter it if it is not an envelope.
        ``tag`` is set when ``POP`` already recorded it in ``unacked``."""
        try:
            received = decode(raw, queue=queue)
        except BadEntry as exc:
            log.warning("dead-lettering an entry of %r: %s", queue, exc.reason)
            with self._errors("dead-letter"):
                pipe = self._client.pipeline()
                pipe.rpush(self._keys.dead(queue), _dead_entry(queue, exc.reason, raw))
                if tag is not None:
                    pipe.zrem(self._keys.unacked_index, tag)
                    pipe.hdel(self._keys.unacked, tag)
                pipe.execute()
            return None
        entry = raw.decode("utf-8")
        if tag is None:  # BRPOP path: Kombu's QoS.append (MULTI ZADD + HSET)
            stored = f"[{entry}, {json.dumps(received.exchange)}, " \
                     f"{json.dumps(received.routing_key)}]"
            with self._errors("receive"):
                self._commands.run([
                    ("MULTI",),
                    ("ZADD", self._keys.unacked_index, repr(time.time()),
                     received.delivery_tag),
                    ("HSET", self._keys.unacked, received.delivery_tag, stored),
                    ("EXEC",),
                ])
        delivery = RedisDelivery(
            self, frame=received.frame, queue=queue, redelivered=received.redelivered,
            delivery_tag=received.delivery_tag, entry=entry, exchange=received.exchange,
            routing_key=received.routing_key,
        )
        self._hold(delivery)
        return delivery

    # -- settling (called by RedisDelivery under its lock) -----------------------------

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        held = cast(RedisDelivery, delivery)
        if how in ("ack", "reject"):
            self._forget(held)
        elif how == "requeue":
            self._restore_tag(held.delivery_tag, True)
        else:
            self._dead_letter_delivery(held, reason)
        self._release(held)

    def _forget(self, *deliveries: RedisDelivery) -> None:
        """ack / reject(requeue=False): Kombu's ``_remove_from_indices`` (ZREM + HDEL),
        one ``ACK`` script call for any number of deliveries."""
        with self._errors("ack"):
            self._commands.script(scripts.ack(self._keys, [d.delivery_tag for d in deliveries]))

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        """Acknowledge several deliveries in one round trip (one ``ACK`` script call).
        Each is settled as by its own ``ack()``; one that was settled already raises
        ``TransportError`` after the others were acknowledged. Deliveries of another
        transport are acknowledged one by one."""

        def write(pending: list[RedisDelivery]) -> list[RedisDelivery]:
            if pending:
                self._forget(*pending)
            return []

        self._settle_many(deliveries, write, strict=False)

    def _settle_many(
        self, deliveries: Sequence[Delivery],
        write: Callable[[list[RedisDelivery]], list[RedisDelivery]], *, strict: bool,
    ) -> None:
        """Acknowledge ``deliveries`` through ``write`` (given this transport's unsettled
        ones; it returns those it left unacknowledged), holding each one's lock across
        it, as ``ack()`` does. Others' deliveries are acked by their own ``ack()`` first.
        An already settled one raises ``TransportError``: before anything is done when
        ``strict``, else after."""
        ours: dict[int, RedisDelivery] = {}
        first: TransportError | None = None
        for delivery in deliveries:
            if isinstance(delivery, RedisDelivery) and delivery._transport is self:
                ours[id(delivery)] = delivery
            else:
                try:
                    delivery.ack()
                except TransportError as exc:
                    first = first or exc
        stale: list[RedisDelivery] = []
        acked: list[RedisDelivery] = []
        # The locks are taken in one global order, so that two calls cannot deadlock.
        locked = sorted(ours.values(), key=lambda d: (d.delivery_tag, id(d)))
        taken: list[RedisDelivery] = []
        try:
            for delivery in locked:
                delivery._lock.acquire()
                taken.append(delivery)
            stale = [d for d in locked if d._settled is not None]
            if not (strict and stale):
                pending = [d for d in locked if d._settled is None]
                kept = {id(d) for d in write(pending)}
                acked = [d for d in pending if id(d) not in kept]
                for delivery in acked:
                    delivery._settled = "acked"
        finally:
            for delivery in taken:
                delivery._lock.release()
        for delivery in acked:
            self._release(delivery)
        if stale:
            d = stale[0]
            raise TransportError(
                f"delivery {d.delivery_tag} from {d.queue!r} was already {d._settled}",
                url=self.url,
            )
        if first is not None:
            raise first

    def _dead_letter_delivery(self, delivery: RedisDelivery, reason: str) -> None:
        with self._errors("dead-letter"):
            pipe = self._client.pipeline()
            pipe.rpush(self._keys.dead(delivery.queue),
                       _dead_entry(delivery.queue, reason, delivery.entry.encode()))
            pipe.zrem(self._keys.unacked_index, delivery.delivery_tag)
            pipe.hdel(self._keys.unacked, delivery.delivery_tag)
            pipe.execute()

    def _restore_tag(self, tag: str, leftmost: bool) -> bool:
        """Kombu's ``QoS.restore_by_tag``: under WATCH of ``unacked``, remove the tag from
        both indices and push the stored message, flagged redelivered, with the same
        delivery tag, to every queue its exchange and routing key reach now. RPUSH
        (next in line) for visibility and close restores, LPUSH (back of the line) for
        ``reject(requeue=True)``. Returns whether a message was stored under ``tag``."""
        keys = self._keys
        found = [False]  # set by the last (successful) attempt of the transaction

        def transaction(pipe: Pipeline) -> None:
            stored = cast(bytes | None, pipe.hget(keys.unacked, tag))
            pushes: list[tuple[str, str]] = []
            dead: tuple[str, str] | None = None
            if stored is not None:
                pushes, dead = self._restorable(pipe, stored)
            pipe.multi()
            pipe.zrem(keys.unacked_index, tag)
            pipe.hdel(keys.unacked, tag)
            for key, text in pushes:
                (pipe.lpush if leftmost else pipe.rpush)(key, text)
            if dead is not None:
                pipe.rpush(*dead)
            found[0] = stored is not None

        with self._errors("restore"):
            self._client.transaction(transaction, keys.unacked)
        return found[0]

    def _restorable(
        self, reader: Pipeline, stored: bytes
    ) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
        """(list, text) pushes for an ``unacked`` value, or a dead letter if it cannot be
        restored (Kombu would drop it, or fail the whole restore scan)."""
        try:
            message, exchange, routing_key = json.loads(stored)
        except (ValueError, TypeError):
            message = exchange = routing_key = None
        if not (isinstance(message, dict) and isinstance(exchange, str)
                and isinstance(routing_key, str)):
            reason = "unacked entry is not [message, exchange, routing_key] JSON"
            return [], (self._keys.dead("unacked"), _dead_entry("unacked", reason, stored))
        mark_redelivered(message)
        text = json.dumps(message)
        queues = self._lookup(reader, exchange, routing_key)
        if not queues:
            reason = f"unroutable on restore: exchange {exchange!r}, key {routing_key!r}"
            queue = routing_key or "unacked"
            return [], (self._keys.dead(queue), _dead_entry(queue, reason, text.encode()))
        properties = message.get("properties")
        priority = clamp_priority(properties if isinstance(properties, dict) else {})
        bucket = bucket_for(priority, self._steps)
        return [(self._keys.p(queue_key(q, bucket)), text) for q in queues], None

    # -- leases and visibility ----------------------------------------------------------

    def _hold(self, delivery: RedisDelivery) -> None:
        with self._lock:
            self._held[delivery.delivery_tag] = delivery
            if self._heartbeat is None:
                self._heartbeat_stop = threading.Event()
                self._heartbeat = threading.Thread(
                    target=self._renew_leases, args=(self._heartbeat_stop,),
                    name="wiretask-redis-leases", daemon=True,
                )
                self._heartbeat.start()

    def _release(self, delivery: RedisDelivery) -> None:
        with self._lock:
            if self._held.get(delivery.delivery_tag) is delivery:
                del self._held[delivery.delivery_tag]

    def _renew_leases(self, stop: threading.Event) -> None:
        """Heartbeat thread: ``ZADD XX`` the current time for every held tag, so a
        restorer (ours or Kombu's) sees a fresh score. XX never re-adds a tag that an
        ack removed meanwhile. Exits when nothing is held (restarted on demand)."""
        while not stop.wait(self.lease_interval):
            with self._lock:
                tags = list(self._held)
                if not tags:
                    if self._heartbeat is threading.current_thread():
                        self._heartbeat = None
                    return
            now = time.time()
            try:
                with self._errors("lease renewal"):
                    self._client.zadd(self._keys.unacked_index,
                                      dict.fromkeys(tags, now), xx=True)
            except TransportError as exc:
                log.warning("could not renew %d lease(s): %s", len(tags), exc)

    def _maybe_restore(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_restore:
                return
            self._next_restore = now + self.restore_interval
        self.restore_visible()

    def restore_visible(self) -> int:
        """Kombu's ``QoS.restore_visible``: under the non-blocking ``unacked_mutex`` lock,
        restore (RPUSH, flagged redelivered) every message whose ``unacked_index`` score
        is older than ``visibility_timeout`` (at most ``restore_limit``). Returns how many
        were restored; 0 when another process holds the mutex."""
        ceiling = time.time() - self.visibility_timeout
        with self._errors("restore_visible"):
            lock = self._client.lock(self._keys.unacked_mutex, timeout=self._mutex_expire)
            if not lock.acquire(blocking=False):
                return 0
            try:
                rows = cast(list[tuple[bytes, float]], self._client.zrange(
                    self._keys.unacked_index, ceiling, 0, desc=True, byscore=True,
                    withscores=True, offset=None if self.restore_limit is None else 0,
                    num=self.restore_limit,
                ))
                return sum(self._restore_tag(_text(tag), False) for tag, _ in rows)
            finally:
                try:
                    lock.release()
                except LockError:  # expired meanwhile; Kombu ignores LockNotOwnedError
                    pass

    # -- delayed delivery ---------------------------------------------------------------

    def due(self, *, limit: int = 1000) -> int:
        """Move every due delayed message into its list (``DUE`` script, ``limit`` per
        call to Redis); return how many moved. Safe to call from many processes."""
        total = 0
        while True:
            with self._errors("due"):
                moved = int(cast(int, self._commands.script(
                    scripts.due(self._keys, now=time.time(), limit=limit))))
            total += moved
            if moved < limit:
                return total

    # -- inspecting and housekeeping ------------------------------------------------------

    def size(self, queue: str) -> int:
        queue_names([queue])
        with self._errors("size"):
            pipe = self._client.pipeline(transaction=False)
            for step in self._steps:
                pipe.llen(self._keys.p(queue_key(queue, step)))
            pipe.zcard(self._keys.delayed_queue(queue))
            return sum(int(n) for n in pipe.execute())

    def purge(self, queue: str) -> int:
        queue_names([queue])
        lists = [self._keys.p(queue_key(queue, step)) for step in self._steps]
        with self._errors("purge"):
            return int(cast(int, self._commands.script(
                scripts.purge(self._keys, queue, lists=lists))))

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        """Ready messages in delivery order (bucket 0 first, oldest first), then scheduled
        ones by due time. Entries that are not envelopes are left out."""
        queue_names([queue])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", f"must be an int >= 0, got {limit!r}")
        found: list[Peeked] = []
        with self._errors("peek"):
            for step in self._steps:
                if len(found) >= limit:
                    return found
                entries = cast(list[bytes], self._client.lrange(
                    self._keys.p(queue_key(queue, step)), -(limit - len(found)), -1))
                for raw in reversed(entries):
                    frame = _frame_or_none(raw, queue)
                    if frame is not None:
                        found.append(Peeked(frame=frame, queue=queue, state="ready"))
            if len(found) >= limit:
                return found
            rows = cast(list[tuple[bytes, float]], self._client.zrange(
                self._keys.delayed_queue(queue), 0, limit - len(found) - 1, withscores=True))
            stored = cast(list[bytes | None], self._client.hmget(
                self._keys.delayed_messages, [m for m, _ in rows])) if rows else []
        for (_, due), item in zip(rows, stored, strict=True):
            if item is None:
                continue
            frame = _frame_or_none(json.loads(item)[2], queue)
            if frame is not None:
                found.append(Peeked(frame=frame, queue=queue, state="scheduled",
                                    not_before=datetime.fromtimestamp(due, UTC)))
        return found

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Entries of ``<queue>.dead``, oldest first."""
        queue_names([queue])
        with self._errors("dead_letters"):
            rows = cast(list[bytes], self._client.lrange(self._keys.dead(queue), 0, -1))
        return [_read_dead_entry(queue, row) for row in rows]


class _Staged(NamedTuple):
    """A message encoded for publishing: its list entry, bucket and due time."""

    route: Route
    tag: str
    entry: str
    bucket: int
    due: float | None


class _Writes:
    """The commands of one publish transaction: the pushes of each list grouped, in
    their order, into one variadic ``LPUSH``; dead letters into one ``RPUSH`` per list;
    delayed holds into one ``HSET`` of their entries and one ``ZADD`` per index."""

    def __init__(self, keys: Keys) -> None:
        self._names = keys
        self._pushes: dict[str, list[str]] = {}
        self._dead: dict[str, list[str]] = {}
        self._held: list[tuple[str, str, str, str]] = []  # (queue, member, due, stored)

    def lpush(self, key: str, entry: str) -> None:
        entries = self._pushes.get(key)
        if entries is None:
            self._pushes[key] = [entry]
        else:
            entries.append(entry)

    def rpush(self, key: str, text: str) -> None:
        self._dead.setdefault(key, []).append(text)

    def schedule(self, queue: str, member: str, due: float, stored: str) -> None:
        self._held.append((queue, member, repr(due), stored))

    def commands(self, marker: str) -> list[tuple[Any, ...]]:
        """The transaction's commands, the ``marker`` ('' for none) first; none at all
        when there is nothing to write. A delayed message's entry is written with its
        index entries, so ``DUE`` never finds a member without its entry."""
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
            names = self._names
            held: list[str] = []
            everything: list[str] = []
            per_queue: dict[str, list[str]] = {}
            for queue, member, due, stored in self._held:
                held += (member, stored)
                everything += (due, member)
                per_queue.setdefault(queue, []).extend((due, member))
            commands.append(("HSET", names.delayed_messages, *held))
            commands += [("ZADD", names.delayed_queue(queue), *pairs)
                         for queue, pairs in per_queue.items()]
            commands.append(("ZADD", names.delayed, *everything))
        return commands


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _route(members: Sequence[str], routing_key: str) -> list[str]:
    return sorted({q for m in members if (q := matches_binding(m, routing_key)) is not None})


def _dead_entry(queue: str, reason: str, raw: bytes) -> str:
    try:
        text, encoding = raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return json.dumps({"reason": reason, "raw": text, "raw_encoding": encoding,
                       "queue": queue, "at": time.time()})


def _read_dead_entry(queue: str, row: bytes) -> DeadLetter:
    try:
        item = json.loads(row)
        raw_text = item["raw"]
        raw = (base64.b64decode(raw_text) if item.get("raw_encoding") == "base64"
               else raw_text.encode("utf-8"))
        reason, at = str(item["reason"]), float(item.get("at", 0.0))
    except (ValueError, TypeError, KeyError, AttributeError):
        return DeadLetter(queue=queue, reason="unreadable dead-letter entry", raw=row)
    return DeadLetter(queue=queue, reason=reason, frame=_frame_or_none(raw, queue),
                      raw=raw, at=at)


def _frame_or_none(raw: bytes | str, queue: str) -> Frame | None:
    try:
        return decode(raw, queue=queue).frame
    except BadEntry:
        return None


def run_scheduler(
    url: str, *, interval: float = 1.0, stop_event: threading.Event | None = None,
    limit: int = 1000, **options: Any,
) -> int:
    """Move due delayed messages every ``interval`` seconds until ``stop_event`` is set
    (forever without one); return how many were moved. Outages are logged and waited
    out. Several schedulers may run at once: the ``DUE`` script never moves a message
    twice. ``options`` are ``RedisTransport``'s (``global_keyprefix`` must match the
    publishers')."""
    if not (interval > 0 and math.isfinite(interval)):
        raise ValidationError("interval", "must be a positive number of seconds",
                              value=interval)
    stop = stop_event or threading.Event()
    transport = RedisTransport(url, **options)
    total = 0
    try:
        while True:
            try:
                total += transport.due(limit=limit)
            except ConnectionLost as exc:
                log.warning("scheduler: %s; retrying in %g s", exc, interval)
            if stop.wait(interval):
                return total
    finally:
        transport.close()
