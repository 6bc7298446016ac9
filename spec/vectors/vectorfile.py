"""The golden-vector file format: read and write vectors, with no wiretask import.

A vector is one JSON file::

    {
      "name": "json-zlib",
      "description": "...",
      "source": {"wiretask": "0.1.0"}
             or {"celery": "5.7.0", "kombu": "5.7.0", "call": "add.apply_async(...)"},
      "direction": "both" | "decode",
      "frame": {"body": <base64>, "content_type": ..., "content_encoding": ...,
                "headers": {...}, "properties": {...}},
      "message": {<every TaskMessage field>}
    }

An invalid vector has ``"error": {"class": "MalformedMessage", "field": "headers.id"}``
instead of ``"message"``, and may add ``"accept": [...]`` and ``"max_size": N``.

Values JSON cannot hold are tagged in ``message`` (never in ``frame``, which is exactly what
the wire carried): ``{"$bytes": "<base64>"}`` and ``{"$datetime": "<ISO 8601>"}``. The
``eta`` and ``expires`` fields are plain ISO strings. See README.md in this folder.

This module is shared by ``capture_celery.py`` (which must not depend on wiretask, so that the
meaning it records is Celery's, not ours), ``make_vectors.py`` and the test suite.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: The TaskMessage fields, in order; every message in a vector has exactly these keys.
MESSAGE_FIELDS = (
    "task", "id", "lang", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps", "extra_headers",
    "args", "kwargs", "callbacks", "errbacks", "chain", "chord", "extra_embed",
    "correlation_id", "reply_to", "priority", "delivery_mode", "expiration",
    "content_type", "content_encoding", "compression", "extra_properties",
)


def tag(value: Any) -> Any:
    """Python value -> JSON value, tagging bytes and datetimes."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dict):
        return {key: tag(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [tag(item) for item in value]
    return value


def untag(value: Any) -> Any:
    """JSON value -> Python value, the reverse of :func:`tag`."""
    if isinstance(value, dict):
        if value.keys() == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        if value.keys() == {"$datetime"}:
            return datetime.fromisoformat(value["$datetime"])
        return {key: untag(item) for key, item in value.items()}
    if isinstance(value, list):
        return [untag(item) for item in value]
    return value


def frame_json(
    body: bytes,
    content_type: str,
    content_encoding: str,
    headers: dict[str, Any],
    properties: dict[str, Any],
) -> dict[str, Any]:
    """The ``frame`` object of a vector."""
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content_type": content_type,
        "content_encoding": content_encoding,
        "headers": headers,
        "properties": properties,
    }


def frame_parts(frame: dict[str, Any]) -> dict[str, Any]:
    """The ``frame`` object of a vector as keyword arguments for ``wiretask.Frame``."""
    return {
        "body": base64.b64decode(frame["body"]),
        "content_type": frame["content_type"],
        "content_encoding": frame["content_encoding"],
        "headers": frame["headers"],
        "properties": frame["properties"],
    }


def write(vector: dict[str, Any], path: Path) -> None:
    """Write a vector file: UTF-8, two-space indent, keys in insertion order (header order
    is part of what a vector pins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vector, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_all(folder: Path = HERE) -> list[tuple[Path, dict[str, Any]]]:
    """Every vector file directly in ``folder`` (not its subfolders), sorted by name."""
    return [
        (path, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(folder.glob("*.json"))
    ]


# -- TaskMessage <-> vector "message" (these two import wiretask) ------------------------


def message_json(message: Any) -> dict[str, Any]:
    """A ``wiretask.protocol.TaskMessage`` as a vector ``message`` object."""
    from wiretask.protocol import Signature  # noqa: PLC0415 - keeps this module wiretask-free

    out: dict[str, Any] = {}
    for name in MESSAGE_FIELDS:
        value = getattr(message, name)
        if name in ("eta", "expires"):
            value = None if value is None else value.isoformat()
        elif isinstance(value, Signature):
            value = tag(value.to_dict())
        elif name in ("callbacks", "errbacks", "chain") and value is not None:
            value = [tag(sig.to_dict()) for sig in value]
        else:
            value = tag(value)
        out[name] = value
    return out


def message_from_json(data: dict[str, Any]) -> Any:
    """A vector ``message`` object as a ``wiretask.protocol.TaskMessage``."""
    from wiretask.protocol import Signature, TaskMessage  # noqa: PLC0415

    if set(data) != set(MESSAGE_FIELDS):
        raise ValueError(f"message fields differ: {sorted(set(data) ^ set(MESSAGE_FIELDS))}")
    fields: dict[str, Any] = {}
    for name in MESSAGE_FIELDS:
        value = data[name]
        if name in ("eta", "expires"):
            value = None if value is None else datetime.fromisoformat(value)
        elif name in ("callbacks", "errbacks", "chain"):
            value = None if value is None else tuple(
                Signature.from_dict(untag(item)) for item in value
            )
        elif name == "chord":
            value = None if value is None else Signature.from_dict(untag(value))
        elif name in ("args", "timelimit") or (name == "stamped_headers" and value is not None):
            value = tuple(untag(value))
        else:
            value = untag(value)
        fields[name] = value
    return TaskMessage(**fields)
