"""The poison catalogue (issue 13): bad messages pushed straight into the broker, as an
operator, a buggy peer or an attacker would, between valid ones, on every transport,
with a real worker consuming. Each bad message is dead-lettered with its reason; every
valid message around it runs exactly once; the worker keeps running.

On RabbitMQ the catalogue adds AMQP's own broken messages, published with py-amqp
behind wiretask's back (or as raw frames, where py-amqp cannot even write them): header
types Kombu never writes, content headers py-amqp cannot read, and messages that look
odd but are valid for a Celery worker (which must run, once)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import amqp
import pytest
import redis
import zstandard
from amqp import spec
from amqp.serialization import dumps

from amqp_support import raw_channel
from wiretask._amqp import wire
from wiretask.app import App
from wiretask.codecs import MAX_DEPTH, available_compressors
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.base import QueueAdmin
from wiretask.worker import Worker

from .support import wait_until
from .test_unreadable_entries import insert_raw

pytestmark = [pytest.mark.timeout(120)]

#: The worker's cap on a body (small, so that the bombs and the oversized body are).
CAP = 1 << 20
QUEUE = "celery"


class Poison(NamedTuple):
    name: str
    #: What the dead-letter reason starts with.
    reason: str
    #: Puts the message into the broker: (app, transport name) -> None.
    inject: Callable[[App, str], None]
    #: The transports it applies to (raw entries are one broker's own).
    transports: tuple[str, ...] = ("memory", "sqlite", "redis", "amqp")


def headers(**changes: Any) -> dict[str, Any]:
    """Protocol-2 headers of a task this worker does not even need to know."""
    base = {"lang": "py", "task": "poison.never", "id": str(uuid.uuid4()), "retries": 0,
            "timelimit": [None, None], "stamps": {}}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def frame(body: bytes, content_type: str = "application/json", *,
          encoding: str = "utf-8", **header_changes: Any) -> Callable[[App, str], None]:
    def inject(app: App, kind: str) -> None:
        app.transport.publish(Frame(body=body, content_type=content_type,
                                    content_encoding=encoding,
                                    headers=headers(**header_changes)), Route(QUEUE))
    return inject


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def bomb(compress: Callable[[bytes], bytes], name: str) -> Callable[[App, str], None]:
    return frame(compress(b"[" + b" " * (2 * CAP) + b"]"), compression=name)


def brotli_compress(data: bytes) -> bytes:
    import brotli  # noqa: PLC0415 - optional

    compressed: bytes = brotli.compress(data)
    return compressed


def raw_entry(entry: bytes) -> Callable[[App, str], None]:
    def inject(app: App, kind: str) -> None:
        client = redis.Redis.from_url(app.broker_url)
        try:
            client.lpush(QUEUE, entry)
        finally:
            client.close()
    return inject


def raw_row(**columns: Any) -> Callable[[App, str], None]:
    def inject(app: App, kind: str) -> None:
        insert_raw(Path(app.broker_url.removeprefix("sqlite:///")), queue=QUEUE, **columns)
    return inject


def raw_amqp(body: bytes, **properties: Any) -> Callable[[App, str], None]:
    """A message published with py-amqp's ``basic_publish``, behind wiretask's back."""
    def inject(app: App, kind: str) -> None:
        with raw_channel(app.broker_url) as channel:
            channel.basic_publish(amqp.Message(body, **properties), routing_key=QUEUE)
            channel.basic_qos(0, 0, False)  # a round trip: the publish was taken
    return inject


def raw_amqp_frames(
    properties: bytes, body: bytes = b"[[], {}, null]"
) -> Callable[[App, str], None]:
    """A message whose content header (``properties``: flags and property list) is
    written as given: what py-amqp cannot write, another client can."""
    method = struct.pack(">HH", *spec.Basic.Publish) + dumps("Bssbb", (0, "", QUEUE, False, False))
    header = struct.pack(">HHQ", spec.Basic.CLASS_ID, 0, len(body)) + properties
    parts = ((1, method), (2, header), (3, body))

    def inject(app: App, kind: str) -> None:
        with raw_channel(app.broker_url) as channel:
            number = channel.channel_id
            channel.connection.transport.write(b"".join(
                struct.pack(">BHI", kind_, number, len(payload)) + payload + b"\xce"
                for kind_, payload in parts))
            channel.basic_qos(0, 0, False)  # a round trip: the publish was taken
    return inject


def amqp_table(items: bytes) -> bytes:
    return struct.pack(">I", len(items)) + items


def content_header(content_type: bytes = b"application/json",
                   table: bytes | None = None) -> bytes:
    """Basic properties: content_type, content_encoding utf-8 and maybe the headers."""
    flags = 0x8000 | 0x4000 | (0x2000 if table is not None else 0)
    return (struct.pack(">HB", flags, len(content_type)) + content_type + b"\x05utf-8"
            + (table or b""))


def deep_table(depth: int) -> bytes:
    """Task headers with ``x-deep``: a table nested ``depth`` deep (7 bytes a level)."""
    inner = b"V"
    for _ in range(depth):
        inner = b"F" + amqp_table(b"\x01a" + inner)
    task = b"poison.never"
    ident = uuid.uuid4().hex.encode()
    return amqp_table(b"\x04taskS" + struct.pack(">I", len(task)) + task
                      + b"\x02idS" + struct.pack(">I", len(ident)) + ident
                      + b"\x06x-deep" + inner)


def frame_filling_headers() -> Callable[[App, str], None]:
    """Headers (without ``id``) that fill the content header frame to within a few
    bytes: the dead letter, with its reason added, cannot be written back as it was."""
    def inject(app: App, kind: str) -> None:
        with raw_channel(app.broker_url) as channel:
            frame_max = channel.connection.frame_max
        base = headers(id=_DROP, **{"x-pad": ""})
        message = Frame(body=b"[[], {}, null]", content_type="application/json",
                        content_encoding="utf-8", headers=base)
        room = frame_max - 8 - 12 - len(wire.encode(message).properties) - 16
        base["x-pad"] = "p" * room
        raw_amqp(b"[[], {}, null]", content_type="application/json", content_encoding="utf-8",
                 application_headers=base)(app, kind)
    return inject


def valid_amqp(i: int, **properties: Any) -> Callable[[App, str], None]:
    """``poison.valid(i)`` as Celery could send it, in a form Kombu never writes."""
    extra = properties.pop("headers", {})
    return raw_amqp(json.dumps([[i], {}, None]).encode(),
                    **{"content_type": "application/json", "content_encoding": "utf-8",
                       "application_headers": {**headers(task="poison.valid"), **extra},
                       **properties})


DEEP = 100_000
COMPRESSORS = {c.name for c in available_compressors()}
POISONS = [
    Poison("not JSON", "DecodeError", frame(b"{not json")),
    Poison("not UTF-8", "DecodeError", frame(b'[["\xff"], {}, null]')),
    Poison("a string body", "MalformedMessage", frame(b'"hello"')),
    Poison("a two-element body", "MalformedMessage", frame(b"[[1], {}]")),
    Poison("kwargs a list", "MalformedMessage", frame(b"[[], [1], null]")),
    Poison("a callback without a task", "MalformedMessage",
           frame(b'[[], {}, {"callbacks": [{"args": []}]}]')),
    Poison("body nested past the limit", "DecodeError",
           frame(b"[" + nested(MAX_DEPTH) + b", {}, null]")),
    Poison("body nested 100,000 deep", "DecodeError", frame(nested(DEEP))),
    Poison("a header nested past the limit", "MalformedMessage",
           frame(b"[[], {}, null]", **{"x-deep": json.loads(nested(MAX_DEPTH))})),
    Poison("a 5000-digit integer", "DecodeError", frame(b"[[" + b"7" * 5000 + b"], {}, null]")),
    Poison("missing id", "MalformedMessage", frame(b"[[], {}, null]", id=_DROP)),
    Poison("missing task", "MalformedMessage", frame(b"[[], {}, null]", task=_DROP)),
    Poison("a garbage eta", "MalformedMessage", frame(b"[[], {}, null]", eta="garbage")),
    Poison("an eta before 1970", "MalformedMessage",
           frame(b"[[], {}, null]", eta="1969-07-20T20:17:00+00:00")),
    Poison("a pickle", "ContentDisallowed",
           frame(b"\x80\x04K\x01.", "application/x-python-serialize", encoding="binary")),
    Poison("an unknown content type", "ContentDisallowed",
           frame(b"a: 1", "application/x-yaml")),
    Poison("an oversized body", "MessageTooLarge",
           frame(b"[[" + b'"' + b"x" * (CAP + 10) + b'"' + b"], {}, null]")),
    Poison("a zlib bomb", "MessageTooLarge", bomb(zlib.compress, "application/x-gzip")),
    Poison("a bzip2 bomb", "MessageTooLarge", bomb(bz2.compress, "application/x-bz2")),
    Poison("an lzma bomb", "MessageTooLarge", bomb(lzma.compress, "application/x-lzma")),
    Poison("a zstd bomb", "MessageTooLarge",
           bomb(zstandard.ZstdCompressor().compress, "application/zstd")),
    *([Poison("a brotli bomb", "MessageTooLarge", bomb(brotli_compress, "application/x-brotli"))]
      if "brotli" in COMPRESSORS else []),
    Poison("corrupt zlib", "DecodeError", frame(b"not zlib", compression="application/x-gzip")),
    # The brokers' own envelopes.
    Poison("an entry that is not JSON", "entry is not JSON", raw_entry(b"{not json"),
           ("redis",)),
    Poison("an entry with bad base64", "entry 'body' is not valid base64",
           raw_entry(b'{"body": "!!", "properties": {"delivery_tag": "b64", '
                     b'"body_encoding": "base64"}}'), ("redis",)),
    Poison("an entry nested 50,000 deep", "entry", raw_entry(nested(50_000)), ("redis",)),
    Poison("an envelope whose headers nest 100,000 deep", "entry",
           raw_entry(b'{"body": "", "properties": {"delivery_tag": "deep"}, "headers": '
                     + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}"), ("redis",)),
    Poison("an entry that is not UTF-8", "entry is not UTF-8", raw_entry(b'{"body": "\xff"}'),
           ("redis",)),
    Poison("a row with a TEXT body", "unreadable stored frame", raw_row(body="[[], {}, null]"),
           ("sqlite",)),
    Poison("a row whose headers nest 100,000 deep", "unreadable stored frame",
           raw_row(headers='{"a":' * DEEP + "1" + "}" * DEEP), ("sqlite",)),
    # AMQP's own: published with py-amqp, or as raw frames where py-amqp cannot write them.
    Poison("an AMQP body that is not what its content_type says", "DecodeError",
           raw_amqp(b"\x93\x90\x80\xc0", content_type="application/json",
                    content_encoding="utf-8", application_headers=headers()), ("amqp",)),
    Poison("an AMQP content_encoding naming no codec (HTTP's gzip)", "DecodeError",
           raw_amqp(gzip.compress(b"[[], {}, null]"), content_type="application/json",
                    content_encoding="gzip", application_headers=headers()), ("amqp",)),
    Poison("AMQP headers missing id", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", content_type="application/json",
                    content_encoding="utf-8", application_headers=headers(id=_DROP)), ("amqp",)),
    Poison("AMQP headers missing task", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", content_type="application/json",
                    content_encoding="utf-8", application_headers=headers(task=_DROP)),
           ("amqp",)),
    Poison("an AMQP message with no headers at all", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", content_type="application/json",
                    content_encoding="utf-8"), ("amqp",)),
    Poison("an AMQP message with no content_type", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", application_headers=headers()), ("amqp",)),
    Poison("an AMQP decimal where an int is expected", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", content_type="application/json",
                    content_encoding="utf-8", application_headers=headers(retries=Decimal("1.5"))),
           ("amqp",)),
    Poison("AMQP bytes where text is expected", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", content_type="application/json",
                    content_encoding="utf-8", application_headers=headers(id=b"\xff\xfe")),
           ("amqp",)),
    Poison("an AMQP timestamp where text is expected", "MalformedMessage",
           raw_amqp(b"[[], {}, null]", content_type="application/json",
                    content_encoding="utf-8",
                    application_headers=headers(task=datetime(2026, 1, 1, tzinfo=UTC))),
           ("amqp",)),
    Poison("an AMQP header table nested 10,000 deep", "unreadable message properties",
           raw_amqp_frames(content_header(table=deep_table(10_000))), ("amqp",)),
    Poison("an AMQP timestamp no datetime holds", "unreadable message properties",
           raw_amqp_frames(content_header(table=amqp_table(
               b"\x04taskS\x00\x00\x00\x0cpoison.never\x03etaT" + struct.pack(">Q", 2**63)))),
           ("amqp",)),
    Poison("an AMQP content_type that is not UTF-8", "unreadable message properties",
           raw_amqp_frames(content_header(content_type=b"\xff\xfe")), ("amqp",)),
    Poison("AMQP headers that fill a whole frame", "MalformedMessage", frame_filling_headers(),
           ("amqp",)),
]

#: Valid messages in forms Kombu never writes, which a Celery worker runs: each must run
#: once, not be dead-lettered (RabbitMQ delivers a priority above the queue's
#: ``x-max-priority`` as that maximum; Kombu ignores the content_encoding of a type it
#: has a decoder for; Celery reads an ``eta`` that is a datetime as one).
ODD_BUT_VALID: dict[str, Callable[[int], Callable[[App, str], None]]] = {
    "a priority above the queue's x-max-priority": lambda i: valid_amqp(i, priority=200),
    "a content_encoding naming no codec on JSON": lambda i: valid_amqp(
        i, content_encoding="x-klingon"),
    "an eta that is an AMQP timestamp": lambda i: valid_amqp(
        i, headers={"eta": datetime(2020, 1, 1, tzinfo=UTC)}),
}


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: ``x-max-priority`` of the queue on RabbitMQ (a priority above it is sent too).
AMQP_MAX_PRIORITY = 10


@pytest.fixture
def app(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[App]:
    backend = None
    if kind == "memory":
        url = f"memory://poison-{uuid.uuid4().hex}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        base = request.getfixturevalue("amqp_url")
        fresh_amqp_queues(base)
        url, backend = f"{base}?max_priority={AMQP_MAX_PRIORITY}", "memory://"
    made = App("poison", broker=url, backend=backend or url)
    made.conf.max_decompressed_size = CAP
    yield made
    made.close()
    if kind == "amqp":
        fresh_amqp_queues(base)  # the next test declares "celery" its own way


def fresh_amqp_queues(url: str) -> None:
    """Delete the catalogue's queue and its dead letters on RabbitMQ (other tests on the
    same broker may have declared them with other arguments, or left messages)."""
    with raw_channel(url) as channel:
        for queue in (QUEUE, f"{QUEUE}.dead"):
            channel.queue_delete(queue)


def test_every_poison_is_dead_lettered_and_every_valid_message_runs(app: App, kind: str) -> None:
    ran: list[int] = []
    lock = threading.Lock()

    @app.task(name="poison.valid")
    def valid(i: int) -> int:
        with lock:
            ran.append(i)
        return i

    poisons = [p for p in POISONS if kind in p.transports]
    odd = list(ODD_BUT_VALID.values()) if kind == "amqp" else []
    app.transport.declare_queue(QUEUE)
    valid.delay(-1)
    for i, poison in enumerate(poisons):
        poison.inject(app, kind)
        valid.delay(i)
    for i, make in enumerate(odd, start=len(poisons)):
        make(i)(app, kind)
    expected = list(range(-1, len(poisons) + len(odd)))
    with Worker(app, concurrency=2, shutdown_timeout=10) as worker:
        wait_until(lambda: len(ran) == len(expected), 60, "every valid message to run")
        transport = app.transport
        assert isinstance(transport, QueueAdmin)
        wait_until(lambda: len(transport.dead_letters(QUEUE)) == len(poisons), 30,
                   "every poison to be dead-lettered")
        time.sleep(0.2)  # nothing else arrives
        assert worker.running
    assert sorted(ran) == expected  # each exactly once
    letters = transport.dead_letters(QUEUE)
    assert len(letters) == len(poisons)
    reasons = [letter.reason for letter in letters]
    for poison in poisons:
        matching = [r for r in reasons if r.startswith(poison.reason)]
        assert matching, f"{poison.name}: no dead letter starts with {poison.reason!r}: {reasons}"
        reasons.remove(matching[0])
    assert transport.size(QUEUE) == 0
    if kind == "amqp":
        # The unreadable ones keep their raw property bytes; the one whose headers
        # cannot be written back with the reason says what it left out.
        kept = [letter.frame.headers.get(wire.RAW_PROPERTIES) for letter in letters
                if letter.reason.startswith("unreadable message properties")]
        assert len(kept) == 3 and all(isinstance(raw, bytes | str) and raw for raw in kept)
        dropped = [letter for letter in letters
                   if "x-wiretask-dead-dropped" in (letter.frame.headers if letter.frame else {})]
        assert len(dropped) == 1 and dropped[0].reason.startswith("MalformedMessage")


def test_the_catalogue_names_what_the_issue_lists() -> None:
    names = " ".join(p.name for p in POISONS)
    for needed in ("not JSON", "a string body", "bad base64", "not UTF-8", "nested", "5000-digit",
                   "zlib bomb", "bzip2 bomb", "lzma bomb", "zstd bomb", "oversized", "pickle",
                   "unknown content type", "two-element", "missing id", "missing task",
                   "garbage eta"):
        assert needed in names, needed


def test_a_header_table_100000_deep_never_reaches_a_rabbitmq_queue(amqp_url: str) -> None:
    """The catalogue's deepest AMQP table is 10,000 levels: 100,000 cannot be sent.
    py-amqp cannot write it, and as raw bytes (700 kB) it exceeds one frame, which a
    content header must fit: RabbitMQ closes the connection and stores nothing."""
    fresh_amqp_queues(amqp_url)
    try:
        nested_value: dict[str, Any] = {}
        for _ in range(DEEP):
            nested_value = {"a": nested_value}
        with raw_channel(amqp_url) as channel:
            channel.queue_declare(QUEUE, durable=True, auto_delete=False)
            with pytest.raises(RecursionError):
                channel.basic_publish(amqp.Message(b"[]", application_headers={"x": nested_value}),
                                      routing_key=QUEUE)
        table = deep_table(DEEP)
        assert len(table) > 131_072
        with pytest.raises(amqp.exceptions.FrameError, match="frame_too_large"):
            raw_amqp_frames(content_header(table=table))(App("deep", broker=amqp_url), "amqp")
        with raw_channel(amqp_url) as channel:
            assert channel.queue_declare(QUEUE, passive=True).message_count == 0
    finally:
        fresh_amqp_queues(amqp_url)
