"""py-amqp's (and the socket's) exceptions to wiretask's: the one table every AMQP
module uses, with ``wiretask._errormap.map_exceptions``.

``ConnectionLost`` is recoverable: the same call can succeed later without anyone
changing the configuration (the publish retry policy reconnects and tries again, the
worker backs off and reconnects). ``TransportError`` is not: retrying a wrong password
or an inequivalent queue declaration fails the same way. Order matters (first match
wins): py-amqp makes ``AccessRefused`` a channel error and ``ConnectionForced`` a
recoverable connection error, each meaning something else than its parent.
"""

from __future__ import annotations

import ssl

from amqp import exceptions as ax

from wiretask._errormap import ErrorTable, Row, map_exceptions
from wiretask.errors import ConnectionLost, TransportError

__all__ = ["AMQP_ERRORS", "connection_is_gone", "translate"]

AMQP_ERRORS = ErrorTable("RabbitMQ", (
    Row(ssl.SSLCertVerificationError, TransportError,
        "the broker's TLS certificate is not trusted: retrying cannot change that"),
    Row(ax.AccessRefused, TransportError,
        "403 ACCESS_REFUSED: a wrong user or password, or no permission on the virtual "
        "host or resource; the same credentials are refused again"),
    Row(ax.NotAllowed, TransportError,
        "530 NOT_ALLOWED: e.g. a virtual host that does not exist"),
    Row(ax.InvalidPath, TransportError, "402 INVALID_PATH: a malformed virtual host"),
    Row(ax.PreconditionFailed, TransportError,
        "406 PRECONDITION_FAILED: e.g. a queue declared again with other arguments (the "
        "broker's text names them); the configuration must match the fleet's"),
    Row(ax.NotFound, TransportError, "404 NOT_FOUND: no such queue or exchange"),
    Row(ax.ResourceLocked, TransportError,
        "405 RESOURCE_LOCKED: an exclusive queue of another connection"),
    Row(ax.ContentTooLarge, TransportError, "311: a message over the broker's size limit"),
    Row(ax.AMQPNotImplementedError, TransportError,
        "540 NOT_IMPLEMENTED: e.g. global QoS on a quorum queue"),
    Row(ax.FrameError, TransportError, "501: a protocol error, a bug and not an outage"),
    Row(ax.FrameSyntaxError, TransportError, "502: a protocol error"),
    Row(ax.UnexpectedFrame, TransportError, "505: a protocol error"),
    Row(ax.InvalidCommand, TransportError, "503: a protocol error"),
    Row(ax.ChannelNotOpen, TransportError, "504: a protocol error"),
    Row(ax.ConnectionForced, ConnectionLost,
        "320 CONNECTION_FORCED: the broker is shutting down, or heartbeats were missed"),
    Row(ax.InternalError, ConnectionLost,
        "541 INTERNAL_ERROR: the broker failed internally; a new connection may work"),
    Row(ax.RecoverableConnectionError, ConnectionLost,
        "the connection is closed, blocked, or out of channels"),
    Row(ax.RecoverableChannelError, ConnectionLost,
        "a channel-level condition (no consumers, ...) a later attempt may not meet"),
    Row(TimeoutError, ConnectionLost,
        "no answer in time (socket.timeout too): the outcome is unknown, the connection "
        "is dropped, a retry reconnects"),
    Row(OSError, ConnectionLost,
        "refused, reset or dropped connection, unknown host, TLS errors other than an "
        "untrusted certificate: the broker is down or restarting, or the network is"),
    Row(ax.AMQPError, TransportError, "any other broker error"),
))


def translate(action: str, *, url: str, secret: str = "") -> map_exceptions:
    """``with translate(action, url=..., secret=...):`` around every py-amqp call."""
    return map_exceptions(AMQP_ERRORS, action, url=url, secret=secret or None)


def connection_is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the whole connection unusable (not just one channel)."""
    if isinstance(exc, ax.ChannelError):
        return False
    return isinstance(exc, ax.AMQPError | OSError | TimeoutError)
