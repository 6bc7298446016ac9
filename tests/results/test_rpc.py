"""The ``rpc://`` result backend against a real RabbitMQ, with wiretask's worker: states
stream to the sending client, the conformance kit where its rules apply, what rpc://
cannot do fails loudly, and the reply queue and messages are Celery's.

Celery's own worker and client are in ``tests/interop/test_amqp_rpc.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest

from interop.amqp_interop import ctl, virtual_host
from wiretask._amqp.options import parse
from wiretask.app import App, Task
from wiretask.errors import ConnectionLost, ImproperlyConfigured, TransportError, ValidationError
from wiretask.protocol import states
from wiretask.results import ReplyRouted, ViaBroker, backend_from_url
from wiretask.results.rpc import RPCBackend
from wiretask.testing import BACKEND_CHECKS, check_backend, closed_port
from wiretask.worker import Worker

WAIT = 20.0
#: Set by ``rpc.signal`` when it runs.
RAN = threading.Event()

#: The kit's checks rpc:// cannot meet, with why (``check_backend``'s ``skip``).
RPC_SKIPS = {
    "expiry": "rpc:// keeps no result on the broker to expire: a state is a message read "
              "once by its client; expires is the reply queue's x-expires (the queue is "
              "deleted after that long unused), not a result's lifetime",
    "late_subscriber": "a state is a message for its client: a subscription first gets "
                       "every state nobody has read yet, in order (as Celery's rpc "
                       "on_message gets every message of its queue), then the later ones; "
                       "the current one comes first only once the older ones were read",
    "error_translation": "forget() touches nothing on the broker (rpc:// states live in "
                         "the client that received them), so it cannot fail on an "
                         "unreachable one; test_rpc checks store, get and subscribe",
}


@pytest.fixture(scope="module")
def vhost(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "rpc") as url:
        yield url


def raw_channel(url: str) -> tuple[amqp.Connection, Any]:
    options = parse(url, {})
    connection = amqp.Connection(**options.connection_kwargs())
    connection.connect()
    channel = connection.channel()
    channel.auto_decode = False
    return connection, channel


def rpc_backend(url: str, oid: str, **kwargs: Any) -> RPCBackend:
    via = ViaBroker(url=url, options={"heartbeat": 0}, oid=lambda: oid)
    return RPCBackend("rpc://", via=via, **kwargs)


@pytest.fixture
def app(vhost: str) -> Iterator[App]:
    app = App(f"rpc-{uuid.uuid4().hex[:6]}", broker=vhost, backend="rpc://",
              task_track_started=True, task_default_queue=f"rpc-{uuid.uuid4().hex[:8]}")

    @app.task(name="rpc.add", bind=True)
    def add(self: Task[Any, Any], x: int, y: int) -> int:
        self.update_state(state="PROGRESS", meta={"done": 1})
        return x + y

    @app.task(name="rpc.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="rpc.signal", bind=True)
    def signal(self: Task[Any, Any]) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        RAN.set()
        return "ok"

    yield app
    app.close()


@pytest.fixture
def worker(app: App) -> Iterator[Worker]:
    with Worker(app, concurrency=2, shutdown_timeout=5) as running:
        yield running


# -- the conformance kit ----------------------------------------------------------------


def test_rpc_passes_the_kit_where_its_rules_apply(vhost: str) -> None:
    """Every 'instance' the kit asks for is one client: rpc:// states belong to the
    client that sent the task, so the store every instance shares is that client."""
    client = rpc_backend(vhost, f"kit-{uuid.uuid4()}")
    try:
        report = check_backend(lambda expires: client, skip=RPC_SKIPS)
    finally:
        client.close()
    assert report.failed == ()
    assert dict(report.skipped) == {
        **RPC_SKIPS,
        "deferred_store": "the backend does not offer DeferredStore (pending, store_pending)",
    }
    assert set(report.passed) == set(BACKEND_CHECKS) - {*RPC_SKIPS, "deferred_store"}


def test_an_unreachable_broker_is_a_lost_connection_without_the_password() -> None:
    url = f"amqp://guest:s3cr3t-rpc@127.0.0.1:{closed_port()}//"
    backend = RPCBackend("rpc://", via=ViaBroker(url=url, options={"connect_timeout": 1},
                                                 oid=lambda: "nobody"))
    task_id = str(uuid.uuid4())
    meta = states.make_meta(task_id, states.SUCCESS, 1)
    calls = {
        "store": lambda: backend.store(task_id, meta),
        "store_reply": lambda: backend.store_reply(task_id, meta, reply_to="q",
                                                   correlation_id=task_id),
        "get": lambda: backend.get(task_id),
        "subscribe": lambda: backend.subscribe(task_id),
        "track": lambda: backend.track([(task_id, "nobody")]),
    }
    for what, call in calls.items():
        with pytest.raises(ConnectionLost) as raised:
            call()
        assert "s3cr3t-rpc" not in f"{raised.value} {raised.value!r}", what
        assert isinstance(raised.value.__cause__, OSError), what
    backend.close()


# -- through the app and wiretask's worker -----------------------------------------------


def test_get_streams_every_state_to_the_sender(app: App, worker: Worker) -> None:
    seen: list[dict[str, Any]] = []
    result = app.tasks["rpc.add"].delay(2, 3)

    assert result.get(timeout=WAIT, on_message=seen.append) == 5
    assert [m["status"] for m in seen] == [states.STARTED, "PROGRESS", states.SUCCESS]
    assert seen[1]["result"] == {"done": 1}
    assert all(m["task_id"] == result.id for m in seen)
    # Read again, and from a new AsyncResult: the final state is kept by this client.
    assert result.get(timeout=WAIT) == 5
    assert app.AsyncResult(result.id).state == states.SUCCESS
    again: list[dict[str, Any]] = []
    assert app.AsyncResult(result.id).get(timeout=WAIT, on_message=again.append) == 5
    assert [m["status"] for m in again] == [states.SUCCESS]


def test_a_failure_propagates(app: App, worker: Worker) -> None:
    result = app.send_task("rpc.fail", ("boom",))
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=WAIT)
    assert result.state == states.FAILURE


def test_a_late_get_still_gets_the_final_state(app: App) -> None:
    """States sent while nobody listens wait in the reply queue: get() after the task
    finished reads them (on_message from the latest one)."""
    result = app.tasks["rpc.add"].delay(1, 1)
    with Worker(app, concurrency=1, shutdown_timeout=5):
        deadline = time.monotonic() + WAIT
        while result.state != states.SUCCESS and time.monotonic() < deadline:
            time.sleep(0.05)
    seen: list[dict[str, Any]] = []
    assert result.get(timeout=WAIT, on_message=seen.append) == 2
    assert [m["status"] for m in seen] == [states.SUCCESS]


def test_on_message_gets_every_state_nobody_read_even_after_the_task_finished(
    app: App,
) -> None:
    """As Celery's rpc on_message gets every message of its queue: a task that finished
    before get() began still shows STARTED and PROGRESS, once; after that, a new get()
    starts from the final state."""
    RAN.clear()
    result = app.send_task("rpc.signal")
    with Worker(app, concurrency=1, shutdown_timeout=5):
        assert RAN.wait(WAIT)
    # The worker has stopped: the task finished, its states wait in the reply queue.
    seen: list[dict[str, Any]] = []
    assert result.get(timeout=WAIT, on_message=seen.append) == "ok"
    assert [m["status"] for m in seen] == [states.STARTED, "PROGRESS", states.SUCCESS]
    again: list[dict[str, Any]] = []
    assert result.get(timeout=WAIT, on_message=again.append) == "ok"
    assert [m["status"] for m in again] == [states.SUCCESS]


def test_many_results_from_many_threads(app: App, worker: Worker) -> None:
    add = app.tasks["rpc.add"]
    results = [add.delay(i, i) for i in range(100)]
    values: dict[int, int] = {}
    errors: list[BaseException] = []

    def read(indexes: range) -> None:
        try:
            for i in indexes:
                values[i] = results[i].get(timeout=WAIT)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(range(k, 100, 4),)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert values == {i: 2 * i for i in range(100)}


def test_the_reply_queue_is_the_apps_oid_declared_before_the_send(app: App) -> None:
    """Declared when a task is sent (no worker runs): durable, not exclusive, with
    Celery's x-expires of result_expires (an equivalent declaration succeeds, another
    one is refused), and every message's reply_to is that queue."""
    result = app.send_task("rpc.add", (1, 2))
    assert isinstance(app.backend, ReplyRouted)
    queue = app.oid
    connection, channel = raw_channel(app.broker_url)
    try:
        channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False,
                              arguments={"x-expires": 86_400_000})
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False,
                                  arguments={"x-expires": 1000})
    finally:
        connection.collect()
    delivery = app.transport.receive([app.conf.task_default_queue], timeout=5)
    assert delivery is not None
    assert delivery.frame.properties["reply_to"] == queue
    assert delivery.frame.task_id == result.id
    delivery.ack()


