"""The event sequences a wiretask worker must show to Celery's own ``EventReceiver`` and
``State``, the same over every broker: a successful, a failed, a retried and a revoked
task, the worker's heartbeats, and ``enable_events``/``disable_events``.

Each ``check_*`` takes the running ``CeleryCapture``, a wiretask app whose worker
(``NODE``, task events on) consumes its default queue, and asserts what Celery saw.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from events.capture import WAIT, CeleryCapture
from wiretask.app import App

#: The node name of the wiretask worker under test.
NODE = "wt-events@interop"

#: The fields every event carries, as Celery's ``EventDispatcher`` sends them.
COMMON = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type"}


def _common(event: dict[str, Any]) -> None:
    assert set(event) >= COMMON, event
    assert event["hostname"] == NODE
    assert isinstance(event["clock"], int)
    assert isinstance(event["utcoffset"], int)
    assert isinstance(event["pid"], int)
    assert abs(event["timestamp"] - time.time()) < 60


def check_success(capture: CeleryCapture, app: App) -> None:
    result = app.send_task("interop.add", (2, 3), kwargs={})
    assert result.get(timeout=WAIT) == 5
    capture.wait_type(result.id, "task-succeeded")
    assert capture.types_of(result.id) == ["task-received", "task-started", "task-succeeded"]
    received, started, succeeded = capture.events_of(result.id)
    for event in (received, started, succeeded):
        _common(event)
    assert received["name"] == "interop.add"
    assert received["args"] == "(2, 3)" and received["kwargs"] == "{}"
    assert received["retries"] == 0 and received["eta"] is None
    assert received["root_id"] == result.id and received["parent_id"] is None
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    assert received["clock"] < started["clock"] < succeeded["clock"]
    task = capture.state.tasks[result.id]
    assert task.state == "SUCCESS"
    assert task.name == "interop.add"
    assert task.result == "5"
    assert task.worker is not None and task.worker.hostname == NODE


def check_failure(capture: CeleryCapture, app: App) -> None:
    result = app.send_task("interop.fail", ("no luck",))
    capture.wait_type(result.id, "task-failed")
    assert capture.types_of(result.id) == ["task-received", "task-started", "task-failed"]
    failed = capture.events_of(result.id)[-1]
    _common(failed)
    assert failed["exception"] == "ValueError('no luck')"
    assert "ValueError: no luck" in failed["traceback"]
    task = capture.state.tasks[result.id]
    assert task.state == "FAILURE"
    assert task.exception == "ValueError('no luck')"


def check_retry(capture: CeleryCapture, app: App) -> None:
    result = app.send_task("interop.retry_once", (f"events:retry:{uuid.uuid4().hex}", 0.2))
    assert result.get(timeout=WAIT)["retries"] == 1
    capture.wait_type(result.id, "task-succeeded")
    types = capture.types_of(result.id)
    # Task.retry re-sends the message before the first run's outcome is reported, so
    # the copy's task-received may come before task-retried (so it may with Celery).
    assert sorted(types) == sorted([
        "task-received", "task-started", "task-retried",
        "task-received", "task-started", "task-succeeded",
    ]), types
    assert types[:2] == ["task-received", "task-started"], types
    assert types[-2:] == ["task-started", "task-succeeded"], types
    events = capture.events_of(result.id)
    retried = next(e for e in events if e["type"] == "task-retried")
    again = [e for e in events if e["type"] == "task-received"][1]
    assert retried["exception"].startswith("Retry(") or retried["exception"] == "None"
    assert "Retry" in retried["traceback"]
    assert again["retries"] == 1 and again["eta"] is not None
    task = capture.state.tasks[result.id]
    assert task.state == "SUCCESS" and task.retries == 1


def check_revoke(capture: CeleryCapture, app: App) -> None:
    # Revoked before it arrives: Celery's worker sends task-revoked only.
    early = str(uuid.uuid4())
    app.control.revoke(early, destination=[NODE], reply=True, timeout=5)
    app.send_task("interop.add", (1, 1), task_id=early)
    capture.wait_type(early, "task-revoked")
    # Revoked while held for its eta: received, then revoked.
    held = app.send_task("interop.add", (1, 2), countdown=60)
    capture.wait_type(held.id, "task-received")
    app.control.revoke(held.id, destination=[NODE], reply=True, timeout=5)
    capture.wait_type(held.id, "task-revoked")
    # Expired before it ran: revoked, with expired.
    expired = app.send_task("interop.add", (1, 3), expires=-1)
    capture.wait_type(expired.id, "task-revoked")
    # One more task to its end: nothing else arrives for the revoked ones meanwhile.
    assert app.send_task("interop.add", (0, 0)).get(timeout=WAIT) == 0
    time.sleep(0.3)
    assert capture.types_of(early) == ["task-revoked"]
    assert capture.types_of(held.id) == ["task-received", "task-revoked"]
    assert capture.types_of(expired.id) == ["task-revoked"]
    for task_id, expired_flag in ((early, False), (held.id, False), (expired.id, True)):
        revoked = capture.events_of(task_id)[-1]
        _common(revoked)
        assert revoked["terminated"] is False and revoked["signum"] is None
        assert revoked["expired"] is expired_flag
        assert capture.state.tasks[task_id].state == "REVOKED"


def check_heartbeats(capture: CeleryCapture) -> None:
    capture.wait_worker(NODE)
    beats = [e for e in capture.snapshot()
             if e["hostname"] == NODE and e["type"] in ("worker-online", "worker-heartbeat")]
    assert beats, "no worker event"
    for beat in beats:
        _common(beat)
        assert beat["sw_ident"] == "wiretask" and beat["sw_ver"] and beat["sw_sys"]
    periodic = [b for b in beats if b["type"] == "worker-heartbeat" and "active" in b]
    if periodic:
        beat = periodic[-1]
        assert beat["freq"] == 2.0
        assert isinstance(beat["active"], int) and isinstance(beat["processed"], int)
        assert len(beat["loadavg"]) == 3
    worker = capture.state.workers[NODE]
    assert worker.alive and worker.sw_ident == "wiretask"


def check_offline(capture: CeleryCapture) -> None:
    capture.wait(lambda: any(e["type"] == "worker-offline" and e["hostname"] == NODE
                             for e in capture.snapshot()), "worker-offline")
    assert not capture.state.workers[NODE].alive
