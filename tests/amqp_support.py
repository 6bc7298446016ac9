"""Helpers of the AMQP tests: frames shaped like Celery's, a raw py-amqp channel, unique
queue names."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
from amqp.channel import Channel

from wiretask._amqp.options import parse
from wiretask.protocol.frame import Frame


def celery_like_frame(
    *, body: bytes = b'[[2, 2], {}, {"callbacks": null}]',
    properties: dict[str, Any] | None = None, **headers: Any,
) -> Frame:
    """A frame with Celery's protocol-2 headers and properties (values as Celery writes
    them: ISO strings for times, ``[None, None]`` time limits, an empty stamps dict)."""
    base: dict[str, Any] = {
        "lang": "py", "task": "proj.add", "id": "0f1e2d3c-aaaa-4bbb-8ccc-111122223333",
        "shadow": None, "eta": "2026-01-02T03:04:05.678901+00:00", "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": "0f1e2d3c-aaaa-4bbb-8ccc-111122223333", "parent_id": None,
        "argsrepr": "(2, 2)", "kwargsrepr": "{}", "origin": "gen1@host",
        "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {}, "big": 2**40, "ratio": 0.5,
    }
    base.update(headers)
    return Frame(
        body=body, content_type="application/json", content_encoding="utf-8", headers=base,
        properties={"correlation_id": base["id"], "reply_to": "9a8b7c6d", "delivery_mode": 2,
                    "priority": 0, "expiration": "600000"} if properties is None else properties,
    )


@contextlib.contextmanager
def raw_channel(url: str) -> Iterator[Channel]:
    """A plain py-amqp channel on ``url`` (Kombu's URL rules), for setting the broker up
    behind the transport's back."""
    options = parse(url, {})
    connection = amqp.Connection(**{**options.connection_kwargs(), "heartbeat": 0})
    connection.connect()
    try:
        yield connection.channel()
    finally:
        connection.close()


def unique(label: str) -> str:
    """A queue name no other test uses."""
    return f"wt-test-{label}-{uuid.uuid4().hex[:8]}"
