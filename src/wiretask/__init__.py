"""wiretask: a typed task-message core that speaks Celery's task protocol 2.

The public API is exactly ``__all__``: the calling API (``App``, ``Task``,
``TaskSignature``, ``AsyncResult``), the worker, the pure protocol values
(``TaskMessage``, ``Signature``, ``Frame``, ``Route``, ``encode``/``decode``), codecs
(``default_registry``), the retry policy, the transport interface, the conformance kit
entry point and the exception tree. Everything else is an implementation detail.
"""

from wiretask.app import (
    App,
    AsyncResult,
    EagerResult,
    Request,
    Task,
    TaskChain,
    TaskSignature,
    allow_join_result,
    current_app,
    shared_task,
)
from wiretask.codecs import (
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    Compressor,
    Registry,
    Serializer,
    default_registry,
)
from wiretask.errors import (
    ArgumentsError,
    ConnectionLost,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    MessageTooLarge,
    NotRegistered,
    PublishError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,  # wiretask's, a subclass of the builtin
    TransportError,
    UnknownCodec,
    ValidationError,
    WiretaskError,
    WorkerLostError,
    WouldBlock,
)
from wiretask.protocol import states
from wiretask.protocol.celery import decode, encode
from wiretask.protocol.envelope import TaskMessage
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.protocol.signature import Signature
from wiretask.results import ResultBackend, backend_from_url
from wiretask.retry import RetryPolicy, call_with_retry
from wiretask.transports.base import Capabilities, DeadLetter, Delivery, Peeked, Transport
from wiretask.transports.url import transport_from_url
from wiretask.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "App",
    "ArgumentsError",
    "AsyncResult",
    "Capabilities",
    "Compressor",
    "ConnectionLost",
    "ContentDisallowed",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "EagerResult",
    "EncodeError",
    "Frame",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "MessageTooLarge",
    "NotRegistered",
    "Outgoing",
    "Peeked",
    "PublishError",
    "Registry",
    "Reject",
    "Request",
    "ResultBackend",
    "Retry",
    "RetryPolicy",
    "Route",
    "Serializer",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskChain",
    "TaskError",
    "TaskMessage",
    "TaskRevokedError",
    "TaskSignature",
    "TimeLimitExceeded",
    "TimeoutError",
    "Transport",
    "TransportError",
    "UnknownCodec",
    "ValidationError",
    "WiretaskError",
    "Worker",
    "WorkerLostError",
    "WouldBlock",
    "__version__",
    "allow_join_result",
    "backend_from_url",
    "call_with_retry",
    "current_app",
    "decode",
    "default_registry",
    "encode",
    "shared_task",
    "states",
    "transport_from_url",
]
