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
  final one is never missed. If Redis stays unreachable, ``ConnectionLost`` is raised.

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
    "TASK_KEYPREFIX",
    "PendingResult",
    "RedisBackend",
    "RedisSubscription",
    "SyncedChannel",
]

#: Celery's ``task_keyprefix`` (``KeyValueStoreBackend``).
TASK_KEYPREFIX: Final = "celery-task-meta-"
#: Prefix of a subscription's private sync channel (after ``global_keyprefix``).
SYNC_PREFIX: Final = "wiretask-result-sync-"
#: ``store`` retries its WATCH transaction this often when other writers keep winning.
MAX_WATCH_RETRIES: Final = 100
#: Longest single wait inside ``Subscription.next`` (so ``close()`` is noticed).
_WAIT_SLICE: Final = 1.0


def celery_keyprefix(global_keyprefix: str | None) -> str:
    """Celery's task key prefix with ``global_keyprefix`` applied as Celery applies it
    (``BaseKeyValueStoreBackend._add_global_keyprefix``)."""
    if not global_keyprefix:
        return TASK_KEYPREFIX
    if global_keyprefix[-1] not in ":_-.":
        global_keyprefix += "_"
    return f"{global_keyprefix}{TASK_KEYPREFIX}"


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
    ) -> None:
        self.url = mask_url(url)
        self.expires = resolve_expires(expires)
        if registry is None:
            from wiretask.codecs import default_registry  # noqa: PLC0415 - avoid a cycle

            registry = default_registry()
        self.codec = MetaCodec(registry, serializer, compression)
        self.global_keyprefix = global_keyprefix or ""
        self.keyprefix = celery_keyprefix(global_keyprefix)
        #: The URL redis-py connects to (password included: never shown).
        self._connection_url = _without_transport_options(url)
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
    """One task's channel plus a private sync channel (see the module doc)."""

    def __init__(self, backend: RedisBackend, task_id: str) -> None:
        self._backend = backend
        self.task_id = task_id
        self.channel = backend.key_for(task_id).encode()
        self._pubsub: Any = None
        self._synced = SyncedChannel(self.channel, backend.global_keyprefix)
        self._closed = False
        self._start(deliver_unchanged=True)

    def _start(self, *, deliver_unchanged: bool) -> None:
        """Subscribe, wait for the confirmations, take the snapshot with the token."""
        self._synced.restart()
        try:
            current = self._subscribe_and_snapshot()
        except BaseException:
            self._stop()
            raise
        self._synced.snapshot(current, deliver_unchanged=deliver_unchanged)

    def _subscribe_and_snapshot(self) -> bytes | None:
        backend = self._backend
        synced = self._synced
        with backend.errors("subscribe"):
            client: Any = backend.client  # redis-py's pubsub() is untyped
            pubsub = client.pubsub()
            self._pubsub = pubsub
            pubsub.subscribe(self.channel, synced.sync_channel)
            # The snapshot must not run before the SUBSCRIBE did, or the token would
            # be published to nobody. Confirmations come in order; wait for the last.
            deadline = time.monotonic() + backend.socket_timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise redis.exceptions.TimeoutError("no SUBSCRIBE confirmation")
                message = pubsub.get_message(timeout=remaining)
                if (message is not None and message["type"] == "subscribe"
                        and message["channel"] == synced.sync_channel):
                    break
            with backend.client.pipeline(transaction=True) as pipe:
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
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not (self.finished or self._closed):
            data = self._synced.pop()
            if data is not None:
                meta = self._backend.codec.decode(data)
                if meta["status"] in states.READY_STATES:
                    self.finished = True
                    self.close()
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            wait = _WAIT_SLICE if remaining is None else min(_WAIT_SLICE, remaining)
            try:
                if self._pubsub is None:  # a resynchronization failed before
                    self._start(deliver_unchanged=False)
                    continue
                with self._backend.errors("receive"):
                    self._synced.message(self._pubsub.get_message(timeout=wait))
            except ConnectionLost:
                if self._closed:
                    return None
                # Resynchronize once; if Redis is still away, this raises.
                self._stop()
                self._start(deliver_unchanged=False)
            except Exception:
                if self._closed:  # closed by another thread while reading
                    return None
                raise
        return None

    def close(self) -> None:
        self._closed = True
        self._synced.clear()
        self._stop()
