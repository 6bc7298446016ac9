"""RedisTransport passes the public conformance kit, in both delay modes."""

from __future__ import annotations

import functools

import pytest

from wiretask.testing import CHECKS, check_transport
from wiretask.transports.redis import RedisTransport


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_native_delay_mode_passes_every_check(redis_url: str, prefix: str) -> None:
    factory = functools.partial(RedisTransport, redis_url, global_keyprefix=prefix)
    report = check_transport(factory, process_factory=factory, check_timeout=120)
    assert report.passed == CHECKS, report


def test_poll_interval_without_publish_markers_passes_every_check(redis_url: str) -> None:
    factory = functools.partial(RedisTransport, redis_url, poll_interval=0.02,
                                publish_markers=False)
    report = check_transport(factory, process_factory=factory, check_timeout=120)
    assert report.passed == CHECKS, report


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_celery_delay_mode_passes_what_applies(redis_url: str, prefix: str) -> None:
    """With ``delay_mode=celery`` a delayed message is deliverable at once (the worker
    holds it until its eta, as a Celery worker does), so the two checks that demand a
    broker-side delay do not apply."""
    factory = functools.partial(RedisTransport, f"{redis_url}?delay_mode=celery",
                                global_keyprefix=prefix)
    held_by_worker = "delay_mode=celery: the worker, not the broker, holds eta messages"
    report = check_transport(factory, process_factory=factory, check_timeout=120,
                             skip={"delayed_delivery": held_by_worker,
                                   "publish_many": held_by_worker})
    assert set(report.passed) == set(CHECKS) - {"delayed_delivery", "publish_many"}, report
