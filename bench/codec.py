"""Codec benchmark (issue 2): building and decoding task messages, wiretask vs Celery/Kombu.

Run: ``python bench/codec.py`` (``--scale 0.1`` for a quick look). Prints a Markdown
table and one ``ratio:`` line per comparison. See ``bench/README.md`` for the method.

What is compared, per serializer (json, msgpack), on the same payload:

* **build** -- the whole send side, from a call to body bytes plus headers:
  wiretask ``app.build_call(name, args, kwargs, countdown=10, expires=60)`` (option
  resolution and validation, a uuid4 id, the clock, a validated ``TaskMessage``) and
  ``protocol.celery.encode`` (headers, properties, serialised body) vs Celery 5.7
  ``uuid()`` + ``app.amqp.as_task_v2(task_id, name, args, kwargs, countdown=10,
  expires=60, reply_to=app.thread_oid)`` (the headers, properties and body tuple
  ``send_task`` publishes) + ``kombu.serialization.dumps(body, serializer)``. The task
  is not registered on either side (``send_task`` by name: no signature binding).
* **decode** -- the receive side, from what a transport hands over (body bytes, the two
  content labels, headers, properties): wiretask ``Frame(...)`` +
  ``protocol.celery.decode`` (accept check, deserialise, every header, body and property
  validated, ``eta``/``expires`` parsed, a ``TaskMessage``) vs what a Celery worker does
  with the same parts: ``kombu.message.Message(...)`` + ``celery.worker.request.Request``
  (its ``__init__`` decodes the body through Kombu's ``loads`` with the accept list and
  parses the headers, ``eta`` and ``expires``). The bare ``kombu.serialization.loads``
  of the body alone is shown too, without a target: it does not read the headers.
* **the floor** (no target) -- the least code that produces the same information as a
  SMALL json build, with no option handling and no validation: ``str(uuid4())``, the
  clock, two ``isoformat`` calls, the 19 headers in a dict literal, two ``repr`` and
  ``orjson.dumps`` of the body. Celery's time over it is the most any implementation
  could gain; it bounds what the 50x target asks.
* **LARGE vs bare msgpack** -- the wiretask build/decode of LARGE with msgpack vs
  ``msgpack.packb``/``unpackb`` of the same ``[args, kwargs, embed]`` body: what the
  message layer costs above the serializer itself.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import orjson
from _common import (
    EMPTY_EMBED,
    LARGE_ARGS,
    LARGE_KWARGS,
    SMALL_ARGS,
    SMALL_KWARGS,
    Row,
    arguments,
    compare,
    machine_facts,
    print_ratio_lines,
    print_table,
    scaled,
)
from celery import Celery
from celery.utils import uuid as celery_uuid
from celery.worker.request import Request
from kombu.message import Message
from kombu.serialization import dumps, loads

from wiretask.app import App
from wiretask.protocol.celery import decode, encode
from wiretask.protocol.frame import Frame

TASK_NAME = "bench.task"
ACCEPT = {"application/json", "application/x-msgpack"}
SERIALIZERS = ("json", "msgpack")

#: Targets (issue 2).
SMALL_BUILD_TARGET = 50.0
SMALL_DECODE_TARGET = 2.0
LARGE_BARE_TARGET = 1.3


def floor_build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], object]:
    """A send side with nothing but the work itself (see the module doc)."""

    def build() -> object:
        task_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        headers = {
            "lang": "py", "task": TASK_NAME, "id": task_id, "shadow": None,
            "eta": (now + timedelta(seconds=10)).isoformat(),
            "expires": (now + timedelta(seconds=60)).isoformat(), "group": None,
            "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": repr(args), "kwargsrepr": repr(kwargs),
            "origin": "gen1@host", "ignore_result": False, "replaced_task_nesting": 0,
            "stamped_headers": None, "stamps": {},
        }
        body = orjson.dumps([args, kwargs, EMPTY_EMBED])
        return headers, body

    return build


class Sides:
    """The wiretask app and the Celery app of one serializer, and their operations."""

    def __init__(self, serializer: str) -> None:
        self.serializer = serializer
        self.app = App("bench", broker="memory://", backend="memory://",
                       task_serializer=serializer)
        self.registry = self.app.registry
        self.celery = Celery("bench", broker="memory://", set_as_current=False)
        self.celery.conf.task_serializer = serializer
        self.celery.conf.accept_content = ["json", "msgpack"]
        self.amqp = self.celery.amqp
        self.reply_to = self.celery.thread_oid

        @self.celery.task(name=TASK_NAME, shared=False)
        def task(*args: Any, **kwargs: Any) -> None:
            del args, kwargs

        self.celery_task = task

    # -- build --------------------------------------------------------------------------

    def wiretask_build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Frame]:
        app, registry = self.app, self.registry

        def build() -> Frame:
            call = app.build_call(TASK_NAME, args, kwargs, countdown=10, expires=60)
            return encode(call.message, registry)

        return build

    def celery_build(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], tuple[Any, tuple[str, str, bytes]]]:
        amqp, serializer, reply_to = self.amqp, self.serializer, self.reply_to

        def build() -> tuple[Any, tuple[str, str, bytes]]:
            message = amqp.as_task_v2(
                celery_uuid(), TASK_NAME, args, kwargs, countdown=10, expires=60,
                reply_to=reply_to,
            )
            return message, dumps(message.body, serializer)

        return build

    # -- decode -------------------------------------------------------------------------

    def wiretask_decode(self, frame: Frame) -> Callable[[], object]:
        registry = self.registry
        parts = (frame.body, frame.content_type, frame.content_encoding, dict(frame.headers),
                 dict(frame.properties))

        def receive() -> object:
            body, content_type, content_encoding, headers, properties = parts
            received = Frame(body=body, content_type=content_type,
                             content_encoding=content_encoding, headers=headers,
                             properties=properties)
            return decode(received, registry)

        return receive

    def celery_decode(self, frame: Frame) -> Callable[[], object]:
        app, task = self.celery, self.celery_task
        parts = (frame.body, frame.content_type, frame.content_encoding, dict(frame.headers),
                 dict(frame.properties))
        delivery_info = {"exchange": "", "routing_key": "celery"}

        def receive() -> object:
            body, content_type, content_encoding, headers, properties = parts
            message = Message(
                body=body, delivery_tag="1", content_type=content_type,
                content_encoding=content_encoding, delivery_info=delivery_info,
                properties=properties, headers=headers, accept=ACCEPT,
            )
            return Request(message, app=app, hostname="bench@localhost", task=task)

        return receive

    def check_equivalent(self, frame: Frame) -> None:
        """Both sides produce the same information (checked once, outside the timing)."""
        message, (content_type, _, data) = self.celery_build(SMALL_ARGS, SMALL_KWARGS)()
        ours = decode(frame, self.registry)
        assert content_type == frame.content_type, (content_type, frame.content_type)
        assert list(message.headers) == list(frame.headers)[: len(message.headers)]
        theirs = loads(data, content_type, frame.content_encoding, accept=ACCEPT)
        assert list(theirs[0]) == list(ours.args)
        assert theirs[1] == dict(ours.kwargs)
        assert ours.eta is not None
        assert ours.expires is not None


def run(scale: float, repeat: int) -> list[Row]:
    small_n = scaled(500, scale)
    large_n = scaled(20, scale)
    rows: list[Row] = []
    for serializer in SERIALIZERS:
        sides = Sides(serializer)
        build = sides.wiretask_build(SMALL_ARGS, SMALL_KWARGS)
        frame = build()
        sides.check_equivalent(frame)
        ours, ref = compare(build, sides.celery_build(SMALL_ARGS, SMALL_KWARGS),
                            number=small_n, repeat=repeat)
        rows.append(Row(f"SMALL build ({serializer})", ours, ref,
                        "celery as_task_v2+dumps", target=SMALL_BUILD_TARGET))
        if serializer == "json":
            floor, ref = compare(floor_build(SMALL_ARGS, SMALL_KWARGS),
                                 sides.celery_build(SMALL_ARGS, SMALL_KWARGS),
                                 number=small_n, repeat=repeat)
            rows.append(Row("SMALL build (json): the floor", floor, ref,
                            "celery as_task_v2+dumps"))
        ours, ref = compare(sides.wiretask_decode(frame), sides.celery_decode(frame),
                            number=small_n, repeat=repeat)
        rows.append(Row(f"SMALL decode ({serializer})", ours, ref,
                        "celery Message+Request", target=SMALL_DECODE_TARGET))
        body = frame.body

        def kombu_loads(body: bytes = body, frame: Frame = frame) -> object:
            return loads(body, frame.content_type, frame.content_encoding, accept=ACCEPT)

        ours, ref = compare(sides.wiretask_decode(frame), kombu_loads,
                            number=small_n, repeat=repeat)
        rows.append(Row(f"SMALL decode ({serializer})", ours, ref, "kombu loads (body only)"))

        large_build = sides.wiretask_build(LARGE_ARGS, LARGE_KWARGS)
        large_frame = large_build()
        ours, ref = compare(large_build, sides.celery_build(LARGE_ARGS, LARGE_KWARGS),
                            number=large_n, repeat=repeat)
        rows.append(Row(f"LARGE build ({serializer})", ours, ref, "celery as_task_v2+dumps"))
        ours, ref = compare(sides.wiretask_decode(large_frame), sides.celery_decode(large_frame),
                            number=large_n, repeat=repeat)
        rows.append(Row(f"LARGE decode ({serializer})", ours, ref, "celery Message+Request"))

        if serializer == "msgpack":
            plain_body = [list(LARGE_ARGS), LARGE_KWARGS, EMPTY_EMBED]
            packed = msgpack.packb(plain_body)
            print(f"LARGE body: {len(packed):,} bytes as msgpack", file=sys.stderr)

            def bare_pack(body: list[Any] = plain_body) -> bytes:
                return msgpack.packb(body)

            def bare_unpack(packed: bytes = packed) -> object:
                return msgpack.unpackb(packed)

            ours, ref = compare(large_build, bare_pack, number=large_n, repeat=repeat)
            rows.append(Row("LARGE build (msgpack)", ours, ref, "bare msgpack.packb",
                            kind="overhead", target=LARGE_BARE_TARGET))
            ours, ref = compare(sides.wiretask_decode(large_frame), bare_unpack,
                                number=large_n, repeat=repeat)
            rows.append(Row("LARGE decode (msgpack)", ours, ref, "bare msgpack.unpackb",
                            kind="overhead", target=LARGE_BARE_TARGET))
    return rows


def main() -> None:
    options = arguments(__doc__.splitlines()[0])
    repeat = options.repeat or (25 if options.scale >= 0.5 else 3)
    print(f"wiretask codec bench -- {machine_facts()}")
    print(f"method: best of {repeat} interleaved repeats, perf_counter_ns, GC on")
    rows = run(options.scale, repeat)
    print_table("Codec: build and decode, wiretask vs Celery/Kombu (lower us/op is better)",
                rows)
    print_ratio_lines(rows)


if __name__ == "__main__":
    main()
