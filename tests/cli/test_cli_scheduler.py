"""``wiretask scheduler``: moves due delayed messages on a Redis broker until SIGTERM."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import redis

from .conftest import CLI, wait_until


@pytest.mark.redis
def test_scheduler_moves_due_messages_and_exits_0_on_sigterm(cli: CLI, redis_url: str) -> None:
    # Long enough that the message is still delayed when the broker gets it (a message
    # already due on arrival is queued at once).
    # delay_mode=native: held broker-side although no mover runs yet.
    task_id = cli.ok("--broker", f"{redis_url}?delay_mode=native", "call", "proj.tasks.add",
                     "1", "2", "--countdown", "3").strip()
    [listed] = json.loads(cli.ok("--broker", redis_url, "queue", "show", "--json"))["messages"]
    assert (listed["id"], listed["state"]) == (task_id, "scheduled")
    due = datetime.fromisoformat(listed["not_before"])
    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.2)
    # Due now, but nothing moves it on Redis without a scheduler (or a consumer).
    [before] = json.loads(cli.ok("--broker", redis_url, "queue", "show", "--json"))["messages"]
    assert before["state"] == "scheduled"

    scheduler = cli.popen("scheduler", "--broker", redis_url, "--interval", "0.1")
    try:
        deadline = time.monotonic() + 30
        state = before["state"]
        while state != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
            listing = json.loads(cli.ok("--broker", redis_url, "queue", "show", "--json"))
            state = listing["messages"][0]["state"]
        assert state == "ready"
    finally:
        code, _, err = cli.stop(scheduler)
    assert code == 0, err
    assert "scheduler: SIGTERM, stopping" in err


@pytest.mark.redis
def test_scheduler_is_a_mover_under_the_apps_key_prefix_until_sigterm(
    cli: CLI, redis_url: str
) -> None:
    """The scheduler writes its heartbeat (``_wiretask.movers``, behind the
    ``global_keyprefix`` of the app's ``broker_transport_options``) while it runs, and
    removes it when it stops, so ``delay_mode=auto`` publishers stop holding at once."""
    (cli.cwd / "prefixed.py").write_text(
        "from wiretask.app import App\n"
        "app = App('prefixed', broker_transport_options={'global_keyprefix': 'p1:'})\n")
    client = redis.Redis.from_url(redis_url)
    try:
        scheduler = cli.popen("-A", "prefixed:app", "scheduler", "--broker", redis_url,
                              "--interval", "4")
        wait_until(lambda: client.zcard("p1:_wiretask.movers") == 1)
        [(_, expires)] = client.zrange("p1:_wiretask.movers", 0, -1, withscores=True)
        # 3 x the interval (12 s) is longer than MOVER_TTL (10 s)
        assert 11 < expires - time.time() <= 12
        assert client.keys("_wiretask.*") == []
        code, _, err = cli.stop(scheduler)
        assert code == 0, err
        assert client.zcard("p1:_wiretask.movers") == 0
    finally:
        client.close()


def test_scheduler_refuses_brokers_that_need_none(cli: CLI) -> None:
    done = cli.run("scheduler", "--broker", cli.broker_url)

    assert done.returncode == 2
    [line] = cli.errors(done)
    assert "the scheduler is for Redis brokers only" in line


def test_scheduler_interval_must_be_positive(cli: CLI) -> None:
    done = cli.run("scheduler", "--interval", "0")

    assert done.returncode == 2
    assert "--interval" in done.stderr
