"""How deep a value nests, and the cheap proofs that it nests no deeper than a limit.

The *depth* of a value is the number of containers (``list``, ``tuple``, ``dict``) on
its deepest path: ``1`` is 0, ``[1]`` is 1, ``{"a": [[1]]}`` is 3. A task message's
body document and each of its header and property mappings nest at most
:data:`MAX_DEPTH` deep (spec §9, §11.3): deeper values are refused when decoded
(``DecodeError``) and when encoded (``EncodeError``), so that whatever decodes also
encodes, on every serializer, and no recursive walk (wiretask's, a serializer's) can
hit Python's recursion limit on a message.

Checking the depth is on the receive hot path, so each check starts with the cheapest
proof that applies and walks the decoded value (:func:`exceeds`, iterative, in
Python) only when none does:

* a document of ``n`` bytes nests at most ``n`` deep (every level costs a byte), so a
  body shorter than the limit needs no check at all (SMALL task bodies);
* JSON: the brackets outside strings are the structure, so the depth is the bracket
  nesting of the text with the strings taken out (:func:`json_depth_within`, a few
  passes of C string methods); a body with a bracket inside a string is walked;
* msgpack: its arrays are length-prefixed, so padding a body with ``1024 - limit``
  one-element arrays and letting the unpacker (whose stack holds exactly 1024 levels)
  refuse what is too deep checks the depth in C for a few microseconds
  (:func:`msgpack_loads_within`);
* encoding: ``orjson.dumps`` refuses anything deeper than 254 levels, so a value it
  wrote nests no deeper than that (the JSON encoder's fast path, and the msgpack key
  check that runs orjson on every value).

Every proof is probed once against the library it relies on (:func:`_probe`), so a
library release that changes those numbers turns the proof off, not the check.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable
from typing import Any, Final

import msgpack
import orjson

__all__ = [
    "MAX_DEPTH",
    "ORJSON_MAX_DEPTH",
    "exceeds",
    "json_depth_within",
    "msgpack_loads_within",
    "orjson_proves",
    "too_deep",
]

#: The deepest a task message's body document, or one of its header and property
#: mappings, may nest. orjson's encoder writes at most this many levels, so every
#: message wiretask sends on its fast path is within it; the standard-library JSON
#: encoder, msgpack's packer and wiretask's own walks handle it with room to spare
#: below Python's recursion limit; Kombu reads it.
MAX_DEPTH: Final = 254
#: The deepest value ``orjson.dumps`` writes (it raises past this).
ORJSON_MAX_DEPTH: Final = 254
#: The deepest document ``msgpack.unpackb`` reads (its C stack).
_MSGPACK_MAX_DEPTH: Final = 1024

_CONTAINERS: Final = (list, tuple, dict)


def too_deep(limit: int) -> str:
    """The problem text of a value nested deeper than ``limit``."""
    return f"nests deeper than {limit} levels (or contains itself)"


def exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists, tuples and dicts deeper than ``limit``.

    Iterative, one level at a time (no recursion, whatever the depth), and it stops
    as soon as it is past the limit; a container that holds itself counts as too deep.
    A container shared by several parents is visited once per level.
    """
    level: list[Any] = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: dict[int, Any] = {}
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, _CONTAINERS):
                    below[id(child)] = child
        level = list(below.values())
    return False


# -- JSON ----------------------------------------------------------------------------

# Keep only quotes and brackets; both bracket kinds become "[" and "]" (a valid JSON
# text nests its two kinds properly, so one kind gives the same depth).
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'"[]{}')
#: Past this many removal passes the text is walked instead (each pass is a scan).
_MAX_PASSES: Final = 16
#: Texts up to this long try a bracket count first (two scans, cheaper than a translate).
_COUNT_UP_TO: Final = 4096


def json_depth_within(data: bytes, limit: int) -> bool | None:
    """Whether the JSON text ``data`` nests at most ``limit`` deep: True when proven,
    False when proven deeper, None when this cannot tell (the caller walks the value).

    Exact for a valid JSON text without an escaped quote and without a bracket inside
    a string: its brackets are then its structure. Taking out the strings is
    ``replace(b'""', b'')`` on the text reduced to quotes and brackets: a string with
    no bracket is two adjacent quotes, and a string with one leaves a quote behind
    (the first of a run of such strings is preceded by a structural bracket, which
    leaves its opening quote unpaired). Each pass of ``replace(b"[]", b"")`` then takes
    away the innermost level.
    """
    if len(data) <= limit:
        return True
    # Counting brackets is one scan per kind; on a short text it settles most bodies.
    if len(data) <= _COUNT_UP_TO and data.count(b"[") + data.count(b"{") <= limit:
        return True
    if b"\\" in data:
        if b'\\"' in data.replace(b"\\\\", b""):
            return None
        data = data.replace(b"\\\\", b"")
    structure = data.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:
        return None
    for depth in range(min(limit, _MAX_PASSES) + 1):
        if not structure:
            return True
        if depth == limit:
            return False
        structure = structure.replace(b"[]", b"")
    return None


# -- msgpack -------------------------------------------------------------------------

_unwrap: Callable[[Any, int], Any] = functools.partial(functools.reduce, operator.getitem)


def msgpack_loads_within(data: bytes, limit: int, loads: Callable[[bytes], Any]) -> Any:
    """``loads(data)`` (a msgpack ``unpackb``), refusing a document deeper than
    ``limit`` with ``ValueError``.

    A body of at most ``limit`` bytes cannot nest deeper. Otherwise the body is read
    inside ``1024 - limit`` one-element arrays (``0x91``): a msgpack array states its
    length, so the padding holds exactly the body's one document, and the unpacker's
    1024-level stack refuses (``StackError``) exactly the bodies deeper than
    ``limit``. Without the probed stack size, the value is walked.
    """
    if len(data) <= limit:
        return loads(data)
    pad = _MSGPACK_MAX_DEPTH - limit
    if not (_probe().msgpack and pad > 0):
        value = loads(data)
        if exceeds(value, limit):
            raise ValueError(too_deep(limit))
        return value
    try:
        padded = loads(b"\x91" * pad + data)
    except msgpack.StackError:
        raise ValueError(too_deep(limit)) from None
    return _unwrap(itertools.repeat(0, pad), padded)


# -- probes --------------------------------------------------------------------------


class _Probed:
    """Which library limits hold as this module assumes."""

    def __init__(self) -> None:
        self.orjson = _orjson_limit_holds()
        self.msgpack = _msgpack_limit_holds()


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _orjson_limit_holds() -> bool:
    try:
        orjson.dumps(_nested(ORJSON_MAX_DEPTH))
    except orjson.JSONEncodeError:
        return False
    try:
        orjson.dumps(_nested(ORJSON_MAX_DEPTH + 1))
    except orjson.JSONEncodeError:
        return True
    return False


def _msgpack_limit_holds() -> bool:
    try:
        msgpack.unpackb(b"\x91" * _MSGPACK_MAX_DEPTH + b"\x00")
    except (msgpack.StackError, ValueError):
        return False
    try:
        msgpack.unpackb(b"\x91" * (_MSGPACK_MAX_DEPTH + 1) + b"\x00")
    except msgpack.StackError:
        return True
    return False


@functools.cache
def _probe() -> _Probed:
    return _Probed()


def orjson_proves(limit: int) -> bool:
    """Whether a value ``orjson.dumps`` wrote is known to nest at most ``limit`` deep."""
    return limit >= ORJSON_MAX_DEPTH and _probe().orjson
