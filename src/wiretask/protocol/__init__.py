"""The pure protocol core: values and rules, no I/O, no clock reads (callers pass ``now``).

* :class:`TaskMessage` (``envelope``): one task message as a typed, immutable value.
* :class:`Signature` (``signature``): link / link_error / chain / chord entries.
* ``timing``: countdown / eta / expires to absolute aware datetimes and back.
* :class:`Frame` (``frame``): the bytes-level message a transport carries.
* :func:`encode` / :func:`decode` (``celery``): TaskMessage <-> Celery protocol-2 frames.
"""

from wiretask.protocol.celery import decode, decode_raw, encode
from wiretask.protocol.envelope import PROTOCOL_HEADERS, TaskMessage
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.protocol.signature import Signature
from wiretask.protocol.timing import (
    format_iso,
    is_expired,
    parse_iso,
    resolve_eta,
    resolve_expires,
    to_aware,
)

__all__ = [
    "PROTOCOL_HEADERS",
    "Frame",
    "Outgoing",
    "Route",
    "Signature",
    "TaskMessage",
    "decode",
    "decode_raw",
    "encode",
    "format_iso",
    "is_expired",
    "parse_iso",
    "resolve_eta",
    "resolve_expires",
    "to_aware",
]
