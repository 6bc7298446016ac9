"""``examples/fastapi_app.py``: a FastAPI app that enqueues and awaits tasks, driven
through httpx's ASGI transport against a real worker process (``--pool asyncio``) on
the test Redis."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import httpx
import pytest

from .workers import EXAMPLES, worker_process


@pytest.fixture
def example(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("WIRETASK_BROKER_URL", redis_url)
    monkeypatch.delenv("WIRETASK_RESULT_BACKEND", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("fastapi_app", None)
    module = importlib.import_module("fastapi_app")
    with worker_process("fastapi_app:tasks", redis_url):
        yield module
    module.tasks.close()
    sys.modules.pop("fastapi_app", None)


@pytest.mark.asyncio
async def test_the_fastapi_example_enqueues_and_awaits(example: ModuleType) -> None:
    transport = httpx.ASGITransport(app=example.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        sent = await client.post("/add", params={"x": 2, "y": 3})
        assert sent.status_code == 200
        task_id = sent.json()["task_id"]
        read = await client.get(f"/results/{task_id}", params={"timeout": 30})
        assert read.json() == {"state": "SUCCESS", "result": 5}

        # Many requests at once, each sending and awaiting on the same loop.
        answers = await asyncio.gather(*[
            client.post("/add/wait", params={"x": n, "y": n}) for n in range(50)
        ])
        assert [a.json()["result"] for a in answers] == [2 * n for n in range(50)]

        # An async def task's state changes, streamed as they happen.
        streamed = await client.get("/countdown/3")
        lines = [json.loads(line) for line in streamed.text.splitlines()]
        assert lines[-1] == {"state": "SUCCESS", "info": "lift-off"}
        progress = [line["info"]["left"] for line in lines if line["state"] == "PROGRESS"]
        assert progress == [3, 2, 1][3 - len(progress):]  # a late subscriber: a suffix

        missing = await client.get("/results/never-sent", params={"timeout": 0.2})
        assert missing.status_code == 504
        assert "PENDING" in missing.json()["detail"]
    await example.tasks.aclose()
