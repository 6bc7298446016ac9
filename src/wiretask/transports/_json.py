"""Headers and properties as JSON text, for brokers that store them that way (the
memory and SQLite transports). Not part of the transport contract: a broker with typed
headers (AMQP tables) carries them its own way."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from wiretask.errors import DecodeError, EncodeError

__all__ = ["dump_json_mapping", "load_json_mapping"]


def dump_json_mapping(field: str, value: Mapping[str, Any]) -> str:
    """Headers or properties as compact JSON text, for brokers that store them as JSON.

    Only values that JSON carries faithfully are accepted: ``str`` keys; ``str``,
    ``int``, finite ``float``, ``bool``, ``None``, lists/tuples (read back as lists) and
    string-keyed dicts as values. Anything else (``bytes``, ``datetime``, a set, an
    ``int`` key that ``json`` would quietly turn into ``"1"``, ``NaN``) raises, so a
    message is refused at publish instead of arriving different from what was sent.

    Raises:
        EncodeError: ``field`` is the path of the offending value (``headers['a'][2]``).
    """
    try:
        _check_json(field, value)
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:  # nested past Python's stack, or a container holding itself
        raise EncodeError(field, "nests too deep, or contains itself") from None


def load_json_mapping(field: str, text: str | bytes) -> dict[str, Any]:
    """Read back what ``dump_json_mapping`` wrote.

    Raises:
        DecodeError: the text is not a JSON object (whatever else it is: not text, not
            JSON, or nested past what the parser reads).
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise DecodeError(field, "JSON nested too deep to read") from None
    except (ValueError, TypeError) as exc:
        raise DecodeError(field, f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError(field, f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_json(path: str, value: Any) -> None:
    # An explicit walk rather than json.dumps(default=...): json converts int/float/bool
    # keys to strings and has no hook for them, and the walk can name the exact path.
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodeError(path, f"{value!r} is not representable in JSON")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(f"{path}[{index}]", item)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodeError(
                    f"{path}[{key!r}]", f"keys must be strings, got {type(key).__name__}"
                )
            _check_json(f"{path}[{key!r}]", item)
        return
    raise EncodeError(
        path,
        f"a {type(value).__name__} value cannot be carried as JSON "
        "(use str, int, float, bool, None, lists and string-keyed dicts)",
    )

