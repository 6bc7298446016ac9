"""wiretask._saferepr.safe_repr: the bounded repr of the argsrepr/kwargsrepr headers.

The module docstring states the rule; ``reference`` below is a plain, unoptimised
transcription of it (render everything, then cut). Every fast path of the module (the
top-level walk, sub-containers handed to the C ``repr``, runs of elements, runs of records
rendered from a template) must give exactly what ``reference`` gives, and small values
must give exactly ``repr``.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol.vectors import VECTORS, vectorfile
from wiretask._saferepr import MAX_LEVEL, MAX_STRING, safe_repr

# --- the rule, transcribed --------------------------------------------------------------

_BASES: list[tuple[type, str]] = [
    (str, "str"),
    (int, "int"),
    (dict, "dict"),
    (list, "list"),
    (tuple, "tuple"),
    (bytes, "bytes"),
    (bytearray, "bytearray"),
    (set, "set"),
    (frozenset, "set"),
]


def _kind(value: object) -> str:
    value_type = type(value)
    if value_type is bool:
        return "other"
    for base, name in _BASES:
        if isinstance(value, base):
            own: object = value_type.__repr__
            return name if own is base.__repr__ else "other"
    return "other"


def _leaf(value: Any, kind: str, limit: int) -> str:
    if kind == "other":
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__qualname__}>"
    if kind == "int":
        bits = int.bit_length(value)
        if bits <= 600 or bits * 3 <= limit * 10 + 6:
            try:
                return int.__repr__(value)
            except ValueError:
                pass
        return f"<int with {bits} bits>"
    if kind in ("str", "bytes"):
        base = str if kind == "str" else bytes
        if base.__len__(value) <= MAX_STRING:
            return repr(value)
        text = repr(base.__getitem__(value, slice(0, MAX_STRING)))
        return text[:-1] + "..." + text[-1]
    # bytearray
    if bytearray.__len__(value) <= MAX_STRING:
        return repr(value)
    text = repr(bytes(bytearray.__getitem__(value, slice(0, MAX_STRING))))
    return f"{type(value).__name__}({text[:-1]}...{text[-1]})"


def _pieces(value: Any, level: int, active: frozenset[int], limit: int) -> Iterator[str]:
    """The rendering of ``value`` at ``level``, piece by piece (so that ``reference`` can
    stop early on huge values; it is the same text as rendering everything)."""
    kind = _kind(value)
    if kind in ("other", "int", "str", "bytes", "bytearray"):
        yield _leaf(value, kind, limit)
        return
    if kind == "dict":
        size = dict.__len__(value)
    elif kind == "list":
        size = list.__len__(value)
    elif kind == "tuple":
        size = tuple.__len__(value)
    else:
        size = len(list(iter(value)))
    if size == 0:
        yield repr(value)
        return
    name = type(value).__name__
    if id(value) in active:
        yield {"list": "[...]", "tuple": "(...)", "dict": "{...}"}.get(kind, f"{name}(...)")
        return
    if kind == "set" and type(value) is not set:
        start, end = name + "({", "})"
    else:
        start, end = {"list": ("[", "]"), "tuple": ("(", ")")}.get(kind, ("{", "}"))
    if level > MAX_LEVEL:
        yield start + "..." + end
        return
    inner = active | {id(value)}
    yield start
    if kind == "dict":
        for index, (key, item) in enumerate(dict.items(value)):
            if index:
                yield ", "
            yield from _pieces(key, level + 1, inner, limit)
            yield ": "
            yield from _pieces(item, level + 1, inner, limit)
    else:
        if kind == "list":
            elements: Iterator[Any] = list.__iter__(value)
        elif kind == "tuple":
            elements = tuple.__iter__(value)
        else:
            elements = iter(value)
        for index, item in enumerate(elements):
            if index:
                yield ", "
            yield from _pieces(item, level + 1, inner, limit)
    yield ",)" if kind == "tuple" and size == 1 else end


def reference(value: object, limit: int = 1024) -> str:
    text = ""
    for piece in _pieces(value, 1, frozenset(), limit):
        text += piece
        if len(text) > limit:
            break
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." if limit >= 3 else "..."[:limit]


# --- helper types --------------------------------------------------------------------------


class Boom:
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


class NotAString:
    def __repr__(self) -> Any:
        return 42


class Tag(str):
    """A str subclass with its own repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Tag<{str.__str__(self)}>"


