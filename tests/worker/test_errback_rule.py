"""Which errbacks run in the worker (``errback(request, exc, traceback)``) and which are
sent as tasks with the failed id: the exact rule of spec/PROTOCOL.md §17.5."""

from __future__ import annotations

from typing import Any

import pytest

from wiretask.app import App
from wiretask.protocol.signature import Signature
from wiretask.worker.links import errback_runs_in_worker

app = App("rule", broker="memory://errback-rule", backend="memory://errback-rule")


@app.task
def three(request: Any, exc: Any, tb: Any) -> None: ...


@app.task
def three_and_tag(request: Any, exc: Any, tb: Any, tag: str) -> None: ...


@app.task
def one(task_id: str) -> None: ...


@app.task
def one_and_tag(task_id: str, tag: str) -> None: ...


@app.task
def star(*args: Any) -> None: ...


@app.task
def keyword_only(task_id: str, *, tag: str = "") -> None: ...


@app.task(bind=True)
def bound_three(self: Any, request: Any, exc: Any, tb: Any) -> None: ...


@app.task(bind=True)
def bound_one(self: Any, task_id: str) -> None: ...


@pytest.mark.parametrize(
    ("sig", "in_worker"),
    [
        (three.s(), True),
        (three_and_tag.s("t"), True),       # 4 parameters, 1 filled by the signature
        (three_and_tag.s(tag="t"), True),   # ... or by its kwargs
        (one.s(), False),
        (one_and_tag.s("t"), False),        # Celery: arity 2 -> called in-worker, TypeError
        (one_and_tag.s(tag="t"), False),
        (star.s(), True),
        (keyword_only.s(), False),
        (bound_three.s(), True),            # self is not counted (Celery: always sent)
        (bound_one.s(), False),
        (three.si(), False),                # immutable: the failure fills nothing
        (Signature(task="not.registered.here"), False),
    ],
    ids=lambda value: value.task.rpartition(".")[2] if isinstance(value, Signature) else None,
)
def test_errback_convention(sig: Signature, in_worker: bool) -> None:
    assert errback_runs_in_worker(app, sig) is in_worker
