"""Cross-checks against Celery 5.7 itself, in-process (no broker, no worker process).

* Celery -> wiretask: ``app.amqp.as_task_v2(...)`` plus Kombu's serializer produce a
  message that ``decode`` reads with the same meaning.
* wiretask -> Celery: a frame from ``encode`` is published through Kombu's in-memory
  transport, read back as a Kombu ``Message`` (which decompresses and deserialises it as a
  worker does), turned into a ``celery.worker.request.Request`` and **executed** with
  ``Request.execute()`` (Celery's tracer). The task really runs with our args, and its
  ``link`` callback is published by Celery as a new message, which wiretask decodes.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.worker.request import Request
from kombu import Connection, Producer, Queue
from kombu.compression import compress as kombu_compress
from kombu.serialization import dumps as kombu_dumps
from kombu.transport import memory

from wiretask.codecs import default_registry
from wiretask.protocol import Frame, Signature, TaskMessage
from wiretask.protocol.celery import decode, encode

REGISTRY = default_registry()
NOW = datetime(2026, 11, 23, 19, 29, 2, 846359, tzinfo=UTC)
ACCEPT = ["application/json", "application/x-msgpack"]
_queue_names = (f"wiretask-interop-{n}" for n in itertools.count())


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("protocheck", broker="memory://", backend="cache+memory://")
    app.conf.update(accept_content=["json", "msgpack"], task_default_queue="interop-default")
    app.ran = []

    @app.task(name="protocheck.add", shared=False)
    def add(x: Any, y: Any, z: Any = 0) -> Any:
        app.ran.append((x, y, z))
        return x + y + z

    @app.task(name="protocheck.cb", shared=False)
    def cb(*args: Any) -> Any:
        return args

    yield app
    memory.Channel.queues.pop("interop-default", None)


class TestCeleryToWiretask:
    @pytest.mark.parametrize("serializer", ["json", "msgpack"])
    @pytest.mark.parametrize("compression", [None, "gzip", "bzip2", "lzma", "zstd", "brotli"])
    def test_as_task_v2_decodes_to_the_same_meaning(
        self, app: Celery, serializer: str, compression: str | None
    ) -> None:
        link = app.signature("protocheck.cb", args=(1,))
        msg = app.amqp.as_task_v2(
            "tid-1", "protocheck.add", (2, "é"), {"z": b"\x00\xff"}, countdown=10, expires=60,
            now=NOW, callbacks=[link],
            errbacks=[app.signature("protocheck.cb").set(immutable=True)],
            group_id="g", group_index=3, retries=1, time_limit=30, soft_time_limit=20,
            root_id="root", parent_id="parent", shadow="sh", reply_to="oid",
        )
        content_type, content_encoding, body = kombu_dumps(msg.body, serializer=serializer)
        if isinstance(body, str):  # Kombu's JSON encoder returns text; Producer encodes it
            body = body.encode(content_encoding)
        headers = dict(msg.headers)
        if compression:
            body, headers["compression"] = kombu_compress(body, compression)
        frame = Frame(body=body, content_type=content_type, content_encoding=content_encoding,
                      headers=headers, properties={**msg.properties, "delivery_mode": 2})
        got = decode(frame, REGISTRY)
        assert got.task == "protocheck.add" and got.id == "tid-1"
        assert got.args == (2, "é") and got.kwargs == {"z": b"\x00\xff"}
        assert got.eta == NOW + timedelta(seconds=10)
        assert got.expires == NOW + timedelta(seconds=60)
        assert (got.group, got.group_index, got.retries) == ("g", 3, 1)
        assert got.timelimit == (30, 20)
        assert (got.root_id, got.parent_id, got.shadow, got.reply_to) == (
            "root", "parent", "sh", "oid")
        assert got.callbacks == (Signature(task="protocheck.cb", args=(1,)),)
        assert got.errbacks is not None and got.errbacks[0].immutable
        assert got.argsrepr == msg.headers["argsrepr"] and got.origin == msg.headers["origin"]
        assert got.correlation_id is None  # it was the task id
        assert got.compression == (None if compression is None
                                   else REGISTRY.compressor(compression).content_type)


def _publish_and_receive(frame: Frame) -> Any:
    """Publish ``frame`` with Kombu (no re-serialisation) and get it back as a Message."""
    queue_name = next(_queue_names)
    with Connection("memory://") as connection:
        channel = connection.channel()
        queue = Queue(queue_name, routing_key=queue_name)(channel)
        queue.declare()
        Producer(channel).publish(
            frame.body, exchange="", routing_key=queue_name, content_type=frame.content_type,
            content_encoding=frame.content_encoding, headers=dict(frame.headers),
            **frame.properties,
        )
        message = queue.get(no_ack=False, accept=ACCEPT)
        queue.delete()
    assert message is not None
    return message


class TestWiretaskToCelery:
    @pytest.mark.parametrize("content_type", ["application/json", "application/x-msgpack"])
    @pytest.mark.parametrize(
        "compression",
        [None, "application/x-gzip", "application/x-bz2", "application/x-lzma",
         "application/zstd", "application/x-brotli"],
    )
    def test_celery_runs_our_message(
        self, app: Celery, content_type: str, compression: str | None
    ) -> None:
        message = TaskMessage(
            task="protocheck.add", id="wt-1", args=(1, 2), kwargs={"z": 3},
            eta=NOW, expires=NOW + timedelta(days=36500), timelimit=(10, 5),
            callbacks=(Signature(task="protocheck.cb", args=("tail",)),),
            content_type=content_type, compression=compression,
            extra_headers={"x-trace": "abc"},
        )
        received = _publish_and_receive(encode(message, REGISTRY))
        request = Request(received, app=app, task=app.tasks["protocheck.add"])
        assert (request.id, request.task_name) == ("wt-1", "protocheck.add")
        assert (request.args, request.kwargs) == ([1, 2], {"z": 3})
        assert request.eta == NOW
        assert request.time_limits == [10, 5]
        assert request.request_dict["x-trace"] == "abc"

        assert request.execute() == 6
        assert app.ran == [(1, 2, 3)]
        # Celery published the link callback: (retval, *stored args), as a message we read.
        queued = memory.Channel.queues["interop-default"].get_nowait()
        callback = _decode_kombu_envelope(queued)
        assert callback.task == "protocheck.cb"
        assert callback.args == (6, "tail")
        assert callback.parent_id == "wt-1"

    def test_celery_reads_a_minimal_message(self, app: Celery) -> None:
        message = TaskMessage(task="protocheck.add", id="wt-2", args=(4, 5))
        request = Request(_publish_and_receive(encode(message, REGISTRY)), app=app,
                          task=app.tasks["protocheck.add"])
        assert request.eta is None and request.expires is None
        assert request.execute() == 9


def _decode_kombu_envelope(raw: dict[str, Any]) -> TaskMessage:
    """Decode what Kombu's virtual transport stored (its transport keys stripped)."""
    properties = {k: v for k, v in raw["properties"].items()
                  if k not in ("delivery_info", "delivery_tag", "body_encoding")}
    frame = Frame(body=base64.b64decode(raw["body"]), content_type=raw["content-type"],
                  content_encoding=raw["content-encoding"], headers=raw["headers"],
                  properties=properties)
    return decode(frame, REGISTRY)
