"""Hypothesis strategies for protocol values: signatures, task messages and hostile frames.

The values generated for arguments are the ones both built-in serializers round-trip
exactly (JSON in Kombu's dialect and msgpack): None, bools, 64-bit ints, finite floats,
text without lone surrogates, bytes, lists and str-keyed dicts. Dicts whose key set is
exactly ``{"__type__", "__value__"}`` are left out: that shape *is* Kombu's JSON marker.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from wiretask.protocol.envelope import PROPERTY_NAMES, RESERVED_HEADERS, TaskMessage
from wiretask.protocol.frame import Frame
from wiretask.protocol.signature import Signature

MARKER_KEYS = frozenset({"__type__", "__value__"})

# A small alphabet keeps generation fast while still covering what matters to codecs:
# ASCII, quotes and backslashes, NUL, Latin-1, BMP and astral characters.
ALPHABET = "az09 _.-\"\\\x00\x7féü☃值😀"
texts = st.text(st.sampled_from(ALPHABET), max_size=12)
names = st.text(st.sampled_from(string.ascii_lowercase + "._-"), min_size=1, max_size=12)
# Custom header / property / key names: the "x-" prefix keeps them clear of every reserved
# name without a (slow) filter.
custom_names = names.map(lambda name: f"x-{name}")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.binary(max_size=20)
)


def _not_marker(value: dict[str, Any]) -> bool:
    return value.keys() != MARKER_KEYS


values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(texts, children, max_size=3).filter(_not_marker),
    max_leaves=6,
)
kwargs_dicts = st.dictionaries(texts, values, max_size=3).filter(_not_marker)

# Fixed offsets, whole minutes, within a day: what isoformat() and fromisoformat() carry.
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1), timezones=offsets | st.just(UTC)
)
limits = st.none() | st.integers(min_value=0, max_value=10**6) | st.floats(
    min_value=0, max_value=1e6, allow_nan=False
)


@st.composite
def signatures(draw: st.DrawFn) -> Signature:
    """Signatures as Celery writes them, sometimes with chord_size and unknown keys."""
    extra = draw(st.dictionaries(custom_names, values, max_size=1))
    return Signature(
        task=draw(names),
        args=tuple(draw(st.lists(values, max_size=3))),
        kwargs=draw(kwargs_dicts),
        options=draw(st.dictionaries(names, values, max_size=3)),
        subtask_type=draw(st.none() | st.sampled_from(["chain", "group", "chord"])),
        immutable=draw(st.booleans()),
        chord_size=draw(st.none() | st.integers(min_value=0, max_value=100)),
        extra=extra,
    )


signature_tuples = st.none() | st.lists(signatures(), max_size=2).map(tuple)
optional_text = st.none() | texts


@st.composite
def task_messages(
    draw: st.DrawFn, *, content_type: str | None = None, rich: bool = True
) -> TaskMessage:
    """Valid task messages. ``compression`` is left unset; tests choose it (and
    ``content_type`` if not given here).

    With ``rich=False`` only the body (args, kwargs, callbacks, chord) varies: that is what
    serializers and compressors see, and it draws an example several times faster.
    """
    task_id = draw(names)
    fields: dict[str, Any] = {
        "task": draw(names),
        "id": task_id,
        "args": tuple(draw(st.lists(values, max_size=5))),
        "kwargs": draw(kwargs_dicts),
        "callbacks": draw(signature_tuples),
        "chord": draw(st.none() | signatures()),
    }
    if content_type is not None:
        fields["content_type"] = content_type
    if not rich:
        return TaskMessage(**fields)
    correlation_id = draw(st.none() | names.map(lambda c: f"{task_id}-{c}"))
    fields |= {
        "lang": draw(st.just("py") | names),
        "shadow": draw(optional_text),
        "eta": draw(st.none() | aware_datetimes),
        "expires": draw(st.none() | aware_datetimes),
        "group": draw(optional_text),
        "group_index": draw(st.none() | st.integers(min_value=0, max_value=1000)),
        "retries": draw(st.integers(min_value=0, max_value=100)),
        "timelimit": (draw(limits), draw(limits)),
        "root_id": draw(optional_text),
        "parent_id": draw(optional_text),
        "argsrepr": draw(optional_text),
        "kwargsrepr": draw(optional_text),
        "origin": draw(optional_text),
        "ignore_result": draw(st.booleans()),
        "replaced_task_nesting": draw(st.integers(min_value=0, max_value=5)),
        "stamped_headers": draw(st.none() | st.lists(names, max_size=3).map(tuple)),
        "stamps": draw(st.dictionaries(names, values, max_size=3)),
        "extra_headers": draw(st.dictionaries(custom_names, values, max_size=3)),
        "errbacks": draw(signature_tuples),
        "chain": draw(signature_tuples),
        "extra_embed": draw(st.dictionaries(custom_names, values, max_size=2)),
        "correlation_id": correlation_id,
        "reply_to": draw(st.none() | names),
        "priority": draw(st.none() | st.integers(min_value=0, max_value=255)),
        "delivery_mode": draw(st.sampled_from([1, 2])),
        "expiration": draw(st.none() | st.integers(min_value=0, max_value=10**9).map(str)),
        "extra_properties": draw(st.dictionaries(custom_names, values, max_size=2)),
    }
    return TaskMessage(**fields)


# -- hostile input -------------------------------------------------------------------------

PROTOCOL_NAMES = sorted(RESERVED_HEADERS)
CONTENT_TYPES = [
    "application/json",
    "application/x-msgpack",
    "application/data",
    "application/x-python-serialize",
    "application/x-yaml",
    "text/plain",
    "",
]
COMPRESSIONS = [
    "application/x-gzip", "zlib", "gzip", "application/x-bz2", "bzip2", "application/x-lzma",
    "xz", "application/zstd", "zstd", "application/x-brotli", "brotli", "nonsense",
]
anything: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=4),
    max_leaves=10,
)
header_maps = st.dictionaries(
    st.sampled_from(PROTOCOL_NAMES) | st.text(max_size=10),
    anything | st.text(max_size=40),
    max_size=8,
)
property_maps = st.dictionaries(
    st.sampled_from(sorted(PROPERTY_NAMES)) | st.text(max_size=10), anything, max_size=5
)


@st.composite
def arbitrary_frames(draw: st.DrawFn) -> Frame:
    """Frames with random bytes, random headers and random properties."""
    headers = draw(header_maps)
    if draw(st.booleans()):
        headers["compression"] = draw(st.sampled_from(COMPRESSIONS))
    return Frame(
        body=draw(st.binary(max_size=200)),
        content_type=draw(st.sampled_from(CONTENT_TYPES)),
        content_encoding=draw(st.sampled_from(["utf-8", "binary", "latin-1", "nope", ""])),
        headers=headers,
        properties=draw(property_maps),
    )
