"""Serializers: turn a Python value into message-body bytes and back.

Each serializer is a :class:`Serializer` record (a name, the MIME content type written in the
message's ``content_type`` property, the ``content_encoding`` and a pair of functions). The
records here are immutable constants; nothing is registered anywhere until a
:class:`~wiretask.codecs.registry.Registry` is built with them.

The built-ins match Kombu 5.7's wire behaviour, so a Celery peer reads what wiretask writes and the
other way round:

* :data:`JSON` -- Kombu's JSON dialect (``{"__type__": ..., "__value__": ...}`` markers), fast via
  ``orjson`` with a standard-library fallback that is correct for every value.
* :data:`MSGPACK` -- ``msgpack`` with the options Kombu uses.
* :data:`RAW` -- bytes (or UTF-8 text) sent as they are, as Kombu's ``serializer='raw'``.
* :data:`PICKLE` -- only for registries that opt in explicitly; decoding pickle runs code.
"""

from __future__ import annotations

import base64
import enum
import json
import pickle
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from decimal import Decimal
from math import isfinite
from typing import Any, Final

import attrs
import msgpack
import orjson

from wiretask.codecs.nesting import (
    exceeds,
    json_depth_within,
    orjson_proves,
    too_deep,
)
from wiretask.codecs.nesting import msgpack_loads_within as _loads_within

__all__ = [
    "JSON",
    "JSON_CONTENT_TYPE",
    "MSGPACK",
    "MSGPACK_CONTENT_TYPE",
    "PICKLE",
    "PICKLE_CONTENT_TYPE",
    "RAW",
    "RAW_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "Serializer",
    "json_dumps",
    "json_dumps_within",
    "json_loads",
    "json_loads_within",
    "msgpack_dumps",
    "msgpack_dumps_within",
    "msgpack_loads",
    "msgpack_loads_within",
]

JSON_CONTENT_TYPE: Final = "application/json"
MSGPACK_CONTENT_TYPE: Final = "application/x-msgpack"
PICKLE_CONTENT_TYPE: Final = "application/x-python-serialize"
#: Kombu's content type for ``serializer='raw'`` and for bare bytes published without one.
RAW_CONTENT_TYPE: Final = "application/data"
#: Kombu's other always-trusted type; nothing in Kombu writes it, but it is accepted.
TEXT_CONTENT_TYPE: Final = "application/text"


@attrs.frozen
class Serializer:
    """A serialization format: how a value becomes body bytes, and back.

    Attributes:
        name: The name used in ``serializer=`` options (``"json"``).
        content_type: The MIME type written to the message's ``content_type`` property.
        content_encoding: The ``content_encoding`` written next to it (``"utf-8"`` for text
            formats, ``"binary"`` otherwise).
        dumps: Encodes a value to bytes. Any exception it raises becomes an
            :class:`~wiretask.errors.EncodeError` in :meth:`Registry.dumps`.
        loads: Decodes bytes to a value. Any exception it raises becomes a
            :class:`~wiretask.errors.DecodeError` in :meth:`Registry.loads`.
        aliases: Other names that select this serializer.
        passthrough: ``True`` when the body *is* the value (raw bytes or text). Such bodies are
            decoded by Kombu's charset rule instead of ``loads``: bytes when the message's
            ``content_encoding`` is ``binary``, otherwise text in that charset.
        loads_within: ``loads(data, limit)`` that also refuses (``ValueError``) a value
            nesting deeper than ``limit`` (``wiretask.codecs.nesting``), cheaper than a walk
            of the value. Optional: without it the registry walks what ``loads`` returned.
        dumps_within: the same for ``dumps``.
    """

    name: str
    content_type: str
    content_encoding: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    aliases: tuple[str, ...] = ()
    passthrough: bool = False
    loads_within: Callable[[bytes, int], Any] | None = None
    dumps_within: Callable[[Any, int], bytes] | None = None


