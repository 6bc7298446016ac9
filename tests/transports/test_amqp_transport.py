"""AMQPTransport against a real RabbitMQ: what the conformance kit does not reach.

Errors at the boundary (credentials, ports, virtual hosts, declarations), publisher
confirms (a nack, an unroutable message), the prefetch window behind ``receive_many``,
deliveries of a lost channel, dead letters read back without loss or reordering, and
declarations that interoperate with Celery's in both orders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from amqp_support import celery_like_frame, raw_channel, unique
from conftest import free_port
from tcp_proxy import TcpProxy
from wiretask.app import App
from wiretask.cli import main
from wiretask.errors import ConnectionLost, EncodeError, TransportError
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.routing import QueueBinding
from wiretask.transports.amqp import AMQPTransport
from wiretask.transports.base import Inspection, QueueAdmin, QueueStatistics


@pytest.fixture
def transport(amqp_url: str) -> Iterator[AMQPTransport]:
    t = AMQPTransport(amqp_url)
    yield t
    t.close()


def frame(body: bytes = b"x", **headers: Any) -> Frame:
    return Frame(body=body, content_type="application/octet-stream", content_encoding="binary",
                 headers={"id": body.decode(errors="replace"), **headers})


def with_password(url: str, password: str) -> str:
    return url.replace("guest:guest@", f"guest:{password}@")


# -- errors at the boundary -----------------------------------------------------------


def test_a_wrong_password_is_not_recoverable_and_not_shown(amqp_url: str) -> None:
    t = AMQPTransport(with_password(amqp_url, "n0t-the-passw0rd"), heartbeat=0)
    with pytest.raises(TransportError) as raised:
        t.connect()
    assert not isinstance(raised.value, ConnectionLost)
    assert "ACCESS_REFUSED" in str(raised.value)
    assert "n0t-the-passw0rd" not in str(raised.value)
    assert raised.value.url == "amqp://guest:**@" + amqp_url.split("@", 1)[1]
    assert isinstance(raised.value.__cause__, Exception)


def test_a_closed_port_is_a_lost_connection() -> None:
    t = AMQPTransport(f"amqp://guest:s3cret@127.0.0.1:{free_port()}//", connect_timeout=1)
    with pytest.raises(ConnectionLost) as raised:
        t.publish(frame(), Route("anything"))
    assert "s3cret" not in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


def test_an_unknown_virtual_host_is_refused(amqp_url: str) -> None:
    t = AMQPTransport(amqp_url.rstrip("/") + "/no-such-vhost", heartbeat=0)
    with pytest.raises(TransportError, match="no-such-vhost") as raised:
        t.connect()
    assert not isinstance(raised.value, ConnectionLost)


def test_an_unencodable_message_stops_the_whole_batch(transport: AMQPTransport) -> None:
    q = unique("encode")
    batch = [Outgoing(frame(b"ok"), Route(q)),
             Outgoing(frame(b"bad", when={"a", "set"}), Route(q))]
    with pytest.raises(EncodeError) as raised:
        transport.publish_many(batch)
    assert raised.value.field == "headers['when']"
    assert transport.size(q) == 0  # nothing was sent, not even the first


# -- publisher confirms ------------------------------------------------------------------


def test_a_nacked_message_is_an_error_naming_it(amqp_url: str) -> None:
    q = unique("nack")
    t = AMQPTransport(amqp_url, queue_arguments={
        q: {"x-max-length": 1, "x-overflow": "reject-publish"}})
    try:
        t.publish(frame(b"first"), Route(q))
        with pytest.raises(TransportError, match=r"refused \(nacked\).*'second'") as raised:
            t.publish_many([Outgoing(frame(b"second"), Route(q)),
                            Outgoing(frame(b"third"), Route(q))])
        assert not isinstance(raised.value, ConnectionLost)
        assert "2 message(s) refused" in str(raised.value)
        assert t.size(q) == 1
        t.publish(frame(b"fourth"), Route(unique("other")))  # the channel still works
    finally:
        t.purge(q)
        t.close()


def test_an_unroutable_message_is_an_error_naming_it(transport: AMQPTransport,
                                                     amqp_url: str) -> None:
    q = unique("gone")
    transport.publish(frame(b"one"), Route(q))
    with raw_channel(amqp_url) as channel:  # an administrator deletes the queue
        channel.queue_delete(q)

    with pytest.raises(TransportError, match=r"unroutable.*NO_ROUTE") as raised:
        transport.publish(frame(b"two"), Route(q))
    assert "task two" in str(raised.value)
    assert not isinstance(raised.value, ConnectionLost)

    transport.declare_queue(q)  # declared again on a new connection, it works again
    transport.close()
    transport.publish(frame(b"three"), Route(q))
    assert transport.size(q) == 1
    transport.purge(q)


def test_a_publish_that_returned_is_on_the_broker(transport: AMQPTransport) -> None:
    q = unique("confirmed")
    transport.publish_many([Outgoing(frame(str(i).encode()), Route(q)) for i in range(500)])
    assert transport.size(q) == 500  # no wait: confirmed means enqueued
    assert transport.purge(q) == 500


# -- consuming: the prefetch window ------------------------------------------------------


def test_receive_many_is_a_prefetch_window_not_one_get_per_message(
    transport: AMQPTransport,
) -> None:
    q = unique("window")
    transport.publish_many([Outgoing(frame(str(i).encode()), Route(q)) for i in range(10)])

    first = transport.receive_many([q], limit=3, timeout=5)
    assert [d.frame.body for d in first] == [b"0", b"1", b"2"]
    time.sleep(0.2)
    assert transport.size(q) == 7  # the broker pushed no more than the window

    second = transport.receive_many([q], limit=5, timeout=5)  # a wider window
    assert [d.frame.body for d in second] == [b"3", b"4", b"5", b"6", b"7"]
    time.sleep(0.2)
    assert transport.size(q) == 2
    transport.ack_many([*first, *second])
    rest = transport.receive_many([q], limit=5, timeout=5)
    assert [d.frame.body for d in rest] == [b"8", b"9"]
    transport.ack_many(rest)


def test_other_queues_give_back_what_was_pushed(transport: AMQPTransport) -> None:
    a, b = unique("a"), unique("b")
    transport.publish_many([Outgoing(frame(f"a{i}".encode()), Route(a)) for i in range(4)]
                           + [Outgoing(frame(b"b0"), Route(b))])
    got = transport.receive_many([a], limit=2, timeout=5)
    assert [d.frame.body for d in got] == [b"a0", b"a1"]
    transport.ack_many(got)
    time.sleep(0.2)  # the broker pushes a2, a3 into the window meanwhile

    d = transport.receive([b], timeout=5)
    assert d is not None and d.frame.body == b"b0"
    d.ack()
    assert transport.size(a) == 2  # given back, in place
    again = transport.receive_many([a], limit=2, timeout=5)
    assert [d.frame.body for d in again] == [b"a2", b"a3"]
    transport.ack_many(again)


def test_a_delivery_of_a_lost_connection_cannot_be_settled_and_comes_back(
    transport: AMQPTransport,
) -> None:
    q = unique("lost")
    transport.publish(frame(b"once"), Route(q))
    first = transport.receive([q], timeout=5)
    assert first is not None and not first.redelivered
    consumer = transport._consumer.connection  # the connection dies under the consumer
    assert consumer is not None
    consumer.sock.close()

    with pytest.raises(TransportError):
        first.ack()
    again = transport.receive([q], timeout=10)  # reconnects by itself
    assert again is not None and again.frame.body == b"once" and again.redelivered
    with pytest.raises(TransportError, match="lost"):
        first.ack()
    again.ack()
    assert transport.receive([q], timeout=0.3) is None


def test_heartbeats_keep_an_idle_consumer_connected(amqp_url: str) -> None:
    q = unique("heartbeat")
    consumer = AMQPTransport(amqp_url, heartbeat=1)
    producer = AMQPTransport(amqp_url, heartbeat=0)
    try:
        assert consumer.receive([q], timeout=0.1) is None
        epoch = consumer._consumer.epoch
        time.sleep(4)  # RabbitMQ closes a connection that misses two heartbeats (2 s)
        producer.publish(frame(b"late"), Route(q))
        d = consumer.receive([q], timeout=5)
        assert d is not None and d.frame.body == b"late"
        assert consumer._consumer.epoch == epoch, "the connection was lost and reopened"
        d.ack()
    finally:
        consumer.close()
        producer.close()


# -- dead letters and inspection ---------------------------------------------------------


def test_dead_letters_are_read_back_without_loss_or_reordering(
    transport: AMQPTransport,
) -> None:
    q = unique("dead")
    transport.publish_many([Outgoing(frame(f"p{i}".encode()), Route(q)) for i in range(5)])
    for i in range(5):
        d = transport.receive([q], timeout=5)
        assert d is not None
        d.dead_letter(f"reason {i}")

    letters = transport.dead_letters(q)
    assert [(x.frame.body, x.reason, x.queue) for x in letters if x.frame] == [
        (f"p{i}".encode(), f"reason {i}", q) for i in range(5)]
    assert all(x.at > time.time() - 60 for x in letters)
    assert transport.dead_letters(q) == letters  # reading gave them back, in order
    assert transport.size(f"{q}.dead") == 5
    assert transport.size(q) == 0
    transport.purge(f"{q}.dead")


def test_size_and_purge_of_a_missing_queue_are_zero(transport: AMQPTransport) -> None:
    q = unique("missing")
    assert transport.size(q) == 0
    assert transport.purge(q) == 0
    assert transport.dead_letters(q) == []
    transport.publish(frame(), Route(q))  # the transport still works afterwards
    assert transport.size(q) == 1
    assert transport.purge(q) == 1


def test_no_inspection_but_queue_admin_and_wiretask_queue_show_counts(
    transport: AMQPTransport, amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``peek``, so no ``Inspection``; ``QueueAdmin`` (size, purge, dead letters) is
    offered, so ``wiretask queue show`` shows the counts and says why it lists no message,
    and ``wiretask purge`` empties the queue."""
    assert not isinstance(transport, Inspection)
    assert not hasattr(transport, "peek")
    assert isinstance(transport, QueueAdmin)
    q = unique("admin")
    transport.publish_many([Outgoing(frame(b"a"), Route(q)), Outgoing(frame(b"b"), Route(q))])
    delivery = transport.receive([q], timeout=5)
    assert delivery is not None
    delivery.dead_letter("kept for inspect")
    transport.close()  # the other message, pushed to this consumer, goes back to the queue
    capsys.readouterr()

    assert main(["queue", "show", "--broker", amqp_url, q]) == 0
    out = capsys.readouterr().out
    assert f"queue {q!r} on " in out
    assert "1 waiting (1 ready, scheduled ones not known), 1 dead-lettered" in out
    assert "cannot be listed without consuming them" in out

    assert main(["queue", "show", "--broker", amqp_url, "--json", q]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["waiting"], document["ready"], document["scheduled"],
            document["dead_letters"], document["messages"]) == (1, 1, None, 1, None)

    assert main(["purge", "--broker", amqp_url, "-f", q]) == 0
    assert f"purged 1 message from {q!r}" in capsys.readouterr().out
    assert transport.size(q) == 0
    assert [d.reason for d in transport.dead_letters(q)] == ["kept for inspect"]


