"""wiretask: a typed task-message core that speaks Celery's task protocol 2.

The public API is exactly ``__all__``: the calling API (``App``, ``Task``,
``TaskSignature``, ``AsyncResult``), Celery's canvas (``chain``, ``group``, ``chord``,
``chunks``, ``GroupResult``), the worker, the pure protocol values
(``TaskMessage``, ``Signature``, ``Frame``, ``Route``, ``encode``/``decode``), codecs
(``default_registry``), the retry policy, the transport interface, the conformance kit
entry point and the exception tree. Everything else is an implementation detail.

Importing this package loads nothing else: each name is imported from its module the
first time it is read (PEP 562), so ``import wiretask.protocol`` or ``import
wiretask.codecs`` loads the pure core only, not the app, the worker or a transport.
Type checkers see every name through the ``TYPE_CHECKING`` imports below.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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
    from wiretask.canvas import (
        GroupResult,
        ResultSet,
        TaskChord,
        TaskGroup,
        chain,
        chord,
        chunks,
        group,
        maybe_signature,
        signature,
        xmap,
        xstarmap,
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
        ChordError,
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
    from wiretask.retry import RetryPolicy, acall_with_retry, call_with_retry
    from wiretask.transports.base import Capabilities, DeadLetter, Delivery, Peeked, Transport
    from wiretask.transports.url import transport_from_url
    from wiretask.worker import Worker

__version__ = "0.1.0"

#: Where each public name lives: the module it is imported from on first use. The
#: ``states`` entry is a module itself (``wiretask.protocol.states``).
_HOMES: _typing.Final[dict[str, str]] = {
    **dict.fromkeys(
        (
            "App",
            "AsyncResult",
            "EagerResult",
            "Request",
            "Task",
            "TaskChain",
            "TaskSignature",
            "allow_join_result",
            "current_app",
            "shared_task",
        ),
        "wiretask.app",
    ),
    **dict.fromkeys(
        (
            "GroupResult",
            "ResultSet",
            "TaskChord",
            "TaskGroup",
            "chain",
            "chord",
            "chunks",
            "group",
            "maybe_signature",
            "signature",
            "xmap",
            "xstarmap",
        ),
        "wiretask.canvas",
    ),
    **dict.fromkeys(
        (
            "DEFAULT_MAX_DECOMPRESSED_SIZE",
            "Compressor",
            "Registry",
            "Serializer",
            "default_registry",
        ),
        "wiretask.codecs",
    ),
    **dict.fromkeys(
        (
            "ArgumentsError",
            "ChordError",
            "ConnectionLost",
            "ContentDisallowed",
            "DecodeError",
            "EncodeError",
            "ImproperlyConfigured",
            "MaxRetriesExceededError",
            "MessageTooLarge",
            "NotRegistered",
            "PublishError",
            "Reject",
            "Retry",
            "SoftTimeLimitExceeded",
            "TaskError",
            "TaskRevokedError",
            "TimeLimitExceeded",
            "TimeoutError",
            "TransportError",
            "UnknownCodec",
            "ValidationError",
            "WiretaskError",
            "WorkerLostError",
            "WouldBlock",
        ),
        "wiretask.errors",
    ),
    "states": "wiretask.protocol.states",
    **dict.fromkeys(("decode", "encode"), "wiretask.protocol.celery"),
    "TaskMessage": "wiretask.protocol.envelope",
    **dict.fromkeys(("Frame", "Outgoing", "Route"), "wiretask.protocol.frame"),
    "Signature": "wiretask.protocol.signature",
    **dict.fromkeys(("ResultBackend", "backend_from_url"), "wiretask.results"),
    **dict.fromkeys(("RetryPolicy", "acall_with_retry", "call_with_retry"), "wiretask.retry"),
    **dict.fromkeys(
        ("Capabilities", "DeadLetter", "Delivery", "Peeked", "Transport"),
        "wiretask.transports.base",
    ),
    "transport_from_url": "wiretask.transports.url",
    "Worker": "wiretask.worker",
}

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "App",
    "ArgumentsError",
    "AsyncResult",
    "Capabilities",
    "ChordError",
    "Compressor",
    "ConnectionLost",
    "ContentDisallowed",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "EagerResult",
    "EncodeError",
    "Frame",
    "GroupResult",
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
    "ResultSet",
    "Retry",
    "RetryPolicy",
    "Route",
    "Serializer",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskChain",
    "TaskChord",
    "TaskError",
    "TaskGroup",
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
    "acall_with_retry",
    "allow_join_result",
    "backend_from_url",
    "call_with_retry",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "decode",
    "default_registry",
    "encode",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "transport_from_url",
    "xmap",
    "xstarmap",
]


# Defined only at run time: to a type checker every public name is a real import above,
# and an unknown name is an error rather than whatever ``__getattr__`` returns.
if not _typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module = _importlib.import_module(home)
        value = module if home.endswith(f".{name}") else getattr(module, name)
        globals()[name] = value  # later reads are plain module attribute reads
        return value


def __dir__() -> list[str]:
    # Every public name, imported yet or not, besides what the module already holds.
    return sorted(set(globals()) | set(__all__))
