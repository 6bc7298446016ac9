"""Delayed messages in a mixed fleet (TRANSPORTS.md §1.5): a wiretask client on default
settings sends countdown/eta messages that real Celery 5.7 workers run at their eta,
whether or not a wiretask process is there to hold them broker-side.

* no wiretask process consuming: the messages go out as Celery sends them and a Celery
  worker holds them until their eta (before ``delay_mode=auto`` they waited forever in
  wiretask's delayed set: the other interop tests always ran the scheduler);
* a wiretask worker alive: they are held broker-side and run once, although the wiretask
  worker, its consumer and Celery's restore scan all race to push them when due;
* the last mover killed (or stopped) while holding them: they still reach Celery, through
  their restore tokens, within one Celery restore scan after their eta;
* ``expires`` before the eta: ``REVOKED`` at the eta in every case, as Celery does.

The module's Celery worker scans for restorable messages every second
(``unacked_restore_interval=1``, ``unacked_restore_throttle=1``); with Kombu's defaults
the scan runs about every 100 s and when a worker starts consuming, which the last test
shows with a default-configured worker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from interop.support import WAIT, CeleryWorker, subprocess_env, wait_for, wait_for_movers
from interop.wiretask_tasks import SEQUENCE_KEY, make_app
from wiretask.app import App, AsyncResult
from wiretask.errors import TaskRevokedError
from wiretask.protocol import states
from wiretask.transports.redis import RedisTransport

pytestmark = [pytest.mark.interop, pytest.mark.redis]

REDIS_DB = 12
#: Celery's restore scan in this module: every second.
FAST_RESTORE = {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
#: Latest a task may run after its eta when a live process holds it (a Celery worker's
#: timer, a mover's 0.5 s period), with room for a loaded machine.
ON_TIME = 3.0
#: Latest after its eta when only Celery's restore scan brings it back (one 1-s scan),
#: with the same room.
RESTORED = 5.0


@pytest.fixture(scope="module")
def celery_worker(interop_url: str) -> Iterator[CeleryWorker]:
    with CeleryWorker(interop_url, ["celery"],
                      conf={"broker_transport_options": FAST_RESTORE}) as worker:
        yield worker


@pytest.fixture(scope="module")
def wt(interop_url: str, celery_worker: CeleryWorker) -> Iterator[App]:
    """A wiretask client on default settings (``delay_mode=auto``)."""
    app = make_app(interop_url)
    yield app
    app.close()


@pytest.fixture
def transport(interop_url: str) -> Iterator[RedisTransport]:
    """For looking at the broker (peek, movers)."""
    with RedisTransport(interop_url) as t:
        yield t


def start_wiretask_worker(url: str, queue: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "worker", "-A", "interop.wiretask_tasks:app",
         "-Q", queue, "-c", "1", "--loglevel", "WARNING"],
        env=subprocess_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def start_scheduler(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "scheduler", "--broker", url,
         "--interval", "0.2", "--loglevel", "WARNING"],
        env=subprocess_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err.decode(errors="replace")


def ran_at_its_eta(result: AsyncResult, late: float) -> dict[str, Any]:
    """``interop.when``'s outcome: it ran no earlier than its eta and at most ``late``
    seconds after it."""
    outcome: dict[str, Any] = result.get(timeout=WAIT)
    assert outcome["eta"] is not None, "the worker received no eta"
    eta = datetime.fromisoformat(outcome["eta"]).timestamp()
    assert eta <= outcome["ran_at"] <= eta + late, (
        f"ran {outcome['ran_at'] - eta:+.3f} s after its eta (allowed 0 .. {late} s)")
    return outcome


def revoked_at_its_eta(result: AsyncResult, eta: datetime) -> None:
    """Ended ``REVOKED`` (expired), and not before its eta: it was held until then."""
    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)
    assert result.state == states.REVOKED and "expired" in str(result.info)
    assert result.date_done is not None and result.date_done >= eta


def held(transport: RedisTransport, *results: AsyncResult) -> bool:
    """Whether every one of ``results`` waits broker-side (``scheduled``)."""
    states_by_id = {p.frame.task_id: p.state for p in transport.peek("celery")}
    return all(states_by_id.get(r.id) == "scheduled" for r in results)


def runs(client: redis.Redis) -> int:
    """How many ``interop.when`` tasks ran so far, on either side."""
    return int(client.get(SEQUENCE_KEY) or 0)


def test_with_no_wiretask_process_delayed_messages_run_on_celery_at_their_eta(
    wt: App, transport: RedisTransport, redis_client: redis.Redis
) -> None:
    assert transport.movers() == {}
    eta = datetime.now(UTC) + timedelta(seconds=2)
    results = [
        wt.send_task("interop.when", countdown=2.0),
        wt.send_task("interop.when", eta=eta),
        wt.send_task("interop.when", countdown=2.0, expires=60),
        wt.send_task("interop.when", eta=eta, expires=eta + timedelta(seconds=60)),
    ]
    expired = wt.send_task("interop.add", (1, 1), eta=eta, expires=1.0)

    # Nothing waits broker-side: Celery's worker holds them, as if Celery had sent them.
    assert not redis_client.keys("_wiretask.delayed*")
    for result in results:
        ran_at_its_eta(result, ON_TIME)
    revoked_at_its_eta(expired, eta)


def test_with_a_wiretask_worker_alive_they_are_held_broker_side_and_run_once(
    wt: App, interop_url: str, transport: RedisTransport, redis_client: redis.Redis
) -> None:
    """The wiretask worker consumes Celery's queue too: at the due time its consumer,
    its ``due()`` and the Celery worker's restore scan (every second) race to push each
    message, and exactly one push happens."""
    worker = start_wiretask_worker(interop_url, "celery")
    try:
        wait_for_movers(interop_url)
        before = runs(redis_client)
        eta = datetime.now(UTC) + timedelta(seconds=2)
        results = [wt.send_task("interop.when", countdown=2.0),
                   wt.send_task("interop.when", eta=eta, expires=60)]
        expired = wt.send_task("interop.add", (1, 1), eta=eta, expires=1.0)
        assert held(transport, *results, expired)

        for result in results:
            ran_at_its_eta(result, ON_TIME)
        revoked_at_its_eta(expired, eta)
        time.sleep(2)  # two more restore scans: a second push would have run by now
        assert runs(redis_client) - before == 2
        assert not redis_client.keys("_wiretask.delayed*")
    finally:
        err = stop(worker)
    assert worker.returncode == 0, err


def test_held_messages_of_a_killed_mover_still_run_on_celery(
    wt: App, interop_url: str, transport: RedisTransport, redis_client: redis.Redis
) -> None:
    """The only mover (a wiretask worker of another queue) is SIGKILLed while it holds
    a message: the message runs on Celery within one restore scan of its eta, once.
    A message published just after the kill, while the dead mover's heartbeat has not
    expired yet, is held too and comes back the same way."""
    mover = start_wiretask_worker(interop_url, "wiretask-only")
    try:
        wait_for_movers(interop_url)
        before = runs(redis_client)
        first = wt.send_task("interop.when", countdown=3.0)
        assert held(transport, first)
    finally:
        stop(mover, signal.SIGKILL)
    second = wt.send_task("interop.when", countdown=1.0)
    assert held(transport, second) and transport.movers()  # not expired yet

    ran_at_its_eta(second, RESTORED)
    ran_at_its_eta(first, RESTORED)
    time.sleep(2)
    assert runs(redis_client) - before == 2
    # Celery's restore took the tokens; the members it cannot know about are left for
    # the next mover, which drops them without pushing anything.
    assert redis_client.hlen("unacked") == 0
    assert transport.due() == 0 and not redis_client.keys("_wiretask.delayed*")


def test_when_the_scheduler_stops_publishers_stop_holding_and_held_messages_still_run(
    wt: App, interop_url: str, transport: RedisTransport
) -> None:
    earlier = set(transport.movers())  # a mover killed by the test before may linger
    scheduler = start_scheduler(interop_url)
    try:
        mine = wait_for(lambda: set(transport.movers()) - earlier,
                        what="the scheduler's heartbeat")
        wait_for_movers(interop_url)
        kept = wt.send_task("interop.when", countdown=3.0)
        assert held(transport, kept)
    finally:
        err = stop(scheduler)
    assert scheduler.returncode == 0, err
    assert not mine & set(transport.movers())  # removed on a clean stop, not expired
    wait_for_movers(interop_url, alive=False)
    direct = wt.send_task("interop.when", countdown=1.0)
    assert not held(transport, direct)

    ran_at_its_eta(direct, ON_TIME)
    ran_at_its_eta(kept, RESTORED)


def test_a_celery_worker_on_default_settings_runs_held_messages_when_it_starts(
    interop_url: str, celery_worker: CeleryWorker
) -> None:
    """No mover and no consumer when the message is due; a Celery worker with Kombu's
    default restore settings starts later and runs it: its first restore scan runs when
    it starts consuming. Under their own key prefix, out of reach of the module's Celery
    worker (a restore scan covers every queue of its database and prefix)."""
    url = f"{interop_url}?global_keyprefix=late:"
    app = make_app(url)
    mover = start_wiretask_worker(url, "wiretask-only")
    try:
        with RedisTransport(url) as transport:
            wait_for_movers(url)
            result = app.send_task("interop.when", countdown=1.0)
            assert held(transport, result)
            stop(mover, signal.SIGKILL)
            time.sleep(1.5)
            assert held(transport, result)  # past its eta, and nobody moved it
        with CeleryWorker(interop_url, ["celery"], name="late",
                          conf={"broker_transport_options": {"global_keyprefix": "late:"}}):
            outcome = result.get(timeout=WAIT)
        assert outcome["ran_at"] > datetime.fromisoformat(outcome["eta"]).timestamp()
    finally:
        stop(mover, signal.SIGKILL)
        app.close()