# -- JSON, Kombu's dialect -------------------------------------------------------------------
#
# Kombu >= 5.3 (kombu/utils/json.py) wraps types the standard encoder cannot handle in a dict
# with exactly the keys "__type__" and "__value__", and its decoder's object_hook converts every
# dict with exactly that key set back (an unknown "__type__" is an error).
#
# Encoding strategy. orjson is several times faster than the standard library, but it does a
# few things that are *not* Kombu's dialect, and silently so:
#
# * uuid.UUID is written natively as a bare string (Kombu writes {"__type__": "uuid", ...});
# * NaN and +/-Infinity become ``null`` (the standard library, and so Kombu, writes the
#   non-standard tokens NaN/Infinity, which Kombu's decoder reads back as floats);
# * a plain enum.Enum is written as its value (Kombu refuses it with a TypeError);
# * with OPT_NON_STR_KEYS it formats float, datetime, UUID and Enum *keys* its own way (the
#   standard library refuses all but float, whose repr() can differ from orjson's text).
#
# It also raises for ints beyond 64 bits, lone surrogates in str and nesting deeper than 254,
# all of which the standard library handles. So each value is checked by a small walk
# (_orjson_safe) first; anything orjson would get wrong, and anything it raises on, is encoded
# by the standard-library encoder with the same marker hook instead. That path is exactly
# Kombu's encoder, so the fallback is correct by construction, and the fast path is taken
# only when orjson provably produces the same JSON value.

_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME  # datetime/date/time reach _orjson_default -> markers
    | orjson.OPT_PASSTHROUGH_DATACLASS  # Kombu does not serialize dataclasses: refuse them too
    | orjson.OPT_NON_STR_KEYS  # int/bool/None keys, written as the standard library does
)

# Scalar types both encoders write identically (exact types; subclasses take the slow check).
_PLAIN_SCALARS: Final = frozenset({str, int, bool, type(None)})
_PLAIN_KEYS: Final = frozenset({str, int, bool, type(None)})


class _NotSerializable(TypeError):
    """Raised by the marker hook for a value neither encoder can write."""


class _UseStdlib(Exception):
    """Raised inside orjson's ``default`` hook to abandon the fast path."""


def _marker(type_name: str, value: Any) -> dict[str, Any]:
    return {"__type__": type_name, "__value__": value}


def _encode_bytes(obj: bytes) -> dict[str, Any]:
    try:
        return _marker("bytes", obj.decode("utf-8"))
    except UnicodeDecodeError:
        return _marker("base64", base64.b64encode(obj).decode("ascii"))


# Exact builtin types (which have no __json__) straight to their marker, ahead of the
# isinstance chain below; this is what makes datetimes cheap on the fast path.
_EXACT_ENCODERS: Final[dict[type, Callable[[Any], Any]]] = {
    datetime: lambda obj: _marker("datetime", obj.isoformat()),
    date: lambda obj: _marker("date", obj.isoformat()),
    time: lambda obj: _marker("time", obj.isoformat()),
    Decimal: lambda obj: _marker("decimal", str(obj)),
    uuid.UUID: lambda obj: _marker("uuid", {"hex": obj.hex}),
    bytes: _encode_bytes,
}


