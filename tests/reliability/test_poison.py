"""The poison catalogue (issue 13): bad messages pushed straight into the broker, as an
operator, a buggy peer or an attacker would, between valid ones, on every transport,
with a real worker consuming. Each bad message is dead-lettered with its reason; every
valid message around it runs exactly once; the worker keeps running."""

from __future__ import annotations

import bz2
import json
import lzma
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
import zstandard

from wiretask.app import App
from wiretask.codecs import MAX_DEPTH, available_compressors
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.base import Inspection
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
    transports: tuple[str, ...] = ("memory", "sqlite", "redis")


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
]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[App]:
    if kind == "memory":
        url = f"memory://poison-{uuid.uuid4().hex}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    made = App("poison", broker=url, backend=url)
    made.conf.max_decompressed_size = CAP
    yield made
    made.close()


def test_every_poison_is_dead_lettered_and_every_valid_message_runs(app: App, kind: str) -> None:
    ran: list[int] = []
    lock = threading.Lock()

    @app.task(name="poison.valid")
    def valid(i: int) -> int:
        with lock:
            ran.append(i)
        return i

    poisons = [p for p in POISONS if kind in p.transports]
    app.transport.declare_queue(QUEUE)
    valid.delay(-1)
    for i, poison in enumerate(poisons):
        poison.inject(app, kind)
        valid.delay(i)
    with Worker(app, concurrency=2, shutdown_timeout=10) as worker:
        wait_until(lambda: len(ran) == len(poisons) + 1, 60, "every valid message to run")
        transport = app.transport
        assert isinstance(transport, Inspection)
        wait_until(lambda: len(transport.dead_letters(QUEUE)) == len(poisons), 30,
                   "every poison to be dead-lettered")
        time.sleep(0.2)  # nothing else arrives
        assert worker.running
    assert sorted(ran) == list(range(-1, len(poisons)))  # each exactly once
    letters = transport.dead_letters(QUEUE)
    assert len(letters) == len(poisons)
    reasons = [letter.reason for letter in letters]
    for poison in poisons:
        matching = [r for r in reasons if r.startswith(poison.reason)]
        assert matching, f"{poison.name}: no dead letter starts with {poison.reason!r}: {reasons}"
        reasons.remove(matching[0])
    assert transport.size(QUEUE) == 0


def test_the_catalogue_names_what_the_issue_lists() -> None:
    names = " ".join(p.name for p in POISONS)
    for needed in ("not JSON", "a string body", "bad base64", "not UTF-8", "nested", "5000-digit",
                   "zlib bomb", "bzip2 bomb", "lzma bomb", "zstd bomb", "oversized", "pickle",
                   "unknown content type", "two-element", "missing id", "missing task",
                   "garbage eta"):
        assert needed in names, needed
