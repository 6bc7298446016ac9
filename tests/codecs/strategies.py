"""Hypothesis strategies for codec values, reusable by other test packages.

``json_values()`` draws values that Kombu's JSON dialect round-trips to an *equal* value:
JSON scalars and containers (lists, str-keyed dicts) plus datetimes, dates, times, Decimals,
UUIDs and bytes, which travel as ``__type__`` markers. Tuples, non-str keys and NaN are left
out on purpose (they decode to lists, str keys and a value unequal to itself); tests for them
are explicit. ``msgpack_values()`` does the same for msgpack.
"""

from __future__ import annotations

from datetime import UTC, timedelta, timezone, tzinfo
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "aware_datetimes",
    "fixed_offsets",
    "json_scalars",
    "json_values",
    "msgpack_scalars",
    "msgpack_values",
    "unicode_text",
]


def fixed_offsets() -> st.SearchStrategy[tzinfo]:
    """UTC and whole-minute fixed offsets: what ``datetime.fromisoformat`` gives back."""
    minutes = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)
    return st.one_of(
        st.just(UTC),
        minutes.map(lambda m: timezone(timedelta(minutes=m))),
    )


def aware_datetimes() -> st.SearchStrategy[Any]:
    """Timezone-aware datetimes with fixed offsets."""
    return st.datetimes(timezones=fixed_offsets())


def unicode_text(*, surrogates: bool = False) -> st.SearchStrategy[str]:
    """Any text; with ``surrogates=True`` lone surrogates too (not encodable as UTF-8)."""
    if surrogates:
        return st.text(st.characters(codec=None, exclude_categories=()))
    return st.text()


def json_scalars() -> st.SearchStrategy[Any]:
    """Leaves Kombu's JSON dialect round-trips exactly, markers included."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # unbounded: ints beyond 64 bits must survive too
        st.floats(allow_nan=False),  # +/-inf are written as Infinity, as Kombu does
        unicode_text(surrogates=True),
        st.datetimes(),
        aware_datetimes(),
        st.dates(),
        st.times(),
        st.decimals(allow_nan=False),
        st.uuids(),
        st.binary(),
    )


def _not_marker_shaped(value: dict[str, Any]) -> bool:
    # A user dict with exactly these keys is read back as a marker (Kombu's rule too).
    return set(value) != {"__type__", "__value__"}


def json_values(*, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Nested lists and str-keyed dicts of :func:`json_scalars`."""
    return st.recursive(
        json_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(unicode_text(surrogates=True), children, max_size=5).filter(
                _not_marker_shaped
            ),
        ),
        max_leaves=max_leaves,
    )


def msgpack_scalars() -> st.SearchStrategy[Any]:
    """Leaves msgpack round-trips exactly with Kombu's options."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False),
        unicode_text(),
        st.binary(),
    )


def msgpack_values(*, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Nested lists and str- or bytes-keyed dicts of :func:`msgpack_scalars`."""
    keys = st.one_of(unicode_text(), st.binary())
    return st.recursive(
        msgpack_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(keys, children, max_size=5),
        ),
        max_leaves=max_leaves,
    )
