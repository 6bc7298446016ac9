"""wiretask: a typed task-message core that speaks Celery's task protocol 2."""

from wiretask.errors import (
    ConnectionLost,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MessageTooLarge,
    NotRegistered,
    PublishError,
    TransportError,
    ValidationError,
    WiretaskError,
)
from wiretask.protocol.frame import Frame, Route

__version__ = "0.1.0"

__all__ = [
    "ConnectionLost",
    "ContentDisallowed",
    "DecodeError",
    "EncodeError",
    "Frame",
    "ImproperlyConfigured",
    "MessageTooLarge",
    "NotRegistered",
    "PublishError",
    "Route",
    "TransportError",
    "ValidationError",
    "WiretaskError",
    "__version__",
]
