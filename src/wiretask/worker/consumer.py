"""The consumer: the thread that receives messages while there is room and routes them.

Each turn of its loop:

1. housekeeping: acks that failed are tried again (``AckRetry``), ``due()`` is called
   every ``DUE_INTERVAL`` where the transport holds delayed messages itself
   (``BrokerDelay``), and held eta messages that came due are dispatched;
2. messages taken with the last acks of a pool that runs in this thread are routed;
3. the pool gets the thread if it wants it (``Pool.run_in_consumer``: solo runs its
   batch here, then goes round again);
4. otherwise, as many messages as there is room for (``Ledger.room``) are received in
   one call (``receive_many``, waiting up to ``POLL_INTERVAL``, less if an eta or
   ``due()`` comes sooner) and routed (``routing.Router``).

A broker error (or a bug in a transport) never ends the thread: it waits, doubling from
0.1 s up to ``MAX_BROKER_BACKOFF``, reconnects and goes on.

Threading: one consumer thread at a time is *current*. A pool that runs tasks in it can
ask for a new one (``replace``: the old one is stuck in a task past its hard time
limit); the old one leaves when it comes back. The consumer receives under the
ledger's ``receiving`` lock, so that a pool thread whose acks take new messages never
counts the same room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from wiretask.errors import TransportError
from wiretask.transports.base import BrokerDelay
from wiretask.worker.ledger import POLL_INTERVAL

if TYPE_CHECKING:
    from wiretask.transports.base import Delivery, Transport
    from wiretask.worker.ledger import Ledger
    from wiretask.worker.pools.base import Pool
    from wiretask.worker.routing import Router
    from wiretask.worker.settlement import AckRetry

__all__ = ["DUE_INTERVAL", "MAX_BROKER_BACKOFF", "Consumer"]

logger = logging.getLogger("wiretask.worker")

#: How often ``Transport.due()`` is called (moves due delayed messages on Redis).
DUE_INTERVAL = 0.5
#: Longest pause after a broker error in the consume loop (doubling from 0.1 s).
MAX_BROKER_BACKOFF = 5.0


@attrs.define
class _Loop:
    """A consumer thread's own state between turns."""

    next_due: float = 0.0
    backoff: float = 0.0
    #: Messages taken with the acks of a batch run in this thread, to route next.
    refill: Sequence[Delivery] = ()


class Consumer:
    """Receives and routes messages in its own thread (see the module docstring).

    Args:
        transport: the worker's transport.
        queues: the queues to consume.
        ledger: the room to receive.
        router: routes what arrives.
        unacked: acks to try again.
        pool: the worker's pool (``run_in_consumer``).
        stopping: set when the worker stops taking work: the thread leaves its loop.
        hostname: names the thread.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        queues: Sequence[str],
        ledger: Ledger,
        router: Router,
        unacked: AckRetry,
        pool: Pool,
        stopping: threading.Event,
        hostname: str,
    ) -> None:
        self._transport = transport
        self._queues = list(queues)
        self._ledger = ledger
        self._router = router
        self._unacked = unacked
        self._pool = pool
        self._stopping = stopping
        self._name = f"wiretask-consumer-{hostname}"
        self._due: Callable[[], int] | None = (
            transport.due if isinstance(transport, BrokerDelay) else None
        )
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        #: The consumer thread inside the pool's turn (running tasks, for solo).
        self._lent: threading.Thread | None = None

    # -- threads (``ConsumerHandle``) -------------------------------------------------

    def start(self) -> None:
        """Start the consumer thread."""
        self.replace()

    def replace(self) -> None:
        """Start a consumer thread that takes over from the current one, which leaves
        its loop when it comes back from the task it is stuck in."""
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread = thread
        self._threads.append(thread)
        thread.start()

    def current(self) -> bool:
        return threading.current_thread() is self._thread

    def quiesce(self) -> None:
        """After ``stopping`` is set: wait until the consumer can dispatch nothing more.
        That is when its thread has left the loop, or is in the pool's turn (running
        tasks: it leaves the loop when it comes back, routing nothing more, while the
        worker waits for those tasks like for any pool's)."""
        while True:
            thread = self._thread
            if thread is None or self._lent is thread:
                return
            thread.join(0.01)
            if not thread.is_alive() and thread is self._thread:
                return

    def join(self, until: float) -> None:
        """Wait until ``until`` (``time.monotonic()``) for every consumer thread to
        end (one abandoned in a task may never return: it is a daemon)."""
        for thread in list(self._threads):
            thread.join(max(until - time.monotonic(), 0.0))

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        loop = _Loop()
        while not self._stopping.is_set():
            try:
                if not self._turn(loop):
                    return  # abandoned in a task: a new consumer has taken over
            except Exception as exc:
                if self._recover(exc, loop):
                    break
        if loop.refill:  # taken with a batch's acks as the worker stopped: given back
            with self._ledger.receiving:
                self._router.handle(loop.refill)

    def _turn(self, loop: _Loop) -> bool:
        """One turn of the loop. False if this thread is no longer the consumer."""
        self._housekeeping(loop)
        if loop.refill:
            refill, loop.refill = loop.refill, ()
            with self._ledger.receiving:
                self._router.handle(refill)
        me = threading.current_thread()
        self._lent = me
        try:
            ran = self._pool.run_in_consumer()
        finally:
            if self._lent is me:
                self._lent = None
        if ran is not None:
            if self._thread is not me:
                return False
            loop.refill = ran
            loop.backoff = 0.0
        elif self._receive(loop):
            loop.backoff = 0.0
        return True

    def _housekeeping(self, loop: _Loop) -> None:
        now = time.monotonic()
        if self._unacked.due(now):
            self._unacked.retry(now)
        if self._due is not None and now >= loop.next_due:
            self._due()
            loop.next_due = now + DUE_INTERVAL
        if self._ledger.holds_any():
            # Under ``receiving``, as every dispatch is: a revoke looks at the held
            # messages and the dispatched jobs under it, and must see each in one place.
            with self._ledger.receiving:
                for delivery, message in self._ledger.release_due():
                    self._router.dispatch(delivery, message)

    def _receive(self, loop: _Loop) -> bool:
        """Receive as many messages as there is room for and route them. False if
        there was no room."""
        wait = POLL_INTERVAL
        if self._due is not None:
            wait = min(wait, max(loop.next_due - time.monotonic(), 0.0))
        timeout = self._ledger.wait_for_room(wait)
        if timeout is None:
            return False
        with self._ledger.receiving:
            room = self._ledger.room()
            if room < 1:
                return False
            # As many as there is room for, in one round trip where the broker can;
            # dispatched before another receiver counts the room.
            deliveries = self._transport.receive_many(self._queues, limit=room, timeout=timeout)
            self._router.handle(deliveries)
        return True

    def _recover(self, exc: Exception, loop: _Loop) -> bool:
        """After an error in a turn: wait, reconnect. True if the worker is stopping."""
        # TransportError is the expected kind (broker down); anything else is a bug in
        # a transport, and neither may end the consumer thread.
        loop.backoff = min(max(loop.backoff * 2, 0.1), MAX_BROKER_BACKOFF)
        if isinstance(exc, TransportError):
            logger.warning("broker error (%s); retrying in %.1fs", exc, loop.backoff)
        else:
            logger.exception("unexpected error consuming; retrying in %.1fs", loop.backoff)
        if self._stopping.wait(loop.backoff):
            return True
        try:
            self._transport.connect()
        except TransportError:
            pass
        return False
