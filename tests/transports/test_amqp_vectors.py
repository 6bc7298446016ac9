"""The AMQP golden vectors (``spec/vectors/amqp/``), captured from Celery 5.7 on RabbitMQ,
checked both ways: what Celery sent reads as the frame and the task Celery meant, and
encoding that frame gives back Celery's bytes; and what wiretask sends for the same call
carries every header with the AMQP field type Celery uses."""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import amqp
import pytest

from wiretask._amqp import wire
from wiretask.app import App
from wiretask.codecs import default_registry
from wiretask.protocol.celery import decode, encode
from wiretask.protocol.frame import Frame

HERE = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "amqp"


def _fieldtable() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fieldtable", HERE / "fieldtable.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fieldtable", module)
    spec.loader.exec_module(module)
    return module


fieldtable = _fieldtable()
VECTORS = sorted(HERE.glob("celery-amqp-*.json"))
#: Header values that differ from call to call: compared by type only.
VOLATILE = {"id", "root_id", "origin", "eta", "expires", "argsrepr", "correlation_id",
            "reply_to"}


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    return vector


def received(vector: dict[str, Any]) -> amqp.Message:
    """The message a py-amqp consumer gets for the vector's content header and body."""
    properties = base64.b64decode(vector["content_header"])
    body = base64.b64decode(vector["body"])
    message = amqp.Message()
    message.inbound_header(struct.pack(">HHQ", 60, 0, len(body)) + properties)
    if body:
        message.inbound_body(body)
    return message


def untag(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag(v) for v in value]
    return value


def test_there_are_vectors() -> None:
    assert len(VECTORS) >= 4


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_the_typed_tree_is_the_content_header(path: Path) -> None:
    vector = load(path)
    assert fieldtable.read_properties(base64.b64decode(vector["content_header"])) == \
        vector["typed"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_celerys_message_reads_as_the_frame_and_encodes_back_to_its_bytes(path: Path) -> None:
    vector = load(path)
    typed = dict(vector["typed"])
    headers = fieldtable.untyped(typed.pop("application_headers"))
    content_type, content_encoding = typed.pop("content_type")[1], typed.pop("content_encoding")[1]
    properties = {name: value for name, (_, value) in typed.items()}

    frame = wire.to_frame(received(vector))

    assert frame == Frame(body=base64.b64decode(vector["body"]), content_type=content_type,
                          content_encoding=content_encoding, headers=headers,
                          properties=properties)
    assert list(frame.headers) == list(headers)  # the order of the wire
    assert wire.encode(frame).properties == base64.b64decode(vector["content_header"])


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_celerys_message_means_what_celery_meant(path: Path) -> None:
    vector = load(path)
    message = decode(wire.to_frame(received(vector)), default_registry())
    meaning = vector["meaning"]
    assert (message.task, message.id) == (meaning["task"], meaning["id"])
    assert list(message.args) == untag(meaning["args"])
    assert dict(message.kwargs) == untag(meaning["kwargs"])


def types_of(node: list[Any]) -> Any:
    kind, value = node
    if kind == "F":
        return ["F", {key: types_of(item) for key, item in value.items()}]
    if kind == "A":
        return ["A", [types_of(item) for item in value]]
    return kind


def wiretask_sends(name: str, args: tuple[Any, ...], **options: Any) -> dict[str, Any]:
    """The typed content header of wiretask's message for a call (no broker: the frame's
    publish bytes are py-amqp's, see test_amqp_wire.py)."""
    app = App("capture", broker="memory://", backend="memory://",
              accept_content=("json", "msgpack"))
    app.conf["task_default_queue"] = "capture.celery"
    call = app.build_call(name, args, **options)
    frame = encode(call.message, app.registry)
    typed: dict[str, Any] = fieldtable.read_properties(wire.encode(frame).properties)
    return typed


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    ours_headers = ours.pop("application_headers")[1]
    theirs_headers = theirs.pop("application_headers")[1]
    assert list(ours_headers) == list(theirs_headers)
    for key, node in theirs_headers.items():
        assert types_of(ours_headers[key]) == types_of(node), key
        if key not in VOLATILE:
            assert fieldtable.untyped(ours_headers[key]) == fieldtable.untyped(node), key
    if "priority" not in ours and theirs.get("priority") == ["o", 0]:
        # Kombu writes priority 0 for a call without one; wiretask leaves the property
        # out, which AMQP reads as 0 (the one difference, stated in spec/TRANSPORTS.md §6.2).
        del theirs["priority"]
    assert list(ours) == list(theirs)
    for key, (kind, value) in theirs.items():
        assert ours[key][0] == kind, key
        if key not in VOLATILE:
            assert ours[key][1] == value, key


def test_wiretask_sends_the_minimal_call_with_celerys_types() -> None:
    theirs = load(HERE / "celery-amqp-minimal.json")["typed"]
    compare(wiretask_sends("capture.add", (2, 3)), theirs)


def test_wiretask_sends_the_reference_call_with_celerys_types() -> None:
    theirs = load(HERE / "celery-amqp-reference.json")["typed"]
    app = App("capture", broker="memory://", backend="memory://")
    ours = wiretask_sends(
        "capture.add", (2, 2), countdown=10, expires=60,
        link=app.signature("capture.cb"), link_error=app.signature("capture.cb", (1,),
                                                                  immutable=True),
        headers={"x-str": "v", "x-int": 7, "x-big": 2**40, "x-neg": -3, "x-float": 1.5,
                 "x-bool": True, "x-none": None, "x-list": [1, "a", None],
                 "x-dict": {"k": [2]}},
        priority=5, time_limit=30, soft_time_limit=20, shadow="nice", retries=2,
    )
    compare(ours, theirs)


def test_the_native_delay_vector_is_what_wiretask_publishes_for_a_countdown() -> None:
    vector = load(HERE / "celery-amqp-native-delay.json")
    publish = vector["publish"]
    assert publish["exchange"] == "celery_delayed_27"
    digits, _, key = publish["routing_key"].partition(".capture")
    assert int(digits.replace(".", ""), 2) == 5 and key == ".celery"
    from wiretask._amqp import topology  # noqa: PLC0415 - the part under test

    assert publish["exchange"] == topology.TOP_LEVEL
    assert topology.delay_routing_key(5, "capture.celery") == publish["routing_key"]
    eta = datetime.fromisoformat(fieldtable.untyped(vector["typed"]["application_headers"])["eta"])
    assert eta.tzinfo is not None and eta - datetime.now(UTC) < timedelta(days=3650)
