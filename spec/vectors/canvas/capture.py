"""Capture the canvas vectors from a real Celery: ``python spec/vectors/canvas/capture.py
redis://127.0.0.1:6379/9`` (the database is flushed before each call).

Each call of ``canvasfile.CASES`` is made by a Celery 5.7 client with Redis as broker and
result backend and no worker running; what it left on Redis (``canvasfile.snapshot``) is
normalized and written as ``<name>.json`` next to this file. Requires celery, kombu and
redis; imports nothing from wiretask.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import celery
import kombu
import redis
from celery import Celery, chain, chord, group

sys.path.insert(0, str(Path(__file__).resolve().parent))
import canvasfile  # a sibling module, found through the path set above


def make_app(url: str) -> Celery:
    app = Celery("capture", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True)

    @app.task(name="canvas.add", shared=False)
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name="canvas.tsum", shared=False)
    def tsum(values: Any) -> Any:
        return sum(values)

    return app


def main(url: str) -> None:
    client = redis.Redis.from_url(url)
    app = make_app(url)
    scope = {"add": app.tasks["canvas.add"], "tsum": app.tasks["canvas.tsum"],
             "chain": chain, "group": group, "chord": chord, "app": app}
    for name, call in canvasfile.CASES.items():
        client.flushdb()
        eval(call, dict(scope))  # noqa: S307 - the calls are this project's own constants
        snap = canvasfile.normalize(canvasfile.snapshot(client))
        canvasfile.write({
            "name": name,
            "call": call,
            "source": {"celery": celery.__version__, "kombu": kombu.__version__},
            **snap,
        }, canvasfile.HERE / f"{name}.json")
    client.flushdb()
    app.close()


if __name__ == "__main__":
    main(sys.argv[1])
