"""Capture golden vectors from a real Celery: ``python spec/vectors/capture_celery.py``.

Each vector is one ``apply_async`` (or canvas ``apply_async``) of a Celery app on Kombu's
in-memory transport (``memory://``). The raw message is read back off the memory channel
exactly as Kombu stored it, and written as a vector's ``frame``:

* ``body`` is the stored body (base64 in the channel, as on Redis), i.e. the serialised and
  maybe compressed bytes that Celery produced;
* ``headers`` and ``content_type``/``content_encoding`` are as stored;
* ``properties`` are as stored **minus** the three keys the virtual transport adds for its own
  bookkeeping (``delivery_info``, ``delivery_tag``, ``body_encoding``): they describe the
  transport envelope, not the task message, and a wiretask transport adds and strips them
  itself.

The vector's ``message`` (its meaning) is worked out here **with Celery's and Kombu's code
only** (``kombu.serialization.loads``, ``kombu.compression.decompress``,
``celery.utils.time.maybe_iso8601``), never with wiretask's decoder, so that the test suite
compares wiretask against Celery rather than against itself.

Task ids come from a seeded generator so that re-running gives the same ids; ``origin``,
``reply_to`` and the times derived from "now" differ from run to run and machine to machine.
Requires celery and kombu (5.7.0 was used), msgpack, brotli and backports.zstd.
"""

from __future__ import annotations

import base64
import random
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import celery
import kombu
from celery import Celery, chain, chord, group
from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.compression import decompress
from kombu.serialization import loads
from kombu.transport import memory
from kombu.utils.uuid import uuid as kombu_uuid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectorfile  # a sibling module, found through the path set above

PROTOCOL_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)
PROPERTY_FIELDS = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration")
TRANSPORT_PROPERTIES = ("delivery_info", "delivery_tag", "body_encoding")
ACCEPT = ["application/json", "application/x-msgpack"]


def _seeded_uuid4(rng: random.Random) -> Callable[[], uuid.UUID]:
    def make() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    return make


def make_app(protocol: int = 2) -> Celery:
    app = Celery("capture", broker="memory://", backend="cache+memory://")
    app.conf.update(accept_content=["json", "msgpack"], task_protocol=protocol)

    @app.task(name="capture.add", shared=False)
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name="capture.cb", shared=False)
    def cb(*args: Any, **kwargs: Any) -> Any:
        return args

    @app.task(name="capture.echo", shared=False)
    def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    return app


def drain() -> list[dict[str, Any]]:
    """Every message on the memory transport's queues, oldest first."""
    out: list[dict[str, Any]] = []
    for queue in memory.Channel.queues.values():
        while not queue.empty():
            out.append(queue.get())
    return out


def _iso(value: Any) -> str | None:
    # How celery.worker.request.Request reads eta/expires: maybe_iso8601, naive = UTC.
    parsed = maybe_iso8601(value)
    return None if parsed is None else maybe_make_aware(parsed).isoformat()


