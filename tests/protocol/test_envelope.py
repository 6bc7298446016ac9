"""TaskMessage: validation on construction, normalisation, immutability."""

from __future__ import annotations

import ast
import copy
import inspect
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

import wiretask.protocol.envelope as envelope_module
from wiretask.errors import ArgumentsError, ValidationError
from wiretask.protocol.envelope import PROTOCOL_HEADERS, RESERVED_HEADERS, TaskMessage
from wiretask.protocol.signature import Signature

NOW = datetime(2026, 11, 23, 19, 29, 2, tzinfo=UTC)
SIG = Signature(task="cb")


def build(**fields: Any) -> TaskMessage:
    return TaskMessage(**{"task": "t", "id": "i", **fields})


def test_defaults() -> None:
    m = build()
    assert (m.lang, m.retries, m.timelimit, m.delivery_mode) == ("py", 0, (None, None), 2)
    assert m.args == () and m.kwargs == {} and m.stamps == {} and m.extra_headers == {}
    assert m.content_type == "application/json" and m.content_encoding == "utf-8"
    assert m.callbacks is None and m.chord is None and m.priority is None


def test_missing_or_unknown_keywords_are_type_errors() -> None:
    with pytest.raises(TypeError, match="task"):
        TaskMessage(id="i")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="bogus"):
        build(bogus=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task", ""),
        ("task", None),
        ("id", ""),
        ("id", 5),
        ("lang", ""),
        ("shadow", 1),
        ("eta", datetime(2030, 1, 1)),  # naive
        ("eta", "2030-01-01T00:00:00+00:00"),  # a string, not a datetime
        ("eta", datetime(1969, 12, 31, tzinfo=UTC)),
        ("expires", datetime(2030, 1, 1)),
        ("group", 1),
        ("group_index", -1),
        ("group_index", True),
        ("retries", -1),
        ("retries", 1.0),
        ("retries", None),
        ("timelimit", (1,)),
        ("timelimit", (1, 2, 3)),
        ("timelimit", ("1", None)),
        ("timelimit", (-1, None)),
        ("timelimit", (float("inf"), None)),
        ("timelimit", (True, None)),
        ("timelimit", None),
        ("root_id", 1),
        ("parent_id", 1),
        ("argsrepr", 1),
        ("kwargsrepr", 1),
        ("origin", 1),
        ("ignore_result", 1),
        ("ignore_result", None),
        ("replaced_task_nesting", -1),
        ("stamped_headers", "abc"),
        ("stamped_headers", [1]),
        ("stamps", [1]),
        ("stamps", {1: 2}),
        ("extra_headers", {"task": "x"}),
        ("extra_headers", {"compression": "zlib"}),
        ("extra_headers", {1: 2}),
        ("callbacks", "cb"),
        ("callbacks", [{"task": "cb"}]),
        ("errbacks", [SIG, 1]),
        ("chain", SIG),  # a chain is always a sequence
        ("chord", {"task": "cb"}),
        ("correlation_id", 1),
        ("reply_to", 1),
        ("priority", -1),
        ("priority", 256),
        ("priority", "5"),
        ("priority", True),
        ("delivery_mode", 0),
        ("delivery_mode", 2.0),
        ("delivery_mode", "persistent"),
        ("expiration", 60000),
        ("expiration", "-1"),
        ("expiration", "1.5"),
        ("content_type", ""),
        ("content_encoding", None),
        ("compression", ""),
        ("extra_properties", {"priority": 1}),
        ("extra_properties", []),
    ],
)
def test_invalid_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        build(**{field: value})
    assert info.value.field.split("[")[0] == field


@pytest.mark.parametrize(
    "fields", [{"args": "ab"}, {"args": None}, {"kwargs": [("a", 1)]}, {"kwargs": {1: 2}}]
)
def test_bad_args_and_kwargs_are_arguments_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ArgumentsError) as info:
        build(**fields)
    assert isinstance(info.value, TypeError)
    assert info.value.field in ("args", "kwargs")


