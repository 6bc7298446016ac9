"""What is particular to the memory:// backend: named stores."""

from __future__ import annotations

import gc
import uuid

import pytest

from wiretask.errors import ImproperlyConfigured, TransportError
from wiretask.protocol.states import make_meta
from wiretask.results import backend_from_url
from wiretask.results.memory import MemoryBackend


def test_same_name_shares_other_names_do_not() -> None:
    name = uuid.uuid4().hex
    a, b = MemoryBackend(f"memory://{name}"), backend_from_url(f"memory://{name}")
    other = MemoryBackend(f"memory://{name}-other")
    a.store("t", make_meta("t", "PROGRESS", 1))
    assert b.get("t") == make_meta("t", "PROGRESS", 1)
    assert other.get("t") is None
    assert a.url == f"memory://{name}"


def test_default_store_is_shared() -> None:
    a, b = MemoryBackend(), backend_from_url("memory://")
    task_id = uuid.uuid4().hex
    a.store(task_id, make_meta(task_id, "PROGRESS", 1))
    assert b.get(task_id) is not None
    a.forget(task_id)


def test_a_store_lives_while_some_backend_uses_it() -> None:
    name = uuid.uuid4().hex
    a = MemoryBackend(f"memory://{name}")
    a.store("t", make_meta("t", "PROGRESS", 1))
    del a
    gc.collect()
    assert MemoryBackend(f"memory://{name}").get("t") is None


def test_closed_backend_refuses_use() -> None:
    backend = MemoryBackend(f"memory://{uuid.uuid4().hex}")
    backend.close()
    backend.close()
    with pytest.raises(TransportError, match="closed"):
        backend.get("t")


def test_wrong_scheme() -> None:
    with pytest.raises(ImproperlyConfigured):
        MemoryBackend("redis://localhost")
    with pytest.raises(ImproperlyConfigured):
        backend_from_url("memory://x", transport_options={"global_keyprefix": "p"})
