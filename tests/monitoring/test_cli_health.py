"""``wiretask queue show`` counts exactly whatever ``--limit`` is, ``wiretask purge`` sees
broker-side delayed messages and asks first, and every monitoring command fails loudly
(non-zero, one clear line) when the broker cannot be reached or a threshold is crossed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from wiretask.protocol.frame import Outgoing, Route
from wiretask.testing import closed_port
from wiretask.transports.base import Transport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.sqlite import SQLiteTransport

from .conftest import frame, munin_run, run_cli


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Transport]]:
    if request.param == "sqlite":
        db = tmp_path / "broker.db"
        transport: Transport = SQLiteTransport(db)
        url = f"sqlite:///{db}"
    else:
        url = request.getfixturevalue("redis_url")
        transport = RedisTransport(url, delay_mode="native")  # holds without a mover
    try:
        yield url, transport
    finally:
        transport.close()


def issue_example(transport: Transport, queue: str = "celery") -> None:
    """150 ready messages and 5 held broker-side until later (the issue's example)."""
    transport.publish_many([Outgoing(frame(f"r{i}".encode()), Route(queue))
                            for i in range(150)])
    later = datetime.now(UTC) + timedelta(minutes=10)
    transport.publish_many([Outgoing(frame(f"s{i}".encode()), Route(queue), later)
                            for i in range(5)])


def test_inspect_counts_ready_and_scheduled_exactly_past_the_limit(
        broker: tuple[str, Transport]) -> None:
    url, transport = broker
    issue_example(transport)

    done = run_cli(url, "queue", "show", "celery")

    assert done.returncode == 0, done.stderr
    assert ("155 waiting (150 ready, 5 scheduled, showing the first 100), "
            "0 dead-lettered") in done.stdout
    data = json.loads(run_cli(url, "queue", "show", "--limit", "3", "--json").stdout)
    assert (data["waiting"], data["ready"], data["scheduled"]) == (155, 150, 5)
    assert len(data["messages"]) == 3


def test_purge_removes_ready_and_delayed_messages_after_asking(
        broker: tuple[str, Transport]) -> None:
    url, transport = broker
    issue_example(transport)
    issue_example(transport, "other")
    held = transport.receive(["other"], timeout=5)
    assert held is not None

    refused = run_cli(url, "purge", "celery", stdin="no\n")
    assert refused.returncode == 1
    assert "Are you sure you want to delete them (yes/NO)?" in refused.stderr
    assert "There is no undo" in refused.stderr
    assert "aborted: nothing was purged" in refused.stderr
    stats = json.loads(run_cli(url, "stats", "celery", "--json").stdout)["queues"][0]
    assert (stats["ready"], stats["scheduled"]) == (150, 5)

    asked = run_cli(url, "purge", "celery", "other", stdin="yes\n")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines() == [
        "purged 155 messages from 'celery'",
        "purged 154 messages from 'other'",  # the one in flight stays with its consumer
        "purged 309 messages from 2 queues",
    ]
    after = json.loads(run_cli(url, "stats", "celery", "other", "--json").stdout)["queues"]
    assert [(s["ready"], s["scheduled"], s["in_flight"]) for s in after] == [
        (0, 0, 0), (0, 0, 1)]
    held.ack()

    issue_example(transport)
    forced = run_cli(url, "purge", "-f", "celery", stdin="")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == "purged 155 messages from 'celery'\n"
    assert "Are you sure" not in forced.stderr


def test_purge_sees_what_celery_purge_cannot(redis_url: str) -> None:
    """On Redis, delayed messages wait outside the queue's list (what Celery purges)."""
    transport = RedisTransport(redis_url, delay_mode="native")
    try:
        issue_example(transport)
    finally:
        transport.close()
    assert redis.Redis.from_url(redis_url).llen("celery") == 150  # what LLEN sees
    done = run_cli(redis_url, "purge", "-f", "celery")
    assert done.stdout == "purged 155 messages from 'celery'\n"
    assert not redis.Redis.from_url(redis_url).keys("_wiretask.delayed*")


def test_thresholds_make_stats_fail(broker: tuple[str, Transport]) -> None:
    url, transport = broker
    issue_example(transport)

    assert run_cli(url, "stats", "--fail-above", "150", "--max-age", "60").returncode == 0
    over = run_cli(url, "stats", "--fail-above", "149")
    assert over.returncode == 3
    assert over.stderr.splitlines()[-1] == (
        "wiretask stats: threshold: queue 'celery': 150 ready messages, above 149")
    assert "celery" in over.stdout  # the table is still printed
    old = run_cli(url, "stats", "--max-age", "0", "--json")
    assert old.returncode == 3
    assert "its oldest ready message has waited" in old.stderr
    assert json.loads(old.stdout)["queues"][0]["ready"] == 150
    watched = run_cli(url, "stats", "--watch", "0.1", "--count", "5", "--fail-above", "10")
    assert watched.returncode == 3
    assert watched.stdout.count("Ctrl-C to stop") == 1  # stops at the first breach
    assert run_cli(url, "stats", "--count", "2").returncode == 2  # --count needs --watch


@pytest.mark.parametrize("command", [
    ["stats"], ["stats", "--json"], ["queue", "show"], ["purge", "-f", "celery"],
    ["inspect", "ping"], ["control", "revoke", "x"], ["status"],
    ["munin", "fetch"], ["munin", "config"], ["exporter", "--port", "0"],
])
def test_an_unreachable_broker_is_a_failure_with_a_clear_message(command: list[str]) -> None:
    url = f"redis://:secret@127.0.0.1:{closed_port()}/0"

    done = run_cli(url, *command, timeout=60)

    assert done.returncode == 1, (done.stdout, done.stderr)
    *announced, line = done.stderr.splitlines()  # munin stays quiet but for errors
    assert len(announced) == (0 if command[0] == "munin" else 1), done.stderr
    assert line.startswith(f"wiretask {command[0]}: error: ")
    assert "127.0.0.1" in line and "secret" not in line
    assert "Connection refused" in line or "connect" in line.lower()


def test_munin_autoconf_says_no_with_the_reason(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    done = munin_run(tmp_path, "wiretask_celery", url, "autoconf")
    assert done.returncode == 0  # Munin's rule for autoconf
    assert done.stdout.startswith("no (cannot read queue statistics from redis://127.0.0.1:")


def test_munin_refuses_a_bad_threshold_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    done = munin_run(tmp_path, "wiretask_celery", f"sqlite:///{db}", "config",
                     env={"age_warning": "soon"})
    assert done.returncode == 2
    assert "env.age_warning must be a Munin threshold (max, or min:max), got 'soon'" in (
        done.stderr)
