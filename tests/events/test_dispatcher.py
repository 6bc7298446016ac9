"""``EventDispatcher``: fire and forget, in order, groups as Celery's, a broker error
never raised to the sender (kept and sent once the broker is back), a bounded buffer."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import pytest

from wiretask.codecs import default_registry
from wiretask.control.wire import LamportClock
from wiretask.errors import ConnectionLost
from wiretask.events.dispatcher import EventDispatcher
from wiretask.events.receiver import EventReceiver
from wiretask.events.wire import event_exchange
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Exchange, Inbox
from wiretask.transports.memory import MemoryTransport

REGISTRY = default_registry()
EXCHANGE = event_exchange("memory")


@pytest.fixture
def transport() -> MemoryTransport:
    transport = MemoryTransport(uuid.uuid4().hex)
    transport.connect()
    return transport


def received(receiver: EventReceiver, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        out += receiver.events(0.05)
    return out


def test_events_arrive_in_order_with_the_clock(transport: MemoryTransport) -> None:
    clock = LamportClock()
    dispatcher = EventDispatcher(transport, EXCHANGE, hostname="w@h", registry=REGISTRY,
                                 clock=clock)
    with EventReceiver(transport, EXCHANGE, REGISTRY) as receiver:
        for n in range(20):
            dispatcher.send("task-started", uuid=str(n))
        events = received(receiver, 20)
    dispatcher.close()
    assert [e["uuid"] for e in events] == [str(n) for n in range(20)]
    assert [e["clock"] for e in events] == list(range(1, 21))
    assert all(e["hostname"] == "w@h" and "local_received" in e for e in events)
    assert dispatcher.sent == 20 and dispatcher.dropped == 0


def test_groups_are_celerys(transport: MemoryTransport) -> None:
    dispatcher = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY,
                                 groups=["worker"])
    assert dispatcher.wants("worker-heartbeat") and not dispatcher.wants("task-started")
    assert dispatcher.enable_group("task") and not dispatcher.enable_group("task")
    assert dispatcher.wants("task-started")
    assert dispatcher.disable_group("task") and not dispatcher.disable_group("task")
    every = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY)
    assert every.wants("task-started") and every.wants("custom-thing")
    # Celery's quirk: with every group on, disable_events changes nothing.
    assert not every.disable_group("task") and every.wants("task-started")
    assert not every.enable_group("task")
    off = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY, enabled=False)
    assert not off.wants("worker-heartbeat")
    off.send("worker-heartbeat")
    assert off.sent == 0
    for one in (dispatcher, every, off):
        one.close()


class Flaky:
    """A Broadcast whose broker is away until ``back`` is set."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.back = threading.Event()
        self.failures = 0

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        if not self.back.is_set():
            self.failures += 1
            raise ConnectionLost("the broker is away", url="memory://flaky")
        self.inner.broadcast(exchange, frame, routing_key=routing_key)

    def listen(self, exchange: Exchange, queue: BoundQueue) -> Inbox:
        return self.inner.listen(exchange, queue)


def test_a_broker_error_never_reaches_the_sender_and_events_are_kept(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "wiretask.events")
    flaky = Flaky(transport)
    dispatcher = EventDispatcher(flaky, EXCHANGE, hostname="w", registry=REGISTRY)
    with EventReceiver(transport, EXCHANGE, REGISTRY) as receiver:
        started = time.perf_counter()
        for n in range(5):
            dispatcher.send("task-started", uuid=str(n))  # returns at once, never raises
        assert time.perf_counter() - started < 0.5
        time.sleep(0.4)
        assert flaky.failures >= 2 and received(receiver, 1, timeout=0.1) == []
        flaky.back.set()
        events = received(receiver, 5)
    dispatcher.close()
    assert [e["uuid"] for e in events] == ["0", "1", "2", "3", "4"]
    assert "cannot publish" in caplog.text and "publishing again" in caplog.text


