"""Celery's events on the wire: what an event is, which exchange carries it, and the
frame it travels in.

Pure: values and functions from values to ``Frame``s and back; the caller passes the
clock value, the time and the UTC offset. ``spec/events.md`` is the normative text.

An **event** is a flat mapping, exactly as Celery's ``celery.events.event.Event`` builds
it: the sender's ``hostname``, ``utcoffset`` (hours, Celery's sign: ``time.timezone //
3600``, so west of UTC is positive), ``pid``, ``clock`` (the sender's Lamport clock),
then the event's own fields, then ``timestamp`` (unix seconds) and ``type``
(``task-succeeded``, ``worker-heartbeat``, ...).

It is published on the **event exchange** (Celery's ``event_exchange``, ``celeryev``):
``topic`` on AMQP, ``fanout`` on Redis (Celery's ``get_exchange``: Redis pub/sub, with
Kombu's ``fanout_patterns`` putting the routing key in the channel name), with the
routing key ``type`` with ``-`` turned into ``.`` (``task.succeeded``), in a frame::

    body       the event, serialized with event_serializer (JSON by default, written
               as Kombu's json.dumps writes it)
    headers    {"hostname": <the sender's hostname>}
    properties {"delivery_mode": 1, "priority": 0}

A body may also be a list of events of one group (Celery's buffered ``<group>.multi``
messages, routing key ``task.multi``); ``encode_event`` writes and ``decode_events``
reads both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from wiretask.codecs import Registry
from wiretask.errors import DecodeError, EncodeError, ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Exchange

__all__ = [
    "DEFAULT_EXCHANGE",
    "DEFAULT_QUEUE_PREFIX",
    "TASK_EVENTS",
    "WORKER_EVENTS",
    "decode_events",
    "encode_event",
    "event",
    "event_exchange",
    "group_of",
    "multi_routing_key",
    "receiver_queue",
    "routing_key",
    "utcoffset_hours",
]

#: Celery's ``event_exchange`` default.
DEFAULT_EXCHANGE: Final = "celeryev"
#: Celery's ``event_queue_prefix`` default: a receiver's queue is ``<prefix>.<uuid>``.
DEFAULT_QUEUE_PREFIX: Final = "celeryev"
#: The task events a worker sends (``task-sent`` is the client's).
TASK_EVENTS: Final = (
    "task-received", "task-started", "task-succeeded", "task-failed", "task-retried",
    "task-revoked", "task-rejected",
)
#: The worker events.
WORKER_EVENTS: Final = ("worker-online", "worker-heartbeat", "worker-offline")

_JSON: Final = "application/json"
#: Kombu's ``TRANSIENT_DELIVERY_MODE``: the dispatcher's ``delivery_mode``.
_DELIVERY_MODE: Final = 1


def utcoffset_hours(timezone: int, altzone: int, isdst: bool) -> int:
    """Celery's ``utcoffset()``: ``time.altzone // 3600`` in summer time, else
    ``time.timezone // 3600`` (seconds *west* of UTC, floored to hours)."""
    return (altzone if isdst else timezone) // 3600


def group_of(type_: str) -> str:
    """The group of an event type (``task-sent`` -> ``task``), as Celery's ``group_from``."""
    return type_.split("-", 1)[0]


def routing_key(type_: str) -> str:
    """The routing key an event is published with (``task-sent`` -> ``task.sent``)."""
    return type_.replace("-", ".")


def multi_routing_key(group: str) -> str:
    """The routing key of a batch of events of ``group`` (``task.multi``)."""
    return f"{group}.multi"


def event(
    type_: str, fields: Mapping[str, Any], *, hostname: str, utcoffset: int, pid: int,
    clock: int | None, timestamp: float,
) -> dict[str, Any]:
    """An event, its keys in Celery's order (see the module docstring).

    Raises:
        ValidationError: an empty type or a type without a group (``task-...``).
    """
    if not isinstance(type_, str) or "-" not in type_ or not type_.split("-", 1)[0]:
        raise ValidationError("type", f"must be '<group>-<name>', got {type_!r}",
                              value=type_)
    body: dict[str, Any] = {"hostname": hostname, "utcoffset": utcoffset, "pid": pid,
                            "clock": clock}
    body.update(fields)
    if "timestamp" not in body:
        body["timestamp"] = timestamp
    body["type"] = type_
    return body


def event_exchange(broker_scheme: str, name: str = DEFAULT_EXCHANGE) -> Exchange:
    """The event exchange for a broker (``broker_scheme``: the URL's scheme): fanout on
    Redis (Celery's ``get_exchange``), topic elsewhere; durable as Kombu declares it."""
    redis = broker_scheme.lower().split("+", 1)[0] in {"redis", "rediss", "sentinel"}
    return Exchange(name=name, type="fanout" if redis else "topic", durable=True)


def receiver_queue(node_id: str, *, prefix: str = DEFAULT_QUEUE_PREFIX, binding_key: str = "#",
                   expires: float | None = None, message_ttl: float | None = None,
                   exclusive: bool = False) -> BoundQueue:
    """A receiver's queue, ``<prefix>.<node_id>``, bound with ``binding_key`` (``#``: every
    event), as Celery's ``EventReceiver`` names and binds it (not exclusive by default:
    Celery's ``event_queue_exclusive``)."""
    return BoundQueue(name=f"{prefix}.{node_id}", binding_key=binding_key, expires=expires,
                      message_ttl=message_ttl, exclusive=exclusive)


def encode_event(body: Mapping[str, Any] | Sequence[Mapping[str, Any]], registry: Registry,
                 serializer: str = "json") -> Frame:
    """The frame of one event, or of a batch of events of one sender (a list body,
    Celery's ``<group>.multi`` message; see the module docstring).

    Raises:
        EncodeError: a field the serializer cannot write.
        UnknownCodec: an unknown serializer.
    """
    if not isinstance(body, Mapping):
        batch = [dict(one) for one in body]
        hostname = batch[0].get("hostname") if batch else None
        return _frame(batch, hostname, registry, serializer)
    return _frame(body, body.get("hostname"), registry, serializer)


def _frame(body: Any, hostname: object, registry: Registry, serializer: str) -> Frame:
    codec = registry.serializer(serializer)
    if codec.content_type == _JSON:
        try:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError("event", f"json: {exc}", content_type=_JSON) from exc
        content_type, content_encoding = _JSON, "utf-8"
    else:
        encoded = registry.dumps(dict(body) if isinstance(body, Mapping) else body,
                                 serializer, field="event")
        data, content_type = encoded.data, encoded.content_type
        content_encoding = encoded.content_encoding
    return Frame.adopt(data, content_type, content_encoding,
                       {"hostname": hostname} if isinstance(hostname, str) else {},
                       {"delivery_mode": _DELIVERY_MODE, "priority": 0})


def decode_events(frame: Frame, registry: Registry) -> list[dict[str, Any]]:
    """The events in ``frame`` (one, or a batch), read under the registry's accept policy.

    Raises:
        DecodeError: a body that is not an event or a list of events (each a mapping
            with a string ``type``).
        ContentDisallowed: a content type the registry does not accept.
    """
    if not isinstance(frame, Frame):
        raise ValidationError("frame", f"must be a Frame, got {type(frame).__name__}")
    compression = frame.headers.get("compression")
    body = registry.decode(frame.body, frame.content_type, frame.content_encoding,
                           compression if isinstance(compression, str) else None)
    items = body if isinstance(body, list) else [body]
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise DecodeError("event", "an event must be a mapping with a string 'type', "
                                       f"got {item!r:.200}")
    return items