class PlainStr(str):
    """A str subclass that keeps str's repr."""

    __slots__ = ()


class MyList(list[Any]):
    pass


class MyDict(dict[Any, Any]):
    pass


class MySet(set[Any]):
    pass


class MyFrozen(frozenset[Any]):
    pass


class MyInt(int):
    pass


class MyBytes(bytearray):
    pass


class Color(IntEnum):
    RED = 1


Point = namedtuple("Point", "x y")


class Counted:
    """Counts its repr calls: how many elements a rendering touched."""

    calls = 0

    def __repr__(self) -> str:
        Counted.calls += 1
        return "c"


class CountingSet(set[Any]):
    """A set whose iteration (which set's repr uses) counts the elements it hands out."""

    pulled = 0

    def __iter__(self) -> Iterator[Any]:
        for item in set.__iter__(self):
            CountingSet.pulled += 1
            yield item


def depth(value: object) -> int:
    """Nesting depth in containers (a scalar 0, [1] 1, [[1]] 2)."""
    if isinstance(value, dict):
        return 1 + max((max(depth(k), depth(v)) for k, v in value.items()), default=0)
    if isinstance(value, list | tuple | set | frozenset):
        return 1 + max((depth(item) for item in value), default=0)
    return 0


# --- strategies ----------------------------------------------------------------------------

short_text = st.text(max_size=24)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | short_text
    | st.binary(max_size=24)
)
hashables = st.none() | st.booleans() | st.integers() | short_text | st.binary(max_size=8)

#: JSON-like values (plus tuples, bytes, sets) with short strings: small ones repr exactly.
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(short_text, children, max_size=5)
        | st.frozensets(hashables, max_size=4)
        | st.sets(hashables, max_size=4)
    ),
    max_leaves=20,
)

#: Odd leaves, made afresh for each example (hypothesis reprs sampled values, and Boom's
#: repr raises).
_ODD_LEAVES: list[Callable[[], object]] = [
    Boom,
    NotAString,
    lambda: Tag("tagged"),
    lambda: Tag("t" * 300),
    lambda: PlainStr("plain"),
    lambda: PlainStr("p" * 300),
    lambda: MyInt(7),
    lambda: Color.RED,
    lambda: Point(1, 2),
    lambda: 10**400,
    lambda: 10**1500,
    lambda: -(10**700),
    lambda: MyBytes(b"ab"),
    lambda: MyBytes(b"\x00" * 300),
    lambda: bytearray(b"z" * 250),
    lambda: b"\xff" * 250,
    lambda: "x" * 250,
    lambda: 'it\'s "quoted" \x00 \u2603' * 20,
    lambda: datetime(2030, 1, 2, tzinfo=UTC),
    lambda: 1.5,
    lambda: float("nan"),
    lambda: (),
    list,
    dict,
    set,
    frozenset,
    MyFrozen,
]
odd_leaves = st.integers(min_value=0, max_value=len(_ODD_LEAVES) - 1).map(
    lambda index: _ODD_LEAVES[index]()
)


