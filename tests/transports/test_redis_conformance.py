"""RedisTransport passes the public conformance kit, in every delay mode."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import pytest

from wiretask.results.redis import RedisBackend
from wiretask.testing import CHECKS, check_transport, closed_port
from wiretask.transports.redis import RedisTransport, run_scheduler


def unreachable(password: str) -> RedisTransport:
    return RedisTransport(f"redis://:{password}@127.0.0.1:{closed_port()}/0")


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    """The result backend on the broker's database: the fused path writes its results."""
    results = RedisBackend(redis_url)
    yield results
    results.close()


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_native_delay_mode_passes_every_check(
    redis_url: str, prefix: str, backend: RedisBackend
) -> None:
    factory = functools.partial(RedisTransport, redis_url, global_keyprefix=prefix,
                                delay_mode="native")
    report = check_transport(factory, process_factory=factory, broken_factory=unreachable,
                             fused_backend=backend, check_timeout=120)
    assert report.passed == CHECKS, report


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_auto_delay_mode_with_a_mover_alive_passes_every_check(
    redis_url: str, prefix: str, backend: RedisBackend
) -> None:
    """The default mode while a scheduler runs on the same database and key prefix:
    delayed messages are held broker-side, so every check applies."""
    stop = threading.Event()
    mover = threading.Thread(target=run_scheduler, args=(redis_url,), daemon=True,
                             kwargs={"interval": 0.05, "stop_event": stop,
                                     "global_keyprefix": prefix})
    mover.start()
    try:
        with RedisTransport(redis_url, global_keyprefix=prefix) as probe:
            deadline = time.monotonic() + 10
            while not probe.movers():
                assert time.monotonic() < deadline, "the scheduler wrote no heartbeat"
                time.sleep(0.05)
        factory = functools.partial(RedisTransport, redis_url, global_keyprefix=prefix)
        # The mover may move the kit's due message before the kit's own due() does.
        report = check_transport(factory, process_factory=factory,
                                 broken_factory=unreachable, fused_backend=backend,
                                 check_timeout=120, other_movers=True)
    finally:
        stop.set()
        mover.join(10)
    assert not mover.is_alive()
    assert report.passed == CHECKS, report


def test_poll_interval_without_publish_markers_passes_every_check(
    redis_url: str, backend: RedisBackend
) -> None:
    factory = functools.partial(RedisTransport, redis_url, poll_interval=0.02,
                                publish_markers=False, delay_mode="native")
    report = check_transport(factory, process_factory=factory, broken_factory=unreachable,
                             fused_backend=backend, check_timeout=120)
    assert report.passed == CHECKS, report


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_celery_delay_mode_passes_what_applies(
    redis_url: str, prefix: str, backend: RedisBackend
) -> None:
    """With ``delay_mode=celery`` a delayed message is deliverable at once (the worker
    holds it until its eta, as a Celery worker does), so the two checks that demand a
    broker-side delay do not apply."""
    factory = functools.partial(RedisTransport, f"{redis_url}?delay_mode=celery",
                                global_keyprefix=prefix)
    held_by_worker = "delay_mode=celery: the worker, not the broker, holds eta messages"
    report = check_transport(factory, process_factory=factory, broken_factory=unreachable,
                             fused_backend=backend, check_timeout=120,
                             skip={"delayed_delivery": held_by_worker,
                                   "publish_many": held_by_worker})
    assert set(report.passed) == set(CHECKS) - {"delayed_delivery", "publish_many"}, report


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_auto_delay_mode_without_a_mover_passes_what_applies(
    redis_url: str, prefix: str, backend: RedisBackend
) -> None:
    """The default mode with no mover on the database: delayed messages go out as
    Celery sends them (the consumer holds them), as with ``delay_mode=celery``, so the
    checks that demand a broker-side delay do not apply. (``broker_delay`` does: its
    transport calls ``due()`` first, which makes it a mover.)"""
    factory = functools.partial(RedisTransport, redis_url, global_keyprefix=prefix)
    no_mover = "delay_mode=auto with no mover alive: the consumer holds eta messages"
    held_checks = {"delayed_delivery", "publish_many", "size_purge_peek", "queue_stats"}
    report = check_transport(factory, process_factory=factory, broken_factory=unreachable,
                             fused_backend=backend, check_timeout=120,
                             skip=dict.fromkeys(held_checks, no_mover))
    assert set(report.passed) == set(CHECKS) - held_checks, report


def test_without_a_fused_backend_the_fused_check_says_why_it_is_skipped(redis_url: str) -> None:
    report = check_transport(functools.partial(RedisTransport, redis_url),
                             only=["fused_settlement"])
    assert dict(report.skipped) == {
        **dict.fromkeys(CHECKS, "not selected"),
        "fused_settlement": "the transport offers FusedSettlement, but no fused_backend was given",
    }
