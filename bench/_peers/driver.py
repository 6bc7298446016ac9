"""A library's client process: ``python -m _peers.driver MODULE DIST[,DIST...]``.

Run by ``bench/peers.py`` with the library's own interpreter (arq's venv for arq), one
process per library for the whole bench, so that each client keeps its connections warm
the way an application does and its CPU is measured apart from the harness and the
worker. It imports ``_peers.<MODULE>``, builds its ``Client`` and answers one JSON
command per line on stdin with one JSON line on stdout (the library's own output goes
to stderr):

``{"op": "enqueue", "n": N}``                N ``enqueue()`` calls, timed
``{"op": "batch", "n": B, "times": K}``      K ``batch(B)`` calls, timed
``{"op": "publish", "n": N}``                N messages by ``batch`` in chunks of
                                             ``BATCH`` (an end-to-end run), timed
``{"op": "queued"}``                         ``{"ok": true, "queued": k}``: what
                                             the library's queue holds
``{"op": "warmup"}``, ``{"op": "reset"}``, ``{"op": "close"}``

A timed reply is ``{"ok": true, "start": <time.monotonic()>, "wall": s, "cpu": s}``:
``cpu`` is this process's user + system time over the loop (``getrusage``). The
handshake (first line) carries the versions and the batch API. Errors come back as
``{"ok": false, "error": traceback}``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from _peers import BATCH


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Driver:
    """Runs the commands on a ``Client`` whose methods are plain or all ``async``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.is_async = inspect.iscoroutinefunction(client.enqueue)
        self.loop = asyncio.new_event_loop() if self.is_async else None

    def call(self, name: str, *args: Any) -> Any:
        result = getattr(self.client, name)(*args)
        if self.loop is not None:
            return self.loop.run_until_complete(result)
        return result

    def timed(self, name: str, count: int, *args: Any) -> dict[str, Any]:
        """``count`` calls of the client's ``name``, timed as one loop."""
        method: Callable[..., Any] = getattr(self.client, name)
        if self.loop is not None:

            async def loop() -> tuple[float, float, float]:
                cpu, start = _cpu(), time.monotonic()
                for _ in range(count):
                    await method(*args)
                return start, time.monotonic() - start, _cpu() - cpu

            start, wall, cpu = self.loop.run_until_complete(loop())
        else:
            cpu, start = _cpu(), time.monotonic()
            for _ in range(count):
                method(*args)
            wall, cpu = time.monotonic() - start, _cpu() - cpu
        return {"ok": True, "start": start, "wall": wall, "cpu": cpu}

    def publish(self, n: int) -> dict[str, Any]:
        """``n`` messages through ``batch``, in chunks of ``BATCH``, timed as one."""
        method = self.client.batch
        chunks = [min(BATCH, n - i) for i in range(0, n, BATCH)]
        if self.loop is not None:

            async def loop() -> tuple[float, float, float]:
                cpu, start = _cpu(), time.monotonic()
                for size in chunks:
                    await method(size)
                return start, time.monotonic() - start, _cpu() - cpu

            start, wall, cpu = self.loop.run_until_complete(loop())
        else:
            cpu, start = _cpu(), time.monotonic()
            for size in chunks:
                method(size)
            wall, cpu = time.monotonic() - start, _cpu() - cpu
        return {"ok": True, "start": start, "wall": wall, "cpu": cpu}

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "enqueue":
            return self.timed("enqueue", int(command["n"]))
        if op == "batch":
            return self.timed("batch", int(command["times"]), int(command["n"]))
        if op == "publish":
            return self.publish(int(command["n"]))
        if op == "queued":
            return {"ok": True, "queued": self.call("queued")}
        if op == "warmup":
            self.call("enqueue")
            return {"ok": True}
        if op in ("reset", "close"):
            self.call(op)
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")


def _versions(dists: str) -> dict[str, str]:
    versions = {}
    for dist in filter(None, dists.split(",")):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "?"
    return versions


def main() -> None:
    module_name, dists = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    replies: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # whatever the library prints stays out of the replies

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    try:
        module = importlib.import_module(f"_peers.{module_name}")
        driver = Driver(module.Client())
    except BaseException:
        reply({"ok": False, "error": traceback.format_exc()})
        return
    reply({"ok": True, "versions": _versions(dists), "batch_api": module.Client.batch_api,
           "python": platform.python_version()})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = driver.handle(command)
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        reply(answer)
        if command["op"] == "close":
            break


if __name__ == "__main__":
    main()
