"""wiretask's worker on the control channel, driven through ``app.control`` on every
bundled broker: ping and inspect answer in Celery's formats, and a revoke stops a task
that is pending, reserved or waiting for its eta (and, on the process pool, a running
one)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from wiretask.app import App, Task
from wiretask.canvas import ResultSet
from wiretask.codecs import Registry
from wiretask.control.mailbox import Mailbox
from wiretask.control.wire import LamportClock, node_queue
from wiretask.errors import ImproperlyConfigured, TaskRevokedError, TransportError
from wiretask.protocol import states
from wiretask.protocol.frame import Outgoing
from wiretask.testing import ForwardingTransport
from wiretask.transports.base import (
    BoundQueue,
    Delivery,
    Exchange,
    Inbox,
    Inspection,
    Prepared,
    Settlement,
    Transport,
)
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.sqlite import SQLiteTransport
from wiretask.worker import Worker

from . import ctlapp

WAIT = 15.0
#: Celery's ``Request.info()`` keys, what ``active``, ``reserved`` and ``query_task`` hold.
#: A control call to the test's one worker: it returns as soon as that worker replied.
ONE: dict[str, Any] = {"destination": ["w1@test"], "timeout": 1}
INFO_KEYS = ["id", "name", "args", "kwargs", "type", "hostname", "time_start",
             "acknowledged", "delivery_info", "worker_pid"]


def wait_for(condition: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Tasks:
    """The tasks of one test's app: ``note`` records what ran; ``gate`` blocks until
    its gate is opened."""

    def __init__(self, app: App) -> None:
        self.ran: list[Any] = []
        self.gates: dict[str, threading.Event] = {}
        self.started: list[str] = []
        ran, gates, started = self.ran, self.gates, self.started

        @app.task(name="t.note")
        def note(value: Any) -> Any:
            ran.append(value)
            return value

        @app.task(name="t.gate", bind=True)
        def gate(self: Task[Any, Any], name: str) -> str:
            started.append(name)
            gates.setdefault(name, threading.Event()).wait(WAIT)
            ran.append(name)
            return name

        @app.task(name="t.fail")
        def fail() -> None:
            raise ValueError("no")

        self.note = note
        self.gate = gate

    def open(self, name: str) -> None:
        self.gates.setdefault(name, threading.Event()).set()


@pytest.fixture
def app(broker: tuple[str, str]) -> Iterator[App]:
    made = App("ctl", broker=broker[1])
    yield made
    made.close()


@pytest.fixture
def tasks(app: App) -> Tasks:
    return Tasks(app)


def worker(app: App, **options: Any) -> Worker:
    options.setdefault("hostname", "w1@test")
    options.setdefault("concurrency", 1)
    options.setdefault("shutdown_timeout", 5)
    return Worker(app, **options)


def ask(app: App) -> Any:
    """An ``Inspect`` of the test's worker: with a destination, the call returns as soon
    as its one reply came (Kombu waits ``timeout`` for each next reply otherwise)."""
    return app.control.inspect(timeout=1, destination=["w1@test"])


def reserved_ids(app: App) -> list[str]:
    replies = ask(app).reserved() or {}
    return [info["id"] for info in replies.get("w1@test", [])]


# -- ping and inspect ---------------------------------------------------------------


def test_ping_answers_pong_and_destination_picks_the_node(app: App, tasks: Tasks) -> None:
    with worker(app):
        assert app.control.ping(timeout=1) == [{"w1@test": {"ok": "pong"}}]
        assert app.control.ping(destination=["w1@test"], timeout=1) == [
            {"w1@test": {"ok": "pong"}}]
        assert app.control.ping(destination=["nobody@test"], timeout=0.3) == []
        assert app.control.inspect(timeout=1, destination="w1@test").ping() == {"ok": "pong"}
        assert app.control.inspect(timeout=1, pattern="w*", matcher="glob").ping() == {
            "w1@test": {"ok": "pong"}}


def test_no_worker_no_reply(app: App) -> None:
    assert app.control.ping(timeout=0.2) == []
    assert app.control.inspect(timeout=0.2).active() is None


def test_active_reserved_and_query_task_in_celerys_format(app: App, tasks: Tasks) -> None:
    with worker(app, prefetch=1):
        running = tasks.gate.delay("a")
        wait_for(lambda: tasks.started == ["a"], "the first task to start")
        waiting = tasks.note.delay({"k": [1, 2]})
        wait_for(lambda: reserved_ids(app) == [waiting.id], "the second to be reserved")

        inspect = ask(app)
        [active] = inspect.active()["w1@test"]
        [reserved] = inspect.reserved()["w1@test"]
        queried = inspect.query_task(running.id, waiting.id, "unknown")["w1@test"]
        [safe] = inspect.active(safe=True)["w1@test"]
        tasks.open("a")
        assert running.get(timeout=WAIT) == "a"

    assert list(active) == INFO_KEYS
    assert active["id"] == running.id and active["name"] == active["type"] == "t.gate"
    assert (active["args"], active["kwargs"]) == (["a"], {})
    assert active["hostname"] == "w1@test" and active["acknowledged"] is False
    assert isinstance(active["time_start"], float) and isinstance(active["worker_pid"], int)
    assert active["delivery_info"] == {"exchange": "", "routing_key": "celery",
                                       "priority": None, "redelivered": False}
    assert reserved["id"] == waiting.id and reserved["args"] == [{"k": [1, 2]}]
    assert reserved["time_start"] is None and reserved["worker_pid"] is None
    assert queried == {running.id: ["active", active], waiting.id: ["reserved", reserved]}
    assert safe["args"] == "('a',)"  # argsrepr: Flower asks with safe=True


def test_stats_registered_queues_and_clock(app: App, tasks: Tasks) -> None:
    with worker(app, queues=["celery", "other"]):
        tasks.note.delay(1).get(timeout=WAIT)
        inspect = ask(app)
        stats = inspect.stats()["w1@test"]
        registered = inspect.registered()["w1@test"]
        with_items = inspect.registered("name")["w1@test"]
        queues = inspect.active_queues()["w1@test"]
        clock = inspect.clock()["w1@test"]
        revoked = inspect.revoked()["w1@test"]
        report = inspect.report()["w1@test"]

    assert {"total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count",
            "rusage"} <= set(stats)
    assert stats["total"] == {"t.note": 1}
    assert stats["pool"]["max-concurrency"] == 1 and stats["pool"]["processes"]
    assert {"hostname", "port", "transport", "virtual_host"} <= set(stats["broker"])
    # (Other tests' shared_task functions are registered in every app of the process.)
    assert [name for name in registered if not name.startswith("shared.")] == [
        "t.fail", "t.gate", "t.note"]
    assert [item for item in with_items if item.startswith("t.")] == [
        "t.fail [name=t.fail]", "t.gate [name=t.gate]", "t.note [name=t.note]"]
    assert [q["name"] for q in queues] == ["celery", "other"]
    assert queues[0]["exchange"] == {"name": "celery", "type": "direct", "arguments": None,
                                     "durable": True, "passive": False, "auto_delete": False,
                                     "delivery_mode": None, "no_declare": False}
    assert isinstance(clock["clock"], int) and clock["clock"] > 0
    assert revoked == []
    assert "wiretask" in report["ok"]


def test_unknown_and_unsupported_commands_are_answered_as_errors(
    app: App, tasks: Tasks
) -> None:
    with worker(app):
        unknown = app.control.broadcast("no_such_command", reply=True, **ONE)
        refused = app.control.broadcast("rate_limit", arguments={"task_name": "t.note",
                                                                 "rate_limit": "1/s"},
                                        reply=True, **ONE)
        failing = app.control.broadcast("revoke", arguments={"task_id": "x", "signal": "NOPE",
                                                             "terminate": True},
                                        reply=True, **ONE)
    assert unknown == [{"w1@test": {"error": "KeyError('no_such_command')"}}]
    assert refused == [{"w1@test": {"error": "unsupported control command 'rate_limit': "
                                             "wiretask's worker has no rate limits"}}]
    assert failing == [{"w1@test": {"error": "ValueError(\"unknown signal 'NOPE'\")"}}]


# -- revoke -------------------------------------------------------------------------


def test_revoke_before_the_message_arrives(app: App, tasks: Tasks) -> None:
    task_id = str(uuid.uuid4())
    with worker(app):
        assert app.control.revoke(task_id, reply=True, **ONE) == [
            {"w1@test": {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
        revoked = tasks.note.apply_async(("revoked",), task_id=task_id)
        tasks.note.delay("after").get(timeout=WAIT)  # one queue, one slot: in order

        assert tasks.ran == ["after"]
        with pytest.raises(TaskRevokedError, match="revoked"):
            revoked.get(timeout=WAIT)
        assert revoked.state == states.REVOKED
        transport = app.transport
        assert isinstance(transport, Inspection) and transport.size("celery") == 0
        assert ask(app).revoked() == {"w1@test": [task_id]}


def test_asyncresult_revoke_reaches_the_worker(app: App, tasks: Tasks) -> None:
    task_id = str(uuid.uuid4())
    with worker(app):
        app.AsyncResult(task_id).revoke(wait=True, timeout=1)  # waits 1 s: no limit
        revoked = tasks.note.apply_async(("revoked",), task_id=task_id)
        tasks.note.delay("after").get(timeout=WAIT)
        assert tasks.ran == ["after"]
        assert revoked.state == states.REVOKED


def test_a_result_set_revokes_all_its_tasks(app: App, tasks: Tasks) -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    with worker(app):
        ResultSet([app.AsyncResult(i) for i in ids], app=app).revoke(wait=True, timeout=1)
        sent = [tasks.note.apply_async((i,), task_id=i) for i in ids]
        tasks.note.delay("after").get(timeout=WAIT)
        assert tasks.ran == ["after"]
        assert [r.state for r in sent] == [states.REVOKED, states.REVOKED]
        assert sorted(ask(app).revoked()["w1@test"]) == sorted(ids)


def test_revoke_of_a_reserved_task(app: App, tasks: Tasks) -> None:
    with worker(app, prefetch=1):
        tasks.gate.delay("a")
        wait_for(lambda: tasks.started == ["a"], "the first task to start")
        reserved = tasks.note.delay("reserved")
        wait_for(lambda: reserved_ids(app) == [reserved.id], "the task to be reserved")

        replies = app.control.revoke(reserved.id, reply=True, **ONE)
        assert reserved.state == states.REVOKED  # taken out at once, not when its turn came
        assert reserved_ids(app) == []
        tasks.open("a")
        tasks.note.delay("after").get(timeout=WAIT)

    assert replies == [{"w1@test": {"ok": f"tasks {{'{reserved.id}'}} flagged as revoked"}}]
    assert tasks.ran == ["a", "after"]
    assert isinstance(reserved.info, TaskRevokedError) and reserved.info.args == ("revoked",)


def test_revoke_of_a_task_waiting_for_its_eta_at_the_broker(app: App, tasks: Tasks) -> None:
    with worker(app):
        later = tasks.note.apply_async(("later",), countdown=1.0)
        app.control.revoke(later.id, reply=True, **ONE)
        transport = app.transport
        assert isinstance(transport, Inspection)
        time.sleep(1.0)
        wait_for(lambda: transport.size("celery") == 0, "the revoked message to be acked")
        tasks.note.delay("after").get(timeout=WAIT)

    assert tasks.ran == ["after"]
    assert later.state == states.REVOKED


def test_a_revoked_task_calls_no_errback(app: App, tasks: Tasks) -> None:
    with worker(app):
        revoked_id = str(uuid.uuid4())
        app.control.revoke(revoked_id, reply=True, **ONE)
        tasks.gate.apply_async(("x",), task_id=revoked_id, link_error=tasks.note.si("errback"))
        tasks.note.delay("after").get(timeout=WAIT)
        time.sleep(0.3)
    assert tasks.ran == ["after"]  # Celery calls no errback for a revoked task either


def test_terminate_on_a_thread_pool_says_it_cannot(app: App, tasks: Tasks) -> None:
    with worker(app):
        running = tasks.gate.delay("a")
        wait_for(lambda: tasks.started == ["a"], "the task to start")
        replies = app.control.revoke(running.id, terminate=True, reply=True, **ONE)
        tasks.open("a")
        assert running.get(timeout=WAIT) == "a"  # it ran to its end, and its result stands

    [reply] = replies or []
    error = reply["w1@test"]["error"]
    assert "pool='threads' cannot terminate a running task" in error
    assert f"{running.id} is flagged as revoked and keeps running" in error


@pytest.mark.parametrize("broker", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
def test_terminate_on_the_process_pool_kills_the_task(
    broker: tuple[str, str], tmp_path: Path
) -> None:
    saved = dict(ctlapp.app.conf)
    ctlapp.app.conf.broker_url = ctlapp.app.conf.result_backend = broker[1]
    marker = tmp_path / "started"
    try:
        with worker(ctlapp.app, pool="processes", app_path="control.ctlapp:app"):
            running = ctlapp.hang.delay(str(marker), 60)
            wait_for(marker.exists, "the task to start in its child process")
            [active] = ask(ctlapp.app).active()["w1@test"]
            started = time.monotonic()
            replies = ctlapp.app.control.terminate(running.id, reply=True, **ONE)
            with pytest.raises(TaskRevokedError, match="terminated"):
                running.get(timeout=WAIT)
            assert time.monotonic() - started < 10
            assert ctlapp.add.delay(2, 3).get(timeout=WAIT) == 5  # a new child took the slot
    finally:
        ctlapp.app.close()
        ctlapp.app.conf.clear()
        ctlapp.app.conf.update(saved)
    assert replies == [{"w1@test": {"ok": f"terminate: {running.id}"}}]
    assert active["id"] == running.id and active["worker_pid"] not in (None, 0)


def test_the_state_db_keeps_revoked_ids_across_a_restart(
    app: App, tasks: Tasks, tmp_path: Path
) -> None:
    statedb = tmp_path / "worker.state"
    task_id = str(uuid.uuid4())
    with worker(app, statedb=statedb):
        app.control.revoke(task_id, reply=True, **ONE)
    assert json.loads(statedb.read_text())["revoked"][0][0] == task_id

    revoked = tasks.note.apply_async(("revoked",), task_id=task_id)  # sent while it is down
    app.backend.forget(task_id)  # as if another backend: only the worker's memory counts
    with worker(app, statedb=statedb):
        assert ask(app).revoked() == {"w1@test": [task_id]}
        tasks.note.delay("after").get(timeout=WAIT)
    assert tasks.ran == ["after"]
    assert revoked.state == states.REVOKED


def test_revoke_by_stamped_headers(app: App, tasks: Tasks) -> None:
    with worker(app):
        replies = app.control.revoke_by_stamped_headers({"batch": ["b1"]}, reply=True, **ONE)
        stamped = tasks.note.apply_async(("stamped",), stamps={"batch": "b1"})
        tasks.note.delay("after").get(timeout=WAIT)
    assert replies == [{"w1@test": {"ok": "headers {'batch': ['b1']} flagged as revoked, "
                                          "but not terminated"}}]
    assert tasks.ran == ["after"]
    assert stamped.state == states.REVOKED


def test_hello_merges_revoked_ids_as_celerys_mingle(app: App, tasks: Tasks) -> None:
    with worker(app):
        app.control.revoke("mine", reply=True, **ONE)
        replies = app.control.broadcast("hello", arguments={
            "from_node": "celery@other", "revoked": ["theirs"]}, reply=True, **ONE)
    [reply] = replies or []
    assert reply["w1@test"]["revoked"] == ["mine", "theirs"]


def test_shutdown_stops_a_running_worker(app: App, tasks: Tasks) -> None:
    running = worker(app)
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        wait_for(lambda: app.control.ping(timeout=0.3), "the worker to answer")
        assert app.control.broadcast("shutdown", reply=True, timeout=0.5) == []  # no reply
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        running.stop(1)
        thread.join(WAIT)


def test_remote_control_can_be_turned_off(app: App, tasks: Tasks) -> None:
    with worker(app, remote_control=False):
        assert app.control.ping(timeout=0.3) == []
    app.conf.worker_enable_remote_control = False
    with worker(app):
        assert app.control.ping(timeout=0.3) == []


@pytest.mark.parametrize("broker", [pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
def test_scheduled_and_revoke_of_an_eta_task_the_worker_holds(
    broker: tuple[str, str],
) -> None:
    """With Celery's delay mode the broker does not hold early messages: the worker does,
    ``scheduled`` lists them, and a revoke takes one out of its heap."""
    app = App("ctl", broker=f"{broker[1]}?delay_mode=celery", backend=broker[1])
    tasks = Tasks(app)
    try:
        with worker(app):
            later = tasks.note.apply_async(("later",), countdown=30, priority=3)
            scheduled = wait_for(
                lambda: (ask(app).scheduled() or {}).get("w1@test"),
                "the task to be held")
            app.control.revoke(later.id, reply=True, **ONE)
            after = ask(app).scheduled()
            held = redis.Redis.from_url(broker[1]).hlen("unacked")
        assert later.state == states.REVOKED
    finally:
        app.close()
    [entry] = scheduled
    assert list(entry) == ["eta", "priority", "request"]
    assert entry["priority"] == 6 and entry["eta"].startswith("20")
    assert entry["request"]["id"] == later.id
    assert entry["request"]["delivery_info"]["priority"] == 3
    assert after == {"w1@test": []}
    assert held == 0  # acked, not held nor returned
    assert tasks.ran == []


class Plain(Transport):
    """The SQLite broker through the core contract only (no capability at all)."""

    def __init__(self, url: str) -> None:
        self.inner = SQLiteTransport.from_url(url)
        self.capabilities = self.inner.capabilities
        self.url = "plain://"

    def connect(self) -> None:
        self.inner.connect()

    def close(self) -> None:
        self.inner.close()

    def _publish(self, messages: Sequence[Prepared]) -> None:
        self.inner.publish_many([Outgoing(m.frame, m.route, m.not_before) for m in messages])

    def _receive(self, queues: list[str], timeout: float) -> Delivery | None:
        return self.inner.receive(queues, timeout=timeout)  # settles through the inner one

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        raise AssertionError("the inner transport's deliveries settle themselves")


def test_a_broker_that_cannot_broadcast(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    app = App("plain", transport=lambda: Plain(url), backend=url)
    Tasks(app)
    try:
        with caplog.at_level("WARNING", logger="wiretask.worker"), worker(app):
            pass
        assert "remote control is off: plain:// cannot broadcast" in caplog.text
        with pytest.raises(ImproperlyConfigured, match="needs a broker that can broadcast"):
            app.control.ping()
    finally:
        app.close()


def test_the_forwarding_transport_forwards_broadcast(app: App, tasks: Tasks) -> None:
    """The testing kit's wrapper offers what it wraps, Broadcast included."""
    with worker(app, transport=ForwardingTransport(app.new_transport())):
        assert app.control.ping(**ONE) == [{"w1@test": {"ok": "pong"}}]


class Locked(ForwardingTransport):
    """A broker whose control queue another node holds (RabbitMQ's RESOURCE_LOCKED on an
    exclusive queue of the same name)."""

    def listen(self, exchange: Exchange, queue: BoundQueue) -> Inbox:
        raise TransportError(f"listen on {queue.name!r} failed: (405) RESOURCE_LOCKED",
                             url=self.url)


def test_a_mailbox_that_cannot_listen_names_the_broker_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = Mailbox(transport=Locked(MemoryTransport(f"ctl-{uuid.uuid4().hex}")),
                  hostname="w1@test", queue=node_queue("w1@test"), namespace="celery",
                  commands={}, registry=Registry(), serializer="json", clock=LamportClock())
    with caplog.at_level("WARNING", logger="wiretask"):
        box.start(timeout=0.3)
        box.stop()
    assert not box.listening.is_set()
    assert ("remote control of w1@test is not listening yet (listen on "
            "'w1@test.celery.pidbox' failed: (405) RESOURCE_LOCKED") in caplog.text
