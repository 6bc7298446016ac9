"""The scheduler: moving due delayed messages into their queues, and the movers'
heartbeat that tells publishers whether holding a message broker-side is safe.

A ``not_before`` message held broker-side waits in the ``_wiretask.delayed*`` keys until
it is due. A wiretask consumer moves the due messages of the queues it consumes itself
(inside ``POP``); Celery consumers need someone to move them for every queue: a
*mover*, which is whoever runs the ``DUE`` script: the worker's periodic ``due()``
(``Scheduler.due``, the ``BrokerDelay`` capability of ``RedisTransport``) or
``run_scheduler`` (``wiretask scheduler``).

Every ``DUE`` run also refreshes its mover's heartbeat, a member of the
``_wiretask.movers`` sorted set scored with the time it expires; a mover that stops
cleanly removes it (``retire``). ``Movers.alive`` is what a publisher in
``delay_mode="auto"`` asks before holding a message: it reads the latest expiry at most
once per ``MOVER_CACHE`` seconds (one ``ZRANGE``), so the publish path pays one round
trip per second at most, and only when it publishes delayed messages. Held messages
also carry a restore token (see ``wiretask._redis.scripts.DUE``), so a message held
while the last mover crashes still reaches its queue through any consumer's
``restore_visible``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from wiretask._ids import new_id
from wiretask._redis import scripts
from wiretask._redis.options import parse
from wiretask.errors import ConnectionLost, TransportError, ValidationError
from wiretask.transports.redis.database import Database, text

__all__ = ["MOVER_CACHE", "MOVER_TTL", "Movers", "Scheduler", "run_scheduler"]

log = logging.getLogger(__name__)

#: Seconds a mover's heartbeat outlives its last ``DUE`` run (``run_scheduler`` uses 3 x
#: its interval when that is longer). The worker runs ``DUE`` every half second, so a
#: live worker never lapses; a crashed one is taken for dead this long after its last
#: run, which bounds how long publishers go on holding messages for it.
MOVER_TTL = 10.0
#: Seconds a publisher trusts the heartbeats it read last.
MOVER_CACHE = 1.0


class Movers:
    """This process's side of the movers' heartbeat: its mover id, what its own ``DUE``
    runs vouch for, and the cached answer to "is any mover alive?".

    Args:
        database: the Redis database.
        cache: seconds an answer read from Redis is trusted.
        clock: the monotonic clock that times ``cache``.
    """

    def __init__(
        self, database: Database, *, cache: float = MOVER_CACHE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = database
        self._cache = cache
        self._clock = clock
        #: This process's member in ``_wiretask.movers`` (written by ``DUE`` runs only).
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._lock = threading.Lock()
        #: Until when (unix s) this process's own last ``DUE`` run vouches for a mover.
        self._vouched = 0.0
        self._ran = False
        #: Whether a live heartbeat was found in Redis, and when that was read.
        self._alive = False
        self._read_at = -math.inf

    def alive(self) -> bool:
        """Whether a mover is known to be alive now: this process ran ``DUE`` within its
        heartbeat, or the heartbeats read at most ``cache`` seconds ago say so (one
        ``ZRANGE`` when they are older).

        Raises:
            redis.RedisError: the read failed (the caller's error boundary maps it).
        """
        now = time.time()
        if now < self._vouched:
            return True
        if self._clock() - self._read_at >= self._cache:
            with self._lock:
                if self._clock() - self._read_at >= self._cache:
                    self._alive = int(cast(int, self._db.commands.call(
                        "ZCOUNT", self._db.keys.movers, repr(now), "+inf"))) > 0
                    self._read_at = self._clock()
        return self._alive

    def live(self) -> dict[str, float]:
        """Every mover whose heartbeat has not expired: its id and when it expires (unix
        s), read now (no cache).

        Raises:
            ConnectionLost, TransportError: Redis failed.
        """
        with self._db.errors("movers"):
            rows = cast(list[tuple[bytes, float]], self._db.client.zrange(
                self._db.keys.movers, time.time(), "+inf", byscore=True, withscores=True))
        return {text(member): expires for member, expires in rows}

    def vouch(self, until: float) -> None:
        """This process ran ``DUE`` with its heartbeat valid until ``until`` (unix s)."""
        self._vouched = until
        self._ran = True

    def retire(self) -> None:
        """Remove this process's heartbeat (if a ``DUE`` run wrote one), so publishers
        stop holding for it within ``MOVER_CACHE`` instead of ``MOVER_TTL``.

        Raises:
            ConnectionLost, TransportError: Redis failed (the heartbeat then expires
                by itself).
        """
        self._vouched = 0.0
        self._read_at = -math.inf
        if not self._ran:
            return
        self._ran = False
        with self._db.errors("retire"):
            self._db.commands.call("ZREM", self._db.keys.movers, self.id)


class Scheduler:
    """Moves the due delayed messages of one Redis database, as the mover ``movers``.

    Args:
        database: the Redis database.
        movers: this process's heartbeat (``Movers``).
        heartbeat: seconds each ``DUE`` run vouches for this mover.
    """

    def __init__(self, database: Database, movers: Movers, *,
                 heartbeat: float = MOVER_TTL) -> None:
        self._db = database
        self._movers = movers
        self._heartbeat = heartbeat

    def due(self, *, limit: int = 1000) -> int:
        """Move every due delayed message into its list (``DUE`` script, ``limit`` per
        call to Redis), refreshing this mover's heartbeat; return how many moved. Safe
        to call from many processes."""
        db = self._db
        total = 0
        while True:
            now = time.time()
            until = now + self._heartbeat
            with db.errors("due"):
                run = scripts.read_due(db.commands.script(scripts.due(
                    db.keys, now=now, limit=limit, mover=self._movers.id, expires=until)))
            self._movers.vouch(until)
            total += run.moved
            if run.scanned < limit:
                return total

    def live(self) -> dict[str, float]:
        """``Movers.live``: the live movers and their heartbeats' expiry."""
        return self._movers.live()

    def retire(self) -> None:
        """``Movers.retire``: a clean stop; a failure is logged (the heartbeat expires
        by itself within its ``heartbeat`` seconds)."""
        try:
            self._movers.retire()
        except TransportError as exc:
            log.warning("could not remove the mover heartbeat %s: %s", self._movers.id, exc)


def run_scheduler(
    url: str, *, interval: float = 1.0, stop_event: threading.Event | None = None,
    limit: int = 1000, **options: Any,
) -> int:
    """Move due delayed messages every ``interval`` seconds until ``stop_event`` is set
    (forever without one); return how many were moved. Each run refreshes the
    scheduler's mover heartbeat (valid for ``max(MOVER_TTL, 3 * interval)`` seconds),
    which it removes when it stops. Outages are logged and waited out. Several
    schedulers may run at once: the ``DUE`` script never moves a message twice.
    ``options`` are ``RedisTransport``'s (``global_keyprefix`` must match the
    publishers').

    Raises:
        ValidationError: ``interval`` is not a positive number.
        ImproperlyConfigured: a bad URL or option.
        TransportError: a failure that waiting cannot cure (a wrong password).
    """
    if not (interval > 0 and math.isfinite(interval)):
        raise ValidationError("interval", "must be a positive number of seconds",
                              value=interval)
    stop = stop_event or threading.Event()
    database = Database(parse(url, options))
    scheduler = Scheduler(database, Movers(database),
                          heartbeat=max(MOVER_TTL, 3 * interval))
    total = 0
    try:
        while True:
            try:
                total += scheduler.due(limit=limit)
            except ConnectionLost as exc:
                log.warning("scheduler: %s; retrying in %g s", exc, interval)
            if stop.wait(interval):
                return total
    finally:
        scheduler.retire()
        database.disconnect()
