"""Helpers of the beat tests: reading what a beat sent."""

from __future__ import annotations

from typing import Any

from wiretask.app import App
from wiretask.protocol.celery import decode
from wiretask.protocol.envelope import TaskMessage
from wiretask.transports.base import Inspection


def sent(app: App, queue: str = "celery") -> list[TaskMessage]:
    """The messages waiting in ``queue`` of the app's broker, decoded, oldest first."""
    transport: Any = app.transport
    assert isinstance(transport, Inspection)
    return [decode(item.frame, app.registry) for item in transport.peek(queue, limit=1000)]
