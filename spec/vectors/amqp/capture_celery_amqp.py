"""Capture golden vectors from a real Celery on a real RabbitMQ:
``python spec/vectors/amqp/capture_celery_amqp.py amqp://guest:guest@127.0.0.1:PORT//``.

Each vector is one Celery 5.7 ``apply_async`` published by Kombu's ``pyamqp`` transport
to RabbitMQ, then taken off its queue with ``basic.get`` by a plain py-amqp connection
that records the frames as they arrived. A vector holds the content header's property
bytes exactly as they came (``content_header``), the same properties read into a typed
tree by ``fieldtable.py`` (every header with its AMQP field type), the body bytes, where
it was published (exchange and routing key), and what Celery meant (task, id, args,
kwargs, read with Kombu's own ``loads``). Nothing here imports wiretask.

The last case is Celery 5.5+'s native delayed delivery (quorum queues behind a topic
exchange): a copy of Celery's ``celery_delayed_27`` publish, routed to a classic queue
bound to that exchange, so the vector shows its routing key and its unaltered bytes.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import celery
import kombu
from celery import Celery
from kombu import Connection
from kombu.compression import decompress
from kombu.serialization import loads
from kombu.transport.native_delayed_delivery import (
    declare_native_delayed_delivery_exchanges_and_queues,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fieldtable  # a sibling module, found through the path set above

QUEUE = "capture.celery"
COPY = "capture.ladder-copy"
ACCEPT = ["application/json", "application/x-msgpack"]


def make_app(url: str, **conf: Any) -> Celery:
    app = Celery("capture", broker=url, backend="cache+memory://", set_as_current=False)
    app.conf.update(accept_content=["json", "msgpack"], task_default_queue=QUEUE, **conf)

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


def raw_get(url: str, queue: str) -> dict[str, Any]:
    """``basic.get`` one message from ``queue``, recording its frames."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    connection = amqp.Connection(
        f"{parts.hostname}:{parts.port or 5672}", userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"), virtual_host=unquote(path) or "/",
    )
    connection.connect()
    frames: list[tuple[int, int, bytes]] = []
    handle = connection.on_inbound_frame

    def record(frame: tuple[int, int, bytes]) -> Any:
        frames.append(frame)
        return handle(frame)

    connection.on_inbound_frame = record
    try:
        channel = connection.channel()
        channel.auto_decode = False
        frames.clear()
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            raise RuntimeError(f"nothing in {queue!r}")
    finally:
        connection.close()
    header = next(bytes(payload) for kind, _, payload in frames if kind == 2)
    _, _, size = struct.unpack_from(">HHQ", header, 0)
    body = b"".join(bytes(payload) for kind, _, payload in frames if kind == 3)
    assert len(body) == size
    return {"info": message.delivery_info, "properties": header[12:], "body": body}


def meaning(typed: dict[str, Any], body: bytes) -> dict[str, Any]:
    headers = fieldtable.untyped(typed["application_headers"])
    if headers.get("compression"):
        body = decompress(body, headers["compression"])
    args, kwargs, _ = loads(body, typed["content_type"][1], typed["content_encoding"][1],
                            accept=ACCEPT)
    return {"task": headers["task"], "id": headers["id"],
            "args": _plain(list(args)), "kwargs": _plain(kwargs)}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def capture(url: str, app: Celery, call: Callable[[], Any], queue: str) -> dict[str, Any]:
    call()
    got = raw_get(url, queue)
    typed = fieldtable.read_properties(got["properties"])
    plain = {name: fieldtable.untyped(node) for name, node in typed.items()}
    body = base64.b64encode(got["body"]).decode("ascii")
    return {
        "publish": {"exchange": got["info"]["exchange"],
                    "routing_key": got["info"]["routing_key"]},
        "content_header": base64.b64encode(got["properties"]).decode("ascii"),
        "typed": typed,
        "body": body,
        # The same message in the common vector shape (../README.md), untyped.
        "frame": {"body": body, "content_type": plain.pop("content_type"),
                  "content_encoding": plain.pop("content_encoding"),
                  "headers": plain.pop("application_headers"), "properties": plain},
        "meaning": meaning(typed, got["body"]),
    }


