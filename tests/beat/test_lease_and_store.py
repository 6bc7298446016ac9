"""The broker lease (memory, SQLite, real Redis: one contract) and the schedule file."""

from __future__ import annotations

import json
import logging
import os
import shelve
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from wiretask.app import App
from wiretask.beat.lease import Lease, MemoryLease, Outcome, RedisLease, SQLiteLease, lease_for
from wiretask.beat.store import Run, ScheduleFile
from wiretask.errors import ConnectionLost, ImproperlyConfigured
from wiretask.testing import ForwardingTransport
from wiretask.transports.memory import MemoryTransport

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def lease_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_lease(
    lease_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[object]:
    made: list[Lease] = []
    tag = f"{request.node.name}-{time.monotonic_ns()}"

    def make(name: str = "proj") -> Lease:
        if lease_kind == "memory":
            lease: Lease = MemoryLease(name, tag)
        elif lease_kind == "sqlite":
            lease = SQLiteLease(name, str(tmp_path / "broker.db"))
        else:
            lease = RedisLease(name, request.getfixturevalue("redis_url"))
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.close()


def test_one_holder_at_a_time(make_lease: object) -> None:
    assert callable(make_lease)
    one, two = make_lease(), make_lease()

    assert one.holder() is None
    assert one.acquire("a", 5)
    assert not two.acquire("b", 5)
    assert two.holder() == "a"
    assert one.acquire("a", 5)  # the holder may take it again
    assert one.renew("a", 5)
    assert not two.renew("b", 5)
    two.release("b")  # not the holder: nothing happens
    assert one.holder() == "a"
    one.release("a")
    assert two.acquire("b", 5)
    assert not one.renew("a", 5)


def test_an_expired_lease_is_taken_and_its_old_holder_is_fenced(make_lease: object) -> None:
    assert callable(make_lease)
    old, new = make_lease(), make_lease()
    assert old.acquire("old", 0.3)
    assert old.replace_runs("old", {"tick": Run(T0, 3)}, "UTC")

    time.sleep(0.45)
    assert new.acquire("new", 5)

    assert not old.renew("old", 5)
    assert old.record("old", "tick", 3, Run(T0 + timedelta(seconds=1), 4), "UTC") is Outcome.LOST
    assert not old.replace_runs("old", {}, "UTC")
    assert new.runs("UTC") == {"tick": Run(T0, 3)}


def test_runs_are_recorded_by_compare_and_set(make_lease: object) -> None:
    assert callable(make_lease)
    lease = make_lease()
    assert lease.acquire("a", 5)
    assert lease.replace_runs("a", {"x": Run(T0, 2), "y": Run(T0, 0)}, "UTC")

    later = Run(T0 + timedelta(seconds=10), 3)
    assert lease.record("a", "x", 1, later, "UTC") is Outcome.CONFLICT
    assert lease.record("a", "x", 2, later, "UTC") is Outcome.RECORDED
    assert lease.record("a", "x", 2, later, "UTC") is Outcome.CONFLICT
    assert lease.record("a", "new", 0, Run(T0, 1), "UTC") is Outcome.RECORDED
    assert lease.runs("UTC") == {"x": later, "y": Run(T0, 0), "new": Run(T0, 1)}

    assert lease.replace_runs("a", {"y": Run(T0, 5)}, "UTC")  # x and new forgotten
    assert make_lease().runs("UTC") == {"y": Run(T0, 5)}


def test_runs_of_another_time_zone_are_reset(
    make_lease: object, caplog: pytest.LogCaptureFixture
) -> None:
    assert callable(make_lease)
    lease = make_lease()
    assert lease.acquire("a", 5)
    assert lease.replace_runs("a", {"x": Run(T0, 2)}, "UTC")

    with caplog.at_level(logging.WARNING, logger="wiretask.beat"):
        assert lease.runs("Europe/Paris") == {}
    assert "Reset: Timezone changed from 'UTC' to 'Europe/Paris'" in caplog.text


def test_leases_of_other_names_are_independent(make_lease: object) -> None:
    assert callable(make_lease)
    assert make_lease("one").acquire("a", 5)
    assert make_lease("two").acquire("b", 5)


@pytest.mark.redis
def test_redis_keys_follow_global_keyprefix_and_expire_in_redis(redis_url: str) -> None:
    lease = RedisLease("proj", redis_url, global_keyprefix="app1:")
    try:
        assert lease.acquire("a", 3)
        assert lease.replace_runs("a", {"x": Run(T0, 1)}, "UTC")
        client = redis.Redis.from_url(redis_url)
        assert client.get("app1:_wiretask.beat.proj") == b"a"
        assert 0 < client.pttl("app1:_wiretask.beat.proj") <= 3000
        stored = json.loads(client.hget("app1:_wiretask.beat.proj.runs", "x"))
        assert stored == {"last_run_at": T0.isoformat(), "total_run_count": 1, "tz": "UTC"}
        client.close()
    finally:
        lease.close()


@pytest.mark.redis
def test_redis_outage_is_a_connection_lost(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    lease = RedisLease("proj", url, socket_connect_timeout=0.5)
    try:
        assert lease.acquire("a", 5)
        redis_server.stop()  # type: ignore[attr-defined]
        with pytest.raises(ConnectionLost, match="beat lease: renew"):
            lease.renew("a", 5)
    finally:
        lease.close()


def test_lease_for_picks_the_brokers_kind(tmp_path: Path) -> None:
    memory = lease_for(App("p", broker="memory://named"), "p")
    sqlite = lease_for(App("p", broker=f"sqlite:///{tmp_path / 'b.db'}"), "p")
    redis_lease = lease_for(App("p", broker="redis://127.0.0.1:1/0"), "p")  # no I/O yet

    assert isinstance(memory, MemoryLease) and memory.url == "memory://named"
    assert isinstance(sqlite, SQLiteLease) and sqlite.path == str(tmp_path / "b.db")
    assert isinstance(redis_lease, RedisLease)
    redis_lease.close()


def test_lease_for_refuses_a_transport_without_one() -> None:
    app = App("p", transport=lambda: ForwardingTransport(MemoryTransport("fwd")))

    with pytest.raises(ImproperlyConfigured, match="has none for ForwardingTransport"):
        lease_for(app, "p")


def test_lease_for_refuses_rabbitmq_for_now_without_showing_the_password() -> None:
    app = App("p", broker="amqp://guest:secret@127.0.0.1:1//")  # no I/O: nothing listens

    with pytest.raises(ImproperlyConfigured, match="has none for AMQPTransport") as raised:
        lease_for(app, "p")
    assert "secret" not in str(raised.value)


# -- the schedule file --------------------------------------------------------------------


def test_schedule_file_round_trip_is_atomic_json(tmp_path: Path) -> None:
    path = tmp_path / "celerybeat-schedule"
    file = ScheduleFile(path)
    assert file.load("UTC") == {}

    file.save("UTC", {"a": Run(T0, 4), "b": Run(T0 + timedelta(hours=1), 0)})

    assert ScheduleFile(path).load("UTC") == {"a": Run(T0, 4),
                                             "b": Run(T0 + timedelta(hours=1), 0)}
    document = json.loads(path.read_text())
    assert document["format"] == "wiretask.beat.schedule"
    assert document["tz"] == "UTC"
    assert sorted(os.listdir(tmp_path)) == ["celerybeat-schedule"]  # no temporary left


def test_schedule_file_resets_when_the_time_zone_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = ScheduleFile(tmp_path / "s")
    file.save("UTC", {"a": Run(T0, 4)})

    with caplog.at_level(logging.WARNING, logger="wiretask.beat"):
        assert file.load("Europe/London") == {}
    assert "Reset: Timezone changed from 'UTC' to 'Europe/London'" in caplog.text


@pytest.mark.parametrize("content", [b"garbage", b'{"entries": {}}', b"[1]",
                                     b'{"format": "wiretask.beat.schedule", "version": 9}'])
def test_a_file_that_is_not_a_schedule_is_refused_not_overwritten(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "celerybeat-schedule"
    path.write_bytes(content)

    with pytest.raises(ImproperlyConfigured, match="is not a wiretask beat schedule file"):
        ScheduleFile(path).check()
    assert path.read_bytes() == content


def test_a_celery_shelve_schedule_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "celerybeat-schedule"
    with shelve.open(str(path)) as db:  # what Celery's PersistentScheduler writes
        db["entries"] = {}
        db["tz"] = "UTC"
    written = list(tmp_path.iterdir())  # one file, or .dat/.dir/.bak (dbm.dumb)
    assert written

    for file in written:
        with pytest.raises(ImproperlyConfigured, match="Celery beat's shelve database"):
            ScheduleFile(file).check()


def test_an_empty_file_is_an_empty_history(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"")

    assert ScheduleFile(path).load("UTC") == {}


@pytest.mark.parametrize("parent", ["missing", "a-file"])
def test_a_place_beat_cannot_write_is_refused_at_once(tmp_path: Path, parent: str) -> None:
    (tmp_path / "a-file").write_text("")

    with pytest.raises(ImproperlyConfigured, match="is not a directory"):
        ScheduleFile(tmp_path / parent / "celerybeat-schedule").check()
