"""A bounded ``repr`` that never fails, for the ``argsrepr``/``kwargsrepr`` headers.

Celery fills these headers with ``saferepr(args, 1024, maxlevels=3)``
(``celery.utils.saferepr``); ``safe_repr(value, limit)`` is wiretask's equivalent.

The rule
--------
The result is a *rendering* of ``value``, cut to ``limit`` characters::

    safe_repr(value, limit) == text if len(text) <= limit else text[: limit - 3] + "..."

``text`` is ``repr(value)`` except for the following replacements. None of them applies to
an ordinary small value (builtin containers nested at most three deep, strings and bytes
of at most 200 characters, no ``__repr__`` that raises), so for such a value whose
``repr`` fits in ``limit`` the result is exactly ``repr(value)``, which is what Celery
peers show and what the golden vectors in ``spec/vectors`` hold.

* A non-empty ``list``, ``tuple``, ``dict``, ``set`` or ``frozenset`` nested deeper than
  ``MAX_LEVEL`` (3; the top-level value is level 1) is shown as ``[...]``, ``(...)``,
  ``{...}``, ``{...}`` or ``frozenset({...})``, like Celery's ``maxlevels``.
* A container inside itself is shown the way ``repr`` shows it (``[1, [...]]``).
* A ``str``, ``bytes`` or ``bytearray`` longer than ``MAX_STRING`` (200) is shown by its
  first 200 characters or bytes, with ``...`` inside the quotes: ``'abc...'``.
* An ``int`` of more than 600 bits and more than ``10 * limit / 3`` bits (so more digits
  than ``limit``), or one that Python refuses to convert (``sys.set_int_max_str_digits``),
  is shown as ``<int with N bits>``.
* An object whose ``__repr__`` raises (or returns a non-string) is shown as
  ``<unrepresentable TypeName>``.

A subclass of a builtin that keeps the builtin's ``__repr__`` is rendered like the builtin
(``set`` and ``frozenset`` subclasses, and ``bytearray`` ones, with their type name, as
``repr`` does). Anything with its own ``__repr__`` (a ``str`` subclass with one, a named
tuple, ``OrderedDict``, ``datetime``) is shown by calling it; its cost is its own.

Unlike Celery's ``saferepr``, strings and bytes are quoted as ``repr`` quotes them (Celery
shows ``"it's"`` as ``'it\\'s'`` and ``b'\\xff'`` as ``b'ff'``), and a cut rendering does not
close its brackets.

Cost
----
Rendering stops once more than ``limit`` characters are out, so a huge argument costs
time in proportion to ``limit``, not to its size. Where it can, the work is left to C: a
walk (exact-type tests first, one step per element, with a budget of characters) proves
that the ``repr`` of a value equals its rendering and is short, and then ``repr`` renders
it. ``safe_repr`` walks the value first and, if that passes, returns its ``repr``
directly; otherwise the renderer goes down the value, handing runs of elements that pass
the walk to one ``repr``, slices of a long list of plain scalars to one ``repr`` each, and
runs of records (dicts with the same string keys) to one ``%`` of a template.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from operator import is_
from typing import Any, Final

__all__ = ["MAX_LEVEL", "MAX_STRING", "safe_repr"]

#: Containers nested deeper than this are elided (Celery's ``task_repr_maxlevels``).
MAX_LEVEL: Final = 3
#: Longer strings, bytes and bytearrays show only their first ``MAX_STRING`` items.
MAX_STRING: Final = 200

#: Ints of at most this many bits are always shown in full (their ``repr`` is cheap).
_INT_BITS: Final = 600
#: Ints the walks pass on a range test alone: _WORD_LOW < n < _WORD.
_WORD: Final = 1 << 64
_WORD_LOW: Final = -_WORD
#: Longest top-level tuple, list or dict that the fast path checks without a budget; a
#: longer list or tuple is first tested as a whole in C (_flat).
_FLAT: Final = 32

# How a type is rendered. _OTHER: by calling its ``repr``; _SCALAR: the same, for a
# builtin whose ``repr`` is short.
_OTHER: Final = 0
_SCALAR: Final = 1
_STR: Final = 2
_BYTES: Final = 3
_BYTEARRAY: Final = 4
_INT: Final = 5
_LIST: Final = 6
_TUPLE: Final = 7
_DICT: Final = 8
_SET: Final = 9

#: What the walk charges for an object with its own ``repr``: not a lower bound (the
#: length is unknown until it is called), but it keeps the C ``repr`` of a run of such
#: objects in proportion to the room left unless each ``repr`` is much longer.
_OTHER_WEIGHT: Final = 16

_EXACT: Final[dict[type, int]] = {
    str: _STR,
    int: _INT,
    float: _SCALAR,
    bool: _SCALAR,
    type(None): _SCALAR,
    dict: _DICT,
    list: _LIST,
    tuple: _TUPLE,
    bytes: _BYTES,
    bytearray: _BYTEARRAY,
    set: _SET,
    frozenset: _SET,
    complex: _SCALAR,
}

# Tried in this order for a type not in _EXACT (``bool`` is, so an ``int`` subclass here
# is a user's).
_BASES: Final[tuple[tuple[type, int], ...]] = (
    (str, _STR),
    (int, _INT),
    (dict, _DICT),
    (list, _LIST),
    (tuple, _TUPLE),
    (bytes, _BYTES),
    (bytearray, _BYTEARRAY),
    (set, _SET),
    (frozenset, _SET),
)

_CONTAINERS: Final = frozenset({dict, list, tuple, set, frozenset})


def _kind(value_type: type) -> int:
    """How values of ``value_type``, a type not in _EXACT, are rendered: like the builtin
    base whose ``__repr__`` they keep, otherwise by calling their own ``repr``."""
    own_repr = value_type.__repr__
    for base, base_kind in _BASES:
        if issubclass(value_type, base):
            return base_kind if own_repr is base.__repr__ else _OTHER
    return _OTHER


def _members(value: Any, kind: int) -> tuple[Iterable[Any], int]:
    """The elements of a list, tuple or set (or of a subclass keeping the base ``repr``),
    read the way the base ``repr`` reads them, and how many there are."""
    if kind == _LIST:
        return list.__iter__(value), list.__len__(value)
    if kind == _TUPLE:
        return tuple.__iter__(value), tuple.__len__(value)
    size = set.__len__(value) if isinstance(value, set) else frozenset.__len__(value)
    return iter(value), size


# --- the walk ----------------------------------------------------------------------------
#
# A ``_fits_*`` function returns what is left of ``budget`` after a walk proving that the C
# ``repr`` of a value equals its rendering, or a negative number if it does not or the
# budget ran out. Each step subtracts a lower bound of the characters it adds to the
# ``repr`` (3 for an element of a sequence with its separator, 6 for a dict item, the
# length of a string, ...; _OTHER_WEIGHT for an object with its own ``repr``), so a value
# that passes has a ``repr`` whose cost is of the order of ``budget``, and one that runs
# out would not fit anyway. The budget only decides between the C ``repr`` and rendering
# piece by piece, which give the same text. Exact builtin types are tested inline first;
# anything else goes to ``_fits_value``.


_FLAT_SCALARS: Final = frozenset({float, bool, type(None), complex})
_FLAT_INTS: Final = frozenset({int, bool})
_FLAT_STRS: Final = frozenset({str})
_FLAT_FIRST: Final = _FLAT_SCALARS | _FLAT_INTS | _FLAT_STRS


def _flat(sequence: list[Any] | tuple[Any, ...]) -> int:
    """A lower bound of the length of the ``repr`` of an exact list or tuple of plain
    scalars (ints of one word, floats, bools, None) or of strings of at most MAX_STRING
    characters, less 3 per element; -1 for any other. Tests in C what the loop of
    _fits_seq tests element by element, at a fraction of the cost on long sequences."""
    types = set(map(type, sequence))
    if types <= _FLAT_SCALARS:
        return 2 * len(sequence)
    if types <= _FLAT_INTS:
        return 0 if min(sequence) > _WORD_LOW and max(sequence) < _WORD else -1
    if types <= _FLAT_STRS:
        return -1 if max(map(len, sequence)) > MAX_STRING else sum(map(len, sequence))
    return -1


def _fits_seq(items: Iterable[Any], size: int, level: int, budget: int) -> int:
    """The ``size`` elements of a list, tuple or set at ``level`` (1: the top-level value)."""
    budget -= 3 * size
    if budget < 0:
        return -1
    if size > _FLAT and (type(items) is list or type(items) is tuple):
        flat = _flat(items)
        if flat >= 0:
            return budget - flat
    for item in items:
        item_type = type(item)
        if item_type is str:
            size = len(item)
            if size > MAX_STRING:
                return -1
            budget -= size + 1
        elif item_type is int:
            if not _WORD_LOW < item < _WORD:
                budget = _fits_value(item, int, level + 1, budget)
                if budget < 0:
                    return -1
        elif item_type is float or item_type is bool or item is None:
            budget -= 2
        elif level >= MAX_LEVEL and item_type in _CONTAINERS:
            return -1
        else:
            if item_type is dict:
                budget = _fits_dict(item, level + 1, budget)
            elif item_type is list or item_type is tuple:
                budget = _fits_seq(item, len(item), level + 1, budget)
            else:
                budget = _fits_value(item, item_type, level + 1, budget)
            if budget < 0:
                return -1
    return budget


def _fits_dict(mapping: dict[Any, Any], level: int, budget: int) -> int:
    """The keys and values of an exact dict at ``level``. A key is looked up only once it
    passed the walk (so that hashing it is cheap); a key whose hash or ``==`` misbehaves
    fails the walk, and the renderer, which reads items without lookups, shows it."""
    budget -= 6 * len(mapping)
    if budget < 0:
        return -1
    try:
        for key in mapping:  # noqa: PLC0206 - a lookup is faster than unpacking items()
            key_type = type(key)
            if key_type is str:
                size = len(key)
                if size > MAX_STRING:
                    return -1
                budget -= size + 1
            else:
                budget = _fits_value(key, key_type, level + 1, budget)
                if budget < 0:
                    return -1
            value = mapping[key]
            value_type = type(value)
            if value_type is str:
                size = len(value)
                if size > MAX_STRING:
                    return -1
                budget -= size + 1
            elif value_type is int:
                if not _WORD_LOW < value < _WORD:
                    budget = _fits_value(value, int, level + 1, budget)
                    if budget < 0:
                        return -1
            elif value_type is float or value_type is bool or value is None:
                budget -= 2
            elif level >= MAX_LEVEL and value_type in _CONTAINERS:
                return -1
            else:
                if value_type is dict:
                    budget = _fits_dict(value, level + 1, budget)
                elif value_type is list or value_type is tuple:
                    budget = _fits_seq(value, len(value), level + 1, budget)
                else:
                    budget = _fits_value(value, value_type, level + 1, budget)
                if budget < 0:
                    return -1
    except Exception:
        return -1
    return budget


def _fits_value(value: Any, value_type: type, level: int, budget: int) -> int:
    """Any ``value`` (of type ``value_type``) at ``level``."""
    kind = _EXACT.get(value_type)
    if kind is None:
        kind = _kind(value_type)
    if kind == _SCALAR:
        return budget - 2
    if kind == _OTHER:
        return budget - _OTHER_WEIGHT
    if kind == _STR:
        size = str.__len__(value)
    elif kind == _BYTES:
        size = bytes.__len__(value)
    elif kind == _BYTEARRAY:
        size = bytearray.__len__(value)
    elif kind == _INT:
        bits = int.bit_length(value)
        if bits > _INT_BITS:
            return -1
        return budget - bits * 3 // 10  # about the digits after the first
    else:
        if level > MAX_LEVEL:
            return -1
        if value_type is dict:
            return _fits_dict(value, level, budget)
        if kind == _DICT:  # a subclass: read as dict's repr reads it, keys and values alike
            size = dict.__len__(value)
            budget = _fits_seq(dict.keys(value), size, level, budget)
            if budget < 0:
                return -1
            return _fits_seq(dict.values(value), size, level, budget)
        items, size = _members(value, kind)
        return _fits_seq(items, size, level, budget)
    return -1 if size > MAX_STRING else budget - size - 2


# --- records -----------------------------------------------------------------------------
#
# A long list of records (dicts with the same string keys) is the usual large argument.
# The renderer checks such a record against the key layout of the one before it (the same
# key objects, in the same order) and then its values alone, and renders a run of them
# with one ``%`` of a template such as ``{'id': %r, 'name': %r}``: about half the cost of
# walking every key and having dict's ``repr`` render them again. A value that the walk
# refuses but that is rendered without going into it (a nested list past MAX_LEVEL, a
# long string) goes into the ``%`` as ``_Raw`` text.

#: A record layout: its keys, its template, the characters the template adds.
_Shape = tuple[tuple[Any, ...], str, int]


def _shape(record: dict[Any, Any]) -> _Shape | None:
    """The layout of ``record``, or None unless its keys are plain strings of at most
    MAX_STRING characters."""
    if not 0 < len(record) <= 64:
        return None
    keys = tuple(record)
    pieces = []
    # "{", "}", ": " and ", " come to 4 per key, and each value is at least 1 character
    fixed = 5 * len(keys)
    for key in keys:
        if type(key) is not str or len(key) > MAX_STRING:
            return None
        text = repr(key)
        pieces.append(text.replace("%", "%%") + ": %r")
        fixed += len(text)
    return keys, "{" + ", ".join(pieces) + "}", fixed


def _record(
    record: dict[Any, Any],
    shape: _Shape,
    budget: int,
    out: list[Any],
    level: int,
    limit: int,
    active: set[int],
) -> int:
    """What is left of ``budget`` after ``record`` if it has the layout ``shape`` (the same
    key objects in the same order), having appended what its values render as to ``out``:
    the values themselves, or a ``_Raw`` text for one that the walk refuses. -1: another
    layout; -2: a value to render piece by piece, or no budget left. ``level``: the level
    of the values."""
    keys = shape[0]
    if len(record) != len(keys) or not all(map(is_, record, keys)):
        return -1
    budget -= shape[2]
    if budget < 0:
        return -2
    start = budget
    for value in record.values():
        value_type = type(value)
        if value_type is str:
            size = len(value)
            if size > MAX_STRING:
                return _record_values(record, start, out, level, limit, active)
            budget -= size + 1
        elif value_type is int:
            if not _WORD_LOW < value < _WORD:
                return _record_values(record, start, out, level, limit, active)
        elif value_type is float or value_type is bool or value is None:
            budget -= 2
        else:
            return _record_values(record, start, out, level, limit, active)
    out += record.values()
    return budget


def _record_values(
    record: dict[Any, Any], budget: int, out: list[Any], level: int, limit: int, active: set[int]
) -> int:
    """_record for values other than plain scalars."""
    values = []
    for value in record.values():
        value_type = type(value)
        left = _fits_value(value, value_type, level, budget)
        if left < 0:
            kind = _EXACT.get(value_type)
            text = _atom(
                value, value_type, _kind(value_type) if kind is None else kind, level, limit, active
            )
            if text is None:
                return -2
            left = budget - len(text)
            values.append(_Raw(text))
        else:
            values.append(value)
        if left < 0:
            return -2
        budget = left
    out += values
    return budget


# --- the renderer ------------------------------------------------------------------------


def _plain(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"


def _render_int(value: int, limit: int) -> str:
    bits = int.bit_length(value)
    # Over 10/3 bits per allowed digit: the decimal form is longer than ``limit``.
    if bits <= _INT_BITS or bits * 3 <= limit * 10 + 6:
        try:
            return int.__repr__(value)
        except ValueError:  # longer than sys.get_int_max_str_digits()
            pass
    return f"<int with {bits} bits>"


def _render_text(value: Any, kind: int) -> str:
    """A str, bytes or bytearray (or a subclass keeping the base ``repr``)."""
    head = slice(MAX_STRING)
    if kind == _STR:
        if str.__len__(value) <= MAX_STRING:
            return repr(value)
        text = repr(str.__getitem__(value, head))
    elif kind == _BYTES:
        if bytes.__len__(value) <= MAX_STRING:
            return repr(value)
        text = repr(bytes.__getitem__(value, head))
    else:
        if bytearray.__len__(value) <= MAX_STRING:
            return repr(value)
        text = repr(bytearray.__getitem__(value, head))
        # "bytearray(b'...')" -> "<type name>(b'......')": bytearray's repr names subclasses
        return f"{type(value).__name__}{text[9:-2]}...{text[-2:]}"
    return f"{text[:-1]}...{text[-1]}"


_BRACKETS: Final[dict[int, tuple[str, str]]] = {
    _LIST: ("[", "]"),
    _TUPLE: ("(", ")"),
    _DICT: ("{", "}"),
    _SET: ("{", "}"),
}
_RECURSION: Final[dict[int, str]] = {_LIST: "[...]", _TUPLE: "(...)", _DICT: "{...}"}


def _brackets(value_type: type, kind: int) -> tuple[str, str]:
    if kind == _SET and value_type is not set:
        return value_type.__name__ + "({", "})"
    return _BRACKETS[kind]


def _atom(
    value: Any, value_type: type, kind: int, level: int, limit: int, active: set[int]
) -> str | None:
    """The rendering of ``value`` if it is made without going into ``value`` (a leaf, or an
    empty, elided or recursive container), else None. ``active``: the containers being
    rendered."""
    if kind <= _SCALAR:
        return _plain(value)
    if kind == _INT:
        return _render_int(value, limit)
    if kind <= _BYTEARRAY:
        return _render_text(value, kind)
    size = dict.__len__(value) if kind == _DICT else _members(value, kind)[1]
    if size == 0:
        return repr(value)
    if id(value) in active:  # what repr shows for a container inside itself
        return f"{value_type.__name__}(...)" if kind == _SET else _RECURSION[kind]
    if level > MAX_LEVEL:
        start, end = _brackets(value_type, kind)
        return start + "..." + end
    return None


class _Raw(str):
    """Text that the C ``repr`` of a run copies as it is: an element that fails the walk
    but is rendered without going into it (a long string, an elided container, ...) joins
    the run as the text of its rendering."""

    __slots__ = ()
    __repr__ = str.__str__


class _Renderer:
    """Appends the rendering of a value to ``parts`` until more than ``limit`` characters
    are out; each method returns False once that happened.

    The elements of a container go out in runs: consecutive elements that pass the walk
    (or are rendered without going into them, see ``_Raw``) are collected and rendered by
    one C ``repr`` of a list (or dict) of them, consecutive records by one ``%`` of their
    template. A container that fails the walk is rendered piece by piece. Walks get the
    room left plus ``limit`` as budget, so no C ``repr`` writes much more than twice the
    room left.
    """

    __slots__ = ("active", "limit", "parts", "room")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.room = limit + 1  # characters to emit before the output is known to be cut
        self.active: set[int] = set()  # ids of the containers being rendered

    def put(self, text: str) -> bool:
        self.parts.append(text)
        self.room -= len(text)
        return self.room > 0

    def atom(self, value: Any, value_type: type, level: int) -> str | None:
        kind = _EXACT.get(value_type)
        if kind is None:
            kind = _kind(value_type)
        return _atom(value, value_type, kind, level, self.limit, self.active)

    def value(self, value: Any, level: int, try_plain: bool = True) -> bool:
        """Render ``value``, which sits at nesting ``level`` (1: the top-level value).
        ``try_plain=False``: the caller knows that the walk fails on it."""
        value_type = type(value)
        kind = _EXACT.get(value_type)
        if kind is None:
            kind = _kind(value_type)
        text = _atom(value, value_type, kind, level, self.limit, self.active)
        if text is not None:
            return self.put(text)
        if try_plain and _fits_value(value, value_type, level, self.room + self.limit) >= 0:
            text = _plain_or_none(value)
            if text is not None:
                return self.put(text)
            # else an element's __repr__ raised: render piece by piece
        key = id(value)
        self.active.add(key)
        start, end = _brackets(value_type, kind)
        if not self.put(start):
            return False
        if kind == _DICT:
            done = self.items(dict.items(value), level + 1)
        else:
            items, size = _members(value, kind)
            if kind == _TUPLE and size == 1:
                end = ",)"
            out = 0
            if (value_type is list or value_type is tuple) and type(value[0]) in _FLAT_FIRST:
                out = self.flat_prefix(value, level + 1)
                if out < 0:
                    return False
                if out:
                    items = islice(value, out, None)
            done = self.elements(items, level + 1, out == 0)
        if not done:
            return False
        self.active.discard(key)
        return self.put(end)

    def flat_prefix(self, sequence: list[Any] | tuple[Any, ...], level: int) -> int:
        """Render the leading elements of an exact list or tuple at ``level`` that are
        plain scalars or short strings (see _flat) in slices, each by one C ``repr``, the
        next slice sized on what the last one gave. How many went out, or -1 once the room
        is full."""
        size = len(sequence)
        out = 0
        step = 16
        while out < size:
            piece = sequence[out : out + step]
            if _flat(piece) < 0:
                break
            text = repr(list(piece) if type(piece) is tuple else piece)
            if not ((out == 0 or self.put(", ")) and self.put(text[1:-1])):
                return -1
            out += len(piece)
            step = self.room * len(piece) // len(text) + 1
        return out

    def elements(self, items: Iterable[Any], level: int, first: bool = True) -> bool:
        """The elements of a list, tuple or set, each at ``level`` (``first``: none of the
        container is out yet).

        What is pending is either ``run`` (elements for one C ``repr``) or ``records`` of
        layout ``shape`` with their ``values`` (for one ``%``), never both; ``budget`` is
        the room left plus ``limit``, less a lower bound of what is pending.
        """
        slack = self.limit
        budget = self.room + slack
        # A run goes out once its lower bound reaches half the room (its repr may well be
        # twice as long: digits of ints, reprs of floats), later ones at the room left.
        mark = slack + self.room // 2
        run: list[Any] = []
        shape: _Shape | None = None
        values: list[Any] = []
        records: list[dict[Any, Any]] = []
        for item in items:
            item_type = type(item)
            if item_type is str:
                size = len(item)
                left = budget - size - 3 if size <= MAX_STRING else -1
            elif item_type is int:
                left = budget - 3 if _WORD_LOW < item < _WORD else -1
            elif item_type is float or item_type is bool or item is None:
                left = budget - 5
            elif item_type is dict and level <= MAX_LEVEL:
                # a record's own bound counts its characters, budget - 2: the separator
                left = -1
                if shape is not None:  # (if a run is pending, no records are)
                    left = _record(
                        item, shape, budget - 2, values, level + 1, self.limit, self.active
                    )
                    if left >= 0 and run:
                        if not self.flush(run, None, [], [], first, level):
                            return False
                        first = False
                        run = []
                if left == -1:  # not of the pending layout: the first of a new one?
                    new_shape = _shape(item)
                    if new_shape is not None:
                        fresh: list[Any] = []
                        left = _record(
                            item, new_shape, budget - 2, fresh, level + 1, self.limit, self.active
                        )
                        if left >= 0:
                            if run or values:  # out with what is pending
                                if not self.flush(run, shape, values, records, first, level):
                                    return False
                                first = False
                                run = []
                                records = []
                            shape = new_shape
                            values = fresh
                if left >= 0:
                    records.append(item)
                    budget = left
                    if budget < slack:  # the pending records fill the room
                        if not self.flush(run, shape, values, records, first, level):
                            return False
                        first = False
                        values = []
                        records = []
                        budget = self.room + slack
                    continue
                left = _fits_dict(item, level, budget - 3)
            else:
                left = _fits_value(item, item_type, level, budget - 3)
            if values:  # a run of records ends here
                if not self.flush(run, shape, values, records, first, level):
                    return False
                first = False
                values = []
                records = []
                budget = self.room + slack
                left = _fits_value(item, item_type, level, budget - 3)
            entry = item
            if left < 0:
                text = self.atom(item, item_type, level)
                if text is not None:
                    entry = _Raw(text)
                    left = budget - len(text) - 2
            if left >= 0:
                run.append(entry)
                budget = left
                if budget >= mark:
                    continue
                # else the run fills the room: out with it
            if run:
                if not self.flush(run, None, [], [], first, level):
                    return False
                first = False
                run = []
            if left < 0:
                if not ((first or self.put(", ")) and self.value(entry, level, False)):
                    return False
                first = False
            budget = self.room + slack
            mark = slack
        return not (run or values) or self.flush(run, shape, values, records, first, level)

    def flush(
        self,
        run: list[Any],
        shape: _Shape | None,
        values: list[Any],
        records: list[dict[Any, Any]],
        first: bool,
        level: int,
    ) -> bool:
        """Out with what is pending: the ``run`` of elements, or the ``records``."""
        if values:
            assert shape is not None
            try:
                text: str | None = ", ".join([shape[1]] * len(records)) % tuple(values)
            except Exception:  # a __repr__ raised: render them one by one
                text = None
            todo: list[Any] = records
        else:
            text = _plain_or_none(run)
            if text is not None:
                text = text[1:-1]
            todo = run
        if text is not None:
            return (first or self.put(", ")) and self.put(text)
        for item in todo:
            if not ((first or self.put(", ")) and self.value(item, level)):
                return False
            first = False
        return True

    def items(self, items: Iterable[tuple[Any, Any]], level: int) -> bool:
        """The items of a dict, keys and values at ``level`` (in runs, as elements())."""
        slack = self.limit
        budget = self.room + slack
        mark = slack + self.room // 2  # as in elements()
        run: list[tuple[Any, Any]] = []
        first = True
        for item in items:
            item_key, item_value = item
            key_type = type(item_key)
            if key_type is str:
                size = len(item_key)
                left = budget - size - 7 if size <= MAX_STRING else -1
            else:
                left = _fits_value(item_key, key_type, level, budget - 6)
            if left < 0:
                text = self.atom(item_key, key_type, level)
                if text is not None:
                    item_key = _Raw(text)
                    left = budget - len(text) - 6
            if left >= 0:
                after_key = left
                value_type = type(item_value)
                if value_type is str:
                    size = len(item_value)
                    left = left - size - 1 if size <= MAX_STRING else -1
                elif value_type is int:
                    left = left if _WORD_LOW < item_value < _WORD else -1
                elif value_type is float or value_type is bool or item_value is None:
                    left -= 2
                else:
                    left = _fits_value(item_value, value_type, level, left)
                if left < 0:
                    text = self.atom(item_value, value_type, level)
                    if text is not None:
                        item_value = _Raw(text)
                        left = after_key - len(text)
            if left >= 0:
                run.append((item_key, item_value))
                budget = left
                if budget >= mark:
                    continue
            if run:
                if not self.item_run(run, first, level):
                    return False
                first = False
                run = []
            if left < 0:
                if not ((first or self.put(", ")) and self.item(item_key, item_value, level)):
                    return False
                first = False
            budget = self.room + slack
            mark = slack
        return not run or self.item_run(run, first, level)

    def item(self, key: Any, value: Any, level: int) -> bool:
        return self.value(key, level) and self.put(": ") and self.value(value, level)

    def item_run(self, run: list[tuple[Any, Any]], first: bool, level: int) -> bool:
        try:
            mapping = dict(run)
            text = repr(mapping) if len(mapping) == len(run) else None
        except Exception:  # a __repr__ raised, or a key's hash or == did
            text = None
        if text is not None:
            return (first or self.put(", ")) and self.put(text[1:-1])
        for item_key, item_value in run:  # render them one by one
            if not ((first or self.put(", ")) and self.item(item_key, item_value, level)):
                return False
            first = False
        return True


def _plain_or_none(value: object) -> str | None:
    try:
        return repr(value)
    except Exception:
        return None


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit < 3:
        return "..."[: max(limit, 0)]
    return text[: limit - 3] + "..."


def _render(value: object, limit: int, try_plain: bool) -> str:
    renderer = _Renderer(limit)
    renderer.value(value, 1, try_plain)
    return _cut("".join(renderer.parts), limit)


def safe_repr(value: object, limit: int = 1024) -> str:
    """``repr(value)``, cut to at most ``limit`` characters at a cost bounded by ``limit``.

    Small values (see the module docstring for the exact rule) give exactly
    ``repr(value)``; larger ones a rendering that elides deep nesting and long strings and
    ends in ``...`` where it was cut. No exception that a ``__repr__`` inside ``value``
    raises gets out.
    """
    # The walk of _fits_seq/_fits_dict, unrolled for the top level: a short tuple or dict
    # of scalars and short strings (the usual args and kwargs) needs no budget, its repr is
    # short anyway. A break out of a loop falls through to the renderer.
    value_type = type(value)
    if value_type is tuple or value_type is list:
        sequence: Any = value
        if len(sequence) > _FLAT:
            if _fits_seq(sequence, len(sequence), 1, limit + limit) < 0:
                return _render(value, limit, False)
        else:
            budget = limit + limit
            for item in sequence:
                item_type = type(item)
                if item_type is str:
                    if len(item) > MAX_STRING:
                        break
                elif item_type is int:
                    if not _WORD_LOW < item < _WORD:
                        break
                elif item_type is float or item_type is bool or item is None:
                    pass
                else:
                    if item_type is dict:
                        budget = _fits_dict(item, 2, budget)
                    elif item_type is list or item_type is tuple:
                        budget = _fits_seq(item, len(item), 2, budget)
                    else:
                        budget = _fits_value(item, item_type, 2, budget)
                    if budget < 0:
                        break
            else:
                try:
                    text = repr(value)
                except Exception:  # a __repr__ inside raised: the renderer shows which
                    return _render(value, limit, False)
                return text if len(text) <= limit else _cut(text, limit)
            return _render(value, limit, False)
    elif value_type is dict:
        mapping: Any = value
        if len(mapping) > _FLAT:
            if _fits_dict(mapping, 1, limit + limit) < 0:
                return _render(value, limit, False)
        else:
            budget = limit + limit
            try:
                for key in mapping:
                    if type(key) is not str or len(key) > MAX_STRING:
                        budget = _fits_value(key, type(key), 2, budget)
                        if budget < 0:
                            break
                    item = mapping[key]
                    item_type = type(item)
                    if item_type is str:
                        if len(item) > MAX_STRING:
                            break
                    elif item_type is int:
                        if not _WORD_LOW < item < _WORD:
                            break
                    elif item_type is float or item_type is bool or item is None:
                        pass
                    else:
                        if item_type is dict:
                            budget = _fits_dict(item, 2, budget)
                        elif item_type is list or item_type is tuple:
                            budget = _fits_seq(item, len(item), 2, budget)
                        else:
                            budget = _fits_value(item, item_type, 2, budget)
                        if budget < 0:
                            break
                else:
                    text = repr(value)
                    return text if len(text) <= limit else _cut(text, limit)
            except Exception:  # a __repr__ raised, or a key's hash or ==: the renderer copes
                return _render(value, limit, False)
            return _render(value, limit, False)
    elif value_type is str:
        if len(value) > MAX_STRING:  # type: ignore[arg-type]
            return _render(value, limit, False)
    elif value_type is int:
        if not _WORD_LOW < value < _WORD:  # type: ignore[operator]
            return _render(value, limit, False)
    elif not (value_type is float or value_type is bool or value is None):
        return _render(value, limit, True)
    # A short plain str, a word-sized int, a float, a bool, None; or a long tuple, list or
    # dict that passed the walk.
    try:
        text = repr(value)
    except Exception:
        return _render(value, limit, False)
    return text if len(text) <= limit else _cut(text, limit)