def _records(draw: st.DrawFn) -> list[Any]:
    keys = draw(
        st.lists(
            st.sampled_from(["id", "name", "p%ce", "qty", "x'y"]),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    count = draw(st.integers(min_value=0, max_value=60))
    value = (
        scalars
        | st.just("v" * 250)
        | st.just("\x00" * 60)  # a repr four times the length: the budget underestimates
        | st.just([1, [2, [3]]])
        | st.just(2**100)
        | odd_leaves
    )
    records: list[Any] = []
    for _ in range(count):
        record = {key: draw(value) for key in keys}
        twist = draw(st.integers(min_value=0, max_value=12))
        if twist == 0:
            record = dict(reversed(record.items()))
        elif twist == 1:
            record["extra"] = 1
        elif twist == 2:
            record = {Tag(keys[0]) if i == 0 else k: v for i, (k, v) in enumerate(record.items())}
        elif twist == 3:
            record = {"".join(list(k)): v for k, v in record.items()}  # equal, not identical keys
        elif twist == 4:
            records.append(draw(scalars))
        records.append(record)
    return records


records = st.composite(_records)()

#: Anything: deep, wide, huge (repeated elements), odd types and subclasses.
anything = st.recursive(
    scalars | odd_leaves | st.text(max_size=400) | records,
    lambda children: (
        st.lists(children, max_size=8)
        | st.lists(children, max_size=8).map(tuple)
        | st.dictionaries(
            hashables | odd_leaves.filter(lambda v: v.__hash__ is not None), children, max_size=6
        )
        | st.builds(lambda item, n: [item] * n, children, st.integers(0, 3000))
        | st.builds(lambda item, n: tuple([item] * n), children, st.integers(0, 3000))
        | st.builds(MyList, st.lists(children, max_size=6))
        | st.builds(MyDict, st.dictionaries(short_text, children, max_size=6))
        | st.builds(MySet, st.sets(hashables, max_size=6))
        | st.builds(MyFrozen, st.sets(hashables, max_size=6))
        | st.builds(set, st.lists(hashables, max_size=400))
    ),
    max_leaves=30,
)


# --- small values: exactly repr -----------------------------------------------------------


@given(json_like)
def test_small_values_are_exactly_repr(value: object) -> None:
    assume(depth(value) <= MAX_LEVEL and len(repr(value)) <= 1024)
    assert safe_repr(value) == repr(value)


@given(json_like, st.integers(min_value=16, max_value=2000))
def test_small_values_are_exactly_repr_within_any_limit(value: object, limit: int) -> None:
    assume(depth(value) <= MAX_LEVEL and len(repr(value)) <= limit)
    assert safe_repr(value, limit) == repr(value)


@pytest.mark.parametrize(
    "value",
    [
        (42, "user@example.com", {"plan": "pro", "seats": 5, "trial": False, "tags": ["a", "b"]}),
        {"notify": True, "retries_left": 3},
        (),
        {},
        (None, 1.5, -(2**63), 2**64 - 1, "x" * 200, b"y" * 200, bytearray(b"z" * 200)),
        ({1, 2}, frozenset({3}), set(), frozenset(), ((), [], {})),
        ([["deep"]],),
        list(range(200)),  # longer than the unrolled top level, still short
        {f"key{i}": i for i in range(60)},
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),),
        ("héllo wörld ☃ 😀", "it's", 'say "hi"', "\x00\n\t"),
        (MyList([1]), MyDict(a=1), MySet({1}), MyFrozen({2}), MyInt(3), PlainStr("p")),
        (Tag("t" * 300), Point(1, 2), Color.RED, OrderedDict(a=1)),
        (10**180, -(10**180)),
    ],
)
def test_examples_are_exactly_repr(value: object) -> None:
    assert safe_repr(value) == repr(value)


# --- any value: the rule, and the bound -----------------------------------------------------


@given(anything, st.integers(min_value=16, max_value=3000))
def test_any_value_follows_the_rule(value: object, limit: int) -> None:
    got = safe_repr(value, limit)
    assert len(got) <= limit
    assert got == reference(value, limit)


@given(anything, st.integers(min_value=0, max_value=15))
def test_tiny_limits(value: object, limit: int) -> None:
    got = safe_repr(value, limit)
    assert len(got) <= limit
    assert got == reference(value, limit)


@given(records, st.integers(min_value=16, max_value=3000))
def test_lists_of_records_follow_the_rule(value: list[Any], limit: int) -> None:
    for shaped in (value, (value,), ([value],), {"rows": value}):
        assert safe_repr(shaped, limit) == reference(shaped, limit)


