"""The user-facing signature behaves like Celery's: ``link``, ``link_error`` and ``set``
change it in place and return what Celery returns; ``|`` builds a chain."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from celery import Celery

from wiretask import App
from wiretask.canvas import TaskChain, TaskSignature, signature
from wiretask.errors import ValidationError

from .conftest import StartWorker, received


def tasks(app: App) -> Any:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task
    def report(task_id: str) -> str:
        return task_id

    return add, mul, report


def test_link_changes_the_signature_in_place_and_delay_sends_the_callback(app: App) -> None:
    add, mul, report = tasks(app)
    sig = add.s(2, 2)
    callback = mul.s(10)
    assert sig.link(callback) is callback  # Celery returns the callback
    assert sig.link_error(report.s()) is not None
    assert sig.options["link"] == [callback]
    sig.delay()
    message = received(app)
    assert message.callbacks is not None and message.errbacks is not None
    assert [s.to_dict() for s in message.callbacks] == [callback.to_dict()]
    assert message.errbacks[0].task == report.name
    assert sig.link(callback) is callback and sig.options["link"] == [callback]  # no twice


def test_set_changes_in_place_and_returns_the_signature(app: App) -> None:
    add, _, report = tasks(app)
    sig = add.s(1, 1)
    assert sig.set(priority=5, queue="q") is sig
    assert sig.on_error(report.s()) is sig
    assert sig.options["priority"] == 5
    assert sig.set(immutable=True) is sig and sig.immutable
    with pytest.raises(ValidationError, match="did you mean 'countdown'"):
        sig.set(countdwn=1)
    sig.apply_async((99,))
    message = received(app, "q")
    assert message.args == (1, 1)  # immutable: partial args are not prepended
    assert message.priority == 5
    assert message.errbacks is not None and message.errbacks[0].task == report.name


def test_clone_leaves_the_original_alone(app: App) -> None:
    add, mul, _ = tasks(app)
    sig = add.s(1)
    sig.link(mul.s(2))
    copy = sig.clone((5,), countdown=3)
    copy.link(mul.s(3))
    assert copy.args == (5, 1)
    assert len(sig.options["link"]) == 1 and "countdown" not in sig.options
    assert len(copy.options["link"]) == 2


def test_the_dict_is_celerys_and_celery_reads_it(app: App) -> None:
    add, mul, _ = tasks(app)
    sig = add.s(2, y=3).set(countdown=1)
    sig.link(mul.s(4))
    wire = json.loads(json.dumps(sig))
    assert list(wire) == ["task", "args", "kwargs", "options", "subtask_type", "immutable"]
    theirs = Celery("sig", broker="memory://", set_as_current=False).signature(wire)
    assert theirs.task == add.name and theirs.options["countdown"] == 1
    assert theirs.options["link"][0]["task"] == mul.name
    assert signature(wire, app=app).to_dict() == sig.to_dict() == wire
    assert isinstance(app.signature("remote.task", (1,), countdown=2), TaskSignature)
    assert app.signature("remote.task", countdown=2).options == {"countdown": 2}


def test_or_builds_a_chain_that_sends_the_rest_with_the_first(app: App) -> None:
    add, mul, _ = tasks(app)
    chain = add.s(2, 2) | mul.s(10) | mul.s(3)
    assert isinstance(chain, TaskChain) and len(chain.tasks) == 3
    result = chain.delay()
    first = received(app)
    assert first.task == add.name and first.args == (2, 2)
    assert first.chain is not None
    assert [s.task for s in first.chain] == [mul.name, mul.name]  # next task last
    assert first.chain[-1].args == (10,)
    assert result.id == first.chain[0].options["task_id"]  # the last task's result
    assert result.parent is not None and result.parent.parent is not None
    assert result.parent.parent.id == first.id


def test_a_chain_runs_on_a_worker_and_eagerly(app: App, start_worker: StartWorker) -> None:
    add, mul, _ = tasks(app)
    start_worker(app)
    assert (add.s(2, 2) | mul.s(10)).delay().get(timeout=10) == 40
    app.conf.task_always_eager = True
    result = (add.s(1, 1) | mul.s(5) | add.s(1)).apply_async()
    assert result.get() == 11
    assert result.parent is not None and result.parent.get() == 10


def test_copies_and_pickles_keep_a_working_signature(app: App) -> None:
    add, mul, _ = tasks(app)
    sig = add.s(1)
    sig.link(mul.s(2))
    for copied in (copy.copy(sig), copy.deepcopy(sig), pickle.loads(pickle.dumps(sig))):
        assert isinstance(copied, TaskSignature)
        assert copied.to_dict() == sig.to_dict()
        copied.link(mul.s(3))
        assert len(sig.options["link"]) == 1  # the original is untouched
    assert copy.copy(sig).app is app
