"""What is particular to the redis:// backend: Celery's key layout, pub/sub, errors."""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from wiretask.codecs import default_registry
from wiretask.errors import ConnectionLost, EncodeError, ImproperlyConfigured, TransportError
from wiretask.protocol import states
from wiretask.protocol.states import make_meta
from wiretask.results import backend_from_url
from wiretask.results.base import COMPRESSED_PAYLOAD_MAGIC
from wiretask.results.redis import RedisBackend, celery_keyprefix
from wiretask.transports.redis import RedisTransport

DONE = "2026-01-01T00:00:00+00:00"

pytestmark = pytest.mark.redis


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    b = RedisBackend(redis_url)
    yield b
    b.close()


def test_key_value_and_ttl_are_celerys(backend: RedisBackend, raw: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    meta = make_meta(task_id, states.SUCCESS, 42, date_done=DONE)
    backend.store(task_id, meta)
    key = f"celery-task-meta-{task_id}"
    assert raw.get(key) == default_registry().dumps(meta, "json").data
    assert raw.ttl(key) == 86400


def test_no_expiry_is_a_plain_set_and_fractions_use_milliseconds(
    redis_url: str, raw: redis.Redis
) -> None:
    forever = RedisBackend(redis_url, expires=None)
    short = RedisBackend(redis_url, expires=1.5)
    forever.store("a", make_meta("a", "PROGRESS", 1))
    short.store("b", make_meta("b", "PROGRESS", 1))
    assert raw.ttl("celery-task-meta-a") == -1
    assert 0 < raw.pttl("celery-task-meta-b") <= 1500
    forever.close()
    short.close()


def test_every_store_is_published_on_the_key_channel(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    wait_until(lambda: raw.pubsub_numsub(key)[0][1] == 1)
    backend.store(task_id, make_meta(task_id, "PROGRESS", {"current": 1}))
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
    assert message is not None
    assert message["channel"] == key.encode()
    assert message["data"] == raw.get(key)
    pubsub.close()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [(None, "celery-task-meta-"), ("", "celery-task-meta-"), ("app", "app_celery-task-meta-"),
     ("app:", "app:celery-task-meta-"), ("a-", "a-celery-task-meta-"),
     ("a.", "a.celery-task-meta-")],
)
def test_global_keyprefix_is_applied_as_celery_does(prefix: str | None, expected: str) -> None:
    assert celery_keyprefix(prefix) == expected


def test_global_keyprefix_option(redis_url: str, raw: redis.Redis) -> None:
    backend = backend_from_url(redis_url, transport_options={"global_keyprefix": "tenant"})
    backend.store("t", make_meta("t", "PROGRESS", 1))
    assert raw.exists("tenant_celery-task-meta-t")
    with backend.subscribe("t") as sub:
        assert sub.next(5) == make_meta("t", "PROGRESS", 1)
    backend.close()


def test_reads_celery_57_compressed_values(backend: RedisBackend, raw: redis.Redis) -> None:
    meta = make_meta("c", states.SUCCESS, "x" * 1000, date_done=DONE)
    payload = default_registry().dumps(meta, "json").data
    raw.set("celery-task-meta-c",
            COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip\x00" + zlib.compress(payload))
    assert backend.get("c") == meta


def test_writes_compressed_values_with_compression(redis_url: str, raw: redis.Redis) -> None:
    backend = RedisBackend(redis_url, compression="zlib")
    meta = make_meta("z", states.SUCCESS, "y" * 1000, date_done=DONE)
    backend.store("z", meta)
    value = raw.get("celery-task-meta-z")
    assert isinstance(value, bytes)
    assert value.startswith(COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip\x00")
    assert len(value) < 500
    assert RedisBackend(redis_url).get("z") == meta
    backend.close()


def test_an_unreadable_value_does_not_block_a_store(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    raw.set("celery-task-meta-g", b"\xff not json")
    backend.store("g", make_meta("g", states.SUCCESS, 1, date_done=DONE))
    assert backend.get("g") == make_meta("g", states.SUCCESS, 1, date_done=DONE)


def test_racing_final_states_publish_exactly_one(redis_url: str, raw: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    wait_until(lambda: raw.pubsub_numsub(key)[0][1] == 1)
    backends = [RedisBackend(redis_url) for _ in range(8)]
    barrier = threading.Barrier(len(backends))

    def finish(n: int) -> None:
        barrier.wait(10)
        backends[n].store(task_id, make_meta(task_id, states.SUCCESS, n, date_done=DONE))

    threads = [threading.Thread(target=finish, args=(n,)) for n in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    published = []
    deadline = time.monotonic() + 1.5  # let any second PUBLISH arrive
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)  # None also for the confirmation
        if message is not None:
            published.append(message["data"])
    assert len(published) == 1
    assert published[0] == raw.get(key)
    pubsub.close()
    for b in backends:
        b.close()


def test_the_url_hides_the_password(redis_url: str) -> None:
    with_password = redis_url.replace("redis://", "redis://:s3cret@")
    backend = RedisBackend(with_password)
    assert "s3cret" not in backend.url and ":**@" in backend.url
    backend.close()


def test_refused_connection_is_connection_lost() -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = RedisBackend(f"redis://:pw@127.0.0.1:{port}/0", socket_connect_timeout=1)
    start = time.monotonic()
    with pytest.raises(ConnectionLost) as info:
        backend.get("t")
    assert time.monotonic() - start < 5
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert "pw" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    # A subscription reports it from next(), once its timeout ran out without Redis.
    with pytest.raises(ConnectionLost):
        backend.subscribe("t").next(0.2)
    backend.close()


def test_bad_credentials_are_transport_errors(redis_server: Any) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("requirepass", "right")
    try:
        wrong = RedisBackend(f"redis://:wrong@127.0.0.1:{redis_server.port}/0")
        with pytest.raises(TransportError) as info:
            wrong.get("t")
        assert not isinstance(info.value, ConnectionLost)
        assert "wrong" not in str(info.value)
        wrong.close()
        none = RedisBackend(f"redis://127.0.0.1:{redis_server.port}/0")
        with pytest.raises(TransportError) as info:
            none.store("t", make_meta("t", "PROGRESS", 1))
        assert not isinstance(info.value, ConnectionLost)
        none.close()
        right = RedisBackend(f"redis://:right@127.0.0.1:{redis_server.port}/0")
        right.store("t", make_meta("t", "PROGRESS", 1))
        assert right.get("t") == make_meta("t", "PROGRESS", 1)
        right.close()
    finally:
        admin.close()


@pytest.mark.slow
def test_a_subscription_survives_a_redis_restart(redis_server: Any) -> None:
    url = f"{redis_server.url}/0"
    backend = RedisBackend(url, socket_timeout=2, socket_connect_timeout=1)
    task_id = str(uuid.uuid4())
    sub = backend.subscribe(task_id)
    backend.store(task_id, make_meta(task_id, "PROGRESS", 1))
    assert sub.next(5) == make_meta(task_id, "PROGRESS", 1)
    redis_server.stop()
    with pytest.raises(ConnectionLost):  # the dead connection is noticed, resync fails
        sub.next(5)
    redis_server.start()
    backend.store(task_id, make_meta(task_id, states.SUCCESS, 2, date_done=DONE))
    assert sub.next(10) == make_meta(task_id, states.SUCCESS, 2, date_done=DONE)
    assert sub.finished
    backend.close()


def test_unknown_option_and_bad_url(redis_url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        backend_from_url(redis_url, transport_options={"visibility_timeout": 1})
    with pytest.raises(ImproperlyConfigured):
        RedisBackend("redis://127.0.0.1:notaport/0")


def test_subscriptions_close_their_connections(backend: RedisBackend, raw: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    subs = [backend.subscribe(task_id) for _ in range(3)]
    assert raw.pubsub_numsub(key)[0][1] == 3
    for sub in subs:
        sub.close()
    wait_until(lambda: raw.pubsub_numsub(key)[0][1] == 0)
    assert not any(name.startswith(b"wiretask-result-sync-") for name in raw.pubsub_channels())


def test_pending_states_are_encoded_now_and_stored_later(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    task_id = str(uuid.uuid4())
    with pytest.raises(EncodeError):  # refused when prepared, not when written
        backend.pending(task_id, make_meta(task_id, states.SUCCESS, object()))
    pending = backend.pending(task_id, make_meta(task_id, states.SUCCESS, 7))
    assert backend.get(task_id) is None
    backend.store_pending(pending)
    assert backend.get(task_id) == make_meta(task_id, states.SUCCESS, 7)
    # The state rules hold for a pending state too: a ready state is never replaced.
    backend.store_pending(backend.pending(task_id, make_meta(task_id, states.FAILURE, None)))
    assert backend.get(task_id) == make_meta(task_id, states.SUCCESS, 7)
    backend.close()


def test_same_database_compares_server_database_and_credentials(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    base = redis_url.rsplit("/", 1)[0]
    transports = [RedisTransport(redis_url), RedisTransport(f"{base}/14"),
                  RedisTransport(redis_url.replace("://", "://user:pw@", 1))]
    same, other_db, other_user = transports
    assert same.stores_results_of(backend)
    assert not other_db.stores_results_of(backend)
    assert not other_user.stores_results_of(backend)
    assert not same.stores_results_of(object())
    for transport in transports:
        transport.close()
    backend.close()
