"""Lua scripts of the Redis transport. Each runs atomically on the server.

Keys named in ``KEYS`` arrive with ``global_keyprefix`` already applied. ``DUE`` builds
two key names at run time from ``ARGV`` (the prefix and the stored destination), which is
fine on a single Redis server or a replica set but not on Redis Cluster (nor is Kombu's
transport). ``cjson`` is the JSON library every Redis ships to Lua.
"""

from __future__ import annotations

__all__ = ["DUE", "POP", "PURGE", "SCHEDULE"]

#: Promote the consumed queues' due delayed messages, then pop one message and record
#: it as unacked in the same step.
#:
#: KEYS: [1] unacked_index (zset), [2] unacked (hash), [3] the due index, [4] the entry
#: hash, [5 .. 4+n] the consumed queues' own delayed indexes, then the bucket lists in
#: BRPOP order. ARGV: [1] now (client clock, as Kombu's ``QoS.append``), [2] n, [3] the
#: global key prefix, [4] most promotions per queue, [5..] the queue name of each list
#: (the routing key when an entry names none).
#:
#: Returns ``{list index (1-based), entry, delivery tag}``. The tag is '' when the entry
#: is not an envelope with a string ``properties.delivery_tag``: it was popped but not
#: recorded, and the caller dead-letters it. When nothing was popped it returns
#: ``{0, next due time or ''}`` so that the caller never blocks past a due message.
#: The unacked value is Kombu's ``[message, exchange, routing_key]`` JSON with the entry
#: embedded verbatim (Kombu re-serializes the parsed dict, which gives the same text for
#: entries Kombu wrote).
POP = """
local now = ARGV[1]
local n = tonumber(ARGV[2])
local first_list = 5 + n
for q = 5, 4 + n do
  local due = redis.call('ZRANGE', KEYS[q], '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[4])
  for _, member in ipairs(due) do
    local stored = redis.call('HGET', KEYS[4], member)
    redis.call('ZREM', KEYS[q], member)
    redis.call('ZREM', KEYS[3], member)
    redis.call('HDEL', KEYS[4], member)
    if stored then
      local entry = cjson.decode(stored)
      redis.call('LPUSH', ARGV[3] .. entry[1], entry[3])
    end
  end
end
for i = first_list, #KEYS do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local ok, msg = pcall(cjson.decode, raw)
    if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
      local props = msg.properties
      local tag = props.delivery_tag
      if type(tag) == 'string' and tag ~= '' then
        local info = props.delivery_info
        if type(info) ~= 'table' then info = {} end
        local exchange = info.exchange
        if type(exchange) ~= 'string' then exchange = '' end
        local routing_key = info.routing_key
        if type(routing_key) ~= 'string' then routing_key = ARGV[i - n] end
        redis.call('ZADD', KEYS[1], now, tag)
        redis.call('HSET', KEYS[2], tag, '[' .. raw .. ', ' .. cjson.encode(exchange)
                   .. ', ' .. cjson.encode(routing_key) .. ']')
        return {i - first_list + 1, raw, tag}
      end
    end
    return {i - first_list + 1, raw, ''}
  end
end
local next_due = nil
for q = 5, 4 + n do
  local head = redis.call('ZRANGE', KEYS[q], 0, 0, 'WITHSCORES')
  if head[2] and (next_due == nil or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
if next_due == nil then return {0, ''} end
return {0, string.format('%.6f', next_due)}
"""

#: Publish one ready message with its idempotency marker: the common case of ``publish``.
#:
#: KEYS[1] the marker, KEYS[2] the list. ARGV[1] the marker's TTL (s), ARGV[2] the entry.
#: The same effect as ``MULTI; SET marker 1 EX ttl; LPUSH list entry; EXEC`` (both land or
#: neither), in one command with one reply instead of four: redis-py's transaction
#: machinery was most of the client-side cost of a publish.
PUSH_MARKED = """
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
return redis.call('LPUSH', KEYS[2], ARGV[2])
"""

#: Hold one message for delayed delivery.
#:
#: KEYS[1] the due index (zset member -> due time), KEYS[2] the entry hash, KEYS[3] the
#: queue's own index (for size/peek/purge). ARGV[1] member, ARGV[2] due time (unix s),
#: ARGV[3] the stored entry: JSON ``[list name without prefix, queue, envelope text]``.
#: Atomic, so ``DUE`` never sees a member without its entry.
SCHEDULE = """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

#: Move up to ARGV[2] due messages into their lists; return how many moved.
#:
#: KEYS[1] the due index, KEYS[2] the entry hash. ARGV[1] now (unix s), ARGV[3] the
#: global key prefix, ARGV[4] the queue-index name without prefix and queue. LPUSH puts
#: the message at the back of its bucket, as a fresh publish would. Concurrent callers
#: cannot duplicate a message: each member is read and removed inside one script.
DUE = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local stored = redis.call('HGET', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
  if stored then
    local entry = cjson.decode(stored)
    redis.call('ZREM', ARGV[3] .. ARGV[4] .. entry[2], member)
    redis.call('LPUSH', ARGV[3] .. entry[1], entry[3])
  end
end
return #due
"""

#: Remove every waiting message of one queue: ready and scheduled. Returns the count.
#:
#: KEYS[1..n] the bucket lists (n = ARGV[1]), then the queue's own index, the due index
#: and the entry hash.
PURGE = """
local n = tonumber(ARGV[1])
local removed = 0
for i = 1, n do
  removed = removed + redis.call('LLEN', KEYS[i])
  redis.call('DEL', KEYS[i])
end
local members = redis.call('ZRANGE', KEYS[n + 1], 0, -1)
for _, member in ipairs(members) do
  redis.call('ZREM', KEYS[n + 2], member)
  redis.call('HDEL', KEYS[n + 3], member)
end
redis.call('DEL', KEYS[n + 1])
return removed + #members
"""
