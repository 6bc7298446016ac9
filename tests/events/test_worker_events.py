"""The worker's events through the public API, in process, on the memory broker, read
with wiretask's own ``EventReceiver``: the cases the Celery interop tests do not reach
(a rejected task, an unknown one, a broker that refuses events, heartbeats, the
``heartbeat`` and ``enable_events`` commands, a worker without heartbeats)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from wiretask.app import App
from wiretask.errors import ConnectionLost, Reject, ValidationError
from wiretask.events.receiver import EventReceiver
from wiretask.events.wire import event_exchange
from wiretask.protocol.frame import Frame
from wiretask.transports.base import Exchange
from wiretask.transports.memory import MemoryTransport
from wiretask.worker import Worker

EXCHANGE = event_exchange("memory")
NODE = "wt-unit@events"


class Collected:
    """Our ``EventReceiver`` in a thread, keeping every event."""

    def __init__(self, app: App) -> None:
        transport = app.transport
        assert isinstance(transport, MemoryTransport)
        self.receiver = EventReceiver(transport, EXCHANGE, app.registry,
                                      handlers={"*": self._keep})
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.receiver.open()
        self._thread = threading.Thread(target=self.receiver.capture, daemon=True)
        self._thread.start()

    def _keep(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("uuid") == task_id]

    def types(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.of(task_id)]

    def typed(self, type_: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["type"] == type_]

    def wait(self, what: str, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: {self.events}"
            time.sleep(0.01)

    def close(self) -> None:
        self.receiver.should_stop.set()
        self._thread.join(5)
        self.receiver.close()


@pytest.fixture
def app() -> Iterator[App]:
    app = App("events-unit", broker=f"memory://{uuid.uuid4().hex}")

    @app.task(name="unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="unit.reject")
    def reject(requeue: bool) -> None:
        raise Reject("not today", requeue=requeue)

    yield app
    app.close()


@pytest.fixture
def seen(app: App) -> Iterator[Collected]:
    collected = Collected(app)
    yield collected
    collected.close()


def test_reject_without_requeue_is_failed_then_rejected(app: App, seen: Collected) -> None:
    with Worker(app, concurrency=1, hostname=NODE, send_events=True, shutdown_timeout=5):
        result = app.send_task("unit.reject", (False,))
        seen.wait("task-rejected", lambda: "task-rejected" in seen.types(result.id))
    assert seen.types(result.id) == ["task-received", "task-started", "task-failed",
                                     "task-rejected"]
    failed, rejected = seen.of(result.id)[2:]
    assert failed["exception"].startswith("Reject('not today'")
    assert "Reject" in failed["traceback"]
    assert rejected["requeue"] is False


def test_an_unknown_task_is_failed_with_not_registered(app: App, seen: Collected) -> None:
    with Worker(app, concurrency=1, hostname=NODE, send_events=True, shutdown_timeout=5):
        result = app.send_task("unit.nobody")
        seen.wait("task-failed", lambda: "task-failed" in seen.types(result.id))
        assert app.send_task("unit.add", (1, 1)).get(timeout=10) == 2
    assert seen.types(result.id) == ["task-failed"]
    assert seen.of(result.id)[0]["exception"] == "NotRegistered('unit.nobody')"


def test_without_task_events_only_worker_events_are_sent(app: App, seen: Collected) -> None:
    with Worker(app, concurrency=1, hostname=NODE, heartbeat_interval=0.2,
                shutdown_timeout=5):
        result = app.send_task("unit.add", (2, 2))
        assert result.get(timeout=10) == 4
        seen.wait("two heartbeats", lambda: len(seen.typed("worker-heartbeat")) >= 2)
    seen.wait("worker-offline", lambda: seen.typed("worker-offline"))
    assert seen.types(result.id) == []
    online, beat = seen.typed("worker-online")[0], seen.typed("worker-heartbeat")[-1]
    assert online["hostname"] == NODE and beat["freq"] == 0.2
    assert {"active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"} <= set(beat)
    assert seen.typed("worker-offline")[0]["processed"] == 1


def test_heartbeat_and_enable_events_commands(app: App, seen: Collected) -> None:
    with Worker(app, concurrency=1, hostname=NODE, shutdown_timeout=5):
        assert app.control.heartbeat(reply=True, timeout=2) == [{NODE: None}]
        seen.wait("the commanded heartbeat",
                  lambda: any(e["freq"] == 5 for e in seen.typed("worker-heartbeat")))
        assert app.control.enable_events(reply=True, timeout=2) == [
            {NODE: {"ok": "task events enabled"}}]
        assert app.control.enable_events(reply=True, timeout=2) == [
            {NODE: {"ok": "task events already enabled"}}]
        on = app.send_task("unit.add", (1, 2))
        assert on.get(timeout=10) == 3
        seen.wait("task-succeeded", lambda: "task-succeeded" in seen.types(on.id))
        assert seen.of(on.id)[-1]["result"] == "3"
        assert app.control.disable_events(reply=True, timeout=2) == [
            {NODE: {"ok": "task events disabled"}}]
        off = app.send_task("unit.add", (2, 3))
        assert off.get(timeout=10) == 5
    assert seen.types(off.id) == []


def test_without_heartbeat_nothing_is_sent_until_task_events(app: App, seen: Collected) -> None:
    with Worker(app, concurrency=1, hostname=NODE, heartbeat=False, shutdown_timeout=5):
        result = app.send_task("unit.add", (1, 1))
        assert result.get(timeout=10) == 2
        time.sleep(0.2)
    assert seen.events == []
    with Worker(app, concurrency=1, hostname=NODE, heartbeat=False, send_events=True,
                shutdown_timeout=5):
        result = app.send_task("unit.add", (1, 1))
        seen.wait("task-succeeded", lambda: "task-succeeded" in seen.types(result.id))
    assert not seen.typed("worker-online") and not seen.typed("worker-offline")


class NoEvents(MemoryTransport):
    """A broker that refuses every event (the control channel works)."""

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        if exchange.name == "celeryev":
            raise ConnectionLost("events are down", url=self.url)
        super().broadcast(exchange, frame, routing_key=routing_key)


def test_a_broker_refusing_events_does_not_slow_or_break_tasks(
    app: App, caplog: pytest.LogCaptureFixture,
) -> None:
    transport = NoEvents.from_url(app.transport.url)
    with Worker(app, concurrency=1, hostname=NODE, send_events=True, transport=transport,
                shutdown_timeout=5):
        started = time.perf_counter()
        results = [app.send_task("unit.add", (n, n)) for n in range(20)]
        assert [r.get(timeout=10) for r in results] == [2 * n for n in range(20)]
        took = time.perf_counter() - started
    assert took < 5
    assert "cannot publish on celeryev" in caplog.text


def test_a_bad_heartbeat_interval_is_refused(app: App) -> None:
    with pytest.raises(ValidationError, match="heartbeat_interval"):
        Worker(app, heartbeat_interval=0)


def test_worker_send_task_events_setting(app: App, seen: Collected) -> None:
    app.conf.worker_send_task_events = True
    with Worker(app, concurrency=1, hostname=NODE, shutdown_timeout=5):
        result = app.send_task("unit.add", (4, 4))
        seen.wait("task-succeeded", lambda: "task-succeeded" in seen.types(result.id))


def test_task_sent_from_the_client(app: App, seen: Collected) -> None:
    app.conf.task_send_sent_event = True
    result = app.send_task("unit.add", (1, 2), queue="elsewhere", countdown=30,
                           expires=600)
    seen.wait("task-sent", lambda: seen.types(result.id) == ["task-sent"])
    [sent] = seen.of(result.id)
    assert sent["name"] == "unit.add" and sent["args"] == "(1, 2)" and sent["kwargs"] == "{}"
    assert sent["queue"] == "elsewhere" and sent["routing_key"] == "elsewhere"
    assert sent["exchange"] == "" and sent["retries"] == 0
    assert sent["eta"] is not None and sent["expires"] is not None
    assert sent["root_id"] == result.id and sent["parent_id"] is None
    assert sent["hostname"].startswith("gen") and "@" in sent["hostname"]
    app.conf.task_send_sent_event = False
    quiet = app.send_task("unit.add", (1, 2))
    time.sleep(0.2)
    assert seen.types(quiet.id) == []


def test_a_task_with_send_events_false_has_no_task_events(app: App, seen: Collected) -> None:
    @app.task(name="unit.quiet", send_events=False)
    def quiet() -> str:
        return "sh"

    with Worker(app, concurrency=1, hostname=NODE, send_events=True, shutdown_timeout=5):
        hushed = app.send_task("unit.quiet")
        assert hushed.get(timeout=10) == "sh"
        loud = app.send_task("unit.add", (1, 1))
        seen.wait("task-succeeded", lambda: "task-succeeded" in seen.types(loud.id))
    assert seen.types(hushed.id) == []
