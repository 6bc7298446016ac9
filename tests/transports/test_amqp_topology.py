"""What the AMQP transport declares is exactly what Celery and Kombu declare.

Kombu's and Celery's own declaring code runs against a recording channel (no broker), and
its calls are compared with ``wiretask._amqp.topology``'s values: the same names, types,
flags and arguments, in the same order. A queue declared first by one side and then by
the other is therefore equivalent, and RabbitMQ does not refuse it (checked on a real
broker in ``test_amqp_transport.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu import Exchange, Queue
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport.native_delayed_delivery import (
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from wiretask._amqp import topology
from wiretask._amqp.options import parse
from wiretask.errors import ValidationError


class RecordingChannel:
    """Records the declaring calls Kombu's entities make, as topology values."""

    def __init__(self) -> None:
        self.declared: list[topology.Declaration] = []

    def prepare_queue_arguments(self, arguments: dict[str, Any], **kwargs: Any) -> Any:
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def exchange_declare(self, *, exchange: str, type: str, durable: bool, auto_delete: bool,
                         arguments: Any, nowait: bool, passive: bool) -> None:
        assert arguments is None and not passive
        self.declared.append(topology.Exchange(exchange, type, durable, auto_delete))

    def queue_declare(self, *, queue: str, passive: bool, durable: bool, exclusive: bool,
                      auto_delete: bool, arguments: Any, nowait: bool) -> None:
        assert not passive and not exclusive and not auto_delete
        self.declared.append(topology.Queue(queue, dict(arguments or {}), durable))

    def queue_bind(self, *, queue: str, exchange: str, routing_key: str, arguments: Any,
                   nowait: bool) -> None:
        assert not arguments
        self.declared.append(topology.Bind(queue, exchange, routing_key))

    def exchange_bind(self, *, destination: str, source: str, routing_key: str, nowait: bool,
                      arguments: Any) -> None:
        assert not arguments
        self.declared.append(topology.BindExchange(destination, source, routing_key))


class RecordingConnection:
    def __init__(self) -> None:
        self.recorder = RecordingChannel()

    def channel(self) -> RecordingChannel:
        return self.recorder


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_the_delay_ladder_is_kombus(queue_type: str) -> None:
    connection = RecordingConnection()
    declare_native_delayed_delivery_exchanges_and_queues(connection, queue_type)

    assert topology.ladder(queue_type) == connection.recorder.declared
    # 28 levels of exchange + queue + binding, 27 exchange bindings, the delivery exchange.
    assert len(topology.ladder(queue_type)) == 28 * 3 + 27 + 2


def celery_declares(app: Celery, queue: str) -> list[topology.Declaration]:
    channel = RecordingChannel()
    app.amqp.queues[queue].bind(channel).declare()
    return channel.declared


CONFIGS = [
    pytest.param({}, {}, id="defaults"),
    pytest.param({"task_queue_max_priority": 10}, {"max_priority": 10}, id="max-priority"),
    pytest.param({"task_default_queue_type": "quorum", "task_create_missing_queue_type": "quorum"},
                 {"queue_type": "quorum"}, id="quorum"),
    pytest.param({"task_default_exchange_type": "topic",
                  "task_create_missing_queue_exchange_type": "topic"},
                 {"exchange_type": "topic"}, id="topic-exchanges"),
]


@pytest.mark.parametrize(("celery_conf", "options"), CONFIGS)
@pytest.mark.parametrize("queue", ["celery", "other.queue"])
def test_a_queue_is_declared_as_celery_declares_it(
    celery_conf: dict[str, Any], options: dict[str, Any], queue: str
) -> None:
    app = Celery("topology", broker="amqp://", set_as_current=False)
    app.conf.update(celery_conf)
    config = parse("amqp://", options)

    ours = topology.queue_declaration(queue, config.arguments_of(queue), config.exchange_type)

    assert ours == celery_declares(app, queue)


def test_task_queues_arguments_are_declared_as_celery_declares_them() -> None:
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": 5}
    app = Celery("topology", broker="amqp://", set_as_current=False)
    app.conf.task_queues = [Queue("special", Exchange("special"), "special",
                                  queue_arguments=arguments)]
    config = parse("amqp://", {"queue_arguments": {"special": arguments}})

    ours = topology.queue_declaration("special", config.arguments_of("special"), "direct")

    assert ours == celery_declares(app, "special")


@pytest.mark.parametrize("seconds", [1, 5, 2**27, 2**28 - 1])
def test_the_delay_routing_key_is_kombus(seconds: int) -> None:
    assert topology.delay_routing_key(seconds, "celery") == calculate_routing_key(seconds, "celery")


def test_a_delay_is_rounded_up_to_whole_seconds_and_bounded() -> None:
    assert topology.delay_seconds(0.001) == 1
    assert topology.delay_seconds(2.0) == 2
    assert topology.delay_seconds(2.01) == 3
    assert topology.delay_seconds(0) == 0
    assert topology.delay_seconds(-5) == 0
    with pytest.raises(ValidationError, match=r"8\.5 years") as raised:
        topology.delay_seconds(2**28)
    assert raised.value.field == "not_before"


def test_the_ladder_binding_matches_only_its_own_queue() -> None:
    binding = topology.delayed_destination("tasks.high")
    assert binding.exchange == topology.DELIVERY_EXCHANGE
    assert binding.routing_key == "*." * 28 + "tasks.high"
    for wildcard in ("a.*", "#", "x.#.y"):
        with pytest.raises(ValidationError, match="wildcard"):
            topology.delayed_destination(wildcard)


def test_dead_letters_have_their_own_exchange_and_queue() -> None:
    assert topology.dead_letter_place("celery") == [
        topology.Exchange("wiretask.dead", "direct"),
        topology.Queue("celery.dead", {}),
        topology.Bind("celery.dead", "wiretask.dead", "celery"),
    ]
