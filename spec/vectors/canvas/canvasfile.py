"""Canvas vectors: what a canvas call leaves on Redis, with no wiretask import.

A canvas vector is one JSON file per call (``chain(...)``, ``group(...)``, ``chord(...)``,
...)::

    {
      "name": "chord",
      "call": "chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()",
      "source": {"celery": "5.7.0", "kombu": "5.7.0"},
      "messages": [{"queue": "celery", "headers": {...}, "properties": {...},
                    "content_type": "application/json", "body": [args, kwargs, embed]}],
      "keys": [{"key": "celery-taskset-meta-<id 3>.s", "value": 2, "expires": true}]
    }

``messages`` are the task messages in the order they were published (Kombu's Redis
layout: ``LPUSH`` onto the queue's list), with the body decoded from JSON; ``keys`` are
the result-backend keys the call wrote before the messages were consumed
(``celery-taskset-meta-*``: the chord size ``.s``, a saved header), each with its
decoded value and whether it expires.

Ids differ from run to run, so a snapshot is **normalized**: every UUID becomes
``<id N>``, numbered by first appearance (messages in publish order, headers before
properties before the body, then keys by their normalized name), and ``origin`` becomes
``<origin>``. Two calls that produce the same messages up to their ids give equal
normalized snapshots. ``capture.py`` writes the vectors from a real Celery; the test
suite compares wiretask's snapshot of the same call with them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: Protocol 2 headers, in Celery's order (the order normalization walks them in).
HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)
#: Message properties that belong to the task message (not to Kombu's bookkeeping).
PROPERTIES = ("correlation_id", "reply_to", "delivery_mode", "priority", "expiration")
#: Result-backend keys a canvas call may write before its messages run.
KEY_PATTERNS = ("celery-taskset-meta-*", "chord-unlock-*")

#: The calls, evaluated with ``add`` and ``tsum`` (tasks named ``canvas.add`` and
#: ``canvas.tsum``), ``chain``, ``group``, ``chord`` and the ``app`` in scope: name -> call.
CASES: dict[str, str] = {
    "chain": "chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()",
    "chain-pipe": "(add.s(1, 1) | add.si(2, 2)).apply_async()",
    "chain-one": "chain([add.s(1, 1)]).apply_async()",
    "chain-options": "(add.s(1, 1) | add.s(2)).apply_async(priority=4, "
                     "headers={'x-trace': 'abc'})",
    "group": "group(add.s(1, 1), add.s(2, 2)).apply_async()",
    "group-options": "group([add.s(1, 1), add.s(2, 2)], queue='celery').apply_async(priority=3)",
    "group-partial": "group(add.s(1), add.s(2)).apply_async((10,))",
    "chord": "chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()",
    "chord-call": "chord([add.s(1, 1), add.s(2, 2)])(tsum.s())",
    "chord-link": "chord([add.s(1, 1)], tsum.s()).apply_async(link=add.s(10))",
    "chord-options": "chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async(priority=4, "
                     "headers={'x-trace': 'abc'})",
    "chord-group-body": "chord([add.s(1, 1)], group(tsum.s(), tsum.s())).apply_async()",
    "chord-nested-group": "chord([chain(add.s(1, 1), group(add.s(1), add.s(2)))], "
                          "tsum.s()).apply_async()",
    "chord-chain-body": "chord([add.s(1, 1), add.s(2, 2)], tsum.s() | add.s(5)).apply_async()",
    "group-then-task": "(group(add.s(1, 1), add.s(2, 2)) | tsum.s()).apply_async()",
    "chain-ending-in-group": "(add.s(1, 1) | group(add.s(1), add.s(2))).apply_async()",
    "chain-group-inside": "chain(add.s(1, 1), group(add.s(1), add.s(2)), "
                          "tsum.s()).apply_async()",
    "chain-unfolded": "chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s(), "
                      "app=app).apply_async()",
    "chunks": "add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply_async()",
    "map": "add.map([1, 2]).apply_async()",
    "starmap": "add.starmap([(1, 1), (2, 2)]).apply_async()",
}

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ORIGIN = re.compile(r"^gen\d+@.*$")


def snapshot(client: Any, queues: Iterable[str] = ("celery",)) -> dict[str, Any]:
    """What is on Redis now: the messages of ``queues`` in publish order and the
    result-backend keys (``client`` is a ``redis.Redis``)."""
    messages: list[dict[str, Any]] = []
    for queue in queues:
        for raw in reversed(client.lrange(queue, 0, -1)):
            messages.append(_message(queue, json.loads(raw)))
    keys: list[dict[str, Any]] = []
    for pattern in KEY_PATTERNS:
        for name in client.scan_iter(match=pattern):
            keys.append(_key(client, name.decode()))
    return {"messages": messages, "keys": keys}


def _message(queue: str, envelope: dict[str, Any]) -> dict[str, Any]:
    headers = envelope.get("headers") or {}
    properties = envelope.get("properties") or {}
    body = base64.b64decode(envelope["body"]) if properties.get(
        "body_encoding") == "base64" else envelope["body"]
    props = {name: properties[name] for name in PROPERTIES if name in properties}
    # An absent priority reads as 0 on every broker; Celery writes the 0, wiretask
    # leaves it out (spec/PROTOCOL.md, message properties).
    props.setdefault("priority", 0)
    return {
        "queue": queue,
        "headers": {name: headers[name] for name in HEADERS if name in headers},
        "extra_headers": {k: v for k, v in headers.items() if k not in HEADERS},
        "properties": props,
        "content_type": envelope.get("content-type"),
        "body": json.loads(body),
    }


def _key(client: Any, name: str) -> dict[str, Any]:
    kind = client.type(name).decode()
    value: Any
    if kind == "string":
        raw = client.get(name)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.decode("utf-8", "replace")
    elif kind == "list":
        value = [json.loads(item) for item in client.lrange(name, 0, -1)]
    elif kind == "zset":
        value = [json.loads(item) for item in client.zrange(name, 0, -1)]
    else:
        value = f"<{kind}>"
    return {"key": name, "value": value, "expires": client.ttl(name) > 0}


def normalize(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` with its ids numbered by first appearance and ``origin`` blanked."""
    ids: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        return ids.setdefault(match.group(0), f"<id {len(ids) + 1}>")

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return "<origin>" if _ORIGIN.match(value) else _UUID.sub(number, value)
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        return value

    messages = [walk(message) for message in snap["messages"]]
    keys = sorted((walk(key) for key in snap["keys"]), key=lambda k: k["key"])
    return {"messages": messages, "keys": keys}


def write(vector: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vector, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_all(folder: Path = HERE) -> list[dict[str, Any]]:
    """Every canvas vector in ``folder``, sorted by file name."""
    return [json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(folder.glob("*.json"))]