# -- declarations shared with Celery -----------------------------------------------------

CELERY_CONFIGS = [
    pytest.param({}, {}, id="defaults"),
    pytest.param({"task_queue_max_priority": 10}, {"max_priority": 10}, id="max-priority"),
    pytest.param({"task_create_missing_queue_type": "quorum"}, {"queue_type": "quorum"},
                 id="quorum"),
    pytest.param({"task_create_missing_queue_exchange_type": "topic"},
                 {"exchange_type": "topic"}, id="topic"),
]


def celery_declare(url: str, conf: dict[str, Any], queue: str) -> None:
    app = Celery("declare", broker=url, set_as_current=False)
    app.conf.update(conf)
    with Connection(url) as connection:
        app.amqp.queues[queue].bind(connection.default_channel).declare()


@pytest.mark.parametrize(("celery_conf", "options"), CELERY_CONFIGS)
@pytest.mark.parametrize("celery_first", [True, False], ids=["celery-first", "wiretask-first"])
def test_queues_declared_by_either_side_first_agree(
    amqp_url: str, celery_conf: dict[str, Any], options: dict[str, Any], celery_first: bool
) -> None:
    q = unique("shared")
    t = AMQPTransport(amqp_url, **options)
    try:
        if celery_first:
            celery_declare(amqp_url, celery_conf, q)
            t.declare_queue(q)
            t.publish(frame(), Route(q))
        else:
            t.publish(frame(), Route(q))
            celery_declare(amqp_url, celery_conf, q)
        assert t.size(q) == 1
    finally:
        with raw_channel(amqp_url) as channel:
            channel.queue_delete(q)
            channel.exchange_delete(q)
        t.close()


