"""Frames shaped like Celery's, for the AMQP tests that need one without a broker."""

from __future__ import annotations

from typing import Any

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
