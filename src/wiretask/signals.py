"""Signals: Celery's observer (``celery.utils.dispatch.Signal``), for the app's
``on_after_configure``.

``signal.connect`` registers a receiver, as a call or a decorator, with or without
options; ``signal.send(sender, **named)`` calls every live receiver connected for that
sender (or for any sender) with ``signal=``, ``sender=`` and the named arguments, and
returns ``[(receiver, response), ...]``. As in Celery, a receiver that raises does not
stop the others: its exception is logged and returned as its response.

Receivers are held weakly by default (``weak=True``), as in Celery: a receiver that is
garbage collected is dropped. Module-level functions (the usual decorator use) live as
long as their module.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from wiretask.errors import ValidationError

__all__ = ["Signal"]

log = logging.getLogger(__name__)

Receiver = Callable[..., Any]


def _identity(target: object) -> Hashable:
    if isinstance(target, str | bytes):
        return target
    function = getattr(target, "__func__", None)
    return id(function) if function is not None else id(target)


def _accepts_kwargs(receiver: Receiver) -> bool:
    try:
        parameters = inspect.signature(receiver).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Signal:
    """A signal receivers connect to and a sender sends.

    Args:
        name: for ``repr`` and logs (``"app.on_after_configure"``).
        providing_args: the named arguments ``send`` passes (documentation, as Celery's).
    """

    def __init__(
        self, name: str | None = None, providing_args: set[str] | frozenset[str] | None = None
    ) -> None:
        self.name = name
        self.providing_args = frozenset(providing_args or ())
        self._lock = threading.Lock()
        #: ((receiver key, sender key), receiver or a weak reference to it)
        self._receivers: list[tuple[tuple[Hashable, Hashable], Any]] = []

    def __repr__(self) -> str:
        return f"<Signal: {self.name} providing_args={set(self.providing_args)!r}>"

    def connect(
        self, receiver: Receiver | None = None, /, *, sender: object = None,
        weak: bool = True, dispatch_uid: Hashable | None = None, retry: bool = False,
    ) -> Any:
        """Connect ``receiver`` (``signal.connect(f)``, ``@signal.connect`` or
        ``@signal.connect(sender=app)``) to calls of ``send`` by ``sender`` (None: by
        any sender). A second connection with the same receiver (or ``dispatch_uid``) and
        sender is ignored.

        Raises:
            ValidationError: the receiver is not callable or takes no ``**kwargs``, or
                ``retry=True`` (Celery's retrying receivers are not supported).
        """
        if retry:
            raise ValidationError(
                "retry", "Signal.connect(retry=True) is not supported by wiretask: retry "
                "inside the receiver instead", value=retry,
            )

        def register(function: Receiver) -> Receiver:
            self._connect(function, sender, weak, dispatch_uid)
            return function

        return register if receiver is None else register(receiver)

    def _connect(
        self, receiver: Receiver, sender: object, weak: bool, dispatch_uid: Hashable | None
    ) -> None:
        if not callable(receiver):
            raise ValidationError("receiver", f"must be callable, got {receiver!r}",
                                  value=receiver)
        if not _accepts_kwargs(receiver):
            raise ValidationError(
                "receiver", f"{receiver!r} must accept keyword arguments (**kwargs), as "
                "signal receivers get signal=, sender= and the signal's own arguments",
                value=receiver,
            )
        key = (dispatch_uid if dispatch_uid is not None else _identity(receiver),
               _identity(sender))
        held: Any = receiver
        if weak:
            if inspect.ismethod(receiver):
                held = weakref.WeakMethod(receiver)
            else:
                held = weakref.ref(receiver)
        with self._lock:
            if all(existing != key for existing, _ in self._receivers):
                self._receivers.append((key, held))

    def disconnect(
        self, receiver: Receiver | None = None, sender: object = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Disconnect a receiver (by itself or its ``dispatch_uid``) for ``sender``;
        whether one was connected."""
        key = (dispatch_uid if dispatch_uid is not None else _identity(receiver),
               _identity(sender))
        with self._lock:
            for index, (existing, _) in enumerate(self._receivers):
                if existing == key:
                    del self._receivers[index]
                    return True
        return False

    def _live(self, sender: object) -> list[Receiver]:
        wanted = (_identity(None), _identity(sender))
        live: list[Receiver] = []
        with self._lock:
            kept = []
            for key, held in self._receivers:
                receiver = held() if isinstance(held, weakref.ReferenceType) else held
                if receiver is None:
                    continue  # collected: forget it
                kept.append((key, held))
                if key[1] in wanted:
                    live.append(receiver)
            self._receivers = kept
        return live

    def has_listeners(self, sender: object = None) -> bool:
        return bool(self._live(sender))

    def send(self, sender: object, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every live receiver connected for ``sender`` or for any sender; return
        ``[(receiver, response or exception), ...]`` (exceptions are logged)."""
        responses: list[tuple[Receiver, Any]] = []
        for receiver in self._live(sender):
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                log.exception("Signal handler %r raised", receiver)
                responses.append((receiver, exc))
            else:
                responses.append((receiver, response))
        return responses

    send_robust = send