def _kombu_default(obj: Any) -> Any:
    """The standard encoder's ``default`` hook: Kombu's ``JSONEncoder.default``, same order.

    ``__json__`` is consulted first (Celery signatures use it), then datetime before date
    (a datetime *is* a date), time, Decimal, UUID and bytes.
    """
    encoder = _EXACT_ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    if isinstance(obj, datetime):
        return _marker("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _marker("date", obj.isoformat())
    if isinstance(obj, time):
        return _marker("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _marker("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _marker("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes):
        return _encode_bytes(obj)
    raise _NotSerializable(f"Object of type {type(obj).__name__} is not JSON serializable")


def _orjson_default(obj: Any) -> Any:
    encoder = _EXACT_ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    # The standard encoder writes every tuple subclass (namedtuples) as an array and every
    # float subclass as a float before it would call its hook; orjson calls the hook.
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, float):
        return float(obj)  # finite: the pre-walk sent non-finite floats to the stdlib path
    result = _kombu_default(obj)
    # What __json__ returns is serialized by orjson without passing our pre-walk. (When this
    # abandons the fast path, the stdlib encoder calls __json__ once more; it should be pure.)
    if hasattr(obj, "__json__") and not _orjson_safe(result):
        raise _UseStdlib
    return result


def _orjson_safe(obj: Any) -> bool:
    """Whether orjson writes ``obj`` exactly as the standard library (Kombu's encoder) would.

    The hot loop checks the common scalar children inline, so only containers and unusual
    values cost a call.
    """
    kind = type(obj)
    if kind is dict:
        for key in obj:
            if type(key) not in _PLAIN_KEYS:
                return False
        children: Iterable[Any] = obj.values()
    elif kind is list or kind is tuple:
        children = obj
    else:
        return _orjson_safe_other(obj)
    for child in children:
        kind = type(child)
        if kind is str or kind is int or child is None or kind is bool:
            continue
        if kind is float:
            if isfinite(child):
                continue
            return False
        if not _orjson_safe(child):
            return False
    return True


def _orjson_safe_other(obj: Any) -> bool:
    # The slow half of the walk: scalars at the top, subclasses of builtins, everything else.
    kind = type(obj)
    if kind in _PLAIN_SCALARS or kind in _EXACT_ENCODERS:
        return kind is not uuid.UUID  # orjson writes exact UUIDs as bare strings
    if isinstance(obj, str | int):  # includes IntEnum/StrEnum: both encoders write the value
        return True
    if isinstance(obj, enum.Enum):  # orjson writes its value; Kombu refuses it
        return False
    if isinstance(obj, float):
        return isfinite(obj)
    if isinstance(obj, list | tuple):
        return all(map(_orjson_safe, obj))
    if isinstance(obj, dict):
        return all(
            type(key) in _PLAIN_KEYS and _orjson_safe(value) for key, value in obj.items()
        )
    # Anything else reaches _orjson_default, which turns it into markers or refuses it.
    return True


# Kombu's encoder is json.dumps with its JSONEncoder subclass and default settings; compact
# separators only change whitespace. ensure_ascii stays on so lone surrogates (which are not
# UTF-8) are written as \\uXXXX escapes, as Kombu does.
_STDLIB_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), default=_kombu_default)


def _stdlib_dumps(value: Any) -> bytes:
    try:
        return _STDLIB_ENCODER.encode(value).encode("ascii")
    except _NotSerializable as exc:
        raise TypeError(str(exc)) from None


