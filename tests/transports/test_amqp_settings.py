"""Celery's broker and queue settings on a RabbitMQ broker, through ``App(...)``: each
honoured one does what Celery's does, seen on the broker (``rabbitmqctl``), and those
that need RabbitMQ are refused by name with another broker.

``wiretask._amqp.options.from_settings`` lists the mapping; ``docs/settings.md`` says
each setting's status.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from celery import Celery

from conftest import IN_CI
from interop.amqp_interop import virtual_host
from wiretask._amqp.link import heartbeat_period
from wiretask.app import App
from wiretask.errors import ConnectionLost, ImproperlyConfigured, TransportError
from wiretask.transports.amqp import AMQPTransport
from wiretask.worker import Worker

WAIT = 20.0


def ctl_json(*args: str) -> list[dict[str, Any]]:
    command = os.environ.get("WIRETASK_TEST_AMQP_CTL")
    if not command:
        if IN_CI:  # under CI a missing broker tool fails, never skips
            pytest.fail("needs rabbitmqctl: WIRETASK_TEST_AMQP_CTL is not set under CI=true")
        pytest.skip("needs rabbitmqctl (WIRETASK_TEST_AMQP_CTL, set by scripts/test)")
    done = subprocess.run([command, *args, "--formatter", "json"], check=True,
                          capture_output=True, timeout=60, text=True)
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


@pytest.fixture(scope="module")
def vhost(amqp_url: str) -> Iterator[str]:
    with virtual_host(amqp_url, "settings") as url:
        yield url


def vhost_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def queues(url: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in ctl_json(
        "list_queues", "-p", vhost_name(url), "name", "type", "arguments", "durable",
        "auto_delete")}


def exchanges(url: str) -> dict[str, str]:
    return {row["name"]: row["type"] for row in ctl_json(
        "list_exchanges", "-p", vhost_name(url), "name", "type")}


def arguments(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, _, value in row["arguments"]}


def connections(url: str, tag: str) -> list[dict[str, Any]]:
    """The broker's view of the connections of one app (by its connection names)."""
    rows = ctl_json("list_connections", "vhost", "timeout", "auth_mechanism",
                    "client_properties")
    found = []
    for row in rows:
        properties = row["client_properties"]
        names = [value for key, _, value in properties if key == "connection_name"]
        if row["vhost"] == vhost_name(url) and names and tag in names[0]:
            found.append(row)
    return found


def unique(label: str) -> str:
    return f"settings-{label}-{uuid.uuid4().hex[:8]}"


def app_on(url: str, **settings: Any) -> App:
    app = App(unique("app"), broker=url, backend="memory://", **settings)

    @app.task(name="settings.echo")
    def echo(value: Any) -> Any:
        return value

    return app


# -- the connection ----------------------------------------------------------------------


def test_broker_heartbeat_and_login_method_are_the_connections(vhost: str) -> None:
    tag = uuid.uuid4().hex
    app = app_on(vhost, broker_heartbeat=7, broker_login_method="PLAIN",
                 broker_transport_options={"client_properties": {"connection_name": tag}})
    try:
        app.transport.connect()
        [row] = connections(vhost, tag)
        assert (row["timeout"], row["auth_mechanism"]) == (7, "PLAIN")
    finally:
        app.close()
    default = app_on(vhost, broker_transport_options={"client_properties":
                                                      {"connection_name": tag + "d"}})
    try:
        default.transport.connect()
        [row] = connections(vhost, tag + "d")
        assert (row["timeout"], row["auth_mechanism"]) == (60, "AMQPLAIN")
    finally:
        default.close()


def test_broker_heartbeat_checkrate_sets_how_often_heartbeats_are_checked() -> None:
    options = AMQPTransport.options_from_settings(
        App("x", broker_heartbeat=30, broker_heartbeat_checkrate=5).conf)
    assert (options["heartbeat"], options["heartbeat_checkrate"]) == (30, 5)
    transport = AMQPTransport("amqp://h//", **options)
    assert heartbeat_period(transport._options) == 6.0  # heartbeat / checkrate, as Celery


