"""The scheduler: moving due delayed messages into their queues.

With ``delay_mode="native"`` a ``not_before`` message waits in the ``_wiretask.delayed*``
keys until it is due. A wiretask consumer moves the due messages of the queues it
consumes itself (inside ``POP``); Celery consumers need someone to move them for every
queue: the worker's periodic ``due()`` (``Scheduler.due``, the ``BrokerDelay``
capability of ``RedisTransport``) or ``run_scheduler`` (``wiretask scheduler``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, cast

from wiretask._redis import scripts
from wiretask._redis.options import parse
from wiretask.errors import ConnectionLost, ValidationError
from wiretask.transports.redis.database import Database

__all__ = ["Scheduler", "run_scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """Moves the due delayed messages of one Redis database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def due(self, *, limit: int = 1000) -> int:
        """Move every due delayed message into its list (``DUE`` script, ``limit`` per
        call to Redis); return how many moved. Safe to call from many processes."""
        db = self._db
        total = 0
        while True:
            with db.errors("due"):
                moved = int(cast(int, db.commands.script(
                    scripts.due(db.keys, now=time.time(), limit=limit))))
            total += moved
            if moved < limit:
                return total


def run_scheduler(
    url: str, *, interval: float = 1.0, stop_event: threading.Event | None = None,
    limit: int = 1000, **options: Any,
) -> int:
    """Move due delayed messages every ``interval`` seconds until ``stop_event`` is set
    (forever without one); return how many were moved. Outages are logged and waited
    out. Several schedulers may run at once: the ``DUE`` script never moves a message
    twice. ``options`` are ``RedisTransport``'s (``global_keyprefix`` must match the
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
    scheduler = Scheduler(database)
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
        database.disconnect()
