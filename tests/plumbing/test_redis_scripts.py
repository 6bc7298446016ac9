"""The Lua scripts' builders (``wiretask._redis.scripts``): each owns its script's
``KEYS``/``ARGV`` layout, refuses inputs that do not fit it, and the scripts themselves
are the bytes Kombu-compatible deployments run. Plus ``Target``, the identity of a
Redis database that the broker and the result backend compare."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from wiretask._redis import scripts
from wiretask._redis.client import Commands, Target, target_of
from wiretask._redis.keys import Keys
from wiretask._redis.options import parse
from wiretask.errors import ValidationError
from wiretask.protocol.states import PendingState
from wiretask.results.redis import RedisBackend
from wiretask.transports.redis import RedisTransport

KEYS = parse("redis://h/0", {"global_keyprefix": "p:"}).keys


def pending(key: str, data: bytes, expires: float | None) -> PendingState:
    return PendingState(task_id="t", meta={"status": "SUCCESS", "task_id": "t"},
                        status="SUCCESS", key=key, data=data, expires=expires)


def test_the_scripts_are_the_bytes_they_were() -> None:
    """SHA1 of each script: the wire, and what ``SCRIPT LOAD`` caches on servers,
    changes only on purpose (and with ``spec/``). POP, DUE and PURGE changed when held
    messages gained restore tokens and DUE the movers' heartbeat
    (spec/TRANSPORTS.md §1.5); POP and ACK when they began to record and end wiretask's
    leases (issue 13, spec/TRANSPORTS.md §1.3)."""
    assert {s.sha for s in scripts.TRANSPORT_SCRIPTS} == {
        "944c6984b0f99d1d17bad45fc7a17ef987b24560",  # POP
        "991f0c76156d9715c4fbca4a2b5af8c452ab8ed4",  # ACK
        "9ebf01d9eadcd0237939ab95e09c0b4129dbad2f",  # DUE
        "4f3b7d90a67eceb332f5e3f5388c4e38b7d5a00e",  # PURGE
        "81ea524d4e1be29b1ca9800af7febc4ecaaa4458",  # DEAD_LETTER
    }
    assert scripts.STORE_IF_ABSENT.sha == "1d92e761207bc0a5dcc2f848fd88e9385f904187"


def test_pop_lays_out_keys_and_args_as_the_script_reads_them() -> None:
    lists = [f"p:{q}{suffix}" for suffix in ("", "\x06\x163") for q in ("a", "b")]
    call = scripts.pop(KEYS, queues=["a", "b"], lists=lists, now=1.5, promote_limit=100,
                       limit=3, lease_until=61.5, ack_tags=["t1", "t2"],
                       results=[("d1", pending("r1", b"v1", 60)),
                                ("d2", pending("r2", b"v2", None)),
                                ("d3", pending("r3", b"v3", 0.25))])
    assert call.script is scripts.POP
    assert call.keys == [
        "p:unacked_index", "p:unacked", "p:_wiretask.delayed", "p:_wiretask.delayed.messages",
        "p:_wiretask.leases", "p:_wiretask.delayed.queue.a", "p:_wiretask.delayed.queue.b",
        "p:a", "p:b", "p:a\x06\x163", "p:b\x06\x163", "r1", "r2", "r3",
    ]
    assert call.args == [
        "1.5", 2, "p:", 100, 3, 2, 3, "61.5", "a", "b", "t1", "t2",
        "d1", b"v1", "SETEX", "60", "d2", b"v2", "SET", "", "d3", b"v3", "PSETEX", "250",
    ]


@pytest.mark.parametrize(("queues", "lists"), [
    ([], []),
    (["a"], []),
    (["a", "b"], ["p:a", "p:b", "p:a\x06\x163"]),  # one bucket list missing
])
def test_pop_refuses_a_layout_the_script_cannot_read(queues: list[str],
                                                     lists: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        scripts.pop(KEYS, queues=queues, lists=lists, now=0.0, promote_limit=1, limit=1,
                    lease_until=60.0)
    assert info.value.field == "lists"


def test_the_fixed_layouts() -> None:
    assert scripts.ack(KEYS, ("t1", "t2")) == (
        scripts.ACK, ["p:unacked_index", "p:unacked", "p:_wiretask.leases"], ["t1", "t2"])
    delayed_keys = ["p:_wiretask.delayed", "p:_wiretask.delayed.messages", "p:unacked",
                    "p:unacked_index", "p:_wiretask.movers"]
    assert scripts.due(KEYS, now=2.25, limit=10) == (
        scripts.DUE, delayed_keys, ["2.25", 10, "p:", "_wiretask.delayed.queue.", "", "0.0"])
    assert scripts.due(KEYS, now=2.25, limit=10, mover="m1", expires=12.25) == (
        scripts.DUE, delayed_keys,
        ["2.25", 10, "p:", "_wiretask.delayed.queue.", "m1", "12.25"])
    assert scripts.purge(KEYS, "a", lists=["p:a", "p:a\x06\x163"]) == (
        scripts.PURGE,
        ["p:a", "p:a\x06\x163", "p:_wiretask.delayed.queue.a", "p:_wiretask.delayed",
         "p:_wiretask.delayed.messages", "p:unacked", "p:unacked_index"],
        [2])
    assert scripts.store_if_absent("k", b"v", 3) == (
        scripts.STORE_IF_ABSENT, ["k"], [b"v", "SETEX", "3"])
    with pytest.raises(ValidationError):
        scripts.purge(KEYS, "a", lists=[])
    assert scripts.dead_letter(KEYS, "t1", queue="q", reason="why", at=2.5,
                               entry_size=10) == (
        scripts.DEAD_LETTER,
        ["p:unacked_index", "p:unacked", "p:_wiretask.leases", "p:q.dead"],
        ["t1", 10, "why", "q", "2.5"])


@pytest.mark.parametrize(("expires", "command"), [
    (None, ("SET",)), (60, ("SETEX", "60")), (60.0, ("SETEX", "60")),
    (0.25, ("PSETEX", "250")), (0.0001, ("PSETEX", "1")),
])
def test_write_command(expires: float | None, command: tuple[str, ...]) -> None:
    assert scripts.write_command(expires) == command


def test_read_pop() -> None:
    queues = ["a", "b"]
    assert scripts.read_pop([0, "", []], queues) == (0, None, [], [])
    assert scripts.read_pop([0, "12.500000", [1, 3]], queues) == (0, 12.5, [0, 2], [])
    assert scripts.read_pop([2, "", [2], 2, b"e1", b"tag1", 1, b"e2", b""], queues) == (
        2, None, [1], [("b", b"e1", "tag1"), ("a", b"e2", "")])


@pytest.fixture
def commands(redis_url: str) -> Iterator[Commands]:
    pool = redis.ConnectionPool.from_url(redis_url)
    made = Commands(pool)
    yield made
    made.disconnect()
    pool.disconnect()


def test_builders_run_on_a_real_server(commands: Commands) -> None:
    assert commands.script(scripts.store_if_absent("k", b"v", 60)) == 1
    assert commands.script(scripts.store_if_absent("k", b"w", None)) == 0
    assert commands.call("GET", "k") == b"v"
    keys = Keys(prefix="", unacked="unacked", unacked_index="unacked_index",
                unacked_mutex="unacked_mutex", delayed="_wiretask.delayed",
                delayed_messages="_wiretask.delayed.messages")
    envelope = b'{"properties": {"delivery_tag": "tag1"}}'
    commands.call("LPUSH", "b", envelope)
    reply = scripts.read_pop(commands.script(scripts.pop(
        keys, queues=["a", "b"], lists=["a", "b"], now=1.0, promote_limit=10, limit=5,
        lease_until=61.0,
        results=[("x", pending("k", b"new", None)), ("y", pending("k2", b"v2", None))])),
        ["a", "b"])
    assert reply == (1, None, [0], [("b", envelope, "tag1")])  # "k" existed: not stored
    assert commands.call("GET", "k2") == b"v2"
    assert float(commands.call("ZSCORE", "_wiretask.leases", "tag1")) == 61  # leased
    assert commands.script(scripts.ack(keys, ["tag1"])) == 1
    assert commands.call("ZCARD", "_wiretask.leases") == 0  # the ack ended the lease


def test_a_target_is_server_database_and_credentials(redis_url: str) -> None:
    def target(url: str) -> Target:
        return Target.of(redis.ConnectionPool.from_url(url))

    base = redis_url.rsplit("/", 1)[0]
    assert target(redis_url) == target(redis_url)
    assert target(redis_url) != target(f"{base}/14")
    assert target(redis_url) != target(redis_url.replace("://", "://:pw@", 1))
    assert target(redis_url) != target(redis_url.replace("://", "://user:pw@", 1))
    assert target(redis_url) != target(redis_url.replace("redis://", "rediss://", 1))
    assert target(f"{base}") == target(f"{base}/0")
    assert "secret" not in repr(target(redis_url.replace("://", "://:secret@", 1)))


def test_broker_and_backend_expose_their_target(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    transport = RedisTransport(f"{redis_url}?visibility_timeout=60")
    try:
        assert target_of(backend) == target_of(transport) is not None
        assert transport.stores_results_of(backend)
        assert target_of(object()) is None
    finally:
        transport.close()
        backend.close()
