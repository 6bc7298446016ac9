"""The Lua scripts of the Redis transport and result backend, each with its builder.

Each script runs atomically on the server. Keys named in ``KEYS`` arrive with
``global_keyprefix`` already applied. ``DUE`` and ``POP`` build key names at run time from
``ARGV`` (the prefix and the stored destination), which is fine on a single Redis server
or a replica set but not on Redis Cluster (nor is Kombu's transport). ``cjson`` is the
JSON library every Redis ships to Lua.

A script addresses its inputs by position (``KEYS[3]``, ``ARGV[7]``); only its
**builder** here knows those positions. Callers pass named values, the builder checks
that they fit together (refusing, say, a bucket list missing for one queue) and lays them
out in a ``ScriptCall`` that ``wiretask._redis.client.Commands.script`` runs. ``POP``'s
reply is read back by ``read_pop``, ``STATS``' by ``read_stats``. The scripts' text is
what Kombu-compatible deployments run: it changes only together with ``spec/TRANSPORTS.md`` §1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs

from wiretask._redis.keys import Keys
from wiretask.errors import ValidationError
from wiretask.protocol.states import PendingState

__all__ = [
    "ACK",
    "DEAD_LETTER",
    "DUE",
    "POP",
    "PURGE",
    "STATS",
    "STORE_IF_ABSENT",
    "TRANSPORT_SCRIPTS",
    "Due",
    "Lanes",
    "Popped",
    "Script",
    "ScriptCall",
    "Stats",
    "ack",
    "dead_letter",
    "due",
    "pop",
    "purge",
    "read_due",
    "read_pop",
    "read_stats",
    "stats",
    "store_if_absent",
    "write_command",
]


@attrs.frozen
class Script:
    """A Lua script and its SHA1 (the name ``EVALSHA`` runs it by)."""

    text: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.text.encode("utf-8"), usedforsecurity=False).hexdigest()


class ScriptCall(NamedTuple):
    """A script with its ``KEYS`` and ``ARGV`` laid out, as its builder made them."""

    script: Script
    keys: list[Any]
    args: list[Any]


def write_command(expires: float | None) -> tuple[str, ...]:
    """The Redis command (and its expiry argument) that stores a state expiring in
    ``expires`` seconds: ``SET``, ``SETEX`` (whole seconds, what Celery sends) or
    ``PSETEX``. The commands by name: redis-py 8 deprecates its setex()/psetex()
    helpers."""
    if expires is None:
        return ("SET",)
    if expires == int(expires):
        return ("SETEX", str(int(expires)))
    return ("PSETEX", str(max(1, int(expires * 1000))))


#: Promote the consumed queues' due delayed messages, then pop up to ``limit`` messages
#: and record each as unacked, and leased, in the same step. A held message with a
#: restore token (see ``DUE``) is promoted only if its token is still there.
#:
#: KEYS: [1] unacked_index (zset), [2] unacked (hash), [3] the due index, [4] the entry
#: hash, [5] the leases (zset: tag -> the time its lease runs out), [6 .. 5+n] the
#: consumed queues' own delayed indexes, then the bucket lists, bucket-major: bucket b's
#: list of queue q is KEYS[6 + n + b * n + (q - 1)], then r result keys. ARGV: [1] now
#: (client clock, as Kombu's ``QoS.append``), [2] n, [3] the global key prefix, [4] most
#: promotions per queue, [5] limit (0: pop nothing), [6] a, the number of tags to
#: acknowledge, [7] r, [8] when the leases of the popped messages run out, [9 .. 8+n]
#: the queue names in the caller's current round-robin order (the routing key when an
#: entry names none), then the a delivery tags to acknowledge (``ACK``'s removals), then
#: r results, four values each: the delivery tag, the value, the write command (``SET``,
#: ``SETEX`` or ``PSETEX``) and its expiry. A result is written (and published, as the
#: result backend's first-state script does) only if its key does not exist yet; its
#: delivery is acknowledged only then. So a consumer stores what it finished, settles
#: it and takes more in one round trip, store before ack.
#:
#: The pops are exactly those of ``limit`` consecutive single receives: each takes the
#: first non-empty list in BRPOP order (bucket 0 before 3, 6, 9; then queue order), and a
#: delivery moves its queue to the end of the order (round robin), which the caller
#: repeats on its side. Returns ``{count, next due, not stored, q, entry, tag, ...}``:
#: ``not stored`` the 1-based positions of the results whose key existed (unwritten,
#: their deliveries unacknowledged);
#: ``q`` the queue's 1-based position in ARGV's order; the tag is '' when the entry is
#: not an envelope with a string ``properties.delivery_tag`` (popped but not recorded,
#: and it does not rotate the order: the caller dead-letters it). ``next due`` is set
#: only when nothing was popped: the next delayed message's due time, or '', so that the
#: caller never blocks past it. The unacked value is Kombu's ``[message, exchange,
#: routing_key]`` JSON with the entry embedded verbatim (Kombu re-serializes the parsed
#: dict, which gives the same text for entries Kombu wrote). The lease is wiretask's
#: own record (Kombu ignores the key): a lease nobody renews (a consumer that died, or
#: never got this reply) is restored after its own timeout, not Kombu's.
POP = Script("""
local now = ARGV[1]
local n = tonumber(ARGV[2])
local limit = tonumber(ARGV[5])
local acks = tonumber(ARGV[6])
local results = tonumber(ARGV[7])
local lease = ARGV[8]
local first_list = 6 + n
local buckets = (#KEYS - 5 - n - results) / n
local not_stored = {}
local first_result = 9 + n + acks
for r = 1, results do
  local key = KEYS[#KEYS - results + r]
  local a = first_result + (r - 1) * 4
  if redis.call('EXISTS', key) == 1 then
    not_stored[#not_stored + 1] = r
  else
    if ARGV[a + 2] == 'SET' then
      redis.call('SET', key, ARGV[a + 1])
    else
      redis.call(ARGV[a + 2], key, ARGV[a + 3], ARGV[a + 1])
    end
    redis.call('PUBLISH', key, ARGV[a + 1])
    redis.call('ZREM', KEYS[1], ARGV[a])
    redis.call('HDEL', KEYS[2], ARGV[a])
    redis.call('ZREM', KEYS[5], ARGV[a])
  end
end
for t = 9 + n, 8 + n + acks do
  redis.call('ZREM', KEYS[1], ARGV[t])
  redis.call('HDEL', KEYS[2], ARGV[t])
  redis.call('ZREM', KEYS[5], ARGV[t])
end
for q = 6, 5 + n do
  local due = redis.call('ZRANGE', KEYS[q], '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[4])
  for _, member in ipairs(due) do
    local stored = redis.call('HGET', KEYS[4], member)
    redis.call('ZREM', KEYS[q], member)
    redis.call('ZREM', KEYS[3], member)
    redis.call('HDEL', KEYS[4], member)
    if stored then
      local entry = cjson.decode(stored)
      local owned = true
      if entry[4] then
        owned = redis.call('HDEL', KEYS[2], member) == 1
        redis.call('ZREM', KEYS[1], member)
      end
      if owned then redis.call('LPUSH', ARGV[3] .. entry[1], entry[3]) end
    end
  end
end
local order = {}
for q = 1, n do order[q] = q end
local out = {0, '', not_stored}
local count = 0
while count < limit do
  local raw, q, pos = nil, nil, nil
  for b = 0, buckets - 1 do
    for p = 1, n do
      raw = redis.call('RPOP', KEYS[first_list + b * n + order[p] - 1])
      if raw then q, pos = order[p], p break end
    end
    if raw then break end
  end
  if not raw then break end
  local tag = ''
  local ok, msg = pcall(cjson.decode, raw)
  if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
    local props = msg.properties
    if type(props.delivery_tag) == 'string' and props.delivery_tag ~= '' then
      tag = props.delivery_tag
      local info = props.delivery_info
      if type(info) ~= 'table' then info = {} end
      local exchange = info.exchange
      if type(exchange) ~= 'string' then exchange = '' end
      local routing_key = info.routing_key
      if type(routing_key) ~= 'string' then routing_key = ARGV[8 + q] end
      redis.call('ZADD', KEYS[1], now, tag)
      redis.call('HSET', KEYS[2], tag, '[' .. raw .. ', ' .. cjson.encode(exchange)
                 .. ', ' .. cjson.encode(routing_key) .. ']')
      redis.call('ZADD', KEYS[5], lease, tag)
      table.remove(order, pos)
      order[n] = q
    end
  end
  out[#out + 1] = q
  out[#out + 1] = raw
  out[#out + 1] = tag
  count = count + 1
end
out[1] = count
if count > 0 then return out end
local next_due = nil
for q = 6, 5 + n do
  local head = redis.call('ZRANGE', KEYS[q], 0, 0, 'WITHSCORES')
  if head[2] and (next_due == nil or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
if next_due ~= nil then out[2] = string.format('%.6f', next_due) end
return out
""")


def pop(
    keys: Keys, *, queues: Sequence[str], lists: Sequence[str], now: float,
    promote_limit: int, limit: int, lease_until: float,
    ack_tags: Sequence[str] = (), results: Sequence[tuple[str, PendingState]] = (),
) -> ScriptCall:
    """``POP`` for ``queues`` (in the caller's current round-robin order), whose bucket
    lists are ``lists``, bucket-major (every queue's list of bucket 0 in ``queues``
    order, then of the next bucket, ...); ``now`` is the client clock. First writes each
    of ``results`` (a delivery tag and the state its result backend prepared, with the
    key it goes to) and acknowledges the deliveries ``ack_tags``; then promotes at most
    ``promote_limit`` due delayed messages per queue and pops up to ``limit``, each
    leased until ``lease_until`` (unix s).

    Raises:
        ValidationError: no queue, or ``lists`` not a whole number of buckets of them.
    """
    n = len(queues)
    if not n or not lists or len(lists) % n:
        raise ValidationError(
            "lists", f"POP needs every bucket list of each of {n} queue(s), got {len(lists)}"
        )
    script_keys: list[Any] = [keys.unacked_index, keys.unacked, keys.delayed,
                              keys.delayed_messages, keys.leases,
                              *map(keys.delayed_queue, queues), *lists]
    args: list[Any] = [repr(now), n, keys.prefix, promote_limit, limit, len(ack_tags),
                       len(results), repr(lease_until),
                       *queues, *ack_tags]
    for tag, pending in results:
        script_keys.append(pending.key)
        write = write_command(pending.expires)
        args += (tag, pending.data, write[0], write[1] if len(write) > 1 else "")
    return ScriptCall(POP, script_keys, args)


class Popped(NamedTuple):
    """``POP``'s reply, read."""

    #: Entries popped (those that were not envelopes included).
    taken: int
    #: When nothing was popped: the due time (unix s) of the next delayed message of
    #: the queues, if any.
    next_due: float | None
    #: Positions (0-based) in the call's ``results`` that were not written: their key
    #: existed, and their deliveries were not acknowledged.
    not_stored: list[int]
    #: ``(its queue, entry, delivery tag)`` per pop, in order; the tag is '' when the
    #: entry is not an envelope (popped, but not recorded as unacked).
    entries: list[tuple[str, bytes, str]]


def read_pop(reply: Any, queues: Sequence[str]) -> Popped:
    """Read the reply of a ``POP`` call made for ``queues`` (the same sequence, in the
    same order). On the receive path: one pass over the reply."""
    taken = int(reply[0])
    not_stored = [int(i) - 1 for i in reply[2]] if reply[2] else []
    if not taken:
        return Popped(0, float(reply[1]) if reply[1] else None, not_stored, [])
    # A tag is the entry's own delivery_tag as Lua's cjson read it; bytes that are not
    # UTF-8 (a lone surrogate escape) come back as surrogate escapes, and the consumer,
    # whose JSON reader reads the tag differently, dead-letters such an entry.
    return Popped(taken, None, not_stored, [
        (queues[int(reply[i]) - 1], reply[i + 1], reply[i + 2].decode("utf-8", "surrogateescape"))
        for i in range(3, 3 + 3 * taken, 3)
    ])


#: Acknowledge deliveries: Kombu's ``_remove_from_indices`` (``ZREM`` + ``HDEL``) for
#: every tag, and the end of its lease, atomically (Kombu's ``MULTI``), in one command
#: however many there are.
#:
#: KEYS[1] unacked_index, KEYS[2] unacked, KEYS[3] the leases. ARGV: the delivery tags.
#: Returns how many were still recorded.
ACK = Script("""
local found = 0
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
  found = found + redis.call('HDEL', KEYS[2], ARGV[i])
end
return found
""")


def ack(keys: Keys, tags: Sequence[str]) -> ScriptCall:
    """``ACK`` of the delivery ``tags``."""
    return ScriptCall(ACK, [keys.unacked_index, keys.unacked, keys.leases], list(tags))


#: Move up to ARGV[2] due messages into their lists, and refresh the caller's mover
#: heartbeat. Returns ``{scanned, moved}``: the due members taken off the index (at
#: most ARGV[2]; fewer means no more are due) and how many of them were pushed.
#:
#: KEYS: [1] the due index, [2] the entry hash, [3] unacked, [4] unacked_index, [5] the
#: movers' heartbeats. ARGV: [1] now (unix s), [2] limit, [3] the global key prefix, [4]
#: the queue-index name without prefix and queue, [5] the mover id ('' for none: no
#: heartbeat), [6] its heartbeat's expiry (unix s). LPUSH puts the message at the back of
#: its bucket, as a fresh publish would.
#:
#: A stored entry is ``[list, queue, entry]`` or, with a restore token, ``[list, queue,
#: entry, 1]``: the token is the ``unacked`` record the publisher wrote under the same
#: member (``[entry, "", queue]``, scored ``due - visibility_timeout`` in
#: ``unacked_index``), which any consumer's ``restore_visible`` (Kombu's or wiretask's)
#: pushes to the queue once the message is due. Whoever removes the token pushes the
#: message: the script pushes only if its ``HDEL`` of the token removed it, so a message
#: a restorer already pushed is not pushed again. Concurrent callers cannot duplicate a
#: message either: each member is read and removed inside one script. Expired
#: heartbeats are dropped before the caller's is written.
DUE = Script("""
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
local moved = 0
for _, member in ipairs(due) do
  local stored = redis.call('HGET', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
  if stored then
    local entry = cjson.decode(stored)
    redis.call('ZREM', ARGV[3] .. ARGV[4] .. entry[2], member)
    local owned = true
    if entry[4] then
      owned = redis.call('HDEL', KEYS[3], member) == 1
      redis.call('ZREM', KEYS[4], member)
    end
    if owned then
      redis.call('LPUSH', ARGV[3] .. entry[1], entry[3])
      moved = moved + 1
    end
  end
end
if ARGV[5] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[1])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
end
return {#due, moved}
""")


def due(
    keys: Keys, *, now: float, limit: int, mover: str = "", expires: float = 0.0
) -> ScriptCall:
    """``DUE``: move up to ``limit`` messages due at ``now`` (unix s); with a ``mover``
    id, also write its heartbeat, valid until ``expires`` (unix s)."""
    return ScriptCall(DUE, [keys.delayed, keys.delayed_messages, keys.unacked,
                            keys.unacked_index, keys.movers],
                      [repr(now), limit, keys.prefix, keys.delayed_queue_root, mover,
                       repr(expires)])


class Due(NamedTuple):
    """``DUE``'s reply, read."""

    #: Due members taken off the index (fewer than the limit: no more are due).
    scanned: int
    #: Messages pushed to their lists (the others had been restored already).
    moved: int


def read_due(reply: Any) -> Due:
    """Read the reply of a ``DUE`` call."""
    return Due(int(reply[0]), int(reply[1]))


#: Remove every waiting message of one queue: ready and scheduled (with their restore
#: tokens). Returns the count; a held member whose token a restorer took (its message
#: is in a list now, counted there) is removed without being counted again.
#:
#: KEYS[1..n] the bucket lists (n = ARGV[1]), then the queue's own index, the due index,
#: the entry hash, unacked and unacked_index.
PURGE = Script("""
local n = tonumber(ARGV[1])
local removed = 0
for i = 1, n do
  removed = removed + redis.call('LLEN', KEYS[i])
  redis.call('DEL', KEYS[i])
end
local members = redis.call('ZRANGE', KEYS[n + 1], 0, -1)
for _, member in ipairs(members) do
  local stored = redis.call('HGET', KEYS[n + 3], member)
  redis.call('ZREM', KEYS[n + 2], member)
  redis.call('HDEL', KEYS[n + 3], member)
  if stored then
    local counted = true
    if cjson.decode(stored)[4] then
      counted = redis.call('HDEL', KEYS[n + 4], member) == 1
      redis.call('ZREM', KEYS[n + 5], member)
    end
    if counted then removed = removed + 1 end
  end
end
redis.call('DEL', KEYS[n + 1])
return removed
""")


def purge(keys: Keys, queue: str, *, lists: Sequence[str]) -> ScriptCall:
    """``PURGE`` of ``queue``, whose bucket lists are ``lists``.

    Raises:
        ValidationError: no bucket list.
    """
    if not lists:
        raise ValidationError("lists", f"PURGE needs the bucket lists of {queue!r}")
    return ScriptCall(PURGE, [*lists, keys.delayed_queue(queue), keys.delayed,
                              keys.delayed_messages, keys.unacked, keys.unacked_index],
                      [len(lists)])


#: The result backend's ``store`` fast path: write and publish a state when the key does
#: not exist yet, in one round trip (``may_follow(None, ...)`` is always true). Returns 0,
#: writing nothing, when the key exists; ``store`` then runs its WATCH transaction.
#: KEYS[1] the result key. ARGV: the value, the command (``SET``, ``SETEX`` or
#: ``PSETEX``) and, for the last two, the expiry.
STORE_IF_ABSENT = Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[2] == 'SET' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call(ARGV[2], KEYS[1], ARGV[3], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
""")


def store_if_absent(key: str, value: bytes | str, expires: float | None) -> ScriptCall:
    """``STORE_IF_ABSENT``: ``value`` at ``key``, expiring in ``expires`` seconds
    (``None``: never), unless the key exists."""
    return ScriptCall(STORE_IF_ABSENT, [key], [value, *write_command(expires)])


#: Read the numbers of several queues in one atomic step (``QueueStatistics``). Nothing
#: walks a queue: lengths are ``LLEN`` and ``ZCARD``, the next due time the first member
#: of the delayed index, and each bucket's head entry (``LINDEX -1``, what the next pop
#: takes) is returned for its publish time. Only the values of ``unacked`` are read one
#: by one, to tell which queue each held message belongs to: they are what consumers hold
#: right now (bounded by their prefetch), not the depth of any queue. The restore tokens
#: of delayed messages (see ``DUE``) share the hash: they are told by their names, which
#: hold ``\x06\x16`` (no delivery tag does), and their values are not read.
#:
#: KEYS[1] is ``unacked``; then, per queue, its ``b`` bucket lists (bucket 0 first), its
#: delayed index and its dead-letter list. ARGV[1] is the number of queues, ARGV[2] ``b``.
#:
#: Reply: ``{pairs, unread, q1, q2, ...}``. ``pairs`` is a flat list ``exchange,
#: routing_key, count, ...`` of the held messages (values of ``unacked``, which are
#: ``[entry, exchange, routing_key]`` JSON); ``unread`` counts the values that are not
#: that shape. Each ``q`` is ``{len_1..len_b, head_1..head_b, scheduled, next_due, dead}``
#: where ``head_i`` is '' for an empty bucket and ``next_due`` the lowest score of the
#: delayed index as text ('' when empty). The exchange and routing key are read off the
#: end of each value with a pattern (the common case: no quote or backslash in them, so
#: no JSON decode of the whole message); anything else goes through ``cjson``.
STATS = Script(r"""
local queues = tonumber(ARGV[1])
local buckets = tonumber(ARGV[2])
local counts = {}
local unread = 0
local function tally(value)
  local exchange, routing_key = string.match(string.sub(value, -600),
                                             ', "([^"\\]*)", "([^"\\]*)"%]$')
  if not exchange then
    local ok, stored = pcall(cjson.decode, value)
    if ok and type(stored) == 'table' and type(stored[2]) == 'string'
        and type(stored[3]) == 'string' then
      exchange, routing_key = stored[2], stored[3]
    end
  end
  if exchange then
    local by_key = counts[exchange]
    if not by_key then
      by_key = {}
      counts[exchange] = by_key
    end
    by_key[routing_key] = (by_key[routing_key] or 0) + 1
  else
    unread = unread + 1
  end
end
local tags = {}
for _, tag in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not string.find(tag, '\6\22', 1, true) then tags[#tags + 1] = tag end
end
for first = 1, #tags, 1000 do
  local last = math.min(first + 999, #tags)
  for _, value in ipairs(redis.call('HMGET', KEYS[1], unpack(tags, first, last))) do
    tally(value)
  end
end
local pairs_out = {}
for exchange, by_key in pairs(counts) do
  for routing_key, count in pairs(by_key) do
    pairs_out[#pairs_out + 1] = exchange
    pairs_out[#pairs_out + 1] = routing_key
    pairs_out[#pairs_out + 1] = count
  end
end
local out = {pairs_out, unread}
local k = 2
for q = 1, queues do
  local numbers = {}
  local heads = {}
  for b = 1, buckets do
    local key = KEYS[k + b - 1]
    numbers[b] = redis.call('LLEN', key)
    heads[b] = numbers[b] > 0 and redis.call('LINDEX', key, -1) or ''
  end
  for b = 1, buckets do numbers[buckets + b] = heads[b] end
  local delayed = KEYS[k + buckets]
  numbers[2 * buckets + 1] = redis.call('ZCARD', delayed)
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  numbers[2 * buckets + 2] = first[2] or ''
  numbers[2 * buckets + 3] = redis.call('LLEN', KEYS[k + buckets + 1])
  out[#out + 1] = numbers
  k = k + buckets + 2
end
return out
""")


def stats(keys: Keys, queues: Sequence[str], *, lists: Sequence[Sequence[str]]) -> ScriptCall:
    """``STATS`` of ``queues``; ``lists`` holds each queue's bucket lists (bucket 0
    first), in the order of ``queues``.

    Raises:
        ValidationError: no queue, or not the same number of bucket lists for each.
    """
    buckets = len(lists[0]) if lists else 0
    if not queues or len(lists) != len(queues) or not buckets \
            or any(len(names) != buckets for names in lists):
        raise ValidationError(
            "lists", f"STATS needs the same bucket lists for each of {len(queues)} "
            f"queue(s), got {[len(names) for names in lists]}"
        )
    script_keys: list[Any] = [keys.unacked]
    for queue, names in zip(queues, lists, strict=True):
        script_keys += [*names, keys.delayed_queue(queue), keys.dead(queue)]
    return ScriptCall(STATS, script_keys, [len(queues), buckets])


class Lanes(NamedTuple):
    """One queue's part of ``STATS``' reply."""

    #: ``LLEN`` of each bucket list, bucket 0 first.
    lengths: list[int]
    #: The head entry of each non-empty bucket list.
    heads: list[bytes]
    scheduled: int
    #: The lowest due time (unix s) of the queue's delayed messages, if any.
    next_due: float | None
    dead: int


class Stats(NamedTuple):
    """``STATS``' reply, read."""

    #: ``{(exchange, routing_key): count}`` of the messages consumers hold.
    held: dict[tuple[str, str], int]
    #: Values of ``unacked`` that are not ``[entry, exchange, routing_key]``.
    unread: int
    #: Per queue, in the order of the call.
    lanes: list[Lanes]


def read_stats(reply: Any, buckets: int) -> Stats:
    """Read the reply of a ``STATS`` call made with ``buckets`` lists per queue."""
    held: dict[tuple[str, str], int] = {}
    flat = reply[0]
    for i in range(0, len(flat), 3):
        pair = (_text(flat[i]), _text(flat[i + 1]))
        held[pair] = held.get(pair, 0) + int(flat[i + 2])
    lanes = []
    for part in reply[2:]:
        lengths = [int(n) for n in part[:buckets]]
        due = part[2 * buckets + 1]
        lanes.append(Lanes(
            lengths=lengths,
            heads=[head for n, head in zip(lengths, part[buckets:2 * buckets], strict=True)
                   if n],
            scheduled=int(part[2 * buckets]),
            next_due=float(due) if due else None,
            dead=int(part[2 * buckets + 2]),
        ))
    return Stats(held, int(reply[1]), lanes)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


#: Dead-letter a delivery from what Redis holds of it: move the entry recorded in
#: ``unacked`` to the dead-letter list, ending its records and its lease, in one step.
#: The consumer keeps no copy of a received entry (a large one would cost its memory
#: twice); the entry is the first ``entry size`` bytes after the ``[`` of the stored
#: ``[entry, exchange, routing_key]``, which embeds it verbatim.
#:
#: KEYS[1] unacked_index, KEYS[2] unacked, KEYS[3] the leases, KEYS[4] the dead-letter
#: list. ARGV: [1] the delivery tag, [2] the entry's size in bytes, [3] the reason,
#: [4] the queue, [5] the time (unix s). Returns 1, or 0 (nothing moved) when the
#: delivery is not recorded any more (its lease ran out and it was restored).
DEAD_LETTER = Script("""
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if not stored then return 0 end
local size = tonumber(ARGV[2])
local entry = string.sub(stored, 2, 1 + size)
if #entry ~= size or string.sub(stored, 2 + size, 2 + size) ~= ',' then
  entry = stored
end
redis.call('RPUSH', KEYS[4], cjson.encode({reason = ARGV[3], raw = entry,
  raw_encoding = 'text', queue = ARGV[4], at = tonumber(ARGV[5])}))
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
""")


def dead_letter(
    keys: Keys, tag: str, *, queue: str, reason: str, at: float, entry_size: int
) -> ScriptCall:
    """``DEAD_LETTER`` of delivery ``tag`` (an entry of ``entry_size`` bytes) of
    ``queue``, for ``reason``, at ``at`` (unix s)."""
    return ScriptCall(DEAD_LETTER, [keys.unacked_index, keys.unacked, keys.leases,
                                    keys.dead(queue)],
                      [tag, entry_size, reason, queue, repr(at)])


#: The transport's scripts, for ``SCRIPT LOAD`` when it connects.
TRANSPORT_SCRIPTS: tuple[Script, ...] = (POP, ACK, DUE, PURGE, DEAD_LETTER)
