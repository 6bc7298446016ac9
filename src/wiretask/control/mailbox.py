"""The node side of the control channel: a thread that listens on a worker's control
queue and answers, as Kombu's ``pidbox.Node`` does for Celery's worker.

The mailbox knows nothing of workers: it is given a table of **commands** (name ->
callable taking the request's arguments as keywords) and calls the one a request names,
then replies with what it returned. What happens to each request, in order:

1. decode it under the app's accept policy (a body that cannot be read is logged and
   dropped: it has no readable ``reply_to``);
2. adjust the node's Lamport clock (Kombu: ``adjust_clock(headers["clock"])``; Celery's
   worker then forwards it once more);
3. act only if the node is addressed: listed in ``destination``, or matching
   ``pattern``/``matcher``, or everyone (``wire.matches``);
4. call the command; its return value is the reply (``NO_REPLY``: none, as Celery's
   ``shutdown`` sends none). A command that raises is answered ``{"error": repr(exc)}``
   and logged, exactly as Kombu answers; an unknown command is answered as Celery's
   worker answers it, ``{"error": "KeyError('<name>')"}``;
5. with ``reply_to``, publish ``{hostname: reply}`` with the request's ``ticket`` to
   ``reply_to.exchange`` (direct) under ``reply_to.routing_key``.

A broker error ends nothing: the thread closes its inbox, waits (doubling from 0.1 s to
``MAX_BACKOFF``) and listens again; control messages sent meanwhile are lost, as on a
Celery worker that reconnects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from wiretask.codecs import Registry
from wiretask.control.wire import (
    LamportClock,
    Reply,
    Request,
    control_exchange,
    decode_request,
    encode_reply,
    matches,
    nok,
)
from wiretask.errors import DecodeError, EncodeError, TransportError, ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import BoundQueue, Broadcast, Exchange, Inbox

__all__ = ["MAX_BACKOFF", "NO_REPLY", "Command", "Mailbox"]

logger = logging.getLogger("wiretask.worker")

#: Longest pause between attempts to listen again after a broker error.
MAX_BACKOFF: Final = 5.0
#: How long one wait for a request lasts: how soon ``stop()`` is noticed.
POLL: Final = 0.2

#: A command: the request's arguments as keywords, the reply as the return value.
Command = Callable[..., Any]


class _NoReply:
    def __repr__(self) -> str:
        return "NO_REPLY"


#: Returned by a command that sends no reply (the node is going away).
NO_REPLY: Final[Any] = _NoReply()


class Mailbox:
    """Listens on ``queue`` (bound to the namespace's control exchange) and runs
    ``commands`` for the requests addressed to ``hostname``, in its own thread.

    Args:
        transport: the broker (its ``Broadcast`` side).
        hostname: the node name requests are matched against and replies carry.
        queue: the node's control queue (``wire.node_queue``).
        namespace: the pidbox namespace (Celery's ``control_exchange``).
        commands: name -> command.
        registry: decodes requests (its accept policy) and encodes replies.
        serializer: the serializer of replies (the app's ``task_serializer``).
        clock: the node's Lamport clock.
    """

    def __init__(
        self,
        *,
        transport: Broadcast,
        hostname: str,
        queue: BoundQueue,
        namespace: str,
        commands: Mapping[str, Command],
        registry: Registry,
        serializer: str,
        clock: LamportClock,
    ) -> None:
        self.hostname = hostname
        self.commands = dict(commands)
        self.clock = clock
        self._transport = transport
        self._queue = queue
        self._exchange = control_exchange(namespace)
        self._registry = registry
        self._serializer = serializer
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inbox: Inbox | None = None
        self._thread: threading.Thread | None = None
        #: Set once the first inbox is listening (tests and ``start`` wait for it).
        self.listening = threading.Event()
        self._last_error: TransportError | None = None

    def __repr__(self) -> str:
        return f"<Mailbox {self._queue.name}>"

    # -- life cycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and wait up to ``timeout`` seconds until it listens (so a
        request sent right after the worker started reaches it). A broker that cannot
        be reached by then is not an error here: the thread keeps trying."""
        self._thread = threading.Thread(
            target=self._run, name=f"wiretask-mailbox-{self.hostname}", daemon=True
        )
        self._thread.start()
        if not self.listening.wait(timeout):
            # The cause is the last broker error: unreachable, or (RabbitMQ's
            # RESOURCE_LOCKED) another node of the same name holding the queue.
            logger.warning("remote control of %s is not listening yet (%s); it keeps trying",
                           self.hostname, self._last_error or "no answer from the broker")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening: the control queue and its binding are deleted."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)  # it closes its inbox as it leaves (within POLL)
        self._drop_inbox()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._drop_inbox()

    def _loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                inbox = self._listen()
                if inbox is None:
                    return
                backoff = 0.0
                while not self._stop.is_set():
                    frame = inbox.get(POLL)
                    if frame is not None:
                        self.handle(frame)
            except TransportError as exc:
                if self._stop.is_set():
                    return
                self._last_error = exc
                backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF)
                logger.warning("remote control: broker error (%s); listening again in "
                               "%.1fs", exc, backoff)
                self._drop_inbox()
                self._stop.wait(backoff)
            except Exception:
                # A bug must not end remote control for good (nor take the worker down).
                logger.exception("remote control: unexpected error; listening again")
                self._drop_inbox()
                self._stop.wait(MAX_BACKOFF)

    def _listen(self) -> Inbox | None:
        with self._lock:
            if self._inbox is not None:
                return self._inbox
        inbox = self._transport.listen(self._exchange, self._queue)
        with self._lock:
            if self._stop.is_set():
                inbox.close()
                return None
            self._inbox = inbox
        self.listening.set()
        return inbox

    def _drop_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox.close()

    # -- one request ------------------------------------------------------------------

    def handle(self, frame: Frame) -> Any:
        """Act on one request frame (see the module docstring); returns the reply sent,
        or None when the request was not for this node or had no command to run."""
        try:
            request = decode_request(frame, self._registry)
        except DecodeError:
            logger.exception("remote control: cannot decode a control message")
            return None
        self.clock.adjust(request.clock)
        self.clock.forward()  # Celery's worker: "clients usually don't have a valid clock"
        if not self._addressed(request):
            return None
        reply = self.dispatch(request)
        if reply is NO_REPLY or request.reply_to is None:
            return None if reply is NO_REPLY else reply
        self._reply(request, reply)
        return reply

    def _addressed(self, request: Request) -> bool:
        problem = ""
        try:
            return matches(self.hostname, request)
        except ValidationError as exc:
            problem = str(exc)
        logger.error("remote control: %s in %r; not acting on it", problem, request.method)
        return False

    def dispatch(self, request: Request) -> Any:
        """Run the command ``request`` names; its reply (see the module docstring)."""
        logger.debug("remote control: %s(%s) [reply_to: %s ticket: %s]", request.method,
                     dict(request.arguments), request.reply_to, request.ticket)
        command = self.commands.get(request.method)
        if command is None:
            # What Kombu's Node.handle does: self.handlers[method] raises KeyError, and
            # dispatch() answers repr() of it.
            exc = KeyError(request.method)
            logger.error("No such control command: %s", request.method)
            return nok(repr(exc))
        try:
            return command(**request.arguments)
        except Exception as exc:
            logger.error("remote control command %s error: %r", request.method, exc,
                         exc_info=True)
            return nok(repr(exc))

    def _reply(self, request: Request, reply: Any) -> None:
        assert request.reply_to is not None
        answer = Reply(hostname=self.hostname, result=reply, ticket=request.ticket,
                       clock=self.clock.forward())
        try:
            frame = encode_reply(answer, self._registry, self._serializer)
        except EncodeError as exc:
            logger.exception("remote control: the reply to %s cannot be serialized",
                             request.method)
            frame = encode_reply(
                Reply(hostname=self.hostname, result=nok(f"cannot serialize the reply: {exc}"),
                      ticket=request.ticket, clock=answer.clock),
                self._registry, self._serializer,
            )
        exchange = Exchange(name=request.reply_to.exchange, type="direct")
        try:
            self._transport.broadcast(exchange, frame, routing_key=request.reply_to.routing_key)
        except TransportError as exc:
            logger.warning("remote control: could not reply to %s: %s", request.method, exc)