def meaning(raw: dict[str, Any]) -> dict[str, Any]:
    """The message a Celery 5.7 worker reads from ``raw``, as a vector ``message``."""
    properties = dict(raw["properties"])
    body = base64.b64decode(raw["body"])
    headers = raw["headers"]
    if headers.get("compression"):
        body = decompress(body, headers["compression"])
    payload = loads(body, raw["content-type"], raw["content-encoding"], accept=ACCEPT)
    if "task" in headers:
        args, kwargs, embed = payload
        meta = headers
        extra_headers = {
            k: v for k, v in headers.items() if k not in PROTOCOL_HEADERS and k != "compression"
        }
    else:  # protocol 1: celery.worker.strategy.proto1_to_proto2
        args, kwargs = payload.get("args", ()), payload.get("kwargs", {})
        embed = {k: payload.get(k) for k in ("callbacks", "errbacks", "chord")}
        meta = dict(payload)
        if "taskset" in meta:
            meta["group"] = meta["taskset"]
        extra_headers = {k: v for k, v in headers.items() if k != "compression"}
    embed = embed or {}
    task_id = meta["id"]
    correlation_id = properties.get("correlation_id")
    return {
        "task": meta["task"],
        "id": task_id,
        "lang": meta.get("lang") or "py",
        "shadow": meta.get("shadow"),
        "eta": _iso(meta.get("eta")),
        "expires": _iso(meta.get("expires")),
        "group": meta.get("group"),
        "group_index": meta.get("group_index"),
        "retries": meta.get("retries") or 0,
        "timelimit": list(meta.get("timelimit") or (None, None)),
        "root_id": meta.get("root_id"),
        "parent_id": meta.get("parent_id"),
        "argsrepr": meta.get("argsrepr"),
        "kwargsrepr": meta.get("kwargsrepr"),
        "origin": meta.get("origin"),
        "ignore_result": bool(meta.get("ignore_result", False)),
        "replaced_task_nesting": meta.get("replaced_task_nesting") or 0,
        "stamped_headers": meta.get("stamped_headers"),
        "stamps": meta.get("stamps") or {},
        "extra_headers": extra_headers,
        "args": vectorfile.tag(list(args)),
        "kwargs": vectorfile.tag(kwargs),
        "callbacks": vectorfile.tag(embed.get("callbacks")),
        "errbacks": vectorfile.tag(embed.get("errbacks")),
        "chain": vectorfile.tag(embed.get("chain")),
        "chord": vectorfile.tag(embed.get("chord")),
        "extra_embed": {},
        "correlation_id": None if correlation_id in (None, task_id) else correlation_id,
        "reply_to": properties.get("reply_to") or None,
        "priority": properties.get("priority"),
        "delivery_mode": properties.get("delivery_mode", 2),
        "expiration": properties.get("expiration"),
        "content_type": raw["content-type"],
        "content_encoding": raw["content-encoding"],
        "compression": headers.get("compression"),
        "extra_properties": {
            k: v for k, v in properties.items()
            if k not in PROPERTY_FIELDS and k not in TRANSPORT_PROPERTIES
        },
    }


def vector(name: str, description: str, call: str, raw: dict[str, Any]) -> dict[str, Any]:
    properties = {k: v for k, v in raw["properties"].items() if k not in TRANSPORT_PROPERTIES}
    return {
        "name": name,
        "description": description,
        "source": {"celery": celery.__version__, "kombu": kombu.__version__, "call": call},
        "direction": "both" if "task" in raw["headers"] else "decode",
        "frame": vectorfile.frame_json(
            base64.b64decode(raw["body"]),
            raw["content-type"],
            raw["content-encoding"],
            raw["headers"],
            properties,
        ),
        "message": meaning(raw),
    }


