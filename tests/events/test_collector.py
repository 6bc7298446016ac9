"""The exporter's event collector (``monitoring.events.EventCollector``) in process, on
the memory broker: worker counts and liveness, task events by name, the runtime
histogram, read back through ``prometheus_client``'s own exposition and parser; and the
``wiretask events`` command in process."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from wiretask.cli import _event_line, main
from wiretask.codecs import default_registry
from wiretask.errors import ConnectionLost
from wiretask.events.dispatcher import EventDispatcher
from wiretask.events.wire import event_exchange
from wiretask.monitoring import events as collector_module
from wiretask.monitoring.events import EventCollector
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Exchange, Inbox
from wiretask.transports.memory import MemoryTransport

REGISTRY = default_registry()
EXCHANGE = event_exchange("memory")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(collector: EventCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    found: Samples = {}
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def transport() -> Iterator[MemoryTransport]:
    transport = MemoryTransport(uuid.uuid4().hex)
    transport.connect()
    yield transport
    transport.close()


def wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_counts_from_events(transport: MemoryTransport) -> None:
    now = [1000.0]
    collector = EventCollector(transport, EXCHANGE, REGISTRY, clock=lambda: now[0])
    collector.start()
    sender = EventDispatcher(transport, EXCHANGE, hostname="w1@h", registry=REGISTRY)
    other = EventDispatcher(transport, EXCHANGE, hostname="w2@h", registry=REGISTRY)
    try:
        sender.send("worker-online", freq=2.0, active=0, processed=0)
        other.send("worker-heartbeat", freq=2.0, active=1, processed=7)
        for n, runtime in enumerate((0.003, 0.2, 40.0)):
            sender.send("task-received", uuid=f"t{n}", name="proj.add")
            sender.send("task-started", uuid=f"t{n}")
            sender.send("task-succeeded", uuid=f"t{n}", result="1", runtime=runtime)
        sender.send("task-sent", uuid="s", name="proj.mail")
        sender.send("task-failed", uuid="s", exception="ValueError()", traceback="")
        sender.send("task-retried", uuid="unknown-id", exception="x", traceback="")
        other.send("worker-offline", freq=2.0, active=0, processed=7)
        sender.flush(5)
        other.flush(5)
        wait(lambda: scrape(collector).get(
            ("wiretask_task_events_total", (("name", ""), ("type", "retried")))) == 1.0,
            "the last task event")
        wait(lambda: scrape(collector).get(("wiretask_worker_up", (("hostname", "w2@h"),)))
             == 0.0, "w2 offline")
        # Events were stamped with the real time: pretend it is that moment.
        now[0] = time.time()
        got = scrape(collector)
    finally:
        sender.close()
        other.close()
        collector.stop()
    add = (("name", "proj.add"),)
    assert got[("wiretask_task_events_total", (*add, ("type", "received")))] == 3.0
    assert got[("wiretask_task_events_total", (*add, ("type", "started")))] == 3.0
    assert got[("wiretask_task_events_total", (*add, ("type", "succeeded")))] == 3.0
    assert got[("wiretask_task_events_total", (("name", "proj.mail"), ("type", "sent")))] == 1
    assert got[("wiretask_task_events_total", (("name", "proj.mail"), ("type", "failed")))] == 1
    assert got[("wiretask_task_runtime_seconds_count", add)] == 3.0
    assert got[("wiretask_task_runtime_seconds_sum", add)] == pytest.approx(40.203)
    assert got[("wiretask_task_runtime_seconds_bucket", (("le", "0.005"), *add))] == 1.0
    assert got[("wiretask_task_runtime_seconds_bucket", (("le", "0.25"), *add))] == 2.0
    assert got[("wiretask_task_runtime_seconds_bucket", (("le", "30.0"), *add))] == 2.0
    assert got[("wiretask_task_runtime_seconds_bucket", (("le", "60.0"), *add))] == 3.0
    assert got[("wiretask_task_runtime_seconds_bucket", (("le", "+Inf"), *add))] == 3.0
    assert got[("wiretask_worker_up", (("hostname", "w1@h"),))] == 1.0
    assert got[("wiretask_worker_up", (("hostname", "w2@h"),))] == 0.0
    assert got[("wiretask_workers", (("state", "alive"),))] == 1.0
    assert got[("wiretask_workers", (("state", "offline"),))] == 1.0
    assert got[("wiretask_worker_processed_tasks", (("hostname", "w2@h"),))] == 7.0
    assert got[("wiretask_worker_active_tasks", (("hostname", "w1@h"),))] == 0.0
    assert got[("wiretask_events_up", ())] == 1.0
    # A silent worker is no longer alive after twice its interval.
    now[0] += 5
    later = scrape(collector)
    assert later[("wiretask_workers", (("state", "alive"),))] == 0.0
    assert later[("wiretask_events_up", ())] == 0.0  # stopped


def test_odd_events_are_ignored_and_names_are_bounded(
    transport: MemoryTransport, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(collector_module, "NAMES_KEPT", 2)
    collector = EventCollector(transport, EXCHANGE, REGISTRY)
    for odd in ({"no": "type"}, {"type": 3}, {"type": "worker-online", "hostname": 5},
                {"type": "custom-thing"}):
        collector.feed(odd)
    for n in range(3):
        collector.feed({"type": "task-received", "uuid": f"id{n}", "name": f"task{n}"})
    collector.feed({"type": "task-succeeded", "uuid": "id0", "runtime": "slow"})
    collector.feed({"type": "task-succeeded", "uuid": "id2", "runtime": 0.1})
    collector.feed({"type": "worker-heartbeat", "hostname": "w", "freq": -1})
    got = scrape(collector)
    # id0's name was forgotten (two kept): its event has no name; a bad runtime is
    # counted as an event, not in the histogram.
    assert got[("wiretask_task_events_total", (("name", ""), ("type", "succeeded")))] == 1
    assert got[("wiretask_task_runtime_seconds_count", (("name", "task2"),))] == 1
    assert ("wiretask_task_runtime_seconds_count", (("name", ""),)) not in got
    assert got[("wiretask_workers", (("state", "alive"),))] == 1.0
    assert got[("wiretask_events_up", ())] == 0.0  # never started


class Failing:
    """A Broadcast whose first inbox fails at its first read."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.listens = 0

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        self.inner.broadcast(exchange, frame, routing_key=routing_key)

    def listen(self, exchange: Exchange, queue: BoundQueue) -> Inbox:
        self.listens += 1
        inbox = self.inner.listen(exchange, queue)
        if self.listens > 1:
            return inbox

        class Broken:
            def __init__(self) -> None:
                self.queue = inbox.queue

            def get(self, timeout: float) -> Frame | None:
                raise ConnectionLost("gone", url="memory://")

            def close(self) -> None:
                inbox.close()

        return Broken()


