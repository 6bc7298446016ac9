"""py-amqp and socket errors as wiretask errors: one table, read top to bottom.

Every call into py-amqp runs under ``Translate`` (a context manager, cheap enough for the
hot paths), which looks the exception up in ``TABLE``: the first row whose class matches
decides. ``ConnectionLost`` is recoverable (the publish retry policy reconnects and tries
again, the worker backs off and reconnects); ``TransportError`` is not (retrying cannot
fix a wrong password or an inequivalent queue declaration). The original exception is
chained with ``from``, and the message names the action and the masked URL, with the
password scrubbed from the driver's text.

The table has the shape of the shared ``map_exceptions``-style helper that is being
introduced for the other drivers (``{driver class: wiretask class}`` in order), so it can
move there as it is.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Literal

from amqp import exceptions as amqp_errors

from wiretask.errors import ConnectionLost, TransportError

__all__ = ["TABLE", "Translate", "connection_is_gone", "translate"]

#: (driver exception class, wiretask class, why): the first matching row wins.
TABLE: tuple[tuple[type[BaseException], type[TransportError], str], ...] = (
    (ssl.SSLCertVerificationError, TransportError,
     "the broker's TLS certificate is not trusted: retrying will not change that"),
    (amqp_errors.AccessRefused, TransportError,
     "403: wrong user or password, or no permission on the virtual host or resource"),
    (amqp_errors.NotAllowed, TransportError,
     "530: e.g. a virtual host that does not exist"),
    (amqp_errors.InvalidPath, TransportError, "402: a malformed virtual host"),
    (amqp_errors.PreconditionFailed, TransportError,
     "406: e.g. a queue declared again with other arguments (the text names them)"),
    (amqp_errors.NotFound, TransportError, "404: no such queue or exchange"),
    (amqp_errors.ResourceLocked, TransportError,
     "405: an exclusive queue of another connection"),
    (amqp_errors.ContentTooLarge, TransportError, "311: a message over the broker's limit"),
    (amqp_errors.AMQPNotImplementedError, TransportError,
     "540: e.g. global QoS on a quorum queue"),
    (amqp_errors.FrameError, TransportError, "501: a protocol error (a bug, not an outage)"),
    (amqp_errors.FrameSyntaxError, TransportError, "502: a protocol error"),
    (amqp_errors.UnexpectedFrame, TransportError, "505: a protocol error"),
    (amqp_errors.InvalidCommand, TransportError, "503: a protocol error"),
    (amqp_errors.ChannelNotOpen, TransportError, "504: a protocol error"),
    (amqp_errors.ConnectionForced, ConnectionLost,
     "320: the broker is shutting down, or heartbeats were missed"),
    (amqp_errors.InternalError, ConnectionLost,
     "541: the broker failed internally; a new connection may work"),
    (amqp_errors.RecoverableConnectionError, ConnectionLost,
     "the connection is closed, blocked or out of channels"),
    (amqp_errors.RecoverableChannelError, ConnectionLost,
     "a channel-level condition that a new attempt may not meet again"),
    (TimeoutError, ConnectionLost, "the broker did not answer in time (socket.timeout too)"),
    (OSError, ConnectionLost,
     "refused, reset or dropped connection; TLS errors other than a bad certificate"),
    (amqp_errors.AMQPError, TransportError, "any other broker error"),
)


def translate(action: str, exc: BaseException, *, url: str, password: str = "",
              ) -> TransportError | None:
    """The wiretask error for ``exc`` (not chained yet), or None if the table has no row
    for it (then it is not a driver error and must propagate as it is)."""
    for kind, ours, _ in TABLE:
        if isinstance(exc, kind):
            text = str(exc) or type(exc).__name__
            if password:
                text = text.replace(password, "**")
            return ours(f"{action} failed: {text}", url=url)
    return None


def connection_is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the whole connection unusable (not just one channel)."""
    if isinstance(exc, amqp_errors.ChannelError):
        return False
    return isinstance(exc, amqp_errors.AMQPError | OSError | TimeoutError)


class Translate:
    """``with Translate(action, url, password):`` raises the table's wiretask error for a
    driver exception, chained ``from`` it. A class, not a generator: it wraps every
    publish and ack."""

    __slots__ = ("_action", "_password", "_url")

    def __init__(self, action: str, url: str, password: str = "") -> None:
        self._action = action
        self._url = url
        self._password = password

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None:
            return False
        error = translate(self._action, exc, url=self._url, password=self._password)
        if error is None:
            return False
        raise error from exc

