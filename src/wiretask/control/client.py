"""``app.control``: Celery's remote-control client (``celery.app.control``) on wiretask.

``Control`` broadcasts commands to every worker (Celery's and wiretask's alike: they
share Kombu's pidbox, ``wire``) and collects their replies; ``Inspect`` is its read-only
side. The calls and what they return are Celery's::

    app.control.ping(timeout=1.0)              # [{"celery@a": {"ok": "pong"}}, ...]
    app.control.revoke(task_id, terminate=True)
    app.control.inspect(timeout=2).active()    # {"celery@a": [TASK_INFO, ...]} or None
    app.AsyncResult(task_id).revoke()

Replies are collected the way Kombu collects them: the call waits up to ``timeout``
seconds for each next reply and stops when one does not come in time (or when
``limit`` replies, or one per ``destination``, have come).

It needs a broker that can broadcast (``transports.base.Broadcast``); on one that
cannot, every call raises ``ImproperlyConfigured`` naming the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from wiretask._ids import new_id
from wiretask.control.wire import (
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_EXPIRES,
    DEFAULT_QUEUE_TTL,
    LamportClock,
    ReplyTo,
    Request,
    control_exchange,
    decode_reply,
    encode_request,
    reply_exchange,
    reply_queue,
)
from wiretask.errors import DecodeError, ImproperlyConfigured, ValidationError
from wiretask.transports.base import Broadcast

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = ["Control", "Inspect", "flatten_reply"]

logger = logging.getLogger("wiretask.control")

#: Celery's default signal name for ``revoke(terminate=True)``.
TERM_SIGNAME: Final = "SIGTERM"

Replies = list[dict[str, Any]]


def flatten_reply(replies: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``[{node: reply}, ...]`` as one ``{node: reply}`` (Celery's ``flatten_reply``; a
    node that answered twice keeps its last reply, and a warning names it)."""
    nodes: dict[str, Any] = {}
    for item in replies:
        for name, reply in item.items():
            if name in nodes:
                logger.warning(
                    "received multiple replies from node %s: give each worker a unique "
                    "node name (-n/--hostname)", name,
                )
            nodes[name] = reply
    return nodes


def _no_connection(connection: object) -> None:
    if connection is not None:
        raise ValidationError(
            "connection", "wiretask sends control commands on the app's own broker "
            "connection; pass no connection", value=connection,
        )


