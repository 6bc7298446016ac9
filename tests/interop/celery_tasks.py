"""The Celery side of the interop tests: a Celery app and the tasks wiretask sends.

The tests start ``celery -A interop.celery_tasks worker`` as a subprocess with
``INTEROP_REDIS_URL`` pointing at the test Redis (broker and result backend; the broker is
``INTEROP_BROKER_URL`` instead when set, e.g. RabbitMQ, and ``INTEROP_CELERY_CONF`` is
JSON that updates the configuration), and use the
same module in-process as a *client* (``make_client``) to send tasks to wiretask's worker
and to read results with Celery's own ``AsyncResult``.

Task names are explicit and shared with ``interop.wiretask_tasks``, so the same name runs
on whichever side consumes the message.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_ready

#: Redis key the worker sets (to its pid) once it consumes: the fixture's readiness check.
READY_KEY = "interop:celery-worker-ready"
#: Counter the ordering tasks increment: the order in which a worker ran them.
SEQUENCE_KEY = "interop:sequence"
#: Longest time ``interop.progress`` waits for its gate.
GATE_WAIT = 10.0


def make_client(
    url: str, main: str = "interop-client", *, broker: str | None = None,
    conf: dict[str, Any] | None = None,
) -> Celery:
    """A Celery app configured like the worker's (result backend on ``url``, broker on
    ``broker`` or ``url``; ``conf`` updates the configuration)."""
    client = Celery(main, broker=broker or url, backend=url, set_as_current=False)
    client.conf.update(
        accept_content=["json", "msgpack"],
        result_accept_content=["json", "msgpack"],
        task_serializer="json",
        result_serializer="json",
        enable_utc=True,
        timezone="UTC",
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_create_missing_queues=True,
    )
    if conf:
        client.conf.update(conf)
    return client


REDIS_URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/14")
app = make_client(
    REDIS_URL, "interop",
    broker=os.environ.get("INTEROP_BROKER_URL"),
    conf=json.loads(os.environ.get("INTEROP_CELERY_CONF", "{}")),
)
_redis: list[redis.Redis] = []


def redis_client() -> redis.Redis:
    """The test Redis (counters, gates, readiness), whatever the result backend is
    (``rpc://`` has no Redis client of its own)."""
    if not _redis:
        _redis.append(redis.Redis.from_url(REDIS_URL))
    return _redis[0]


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.tsum")
def tsum(values: list[int]) -> int:
    """A chord body: the sum of the header's results."""
    return sum(values)


@app.task(name="interop.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """What arrived, so the sender can compare it with what it sent."""
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="interop.when", bind=True)
def when(self: Task) -> dict[str, Any]:
    """When it ran (unix seconds), the eta it was given, and its place in the run order."""
    return {
        "ran_at": time.time(),
        "eta": self.request.eta,
        "seq": int(redis_client().incr(SEQUENCE_KEY)),
        "priority": (self.request.delivery_info or {}).get("priority"),
        "exchange": (self.request.delivery_info or {}).get("exchange"),
    }


@app.task(name="interop.retry_once", bind=True)
def retry_once(self: Task, key: str, countdown: float) -> dict[str, Any]:
    """Retry once after ``countdown`` seconds (the Redis counter ``key`` counts the runs),
    then return when each run happened."""
    client = redis_client()
    client.rpush(key, time.time())
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return {"runs": [float(t) for t in client.lrange(key, 0, -1)],
            "retries": self.request.retries}


@app.task(name="interop.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="interop.errback")
def errback(task_id: str) -> dict[str, str]:
    """Old-style errback (one argument): Celery prepends the failed task's id."""
    return {"failed_task_id": task_id}


@app.task(name="interop.progress", bind=True)
def progress(self: Task, steps: int, gate: str) -> str:
    """Report ``steps`` PROGRESS states, then succeed. After the first one it waits
    (bounded) for the Redis key ``gate``, which the caller's ``on_message`` sets when
    that first state reaches it: the caller is then listening, and sees the rest as
    they happen (a condition, not a sleep)."""
    client = redis_client()
    for step in range(steps):
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
        if step == 0:
            deadline = time.monotonic() + GATE_WAIT
            while not client.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
    return "done"


@worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    # A warm shutdown is noticed between two turns of the worker's event loop, which
    # sleeps up to 10 s (kombu's Hub.fire_timers max_delay) when no timer is due soon:
    # on RabbitMQ, without heartbeats, every stop took 10 s. A timer that does nothing
    # every 0.2 s makes an idle worker stop at once; what it runs is unchanged.
    timer = getattr(sender, "timer", None)
    if timer is not None:
        timer.call_repeatedly(0.2, _wake)
    redis_client().set(READY_KEY, os.getpid())


def _wake() -> None:
    """The no-op the timer above runs."""
