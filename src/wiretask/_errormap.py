"""Driver exceptions to wiretask's: one helper, one table per driver.

httpcore's ``map_exceptions`` is the model: a context manager that turns the exceptions a
driver raises inside its block into ours, by a table, chained with ``from``::

    with map_exceptions(REDIS_ERRORS, "publish", url=masked_url, secret=password):
        commands.run(...)

Each driver has one ``ErrorTable`` (``wiretask._redis.errors.REDIS_ERRORS``,
``wiretask._sqlite.SQLITE_ERRORS``; py-amqp adds its own), written once with the reason
for every row, and used by every module that talks to that driver (transports, result
backends, the scheduler). So ``recoverable`` (``ConnectionLost``: the publish retry
policy reconnects and retries, a result subscription resynchronizes) means the same
thing everywhere, and every message names the action and the masked URL, with the
password scrubbed from the driver's own text.

Rows are tried in order and the first that matches wins, so a subclass that means
something else than its parent (redis-py's ``AuthenticationError`` is a
``ConnectionError``) comes before it. An exception no row matches is not translated: it
goes up as itself (a bug of ours must not pass for broker trouble).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Literal

import attrs

from wiretask._url import MASK
from wiretask.errors import TransportError

__all__ = ["ErrorTable", "Row", "map_exceptions"]


def _class_and_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@attrs.frozen
class Row:
    """Driver exceptions of class ``driver`` (and, with ``when``, only those it accepts)
    become ``error``, for the reason ``why``."""

    driver: type[BaseException]
    error: type[TransportError]
    why: str
    #: Narrows the row to some instances (SQLite says what went wrong by result code,
    #: not by class).
    when: Callable[[BaseException], bool] | None = None

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.driver) and (self.when is None or self.when(exc))


@attrs.frozen
class ErrorTable:
    """The translation of one driver's exceptions: ``rows`` in order, first match wins."""

    #: The driver as messages name it ("Redis", "SQLite").
    name: str
    rows: tuple[Row, ...]
    #: The driver exception's text as it appears in our message.
    detail: Callable[[BaseException], str] = _class_and_text

    def row_for(self, exc: BaseException) -> Row | None:
        """The first row that matches ``exc``, or ``None``."""
        for row in self.rows:
            if row.matches(exc):
                return row
        return None

    def translate(
        self, exc: BaseException, action: str, *, url: str | None, secret: str | None = None
    ) -> TransportError | None:
        """The wiretask error for ``exc`` raised while doing ``action`` against ``url``
        (already masked): ``"<name> <action> failed: <detail> [<url>]"``, with ``secret``
        (the password) replaced by ``**`` in the driver's text. ``None`` when no row
        matches. The caller raises it ``from exc``."""
        row = self.row_for(exc)
        if row is None:
            return None
        text = self.detail(exc)
        if secret:
            text = text.replace(secret, MASK)
        return row.error(f"{self.name} {action} failed: {text}", url=url)


class map_exceptions:  # lower case: httpcore's name, and it is used like a function
    """``with map_exceptions(table, action, url=..., secret=...):`` raises the
    translation (``ErrorTable.translate``) of a driver exception raised in the block,
    chained ``from`` it; other exceptions pass untouched.

    ``on_error``, if given, is called with each driver exception the table translates,
    before its translation is raised: a driver whose error shows a connection to be
    unusable drops it there (``wiretask._redis.errors.Boundaries``).

    A class rather than a generator, as it wraps every command on the hot paths. It
    keeps no state between uses, so one instance may be kept per action and entered by
    any number of threads at once.
    """

    __slots__ = ("_action", "_on_error", "_secret", "_table", "_url")

    def __init__(
        self, table: ErrorTable, action: str, *, url: str | None, secret: str | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._table = table
        self._action = action
        self._url = url
        self._secret = secret
        self._on_error = on_error

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None:
            return False
        error = self._table.translate(exc, self._action, url=self._url, secret=self._secret)
        if error is None:
            return False
        if self._on_error is not None:
            self._on_error(exc)
        raise error from exc