def test_the_collector_listens_again_after_a_broker_error(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    failing = Failing(transport)
    collector = EventCollector(failing, EXCHANGE, REGISTRY)
    collector.start()
    sender = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY)
    try:
        wait(lambda: failing.listens >= 2, "listening again")
        wait(lambda: scrape(collector)[("wiretask_events_up", ())] == 1.0, "up again")

        def counted() -> bool:
            sender.send("task-received", uuid="x", name="again")
            return scrape(collector).get(
                ("wiretask_task_events_total", (("name", "again"), ("type", "received")))
            ) is not None

        wait(counted, "an event after the error")
    finally:
        sender.close()
        collector.stop()
    assert "listening again" in caplog.text


def test_event_lines_are_celerys_dump() -> None:
    base = {"hostname": "w@h", "timestamp": 0.0, "clock": 3}
    assert _event_line({**base, "type": "worker-heartbeat", "freq": 2.0}) == (
        "w@h [1970-01-01 00:00:00+00:00] heartbeat: clock=3, freq=2.0")
    assert _event_line({**base, "type": "task-sent", "uuid": "i", "name": "t", "args": "()",
                        "kwargs": "{}"}) == (
        "w@h [1970-01-01 00:00:00+00:00] task sent: t(i) args=() kwargs={} clock=3")
    assert _event_line({**base, "type": "task-started", "uuid": "i"}) == (
        "w@h [1970-01-01 00:00:00+00:00] task started: i clock=3")


def test_the_events_command_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    name = uuid.uuid4().hex
    transport = MemoryTransport(name)
    sender = EventDispatcher(transport, EXCHANGE, hostname="w@h", registry=REGISTRY)
    stop = threading.Event()

    def keep_sending() -> None:
        n = 0
        while not stop.wait(0.02):
            sender.send("task-started", uuid=f"id{n}")
            n += 1

    thread = threading.Thread(target=keep_sending, daemon=True)
    thread.start()
    try:
        assert main(["--broker", f"memory://{name}", "events", "--json", "--limit", "3"]) == 0
        assert main(["--broker", f"memory://{name}", "events", "--dump", "--limit", "1"]) == 0
    finally:
        stop.set()
        thread.join(5)
        sender.close()
    # Nothing more is sent: --timeout ends it.
    assert main(["--broker", f"memory://{name}", "events", "--timeout", "0.2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7 and out[6] == "-> evdump: starting capture..."
    assert out[0] == "-> evdump: starting capture..."
    events = [json.loads(line) for line in out[1:4]]
    assert [e["type"] for e in events] == ["task-started"] * 3
    assert out[4] == "-> evdump: starting capture..."
    assert out[5].startswith("w@h [") and " task started: id" in out[5]


def test_capture_listens_again_after_a_broker_error(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    from wiretask.events.receiver import EventReceiver  # noqa: PLC0415

    failing = Failing(transport)
    seen: list[dict[str, Any]] = []
    receiver = EventReceiver(failing, EXCHANGE, REGISTRY, handlers={"*": seen.append})
    sender = EventDispatcher(transport, EXCHANGE, hostname="w", registry=REGISTRY)
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.wait(0.02):
            sender.send("task-started", uuid="x")

    thread = threading.Thread(target=keep_sending, daemon=True)
    thread.start()
    try:
        receiver.capture(limit=1)
    finally:
        stop.set()
        thread.join(5)
        sender.close()
        receiver.close()
    assert [e["type"] for e in seen] == ["task-started"]
    assert failing.listens == 2 and "listening again" in caplog.text
    with pytest.raises(ConnectionLost):
        EventReceiver(Failing(transport), EXCHANGE, REGISTRY).capture(reconnect=False)


def test_task_sent_needs_a_broker_that_broadcasts(caplog: pytest.LogCaptureFixture) -> None:
    from wiretask.events.client import SentEvents  # noqa: PLC0415

    class Plain:
        url = "plain://"

    sent = SentEvents(REGISTRY)
    # Plain is not a Transport on purpose: a broker that cannot broadcast.
    sent.sent(Plain(), [])  # type: ignore[arg-type]
    sent.sent(Plain(), [])  # type: ignore[arg-type]
    assert caplog.text.count("no task-sent event is sent") == 1
    first, second = MemoryTransport(uuid.uuid4().hex), MemoryTransport(uuid.uuid4().hex)
    assert sent._for(first) is sent._for(first)
    assert sent._for(second) is not None  # a new transport: a new dispatcher
    sent.close()
    sent.close()