def test_a_heartbeat_keeps_an_idle_app_connected(vhost: str) -> None:
    """With a 1 s heartbeat an idle connection missing its heartbeats is closed by the
    broker within ~2 s: the app's heartbeat thread keeps it (publishing works after)."""
    app = app_on(vhost, broker_heartbeat=1, broker_heartbeat_checkrate=4,
                 task_default_queue=unique("idle"))
    try:
        app.send_task("settings.echo", (1,))
        time.sleep(3.5)
        app.send_task("settings.echo", (2,), retry=False)  # no reconnect needed
    finally:
        app.close()


def test_broker_connection_timeout_bounds_connecting() -> None:
    """A listener that accepts and never answers the AMQP handshake: connecting gives
    up after broker_connection_timeout, not the default 4 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    app = App("slow", broker=f"amqp://guest:guest@127.0.0.1:{port}//",
              broker_connection_timeout=1)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            app.transport.connect()
        assert time.monotonic() - started < 3
    finally:
        app.close()
        stop.set()
        thread.join(5)
        for sock in accepted:
            sock.close()
        listener.close()


def test_broker_use_ssl_speaks_tls(vhost: str) -> None:
    """The test broker's port speaks plain AMQP: with broker_use_ssl the app opens a
    TLS session there, which fails (the plain connection works)."""
    app = app_on(vhost, broker_use_ssl={"cert_reqs": ssl.CERT_NONE},
                 broker_connection_timeout=2)
    try:
        assert AMQPTransport.options_from_settings(app.conf)["ssl"] == {
            "cert_reqs": ssl.CERT_NONE}
        with pytest.raises(TransportError) as raised:
            app.transport.connect()
        assert isinstance(raised.value.__cause__, ssl.SSLError | OSError)
    finally:
        app.close()
    plain = app_on(vhost, broker_use_ssl=False)
    try:
        plain.transport.connect()
    finally:
        plain.close()


# -- what is declared --------------------------------------------------------------------


def test_queue_types_exchange_types_and_max_priority_as_celery_declares_them(
    vhost: str,
) -> None:
    default, created = unique("default"), unique("created")
    app = app_on(vhost, task_default_queue=default, task_default_queue_type="quorum",
                 task_default_exchange_type="topic", task_create_missing_queue_type="quorum",
                 task_create_missing_queue_exchange_type="topic",
                 task_queue_max_priority=None)
    try:
        app.send_task("settings.echo", (1,))
        app.send_task("settings.echo", (2,), queue=created)
    finally:
        app.close()
    found, types = queues(vhost), exchanges(vhost)
    assert found[default]["type"] == "quorum"
    assert found[created]["type"] == "quorum"
    assert (types[default], types[created]) == ("topic", "topic")
    # Celery 5.7 declares the same queues with the same settings without complaint.
    celery = Celery("same", broker=vhost, set_as_current=False)
    celery.conf.update(task_default_queue=default, task_default_queue_type="quorum",
                       task_default_exchange_type="topic",
                       task_create_missing_queue_type="quorum",
                       task_create_missing_queue_exchange_type="topic")
    try:
        with celery.connection_for_write() as connection:
            queues_of = celery.amqp.queues
            queues_of[default].bind(connection.default_channel).declare()
            queues_of[created].bind(connection.default_channel).declare()
    finally:
        celery.close()


def test_task_queue_max_priority_and_the_missing_queue_defaults(vhost: str) -> None:
    classic = unique("classic")
    app = app_on(vhost, task_default_queue=classic, task_queue_max_priority=7)
    try:
        assert app.transport.capabilities.priorities
        app.send_task("settings.echo", (1,), priority=5)
    finally:
        app.close()
    row = queues(vhost)[classic]
    assert row["type"] == "classic"
    assert arguments(row) == {"x-max-priority": 7}
    assert exchanges(vhost)[classic] == "direct"


def test_native_delayed_delivery_queue_type_is_the_ladders(amqp_url: str) -> None:
    with virtual_host(amqp_url, "ladder") as url:
        app = App("ladder", broker=f"{url}?delay_mode=ladder", backend="memory://",
                  broker_native_delayed_delivery_queue_type="classic",
                  task_default_queue=unique("delayed"))
        try:
            app.send_task("settings.echo", (1,), countdown=60)
        finally:
            app.close()
        found = queues(url)
        assert found["celery_delayed_27"]["type"] == "classic"
        assert found["celery_delayed_0"]["type"] == "classic"


def test_broker_transport_options_win_over_settings(vhost: str) -> None:
    queue = unique("options")
    app = app_on(vhost, task_default_queue=queue, task_create_missing_queue_type="quorum",
                 broker_transport_options={"queue_type": "classic", "confirm_publish": False})
    try:
        app.send_task("settings.echo", (1,), queue=queue)
    finally:
        app.close()
    assert queues(vhost)[queue]["type"] == "classic"
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        _ = App("x", broker=vhost, broker_transport_options={"visibility_timeout": 5}).transport


# -- results -----------------------------------------------------------------------------


def test_result_persistent_makes_rpc_replies_persistent(vhost: str) -> None:
    """result_persistent: delivery mode 2; result_exchange(_type) change nothing, as in
    Celery 5.7: replies go through the default exchange to the reply queue."""
    app = App(unique("persistent"), broker=vhost, backend="rpc://", result_persistent=True,
              result_exchange="ignored", result_exchange_type="topic",
              task_default_queue=unique("persistent"))

    @app.task(name="settings.double")
    def double(x: int) -> int:
        return 2 * x

    reply_queue = unique("reply")
    connection = amqp.Connection(**AMQPTransport(vhost)._options.connection_kwargs())
    connection.connect()
    channel = connection.channel()
    channel.queue_declare(reply_queue, durable=True, auto_delete=False)
    try:
        with Worker(app, concurrency=1, shutdown_timeout=5):
            app.send_task("settings.double", (21,), reply_to=reply_queue)
            deadline = time.monotonic() + WAIT
            message = None
            while message is None and time.monotonic() < deadline:
                message = channel.basic_get(reply_queue, no_ack=True)
                time.sleep(0.02)
        assert message is not None
        assert message.properties["delivery_mode"] == 2
        assert message.delivery_info["exchange"] == ""
        assert json.loads(message.body)["result"] == 42
    finally:
        channel.queue_delete(reply_queue)
        connection.collect()
        app.close()


# -- refused with another broker ---------------------------------------------------------


@pytest.mark.parametrize(("setting", "value"), [
    ("task_default_queue_type", "quorum"),
    ("task_create_missing_queue_type", "quorum"),
    ("task_create_missing_queue_exchange_type", "topic"),
    ("broker_connection_timeout", 3),
    ("broker_use_ssl", True),
])
def test_settings_that_need_rabbitmq_are_refused_with_another_broker(
    setting: str, value: Any, tmp_path: Any
) -> None:
    app = App("elsewhere", broker=f"sqlite:///{tmp_path / 'b.db'}", **{setting: value})
    with pytest.raises(ImproperlyConfigured, match=setting) as raised:
        _ = app.transport
    assert raised.value.setting == setting
    app.close()


def test_settings_other_brokers_ignore_as_celery_does(tmp_path: Any) -> None:
    app = App("elsewhere", broker=f"sqlite:///{tmp_path / 'b.db'}", broker_heartbeat=10,
              broker_heartbeat_checkrate=2, broker_login_method="PLAIN",
              broker_native_delayed_delivery_queue_type="classic")
    try:
        assert app.transport is not None
    finally:
        app.close()
