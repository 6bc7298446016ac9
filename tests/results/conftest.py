"""A factory per result backend, so that one contract suite runs against each."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wiretask.results import ResultBackend, backend_from_url

#: make(expires=...) -> a backend; every call in one test shares the same store.
Factory = Callable[..., ResultBackend]

KINDS = ["memory", "sqlite", "redis"]


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    raise AssertionError(kind)


@pytest.fixture(params=KINDS)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    url = _url(request.param, request, tmp_path)
    opened: list[ResultBackend] = []

    def make(**kwargs: object) -> ResultBackend:
        backend = backend_from_url(url, **kwargs)  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(make_backend: Factory) -> ResultBackend:
    return make_backend()
