"""The public conformance kits: check that a transport or a result backend keeps its
contract, plus a forwarding transport for tests and instrumentation.

Usable with or without pytest::

    from wiretask.testing import check_backend, check_transport, closed_port
    from wiretask.transports.sqlite import SQLiteTransport

    report = check_transport(lambda: SQLiteTransport("/tmp/kit.db"))
    print(report)                       # which checks ran, which were skipped and why

    check_transport(
        lambda: RedisTransport("redis://127.0.0.1:6379/15"),
        broken_factory=lambda password: RedisTransport(
            f"redis://:{password}@127.0.0.1:{closed_port()}/0"),
        fused_backend=RedisBackend("redis://127.0.0.1:6379/15"),
    )
    check_backend(lambda expires: RedisBackend("redis://127.0.0.1:6379/15", expires=expires))

``factory`` is called many times; every transport it returns must talk to the **same**
broker namespace (the same database file, Redis database, memory name), because several
checks hand a message from one instance to another. The kit uses fresh, unique queue
names (and task ids) for every check, so the namespace may hold other data, and it
empties its queues afterwards (dead letters stay: the contract has no way to delete
them).

Every check exercises the public methods the worker and the calling API use; checks of
an optional capability (``Inspection``, ``QueueStatistics``, ``BrokerDelay``,
``Broadcast``, ``FusedSettlement``, ``DeferredStore``) run when the transport or backend
offers it and are skipped, with the reason, when it does not. So are the checks that
need something only the caller can give (``process_factory``, ``broken_factory``,
``fused_backend``).

A failed check raises ``ConformanceError`` (an ``AssertionError``, so pytest shows it as
a test failure) naming the check and what was wrong; with ``fail_fast=False`` every
check runs first and the error lists all failures. Each check runs under a time limit:
a transport that hangs fails the check instead of hanging the caller.

For transports with ``capabilities.multi_process``, pass ``process_factory``: a
*picklable* zero-argument callable (e.g. ``functools.partial(SQLiteTransport, path)``).
The kit then also consumes from separate Python processes (started with
``sys.executable``), which must be able to import the factory.

``docs/writing-a-transport.md`` walks through writing a transport with the kit.
"""

from wiretask.testing._backend import BACKEND_CHECKS, check_backend
from wiretask.testing._forwarding import ForwardedDelivery, ForwardingTransport
from wiretask.testing._runner import ConformanceError, ConformanceReport
from wiretask.testing._transport import CHECKS, check_transport, closed_port

__all__ = [
    "BACKEND_CHECKS",
    "CHECKS",
    "ConformanceError",
    "ConformanceReport",
    "ForwardedDelivery",
    "ForwardingTransport",
    "check_backend",
    "check_transport",
    "closed_port",
]