@given(st.integers(min_value=16, max_value=5000))
def test_huge_values_stay_within_the_limit(limit: int) -> None:
    for value in (
        list(range(100_000)),
        ("x" * 1_000_000,) * 100,
        dict.fromkeys(range(20_000), "v" * 100),
        [[[[[[[[1]]]]]]]] * 10_000,
        (b"\x00" * 1_000_000, bytearray(1_000_000)) * 20,
        frozenset(range(50_000)),
    ):
        got = safe_repr(value, limit)
        assert len(got) == limit
        assert got.endswith("...")


@pytest.mark.parametrize("limit", [16, 100, 1024])
def test_odd_corners_follow_the_rule(limit: int) -> None:
    wide = {f"k{i}": i for i in range(70)}  # too many keys for a record layout
    escaped = [{"a": "\x00" * 60, "b": 1}] * 40  # records whose reprs exceed the estimate
    for value in (
        {"k" * 300: 1},
        ({"k" * 300: 1},),
        [[{"k" * 300: 1}]],
        {"a": "v" * 300},
        {"a": 2**100},
        [{"a": 10**400}],
        {"a": list(range(1000))},
        {"a": [[["deep"]]]},
        [wide] * 30,
        (["x" * 150] * 6, *escaped),
        ["x" * 150] * 6 + escaped,
        escaped,
        [{}, {}, {"a": 1}, {"a": 1}, {"b": 1}, {"a": 1}] * 50,
        [{b"k" * 300: 1}],
        [Boom()] * 1000,
        list(range(40)) + [[1]] * 100,  # a flat head, then elements one by one
        (0.5,) * 40 + ("s",) * 40 + (None, 2**70) * 40,
        ["s" * 200] * 40,
        bytearray(b"ab"),
        b"ab",
        MyBytes(b"ab"),
    ):
        assert safe_repr(value, limit) == reference(value, limit)
    assert safe_repr({"a": 2**100}) == repr({"a": 2**100})
    assert safe_repr(escaped, 5000) == repr(escaped)[:4997] + "..."


def test_cut_output_ends_with_ellipsis() -> None:
    value = list(range(1000))
    got = safe_repr(value, 100)
    assert got == repr(value)[:97] + "..."


# --- cost: in proportion to the output -------------------------------------------------------


@pytest.mark.parametrize("limit", [16, 256, 1024, 4096])
def test_a_huge_list_touches_a_bounded_number_of_elements(limit: int) -> None:
    for value in (
        [Counted()] * 1_000_000,
        ([Counted()] * 1_000_000,),
        dict.fromkeys(range(100_000), Counted()),
        [{"k": Counted()}] * 100_000,
    ):
        Counted.calls = 0
        got = safe_repr(value, limit)
        assert len(got) == limit
        assert 0 < Counted.calls <= limit  # each rendered element adds at least 3 characters


def test_a_huge_set_is_iterated_only_as_far_as_rendered() -> None:
    value = CountingSet(range(200_000))
    CountingSet.pulled = 0
    got = safe_repr(value, 1024)
    assert len(got) == 1024
    assert got.startswith("CountingSet({")
    assert CountingSet.pulled <= 1024
    small = CountingSet({1, 2})
    assert safe_repr(small) == repr(small)


def test_records_touch_a_bounded_number_of_rows() -> None:
    rows = [{"id": i, "name": f"item-{i}", "obj": Counted()} for i in range(100_000)]
    Counted.calls = 0
    assert len(safe_repr((rows,), 1024)) == 1024
    assert Counted.calls <= 100


def test_the_large_benchmark_value() -> None:
    rows = [
        {
            "id": i,
            "name": f"item-{i}",
            "price": i * 1.25,
            "qty": i % 7,
            "sku": f"SKU{i:06d}",
            "active": i % 2 == 0,
        }
        for i in range(700)
    ]
    value = (rows,)
    got = safe_repr(value)
    assert got == repr(value)[:1021] + "..."
    assert got == reference(value)


# --- cycles ------------------------------------------------------------------------------------


def test_cycles_show_as_repr_shows_them() -> None:
    items: list[Any] = [1]
    items.append(items)
    assert safe_repr(items) == repr(items) == "[1, [...]]"
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    assert safe_repr(mapping) == repr(mapping) == "{'self': {...}}"
    inner: list[Any] = []
    outer = (inner,)
    inner.append(outer)
    assert safe_repr(outer) == repr(outer) == "([(...)],)"


