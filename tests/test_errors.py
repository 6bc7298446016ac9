"""The exception tree: one root, split by cause, with structured fields."""

from __future__ import annotations

import builtins

import pytest

from wiretask import errors


def test_every_public_error_descends_from_the_root() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.WiretaskError), name


def test_received_bytes_errors_are_decode_errors() -> None:
    assert issubclass(errors.ContentDisallowed, errors.DecodeError)
    assert issubclass(errors.MessageTooLarge, errors.DecodeError)


def test_fields_are_structured_and_named_in_the_message() -> None:
    err = errors.ValidationError("eta", "not an ISO 8601 date", value="garbage")
    assert (err.field, err.value) == ("eta", "garbage")
    assert str(err) == "eta: not an ISO 8601 date"

    big = errors.MessageTooLarge("body", limit=1024, size=4096)
    assert big.limit == 1024 and "1024" in str(big) and big.field == "body"

    refused = errors.ContentDisallowed("application/x-python-serialize")
    assert refused.content_type in str(refused)


def test_unknown_codec_lists_the_known_ones() -> None:
    err = errors.UnknownCodec("compressor", "lz5", ("zlib", "zstd"))
    assert isinstance(err, LookupError) and isinstance(err, errors.ValidationError)
    assert "lz5" in str(err) and "zstd" in str(err)


def test_publish_error_keeps_the_cause_and_attempts() -> None:
    cause = errors.ConnectionLost("refused", url="redis://127.0.0.1:1/0")
    err = errors.PublishError("publish failed", attempts=4, cause=cause, task_id="t1")
    assert err.attempts == 4 and err.cause is cause and cause.recoverable
    assert not errors.TransportError("x").recoverable


def test_timeout_error_is_also_the_builtin() -> None:
    err = errors.TimeoutError("abc", 1.5, "STARTED")
    assert isinstance(err, builtins.TimeoutError)
    assert "abc" in str(err) and "STARTED" in str(err)
    with pytest.raises(KeyError):
        raise errors.NotRegistered("proj.missing")
    assert str(errors.NotRegistered("proj.missing")) == "unregistered task 'proj.missing'"
