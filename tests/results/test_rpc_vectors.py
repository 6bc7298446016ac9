"""The ``rpc://`` reply vectors (``spec/vectors/amqp/celery-rpc-*.json``), captured from
Celery 5.7's rpc backend on RabbitMQ, checked both ways: wiretask reads what Celery sent
as the state Celery meant, and wiretask's reply for that state has Celery's content
header byte for byte and the same JSON body."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from wiretask.codecs import default_registry
from wiretask.protocol import states
from wiretask.results.base import MetaCodec
from wiretask.results.rpc import reply_message

HERE = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "amqp"
VECTORS = sorted(HERE.glob("celery-rpc-*.json"))
CODEC = MetaCodec(default_registry())


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    return vector


def test_there_are_vectors_for_every_kind_of_state() -> None:
    assert {load(p)["meaning"]["status"] for p in VECTORS} == {
        states.STARTED, "PROGRESS", states.SUCCESS, states.FAILURE}


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_wiretask_reads_celerys_reply(path: Path) -> None:
    vector = load(path)
    typed = vector["typed"]
    meta = CODEC.decode(base64.b64decode(vector["body"]), typed["content_type"][1],
                        typed["content_encoding"][1])
    assert meta == vector["meaning"]
    assert vector["publish"] == {"exchange": "",
                                 "routing_key": vector["source"]["request"]["reply_to"]}
    assert typed["correlation_id"][1] == vector["source"]["request"]["correlation_id"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_wiretasks_reply_is_celerys_bytes(path: Path) -> None:
    vector = load(path)
    meaning = vector["meaning"]
    # The worker's meta dict for the same state, built as wiretask's worker builds it.
    result: Any = meaning["result"]
    if meaning["status"] == states.FAILURE:
        result = ValueError(*meaning["result"]["exc_message"])
    meta = states.make_meta(meaning["task_id"], meaning["status"], result,
                            traceback=meaning["traceback"], date_done=meaning["date_done"])
    assert meta == meaning
    encoded = CODEC.encode(meta)
    message = reply_message(encoded, vector["source"]["request"]["correlation_id"],
                            persistent=False)
    assert message._serialize_properties() == base64.b64decode(vector["content_header"])
    # The body is the same JSON document, keys in the same order; only the separators
    # differ (wiretask writes compact JSON, PROTOCOL.md §7).
    theirs = json.loads(base64.b64decode(vector["body"]))
    ours = json.loads(message.body)
    assert ours == theirs and list(ours) == list(theirs)