def test_cycles_in_large_values_end() -> None:
    items: list[Any] = list(range(2000))
    items.append(items)
    items.insert(0, items)
    got = safe_repr(items, 1024)
    assert got.startswith("[[...], 0, 1, 2")
    assert len(got) == 1024
    assert safe_repr((items,) * 3, 100) == reference((items,) * 3, 100)


# --- __repr__ that raises ----------------------------------------------------------------------


def test_a_raising_repr_does_not_get_out() -> None:
    assert safe_repr(Boom()) == "<unrepresentable Boom>"
    assert safe_repr((1, Boom(), "x")) == "(1, <unrepresentable Boom>, 'x')"
    assert safe_repr({"a": [Boom()]}) == "{'a': [<unrepresentable Boom>]}"
    assert (
        safe_repr({Point(1, 2): NotAString()}) == "{Point(x=1, y=2): <unrepresentable NotAString>}"
    )
    big = [0] * 500 + [Boom()] + [1] * 500
    assert safe_repr(big, 4000) == reference(big, 4000)
    assert "<unrepresentable Boom>" in safe_repr(big, 4000)
    mapping = {i: (Boom() if i == 300 else i) for i in range(600)}
    assert safe_repr(mapping, 4000) == reference(mapping, 4000)


def test_a_raising_repr_of_the_value_itself() -> None:
    class Local:
        def __repr__(self) -> str:
            raise RuntimeError

    assert (
        safe_repr(Local())
        == "<unrepresentable test_a_raising_repr_of_the_value_itself.<locals>.Local>"
    )


class Shifty:
    """A key whose hash changes after it went into a dict: looking it up fails."""

    def __init__(self) -> None:
        self.hash = 1

    def __hash__(self) -> int:
        return self.hash

    def __repr__(self) -> str:
        return "Shifty"


def test_a_key_that_cannot_be_looked_up() -> None:
    key = Shifty()
    small = {key: 1}
    key.hash = 2
    with pytest.raises(KeyError):
        small[key]
    assert safe_repr(small) == repr(small) == "{Shifty: 1}"
    big = {key: 1} | {i: i for i in range(100)}
    key.hash = 3
    for value in (big, [small], ([small],), [big] * 10, {"a": big}):
        for limit in (20, 1024, 100_000):
            assert safe_repr(value, limit) == reference(value, limit)


# --- subclasses of the builtins ----------------------------------------------------------------


def test_a_str_subclass_with_its_own_repr_uses_it() -> None:
    assert safe_repr(Tag("x")) == "Tag<x>"
    assert safe_repr((Tag("x"),)) == "(Tag<x>,)"
    long_tag = Tag("t" * 300)  # its own repr, not cut to MAX_STRING
    assert safe_repr((long_tag,)) == f"(Tag<{'t' * 300}>,)"
    assert safe_repr({Tag("k"): 1}) == "{Tag<k>: 1}"


def test_subclasses_that_keep_the_builtin_repr() -> None:
    assert safe_repr(PlainStr("p" * 300)) == "'" + "p" * 200 + "...'"
    assert safe_repr(MyList([1, [2]])) == "[1, [2]]"
    assert safe_repr(MySet({1})) == "MySet({1})"
    assert safe_repr(MyFrozen({1})) == "MyFrozen({1})"
    assert safe_repr(MyFrozen()) == "MyFrozen()"
    assert safe_repr([[[MySet({1})]]]) == "[[[MySet({...})]]]"
    assert safe_repr(MyBytes(b"q" * 300)) == "MyBytes(b'" + "q" * 200 + "...')"
    assert safe_repr(MyInt(10**5000)) == "<int with 16610 bits>"
    assert safe_repr((True, Color.RED)) == "(True, <Color.RED: 1>)"


# --- strings, bytes, sets, ints ------------------------------------------------------------------


