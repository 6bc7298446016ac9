"""Fixtures of the control tests: transports of every bundled broker that can broadcast,
each made as many times as a test needs (the client and the worker keep their own)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wiretask.transports.base import Transport
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.sqlite import SQLiteTransport

Factory = Callable[[], Transport]


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(kind, url)`` of a fresh broker of each kind."""
    kind = request.param
    if kind == "memory":
        yield kind, f"memory://{uuid.uuid4().hex}"
    elif kind == "sqlite":
        yield kind, f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        yield kind, request.getfixturevalue("redis_url")


@pytest.fixture
def make_transport(broker: tuple[str, str]) -> Iterator[Factory]:
    """New connected transports to ``broker``, all closed after the test."""
    made: list[Transport] = []
    kind, url = broker
    classes: dict[str, Callable[[str], Transport]] = {
        "memory": MemoryTransport.from_url, "sqlite": SQLiteTransport.from_url,
        "redis": RedisTransport.from_url,
    }

    def make() -> Transport:
        transport = classes[kind](url)
        transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()