def test_result_persistent_and_celerys_reply_properties(vhost: str) -> None:
    """The worker's reply is Kombu's message: default exchange, routing key reply_to,
    correlation_id, empty headers, priority 0, delivery mode 1 (2 with
    result_persistent)."""
    queue = f"reply-{uuid.uuid4()}"
    task_id = str(uuid.uuid4())
    connection, channel = raw_channel(vhost)
    channel.queue_declare(queue, durable=True, auto_delete=False, arguments={"x-expires": 60_000})
    try:
        for persistent, mode in ((False, 1), (True, 2)):
            via = ViaBroker(url=vhost, options={}, oid=lambda: "unused", persistent=persistent)
            backend = RPCBackend("rpc://", via=via)
            meta = states.make_meta(task_id, states.SUCCESS, 5)
            backend.store_reply(task_id, meta, reply_to=queue, correlation_id="the-corr-id")
            backend.close()
            message = channel.basic_get(queue, no_ack=True)
            assert message is not None
            assert message.delivery_info["exchange"] == ""
            assert message.delivery_info["routing_key"] == queue
            assert message.properties == {
                "content_type": "application/json", "content_encoding": "utf-8",
                "application_headers": {}, "delivery_mode": mode, "priority": 0,
                "correlation_id": "the-corr-id",
            }
            assert message.body == backend.codec.encode(meta).data
    finally:
        channel.queue_delete(queue)
        connection.collect()


