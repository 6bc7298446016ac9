"""``Frame.headers_json``: ``protocol.celery.encode`` writes the headers' JSON text from
a template per task and options (the publish hot path), and it must be exactly what
``json.dumps`` writes for the headers, or absent; the Redis list entry written with it
must be the entry written without it, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from wiretask.codecs import default_registry
from wiretask.errors import EncodeError
from wiretask.protocol import Frame, TaskMessage
from wiretask.protocol.celery import encode
from wiretask.transports.redis import envelope

from .strategies import task_messages

REGISTRY = default_registry()


def _without_text(frame: Frame) -> Frame:
    return Frame.adopt(frame.body, frame.content_type, frame.content_encoding,
                       dict(frame.headers), dict(frame.properties))


@given(message=task_messages(content_type="application/json"),
       compression=st.sampled_from([None, "gzip"]))
def test_the_header_text_is_json_dumps_of_the_headers(
    message: TaskMessage, compression: str | None
) -> None:
    if compression is not None:
        message = attrs.evolve(message, compression=compression)
    frame = encode(message, REGISTRY)
    if frame.headers_json is not None:
        assert frame.headers_json == json.dumps(dict(frame.headers))
    # The same entry, or the same refusal (a property JSON cannot carry).
    assert _entry(frame) == _entry(_without_text(frame))


def _entry(frame: Frame) -> str:
    try:
        return envelope.encode(frame, exchange="", routing_key="q", delivery_tag="t",
                               published=1.5)
    except EncodeError as exc:
        return f"refused: {exc}"


@given(message=task_messages(content_type="application/json", rich=False),
       own=st.fixed_dictionaries({
           "id": st.text(min_size=1), "argsrepr": st.text(), "kwargsrepr": st.text(),
           "origin": st.none() | st.text(), "root_id": st.none() | st.text(min_size=1),
           "parent_id": st.none() | st.text(min_size=1), "group": st.none() | st.text(),
       }))
def test_each_message_writes_its_own_values_into_the_shared_template(
    message: TaskMessage, own: dict[str, Any]
) -> None:
    # The plain messages a task sends (no stamps, no custom headers) take the template:
    # two of them with the same shared values and different own values share it.
    first = encode(message, REGISTRY)
    second = encode(attrs.evolve(message, **own), REGISTRY)
    for frame in (first, second):
        assert frame.headers_json is not None
        assert frame.headers_json == json.dumps(dict(frame.headers))


def test_messages_the_template_does_not_cover_are_written_in_full() -> None:
    plain = TaskMessage(task="t", id="1")
    for message in (
        attrs.evolve(plain, extra_headers={"x-custom": 1}),
        attrs.evolve(plain, stamps={"s": 1}, stamped_headers=("s",)),
    ):
        frame = encode(message, REGISTRY)
        assert frame.headers_json is None
        assert json.loads(envelope.encode(frame, exchange="", routing_key="q",
                                          delivery_tag="t"))["headers"] == dict(frame.headers)
    assert encode(plain, REGISTRY).headers_json == json.dumps(
        dict(encode(plain, REGISTRY).headers))
