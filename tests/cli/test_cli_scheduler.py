"""``wiretask scheduler``: moves due delayed messages on a Redis broker until SIGTERM."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from .conftest import CLI


@pytest.mark.redis
def test_scheduler_moves_due_messages_and_exits_0_on_sigterm(cli: CLI, redis_url: str) -> None:
    # Long enough that the message is still delayed when the broker gets it (a message
    # already due on arrival is queued at once).
    # delay_mode=native: held broker-side although no mover runs yet.
    task_id = cli.ok("--broker", f"{redis_url}?delay_mode=native", "call", "proj.tasks.add",
                     "1", "2", "--countdown", "3").strip()
    [listed] = json.loads(cli.ok("--broker", redis_url, "inspect", "--json"))["messages"]
    assert (listed["id"], listed["state"]) == (task_id, "scheduled")
    due = datetime.fromisoformat(listed["not_before"])
    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.2)
    # Due now, but nothing moves it on Redis without a scheduler (or a consumer).
    [before] = json.loads(cli.ok("--broker", redis_url, "inspect", "--json"))["messages"]
    assert before["state"] == "scheduled"

    scheduler = cli.popen("scheduler", "--broker", redis_url, "--interval", "0.1")
    try:
        deadline = time.monotonic() + 30
        state = before["state"]
        while state != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
            listing = json.loads(cli.ok("--broker", redis_url, "inspect", "--json"))
            state = listing["messages"][0]["state"]
        assert state == "ready"
    finally:
        code, _, err = cli.stop(scheduler)
    assert code == 0, err
    assert "scheduler: SIGTERM, stopping" in err


def test_scheduler_refuses_brokers_that_need_none(cli: CLI) -> None:
    done = cli.run("scheduler", "--broker", cli.broker_url)

    assert done.returncode == 2
    [line] = cli.errors(done)
    assert "the scheduler is for Redis brokers only" in line


def test_scheduler_interval_must_be_positive(cli: CLI) -> None:
    done = cli.run("scheduler", "--interval", "0")

    assert done.returncode == 2
    assert "--interval" in done.stderr
