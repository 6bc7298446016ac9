"""The canvas builders: the same expression builds the same signature dict in wiretask
and in Celery 5.7 (compared with Celery's own objects), the folding rules (a group
followed by a task is a chord, a group of one is its task), freezing, cloning, the
in-place changes Celery users rely on, and the refusals."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import celery
import pytest

from wiretask.app import App, AsyncResult
from wiretask.canvas import (
    GroupResult,
    TaskChain,
    TaskChord,
    TaskGroup,
    TaskSignature,
    chain,
    chord,
    chunks,
    group,
    result_from_tuple,
    signature,
    xmap,
    xstarmap,
)
from wiretask.errors import DecodeError, ValidationError

#: Expressions built with ``add``, ``tsum``, ``chain``, ``group``, ``chord`` in scope.
EXPRESSIONS = [
    "add.s(1, 2)",
    "add.si(1, 2).set(queue='q', priority=3)",
    "add.s(1) | add.s(2)",
    "add.s(1) | add.s(2) | add.s(3)",
    "chain(add.s(1), add.s(2), add.s(3))",
    "chain([add.s(1), add.s(2)])",
    "(add.s(1) | add.s(2)) | (add.s(3) | add.s(4))",
    "group(add.s(1), add.s(2))",
    "group([add.s(1), add.s(2)], queue='q')",
    "chord([add.s(1), add.s(2)], tsum.s())",
    "chord([add.s(1), add.s(2)])",
    "group(add.s(1), add.s(2)) | tsum.s()",
    "group(add.s(1), add.s(2)) | tsum.s() | add.s(5)",
    "add.s(1) | group(add.s(2), add.s(3))",
    "add.s(1) | group(add.s(2))",
    "add.s(1) | group()",
    "chain(add.s(1), group(add.s(2), add.s(3)), tsum.s())",
    "chain(add.s(1), group(add.s(2), add.s(3)), tsum.s(), group(add.s(4), add.s(5)), tsum.s())",
    "chord([add.s(1)], tsum.s()) | add.s(2)",
    "chord([add.s(1)], tsum.s()) | group(add.s(2))",
    "chord([add.s(1)], tsum.s()) | (add.s(2) | add.s(3))",
    "chord([add.s(1), chord([add.s(2)], tsum.s())], tsum.s())",
    "group(add.s(1), group(add.s(2), add.s(3)))",
    "group(add.s(1) | add.s(2), add.s(3))",
]


@pytest.fixture(scope="module")
def celery_app() -> Iterator[celery.Celery]:
    app = celery.Celery("builders", broker="memory://", backend="cache+memory://",
                        set_as_current=False)

    @app.task(name="canvas.add", shared=False)
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name="canvas.tsum", shared=False)
    def tsum(values: Any) -> Any:
        return sum(values)

    yield app
    app.close()


@pytest.fixture
def app() -> Iterator[App]:
    app = App("builders", broker="memory://builders", backend="memory://builders")

    @app.task(name="canvas.add")
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name="canvas.tsum")
    def tsum(values: list[Any]) -> Any:
        return sum(values)

    yield app
    app.close()


def build(expression: str, add: Any, tsum: Any, module: Any) -> Any:
    scope = {"add": add, "tsum": tsum, "chain": module.chain, "group": module.group,
             "chord": module.chord}
    return eval(expression, scope)


class _Celery:
    chain, group, chord = celery.chain, celery.group, celery.chord


class _Wiretask:
    chain, group, chord = chain, group, chord


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_the_same_expression_builds_celerys_dict(
    expression: str, app: App, celery_app: celery.Celery
) -> None:
    theirs = build(expression, celery_app.tasks["canvas.add"], celery_app.tasks["canvas.tsum"],
                   _Celery)
    ours = build(expression, app.tasks["canvas.add"], app.tasks["canvas.tsum"], _Wiretask)
    assert type(ours).__name__.lower().removeprefix("task") in (
        type(theirs).__name__.lower().lstrip("_"), "signature",
    )
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))
    assert ours.to_dict() == json.loads(json.dumps(theirs))


def test_a_received_dict_becomes_the_right_kind(app: App) -> None:
    add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
    for sig, kind in [
        (add.s(1) | add.s(2), TaskChain),
        (group(add.s(1), add.s(2)), TaskGroup),
        (chord([add.s(1)], tsum.s()), TaskChord),
        (add.s(1), TaskSignature),
    ]:
        rebuilt = signature(json.loads(json.dumps(sig)), app=app)
        assert type(rebuilt) is kind
        assert rebuilt == sig
    plain = signature(json.loads(json.dumps(add.chunks([(1, 1)], 1))), app=app)
    assert type(plain) is TaskSignature and plain.task == "celery.chunks"  # as Celery 5.7
    with pytest.raises(ValidationError, match="subtask_type") as info:
        signature({"task": "x", "subtask_type": "mystery"}, app=app)
    assert info.value.field == "subtask_type"


def test_freeze_gives_ids_as_celery_does(app: App) -> None:
    add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
    sig = add.s(1)
    result = sig.freeze()
    assert isinstance(result, AsyncResult) and result.id == sig.id
    assert set(sig.options) == {"task_id", "reply_to"}
    assert sig.freeze("other").id == result.id  # frozen once
    sig.freeze(group_id="g", root_id="r", parent_id="p", group_index=2, chord=tsum.s())
    assert (sig.options["group_id"], sig.options["root_id"], sig.options["parent_id"],
            sig.options["group_index"]) == ("g", "r", "p", 2)
    sig.freeze(group_id="g2")
    assert sig.options["group_id"] == "g"  # kept

    g = group(add.s(1), add.s(2))
    frozen = g.freeze()
    assert isinstance(frozen, GroupResult) and frozen.id == g.id
    assert g.options == {"task_id": g.id, "root_id": None, "parent_id": None}
    assert [t.options["group_index"] for t in g.tasks] == [0, 1]
    assert [r.id for r in frozen] == [t.id for t in g.tasks]

    c = chord([add.s(1), add.s(2)], tsum.s())
    body_result = c.freeze()
    assert body_result.id == c.body.id
    assert isinstance(body_result.parent, GroupResult) and body_result.parent.id == c.id
    assert all(task.options["chord"] is c.body for task in c.tasks.tasks)

    ch = add.s(1) | add.s(2) | add.s(3)
    last = ch.freeze()
    assert last.id == ch.tasks[-1].id == ch.id
    assert last.parent.id == ch.tasks[1].id and last.parent.parent.id == ch.tasks[0].id


def test_in_place_changes_and_copies(app: App) -> None:
    add, tsum = app.tasks["canvas.add"], app.tasks["canvas.tsum"]
    sig = add.si(1)
    assert sig.clone((5,), {"y": 2}).args == (1,)  # immutable: nothing prepended
    assert add.s(1).clone((5,), {"y": 2}) == add.s(5, 1, y=2)
    linked = add.s(1)
    linked.link(tsum.s())
    copied = linked.clone()
    copied.options["link"][0]["args"] = (99,)
    assert linked.options["link"][0].args == ()

    g = group(add.s(1), add.s(2))
    callback = g.link(tsum.s())
    assert callback.immutable and g.tasks[0].options["link"] == [callback]
    assert "link" not in g.tasks[1].options
    errbacks = g.link_error(tsum.s())
    assert len(errbacks) == 2 and all("link_error" in t.options for t in g.tasks)

    c = chord([add.s(1)], tsum.s())
    c.link(add.s(10))
    c.link_error(add.s(20))
    assert c.body.options["link"][0].task == "canvas.add"
    assert c.body.options["link_error"][0].args == (20,)
    assert "link" not in c.tasks[0].options

    frozen = chord([add.s(1)], tsum.s())
    frozen.freeze()
    deep = copy.deepcopy(frozen)
    assert isinstance(deep.tasks, TaskGroup) and deep == frozen


def test_refusals_name_what_is_wrong(app: App) -> None:
    add = app.tasks["canvas.add"]
    g = group(add.s(1))
    with pytest.raises(ValidationError) as info:
        g.apply_async(link=add.s(2))
    assert info.value.field == "link"
    with pytest.raises(ValidationError) as info:
        g.apply_async(link_error=add.s(2))
    assert info.value.field == "link_error"
    with pytest.raises(ValidationError) as info:
        chunks(add.s(), [(1, 1)], 0)
    assert info.value.field == "n"
    with pytest.raises(ValidationError, match="did you mean 'countdown'"):
        (add.s(1) | add.s(2)).apply_async(countdwn=3)
    with pytest.raises(ValidationError) as info:
        chord([add.s(1)]).apply_async()
    assert info.value.field == "body"


def test_map_starmap_and_chunks_are_celerys_builtin_signatures(app: App) -> None:
    add = app.tasks["canvas.add"]
    for sig, name in [(add.map([1, 2]), "celery.map"), (add.starmap([(1, 2)]),
                      "celery.starmap"), (add.chunks([(1, 2)], 1), "celery.chunks")]:
        assert sig.task == name and sig.immutable and sig.subtask_type is None
        assert sig.kwargs["task"] == add.s()
    assert isinstance(add.map([1]), xmap) and isinstance(add.starmap([(1,)]), xstarmap)
    parts = add.chunks([(i, i) for i in range(5)], 2).group()
    assert [len(p.kwargs["it"]) for p in parts.tasks] == [2, 2, 1]


def test_result_tuples_round_trip(app: App) -> None:
    parent = AsyncResult("p", app=app)
    child = AsyncResult("c", app=app, parent=parent)
    assert child.as_tuple() == (("c", (("p", None), None)), None)  # as Celery nests it
    members = GroupResult("g", [child, AsyncResult("d", app=app)], app=app)
    members.parent = parent
    value = json.loads(json.dumps(members.as_tuple()))
    rebuilt = result_from_tuple(value, app)
    assert isinstance(rebuilt, GroupResult) and rebuilt == members
    assert rebuilt.parent == parent and rebuilt.results[0].parent == parent
    assert rebuilt == "g" and str(rebuilt) == "g" and hash(rebuilt) == hash("g")
    with pytest.raises(DecodeError, match="result"):
        result_from_tuple(["g"], app)


def test_chain_with_keywords_is_not_folded_but_sends_the_same_chord(
    app: App, celery_app: celery.Celery
) -> None:
    def make(module: Any, add: Any, tsum: Any, owner: Any) -> Any:
        return module.chain(add.s(1), module.group(add.s(2), add.s(3)), tsum.s(), app=owner)

    theirs = make(_Celery, celery_app.tasks["canvas.add"], celery_app.tasks["canvas.tsum"],
                  celery_app)
    ours = make(_Wiretask, app.tasks["canvas.add"], app.tasks["canvas.tsum"], app)
    assert isinstance(ours, TaskChain) and isinstance(ours.tasks[1], TaskGroup)
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))
    # Sending upgrades the group and the task after it to a chord, as Celery's does.
    tasks, _ = ours.prepare_steps((), {}, ours.tasks)
    their_tasks, _ = theirs.prepare_steps((), {}, theirs.tasks, app=celery_app)
    assert [type(t).__name__ for t in tasks] == ["TaskChord", "TaskSignature"]
    assert [type(t).__name__ for t in their_tasks] == ["_chord", "Signature"]
    ours_chord, theirs_chord = tasks[0], their_tasks[0]
    assert set(ours_chord.options) == set(theirs_chord.options) == {"task_id", "root_id"}