def test_long_strings_and_bytes_show_their_head() -> None:
    assert safe_repr("a" * 201) == "'" + "a" * 200 + "...'"
    assert safe_repr(("it's" * 100,)) == '("' + ("it's" * 100)[:200] + '...",)'
    assert safe_repr(b"\xff" * 300) == "b'" + "\\xff" * 200 + "...'"
    assert safe_repr(bytearray(b"b" * 300)) == "bytearray(b'" + "b" * 200 + "...')"
    assert safe_repr(("x" * 10**7,)) == "('" + "x" * 200 + "...',)"


def test_bytes_are_repr() -> None:
    value = (b"utf8 bytes", b"\xff\xfe\x00")
    assert safe_repr(value) == "(b'utf8 bytes', b'\\xff\\xfe\\x00')"


def test_sets_and_frozensets() -> None:
    assert safe_repr({1, 2, 3}) == repr({1, 2, 3})
    assert safe_repr(frozenset({"a"})) == "frozenset({'a'})"
    assert safe_repr([[[{1}], [frozenset({2})]]]) == "[[[{...}], [frozenset({...})]]]"
    assert safe_repr([[[set(), frozenset()]]]) == "[[[set(), frozenset()]]]"
    big = set(range(10_000))
    assert safe_repr(big, 300) == repr(big)[:297] + "..."


def test_big_ints() -> None:
    assert safe_repr(10**5000) == "<int with 16610 bits>"
    assert safe_repr((10**5000, 1)) == "(<int with 16610 bits>, 1)"
    assert safe_repr(-(10**1500)) == "<int with 4983 bits>"  # more digits than the limit
    assert safe_repr(10**1500, 2000) == str(10**1500)  # fits in this limit
    assert safe_repr(10**1500, 1400) == "<int with 4983 bits>"
    assert safe_repr(10**300) == str(10**300)  # 997 bits, 301 digits: in full
    assert safe_repr([10**300] * 100, 500) == repr([10**300] * 100)[:497] + "..."


def test_ints_python_refuses_to_convert() -> None:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        value = 10**700  # 2326 bits: could fit in 1024 characters, but repr raises
        with pytest.raises(ValueError):
            repr(value)
        assert safe_repr(value) == "<int with 2326 bits>"
        assert safe_repr([1, value]) == "[1, <int with 2326 bits>]"
    finally:
        sys.set_int_max_str_digits(before)


def test_deep_nesting_is_elided() -> None:
    assert safe_repr([[[[1]]]]) == "[[[[...]]]]"
    assert safe_repr(([[[1]]],)) == "([[[...]]],)"
    assert safe_repr({"a": {"b": {"c": {"d": 1}}}}) == "{'a': {'b': {'c': {...}}}}"
    assert safe_repr({"a": {"b": {"c": []}}}) == "{'a': {'b': {'c': []}}}"
    assert safe_repr(((((1,),),),)) == "((((...),),),)"


# --- golden vectors ---------------------------------------------------------------------------

CELERY_MADE = [
    (path.stem, vector)
    for path, vector in vectorfile.load_all(VECTORS)
    if "celery" in vector["source"] and vector.get("message", {}).get("argsrepr") is not None
]


def _has_bytes(value: object) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_bytes(v) for v in value)
    return False


@pytest.mark.parametrize(("name", "vector"), CELERY_MADE, ids=[name for name, _ in CELERY_MADE])
def test_celery_vectors(name: str, vector: dict[str, Any]) -> None:
    """What Celery put in argsrepr/kwargsrepr, for the calls it captured. Two known
    differences: an explicit ``argsrepr=`` option, and non-UTF-8 bytes, which Celery's
    saferepr shows as hex (``b'fffe00'``) where ``repr`` (and wiretask) shows escapes."""
    message = vector["message"]
    args = tuple(vectorfile.untag(message["args"]))
    kwargs = vectorfile.untag(message["kwargs"])
    assert safe_repr(kwargs) == message["kwargsrepr"]
    if "argsrepr=" in vector["source"]["call"]:
        return
    if _has_bytes(args):
        assert safe_repr(args) == repr(args)
        return
    assert safe_repr(args) == message["argsrepr"]


def test_there_are_celery_vectors() -> None:
    assert len(CELERY_MADE) > 10