def test_a_queue_declared_otherwise_is_refused_naming_the_argument(amqp_url: str) -> None:
    q = unique("quorum")
    celery_declare(amqp_url, {"task_create_missing_queue_type": "quorum"}, q)
    t = AMQPTransport(amqp_url)  # classic by default: not what the fleet declared
    try:
        with pytest.raises(TransportError, match=r"PRECONDITION_FAILED.*x-queue-type"):
            t.publish(frame(), Route(q))
        t.publish(frame(), Route(unique("fine")))  # the transport still works
    finally:
        with raw_channel(amqp_url) as channel:
            channel.queue_delete(q)
        t.close()


# -- delays ---------------------------------------------------------------------------


def test_a_delayed_message_waits_in_the_ladder_not_in_its_queue(transport: AMQPTransport) -> None:
    q = unique("ladder")
    not_before = datetime.now(UTC) + timedelta(seconds=1.5)
    transport.publish(frame(b"later"), Route(q), not_before=not_before)
    assert transport.size(q) == 0
    d = transport.receive([q], timeout=10)
    assert d is not None and d.frame.body == b"later"
    assert time.time() >= not_before.timestamp()
    assert d.exchange.startswith("celery_delayed_")
    assert d.routing_key == "0." * 26 + "1.0." + q  # 2 whole seconds
    assert [death["reason"] for death in d.frame.headers["x-death"]] == ["expired"]
    d.ack()