class Control:
    """The remote-control client of ``app`` (``app.control``).

    Settings (Celery's names): ``control_exchange`` (the pidbox namespace, default
    ``celery``), ``control_queue_expires`` and ``control_queue_ttl`` (the reply queue's
    ``x-expires`` and ``x-message-ttl``), ``task_serializer`` (the request body).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.clock = LamportClock()

    def __repr__(self) -> str:
        return f"<Control of {self.app!r}>"

    @property
    def namespace(self) -> str:
        return str(self.app.conf.get("control_exchange") or DEFAULT_NAMESPACE)

    def _transport(self) -> Broadcast:
        transport = self.app.transport
        if not isinstance(transport, Broadcast):
            raise ImproperlyConfigured(
                f"remote control needs a broker that can broadcast, and {transport.url} "
                "cannot (its transport does not offer Broadcast)", setting="broker_url",
            )
        return transport

    # -- the one primitive ------------------------------------------------------------

    def broadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        connection: object = None,
        reply: bool = False,
        timeout: float | None = 1.0,
        limit: int | None = None,
        callback: Callable[[dict[str, Any]], object] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra_arguments: Any,
    ) -> Replies | None:
        """Send ``command`` to every worker (or those in ``destination``, or whose node
        name matches ``pattern`` with ``matcher``: ``glob`` or ``pcre``). With ``reply``,
        collect the replies (see the module docstring) and return them as Celery does,
        a list of ``{node: reply}``; else return None at once.

        Raises:
            ValidationError: a ``destination`` that is not a list of names, a timeout or
                limit out of range, or a ``connection`` (wiretask uses the app's).
            ImproperlyConfigured: the broker cannot broadcast.
            EncodeError: an argument the serializer cannot write.
            TransportError: the broker failed.
        """
        _no_connection(connection)
        if destination is not None and (
            isinstance(destination, str) or not isinstance(destination, Sequence)
        ):
            raise ValidationError(
                "destination", f"must be a list of node names, not {type(destination).__name__}",
                value=destination,
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
        ):
            raise ValidationError("timeout", f"must be a number of seconds >= 0, got {timeout!r}",
                                  value=timeout)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValidationError("limit", f"must be an int >= 1, got {limit!r}", value=limit)
        transport = self._transport()
        app = self.app
        arguments = {**(arguments or {}), **extra_arguments}
        namespace = self.namespace
        ticket = new_id() if reply else None
        oid = new_id()
        request = Request(
            method=command, arguments=arguments,
            destination=list(destination) if destination is not None else None,
            pattern=pattern if pattern and matcher else None,
            matcher=matcher if pattern and matcher else None,
            ticket=ticket,
            reply_to=ReplyTo(exchange=reply_exchange(namespace).name, routing_key=oid)
            if reply else None,
            clock=self.clock.forward(),
            expires=time.time() + timeout if timeout else 0,
        )
        frame = encode_request(request, app.registry, str(app.conf.task_serializer))
        if not reply:
            transport.broadcast(control_exchange(namespace), frame)
            return None
        if limit is None and destination:
            limit = len(destination)
        inbox = transport.listen(reply_exchange(namespace), reply_queue(
            oid, namespace,
            expires=app.conf.get("control_queue_expires", DEFAULT_QUEUE_EXPIRES),
            message_ttl=app.conf.get("control_queue_ttl", DEFAULT_QUEUE_TTL),
        ))
        try:
            transport.broadcast(control_exchange(namespace), frame)
            return self._collect(inbox, ticket, limit, timeout, callback)
        finally:
            inbox.close()

    def _collect(
        self, inbox: Any, ticket: str | None, limit: int | None, timeout: float | None,
        callback: Callable[[dict[str, Any]], object] | None,
    ) -> Replies:
        replies: Replies = []
        wait = 1.0 if timeout is None else float(timeout)
        while limit is None or len(replies) < limit:
            frame = inbox.get(wait)
            if frame is None:
                break
            try:
                decoded = decode_reply(frame, self.app.registry)
            except DecodeError as exc:
                logger.warning("ignoring a control reply that cannot be read: %s", exc)
                continue
            for one in decoded:
                self.clock.adjust(one.clock)
                if one.ticket is not None and one.ticket != ticket:
                    continue  # a late reply to an earlier call on this queue
                body = {one.hostname: one.result}
                if callback is not None:
                    callback(body)
                replies.append(body)
        return replies

    # -- commands ---------------------------------------------------------------------

    def inspect(
        self, destination: Sequence[str] | str | None = None, timeout: float = 1.0,
        callback: Callable[[dict[str, Any]], object] | None = None,
        connection: object = None, limit: int | None = None, pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        """An ``Inspect`` of the workers (Celery: ``app.control.inspect(...)``)."""
        return Inspect(
            self, destination=destination, timeout=timeout, callback=callback,
            connection=connection, limit=limit, pattern=pattern, matcher=matcher,
        )

    def ping(
        self, destination: Sequence[str] | None = None, timeout: float = 1.0, **kwargs: Any
    ) -> Replies:
        """``[{node: {"ok": "pong"}}, ...]`` from every worker that answered in time."""
        replies = self.broadcast("ping", reply=True, arguments={}, destination=destination,
                                 timeout=timeout, **kwargs)
        assert replies is not None  # reply=True
        return replies

    def revoke(
        self, task_id: str | Sequence[str], destination: Sequence[str] | None = None,
        terminate: bool = False, signal: str | None = TERM_SIGNAME, **kwargs: Any,
    ) -> Replies | None:
        """Tell every worker (or ``destination``) to revoke ``task_id`` (or a list of
        ids): a worker that has not run it yet will not, and with ``terminate`` a
        worker whose pool can stop a running task stops it (see ``spec/control.md``).

        Raises:
            ValidationError: an id that is not a string (nothing is sent).
        """
        _check_ids(task_id)
        return self.broadcast("revoke", destination=destination, arguments={
            "task_id": task_id if isinstance(task_id, str) else list(task_id),
            "terminate": terminate,
            "signal": signal,
        }, **kwargs)

    def terminate(
        self, task_id: str | Sequence[str], destination: Sequence[str] | None = None,
        signal: str | None = TERM_SIGNAME, **kwargs: Any,
    ) -> Replies | None:
        """``revoke(task_id, terminate=True)``."""
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal,
                           **kwargs)

    def revoke_by_stamped_headers(
        self, headers: Mapping[str, Any], destination: Sequence[str] | None = None,
        terminate: bool = False, signal: str | None = TERM_SIGNAME, **kwargs: Any,
    ) -> Replies | None:
        """Revoke every task whose ``stamps`` carry one of ``headers``' values (Celery's
        ``revoke_by_stamped_headers``; ``{"mystamp": ["a", "b"]}``)."""
        if not isinstance(headers, Mapping):
            raise ValidationError("headers", f"must be a mapping, got {headers!r}",
                                  value=headers)
        return self.broadcast("revoke_by_stamped_headers", destination=destination,
                              arguments={"headers": dict(headers), "terminate": terminate,
                                         "signal": signal}, **kwargs)

    def enable_events(self, destination: Sequence[str] | None = None,
                      **kwargs: Any) -> Replies | None:
        """Tell every worker (or ``destination``) to send task events (Celery's)."""
        return self.broadcast("enable_events", arguments={}, destination=destination,
                              **kwargs)

    def disable_events(self, destination: Sequence[str] | None = None,
                       **kwargs: Any) -> Replies | None:
        """Tell every worker (or ``destination``) to stop sending task events."""
        return self.broadcast("disable_events", arguments={}, destination=destination,
                              **kwargs)

    def heartbeat(self, destination: Sequence[str] | None = None,
                  **kwargs: Any) -> Replies | None:
        """Tell every worker (or ``destination``) to send a heartbeat event now."""
        return self.broadcast("heartbeat", arguments={}, destination=destination, **kwargs)


def _check_ids(task_id: object) -> None:
    ids = [task_id] if isinstance(task_id, str) else task_id
    if not isinstance(ids, Sequence) or not ids or not all(
        isinstance(i, str) and i for i in ids
    ):
        raise ValidationError(
            "task_id", f"must be a task id or a list of them, got {task_id!r}", value=task_id
        )


class Inspect:
    """Read-only commands to the workers (Celery's ``Inspect``). Each returns
    ``{node: reply}``, or None when no worker answered in time; with a single string
    ``destination``, that node's reply alone.

    Args:
        control: the app's ``Control``.
        destination: node names (a list), or one node name.
        timeout: seconds to wait for each next reply.
        callback: called with each ``{node: reply}`` as it arrives.
        limit: stop after this many replies.
        pattern, matcher: select nodes by name (``glob`` or ``pcre``).
    """

    def __init__(
        self, control: Control, *, destination: Sequence[str] | str | None = None,
        timeout: float = 1.0, callback: Callable[[dict[str, Any]], object] | None = None,
        connection: object = None, limit: int | None = None, pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        _no_connection(connection)
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def request(self, command: str, **arguments: Any) -> Any:
        """Send any inspect command and return the replies as the named ones do."""
        destination = self.destination
        targets = [destination] if isinstance(destination, str) else destination
        replies = self.control.broadcast(
            command, arguments=arguments, destination=targets, reply=True,
            timeout=self.timeout, limit=self.limit, callback=self.callback,
            pattern=self.pattern, matcher=self.matcher,
        )
        if not replies:
            return None
        by_node = flatten_reply(replies)
        if isinstance(destination, str):
            return by_node.get(destination)
        return by_node

    def ping(self, destination: Sequence[str] | None = None) -> Any:
        if destination:
            self.destination = destination
        return self.request("ping")

    def active(self, safe: bool | None = None) -> Any:
        """Tasks running now: ``{node: [TASK_INFO, ...]}``."""
        return self.request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> Any:
        """Tasks received and waiting for a pool slot (not running, not waiting for an
        eta)."""
        del safe  # accepted as Celery's is, and not sent (Celery sends none either)
        return self.request("reserved")

    def scheduled(self, safe: bool | None = None) -> Any:
        """Tasks held until their eta: ``{node: [{"eta", "priority", "request"}, ...]}``."""
        del safe
        return self.request("scheduled")

    def stats(self) -> Any:
        return self.request("stats")

    def revoked(self) -> Any:
        return self.request("revoked")

    def registered(self, *taskinfoitems: str) -> Any:
        return self.request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def active_queues(self) -> Any:
        return self.request("active_queues")

    def query_task(self, *ids: str | Sequence[str]) -> Any:
        wanted: list[Any] = list(ids)
        if len(wanted) == 1 and isinstance(wanted[0], list | tuple):
            wanted = list(wanted[0])
        return self.request("query_task", ids=wanted)

    def conf(self, with_defaults: bool = False) -> Any:
        return self.request("conf", with_defaults=with_defaults)

    def clock(self) -> Any:
        return self.request("clock")

    def report(self) -> Any:
        return self.request("report")
