"""The frame: what a transport carries.

A ``Frame`` is the bytes-level form of one message: the (maybe compressed) body bytes,
the two content labels that describe the *uncompressed* body, the application headers
and the remaining message properties. It is what ``protocol.celery.encode`` produces
and ``protocol.celery.decode`` reads, and it is all a transport ever sees: transports
never look inside the body.

The split follows AMQP 0-9-1 (basic properties vs application headers), which is also
how Kombu lays out its Redis list entries (``content-type`` / ``content-encoding`` at the
top level, ``headers``, ``properties``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

__all__ = ["Frame", "Outgoing", "Route"]


def _freeze_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return {} if value is None else dict(value)


@attrs.frozen(kw_only=True)
class Frame:
    """One message on the wire.

    ``headers`` are the application headers (Celery's protocol-2 headers plus anything
    custom, ``compression`` included). ``properties`` are the message properties other
    than the content labels: ``correlation_id``, ``reply_to``, ``priority``,
    ``delivery_mode``, ``expiration`` and any others, with AMQP's names.

    ``headers_json`` is ``json.dumps(headers)`` (the standard library's default
    separators, ASCII) when the encoder wrote it together with the headers
    (``protocol.celery.encode`` does, from a template per task and options), else
    ``None``: a cache for transports whose envelope is that JSON text (Kombu's Redis list
    entries), never compared and never carried over by ``attrs.evolve``.
    """

    body: bytes
    content_type: str
    content_encoding: str
    headers: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)
    properties: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)
    headers_json: str | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @classmethod
    def adopt(
        cls,
        body: bytes,
        content_type: str,
        content_encoding: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
        headers_json: str | None = None,
    ) -> Frame:
        """A frame that takes ``headers`` and ``properties`` as they are, without the
        defensive copies the constructor makes: for an encoder that built both dicts for
        this frame alone and keeps no reference to them (and, if it wrote it,
        ``headers_json``: exactly ``json.dumps(headers)``)."""
        frame = object.__new__(cls)
        set_field = object.__setattr__
        set_field(frame, "body", body)
        set_field(frame, "content_type", content_type)
        set_field(frame, "content_encoding", content_encoding)
        set_field(frame, "headers", headers)
        set_field(frame, "properties", properties)
        set_field(frame, "headers_json", headers_json)
        return frame

    @property
    def priority(self) -> int | None:
        value = self.properties.get("priority")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def task_id(self) -> str | None:
        """The Celery task id if the headers carry one (protocol 2), for logs and errors."""
        value = self.headers.get("id")
        return value if isinstance(value, str) else self.properties.get("correlation_id")


@attrs.frozen
class Route:
    """Where a message goes. ``exchange=""`` is the default exchange: the message is
    delivered to the queue named by ``routing_key`` (which defaults to ``queue``), as
    Celery does for direct queues."""

    queue: str = attrs.field(validator=attrs.validators.instance_of(str))
    exchange: str = ""
    routing_key: str | None = None

    @property
    def key(self) -> str:
        return self.queue if self.routing_key is None else self.routing_key


@attrs.frozen
class Outgoing:
    """One entry of a batch publish: a frame, its route, and an optional time before
    which it must not be delivered (aware datetime)."""

    frame: Frame
    route: Route
    not_before: datetime | None = None
