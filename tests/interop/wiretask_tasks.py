"""The wiretask side of the interop tests: the same task names as ``interop.celery_tasks``,
run by wiretask's worker (in-process ``Worker`` or the ``wiretask worker`` command).

``make_app(url)`` builds an app on one Redis URL (broker and result backend);
``app`` is the one ``wiretask worker -A interop.wiretask_tasks:app`` loads, configured
from ``INTEROP_REDIS_URL``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from wiretask.app import App, Task

#: Counter the ordering tasks increment: the order in which a worker ran them.
SEQUENCE_KEY = "interop:sequence"
#: Redis list ``interop.slow`` pushes its task id to when it starts (and again on every
#: run): how a test sees that a task started, and how often.
STARTED_KEY = "interop:started"
#: Longest time ``interop.progress`` waits for its gate.
GATE_WAIT = 10.0


def make_app(url: str, main: str = "interop", *, broker: str | None = None) -> App:
    """A wiretask app with the interop tasks, broker and result backend on ``url``
    (whose query may hold transport options such as ``delay_mode``: the backend
    ignores them), or the broker on ``broker`` when given (e.g. RabbitMQ)."""
    app = App(main, broker=broker or url, backend=url, accept_content=("json", "msgpack"))
    client = redis.Redis.from_url(url.partition("?")[0])

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="interop.echo")
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    @app.task(name="interop.when", bind=True)
    def when(self: Task[Any, Any]) -> dict[str, Any]:
        eta = self.request.eta
        return {
            "ran_at": time.time(),
            "eta": eta.isoformat() if eta is not None else None,
            "seq": int(client.incr(SEQUENCE_KEY)),  # type: ignore[arg-type]
            "priority": (self.request.delivery_info or {}).get("priority"),
        }

    @app.task(name="interop.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="interop.errback")
    def errback(task_id: str) -> dict[str, str]:
        return {"failed_task_id": task_id}

    @app.task(name="interop.progress", bind=True)
    def progress(self: Task[Any, Any], steps: int, gate: str) -> str:
        """As Celery's ``interop.progress``: PROGRESS states, waiting for ``gate`` after
        the first."""
        for step in range(steps):
            self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
            if step == 0:
                deadline = time.monotonic() + GATE_WAIT
                while not client.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.01)
        return "done"

    @app.task(name="interop.retry_once", bind=True)
    def retry_once(self: Task[Any, Any], key: str, countdown: float) -> dict[str, Any]:
        """As Celery's ``interop.retry_once``."""
        client.rpush(key, time.time())
        if self.request.retries == 0:
            raise self.retry(countdown=countdown)
        return {"runs": [float(t) for t in client.lrange(key, 0, -1)],
                "retries": self.request.retries}

    @app.task(name="interop.slow", bind=True)
    def slow(self: Task[Any, Any], seconds: float) -> str:
        client.rpush(STARTED_KEY, str(self.request.id))
        time.sleep(seconds)
        return "slept"

    return app


app = make_app(os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/14"),
               broker=os.environ.get("INTEROP_BROKER_URL"))
