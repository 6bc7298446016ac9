"""redis-py's exceptions to wiretask's: the one table every Redis module uses.

The Redis transport, the Redis result backend and the delayed-message scheduler
translate through ``REDIS_ERRORS`` with ``wiretask._errormap.map_exceptions`` (made by
``Boundaries``, which also drops redis-py's pooled connections that reached a replica), so a
recoverable error (``ConnectionLost``) is the same thing to the publish retry policy, to
the worker and to ``AsyncResult.get()``: worth a reconnect and another try, because the
same call can succeed later without anyone changing the configuration. Everything else
is a ``TransportError``: retrying it would fail the same way.

Order matters (first match wins): redis-py makes its authentication and "loading" errors
``ConnectionError`` subclasses, and ``ReadOnlyError``/``OutOfMemoryError`` subclasses of
``ResponseError``, each meaning something else than its parent.
"""

from __future__ import annotations

import functools

import redis
from redis import exceptions as rx

from wiretask._errormap import ErrorTable, Row, map_exceptions
from wiretask._redis.client import drop_wrong_server
from wiretask.errors import ConnectionLost, TransportError

__all__ = ["REDIS_ERRORS", "Boundaries"]

REDIS_ERRORS = ErrorTable("Redis", (
    Row(rx.AuthenticationError, TransportError,
        "a wrong or missing password (WRONGPASS, NOAUTH, invalid password): the same "
        "credentials are refused again; fix the URL"),
    Row(rx.AuthorizationError, TransportError,
        "the server's ACL refuses this user: retrying as the same user cannot help"),
    Row(rx.NoPermissionError, TransportError,
        "NOPERM: the ACL forbids a command or key this module needs"),
    Row(rx.BusyLoadingError, ConnectionLost,
        "LOADING: the server restarted and is loading its data set; it answers once done"),
    Row(rx.ReadOnlyError, ConnectionLost,
        "READONLY: the connection reaches a replica (after a failover, the old primary); "
        "the client drops that connection and a retry reconnects to whatever the URL "
        "names now"),
    Row(rx.MasterDownError, ConnectionLost,
        "MASTERDOWN: a replica lost its primary and serves nothing until the link is "
        "back (or a failover makes another server the one the URL reaches)"),
    Row(rx.OutOfMemoryError, ConnectionLost,
        "OOM: the server is at maxmemory and evicts nothing; consumers taking messages "
        "and results expiring free memory (SQLite's SQLITE_FULL is recoverable too)"),
    Row(rx.MaxClientsReachedError, ConnectionLost,
        "the server has maxclients connections; one frees up when another client leaves"),
    Row(rx.ConnectionError, ConnectionLost,
        "refused, reset or closed connection, unknown host: the server is down or "
        "restarting, or the network is"),
    Row(rx.TimeoutError, ConnectionLost,
        "no reply within socket_timeout (a busy or paused server, a lost network): the "
        "outcome is unknown, the connection is dropped, a retry reconnects"),
    Row(rx.ResponseError, TransportError,
        "the server refused a command (WRONGTYPE, a syntax or script error, EXECABORT): "
        "the same command is refused again"),
    Row(rx.RedisError, TransportError,
        "redis-py's other failures (a bad value, an unparsable reply, a lock or watch "
        "error that escaped): a fault of this client, not an outage"),
    Row(OSError, ConnectionLost,
        "socket and TLS errors that redis-py passes on as they are (e.g. while reading "
        "a subscription): a broken connection"),
))


class Boundaries:
    """The error boundaries of the users of one redis-py pool (a transport, a result
    backend): ``with boundaries(action):`` translates by ``REDIS_ERRORS``, naming
    ``action`` and the masked ``url``, scrubbing ``secret`` (the password), and after a
    wrong-server reply (``READONLY``, ``MASTERDOWN``) drops the pool's idle connections
    (``drop_wrong_server``) so that a retry reconnects. The boundaries keep no state:
    one per action is made once and reused, by any number of threads."""

    def __init__(
        self, pool: redis.ConnectionPool, *, url: str | None, secret: str | None
    ) -> None:
        self._url = url
        self._secret = secret
        self._drop = functools.partial(drop_wrong_server, pool)
        self._made: dict[str, map_exceptions] = {}

    def __call__(self, action: str) -> map_exceptions:
        boundary = self._made.get(action)
        if boundary is None:
            boundary = self._made[action] = map_exceptions(
                REDIS_ERRORS, action, url=self._url, secret=self._secret,
                on_error=self._drop)
        return boundary