def test_the_buffer_is_bounded_and_drops_are_counted(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Flaky(transport)
    dispatcher = EventDispatcher(flaky, EXCHANGE, hostname="w", registry=REGISTRY,
                                 buffer_limit=3)
    for n in range(10):
        dispatcher.send("task-started", uuid=str(n))
    deadline = time.monotonic() + 5
    while dispatcher.dropped < 7 and time.monotonic() < deadline:
        time.sleep(0.01)  # the sender may hold some while it tries
    assert dispatcher.dropped == 7
    assert "dropped" in caplog.text
    with EventReceiver(transport, EXCHANGE, REGISTRY) as receiver:
        flaky.back.set()
        events = received(receiver, 3)
    dispatcher.close()
    assert [e["uuid"] for e in events] == ["7", "8", "9"]  # the newest are kept


def test_close_publishes_what_is_queued_then_sends_nothing(transport: MemoryTransport) -> None:
    dispatcher = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY)
    with EventReceiver(transport, EXCHANGE, REGISTRY) as receiver:
        for n in range(50):
            dispatcher.send("task-started", uuid=str(n))
        dispatcher.close()
        dispatcher.send("task-started", uuid="late")
        events = received(receiver, 51, timeout=0.5)
    assert len(events) == 50 and dispatcher.sent == 50


def test_close_drops_what_the_broker_never_took(transport: MemoryTransport) -> None:
    dispatcher = EventDispatcher(Flaky(transport), EXCHANGE, hostname="w", registry=REGISTRY)
    dispatcher.send("task-started", uuid="x")
    dispatcher.close(timeout=0.2)
    assert dispatcher.dropped == 1 and dispatcher.sent == 0


def test_an_unencodable_event_is_dropped_and_logged(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY)
    dispatcher.send("task-succeeded", result=object())
    dispatcher.close()
    assert dispatcher.dropped == 1 and "not sent" in caplog.text


def test_the_receiver_skips_unreadable_messages_and_adjusts_clocks(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    with EventReceiver(transport, EXCHANGE, REGISTRY, routing_key="task.#") as receiver:
        transport.broadcast(EXCHANGE, Frame(body=b"[1]", content_type="application/json",
                                            content_encoding="utf-8"),
                            routing_key="task.started")
        assert receiver.events(1.0) == []
        assert "cannot be read" in caplog.text
        sent = EventDispatcher(transport, EXCHANGE, hostname="client", registry=REGISTRY,
                               clock=LamportClock(100))
        sent.send("task-sent", uuid="a")
        sent.send("task-started", uuid="a")
        sent.send("worker-heartbeat")  # not bound: task.# only
        events = received(receiver, 2)
        sent.close()
        assert received(receiver, 1, timeout=0.3) == []
    # Celery: a client's task-sent gets the receiver's clock minus one; others move it.
    assert [e["clock"] for e in events] == [0, 102]


def test_events_queued_behind_each_other_go_as_one_multi_message(
    transport: MemoryTransport,
) -> None:
    """Celery's ``<group>.multi``: a list body, which receivers read event by event."""
    flaky = Flaky(transport)
    dispatcher = EventDispatcher(flaky, EXCHANGE, hostname="w", registry=REGISTRY)
    raw = transport.listen(EXCHANGE, BoundQueue(name=f"raw.{uuid.uuid4().hex}",
                                                binding_key="task.multi"))
    with EventReceiver(transport, EXCHANGE, REGISTRY) as receiver:
        for n in range(30):
            dispatcher.send("task-started", uuid=str(n))
        dispatcher.send("worker-heartbeat")
        time.sleep(0.2)  # all queued while the broker is away
        flaky.back.set()
        events = received(receiver, 31)
    dispatcher.close()
    assert [e.get("uuid") for e in events] == [*(str(n) for n in range(30)), None]
    first = raw.get(1.0)
    raw.close()
    assert first is not None
    batch = json.loads(first.body)
    assert isinstance(batch, list) and 2 <= len(batch) <= 24
    assert all(e["type"] == "task-started" for e in batch)
    assert dispatcher.sent == 31
