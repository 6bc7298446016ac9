"""FastAPI: enqueue tasks and await their results from ``async def`` endpoints.

The asyncio API (``await add.adelay(...)``, ``await result.aget(...)``,
``async for meta in result.astates()``) never blocks the event loop: the publish, its
retry policy and the wait for the result are awaited, so one process serves many
requests while their tasks run on a worker. Run it (any broker; Redis shown)::

    export WIRETASK_BROKER_URL=redis://127.0.0.1:6379/0
    wiretask worker -A fastapi_app:tasks --pool asyncio   # in examples/
    uvicorn fastapi_app:api                                # in examples/, another shell

    curl -X POST 'localhost:8000/add?x=2&y=3'        # {"task_id": "..."}
    curl 'localhost:8000/results/<task_id>'          # {"state": "SUCCESS", "result": 5}
    curl -X POST 'localhost:8000/add/wait?x=2&y=3'   # {"result": 5}
    curl 'localhost:8000/countdown/3'                # every state change, then the end

``tasks`` is the wiretask app (the worker imports it); ``api`` the FastAPI app. The
lifespan closes the app's asyncio connections when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from wiretask import errors
from wiretask.app import App, Task

tasks = App("fastapi_app")


@tasks.task
def add(x: int, y: int) -> int:
    return x + y


@tasks.task(bind=True)
async def countdown(self: Task[Any, Any], start: int) -> str:
    """An ``async def`` task (``--pool asyncio`` runs many at once on one loop): it
    reports each step as a custom ``PROGRESS`` state."""
    for left in range(start, 0, -1):
        await self.aupdate_state(state="PROGRESS", meta={"left": left})
        await asyncio.sleep(0.05)
    return "lift-off"


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await tasks.aclose()  # this loop's broker and result connections


api = FastAPI(title="wiretask + FastAPI", lifespan=lifespan)


@api.post("/add")
async def enqueue_add(x: int, y: int) -> dict[str, str]:
    """Send ``add(x, y)`` and answer at once with its task id."""
    result = await add.adelay(x, y)
    return {"task_id": result.id}


@api.get("/results/{task_id}")
async def read_result(task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait (without blocking the server) for a task's result."""
    try:
        value = await tasks.AsyncResult(task_id).aget(timeout=timeout, propagate=False)
    except errors.TimeoutError as exc:
        raise HTTPException(status_code=504, detail=str(exc)) from None
    if isinstance(value, BaseException):
        return {"state": "FAILURE", "error": repr(value)}
    return {"state": "SUCCESS", "result": value}


@api.post("/add/wait")
async def add_and_wait(x: int, y: int) -> dict[str, Any]:
    """Send ``add(x, y)`` and answer with its result."""
    result = await add.adelay(x, y)
    return {"task_id": result.id, "result": await result.aget(timeout=10)}


@api.get("/countdown/{start}")
async def stream_countdown(start: int) -> StreamingResponse:
    """Send ``countdown(start)`` and stream its state changes as JSON lines."""
    result = await countdown.adelay(start)

    async def lines() -> AsyncIterator[str]:
        async with contextlib.aclosing(result.astates(timeout=30)) as states:
            async for meta in states:
                yield json.dumps({"state": meta["status"], "info": meta["result"]}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
