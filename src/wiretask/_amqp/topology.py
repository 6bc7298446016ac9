"""What is declared on the broker, as values: Celery's queues, its delay ladder, and
wiretask's dead-letter places. Pure: ``link``/the transport send these.

**A queue** is declared exactly as Celery declares it (``kombu.Queue.declare``), so that
whichever side declares first, the other's declaration is equivalent and does not fail
with ``PRECONDITION_FAILED``: a durable exchange named like the queue (type
``exchange_type``, Celery's ``task_default_exchange_type``, default ``direct``), the
durable queue with Celery's arguments (``Options.arguments_of``), and a binding with the
queue's name as the routing key.

**The delay ladder** is Celery 5.5+'s native delayed delivery
(``kombu.transport.native_delayed_delivery``), declared with the same names, types and
arguments: for each level L = 27..0 a topic exchange and a queue ``celery_delayed_L``
(``x-message-ttl`` 2^L s, dead-lettering to level L-1, the last level to the topic
exchange ``celery_delayed_delivery``), the queue bound to its exchange by a 1 bit at
position L, and each level's exchange bound to the next by a 0 bit. A message published
to ``celery_delayed_27`` with the routing key ``<28 binary digits of the delay>.<key>``
waits in the levels of its 1 bits and leaves ``celery_delayed_delivery`` after the sum of
them, i.e. the delay in whole seconds.

wiretask binds each destination queue to ``celery_delayed_delivery`` with the key
``*.*.(28 times)...<queue>``: exactly the 28 digits followed by the queue's name, so no
other queue's delayed messages match (Celery binds ``#.<key>`` through the queue's own
exchange, and only for topic and fanout exchanges; the extra binding changes nothing for
Celery, and lets a direct-exchange queue, Celery's default, receive ladder messages).

**Dead letters** go to the durable direct exchange ``wiretask.dead``, routed by the source
queue's name into the durable classic queue ``<queue>.dead``. The source queue's own
arguments are never touched (an ``x-dead-letter-exchange`` added to them would make
Celery's next declaration of that queue fail).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from wiretask.errors import ValidationError

__all__ = [
    "DEAD_EXCHANGE",
    "DELIVERY_EXCHANGE",
    "LADDER_PREFIX",
    "LEVELS",
    "MAX_DELAY",
    "TOP_LEVEL",
    "Bind",
    "BindExchange",
    "Declaration",
    "Exchange",
    "Queue",
    "dead_letter_place",
    "delay_routing_key",
    "delay_seconds",
    "delayed_destination",
    "ladder",
    "level_name",
    "queue_declaration",
]

#: Levels of the ladder (bits of the delay), as Kombu's ``MAX_NUMBER_OF_BITS_TO_USE``.
LEVELS = 28
#: The longest delay the ladder holds: 2^28 - 1 s (about 8.5 years).
MAX_DELAY = 2**LEVELS - 1
DELIVERY_EXCHANGE = "celery_delayed_delivery"
DEAD_EXCHANGE = "wiretask.dead"


LADDER_PREFIX = "celery_delayed_"


def level_name(level: int) -> str:
    return f"{LADDER_PREFIX}{level}"


#: Where a delayed message is published.
TOP_LEVEL = level_name(LEVELS - 1)


@attrs.frozen
class Exchange:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False


@attrs.frozen
class Queue:
    name: str
    arguments: dict[str, Any] = attrs.field(factory=dict, hash=False)
    durable: bool = True
    #: Deleted with its last consumer (``rpc://``'s reply queue without ``x-expires``).
    auto_delete: bool = False


@attrs.frozen
class Bind:
    """``queue.bind``: ``queue`` receives what ``exchange`` routes with ``routing_key``."""

    queue: str
    exchange: str
    routing_key: str


@attrs.frozen
class BindExchange:
    """``exchange.bind``: ``destination`` receives what ``source`` routes with the key."""

    destination: str
    source: str
    routing_key: str


Declaration = Exchange | Queue | Bind | BindExchange


def queue_declaration(
    name: str, arguments: dict[str, Any], exchange_type: str
) -> list[Declaration]:
    """Celery's declaration of a queue: its exchange, itself, its binding."""
    return [Exchange(name, exchange_type), Queue(name, arguments), Bind(name, name, name)]


def ladder(queue_type: str) -> list[Declaration]:
    """Celery's delay ladder with queues of ``queue_type`` (Celery's
    ``broker_native_delayed_delivery_queue_type``), in Kombu's order."""
    declarations: list[Declaration] = []
    key = "1.#"
    for level in range(LEVELS - 1, -1, -1):
        name = level_name(level)
        arguments: dict[str, Any] = {
            "x-queue-type": queue_type,
            "x-overflow": "reject-publish",
            "x-message-ttl": 2**level * 1000,
            "x-dead-letter-exchange": level_name(level - 1) if level else DELIVERY_EXCHANGE,
        }
        if queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
        declarations += [Exchange(name, "topic"), Queue(name, arguments), Bind(name, name, key)]
        key = "*." + key
    key = "0.#"
    for level in range(LEVELS - 1, 0, -1):
        declarations.append(BindExchange(level_name(level - 1), level_name(level), key))
        key = "*." + key
    declarations += [Exchange(DELIVERY_EXCHANGE, "topic"),
                     BindExchange(DELIVERY_EXCHANGE, level_name(0), key)]
    return declarations


def delayed_destination(queue: str) -> Bind:
    """The binding that brings ladder messages for ``queue`` into it.

    Raises:
        ValidationError: a word of the queue's name is ``*`` or ``#`` (a topic wildcard:
            the binding would catch other queues' messages).
    """
    if {"*", "#"} & set(queue.split(".")):
        raise ValidationError(
            "queue", f"{queue!r} has a '*' or '#' word, which the delay ladder's topic "
            "binding would read as a wildcard", value=queue,
        )
    return Bind(queue, DELIVERY_EXCHANGE, "*." * LEVELS + queue)


def delay_seconds(seconds: float) -> int:
    """Whole seconds the ladder must hold a message due in ``seconds`` (rounded up, so
    it is never delivered early; 0 when it is due already).

    Raises:
        ValidationError: more than ``MAX_DELAY`` seconds ahead.
    """
    if not seconds > 0:
        return 0
    whole = math.ceil(seconds)
    if whole > MAX_DELAY:
        raise ValidationError(
            "not_before", f"{seconds:.0f} s ahead is beyond the delay ladder's "
            f"{MAX_DELAY} s (about 8.5 years)", value=seconds,
        )
    return whole


def delay_routing_key(seconds: int, destination: str) -> str:
    """Kombu's ``calculate_routing_key``: the 28 binary digits of ``seconds`` separated
    by dots, then ``.<destination>``."""
    return ".".join(f"{seconds:0{LEVELS}b}") + "." + destination


def dead_letter_place(queue: str) -> list[Declaration]:
    """The dead-letter exchange and ``<queue>.dead``, bound by ``queue``'s name."""
    return [Exchange(DEAD_EXCHANGE, "direct"), Queue(f"{queue}.dead"),
            Bind(f"{queue}.dead", DEAD_EXCHANGE, queue)]
