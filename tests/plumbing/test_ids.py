"""The one id generator (``wiretask._ids``): exactly ``str(uuid.uuid4())``'s form."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from wiretask import _ids, calling

RAW = [bytes(16), b"\xff" * 16, bytes(range(16)), bytes(range(16, 32)), bytes(range(0, 256, 16))]


@pytest.mark.parametrize("raw", RAW)
def test_new_id_is_the_text_of_uuid4_over_the_same_bytes(raw: bytes) -> None:
    assert _ids.new_id(lambda n: raw[:n]) == str(uuid.UUID(bytes=raw, version=4))


def test_new_ids_reads_the_random_source_once_and_cuts_it_as_new_id_does() -> None:
    reads: list[int] = []
    joined = b"".join(RAW)

    def urandom(n: int) -> bytes:
        reads.append(n)
        return joined[:n]

    assert _ids.new_ids(len(RAW), urandom) == [
        str(uuid.UUID(bytes=raw, version=4)) for raw in RAW
    ]
    assert reads == [16 * len(RAW)]
    assert _ids.new_ids(0) == []


@pytest.mark.parametrize("make", [lambda: [_ids.new_id() for _ in range(2000)],
                                  lambda: _ids.new_ids(2000)])
def test_ids_are_random_version_4_uuids(make: Callable[[], list[str]]) -> None:
    ids = make()
    assert len(set(ids)) == 2000
    for value in ids[:200]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value
    # Every variant digit occurs (the 2 random bits under the variant are used).
    assert {value[19] for value in ids} == set("89ab")


def test_task_ids_come_from_the_same_generator() -> None:
    assert calling.new_task_id is _ids.new_id
