"""The pidbox wire on its own: requests and replies to frames and back, who a request is
for, the Lamport clock (the captured vectors are in ``test_control_vectors.py``)."""

from __future__ import annotations

import json

import pytest

from wiretask.codecs import default_registry
from wiretask.control.wire import (
    LamportClock,
    Reply,
    ReplyTo,
    Request,
    control_exchange,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    matches,
    node_queue,
    nok,
    ok,
    reply_exchange,
    reply_queue,
)
from wiretask.errors import ContentDisallowed, DecodeError, EncodeError, ValidationError
from wiretask.protocol.frame import Frame

REGISTRY = default_registry()


def test_names_are_kombus() -> None:
    assert control_exchange().name == "celery.pidbox"
    assert control_exchange().type == "fanout"
    assert reply_exchange("proj").name == "reply.proj.pidbox"
    assert reply_exchange().type == "direct"
    node = node_queue("w1@host")
    assert (node.name, node.expires, node.message_ttl) == ("w1@host.celery.pidbox", 10, 300)
    reply = reply_queue("oid-1")
    assert (reply.name, reply.binding_key) == ("oid-1.reply.celery.pidbox", "oid-1")


def test_a_cast_has_no_ticket_nor_reply_to() -> None:
    frame = encode_request(Request(method="revoke", arguments={"task_id": "x"}), REGISTRY)
    body = json.loads(frame.body)
    assert list(body) == ["method", "arguments", "destination", "pattern", "matcher"]
    assert dict(frame.headers) == {"clock": 0, "expires": 0}


def test_a_request_round_trips() -> None:
    request = Request(method="ping", arguments={"x": [1]}, destination=["a@b"],
                      ticket="t", reply_to=ReplyTo(exchange="reply.celery.pidbox",
                                                   routing_key="oid"),
                      clock=3, expires=12.5)
    assert decode_request(encode_request(request, REGISTRY), REGISTRY) == request


def test_msgpack_bodies_when_that_is_the_task_serializer() -> None:
    frame = encode_request(Request(method="ping"), REGISTRY, "msgpack")
    assert frame.content_type == "application/x-msgpack"
    assert decode_request(frame, REGISTRY).method == "ping"
    reply = encode_reply(Reply(hostname="n", result=ok("pong"), ticket="t"), REGISTRY,
                         "msgpack")
    assert decode_reply(reply, REGISTRY)[0].result == {"ok": "pong"}


def test_a_body_outside_the_accept_policy_is_refused() -> None:
    frame = encode_request(Request(method="ping"), REGISTRY, "msgpack")
    with pytest.raises(ContentDisallowed):
        decode_request(frame, default_registry(accept=["json"]))


@pytest.mark.parametrize(("body", "field"), [
    (b'["ping"]', "body"),
    (b'{"arguments": {}}', "body.method"),
    (b'{"method": "ping", "arguments": [1]}', "body.arguments"),
    (b'{"method": "ping", "destination": "a@b"}', "body.destination"),
    (b'{"method": "ping", "reply_to": "oid"}', "body.reply_to"),
    (b'{"method": "ping", "ticket": 5}', "body.ticket"),
])
def test_requests_that_are_not_requests(body: bytes, field: str) -> None:
    frame = Frame(body=body, content_type="application/json", content_encoding="utf-8")
    with pytest.raises(DecodeError) as info:
        decode_request(frame, REGISTRY)
    assert info.value.field == field


def test_null_arguments_are_none() -> None:
    frame = Frame(body=b'{"method": "ping", "arguments": null}',
                  content_type="application/json", content_encoding="utf-8")
    assert decode_request(frame, REGISTRY).arguments == {}


def test_an_argument_json_cannot_carry_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="arguments"):
        encode_request(Request(method="revoke", arguments={"task_id": {1, 2}}), REGISTRY)
    with pytest.raises(EncodeError, match="result"):
        encode_reply(Reply(hostname="n", result=object(), ticket=None), REGISTRY)


def test_destination_must_be_a_list() -> None:
    with pytest.raises(ValidationError, match="destination"):
        Request(method="ping", destination="a@b")


@pytest.mark.parametrize(("request_", "expected"), [
    (Request(method="ping"), True),
    (Request(method="ping", destination=["w1@h"]), True),
    (Request(method="ping", destination=["w2@h"]), False),
    (Request(method="ping", destination=[]), True),
    (Request(method="ping", pattern="w*@h", matcher="glob"), True),
    (Request(method="ping", pattern="x*", matcher="glob"), False),
    (Request(method="ping", pattern=r"w\d@", matcher="pcre"), True),
    (Request(method="ping", pattern="w*"), True),  # a pattern alone: everyone, as Kombu
])
def test_who_a_request_is_for(request_: Request, expected: bool) -> None:
    assert matches("w1@h", request_) is expected


def test_an_unknown_matcher_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown matcher 'regex'"):
        matches("w", Request(method="ping", pattern="w", matcher="regex"))


def test_lamport_clock() -> None:
    clock = LamportClock()
    assert clock.forward() == 1
    assert clock.adjust(10) == 11
    assert clock.adjust(3) == 12
    assert clock.adjust("junk") == 13
    assert clock.value == 13


def test_ok_and_nok_are_celerys() -> None:
    assert ok("pong") == {"ok": "pong"}
    assert nok("no") == {"error": "no"}
