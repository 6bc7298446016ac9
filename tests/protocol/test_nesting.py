"""What decodes, encodes: one nesting limit (``MAX_DEPTH``, spec §9 and §11.3), refused at
decode with a ``DecodeError`` naming the field and at encode with an ``EncodeError``,
whatever the serializer and whichever of the cheap depth proofs applies."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretask.codecs import MAX_DEPTH, default_registry, enable_pickle
from wiretask.codecs.nesting import exceeds, json_depth_within
from wiretask.errors import DecodeError, EncodeError, MalformedMessage
from wiretask.protocol import Frame, Signature, TaskMessage
from wiretask.protocol.celery import decode, encode

REGISTRY = default_registry()
JSON, MSGPACK = "application/json", "application/x-msgpack"


def nested(depth: int, leaf: Any = 1, *, kind: str = "list") -> Any:
    """A value ``depth`` containers deep."""
    value = leaf
    for level in range(depth):
        value = [value] if kind == "list" or (kind == "mixed" and level % 2) else {"k": value}
    return value


def frame(body: list[Any], content_type: str = JSON, *, headers: dict[str, Any] | None = None,
          properties: dict[str, Any] | None = None) -> Frame:
    """A frame as a peer would write it (the stdlib JSON encoder, Kombu's; or msgpack)."""
    data = (json.dumps(body).encode() if content_type == JSON
            else msgpack.packb(body, use_bin_type=True))
    return Frame(body=data, content_type=content_type,
                 content_encoding="utf-8" if content_type == JSON else "binary",
                 headers={"task": "t", "id": "i", **(headers or {})},
                 properties=properties or {})


def signature_dict(args: list[Any]) -> dict[str, Any]:
    return {"task": "cb", "args": args, "kwargs": {}, "options": {}, "subtask_type": None,
            "immutable": False}


# -- the body ---------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
@pytest.mark.parametrize("kind", ["list", "mixed"])
def test_a_body_at_the_limit_decodes_and_one_level_more_is_refused(
    content_type: str, kind: str
) -> None:
    # body list (1) > args list (2) > the value: MAX_DEPTH - 2 more levels fill it.
    at_limit = frame([[nested(MAX_DEPTH - 2, kind=kind)], {}, None], content_type)
    message = decode(at_limit, REGISTRY)
    assert decode(encode(message, REGISTRY), REGISTRY) == message
    too_deep = frame([[nested(MAX_DEPTH - 1, kind=kind)], {}, None], content_type)
    with pytest.raises(DecodeError) as info:
        decode(too_deep, REGISTRY)
    assert info.value.field == "body"
    assert f"nests deeper than {MAX_DEPTH} levels" in str(info.value)


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
def test_a_link_callback_nested_600_deep_is_refused_at_decode(content_type: str) -> None:
    """The issue's case: it decoded, and encode then raised a bare RecursionError."""
    body = [[], {}, {"callbacks": [signature_dict([nested(600)])]}]
    with pytest.raises(DecodeError) as info:
        decode(frame(body, content_type), REGISTRY)
    assert info.value.field == "body"


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_json_deeper_than_any_parser_reads_is_a_decode_error(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    with pytest.raises(DecodeError) as info:
        decode(Frame(body=raw, content_type=JSON, content_encoding="utf-8",
                     headers={"task": "t", "id": "i"}), REGISTRY)
    assert info.value.field == "body"


def test_msgpack_deeper_than_its_unpacker_reads_is_a_decode_error() -> None:
    raw = b"\x91" * 5000 + b"\x01"
    with pytest.raises(DecodeError, match="nests deeper"):
        decode(Frame(body=raw, content_type=MSGPACK, content_encoding="binary",
                     headers={"task": "t", "id": "i"}), REGISTRY)


@pytest.mark.parametrize("noise", ['"[["', '"]]"', '"]["', '"\\\\"', '"\\"[\\""', '"\\u005b"'])
@pytest.mark.parametrize("extra", [0, 1])
def test_brackets_and_escapes_inside_strings_do_not_fool_the_json_check(
    noise: str, extra: int
) -> None:
    """A bracket inside a string is not structure: the text check gives up and the value
    is walked, so the limit holds exactly (long texts skip the bracket count)."""
    inner = json.dumps(nested(MAX_DEPTH - 2 + extra))
    filler = ", ".join([noise] * 2000)  # past the short-text bracket count
    text = f"[[{noise}, {inner}, {filler}], {{}}, null]".encode()
    message_frame = Frame(body=text, content_type=JSON, content_encoding="utf-8",
                          headers={"task": "t", "id": "i"})
    if extra:
        with pytest.raises(DecodeError, match="nests deeper"):
            decode(message_frame, REGISTRY)
    else:
        message = decode(message_frame, REGISTRY)
        assert decode(encode(message, REGISTRY), REGISTRY) == message


def test_the_json_text_check_is_exact_where_it_answers() -> None:
    for depth in (0, 1, 5, 9, 10, 16, 17, 300):
        for noise in ("b", "b]", "{["):
            value = [nested(depth, kind="mixed"), ["x" * 10] * 3000, {"a": noise}]
            text = json.dumps(value).encode()
            answer = json_depth_within(text, 10)
            assert answer in (None, not exceeds(value, 10))
            if noise == "b" and depth < 16:
                assert answer is not None
    # Escaped backslashes before a closing quote are not escaped quotes.
    text = json.dumps([["a\\"] * 3000, nested(12)]).encode()
    assert json_depth_within(text, 12) is False
    assert json_depth_within(text, 13) is True


# -- headers and properties --------------------------------------------------------------


@pytest.mark.parametrize(("place", "field"), [
    ("stamps", "headers.stamps"), ("custom", "headers.x-custom"),
    ("property", "properties.x-custom"),
])
def test_header_and_property_values_have_the_limit_too(place: str, field: str) -> None:
    def make(depth: int) -> Frame:
        value = nested(depth)
        headers = {"stamps": {"s": value}} if place == "stamps" else {}
        if place == "custom":
            headers["x-custom"] = value
        properties = {"x-custom": value} if place == "property" else {}
        return frame([[], {}, None], headers=headers, properties=properties)

    # The mapping is one level; a stamp's value sits in the stamps mapping, one more.
    within = MAX_DEPTH - (2 if place == "stamps" else 1)
    message = decode(make(within), REGISTRY)
    assert decode(encode(message, REGISTRY), REGISTRY) == message
    with pytest.raises(MalformedMessage) as info:
        decode(make(within + 1), REGISTRY)
    assert info.value.field == field


def test_an_error_about_a_deep_header_value_does_not_recurse() -> None:
    deep = nested(5000)
    for header in ("timelimit", "id", "retries", "stamped_headers", "lang"):
        with pytest.raises(MalformedMessage) as info:
            decode(frame([[], {}, None], headers={header: deep}), REGISTRY)
        assert info.value.field == f"headers.{header}"
        assert len(str(info.value)) < 300


# -- encode ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
def test_encode_refuses_what_decode_would(content_type: str) -> None:
    message = TaskMessage(task="t", id="i", args=(nested(MAX_DEPTH - 2),),
                          content_type=content_type)
    assert decode(encode(message, REGISTRY), REGISTRY) == message
    deeper = TaskMessage(task="t", id="i", args=(nested(MAX_DEPTH - 1),),
                         content_type=content_type)
    with pytest.raises(EncodeError) as info:
        encode(deeper, REGISTRY)
    assert info.value.field == "body"


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
def test_encode_of_a_signature_nested_past_the_stack_is_an_encode_error(
    content_type: str
) -> None:
    message = TaskMessage(task="t", id="i", content_type=content_type,
                          callbacks=(Signature(task="cb", args=(nested(100_000),)),))
    with pytest.raises(EncodeError):
        encode(message, REGISTRY)


@pytest.mark.parametrize(("fields", "field"), [
    ({"stamps": {"s": nested(MAX_DEPTH - 1)}}, "headers.stamps"),
    ({"extra_headers": {"x": nested(MAX_DEPTH)}}, "headers.x"),
    ({"extra_properties": {"x": nested(MAX_DEPTH)}}, "properties.x"),
])
def test_encode_refuses_deep_header_and_property_values(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(EncodeError) as info:
        encode(TaskMessage(task="t", id="i", **fields), REGISTRY)
    assert info.value.field == field


def test_a_pickle_holding_itself_is_refused_with_the_limit() -> None:
    registry = enable_pickle(default_registry(), accept=True)
    loop: list[Any] = []
    loop.append(loop)
    data = registry.dumps([[loop], {}, None], "pickle").data
    with pytest.raises(DecodeError, match="contains itself"):
        decode(Frame(body=data, content_type="application/x-python-serialize",
                     content_encoding="binary", headers={"task": "t", "id": "i"}), registry)


def test_exceeds_counts_levels_and_stops_on_cycles() -> None:
    assert not exceeds(1, 0)
    assert not exceeds([], 1)
    assert exceeds([[]], 1)
    assert not exceeds({"a": [(1,)]}, 3)
    assert exceeds({"a": [(1, [])]}, 3)
    loop: dict[str, Any] = {}
    loop["me"] = loop
    assert exceeds(loop, 50)
    shared = nested(3)
    assert not exceeds([shared] * 1000, 4)


# -- decode, encode, decode ----------------------------------------------------------------


places = st.sampled_from(["args", "kwargs", "callback", "extra_embed"])


@given(content_type=st.sampled_from([JSON, MSGPACK]), place=places,
       depth=st.integers(min_value=0, max_value=MAX_DEPTH + 40),
       kind=st.sampled_from(["list", "mixed"]))
def test_whatever_decodes_encodes_and_decodes_the_same(
    content_type: str, place: str, depth: int, kind: str
) -> None:
    value = nested(depth, kind=kind)
    args: list[Any] = [value] if place == "args" else []
    kwargs = {"v": value} if place == "kwargs" else {}
    embed: dict[str, Any] = {"callbacks": [signature_dict([value])]} if place == "callback" \
        else {"x-extra": value} if place == "extra_embed" else {}
    body = [args, kwargs, embed]
    document_depth = depth + {"args": 2, "kwargs": 2, "callback": 5, "extra_embed": 2}[place]
    received = frame(body, content_type)
    if document_depth > MAX_DEPTH:
        with pytest.raises(DecodeError):
            decode(received, REGISTRY)
        return
    message = decode(received, REGISTRY)
    again = decode(encode(message, REGISTRY), REGISTRY)
    assert again == message