def test_reserved_headers_are_the_protocol_headers_and_compression() -> None:
    assert set(PROTOCOL_HEADERS) | {"compression"} == RESERVED_HEADERS


def test_normalisation() -> None:
    m = build(args=[1, 2], timelimit=[5, None], stamped_headers=["a"], callbacks=SIG,
              errbacks=[SIG], chain=[SIG], kwargs=_ReadOnly({"a": 1}))
    assert m.args == (1, 2) and type(m.args) is tuple
    assert m.timelimit == (5, None) and type(m.timelimit) is tuple
    assert m.stamped_headers == ("a",)
    assert m.callbacks == (SIG,) and m.errbacks == (SIG,) and m.chain == (SIG,)
    assert type(m.kwargs) is dict and m.kwargs == {"a": 1}


class _ReadOnly(dict[str, Any]):
    """A Mapping that is not exactly a dict."""


def test_content_encoding_follows_content_type() -> None:
    assert build(content_type="application/x-msgpack").content_encoding == "binary"
    assert build(content_type="application/json").content_encoding == "utf-8"
    assert build(content_type="application/x-msgpack",
                 content_encoding="utf-8").content_encoding == "utf-8"


def test_frozen_and_evolve() -> None:
    m = build(eta=NOW)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.task = "x"  # type: ignore[misc]
    later = attrs.evolve(m, eta=NOW + timedelta(seconds=1), retries=2)
    assert later.retries == 2 and m.retries == 0
    assert later != m
    with pytest.raises(ValidationError):
        attrs.evolve(m, retries=-1)


def test_equality_is_by_value() -> None:
    assert build(args=[1], kwargs={"a": 1}) == build(args=(1,), kwargs={"a": 1})
    assert build(stamps={}) == build()


def test_shared_default_mappings_refuse_mutation() -> None:
    m = build()
    with pytest.raises(TypeError):
        m.kwargs["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        m.extra_headers.update(x=1)  # type: ignore[attr-defined]
    assert build().kwargs == {}


def test_typed_init_matches_the_fields() -> None:
    """The TYPE_CHECKING ``__init__`` (what mypy sees) lists every field with its default."""
    tree = ast.parse(inspect.getsource(envelope_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TaskMessage")
    typed = next(
        f for node in cls.body if isinstance(node, ast.If)
        for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    )
    names = [a.arg for a in typed.args.kwonlyargs]
    defaults = [None if d is None else ast.unparse(d) for d in typed.args.kw_defaults]
    fields: list[attrs.Attribute[Any]] = list(attrs.fields(TaskMessage))
    assert names == [f.name for f in fields]
    for field, default in zip(fields, defaults, strict=True):
        if field.default is attrs.NOTHING:
            assert default is None, field.name
        elif default == "_EMPTY":
            assert field.default == {}, field.name
        else:
            assert default is not None
            assert ast.literal_eval(default) == field.default, field.name


def test_pickle_and_copy_keep_the_value() -> None:
    m = build(args=(1, [2]), callbacks=SIG, eta=NOW)
    for clone in (pickle.loads(pickle.dumps(m)), copy.copy(m), copy.deepcopy(m)):
        assert clone == m
        assert clone.kwargs == {} and clone.stamps == {}
    deep = copy.deepcopy(m)
    assert deep.args[1] is not m.args[1]


def test_times_whose_utc_instant_overflows_are_refused() -> None:
    minus_one = timezone(timedelta(hours=-1))
    with pytest.raises(ValidationError) as info:
        build(expires=datetime(9999, 12, 31, 23, 30, tzinfo=minus_one))
    assert info.value.field == "expires"
    assert build(expires=datetime(9999, 12, 31, 22, 30, tzinfo=minus_one)).expires is not None


def test_default_forms_are_canonical() -> None:
    assert build(correlation_id="i") == build()
    assert build(correlation_id="i").correlation_id is None
    assert build(correlation_id="other").correlation_id == "other"
    assert build(reply_to="").reply_to is None
