"""Large bodies (issue 13 item 6): a body over the limit is refused before it is parsed
(the poison catalogue checks that on every transport), and a large valid body costs a
worker at most three times its size at its peak."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from wiretask.app import App
from wiretask.errors import TransportError
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.redis import RedisTransport, envelope
from wiretask.transports.redis.delivery import KEPT_ENTRY
from wiretask.transports.redis.envelope import Received

from . import faultapp
from .support import wait_until, worker_env

#: 40 MB: above glibc's largest dynamic mmap threshold, so that what is freed goes
#: back to the system and the high-water mark shows the copies the code makes.
BODY = 40_000_000


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (the peak) of process ``pid``, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


@pytest.fixture(params=["redis", "sqlite"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    url = request.getfixturevalue("redis_url")
    yield url


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_large_valid_body_costs_a_worker_at_most_three_times_its_size(
    broker: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    env = worker_env(broker)
    env["WIRETASK_TEST_MAX_BODY"] = str(2 * BODY)
    # Big blocks straight from the system, whatever glibc learnt from earlier frees:
    # the high-water mark then counts the copies wiretask makes, not the allocator's.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    client = App("large-bodies", broker=broker, backend=broker)
    client.conf.max_decompressed_size = 2 * BODY
    worker = subprocess.Popen([sys.executable, "-m", "reliability.run_worker", "threads", "1"],
                              env=env)
    try:
        client.send_task(faultapp.record.name, (str(ran), "warm")).get(timeout=60)
        time.sleep(0.5)  # settled after the warm-up
        before = memory(worker.pid)["VmRSS"]
        client.send_task(faultapp.big.name, ("x" * BODY, str(ran)))
        wait_until(lambda: ran.exists() and str(BODY) in ran.read_text(), 90,
                   "the large task to run")
        peak = memory(worker.pid)["VmHWM"]
    finally:
        worker.kill()
        worker.wait(10)
        client.close()
    growth = (peak - before) / BODY
    assert growth <= 3.15, f"a {BODY} byte body took {growth:.2f} times its size"


@pytest.mark.redis
def test_a_large_redis_entry_is_dead_lettered_whole_from_redis(redis_url: str) -> None:
    """A delivery does not keep a copy of a large entry; a dead letter is moved from
    what Redis holds, byte for byte."""
    transport = RedisTransport(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        body = b"y" * (KEPT_ENTRY * 2)
        transport.publish(Frame(body=body, content_type="application/data",
                                content_encoding="binary", headers={"id": "big"}), Route("q"))
        delivery = transport.receive(["q"], timeout=1)
        assert delivery is not None and delivery.frame.body == body
        assert delivery.entry is None and delivery.entry_size > KEPT_ENTRY
        delivery.dead_letter("too big to run")
        [dead] = transport.dead_letters("q")
        assert dead.reason == "too big to run"
        assert dead.frame is not None and dead.frame.body == body
        assert client.hlen("unacked") == 0 and client.zcard("_wiretask.leases") == 0
    finally:
        client.close()
        transport.close()


@pytest.mark.redis
def test_dead_lettering_a_delivery_whose_lease_lapsed_says_so(redis_url: str) -> None:
    transport = RedisTransport(redis_url, lease_timeout=1, lease_interval=0.2)
    other = RedisTransport(redis_url, lease_timeout=1, restore_interval=0)
    try:
        transport.publish(Frame(body=b"1", content_type="application/data",
                                content_encoding="binary", headers={"id": "m"}), Route("q"))
        delivery = transport.receive(["q"], timeout=1)
        assert delivery is not None
        transport._leases.release(delivery)  # its heartbeat stops: the lease lapses
        time.sleep(1.1)
        assert other.restore_visible() == 1  # back in its queue
        with pytest.raises(TransportError, match="lease ran out"):
            delivery.dead_letter("late")
        assert transport.dead_letters("q") == []
        again = other.receive(["q"], timeout=2)
        assert again is not None and again.redelivered
        again.ack()
    finally:
        other.close()
        transport.close()


# -- the body read straight from a Redis entry's bytes ------------------------------------


def _full(raw: bytes) -> Received | str:
    try:
        return envelope._read(envelope._parse(raw), None, "q")
    except envelope.BadEntry as exc:
        return exc.reason


def _decoded(raw: bytes) -> Received | str:
    try:
        return envelope.decode(raw, queue="q")
    except envelope.BadEntry as exc:
        return exc.reason


@given(body=st.binary(max_size=300),
       headers=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5),
                               max_size=3),
       cut=st.integers(min_value=0, max_value=400), junk=st.binary(max_size=3))
def test_reading_the_body_apart_gives_what_the_full_parse_gives(
    body: bytes, headers: dict[str, Any], cut: int, junk: bytes
) -> None:
    frame = Frame(body=body, content_type="application/data", content_encoding="binary",
                  headers=headers)
    raw = envelope.encode(frame, exchange="", routing_key="q", delivery_tag="t").encode()
    assert envelope._split_body(raw) is not None  # Kombu's shape: the body read apart
    assert _decoded(raw) == _full(raw)
    assert isinstance(_decoded(raw), Received)
    broken = raw[:cut] + junk + raw[cut + len(junk):]
    assert _decoded(broken) == _full(broken)