def test_a_message_without_reply_to_is_answered_with_nothing(vhost: str) -> None:
    backend = rpc_backend(vhost, "unused")
    task_id = str(uuid.uuid4())
    backend.store_reply(task_id, states.make_meta(task_id, states.SUCCESS, 1),
                        reply_to=None, correlation_id=None)
    assert backend._out.link.connection is None  # nothing was even connected
    backend.close()


def test_a_gone_reply_queue_drops_the_state_with_a_warning(
    vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = rpc_backend(vhost, "unused")
    task_id = str(uuid.uuid4())
    with caplog.at_level(logging.WARNING, logger="wiretask.results.rpc"):
        backend.store_reply(task_id, states.make_meta(task_id, states.SUCCESS, 1),
                            reply_to=f"gone-{uuid.uuid4()}", correlation_id=task_id)
    assert "does not exist" in caplog.text and task_id in caplog.text
    backend.close()


# -- what rpc:// cannot do fails loudly --------------------------------------------------


def test_get_from_another_app_or_process_raises_instead_of_waiting(
    app: App, worker: Worker, vhost: str
) -> None:
    result = app.tasks["rpc.add"].delay(3, 4)
    assert result.get(timeout=WAIT) == 7
    other = App("other", broker=vhost, backend="rpc://")
    try:
        theirs = other.AsyncResult(result.id)
        assert theirs.state == states.PENDING  # as Celery: nothing arrives there
        started = time.monotonic()
        with pytest.raises(ValidationError, match="only to the app that sent it"):
            theirs.get(timeout=WAIT)
        assert time.monotonic() - started < 5
    finally:
        other.close()


def test_another_reply_to_and_forget_and_ignore_result_raise(app: App, worker: Worker) -> None:
    elsewhere = app.send_task("rpc.add", (1, 1), reply_to="somebody-elses-queue")
    with pytest.raises(ValidationError, match="somebody-elses-queue"):
        elsewhere.get(timeout=WAIT)

    done = app.send_task("rpc.add", (2, 2))
    assert done.get(timeout=WAIT) == 4
    done.forget()
    assert done.state == states.PENDING
    with pytest.raises(ValidationError, match="forgotten"):
        done.get(timeout=WAIT)

    ignored = app.send_task("rpc.add", (3, 3), ignore_result=True)
    assert ignored.get(timeout=WAIT) is None  # the AsyncResult knows it is ignored
    with pytest.raises(ValidationError, match="ignore_result"):
        app.AsyncResult(ignored.id).get(timeout=WAIT)


def test_rpc_needs_a_rabbitmq_broker_and_refuses_what_it_cannot_do(
    vhost: str, redis_url: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match="must be RabbitMQ"):
        _ = App("r", broker=redis_url, backend="rpc://").backend
    with pytest.raises(ImproperlyConfigured, match="result_compression"):
        _ = App("c", broker=vhost, backend="rpc://", result_compression="zlib").backend
    with pytest.raises(ImproperlyConfigured, match="takes no host"):
        _ = App("h", broker=vhost, backend="rpc://somewhere/").backend
    with pytest.raises(ImproperlyConfigured, match="through an App"):
        backend_from_url("rpc://")
    with pytest.raises(ImproperlyConfigured, match="unknown rpc:// result backend option"):
        _ = App("o", broker=vhost, backend="rpc://",
                result_backend_transport_options={"global_keyprefix": "x"}).backend


# -- connection loss ---------------------------------------------------------------------


def test_a_lost_connection_loses_no_state(vhost: str, amqp_url: str) -> None:
    """The client's connection is closed by the broker while it waits: the next wait
    connects again, and what the reply queue received meanwhile arrives once."""
    client = rpc_backend(vhost, f"loss-{uuid.uuid4()}")
    writer = rpc_backend(vhost, "unused")
    task_id = str(uuid.uuid4())
    client.track([(task_id, client.reply_to)])
    subscription = client.subscribe(task_id)
    assert subscription.next(0.1) is None
    name = vhost.rsplit("/", 1)[1]
    ctl("close_all_connections", "-p", name, "test: rpc connection loss")
    progress = states.make_meta(task_id, "PROGRESS", {"i": 1})
    final = states.make_meta(task_id, states.SUCCESS, "done")
    deadline = time.monotonic() + WAIT
    while True:  # the writer's connection was closed too: its first call may find out
        try:
            writer.store_reply(task_id, progress, reply_to=client.reply_to,
                               correlation_id=task_id)
            break
        except TransportError:
            assert time.monotonic() < deadline
    writer.store_reply(task_id, final, reply_to=client.reply_to, correlation_id=task_id)
    got = []
    while not subscription.finished and time.monotonic() < deadline:
        meta = subscription.next(1.0)
        if meta is not None:
            got.append(meta)
    assert got == [progress, final]
    client.close()
    writer.close()


# -- the other result backends with a RabbitMQ broker -----------------------------------


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_redis_and_sqlite_results_work_with_a_rabbitmq_broker(
    kind: str, vhost: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    backend = (request.getfixturevalue("redis_url") if kind == "redis"
               else f"sqlite:///{tmp_path / 'results.db'}")
    app = App(f"{kind}-results", broker=vhost, backend=backend, task_track_started=True,
              task_default_queue=f"{kind}-{uuid.uuid4().hex[:8]}")

    @app.task(name="rpc.neighbour", bind=True)
    def neighbour(self: Task[Any, Any], x: int) -> int:
        self.update_state(state="PROGRESS", meta={"x": x})
        return x * 10

    try:
        assert not isinstance(app.backend, ReplyRouted)
        with Worker(app, concurrency=1, shutdown_timeout=5):
            seen: list[dict[str, Any]] = []
            result = neighbour.delay(4)
            assert result.get(timeout=WAIT, on_message=seen.append) == 40
        statuses = [m["status"] for m in seen]
        assert statuses[-1] == states.SUCCESS
        assert set(statuses) <= {states.STARTED, "PROGRESS", states.SUCCESS}
        # Any process reads these: another app, no worker running.
        other = App("reader", broker=vhost, backend=backend)
        try:
            assert other.AsyncResult(result.id).get(timeout=WAIT) == 40
        finally:
            other.close()
    finally:
        app.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_worker_child_processes_answer_the_sender(vhost: str) -> None:
    """The process pool's children open their own connections and send each state to
    the reply queue of the message they run."""
    from worker import procapp  # noqa: PLC0415 - tests/ on the path, as test_processes

    saved = dict(procapp.app.conf)
    procapp.app.conf.update(broker_url=vhost, result_backend="rpc://",
                            task_track_started=True,
                            task_default_queue=f"rpc-pool-{uuid.uuid4().hex[:8]}")
    try:
        with Worker(procapp.app, pool="processes", concurrency=2, shutdown_timeout=10,
                    app_path="worker.procapp:app"):
            seen: list[dict[str, Any]] = []
            who = procapp.whoami.delay().get(timeout=WAIT, on_message=seen.append)
            results = [procapp.add.delay(i, i) for i in range(10)]
            assert [r.get(timeout=WAIT) for r in results] == [2 * i for i in range(10)]
        assert [m["status"] for m in seen] == [states.STARTED, states.SUCCESS]
        assert seen[0]["result"]["pid"] == who["pid"] != os.getpid()
    finally:
        procapp.app.close()
        procapp.app.conf.clear()
        procapp.app.conf.update(saved)
