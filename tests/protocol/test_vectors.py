"""The golden vectors in spec/vectors/, checked both ways.

* Every vector: ``decode(frame) == message``.
* ``direction: both`` vectors made by wiretask: ``encode(message)`` gives the frame byte for
  byte (body, headers and their order, properties and their order). For zstd and brotli the
  compressed bytes depend on the library version, so those compare the decompressed body
  byte for byte instead.
* ``direction: both`` vectors captured from Celery: ``encode(message)`` gives the same
  headers (same keys, same order, same values; ``eta``/``expires`` compared as instants,
  because Celery copies a string ``expires`` into the header verbatim while wiretask writes
  ``isoformat()``), the same properties, and a body that deserialises to the same value.
  JSON bodies are not byte-identical: Kombu writes ``", "``/``": "`` separators and escapes
  non-ASCII, wiretask writes compact UTF-8. msgpack bodies are byte-identical. Properties are
  compared as a mapping: Kombu puts unknown ``apply_async`` options before
  ``delivery_mode`` and ``priority`` last, wiretask puts extra properties last; no
  transport gives property order a meaning.
* ``invalid/``: decoding raises the named error class with the named field.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import wiretask.errors
from wiretask.codecs import default_registry
from wiretask.protocol import Frame
from wiretask.protocol.celery import decode, encode

from .vectors import VECTORS, vectorfile

REGISTRY = default_registry()
STABLE_COMPRESSED = {None, "application/x-gzip", "application/x-bz2", "application/x-lzma"}
VALID = vectorfile.load_all(VECTORS)
INVALID = vectorfile.load_all(VECTORS / "invalid")
# Protocol 1, the hybrid form and alias headers are read-only: wiretask writes protocol 2.
BOTH_WAYS = [(path, v) for path, v in VALID if v["direction"] == "both"]


def _ids(items: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return [path.stem for path, _ in items]


def _frame(vector: dict[str, Any]) -> Frame:
    return Frame(**vectorfile.frame_parts(vector["frame"]))


def _plain_body(frame: Frame) -> Any:
    body = frame.body
    if "compression" in frame.headers:
        body = REGISTRY.decompress(body, frame.headers["compression"])
    return body


def test_the_vector_set_is_complete() -> None:
    both = [v for _, v in VALID if v["direction"] == "both"]
    made = {(v["frame"]["content_type"], v["frame"]["headers"].get("compression"))
            for v in both if "wiretask" in v["source"]}
    for content_type in ("application/json", "application/x-msgpack"):
        for compression in sorted(STABLE_COMPRESSED | {"application/zstd",
                                                       "application/x-brotli"}, key=str):
            assert (content_type, compression) in made
    celery_made = [v for _, v in VALID if "celery" in v["source"]]
    assert len(celery_made) >= 15
    assert all(v["source"]["celery"] == "5.7.0" for v in celery_made)
    assert len(INVALID) >= 30
    names = {v["name"] for _, v in VALID}
    for needed in ("celery-protocol1", "wt-decode-hybrid", "wt-decode-protocol1",
                   "celery-chain", "celery-chord-header", "wt-link-link-error"):
        assert needed in names


@pytest.mark.parametrize(("path", "vector"), VALID, ids=_ids(VALID))
def test_decode_gives_the_message(path: Path, vector: dict[str, Any]) -> None:
    expected = vectorfile.message_from_json(vector["message"])
    decoded = decode(_frame(vector), REGISTRY)
    for name in vectorfile.MESSAGE_FIELDS:  # field by field, for a readable failure
        assert getattr(decoded, name) == getattr(expected, name), name
    assert decoded == expected


@pytest.mark.parametrize(("path", "vector"), BOTH_WAYS, ids=_ids(BOTH_WAYS))
def test_encode_gives_the_frame(path: Path, vector: dict[str, Any]) -> None:
    message = vectorfile.message_from_json(vector["message"])
    expected = _frame(vector)
    ours = encode(message, REGISTRY)
    assert (ours.content_type, ours.content_encoding) == (
        expected.content_type, expected.content_encoding,
    )
    assert ours.properties == expected.properties
    assert list(ours.headers) == list(expected.headers)
    if "wiretask" in vector["source"]:
        assert list(ours.properties.items()) == list(expected.properties.items())
        assert list(ours.headers.items()) == list(expected.headers.items())
        if expected.headers.get("compression") in STABLE_COMPRESSED:
            assert ours.body == expected.body
        assert _plain_body(ours) == _plain_body(expected)
        return
    for key, value in expected.headers.items():
        if key in ("eta", "expires") and value is not None:
            assert datetime.fromisoformat(ours.headers[key]) == datetime.fromisoformat(value)
        else:
            assert ours.headers[key] == value, key
    theirs_value = REGISTRY.loads(_plain_body(expected), expected.content_type,
                                  expected.content_encoding)
    ours_value = REGISTRY.loads(_plain_body(ours), ours.content_type, ours.content_encoding)
    assert ours_value == theirs_value
    if expected.content_type == "application/x-msgpack":
        assert _plain_body(ours) == _plain_body(expected)


@pytest.mark.parametrize(("path", "vector"), INVALID, ids=_ids(INVALID))
def test_invalid_vectors_raise_the_named_error(path: Path, vector: dict[str, Any]) -> None:
    error_class = getattr(wiretask.errors, vector["error"]["class"])
    with pytest.raises(error_class) as info:
        decode(_frame(vector), REGISTRY, accept=vector.get("accept"),
               max_size=vector.get("max_size"))
    assert type(info.value) is error_class
    assert info.value.field == vector["error"]["field"]


def test_vectors_are_what_make_vectors_writes(tmp_path: Path) -> None:
    """The committed wiretask vectors are current: regenerating changes nothing."""
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.HERE = tmp_path
    module.main()
    for fresh in sorted(tmp_path.rglob("*.json")):
        committed = VECTORS / fresh.relative_to(tmp_path)
        assert committed.read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), (
            f"{committed.name} is stale: run python spec/vectors/make_vectors.py"
        )
