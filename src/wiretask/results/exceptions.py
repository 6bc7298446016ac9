"""Exceptions in results: where the result backends and their callers find the conversion.

The conversion between an exception instance and Celery's exception dict is part of the
result meta dict's wire format, so it lives with the meta dict in the pure protocol layer
(``wiretask.protocol.exceptions``, beside ``wiretask.protocol.states``). This module keeps
the names importable from ``wiretask.results.exceptions``, where the backends, the app and
the CLI look for them.
"""

from wiretask.protocol.exceptions import (
    WIRE_NAMES,
    exception_from_meta,
    exception_to_meta,
    expired_meta_result,
    is_exception_meta,
    revoked_meta_result,
)

__all__ = [
    "WIRE_NAMES",
    "exception_from_meta",
    "exception_to_meta",
    "expired_meta_result",
    "is_exception_meta",
    "revoked_meta_result",
]
