"""The entries of ``<queue>.dead``, the dead-letter lists of the Redis transport.

Each is JSON: ``{"reason", "raw", "raw_encoding", "queue", "at"}``. ``raw`` is the
message as it was (the list entry, or the ``unacked`` value a restore could not use):
its text when it is UTF-8 (``raw_encoding`` ``"text"``), else its base64
(``"base64"``). ``at`` is the Unix time it was dead-lettered. Written by the parts that
give up on a message (publishing an unroutable one, consuming an entry that is not an
envelope, settling ``dead_letter``, restoring); read by ``Admin.dead_letters``.
"""

from __future__ import annotations

import base64
import json

from wiretask.transports.base import DeadLetter
from wiretask.transports.redis.envelope import frame_or_none

__all__ = ["dead_entry", "read_dead_entry"]


def dead_entry(queue: str, reason: str, raw: bytes, *, at: float) -> str:
    """The ``<queue>.dead`` entry of ``raw``, dead-lettered for ``reason`` at ``at``."""
    try:
        text, encoding = raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return json.dumps({"reason": reason, "raw": text, "raw_encoding": encoding,
                       "queue": queue, "at": at})


def read_dead_entry(queue: str, row: bytes) -> DeadLetter:
    """A ``<queue>.dead`` entry as a ``DeadLetter`` (with its frame when ``raw`` is an
    envelope); an entry that is not one of ours is shown as unreadable, raw."""
    try:
        item = json.loads(row)
        raw_text = item["raw"]
        raw = (base64.b64decode(raw_text) if item.get("raw_encoding") == "base64"
               else raw_text.encode("utf-8"))
        reason, at = str(item["reason"]), float(item.get("at", 0.0))
    except (ValueError, TypeError, KeyError, AttributeError):
        return DeadLetter(queue=queue, reason="unreadable dead-letter entry", raw=row)
    return DeadLetter(queue=queue, reason=reason, frame=frame_or_none(raw, queue=queue),
                      raw=raw, at=at)
