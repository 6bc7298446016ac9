"""How long a lost message takes to come back (issue 13 item 4; the bounds are stated in
PROTOCOL.md §13.1 and TRANSPORTS.md §1.3 and §2, and these tests hold the transports to
them): a pop whose reply was lost, a consumer that died, and a Celery worker's message,
which wiretask leaves alone for Kombu's whole visibility timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis

from interop.test_outage import ReplyDroppingProxy
from wiretask._redis import scripts
from wiretask.errors import ConnectionLost
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.redis import RedisTransport

if TYPE_CHECKING:
    from conftest import RedisServer  # tests/conftest.py

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

Q = Route("q")
#: Slack for a loaded 2-core machine on top of each bound.
SLACK = 1.5


def frame(name: str) -> Frame:
    return Frame(body=b"[[], {}, null]", content_type="application/json",
                 content_encoding="utf-8", headers={"task": "t", "id": name})


@pytest.fixture
def pop_dropper(redis_server: RedisServer) -> Iterator[ReplyDroppingProxy]:
    """A proxy that lets the next ``POP`` run on Redis and swallows its reply."""
    proxy = ReplyDroppingProxy(redis_server.port, trigger=scripts.POP.sha.encode())
    yield proxy
    proxy.close()


def test_a_pop_whose_reply_was_lost_comes_back_after_the_lease_timeout(
    redis_server: RedisServer, pop_dropper: ReplyDroppingProxy
) -> None:
    lease, scan = 1.0, 0.25
    options = f"lease_timeout={lease}&restore_interval={scan}"
    lost = RedisTransport(f"{pop_dropper.url}?{options}")
    other = RedisTransport(f"{redis_server.url}/0?{options}")
    try:
        lost.connect()
        other.publish(frame("m"), Q)
        pop_dropper.armed.set()
        with pytest.raises(ConnectionLost):
            lost.receive(["q"], timeout=0)
        assert pop_dropper.landed_cuts == 1, "no pop ran with its reply lost: nothing proved"
        popped = time.monotonic()
        delivery = other.receive(["q"], timeout=lease + scan + 5)
        took = time.monotonic() - popped
        assert delivery is not None and delivery.frame.task_id == "m"
        assert delivery.redelivered
        assert took <= lease + scan + SLACK, f"came back after {took:.2f}s"
        delivery.ack()
    finally:
        lost.close()
        other.close()


def test_a_dead_consumers_message_comes_back_to_a_busy_worker(redis_url: str) -> None:
    """The lease is checked by the heartbeat too, not only by a receive: a consumer
    whose every slot is busy (it does not receive) still brings the message back."""
    options = "lease_timeout=1&restore_interval=0.25&lease_interval=0.2"
    dead = RedisTransport(f"{redis_url}?{options}")
    busy = RedisTransport(f"{redis_url}?{options}")
    client = redis.Redis.from_url(redis_url)
    try:
        dead.publish(frame("held"), Q)
        dead.publish(frame("lost"), Q)
        busy.receive(["q"], timeout=1)  # holds one: its heartbeat runs
        assert dead.receive(["q"], timeout=1) is not None
        dead._leases._stop.set()  # the consumer "dies": no renewal, no give back
        dead._leases._held.clear()
        deadline = time.monotonic() + 1 + 0.25 + 0.2 + SLACK
        while client.llen("q") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.llen("q") == 1, "the dead consumer's message was not restored"
        restored = json.loads(client.lindex("q", 0) or b"{}")
        assert restored["headers"]["id"] == "lost" and restored["headers"]["redelivered"]
    finally:
        client.close()
        busy.close()
        dead.close()


def test_a_celery_workers_message_is_left_alone_until_the_visibility_timeout(
    redis_url: str,
) -> None:
    """A message recorded as Kombu records it (no wiretask lease): a wiretask restorer
    with a short lease timeout does not hand it to a second consumer; only
    ``visibility_timeout`` brings it back, as Kombu's own restore would."""
    client = redis.Redis.from_url(redis_url)
    entry = json.dumps({"body": "", "content-type": "application/json",
                        "content-encoding": "utf-8", "headers": {"id": "celery"},
                        "properties": {"delivery_tag": "celery-tag",
                                       "delivery_info": {"exchange": "", "routing_key": "q"},
                                       "body_encoding": "base64"}})
    try:
        client.hset("unacked", "celery-tag", f"[{entry}, \"\", \"q\"]")
        client.zadd("unacked_index", {"celery-tag": time.time() - 30})  # held 30 s
        wiretask = RedisTransport(f"{redis_url}?lease_timeout=1&visibility_timeout=60")
        try:
            assert wiretask.restore_visible() == 0
            assert client.llen("q") == 0
        finally:
            wiretask.close()
        patient = RedisTransport(f"{redis_url}?lease_timeout=1&visibility_timeout=20")
        try:
            assert patient.restore_visible() == 1  # held longer than its visibility timeout
        finally:
            patient.close()
    finally:
        client.close()