def main(url: str) -> None:
    app = make_app(url)
    add, cb, echo = app.tasks["capture.add"], app.tasks["capture.cb"], app.tasks["capture.echo"]
    with Connection(url) as connection:  # a clean queue to capture from
        app.amqp.queues[QUEUE].bind(connection.default_channel).declare()
        connection.default_channel.queue_purge(QUEUE)
    cases: list[tuple[str, str, str, Callable[[], Any], str]] = [
        ("celery-amqp-minimal", "The simplest call: JSON, no options.",
         "add.apply_async((2, 3))", lambda: add.apply_async((2, 3)), QUEUE),
        ("celery-amqp-reference",
         "countdown, numeric expires (the expiration property), link, link_error, custom "
         "headers of every simple type, priority, time limits, shadow and retries.",
         "add.apply_async((2, 2), countdown=10, expires=60, link=cb.s(), link_error=cb.si(1), "
         "headers={'x-str': 'v', 'x-int': 7, 'x-big': 2**40, 'x-neg': -3, 'x-float': 1.5, "
         "'x-bool': True, 'x-none': None, 'x-list': [1, 'a', None], 'x-dict': {'k': [2]}}, "
         "priority=5, time_limit=30, soft_time_limit=20, shadow='nice', retries=2)",
         lambda: add.apply_async(
             (2, 2), countdown=10, expires=60, link=cb.s(), link_error=cb.si(1),
             headers={"x-str": "v", "x-int": 7, "x-big": 2**40, "x-neg": -3, "x-float": 1.5,
                      "x-bool": True, "x-none": None, "x-list": [1, "a", None],
                      "x-dict": {"k": [2]}},
             priority=5, time_limit=30, soft_time_limit=20, shadow="nice", retries=2),
         QUEUE),
        ("celery-amqp-msgpack-gzip", "msgpack body with bytes, gzip compression.",
         "echo.apply_async((1, 'two', b'\\x00\\xff'), {'k': [1.5, None]}, "
         "serializer='msgpack', compression='gzip')",
         lambda: echo.apply_async((1, "two", b"\x00\xff"), {"k": [1.5, None]},
                                  serializer="msgpack", compression="gzip"), QUEUE),
    ]
    quorum = make_app(url, task_default_queue_type="quorum",
                      task_default_exchange_type="topic")
    with Connection(url) as connection:  # the ladder, as Celery's worker declares it
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        # A quorum queue stores messages in its own format and hands them out with their
        # headers sorted and an x-delivery-count added: the bytes Celery sent are taken
        # from a copy routed to a classic queue bound to the ladder's top exchange.
        channel = connection.default_channel
        channel.queue_declare(COPY, durable=False, auto_delete=False, exclusive=False)
        channel.queue_bind(COPY, "celery_delayed_27", "#")
        channel.queue_purge(COPY)
    qadd = quorum.tasks["capture.add"]
    cases.append((
        "celery-amqp-native-delay",
        "Celery 5.5+'s native delayed delivery (quorum queue, topic exchange): published to "
        "celery_delayed_27 with the 28 binary digits of the countdown (5) before the routing "
        "key (a copy, routed to a classic queue bound to celery_delayed_27 with '#').",
        "add.apply_async((1, 1), countdown=5)  # quorum + topic",
        lambda: qadd.apply_async((1, 1), countdown=5), COPY,
    ))
    source = {"celery": celery.__version__, "kombu": kombu.__version__,
              "amqp": amqp.__version__}
    for name, description, text, call, queue in cases:
        vector = {"name": name, "description": description,
                  "source": {**source, "call": text}, **capture(url, app, call, queue)}
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(vector, indent=1, ensure_ascii=False) + "\n")
        print("wrote", path.relative_to(HERE.parent.parent.parent))
    with Connection(url) as connection:
        connection.default_channel.queue_delete(QUEUE)
        connection.default_channel.queue_delete(COPY)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
