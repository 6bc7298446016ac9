"""The Redis result backend, in Celery's key layout: ``redis://`` and ``rediss://``.

Celery reads what this backend writes and the other way round (``spec/TRANSPORTS.md``
§4.1):

* The key is ``celery-task-meta-<task_id>`` (with ``global_keyprefix`` in front, plus
  ``_`` unless it ends in one of ``:_-.``, exactly as Celery prefixes it).
* The value is the meta dict serialized with the result serializer (``json``), written
  with ``SETEX <result_expires>`` (``PSETEX`` for a fractional expiry, which Celery
  cannot configure), or ``SET`` when expiry is off, and ``PUBLISH``ed on the channel of
  the same name with the same payload, in one ``MULTI`` transaction.
* Celery 5.7's magic-prefixed compressed values are read (and written with
  ``compression``).

Where wiretask goes further than Celery:

* **The ready-state rule is atomic.** Celery GETs, checks for ``SUCCESS`` and SETs
  without a transaction. wiretask writes a task's first state with one atomic script
  (``EXISTS``, then ``SETEX`` and ``PUBLISH`` only if nothing is stored) and any later
  state under ``WATCH``, so of two racing final states exactly one is stored, and no
  state follows a ready one.
* **A late subscriber receives the current state, exactly once, in order.** A
  subscription SUBSCRIBEs to the task's channel and to a private *sync channel*; once
  both are confirmed it runs ``MULTI: GET key; PUBLISH sync-channel token`` on the
  command connection. Redis runs a transaction at one instant and delivers published
  messages to a subscriber in execution order, so the token marks the exact place of
  the GET in the message stream: messages before it are older than (or the same as)
  the snapshot and are skipped, messages after it are newer and are delivered. No
  duplicate, no gap, no reordering, without changing Celery's payloads.
* **A lost subscription connection resynchronizes** (subscribe, snapshot, token again)
  and delivers the current state if it differs from the last one delivered; states
  stored during the outage itself cannot be recovered from Celery's layout, but the
  final one is never missed. While Redis is away (stopped, restarting, loading, or
  frozen), ``next(timeout)`` keeps trying (backing off from 50 ms to 1 s) until its
  timeout, and does not wait past it: waiting for the SUBSCRIBE confirmation and for
  published states is bounded by the caller's timeout, and every other step (connect,
  the snapshot) runs on connections of the subscription's own whose socket timeout is
  ``SUBSCRIBE_TIMEOUT`` (1 s), not the backend's (Celery's 120 s). So a frozen server
  costs a waiting ``get(timeout=5)`` five seconds, not two minutes (at most one second
  more if it froze in the middle of a snapshot).

Every subscription uses its own pub/sub connection from the client's pool. redis-py
uses ``hiredis`` for parsing when it is installed (the ``redis`` extra installs it).

Errors are translated by ``wiretask._redis.errors.REDIS_ERRORS``, the table the Redis
transport uses too: what the publish retry may retry (``ConnectionLost``: a lost
connection, a timeout, a server loading its data or turned replica) is what a
subscription resynchronizes after, and a wrong password is a ``TransportError`` for
both. Chained with ``from``, naming the action and the URL, without the password.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import redis
import redis.exceptions

from wiretask._errormap import map_exceptions
from wiretask._ids import new_id
from wiretask._redis.chords import chord_claim, chord_finish, chord_part
from wiretask._redis.client import Commands, Target
from wiretask._redis.errors import Boundaries
from wiretask._redis.options import parse
from wiretask._redis.scripts import store_if_absent, write_command
from wiretask.errors import (
    ConnectionLost,
    DecodeError,
    ImproperlyConfigured,
    TransportError,
)
from wiretask.protocol import states
from wiretask.protocol.states import PendingState
from wiretask.results.base import (
    DEFAULT_EXPIRES,
    ChordProgress,
    MetaCodec,
    ResultBackend,
    Subscription,
    check_meta,
    mask_url,
    resolve_expires,
)

if TYPE_CHECKING:
    from wiretask.codecs import Registry
    from wiretask.results.redis_aio import AsyncRedisBackend

__all__ = [
    "GROUP_KEYPREFIX",
    "TASK_KEYPREFIX",
    "PendingResult",
    "RedisBackend",
    "RedisSubscription",
    "SyncedChannel",
]

#: Celery's ``task_keyprefix`` (``KeyValueStoreBackend``).
TASK_KEYPREFIX: Final = "celery-task-meta-"
#: Celery's ``group_keyprefix``: saved groups, and the chord keys (``<key>.s``, ...).
GROUP_KEYPREFIX: Final = "celery-taskset-meta-"
#: Prefix of a subscription's private sync channel (after ``global_keyprefix``).
SYNC_PREFIX: Final = "wiretask-result-sync-"
#: ``store`` retries its WATCH transaction this often when other writers keep winning.
MAX_WATCH_RETRIES: Final = 100
#: Longest single wait inside ``Subscription.next`` (so ``close()`` is noticed).
_WAIT_SLICE: Final = 1.0
#: The socket timeouts of a subscription's connections: the longest any one step of
#: (re)subscribing may block. A step that takes longer is retried, within the caller's
#: timeout.
SUBSCRIBE_TIMEOUT: Final = 1.0
#: Pauses between attempts to resubscribe while Redis is away: from the first to the
#: last, doubling.
_RESUBSCRIBE_BACKOFF: Final = (0.05, 1.0)


def celery_keyprefix(global_keyprefix: str | None, prefix: str = TASK_KEYPREFIX) -> str:
    """Celery's task (or group) key prefix with ``global_keyprefix`` applied as Celery
    applies it (``BaseKeyValueStoreBackend._add_global_keyprefix``)."""
    if not global_keyprefix:
        return prefix
    if global_keyprefix[-1] not in ":_-.":
        global_keyprefix += "_"
    return f"{global_keyprefix}{prefix}"


def _without_transport_options(url: str) -> str:
    """``url`` without the Redis *transport's* own query options. An app's default
    backend is its broker URL, which may carry them (``?delay_mode=celery&
    visibility_timeout=60``); redis-py would refuse them. redis-py's own options stay."""
    return parse(url, {}).redis_url


