"""The in-process transport (memory://), through the public Transport API."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from wiretask.errors import (
    ConnectionLost,
    EncodeError,
    ImproperlyConfigured,
    TransportError,
    ValidationError,
)
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports import memory
from wiretask.transports.memory import MemoryDelivery, MemoryTransport


def frame(body: bytes = b"x", **properties: object) -> Frame:
    return Frame(body=body, content_type="application/json", content_encoding="utf-8",
                 headers={"id": body.decode(errors="replace")}, properties=properties)


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
def transport(name: str) -> Iterator[MemoryTransport]:
    with MemoryTransport(name) as t:
        yield t


Q = Route("q")


def bodies(transport: MemoryTransport, queues: list[str], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        delivery = transport.receive(queues, timeout=1)
        assert delivery is not None
        out.append(delivery.frame.body)
        delivery.ack()
    return out


def test_same_name_shares_state_and_other_names_do_not(name: str) -> None:
    a, b = MemoryTransport(name), MemoryTransport.from_url(f"memory://{name}")
    other = MemoryTransport(f"{name}-other")
    a.publish(frame(b"1"), Q)
    assert other.receive(["q"], timeout=0) is None
    delivery = b.receive(["q"], timeout=0)
    assert delivery is not None
    assert delivery.frame.body == b"1"
    assert not delivery.redelivered
    delivery.ack()
    assert a.size("q") == 0


def test_default_url_is_the_default_broker() -> None:
    transport = MemoryTransport.from_url("memory://")
    assert transport.name == "default"
    assert transport.url == "memory://"
    assert MemoryTransport("x").url == "memory://x"


@pytest.mark.parametrize(
    "url", ["redis://x", "memory://name/path", "memory://name?x=1", "memory://n#f"]
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured):
        MemoryTransport.from_url(url)


def test_options_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        MemoryTransport.from_url("memory://", visibility_timeout=3)


def test_capabilities() -> None:
    caps = MemoryTransport.capabilities
    assert caps.native_delay and caps.priorities
    assert caps.priority_order == "higher-first"
    assert caps.max_priority == 255
    assert not caps.multi_process
    assert not caps.per_message_ttl


def test_priorities_are_higher_first_then_fifo_across_queues(
    transport: MemoryTransport,
) -> None:
    transport.publish(frame(b"a0"), Route("a"))
    transport.publish(frame(b"b9", priority=9), Route("b"))
    transport.publish(frame(b"a255", priority=255), Route("a"))
    transport.publish(frame(b"a9", priority=9), Route("a"))
    transport.publish(frame(b"b0", priority=0), Route("b"))
    assert bodies(transport, ["a", "b"], 5) == [b"a255", b"b9", b"a9", b"a0", b"b0"]


@pytest.mark.parametrize("priority", [-1, 256, "5", 1.0, True])
def test_bad_priority_is_refused(transport: MemoryTransport, priority: object) -> None:
    with pytest.raises(ValidationError) as info:
        transport.publish(frame(priority=priority), Q)
    assert info.value.field == "priority"
    assert transport.size("q") == 0


def test_delayed_message_is_not_delivered_before_its_time(transport: MemoryTransport) -> None:
    not_before = datetime.now(UTC) + timedelta(seconds=0.3)
    transport.publish(frame(b"later"), Q, not_before=not_before)
    transport.publish(frame(b"now"), Q)
    assert bodies(transport, ["q"], 1) == [b"now"]
    [peeked] = transport.peek("q")
    assert peeked.state == "scheduled"
    assert peeked.not_before is not None
    assert abs((peeked.not_before - not_before).total_seconds()) < 1e-3
    delivery = transport.receive(["q"], timeout=5)
    received_at = time.time()
    assert delivery is not None
    assert delivery.frame.body == b"later"
    assert received_at >= not_before.timestamp()
    delivery.ack()


def test_naive_not_before_is_refused(transport: MemoryTransport) -> None:
    with pytest.raises(ValidationError) as info:
        transport.publish(frame(), Q, not_before=datetime(2030, 1, 1))
    assert info.value.field == "not_before"


def test_past_not_before_is_ready_at_once(transport: MemoryTransport) -> None:
    transport.publish(frame(b"late"), Q, not_before=datetime.now(UTC) - timedelta(hours=1))
    [peeked] = transport.peek("q")
    assert peeked.state == "ready"
    assert bodies(transport, ["q"], 1) == [b"late"]


def test_blocking_receive_wakes_on_publish_from_another_thread(
    transport: MemoryTransport, name: str
) -> None:
    got: list[bytes] = []

    def consume() -> None:
        delivery = transport.receive(["q"], timeout=10)
        assert delivery is not None
        got.append(delivery.frame.body)
        delivery.ack()

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.05)
    MemoryTransport(name).publish(frame(b"hello"), Q)
    consumer.join(10)
    assert got == [b"hello"]


def test_requeue_returns_to_its_original_place_marked_redelivered(
    transport: MemoryTransport,
) -> None:
    transport.publish(frame(b"first"), Q)
    transport.publish(frame(b"second"), Q)
    delivery = transport.receive(["q"], timeout=0)
    assert delivery is not None
    delivery.reject(requeue=True)
    again = transport.receive(["q"], timeout=0)
    assert again is not None
    assert (again.frame.body, again.redelivered) == (b"first", True)
    again.ack()
    nxt = transport.receive(["q"], timeout=0)
    assert nxt is not None
    assert (nxt.frame.body, nxt.redelivered) == (b"second", False)
    nxt.reject()
    assert transport.receive(["q"], timeout=0) is None
    assert transport.size("q") == 0


def test_close_returns_unsettled_deliveries(name: str) -> None:
    consumer = MemoryTransport(name)
    consumer.publish(frame(b"m"), Q)
    delivery = consumer.receive(["q"], timeout=0)
    assert delivery is not None
    assert consumer.size("q") == 0  # in flight is not counted
    consumer.close()
    with pytest.raises(TransportError, match="closed"):
        delivery.ack()
    other = MemoryTransport(name)
    back = other.receive(["q"], timeout=0)
    assert back is not None
    assert (back.frame.body, back.redelivered) == (b"m", True)
    back.ack()
    consumer.close()  # idempotent


def test_settling_twice_raises(transport: MemoryTransport) -> None:
    transport.publish(frame(), Q)
    delivery = transport.receive(["q"], timeout=0)
    assert delivery is not None
    delivery.ack()
    for settle in (delivery.ack, delivery.reject, lambda: delivery.dead_letter("x")):
        with pytest.raises(TransportError, match="already acked"):
            settle()


def test_the_batch_verbs_default_to_the_single_verbs(transport: MemoryTransport) -> None:
    """Transport's default receive_many / ack_many / ack_and_receive, which a transport
    without batches inherits: the same results as consecutive single verbs."""
    for body in (b"1", b"2", b"3", b"4", b"5"):
        transport.publish(frame(body), Q)
    first = transport.receive_many(["q"], limit=2, timeout=0)
    assert [d.frame.body for d in first] == [b"1", b"2"]
    with pytest.raises(ValidationError):
        transport.receive_many(["q"], limit=0, timeout=0)
    second = transport.ack_and_receive(first, ["q"], limit=2)
    assert [d.frame.body for d in second] == [b"3", b"4"]
    with pytest.raises(TransportError, match="already acked"):
        first[0].ack()
    third = transport.receive_many(["q"], limit=5, timeout=0)  # fewer than the limit
    assert [d.frame.body for d in third] == [b"5"]
    # One already settled: the others are still acknowledged, then it raises.
    with pytest.raises(TransportError, match="already acked"):
        transport.ack_many([*first, *second, *third])
    assert transport.size("q") == 0
    assert transport.receive_many(["q"], limit=3, timeout=0) == []
    transport.close()
    assert transport.size("q") == 0  # nothing was left unsettled to come back


def test_dead_letter_keeps_the_frame_and_reason(transport: MemoryTransport) -> None:
    sent = frame(b"bad", correlation_id="c")
    transport.publish(sent, Q)
    delivery = transport.receive(["q"], timeout=0)
    assert delivery is not None
    delivery.dead_letter("cannot decode body")
    [dead] = transport.dead_letters("q")
    assert dead.reason == "cannot decode body"
    assert dead.queue == "q"
    assert dead.frame == sent
    assert dead.at > 0
    assert transport.receive(["q"], timeout=0) is None
    assert transport.dead_letters("other") == []


def test_dead_letter_needs_a_reason(transport: MemoryTransport) -> None:
    transport.publish(frame(), Q)
    delivery = transport.receive(["q"], timeout=0)
    assert delivery is not None
    with pytest.raises(ValidationError):
        delivery.dead_letter("")
    delivery.ack()  # the failed dead_letter did not settle it


def test_unjsonable_headers_are_refused_and_publish_many_is_atomic(
    transport: MemoryTransport,
) -> None:
    bad = Frame(body=b"", content_type="x", content_encoding="binary",
                headers={"blob": [1, b"raw"]})
    with pytest.raises(EncodeError) as info:
        transport.publish_many([Outgoing(frame(b"ok"), Q), Outgoing(bad, Q)])
    assert info.value.field == "headers['blob'][1]"
    assert transport.size("q") == 0
    with pytest.raises(EncodeError):
        transport.publish(Frame(body=b"", content_type="x", content_encoding="binary",
                                properties={"n": {1: 2}}), Q)


def test_received_objects_are_fresh_copies(transport: MemoryTransport) -> None:
    sent = Frame(body=b"", content_type="x", content_encoding="binary",
                 headers={"nested": {"list": [1, 2]}})
    transport.publish(sent, Q)
    delivery = transport.receive(["q"], timeout=0)
    assert delivery is not None
    delivery.frame.headers["nested"]["list"].append(3)
    delivery.reject(requeue=True)
    again = transport.receive(["q"], timeout=0)
    assert again is not None
    assert again.frame.headers == {"nested": {"list": [1, 2]}}
    assert sent.headers == {"nested": {"list": [1, 2]}}


def test_routing_without_bindings(transport: MemoryTransport) -> None:
    transport.publish(frame(b"default-exchange"), Route("ignored", routing_key="rk"))
    transport.publish(frame(b"named-exchange"), Route("q", exchange="q", routing_key="x"))
    assert transport.size("rk") == 1
    assert transport.size("q") == 1
    assert transport.size("ignored") == 0


def test_size_purge_peek(transport: MemoryTransport) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    transport.publish_many([
        Outgoing(frame(b"s1"), Q, later),
        Outgoing(frame(b"r1"), Q),
        Outgoing(frame(b"r2", priority=3), Q),
    ])
    assert transport.size("q") == 3
    peeked = transport.peek("q")
    assert [(p.frame.body, p.state) for p in peeked] == [
        (b"r2", "ready"), (b"r1", "ready"), (b"s1", "scheduled"),
    ]
    assert [p.frame.body for p in transport.peek("q", limit=2)] == [b"r2", b"r1"]
    assert transport.size("q") == 3  # peek consumed nothing
    inflight = transport.receive(["q"], timeout=0)
    assert inflight is not None
    assert transport.purge("q") == 2
    assert transport.size("q") == 0
    inflight.ack()
    assert transport.purge("never-declared") == 0
    assert transport.peek("never-declared") == []


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "1"])
def test_bad_timeouts_are_refused(transport: MemoryTransport, timeout: object) -> None:
    with pytest.raises(ValidationError):
        transport.receive(["q"], timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("queues", [[], [""], [None]])
def test_bad_queue_lists_are_refused(transport: MemoryTransport, queues: list[str]) -> None:
    with pytest.raises(ValidationError):
        transport.receive(queues, timeout=0)


def test_reset_empties_in_place_and_forgets_unsettled(name: str) -> None:
    transport = MemoryTransport(name)
    transport.publish_many([Outgoing(frame(b"1"), Q), Outgoing(frame(b"2"), Q)])
    delivery = transport.receive(["q"], timeout=0)
    assert delivery is not None
    delivery.dead_letter("x")
    held = transport.receive(["q"], timeout=0)
    assert held is not None
    transport.publish(frame(b"3"), Q)
    memory.reset(name)
    assert transport.size("q") == 0
    assert transport.dead_letters("q") == []
    held.reject(requeue=True)  # forgotten by the reset: does not come back
    assert transport.receive(["q"], timeout=0) is None
    memory.reset(f"{name}-never-used")  # unknown names are fine


def test_concurrent_consumers_get_each_message_once(name: str) -> None:
    producer = MemoryTransport(name)
    seen: list[bytes] = []
    lock = threading.Lock()

    def consume() -> None:
        transport = MemoryTransport(name)
        while (delivery := transport.receive(["q"], timeout=0.5)) is not None:
            with lock:
                seen.append(delivery.frame.body)
            delivery.ack()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    producer.publish_many([Outgoing(frame(str(i).encode()), Q) for i in range(300)])
    for thread in threads:
        thread.join(30)
    assert sorted(seen) == sorted(str(i).encode() for i in range(300))


def test_the_default_receive_many_hands_over_what_it_took_when_a_later_receive_fails(
    transport: MemoryTransport, name: str
) -> None:
    class Failing(MemoryTransport):
        calls = 0

        def _receive(self, queues: list[str], timeout: float) -> MemoryDelivery | None:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionLost("broker went away (test)", url=self.url)
            return super()._receive(queues, timeout)

    for body in (b"1", b"2"):
        transport.publish(frame(body), Q)
    failing = Failing(name)
    taken = failing.receive_many(["q"], limit=2, timeout=0)
    assert [d.frame.body for d in taken] == [b"1"]  # not lost: the caller settles it
    taken[0].ack()
    assert [d.frame.body for d in failing.receive_many(["q"], limit=2, timeout=0)] == [b"2"]
    failing.close()