def json_dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON in Kombu's dialect.

    Values Kombu's encoder cannot handle natively become ``{"__type__": T, "__value__": V}``
    markers: ``datetime``/``date``/``time`` (ISO 8601 text), ``Decimal`` (its string),
    ``UUID`` (``{"hex": ...}``) and ``bytes`` (``"bytes"`` with the UTF-8 text, or
    ``"base64"`` when the bytes are not UTF-8). Objects with a ``__json__()`` method are
    replaced by its result; tuples become arrays; int, bool and None dict keys become strings.

    Raises:
        TypeError: For values Kombu refuses too: sets, plain enums, dataclasses, arbitrary
            objects, and dicts with keys that are not str/int/float/bool/None.
        ValueError: For circular references.
    """
    return _json_dumps(value)[0]


def json_dumps_within(value: Any, limit: int) -> bytes:
    """:func:`json_dumps`, refusing a value nested deeper than ``limit``.

    What orjson wrote needs no check (it refuses anything deeper than 254 levels); what
    the standard library wrote is checked on its text, or walked.

    Raises:
        ValueError: The value nests deeper than ``limit``; and as :func:`json_dumps`.
        TypeError: As :func:`json_dumps`.
    """
    try:
        data, by_orjson = _json_dumps(value)
    except RecursionError:
        raise ValueError(too_deep(limit)) from None
    if by_orjson and orjson_proves(limit):
        return data
    within = json_depth_within(data, limit)
    if within is None:
        within = not exceeds(value, limit)
    if not within:
        raise ValueError(too_deep(limit))
    return data


def _json_dumps(value: Any) -> tuple[bytes, bool]:
    """The JSON text of ``value``, and whether orjson wrote it (see :func:`json_dumps`)."""
    try:
        safe = _orjson_safe(value)
    except RecursionError:  # deeper than Python's stack: the stdlib encoder decides
        safe = False
    if safe:
        try:
            return orjson.dumps(value, default=_orjson_default, option=_ORJSON_OPTIONS), True
        except orjson.JSONEncodeError as exc:
            if isinstance(exc.__cause__, _NotSerializable):
                raise TypeError(str(exc.__cause__)) from None
            # Big ints, lone surrogates, deep nesting, or _UseStdlib: the slow, exact path.
    return _stdlib_dumps(value), False


_MARKER_DECODERS: Final[dict[str, Callable[[Any], Any]]] = {
    # Kombu's decoders (kombu/utils/json.py), exactly: same functions, same leniency.
    "datetime": datetime.fromisoformat,
    "date": lambda value: datetime.fromisoformat(value).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda value: uuid.UUID(**value),
    "bytes": lambda value: value.encode("utf-8"),
    "base64": lambda value: base64.b64decode(value.encode("utf-8")),
}


def _decode_marker(obj: dict[str, Any]) -> Any:
    decoder = _MARKER_DECODERS.get(obj["__type__"])
    if decoder is None:
        # Kombu raises ValueError here too, which its registry turns into DecodeError.
        raise ValueError(f"unsupported __type__ marker {obj['__type__']!r}")
    return decoder(obj["__value__"])


def _object_hook(obj: dict[str, Any]) -> Any:
    return _decode_marker(obj) if obj.keys() == {"__type__", "__value__"} else obj


def _revive_markers(root: Any) -> Any:
    """Replace marker dicts in an orjson result, bottom-up like Kombu's ``object_hook``.

    Containers are fresh from orjson and not shared, so they are updated in place. Recursive:
    nesting deeper than Python's stack allows raises RecursionError, and :func:`json_loads`
    then lets the standard library decide.
    """
    kind = type(root)
    if kind is not dict and kind is not list:
        return root
    _revive_children(root)
    if kind is dict and len(root) == 2 and "__type__" in root and "__value__" in root:
        return _decode_marker(root)
    return root


def _revive_children(node: Any) -> None:
    if type(node) is dict:
        for key, child in node.items():
            kind = type(child)
            if kind is dict:
                if child:
                    _revive_children(child)  # a marker's own value first, as object_hook does
                    if len(child) == 2 and "__type__" in child and "__value__" in child:
                        node[key] = _decode_marker(child)  # same key: safe while iterating
            elif kind is list and child:
                _revive_children(child)
        return
    for index, child in enumerate(node):
        kind = type(child)
        if kind is dict:
            if child:
                _revive_children(child)
                if len(child) == 2 and "__type__" in child and "__value__" in child:
                    node[index] = _decode_marker(child)
        elif kind is list and child:
            _revive_children(child)


# A JSON string that decodes to "__type__" either contains those bytes literally or escapes
# one of its characters (_ t y p e) as \\u00XX; checking both keeps the fast path exact.
_ESCAPED_MARKER_CHAR: Final = re.compile(rb"\\u00(?:5[fF]|7[049]|65)")
# orjson reads integers outside [-2**63, 2**64) as floats, silently; the standard library
# keeps them exact. Any run of 19+ digits sends the document down the exact path. Mapping every
# digit to "0" and searching for nineteen of them is several times faster than re's [0-9]{19}.
_DIGITS_TO_ZERO: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))
_LONG_DIGIT_RUN: Final = b"0" * 19


#: A body longer than this is scanned for long digit runs a slice at a time, so the scan
#: does not copy a large body whole (the worker's memory bound, spec §9).
_SCAN_SLICE: Final = 1 << 20


def _long_digit_run(data: bytes) -> bool:
    """Whether ``data`` holds 19 digits in a row (see ``_LONG_DIGIT_RUN``)."""
    if len(data) <= _SCAN_SLICE:
        return _LONG_DIGIT_RUN in data.translate(_DIGITS_TO_ZERO)
    view = memoryview(data)
    overlap = len(_LONG_DIGIT_RUN) - 1
    for start in range(0, len(data), _SCAN_SLICE):
        part = bytes(view[start:start + _SCAN_SLICE + overlap])
        if _LONG_DIGIT_RUN in part.translate(_DIGITS_TO_ZERO):
            return True
    return False


def json_loads(data: bytes) -> Any:
    """Decode JSON written in Kombu's dialect, by Kombu or by :func:`json_dumps`.

    Dicts with exactly the keys ``__type__`` and ``__value__`` are converted back (datetime,
    date, time, decimal, uuid, bytes, base64); any other dict is left alone.

    Kombu <= 5.2 wrote datetimes, dates, UUIDs and Decimals as bare strings, without markers.
    Such documents decode fine, but those values stay strings: nothing on the wire says they
    were anything else, and guessing from the text would turn genuine strings into dates.

    Raises:
        ValueError: For malformed JSON (``orjson`` and ``json`` both raise subclasses) and for
            an unknown ``__type__``; ``TypeError``/``ValueError`` and friends for a marker whose
            value does not fit its type; ``UnicodeDecodeError`` for bytes that are not UTF-8.
    """
    if not _long_digit_run(data):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            # orjson refuses NaN/Infinity and lone surrogate escapes, which Kombu's decoder
            # reads; let the standard library decide.
            pass
        else:
            if b"__type__" not in data and (
                b"\\u00" not in data or _ESCAPED_MARKER_CHAR.search(data) is None
            ):
                return value
            try:
                return _revive_markers(value)
            except RecursionError:
                pass
    return json.loads(data.decode("utf-8"), object_hook=_object_hook)


def json_loads_within(data: bytes, limit: int) -> Any:
    """:func:`json_loads`, refusing a document nested deeper than ``limit``: proven on
    the text where it can be (``nesting.json_depth_within``: a short text, or one without
    a bracket inside a string), else by a walk of the value.

    Raises:
        ValueError: The document nests deeper than ``limit``; and as :func:`json_loads`.
    """
    try:
        value = json_loads(data)
    except RecursionError:  # deeper than the stdlib decoder's stack (orjson's is 1024)
        raise ValueError(too_deep(limit)) from None
    within = json_depth_within(data, limit)
    if within is None:
        within = not exceeds(value, limit)
    if not within:
        raise ValueError(too_deep(limit))
    return value


JSON: Final = Serializer(
    name="json",
    content_type=JSON_CONTENT_TYPE,
    content_encoding="utf-8",
    dumps=json_dumps,
    loads=json_loads,
    loads_within=json_loads_within,
    dumps_within=json_dumps_within,
)


# -- msgpack ---------------------------------------------------------------------------------


_packers = threading.local()


def msgpack_dumps(value: Any) -> bytes:
    """Encode ``value`` with msgpack as Kombu does (``use_bin_type=True``: bytes stay bytes).

    Raises:
        TypeError: For values msgpack cannot pack (datetimes, sets, objects).
        ValueError: For dicts with keys other than ``str`` or ``bytes``: Kombu's decoder
            (msgpack's default ``strict_map_key=True``) refuses them, so they are refused here
            rather than sent to a peer that cannot read them.
        OverflowError: For ints beyond 64 bits.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        # A Packer per thread: packb makes a new one per call (a third of a small
        # message's cost). A Packer resets its buffer after each pack, even one that raised.
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(value)
    if not _msgpack_keys_ok(value):
        raise ValueError(_BAD_KEYS)
    return packed


def msgpack_dumps_within(value: Any, limit: int) -> bytes:
    """:func:`msgpack_dumps`, refusing a value nested deeper than ``limit`` (the key
    check's orjson pass proves the depth for free when it succeeds).

    Raises:
        ValueError: The value nests deeper than ``limit``; and as :func:`msgpack_dumps`.
        TypeError, OverflowError: As :func:`msgpack_dumps`.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(value)
    problem = _msgpack_check(value, limit)
    if problem is not None:
        raise ValueError(problem)
    return packed


_BAD_KEYS: Final = "msgpack map keys must be str or bytes (Kombu's decoder refuses others)"


# Values msgpack packs that hold no dict: orjson's ``default`` hook lets them through.
_MSGPACK_LEAVES: Final = frozenset(
    {bytes, bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp}
)


def _msgpack_leaf(obj: Any) -> None:
    if type(obj) not in _MSGPACK_LEAVES:
        raise TypeError(type(obj).__name__)  # anything else: let the walk below decide


def _msgpack_keys_ok(root: Any) -> bool:
    """Whether every map key in ``root`` is ``str`` or ``bytes`` (see ``_msgpack_check``)."""
    return _msgpack_check(root, None) is None


def _msgpack_check(root: Any, limit: int | None) -> str | None:
    """What is wrong with ``root`` (already packed by msgpack) for a peer: a map key that
    is not ``str`` or ``bytes``, or (with ``limit``) nesting deeper than ``limit``; None
    when nothing is.

    The fast check is orjson: without ``OPT_NON_STR_KEYS`` it refuses any dict key that is
    not a ``str``, and it walks dicts, lists, tuples and their dict/list subclasses in C,
    handing everything else to ``_msgpack_leaf``, which passes only types that cannot hold
    a dict. So when it succeeds every key is a ``str`` and the value nests at most 254
    deep; when it raises for any reason (bytes keys, a namedtuple, nesting deeper than
    254, ...) the exact walk decides. The JSON it writes is thrown away; it costs a
    fraction of the Python walk.
    """
    try:
        orjson.dumps(root, default=_msgpack_leaf)
    except TypeError:
        pass
    else:
        if limit is None or orjson_proves(limit):
            return None
    if not _msgpack_keys_walk(root):
        return _BAD_KEYS
    if limit is not None and exceeds(root, limit):
        return too_deep(limit)
    return None


def _msgpack_keys_walk(root: Any) -> bool:
    # Iterative (any depth); a container inside itself is visited once.
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list | tuple):
            if id(node) in seen:
                continue
            seen.add(id(node))
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str | bytes):
                    return False
                stack.append(child)
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return True


def msgpack_loads(data: bytes) -> Any:
    """Decode msgpack as Kombu 5.7 does: ``unpackb(raw=False)``.

    msgpack's default ``strict_map_key=True`` applies, as in Kombu (which does not change it),
    so maps with keys other than str or bytes are refused rather than read. msgpack arrays come
    back as lists; the timestamp extension comes back as ``msgpack.Timestamp``.

    Raises:
        ValueError: For malformed or trailing data and refused keys (msgpack's own exception
            types subclass ``ValueError``); ``UnicodeDecodeError`` for invalid str payloads.
    """
    return msgpack.unpackb(data, raw=False)


def msgpack_loads_within(data: bytes, limit: int) -> Any:
    """:func:`msgpack_loads`, refusing a document nested deeper than ``limit``
    (``nesting.msgpack_loads_within``: the unpacker's own stack checks it).

    Raises:
        ValueError: The document nests deeper than ``limit``; and as :func:`msgpack_loads`.
    """
    return _loads_within(data, limit, msgpack_loads)


MSGPACK: Final = Serializer(
    name="msgpack",
    content_type=MSGPACK_CONTENT_TYPE,
    content_encoding="binary",
    dumps=msgpack_dumps,
    loads=msgpack_loads,
    loads_within=msgpack_loads_within,
    dumps_within=msgpack_dumps_within,
)


# -- raw -------------------------------------------------------------------------------------


def _raw_dumps(value: Any) -> bytes:
    # Kombu's raw_encode sends any non-str value untouched and lets the transport fail later;
    # wiretask refuses anything that is not bytes-like or str up front.
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"raw bodies must be bytes or str, not {type(value).__name__}")


def _raw_loads(data: bytes) -> bytes:
    return bytes(data)


RAW: Final = Serializer(
    name="raw",
    content_type=RAW_CONTENT_TYPE,
    content_encoding="binary",
    dumps=_raw_dumps,
    loads=_raw_loads,
    passthrough=True,
)


# -- pickle (explicit opt-in only) -----------------------------------------------------------

#: Kombu's default pickle protocol (its ``PICKLE_PROTOCOL`` environment variable aside):
#: protocol 4 is readable by every Python a Celery 5 peer runs on.
PICKLE_PROTOCOL: Final = 4


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


def _pickle_loads(data: bytes) -> Any:
    # Unrestricted, as in Kombu: whoever can publish can run code. That is why PICKLE
    # never enters a registry without an explicit opt-in (registry.enable_pickle).
    return pickle.loads(data)


PICKLE: Final = Serializer(
    name="pickle",
    content_type=PICKLE_CONTENT_TYPE,
    content_encoding="binary",
    dumps=_pickle_dumps,
    loads=_pickle_loads,
)
