"""wiretask's canvas leaves on Redis exactly what Celery 5.7's does (ids aside): the same
messages in the same order (headers, properties, body with its embed) and the same
result keys written before publishing (the chord size ``celery-taskset-meta-<id>.s``, a
saved header). The expected side is ``spec/vectors/canvas/*.json``, captured from a real
Celery by ``spec/vectors/canvas/capture.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from wiretask import App
from wiretask.canvas import chain, chord, group

from .vectors import canvasfile

pytestmark = pytest.mark.redis

VECTORS = canvasfile.load_all()


@pytest.fixture
def wire_app(redis_url: str) -> Iterator[App]:
    app = App("capture", broker=redis_url, backend=redis_url)

    @app.task(name="canvas.add")
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name="canvas.tsum")
    def tsum(values: Any) -> Any:
        return sum(values)

    yield app
    app.close()


def test_every_case_has_a_vector() -> None:
    assert sorted(v["name"] for v in VECTORS) == sorted(canvasfile.CASES)


@pytest.mark.parametrize("api", ["sync", "asyncio"])
@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_wiretask_sends_what_celery_sends(
    vector: dict[str, Any], wire_app: App, redis_url: str, api: str
) -> None:
    """Sent by the sync API, and by the asyncio one (``await sig.aapply_async(...)``,
    or ``App.asend_canvas`` around a call that sends, such as ``chord(...)(body)``):
    the same messages and keys."""
    scope = {"add": wire_app.tasks["canvas.add"], "tsum": wire_app.tasks["canvas.tsum"],
             "chain": chain, "group": group, "chord": chord, "app": wire_app}
    call: str = vector["call"]
    if api == "sync":
        eval(call, scope)
    else:
        head, found, tail = call.rpartition(".apply_async(")

        async def send() -> None:
            try:
                if found:
                    await eval(f"{head}.aapply_async({tail}", scope)
                else:
                    await wire_app.asend_canvas(lambda: eval(call, scope))
            finally:
                await wire_app.aclose()

        asyncio.run(send())
        assert wire_app._transport is None  # every message went through the loop's twin
    client = redis.Redis.from_url(redis_url)
    try:
        ours = canvasfile.normalize(canvasfile.snapshot(client))
    finally:
        client.close()
    assert ours["messages"] == vector["messages"]
    assert ours["keys"] == vector["keys"]
