"""The app's periodic-task API: ``on_after_configure`` and ``add_periodic_task``.

``App`` takes these from ``PeriodicTasks``. Celery sends ``app.on_after_configure``
once, when the app's configuration is first read; wiretask's configuration is read
eagerly, so the app sends it once, the first time it is put to use: when it first
needs a broker connection (the first task sent, a worker or ``wiretask beat``
starting, any ``wiretask`` command), or when ``app.configure()`` is called. Receivers
connected by then (the module that defines the app has been imported) run, with
``sender=app`` and ``source=app.conf``, as in Celery::

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender, **kwargs):
        sender.add_periodic_task(10.0, say.s("hello"), name="add every 10")

``add_periodic_task`` before that moment is kept and applied to ``beat_schedule`` just
before the signal is sent (Celery's pending periodic tasks); after it, it writes to
``beat_schedule`` at once.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from wiretask.beat.entries import periodic_task_entry
from wiretask.beat.settings import beat_schedule_of
from wiretask.signals import Signal

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = ["PeriodicTasks"]

log = logging.getLogger("wiretask.beat")

#: Held while an app sends ``on_after_configure`` (once per app, rarely contended).
_configuring = threading.RLock()


class PeriodicTasks:
    """Celery's periodic-task API on the app (a base class of ``App``)."""

    #: Whether ``on_after_configure`` was sent (Celery's ``app.configured``).
    configured: bool = False

    @functools.cached_property
    def on_after_configure(self) -> Signal:
        """Sent once, with ``sender=app`` and ``source=app.conf``, when the app is first
        put to use (see the module docs)."""
        return Signal("app.on_after_configure", providing_args={"source"})

    @functools.cached_property
    def _pending_periodic_tasks(self) -> list[tuple[str, dict[str, Any], str | None]]:
        return []

    def configure(self) -> None:
        """Send ``on_after_configure`` unless it was sent: first put the periodic tasks
        added before into ``beat_schedule``. A receiver that raises is logged (Celery's
        rule) and does not stop the others."""
        if self.configured:
            return
        with _configuring:
            if self.configured:
                return
            self.configured = True
            pending = self._pending_periodic_tasks
            while pending:
                key, entry, name = pending.pop(0)
                self._add_periodic_task(key, entry, name)
            app = cast("App", self)
            self.on_after_configure.send(sender=self, source=app.conf)

    def add_periodic_task(
        self, schedule: Any, sig: Any, args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None, name: str | None = None, **opts: Any,
    ) -> str:
        """Add an entry to ``beat_schedule``: send ``sig`` (``task.s(...)``, or a task)
        with ``args``/``kwargs`` added and ``opts`` as its ``apply_async`` options, on
        ``schedule`` (seconds, a timedelta, a crontab, a schedule). Returns the entry's
        name: ``name``, else Celery's repr of the call (``proj.say('hello')``); the same
        name twice replaces the entry (a warning says so when no name was given).

        Raises:
            ValidationError: ``sig`` is not a task signature or task, an option is
                unknown, or the schedule is not one.
        """
        app = cast("App", self)
        key, entry = periodic_task_entry(app, schedule, sig, args, kwargs, name, **opts)
        with _configuring:
            if self.configured:
                self._add_periodic_task(key, entry, name)
            else:
                self._pending_periodic_tasks.append((key, entry, name))
        return key

    def _add_periodic_task(self, key: str, entry: dict[str, Any], name: str | None) -> None:
        schedule = beat_schedule_of(cast("App", self))
        if name is None and key in schedule:
            log.warning(
                "Periodic task key=%r shadowed a previous unnamed periodic task. Pass a "
                "name kwarg to add_periodic_task to silence this warning.", key,
            )
        schedule[key] = entry