def test_celery_delay_mode_sends_at_once(amqp_url: str) -> None:
    q = unique("celery-mode")
    t = AMQPTransport(amqp_url, delay_mode="celery")
    try:
        t.publish(celery_like_frame(), Route(q),
                  not_before=datetime.now(UTC) + timedelta(hours=1))
        assert t.size(q) == 1  # the eta header carries the time; the consumer holds it
        t.purge(q)
    finally:
        t.close()


def test_a_task_queue_on_a_topic_exchange_is_bound_as_celery_binds_it(amqp_url: str) -> None:
    """``task_queues`` with an exchange of its own: the app binds the queue through
    ``bind_queue`` (``routing.QueueBinding``) before publishing to that exchange, with
    the exchange's type, and the message arrives."""
    q = unique("topic")
    exchange = f"{q}.exchange"
    app = App("amqp-topic", broker=amqp_url, backend="memory://",
              task_queues={q: {"exchange": exchange, "exchange_type": "topic",
                               "routing_key": "jobs.#"}})
    try:
        assert isinstance(app.transport, QueueBinding)
        result = app.send_task("any.task", (1,), queue=q, routing_key="jobs.high")
        t = app.transport
        d = t.receive([q], timeout=5)
        assert d is not None and d.frame.task_id == result.id
        assert (d.exchange, d.routing_key) == (exchange, "jobs.high")
        d.ack()
    finally:
        with raw_channel(amqp_url) as channel:
            channel.queue_delete(q)
            channel.exchange_delete(exchange)
            channel.exchange_delete(q)
        app.close()