#: The name this value had before it moved to ``protocol.states`` (where the broker
#: that writes it can see it without importing this backend).
PendingResult = PendingState


class RedisBackend(ResultBackend):
    """Results in Redis, readable and writable by Celery's Redis result backend.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://...`` (TLS;
            redis-py's query options such as ``ssl_cert_reqs`` apply).
        serializer: the result serializer (``json``).
        expires: ``result_expires`` in seconds (default one day; ``None`` = never).
        registry: the codec registry (default: ``wiretask.codecs.default_registry()``).
        compression: compress stored values as Celery 5.7's ``result_compression``.
        global_keyprefix: Celery's ``result_backend_transport_options
            ['global_keyprefix']``.
        socket_timeout: seconds a command may take (Celery's ``redis_socket_timeout``
            default, 120).
        socket_connect_timeout: seconds a connection attempt may take.
        result_chord_ordered: Celery's transport option of that name: a chord's parts
            in a sorted set by header position (True, Celery's default) or a list in
            arrival order. Every worker of a chord must agree.

    Chords: this backend counts a chord's header tasks itself (``ChordCounter``), in
    Celery's ``celery-taskset-meta-<group_id>.j/.t/.s/.d/.c`` keys (``_redis/chords``),
    and saves groups under ``celery-taskset-meta-<group_id>`` (``GroupStore``).
    """

    def __init__(
        self,
        url: str,
        *,
        serializer: str = "json",
        expires: float | timedelta | None = DEFAULT_EXPIRES,
        registry: Registry | None = None,
        compression: str | None = None,
        global_keyprefix: str | None = None,
        socket_timeout: float = 120.0,
        socket_connect_timeout: float = 10.0,
        result_chord_ordered: bool = True,
    ) -> None:
        self.url = mask_url(url)
        if not isinstance(result_chord_ordered, bool):
            raise ImproperlyConfigured(
                f"result_chord_ordered must be True or False, got {result_chord_ordered!r}",
                setting="result_backend_transport_options",
            )
        self.chord_ordered = result_chord_ordered
        #: ``result_chord_expires`` (the app sets it); ``None``: as ``expires``.
        self.chord_expires: float | None = None
        self.expires = resolve_expires(expires)
        if registry is None:
            from wiretask.codecs import default_registry  # noqa: PLC0415 - avoid a cycle

            registry = default_registry()
        self.codec = MetaCodec(registry, serializer, compression)
        self.global_keyprefix = global_keyprefix or ""
        self.keyprefix = celery_keyprefix(global_keyprefix)
        #: The URL redis-py connects to (password included: never shown).
        self._connection_url = _without_transport_options(url)
        self.group_keyprefix = celery_keyprefix(global_keyprefix, GROUP_KEYPREFIX)
        try:
            self.client: redis.Redis = redis.Redis.from_url(
                self._connection_url,
                socket_timeout=float(socket_timeout),
                socket_connect_timeout=float(socket_connect_timeout),
            )
        except ValueError as exc:  # redis-py's complaint about a malformed URL
            raise ImproperlyConfigured(
                f"invalid Redis URL {self.url!r}: {exc}", setting="result_backend"
            ) from exc
        self.socket_timeout = float(socket_timeout)
        pool = self.client.connection_pool
        #: ``store`` and ``get`` (the worker's hot path) skip redis-py's client.
        self._commands = Commands(pool)
        #: Which database this is: a Redis broker whose ``_redis`` equals it writes
        #: this backend's states in the script that acks (``stores_results_of``).
        self._redis = Target.of(pool)
        self._password: str | None = pool.connection_kwargs.get("password")
        self._boundaries = Boundaries(pool, url=self.url, secret=self._password)
        # Subscriptions: their own pool, whose connections give up after
        # SUBSCRIBE_TIMEOUT (a frozen server must not hold a waiting get() for the
        # backend's socket_timeout); the caller's timeout bounds the retries.
        quick = min(SUBSCRIBE_TIMEOUT, float(socket_timeout))
        listener_pool = redis.ConnectionPool(
            connection_class=pool.connection_class,
            **{**pool.connection_kwargs, "socket_timeout": quick,
               "socket_connect_timeout": min(quick, float(socket_connect_timeout))},
        )
        #: The subscriptions' client (pub/sub connections and the snapshot).
        self.listener = redis.Redis(connection_pool=listener_pool)
        self._listening = Boundaries(listener_pool, url=self.url, secret=self._password)
        self._subscriptions: weakref.WeakSet[RedisSubscription] = weakref.WeakSet()
        self._closed = False

    def key_for(self, task_id: str) -> str:
        """The key (and channel) of a task: ``celery-task-meta-<task_id>``."""
        return f"{self.keyprefix}{task_id}"

    def errors(self, action: str) -> map_exceptions:
        """``with backend.errors(action):`` translates redis-py exceptions raised inside
        the block by ``REDIS_ERRORS``, scrubbing the password, and drops the pool's idle
        connections after a wrong-server reply (``wiretask._redis.errors.Boundaries``).

        Raises:
            TransportError: the backend is closed.
        """
        if self._closed:
            raise TransportError("the result backend is closed", url=self.url)
        return self._boundaries(action)

    def listen_errors(self, action: str) -> map_exceptions:
        """``errors``, for the subscriptions' own connections (``listener``)."""
        if self._closed:
            raise TransportError("the result backend is closed", url=self.url)
        return self._listening(action)

    def _current_status(self, value: bytes | str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(self.codec.decode(value)["status"])
        except DecodeError:
            # A value nobody can read blocks nothing: the new state replaces it.
            return None

    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        self.store_pending(self.pending(task_id, meta))

    def pending(self, task_id: str, meta: Mapping[str, Any]) -> PendingState:
        """Check and encode a state now, to write it later: with ``store_pending``, or
        in the same script as the broker's ack when the broker is this same Redis
        database (``RedisTransport.store_ack_and_receive``, which the worker uses).

        Raises:
            ValidationError: a malformed meta dict.
            EncodeError: the result serializer refuses it.
        """
        status = check_meta(task_id, meta)
        return PendingState(task_id=task_id, meta=meta, status=status,
                            key=self.key_for(task_id), data=self.codec.encode(meta).data,
                            expires=self.expires)

    def store_pending(self, pending: PendingState) -> None:
        """Write a state that ``pending`` prepared, under the rules of ``store``."""
        key, data, write = pending.key, pending.data, write_command(pending.expires)
        with self.errors("store"):
            # The common case (nothing stored yet, e.g. a task's only state) in one round
            # trip instead of WATCH, GET and MULTI/EXEC; the same atomic rule.
            if self._commands.script(store_if_absent(key, data, pending.expires)) == 1:
                return
        # redis-py's Pipeline.watch is untyped; the pipeline is used through Any.
        client: Any = self.client
        with self.errors("store"), client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_RETRIES):
                try:
                    pipe.watch(key)
                    if not states.may_follow(self._current_status(pipe.get(key)),
                                             pending.status):
                        pipe.unwatch()
                        return
                    pipe.multi()
                    pipe.execute_command(write[0], key, *write[1:], data)
                    pipe.publish(key, data)
                    pipe.execute()
                except redis.exceptions.WatchError:
                    continue  # another writer changed the key between WATCH and EXEC
                else:
                    return
        raise TransportError(
            f"could not store the state of {pending.task_id}: the key kept changing under "
            f"{MAX_WATCH_RETRIES} attempts",
            url=self.url,
        )

    # -- groups (GroupStore) -----------------------------------------------------------

    def group_key(self, group_id: str) -> str:
        """The key of a saved group, and the stem of its chord's keys:
        ``celery-taskset-meta-<group_id>``."""
        return f"{self.group_keyprefix}{group_id}"

    def save_group(self, group_id: str, value: Mapping[str, Any]) -> None:
        """Celery's ``_save_group``: the value, expiring as results do, also
        ``PUBLISH``ed on the key's channel."""
        key, data = self.group_key(group_id), self.codec.encode_value(dict(value)).data
        write = write_command(self.expires)
        with self.errors("save group"):
            self._commands.transaction([(write[0], key, *write[1:], data), ("PUBLISH", key, data)])

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        with self.errors("restore group"):
            data = self._commands.call("GET", self.group_key(group_id))
        if data is None:
            return None
        value = self.codec.decode_value(data)
        if not isinstance(value, dict):
            raise DecodeError("group", f"a saved group must be a mapping, got {value!r:.100}")
        return value

    def delete_group(self, group_id: str) -> None:
        with self.errors("delete group"):
            self._commands.call("DEL", self.group_key(group_id))

    # -- chords (ChordCounter) -----------------------------------------------------------

    def _chord_seconds(self) -> int:
        """Celery's ``chord_expires`` in whole seconds (0: the keys do not expire)."""
        expires = self.chord_expires if self.chord_expires is not None else self.expires
        return int(expires or 0)

    def _chord_result_seconds(self) -> int:
        """Celery's ``_chord_result_expires``: a saved header is read by users too, so
        it is kept at least as long as results (0: no change)."""
        keep = self._chord_seconds()
        if not keep or not self.expires:
            return 0
        return max(keep, int(self.expires))

    def _set_chord_key(self, key: str, value: bytes | str | int) -> tuple[Any, ...]:
        keep = self._chord_seconds()
        return ("SET", key, value, "EX", keep) if keep else ("SET", key, value)

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Celery's ``set_chord_size``: drop a previous run's claim, then ``.s``."""
        stem = self.group_key(group_id)
        with self.errors("set chord size"):
            self._commands.call("DEL", f"{stem}.c")
            self._commands.call(*self._set_chord_key(f"{stem}.s", int(size)))

    def save_chord_header(self, group_id: str, value: Mapping[str, Any]) -> None:
        data = self.codec.encode_value(dict(value)).data
        with self.errors("save chord header"):
            self._commands.call(*self._set_chord_key(self.group_key(group_id), data))

    def add_chord_part(
        self, group_id: str, task_id: str, index: int | None, part: bytes,
        *, claim_seconds: int, token: str,
    ) -> ChordProgress | None:
        call = chord_part(
            self.group_key(group_id), task_id, "+inf" if index is None else str(int(index)),
            part, ordered=self.chord_ordered, keep=self._chord_seconds(),
            keep_group=self._chord_result_seconds(), claim_seconds=claim_seconds,
            token=token,
        )
        with self.errors("count a chord part"):
            ready, diff, size, claimed = self._commands.script(call)
        if int(ready) == -1:
            return None
        return ChordProgress(ready=int(ready), size=None if size is None else int(size),
                             diff=int(diff or 0), claimed=bool(claimed))

    def chord_parts(self, group_id: str) -> list[bytes]:
        key = f"{self.group_key(group_id)}.j"
        with self.errors("read chord parts"):
            command = "ZRANGE" if self.chord_ordered else "LRANGE"
            parts: list[bytes] = self._commands.call(command, key, 0, -1)
        return parts

    def extend_chord_claim(self, group_id: str, token: str, seconds: int) -> bool:
        with self.errors("extend a chord claim"):
            return bool(self._commands.script(chord_claim(self.group_key(group_id), token,
                                                          seconds)))

    def finish_chord(self, group_id: str, token: str, done_seconds: int) -> bool:
        with self.errors("finish a chord"):
            return bool(self._commands.script(chord_finish(self.group_key(group_id), token,
                                                           done_seconds)))

    def drop_chord_size(self, group_id: str) -> None:
        with self.errors("drop a chord size"):
            self._commands.call("DEL", f"{self.group_key(group_id)}.s")

    def same_database(self, pool: redis.ConnectionPool) -> bool:
        """Whether connections of ``pool`` reach this backend's Redis database (same
        server, database number and credentials), so that one script may write both."""
        return Target.of(pool) == self._redis

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self.errors("get"):
            value = self._commands.call("GET", self.key_for(task_id))
        return None if value is None else self.codec.decode(value)

    def forget(self, task_id: str) -> None:
        with self.errors("forget"):
            self.client.delete(self.key_for(task_id))

    def subscribe(self, task_id: str) -> RedisSubscription:
        subscription = RedisSubscription(self, task_id)
        self._subscriptions.add(subscription)
        return subscription

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
        with contextlib.suppress(redis.exceptions.RedisError):
            self._commands.disconnect()
            self.client.close()
            self.listener.close()

    def async_twin(self) -> AsyncRedisBackend:
        """The asyncio twin over ``redis.asyncio`` (``results.redis_aio``): the same
        keys, values, rules and subscription protocol, its own connections."""
        from wiretask.results.redis_aio import AsyncRedisBackend  # noqa: PLC0415

        return AsyncRedisBackend(self)


class SyncedChannel:
    """A subscription's place in a task's channel, without the I/O: what the sync
    subscription here and its asyncio twin (``results.redis_aio``) share (the module
    doc's snapshot-and-token protocol).

    A (re)start takes a new private sync channel and token (``restart``); once both
    channels are subscribed the caller runs ``MULTI: GET key; PUBLISH sync token``
    and hands the value to ``snapshot``; then every pub/sub message to ``message``.
    ``pop`` gives the next value to deliver.
    """

    def __init__(self, channel: bytes, global_keyprefix: str) -> None:
        self.channel = channel
        self._prefix = global_keyprefix
        self.sync_channel = b""
        self.token = b""
        #: Skipping messages until the sync token comes by.
        self._syncing = False
        self._pending: list[bytes] = []
        #: The last value delivered.
        self.last: bytes | None = None

    def restart(self) -> None:
        """A new sync channel and token (for a first start or a resynchronization):
        from now on messages are skipped until the token comes by."""
        self.sync_channel = f"{self._prefix}{SYNC_PREFIX}{new_id()}".encode()
        self.token = new_id().encode()
        self._syncing = True
        self._pending.clear()

    def snapshot(self, current: bytes | None, *, deliver_unchanged: bool) -> None:
        """The value read with the token: delivered before anything newer (after a
        resynchronization only if it differs from the last one delivered). Messages
        that came after the token (a subscriber reading on its own may see them before
        the snapshot's reply) are newer and stay queued behind it."""
        if current is not None and (deliver_unchanged or current != self.last):
            self._pending.insert(0, current)

    def message(self, message: Mapping[str, Any] | None) -> None:
        """A message read from the pub/sub connection (``None``: none came)."""
        if message is None or message["type"] != "message":
            return
        if message["channel"] == self.sync_channel:
            if message["data"] == self.token:
                self._syncing = False
        elif message["channel"] == self.channel and not self._syncing:
            self._pending.append(message["data"])

    def pop(self) -> bytes | None:
        """The next value to deliver, if any."""
        if not self._pending:
            return None
        data = self._pending.pop(0)
        self.last = data
        return data

    def clear(self) -> None:
        self._pending.clear()


class RedisSubscription(Subscription):
    """One task's channel plus a private sync channel (see the module doc).

    It subscribes at once if Redis answers within ``SUBSCRIBE_TIMEOUT``; otherwise
    (Redis is away) the first ``next`` subscribes, within its own timeout, and still
    delivers the current state first."""

    def __init__(self, backend: RedisBackend, task_id: str) -> None:
        self._backend = backend
        self.task_id = task_id
        self.channel = backend.key_for(task_id).encode()
        self._pubsub: Any = None
        self._synced = SyncedChannel(self.channel, backend.global_keyprefix)
        self._closed = False
        #: Nothing delivered yet: the first snapshot is delivered even if "unchanged".
        self._fresh = True
        #: Why the subscription is not connected now (raised by ``next`` if it still is
        #: not when its timeout runs out).
        self._lost: ConnectionLost | None = None
        try:
            self._start(time.monotonic() + SUBSCRIBE_TIMEOUT)
        except ConnectionLost as exc:
            self._lost = exc  # the first next() subscribes, within its timeout

    def _start(self, deadline: float) -> None:
        """Subscribe, wait for the confirmations (until ``deadline``), take the snapshot
        with the token."""
        self._synced.restart()
        try:
            current = self._subscribe_and_snapshot(deadline)
        except BaseException:
            self._stop()
            raise
        self._synced.snapshot(current, deliver_unchanged=self._fresh)
        self._fresh = False

    def _subscribe_and_snapshot(self, deadline: float) -> bytes | None:
        backend = self._backend
        synced = self._synced
        with backend.listen_errors("subscribe"):
            client: Any = backend.listener  # redis-py's pubsub() is untyped
            pubsub = client.pubsub()
            self._pubsub = pubsub
            pubsub.subscribe(self.channel, synced.sync_channel)
            # The snapshot must not run before the SUBSCRIBE did, or the token would
            # be published to nobody. Confirmations come in order; wait for the last.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise redis.exceptions.TimeoutError("no SUBSCRIBE confirmation")
                message = pubsub.get_message(timeout=remaining)
                if (message is not None and message["type"] == "subscribe"
                        and message["channel"] == synced.sync_channel):
                    break
            with client.pipeline(transaction=True) as pipe:
                pipe.get(backend.key_for(self.task_id))
                pipe.publish(synced.sync_channel, synced.token)
                current, _ = pipe.execute()
        return current  # type: ignore[no-any-return]

    def _stop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                pubsub.close()

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next state within ``timeout``. A lost connection is resubscribed (with a
        fresh snapshot, so the final state is not missed) as often as it takes within
        ``timeout`` (``None``: for as long as it takes); the wait does not pass it.

        Raises:
            ConnectionLost: Redis was still unreachable when ``timeout`` ran out.
            TransportError: any other failure (a refused password: not retried).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        pause = _RESUBSCRIBE_BACKOFF[0]
        while not (self.finished or self._closed):
            data = self._synced.pop()
            if data is not None:
                return self._deliver(data)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if self._lost is not None:
                    raise self._lost
                return None
            wait = _WAIT_SLICE if remaining is None else min(_WAIT_SLICE, remaining)
            try:
                if self._pubsub is None:  # never subscribed, or the connection was lost
                    self._start(time.monotonic() + min(SUBSCRIBE_TIMEOUT, wait))
                    pause, self._lost = _RESUBSCRIBE_BACKOFF[0], None
                    continue
                with self._backend.listen_errors("receive"):
                    self._synced.message(self._pubsub.get_message(timeout=wait))
            except ConnectionLost as exc:
                if self._closed:
                    return None
                self._lost = exc
                self._stop()  # resubscribed at the next turn, after a pause
                left = None if deadline is None else deadline - time.monotonic()
                time.sleep(max(0.0, pause if left is None else min(pause, left)))
                pause = min(pause * 2, _RESUBSCRIBE_BACKOFF[1])
            except Exception:
                if self._closed:  # closed by another thread while reading
                    return None
                raise
        return None

    def _deliver(self, data: bytes) -> dict[str, Any]:
        meta = self._backend.codec.decode(data)
        if meta["status"] in states.READY_STATES:
            self.finished = True
            self.close()
        return meta

    def close(self) -> None:
        self._closed = True
        self._synced.clear()
        self._stop()
