"""Signature: Celery's dict form, decoding errors, and Celery's partial (clone) semantics."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from celery import Celery

from wiretask.errors import DecodeError, MalformedMessage, ValidationError
from wiretask.protocol.signature import SIGNATURE_KEYS, Signature


def test_to_dict_has_exactly_celerys_keys_in_order() -> None:
    sig = Signature(task="proj.add", args=(1, 2), options={"countdown": 5, "queue": "q"})
    assert sig.to_dict() == {
        "task": "proj.add",
        "args": [1, 2],
        "kwargs": {},
        "options": {"countdown": 5, "queue": "q"},
        "subtask_type": None,
        "immutable": False,
    }
    assert tuple(sig.to_dict()) == SIGNATURE_KEYS


def test_to_dict_matches_celery() -> None:
    app = Celery("sig", broker="memory://")
    theirs = dict(app.signature("proj.add", args=(1, 2), kwargs={"x": 1}, immutable=True)
                  .set(countdown=5))
    ours = Signature(task="proj.add", args=(1, 2), kwargs={"x": 1}, immutable=True,
                     options={"countdown": 5}).to_dict()
    assert {**theirs, "args": list(theirs["args"])} == ours
    assert list(theirs) == list(ours)


def test_chord_size_only_when_set_and_extra_keys_round_trip() -> None:
    assert "chord_size" not in Signature(task="t").to_dict()
    wire: dict[str, Any] = {
        "task": "t", "args": [], "kwargs": {}, "options": {}, "subtask_type": None,
        "immutable": False, "chord_size": 3, "x-future": {"a": 1},
    }
    sig = Signature.from_dict(wire)
    assert sig.chord_size == 3
    assert sig.extra == {"x-future": {"a": 1}}
    assert sig.to_dict() == wire


def test_from_dict_fills_defaults_like_celery() -> None:
    sig = Signature.from_dict({"task": "t", "args": None, "options": None})
    assert sig == Signature(task="t")


def test_nested_signatures_become_plain_dicts() -> None:
    inner = Signature(task="inner", args=(1,))
    chain = Signature(task="celery.chain", kwargs={"tasks": [inner, inner]},
                      subtask_type="chain", options={"link": inner})
    out = chain.to_dict()
    assert out["kwargs"]["tasks"] == [inner.to_dict(), inner.to_dict()]
    assert out["options"]["link"] == inner.to_dict()


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ([1, 2], "embed.callbacks[0]"),
        (None, "embed.callbacks[0]"),
        ({}, "embed.callbacks[0].task"),
        ({"task": 5}, "embed.callbacks[0].task"),
        ({"task": ""}, "embed.callbacks[0].task"),
        ({"task": "t", "args": "ab"}, "embed.callbacks[0].args"),
        ({"task": "t", "args": {"a": 1}}, "embed.callbacks[0].args"),
        ({"task": "t", "kwargs": [1]}, "embed.callbacks[0].kwargs"),
        ({"task": "t", "options": "q"}, "embed.callbacks[0].options"),
        ({"task": "t", "immutable": "yes"}, "embed.callbacks[0].immutable"),
        ({"task": "t", "subtask_type": 1}, "embed.callbacks[0].subtask_type"),
        ({"task": "t", "chord_size": "3"}, "embed.callbacks[0].chord_size"),
    ],
)
def test_from_dict_errors_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        Signature.from_dict(value, field="embed.callbacks[0]")
    assert info.value.field == field
    assert isinstance(info.value, DecodeError)


def test_building_a_bad_signature_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        Signature(task="")
    assert info.value.field == "task"
    with pytest.raises(ValidationError) as info:
        Signature(task="t", kwargs={1: 2})  # type: ignore[dict-item]
    assert info.value.field == "kwargs"
    with pytest.raises(ValidationError) as info:
        Signature(task="t", extra={"task": "x"})
    assert info.value.field == "extra"


class TestClone:
    def test_args_are_prepended_and_kwargs_merged(self) -> None:
        sig = Signature(task="t", args=(2,), kwargs={"a": 1})
        new = sig.clone((1,), {"b": 2})
        assert new.args == (1, 2)
        assert new.kwargs == {"a": 1, "b": 2}
        assert sig.args == (2,)  # the original is untouched

    def test_immutable_ignores_args_and_kwargs_but_merges_options(self) -> None:
        sig = Signature(task="t", args=("fixed",), immutable=True)
        new = sig.clone((5,), {"x": 1}, queue="q")
        assert new.args == ("fixed",)
        assert new.kwargs == {}
        assert new.options == {"queue": "q"}

    def test_none_options_are_dropped(self) -> None:
        sig = Signature(task="t", options={"queue": "a"})
        assert sig.clone(queue=None, priority=3).options == {"queue": "a", "priority": 3}

    def test_protected_options_are_not_overridden(self) -> None:
        sig = Signature(task="t", options={"group_id": "g1", "stamped_headers": ["s"], "s": 1})
        new = sig.clone(group_id="g2", s=2, stamped_headers=["x"], queue="q")
        assert new.options == {"group_id": "g1", "stamped_headers": ["s"], "s": 1, "queue": "q"}
        # ... but they may be added when absent
        assert Signature(task="t").clone(group_id="g").options == {"group_id": "g"}

    def test_matches_celery_clone(self) -> None:
        app = Celery("clone", broker="memory://")
        cases: list[tuple[dict[str, Any], tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
            ({"args": (2,), "kwargs": {"a": 1}}, (1,), {"b": 2}, {"queue": "q"}),
            ({"args": (2,), "immutable": True}, (1,), {"b": 2}, {"countdown": 3}),
            ({"options": {"group_id": "g1"}}, (), {}, {"group_id": "g2", "priority": 1}),
        ]
        for stored, args, kwargs, options in cases:
            theirs = app.signature("t", **stored).clone(args, kwargs, **options)
            ours = Signature(task="t", **stored).clone(args, kwargs, **options)
            assert ours.to_dict() == {**dict(theirs), "args": list(theirs["args"])}

    def test_subclass_and_its_fields_survive(self) -> None:
        @attrs.frozen(kw_only=True)
        class AppSignature(Signature):
            app: Any = attrs.field(default=None, eq=False)

        marker = object()
        sig = AppSignature(task="t", app=marker)
        new = sig.clone((1,), queue="q")
        assert type(new) is AppSignature
        assert new.app is marker
        assert new == AppSignature(task="t", args=(1,), options={"queue": "q"})
        assert type(AppSignature.from_dict({"task": "t"})) is AppSignature
