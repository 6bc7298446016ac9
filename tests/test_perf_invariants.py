"""Invariants of the hot-path shortcuts the benchmarks led to (bench/README.md).

Each shortcut must give exactly what the plain code gave: these tests pin that down.
"""

from __future__ import annotations

import uuid

import pytest

from wiretask import calling
from wiretask.errors import ValidationError
from wiretask.retry import RetryPolicy


@pytest.mark.parametrize("raw", [bytes(16), b"\xff" * 16, bytes(range(16)), bytes(range(16, 32))])
def test_new_task_id_is_str_of_uuid4(raw: bytes) -> None:
    expected = str(uuid.UUID(bytes=raw, version=4))
    assert calling.new_task_id(lambda n: raw[:n]) == expected


def test_new_task_id_is_random_uuid4() -> None:
    ids = {calling.new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in list(ids)[:50]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_settings_policy_follows_the_setting() -> None:
    setting = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
    first = calling._settings_policy(setting)
    assert first == RetryPolicy.from_options(setting)
    assert calling._settings_policy(dict(setting)) is first
    setting["max_retries"] = 5
    assert calling._settings_policy(setting).max_retries == 5
    assert calling._settings_policy(None) == RetryPolicy()
    policy = RetryPolicy(max_retries=1)
    assert calling._settings_policy(policy) is policy


def test_settings_policy_compares_types_and_copies_lists() -> None:
    assert calling._settings_policy({"max_retries": 1}).max_retries == 1
    with pytest.raises(ValidationError):
        calling._settings_policy({"max_retries": True})
    errors: list[type[BaseException]] = [KeyError]
    assert calling._settings_policy({"retry_errors": errors}).retry_errors == (KeyError,)
    errors.append(OSError)
    assert calling._settings_policy({"retry_errors": errors}).retry_errors == (KeyError, OSError)


def test_settings_policy_refuses_what_from_options_refuses() -> None:
    with pytest.raises(ValidationError):
        calling._settings_policy({"max_retrys": 3})
    with pytest.raises(ValidationError):
        calling._settings_policy("fast")