def cases(app: Celery) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """(name, description, call as text, the call) for every protocol-2 capture."""
    add, cb, echo = app.tasks["capture.add"], app.tasks["capture.cb"], app.tasks["capture.echo"]
    ist = timezone(timedelta(hours=5, minutes=30))
    out: list[tuple[str, str, str, Callable[[], Any]]] = [
        ("celery-minimal", "The simplest call: JSON, no options.",
         "add.apply_async((2, 3))", lambda: add.apply_async((2, 3))),
        ("celery-reference",
         "countdown, numeric expires (sets the expiration property), link, link_error with an "
         "immutable signature, a custom header, priority and time limits.",
         "add.apply_async((2, 2), countdown=10, expires=60, link=cb.s(), link_error=cb.si(1), "
         "headers={'x-custom': 'v'}, priority=5, time_limit=30, soft_time_limit=20)",
         lambda: add.apply_async((2, 2), countdown=10, expires=60, link=cb.s(),
                                 link_error=cb.si(1), headers={"x-custom": "v"}, priority=5,
                                 time_limit=30, soft_time_limit=20)),
        ("celery-msgpack", "msgpack body with bytes (msgpack bin) and a float.",
         "echo.apply_async((1, 'two', b'\\x00\\xff'), {'k': [1.5, None]}, serializer='msgpack')",
         lambda: echo.apply_async((1, "two", b"\x00\xff"), {"k": [1.5, None]},
                                  serializer="msgpack")),
        ("celery-msgpack-zlib", "msgpack body compressed with zlib ('gzip').",
         "echo.apply_async(('x' * 64,), serializer='msgpack', compression='gzip')",
         lambda: echo.apply_async(("x" * 64,), serializer="msgpack", compression="gzip")),
        ("celery-unicode", "Non-ASCII text in args and kwargs (Kombu escapes it as \\uXXXX).",
         "echo.apply_async(('héllo wörld ☃ 😀',), {'ключ': '值'})",
         lambda: echo.apply_async(("héllo wörld ☃ 😀",), {"ключ": "值"})),
        ("celery-bytes-json", "bytes under JSON: Kombu's bytes and base64 __type__ markers.",
         "echo.apply_async((b'utf8 bytes', b'\\xff\\xfe\\x00'))",
         lambda: echo.apply_async((b"utf8 bytes", b"\xff\xfe\x00"))),
        ("celery-datetime-arg", "A datetime argument under JSON: Kombu's datetime marker.",
         "echo.apply_async((datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),))",
         lambda: echo.apply_async((datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),))),
        ("celery-chain", "The first message of a three-task chain: embed.chain, next task last.",
         "chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()",
         lambda: chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()),
        ("celery-chord-header", "A chord header task: embed.chord, group and group_index.",
         "chord([add.s(1, 1), add.s(2, 2)], cb.s()).apply_async()",
         lambda: chord([add.s(1, 1), add.s(2, 2)], cb.s()).apply_async()),
        ("celery-group", "The first task of a group: group and group_index headers.",
         "group(add.s(1, 1), add.s(2, 2)).apply_async()",
         lambda: group(add.s(1, 1), add.s(2, 2)).apply_async()),
        ("celery-eta-offset",
         "An aware eta with a +05:30 offset (kept as given) and expires as an ISO string "
         "with Z (Celery keeps the string verbatim in the header).",
         "add.apply_async((1, 1), eta=datetime(2030, 1, 1, 12, 0, tzinfo=+05:30), "
         "expires='2030-01-02T00:00:00Z')",
         lambda: add.apply_async((1, 1), eta=datetime(2030, 1, 1, 12, 0, tzinfo=ist),
                                 expires="2030-01-02T00:00:00Z")),
        ("celery-expires-past", "Numeric expires in the past: TTL clamped to '0'.",
         "add.apply_async((1, 1), expires=-5)",
         lambda: add.apply_async((1, 1), expires=-5)),
        ("celery-stamps", "Stamped headers: names in stamped_headers, values in stamps.",
         "add.apply_async((1, 1), stamped_headers=['mystamp'], mystamp='x')",
         lambda: add.apply_async((1, 1), stamped_headers=["mystamp"], mystamp="x")),
        ("celery-options",
         "ignore_result, shadow, argsrepr override, retries, transient delivery mode and an "
         "unknown option that becomes a message property.",
         "add.apply_async((1, 1), ignore_result=True, shadow='nice-name', argsrepr='(secret)', "
         "retries=2, delivery_mode=1, custom_prop='zz')",
         lambda: add.apply_async((1, 1), ignore_result=True, shadow="nice-name",
                                 argsrepr="(secret)", retries=2, delivery_mode=1,
                                 custom_prop="zz")),
    ]
    for compression in ("gzip", "bzip2", "lzma", "zstd", "brotli"):
        out.append((
            f"celery-json-{compression}", f"JSON body compressed with {compression!r}.",
            f"add.apply_async((4, 4), compression={compression!r})",
            lambda c=compression: add.apply_async((4, 4), compression=c),  # type: ignore[misc]
        ))
    return out


def main() -> None:
    rng = random.Random(20261123)
    # Celery's ids come from kombu.utils.uuid.uuid, which binds uuid4 as a default argument.
    kombu_uuid.__defaults__ = (_seeded_uuid4(rng),)
    here = Path(__file__).resolve().parent
    app = make_app()
    drain()
    for name, description, call, run in cases(app):
        run()
        raws = drain()
        vectorfile.write(vector(name, description, call, raws[0]), here / f"{name}.json")
        print(f"wrote {name}.json")
    legacy = make_app(protocol=1)
    add, cb = legacy.tasks["capture.add"], legacy.tasks["capture.cb"]
    add.apply_async((1, 2), countdown=10, expires=60, link=cb.s(), time_limit=10,
                    soft_time_limit=5)
    call = ("add.apply_async((1, 2), countdown=10, expires=60, link=cb.s(), time_limit=10, "
            "soft_time_limit=5) with task_protocol=1")
    raw = drain()[0]
    vectorfile.write(
        vector("celery-protocol1", "Protocol 1 (task_protocol=1): no headers, a mapping body. "
               "Read-only in wiretask.", call, raw),
        here / "celery-protocol1.json",
    )
    print("wrote celery-protocol1.json")


if __name__ == "__main__":
    main()
