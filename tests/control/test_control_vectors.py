"""The control channel's golden vectors (``spec/vectors/control``), captured from Celery
5.7 on Redis: wiretask reads each to what Celery meant, and writes that meaning back to
the same bytes (the frame, and the Kombu envelope given the captured delivery tag)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from wiretask.codecs import default_registry
from wiretask.control.wire import (
    Reply,
    ReplyTo,
    Request,
    control_exchange,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    reply_exchange,
    reply_queue,
)
from wiretask.protocol.frame import Frame
from wiretask.transports.redis.broadcast import channel
from wiretask.transports.redis.envelope import encode as envelope_of

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "control"
ALL = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(VECTORS.glob("*.json"))]
REQUESTS = [v for v in ALL if v["redis"]["command"] == "PUBLISH"]
REPLIES = [v for v in ALL if v["redis"]["command"] == "LPUSH"]
REGISTRY = default_registry(accept=["json"])


def frame_of(vector: dict[str, Any]) -> Frame:
    raw = vector["frame"]
    return Frame(body=base64.b64decode(raw["body"]), content_type=raw["content_type"],
                 content_encoding=raw["content_encoding"], headers=raw["headers"],
                 properties=raw["properties"])


def test_there_are_vectors_of_every_kind() -> None:
    names = {v["name"] for v in ALL}
    assert {"celery-ping-request", "celery-ping-reply", "celery-revoke-request",
            "celery-asyncresult-revoke-request", "celery-inspect-active-reply",
            "celery-unknown-command-reply"} <= names


@pytest.mark.parametrize("vector", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_requests_read_as_celery_meant_them(vector: dict[str, Any]) -> None:
    meaning = vector["meaning"]
    request = decode_request(frame_of(vector), REGISTRY)

    assert request.method == meaning["method"]
    assert dict(request.arguments) == meaning["arguments"]
    assert request.destination == (None if meaning["destination"] is None
                                   else tuple(meaning["destination"]))
    assert (request.pattern, request.matcher) == (meaning["pattern"], meaning["matcher"])
    assert request.ticket == meaning["ticket"]
    reply_to = meaning["reply_to"]
    assert request.reply_to == (None if reply_to is None else ReplyTo(**reply_to))
    assert (request.clock, request.expires) == (meaning["clock"], meaning["expires"])


@pytest.mark.parametrize("vector", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_requests_are_written_byte_for_byte(vector: dict[str, Any]) -> None:
    meaning = vector["meaning"]
    reply_to = meaning["reply_to"]
    request = Request(
        method=meaning["method"], arguments=meaning["arguments"],
        destination=meaning["destination"], pattern=meaning["pattern"],
        matcher=meaning["matcher"], ticket=meaning["ticket"],
        reply_to=None if reply_to is None else ReplyTo(**reply_to),
        clock=meaning["clock"], expires=meaning["expires"],
    )
    frame = encode_request(request, REGISTRY)
    captured = frame_of(vector)

    assert frame.body == captured.body
    assert (frame.content_type, frame.content_encoding) == (
        captured.content_type, captured.content_encoding)
    assert list(frame.headers.items()) == list(captured.headers.items())
    assert list(frame.properties.items()) == list(captured.properties.items())
    envelope = json.loads(vector["envelope"])
    info = envelope["properties"]["delivery_info"]
    assert info == {"exchange": control_exchange().name, "routing_key": ""}
    assert envelope_of(frame, exchange=info["exchange"], routing_key=info["routing_key"],
                       delivery_tag=envelope["properties"]["delivery_tag"]) == vector["envelope"]
    db = int(vector["redis"]["channel"].split(".", 1)[0].lstrip("/"))
    assert channel("", db, control_exchange().name, "") == vector["redis"]["channel"]


@pytest.mark.parametrize("vector", REPLIES, ids=[v["name"] for v in REPLIES])
def test_replies_read_as_celery_meant_them(vector: dict[str, Any]) -> None:
    meaning = vector["meaning"]
    [reply] = decode_reply(frame_of(vector), REGISTRY)

    assert reply == Reply(hostname=meaning["hostname"], result=meaning["result"],
                          ticket=meaning["ticket"], clock=meaning["clock"])


@pytest.mark.parametrize("vector", REPLIES, ids=[v["name"] for v in REPLIES])
def test_replies_are_written_byte_for_byte(vector: dict[str, Any]) -> None:
    meaning = vector["meaning"]
    frame = encode_reply(Reply(hostname=meaning["hostname"], result=meaning["result"],
                               ticket=meaning["ticket"], clock=meaning["clock"]), REGISTRY)
    captured = frame_of(vector)

    assert frame.body == captured.body
    assert list(frame.headers.items()) == list(captured.headers.items())
    assert list(frame.properties.items()) == list(captured.properties.items())
    envelope = json.loads(vector["envelope"])
    info = envelope["properties"]["delivery_info"]
    assert info["exchange"] == reply_exchange().name
    assert envelope_of(frame, exchange=info["exchange"], routing_key=info["routing_key"],
                       delivery_tag=envelope["properties"]["delivery_tag"]) == vector["envelope"]
    # The reply went to the list of the caller's reply queue, named after its oid.
    assert vector["redis"]["key"] == reply_queue(info["routing_key"]).name