def test_held_messages_do_not_stop_the_flow(transport: AMQPTransport) -> None:
    """A consumer that holds what it received (a worker holding eta messages) still gets
    more: RabbitMQ pushes nothing more to a consumer whose window is full, so the
    transport subscribes afresh (a new consumer has an empty window of its own)."""
    q = unique("held")
    transport.publish_many([Outgoing(frame(f"h{i}".encode()), Route(q)) for i in range(5)])
    held = [transport.receive([q], timeout=5) for _ in range(5)]  # none settled meanwhile
    assert [d.frame.body for d in held if d is not None] == [f"h{i}".encode() for i in range(5)]
    transport.ack_many([d for d in held if d is not None])
    assert transport.receive([q], timeout=0.3) is None
    assert transport.size(q) == 0


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_queue_stats_tell_what_amqp_can(amqp_url: str, queue_type: str) -> None:
    """Ready (the queue's and what this consumer was pushed and did not hand out) and
    dead letters; None for what AMQP cannot tell. Exact in one read right after an
    ack, on both queue types: the count waits for the push the ack made room for."""
    q = unique("stats")
    transport = AMQPTransport(amqp_url, queue_type=queue_type)
    try:
        assert isinstance(transport, QueueStatistics)
        transport.publish_many([Outgoing(frame(f"s{i}".encode()), Route(q)) for i in range(4)])
        d = transport.receive([q], timeout=5)
        assert d is not None
        d.dead_letter("for the statistics")
        [stats] = transport.queue_stats([q])
        assert (stats.queue, stats.ready, stats.dead) == (q, 3, 1)
        assert (stats.in_flight, stats.scheduled, stats.oldest_ready_at, stats.published) == (
            None, None, None, None)
        assert transport.queue_stats([unique("unused")])[0].ready == 0
    finally:
        with raw_channel(amqp_url) as channel:
            channel.queue_delete(q)
            channel.queue_delete(f"{q}.dead")
        transport.close()


def test_a_retry_after_lost_confirms_publishes_again_and_says_so(
    amqp_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The sync twin of the asyncio test (``tests/aio/test_amqp_faults.py``): the
    connection loses the broker's answers after the message was written, so no confirm
    comes; the publish retry policy sends it again on a new connection. RabbitMQ has no
    publish markers: the queue holds it twice (at least once), both copies with the
    task's id, and the retry said so, naming the task."""
    port = int(amqp_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TcpProxy(port)
    queue = unique("lost-confirms")
    app = App(f"lost-{queue}", broker=f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
              broker_connection_timeout=1.0,
              broker_transport_options={"confirm_timeout": 0.5},
              task_default_queue=queue, set_as_current=False)
    add = app.signature("lost.add")
    direct = AMQPTransport(amqp_url)
    caplog.set_level("WARNING", logger="wiretask.transports.amqp")
    try:
        add.delay(0, 0)  # connected and declared
        direct.purge(queue)
        proxy.lose_answers()
        result = add.apply_async((1, 2), retry=True, retry_policy={
            "max_retries": 3, "interval_start": 0, "interval_step": 0, "timeout": 10})
        assert direct.size(queue) == 2
        with raw_channel(amqp_url) as channel:
            ids = [channel.basic_get(queue, no_ack=True).headers["id"] for _ in range(2)]
        assert ids == [result.id, result.id]
        again = [r.getMessage() for r in caplog.records if "published again" in r.getMessage()]
        assert len(again) == 1 and result.id in again[0] and "twice" in again[0], again
        # A later publish of other frames is not taken for a retry.
        add.delay(3, 4)
        assert len([r for r in caplog.records if "published again" in r.getMessage()]) == 1
    finally:
        app.close()
        direct.purge(queue)
        direct.close()
        proxy.close()
