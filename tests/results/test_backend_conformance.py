"""The bundled result backends pass the public conformance kit (``check_backend``), and
backends that break a rule of ``results/base.py`` fail the check of that rule."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from wiretask.errors import ConnectionLost, TransportError
from wiretask.results import ResultBackend, backend_from_url
from wiretask.results.memory import MemoryBackend
from wiretask.testing import BACKEND_CHECKS, ConformanceError, check_backend, closed_port

from .conftest import KINDS, _url


@pytest.fixture
def locked_sqlite(tmp_path: Path) -> Iterator[Path]:
    """An SQLite file another connection holds the write lock of: a store that cannot be
    reached (busy past ``busy_timeout``), as when another process hogs it."""
    path = tmp_path / "locked.db"
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    yield path
    locker.close()


def broken(kind: str, locked: Path) -> Callable[[str], ResultBackend] | None:
    """Backends of ``kind`` that cannot reach their store (None: memory cannot break)."""
    if kind == "redis":
        return lambda password: backend_from_url(
            f"redis://:{password}@127.0.0.1:{closed_port()}/0")
    if kind == "sqlite":
        return lambda password: backend_from_url(
            f"sqlite:///{locked}", transport_options={"busy_timeout": 0.2})
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_every_bundled_backend_passes_every_check(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, locked_sqlite: Path
) -> None:
    url = _url(kind, request, tmp_path)
    report = check_backend(lambda expires: backend_from_url(url, expires=expires),
                           broken_factory=broken(kind, locked_sqlite))
    if kind == "memory":
        assert report.skipped == (
            ("deferred_store", "the backend does not offer DeferredStore (pending, "
                               "store_pending)"),
            ("error_translation", "no broken_factory given (a factory of a backend that "
                                  "cannot reach its store)"),
        ), report
        assert set(report.passed) == set(BACKEND_CHECKS) - {"deferred_store",
                                                            "error_translation"}
    elif kind == "sqlite":
        assert report.skipped == (
            ("deferred_store", "the backend does not offer DeferredStore (pending, "
                               "store_pending)"),
        ), report
    else:
        assert report.passed == BACKEND_CHECKS, report
    assert report.ran == report.passed
    assert report.transport == backend_from_url(url).url


class Faulty(MemoryBackend):
    """A memory backend with one rule broken, chosen by ``fault``."""

    def __init__(self, name: str, fault: str, expires: float | None) -> None:
        super().__init__(f"memory://{name}", expires=expires)
        self.fault = fault

    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        if self.fault == "last-wins":
            self.forget(task_id)
        if self.fault == "no-serializer" and isinstance(meta, Mapping):
            meta = {**meta, "result": repr(meta.get("result"))}
        super().store(task_id, meta)

    def get(self, task_id: str) -> dict[str, Any] | None:
        return super().get(task_id)

    def subscribe(self, task_id: str) -> Any:
        subscription = super().subscribe(task_id)
        if self.fault == "late-subscriber-misses-current":
            subscription._pending.clear()
        return subscription


@pytest.mark.parametrize(
    ("fault", "check", "problem"),
    [
        ("last-wins", "first_final_outcome_wins", "replaced it"),
        ("no-serializer", "result_serializer", "cannot carry (an object()) was stored"),
        ("late-subscriber-misses-current", "late_subscriber", "was not delivered"),
    ],
)
def test_a_broken_rule_fails_its_check(fault: str, check: str, problem: str) -> None:
    name = uuid.uuid4().hex
    with pytest.raises(ConformanceError) as info:
        check_backend(lambda expires: Faulty(name, fault, expires), only=[check], wait=0.5)
    assert info.value.check == check
    assert problem in info.value.problem


class Unreachable(MemoryBackend):
    """A backend whose store is down, with a translation that is wrong in one way."""

    def __init__(self, password: str, fault: str) -> None:
        super().__init__(f"memory://{uuid.uuid4().hex}")
        self.password = password
        self.fault = fault

    def _down(self) -> None:
        try:
            raise OSError(f"connection refused (user:{self.password}@127.0.0.1)")
        except OSError as exc:
            if self.fault == "escapes":
                raise
            if self.fault == "not-recoverable":
                raise TransportError(f"failed: {type(exc).__name__}") from exc
            if self.fault == "unchained":
                raise ConnectionLost("failed") from None
            raise ConnectionLost(f"failed: {exc}") from exc  # "leaks": shows the password

    def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
        self._down()

    def get(self, task_id: str) -> dict[str, Any] | None:
        self._down()
        return None


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("leaks", "store() on an unreachable store: the error shows the password"),
        ("escapes", "store() on an unreachable store let a driver error escape: OSError"),
        ("not-recoverable", "raised TransportError: failed: OSError; expected ConnectionLost"),
        ("unchained", "ConnectionLost is not chained (raise ... from) to the driver's error"),
    ],
)
def test_a_wrong_error_translation_fails(fault: str, problem: str) -> None:
    with pytest.raises(ConformanceError) as info:
        check_backend(lambda expires: MemoryBackend(f"memory://{uuid.uuid4().hex}"),
                      broken_factory=lambda password: Unreachable(password, fault),
                      only=["error_translation"])
    assert problem in info.value.problem


def test_a_result_that_outlives_its_expiry_fails() -> None:
    name = uuid.uuid4().hex

    class Immortal(MemoryBackend):
        def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
            expires, self.expires = self.expires, None
            try:
                super().store(task_id, meta)
            finally:
                self.expires = expires

    with pytest.raises(ConformanceError, match="still readable"):
        check_backend(lambda expires: Immortal(f"memory://{name}", expires=expires),
                      only=["expiry"], expires=0.2, wait=0.5)


def test_states_delivered_out_of_order_or_twice_fail() -> None:
    name = uuid.uuid4().hex

    class Stuttering(MemoryBackend):
        def store(self, task_id: str, meta: Mapping[str, Any]) -> None:
            super().store(task_id, meta)
            if meta.get("status") == "PROGRESS":
                for subscription in list(self._store.listeners.get(task_id, ())):
                    subscription._push(self.codec.encode(meta))

    with pytest.raises(ConformanceError) as info:
        check_backend(lambda expires: Stuttering(f"memory://{name}", expires=expires),
                      only=["every_state_once_in_order", "subscribe_before_any_state"],
                      fail_fast=False, states_in_a_row=5, wait=1)
    report = info.value.report
    assert report is not None
    assert [check for check, _ in report.failed] == [
        "subscribe_before_any_state", "every_state_once_in_order",
    ]
