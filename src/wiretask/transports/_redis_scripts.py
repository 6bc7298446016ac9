"""Lua scripts of the Redis transport, and the lean command path that runs them.

Each script runs atomically on the server. Keys named in ``KEYS`` arrive with
``global_keyprefix`` already applied. ``DUE`` builds two key names at run time from
``ARGV`` (the prefix and the stored destination), which is fine on a single Redis server
or a replica set but not on Redis Cluster (nor is Kombu's transport). ``cjson`` is the
JSON library every Redis ships to Lua.

``Commands`` sends the hot-path commands (receiving, settling, publishing, storing a
result) on redis-py connections it keeps itself, without ``redis.Redis``: redis-py 8's
client and pool spend more CPU per command (events, metrics, retry wrappers, pool
bookkeeping; about 45 us) than a loopback round trip costs.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import redis
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

_pack: Callable[[tuple[Any, ...]], bytes] | None
_Reader: Any
#: What the reader returns while a reply is incomplete (False is a RESP3 value).
_MORE = object()
try:  # hiredis (the ``redis`` extra) packs and parses in C
    from hiredis import Reader as _HiredisReader
    from hiredis import pack_command as _hiredis_pack

    _HiredisReader(notEnoughData=_MORE)  # hiredis >= 2.1
    _pack, _Reader = _hiredis_pack, _HiredisReader
except (ImportError, TypeError):  # pragma: no cover - redis-py's packer and parser then
    _pack = _Reader = None

__all__ = [
    "ACK",
    "ALL",
    "DUE",
    "POP",
    "PURGE",
    "Commands",
    "Script",
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


class _Link:
    """One connection of a ``Commands``, with the reply reader, the receive buffer and
    the readability poller of its current socket."""

    __slots__ = ("buffer", "connection", "poller", "reader", "sock")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.sock: Any = None
        self.reader: Any = None
        self.poller: Any = None
        self.buffer = bytearray(65536)


def _stale(link: _Link) -> bool:
    """Whether the link's idle socket has something to read: the server closed it (EOF),
    or sent what nobody asked for. Either way it must not carry the next command."""
    sock = link.sock
    pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but not read yet
    if pending is not None and pending():
        return True
    if _poll is not None:
        return bool(link.poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])  # pragma: no cover - no poll()


_poll = getattr(select, "poll", None)


class Commands:
    """Commands and scripts on connections of this object's own, built with the options
    of a redis-py pool (so URL, TLS, timeouts and credentials are the pool's).

    redis-py connects each one (handshake, AUTH, SELECT, TLS); after that, requests are
    packed by hiredis and replies read by a hiredis reader straight off the socket, so a
    round trip costs a ``sendall`` and a ``recv_into`` and little Python around them.
    One connection per thread that is inside a command at the same moment: idle ones
    wait in a list (``list.pop``/``append`` are atomic, no lock). Before a command, an
    idle connection the server closed meanwhile (a restart, an idle timeout) is noticed,
    as redis-py's pool does on checkout, and reconnected rather than failing a command
    that could not have run. A connection that saw anything but a Redis error reply (a
    socket error, a timeout, an exception raised into the thread between a request and
    its reply) is disconnected before it goes back, so it can never hand one command
    another's reply. Errors are redis-py's exceptions: the caller translates them.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[_Link] = []
        self._every: list[_Link] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _take(self) -> _Link:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            with self._lock:
                self._idle, self._every, self._pid = [], [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            link = _Link(self._pool.connection_class(**self._pool.connection_kwargs))
            with self._lock:
                self._every.append(link)
            return link

    def run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order. An error
        reply is raised (the first one) after every reply was read."""
        link = self._take()
        connection = link.connection
        try:
            sock = connection._sock
            if sock is not None and sock is link.sock and _stale(link):
                connection.disconnect()
                sock = None
            if sock is None:
                connection.connect()
                sock = connection._sock
            if _pack is None:  # pragma: no cover - without hiredis: redis-py reads
                replies = self._run_slowly(connection, commands)
            else:
                if sock is not link.sock:  # a new socket: a new reader and poller
                    link.sock = sock
                    link.reader = _Reader(protocolError=InvalidResponse,
                                          replyError=connection._parser.parse_error,
                                          notEnoughData=_MORE)
                    if _poll is not None:
                        link.poller = _poll()
                        link.poller.register(sock, select.POLLIN)
                replies = _round_trip(link, b"".join(_pack(c) for c in commands),
                                      len(commands))
        except BaseException:
            connection.disconnect()
            link.sock = None
            raise
        finally:
            self._idle.append(link)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    @staticmethod
    def _run_slowly(
        connection: Any, commands: Sequence[tuple[Any, ...]]
    ) -> list[Any]:  # pragma: no cover - only without hiredis
        connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    def call(self, *command: Any) -> Any:
        """One command; its reply."""
        return self.run((command,))[0]

    def transaction(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` between ``MULTI`` and ``EXEC``, in one write: Redis runs all of
        them at once, with nothing in between, or none (a command refused while queueing
        aborts the whole transaction, and a connection lost before ``EXEC`` discards
        it). Returns their replies; raises the first error reply, whether it came while
        queueing or from a command that ran."""
        replies = self.run([("MULTI",), *commands, ("EXEC",)])[-1]
        if not isinstance(replies, list):  # pragma: no cover - nil only after a WATCH
            raise ResponseError(f"EXEC: transaction not run ({replies!r})")
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` (``EVALSHA``; ``EVAL`` when the server does not know it yet,
        which also caches it). A script that was not found did not run, so sending it
        again cannot apply anything twice."""
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.call("EVAL", script.text, len(keys), *keys, *args)

    def disconnect(self) -> None:
        """Close every connection (idle or not); each reconnects on its next use."""
        with self._lock:
            every = list(self._every)
        for link in every:
            link.connection.disconnect()


def _round_trip(link: _Link, request: bytes, count: int) -> list[Any]:
    """Write ``request`` and read ``count`` replies (error replies as exceptions)."""
    sock, reader, buffer = link.sock, link.reader, link.buffer
    try:
        sock.sendall(request)
        replies: list[Any] = []
        for _ in range(count):
            reply = reader.gets()
            while reply is _MORE:
                received = sock.recv_into(buffer)
                if not received:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(buffer, 0, received)
                reply = reader.gets()
            replies.append(reply)
    except TimeoutError as exc:  # socket.timeout
        raise redis.TimeoutError(f"Timeout talking to Redis: {exc}") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
    return replies


#: Promote the consumed queues' due delayed messages, then pop up to ``limit`` messages
#: and record each as unacked in the same step.
#:
#: KEYS: [1] unacked_index (zset), [2] unacked (hash), [3] the due index, [4] the entry
#: hash, [5 .. 4+n] the consumed queues' own delayed indexes, then the bucket lists,
#: bucket-major: bucket b's list of queue q is KEYS[5 + n + b * n + (q - 1)], then r
#: result keys. ARGV: [1] now (client clock, as Kombu's ``QoS.append``), [2] n, [3] the
#: global key prefix, [4] most promotions per queue, [5] limit (0: pop nothing), [6] a,
#: the number of tags to acknowledge, [7] r, [8 .. 7+n] the queue names in the caller's
#: current round-robin order (the routing key when an entry names none), then the a
#: delivery tags to acknowledge (``ACK``'s removals), then r results, four values each:
#: the delivery tag, the value, the write command (``SET``, ``SETEX`` or ``PSETEX``) and
#: its expiry. A result is written (and published, as the result backend's first-state
#: script does) only if its key does not exist yet; its delivery is acknowledged only
#: then. So a consumer stores what it finished, settles it and takes more in one round
#: trip, store before ack.
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
#: dict, which gives the same text for entries Kombu wrote).
POP = Script("""
local now = ARGV[1]
local n = tonumber(ARGV[2])
local limit = tonumber(ARGV[5])
local acks = tonumber(ARGV[6])
local results = tonumber(ARGV[7])
local first_list = 5 + n
local buckets = (#KEYS - 4 - n - results) / n
local not_stored = {}
local first_result = 8 + n + acks
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
  end
end
for t = 8 + n, 7 + n + acks do
  redis.call('ZREM', KEYS[1], ARGV[t])
  redis.call('HDEL', KEYS[2], ARGV[t])
end
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
      if type(routing_key) ~= 'string' then routing_key = ARGV[7 + q] end
      redis.call('ZADD', KEYS[1], now, tag)
      redis.call('HSET', KEYS[2], tag, '[' .. raw .. ', ' .. cjson.encode(exchange)
                 .. ', ' .. cjson.encode(routing_key) .. ']')
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
for q = 5, 4 + n do
  local head = redis.call('ZRANGE', KEYS[q], 0, 0, 'WITHSCORES')
  if head[2] and (next_due == nil or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
if next_due ~= nil then out[2] = string.format('%.6f', next_due) end
return out
""")

#: Acknowledge deliveries: Kombu's ``_remove_from_indices`` (``ZREM`` + ``HDEL``) for
#: every tag, atomically (Kombu's ``MULTI``), in one command however many there are.
#:
#: KEYS[1] unacked_index, KEYS[2] unacked. ARGV: the delivery tags. Returns how many
#: were still recorded.
ACK = Script("""
local found = 0
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  found = found + redis.call('HDEL', KEYS[2], ARGV[i])
end
return found
""")

#: Move up to ARGV[2] due messages into their lists; return how many moved.
#:
#: KEYS[1] the due index, KEYS[2] the entry hash. ARGV[1] now (unix s), ARGV[3] the
#: global key prefix, ARGV[4] the queue-index name without prefix and queue. LPUSH puts
#: the message at the back of its bucket, as a fresh publish would. Concurrent callers
#: cannot duplicate a message: each member is read and removed inside one script.
DUE = Script("""
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
""")

#: Remove every waiting message of one queue: ready and scheduled. Returns the count.
#:
#: KEYS[1..n] the bucket lists (n = ARGV[1]), then the queue's own index, the due index
#: and the entry hash.
PURGE = Script("""
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
""")

#: Every script, for ``SCRIPT LOAD`` on connect.
ALL: tuple[Script, ...] = (POP, ACK, DUE, PURGE)


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
