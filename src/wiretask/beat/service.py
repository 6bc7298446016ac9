"""The scheduler and the beat service: send each entry when it is due, from one beat.

``Scheduler.tick`` is Celery's: look at every entry, send those that are due (through
the app's normal calling path: ``task.apply_async`` for a registered task, else
``app.send_task``, with the entry's options, so routing applies), and say how long to
sleep. Before it sends a run it *reserves* it: the entry's ``last_run_at`` becomes now
and its run count grows, recorded on the broker lease (``wiretask.beat.lease``) first,
so a run is never sent twice, even by two beats. Each sent message carries the header
``celery_beat_task: True``, as Celery 5.7's beat adds.

``Service.run`` is ``wiretask beat``: take the lease (or wait as a standby until it is
free), merge the history kept on the broker with the schedule file's (the later run of
each entry wins), tick until stopped, renewing the lease; on stop, save the file and
release the lease so a standby takes over at once.

What a restart or a takeover sends: a run already sent is never sent again; runs missed
while no beat was leading are not sent one by one: an entry that is overdue is sent once,
at once, and its schedule continues from then (Celery's one catch-up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from wiretask._ids import new_id
from wiretask.beat.entries import ScheduleEntry, entries_from_schedule
from wiretask.beat.lease import Lease, Outcome, lease_for
from wiretask.beat.schedules import humanize_seconds
from wiretask.beat.settings import beat_settings
from wiretask.beat.store import Run, ScheduleFile
from wiretask.errors import ImproperlyConfigured, TransportError, ValidationError

if TYPE_CHECKING:
    from wiretask.app import App

__all__ = [
    "DEFAULT_LOCK_TTL",
    "EmbeddedBeat",
    "LeaseLost",
    "Scheduler",
    "SchedulingError",
    "Service",
]

log = logging.getLogger("wiretask.beat")

#: Seconds a beat's lease lasts without renewal: a standby takes over at most this long
#: (plus one standby poll, ``ttl / 4``) after the leading beat died.
DEFAULT_LOCK_TTL = 10.0

#: The header Celery 5.7's beat puts on every message it sends.
BEAT_HEADER = "celery_beat_task"


class SchedulingError(Exception):
    """Celery's name for a run that could not be sent (logged, never raised out of
    ``tick``)."""


class LeaseLost(Exception):
    """The beat does not hold the lease (any more), or the runs on the broker are not the
    ones it saw: stop sending and take the lease again."""


Recorder = Callable[[ScheduleEntry, ScheduleEntry], None]


class Scheduler:
    """Celery's scheduler over ``entries``.

    Args:
        app: the app that sends.
        entries: the entries by name (with their history).
        max_interval: the longest ``tick`` asks to sleep.
        reserve: records a run before it is sent (``old``, ``new`` entry); raises
            ``LeaseLost`` or ``TransportError`` to stop the send. None: nothing to record.
        after_send: called after each send (the service saves its file there).
    """

    def __init__(
        self, app: App, entries: dict[str, ScheduleEntry], *, max_interval: float,
        reserve: Recorder | None = None, after_send: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.entries = entries
        self.max_interval = max_interval
        self._reserve = reserve
        self._after_send = after_send

    def tick(self) -> float:
        """Send every due entry (in the schedule's order); return the seconds until one
        is due again (at most ``max_interval``).

        Raises:
            LeaseLost: a run could not be recorded because the lease is gone.
            TransportError: the broker could not be reached to record a run.
        """
        wait = self.max_interval
        for name in list(self.entries):
            entry = self.entries[name]
            try:
                due, next_check = entry.is_due()
            except Exception:
                # One entry whose next run cannot be computed must not stop the others
                # (Celery 5.7's rule): log it, and look again after max_interval.
                log.exception("beat: Cannot calculate the next run of %r, trying again in %s.",
                              name, humanize_seconds(self.max_interval))
                due, next_check = False, self.max_interval
            if due:
                self.apply_entry(entry)
            wait = min(wait, next_check)
        return max(wait, 0.0)

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Advance ``entry`` (last run now, one more run), recorded before it is sent."""
        new = entry.next()
        if self._reserve is not None:
            self._reserve(entry, new)
        self.entries[entry.name] = new
        return new

    def apply_entry(self, entry: ScheduleEntry) -> None:
        """Reserve and send one run; a failed send is logged (the run stays spent, as in
        Celery: the entry is not resent in a loop)."""
        entry = self.reserve(entry)
        log.info("Scheduler: Sending due task %s (%s) [run %d]", entry.name, entry.task,
                 entry.total_run_count)
        try:
            result = self.send(entry)
        except Exception as exc:
            log.error("Message Error: couldn't apply scheduled task %s: %s", entry.name, exc,
                      exc_info=True)
        else:
            log.info("%s sent. id->%s", entry.task, result.id)
        if self._after_send is not None:
            self._after_send()

    def send(self, entry: ScheduleEntry) -> Any:
        """Send one run of ``entry`` through the calling path; returns its result."""
        args, kwargs = entry.call_arguments()
        options = dict(entry.options)
        options["headers"] = {**(options.get("headers") or {}), BEAT_HEADER: True}
        task = self.app.tasks.get(entry.task)
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        return self.app.send_task(entry.task, args, kwargs, **options)


class Service:
    """``wiretask beat``: the scheduler of one app, behind its lease on the broker.

    Args:
        app: the app (its ``beat_schedule``, after ``on_after_configure``).
        schedule_filename: the schedule file (default ``beat_schedule_filename``,
            ``celerybeat-schedule`` in the working directory).
        max_interval: the longest sleep between two looks at the schedule (default
            ``beat_max_loop_interval``, else 300 s).
        lock_name: the lease's name (default: the app's ``main`` name, else
            ``"default"``): beats of one app share it.
        lock_ttl: seconds the lease lasts without renewal (renewed every third of it).

    Raises:
        ValidationError: ``max_interval`` or ``lock_ttl`` not positive.
    """

    def __init__(
        self, app: App, *, schedule_filename: str | None = None,
        max_interval: float | None = None, lock_name: str | None = None,
        lock_ttl: float = DEFAULT_LOCK_TTL,
    ) -> None:
        for field, value in (("max_interval", max_interval), ("lock_ttl", lock_ttl)):
            if value is not None and not value > 0:
                raise ValidationError(field, f"must be more than 0 seconds, got {value!r}",
                                      value=value)
        self.app = app
        self._schedule_filename = schedule_filename
        self._max_interval = max_interval
        self.lock_name = lock_name or app.main or "default"
        self.lock_ttl = float(lock_ttl)
        self.owner = new_id()
        self._stop = threading.Event()
        #: "starting", "standby", "leading" or "stopped" (for logs and tests).
        self.state = "starting"
        self.scheduler: Scheduler | None = None
        self.file: ScheduleFile | None = None
        self.lease: Lease | None = None
        self._timezone = "UTC"
        self._valid_until = 0.0
        self.max_interval = max_interval or 0.0

    def stop(self) -> None:
        """Ask ``run`` to return (from a signal handler or another thread)."""
        self._stop.set()

    def prepare(self) -> None:
        """Check everything ``run`` needs, before anything is sent: the settings, every
        entry, the schedule file and the broker's lease (``run`` calls it if not done).

        Raises:
            ImproperlyConfigured: a bad beat setting or entry, a schedule file that is
                not beat's, or a broker without a lease.
        """
        if self.lease is not None:
            return
        app = self.app
        app.configure()
        settings = beat_settings(app)
        self._timezone = settings.timezone
        entries_from_schedule(app, settings.schedule)  # refuse a bad entry now
        self.max_interval = self._max_interval or settings.max_loop_interval
        file = ScheduleFile(self._schedule_filename or settings.schedule_filename)
        file.check()
        self.file = file
        self.lease = lease_for(app, self.lock_name)

    def run(self) -> None:
        """Run until ``stop()``.

        Raises:
            ImproperlyConfigured: as ``prepare``.
        """
        self.prepare()
        lease, file = self.lease, self.file
        assert lease is not None
        assert file is not None
        log.info("beat: Starting... schedule file %s, lease %r on %s, max interval %s",
                 file.path, self.lock_name, lease.url, humanize_seconds(self.max_interval))
        try:
            self._loop(self.max_interval)
        finally:
            self._shutdown()

    # -- the loop -----------------------------------------------------------------------

    def _loop(self, max_interval: float) -> None:
        lease = self.lease
        assert lease is not None
        renew_every = self.lock_ttl / 3
        standby_every = self.lock_ttl / 4
        next_renew = 0.0
        while not self._stop.is_set():
            if self.state != "leading":
                if not self._take_lease(max_interval):
                    self._stop.wait(standby_every)
                    continue
                next_renew = time.monotonic() + renew_every
            elif time.monotonic() >= next_renew:
                next_renew = time.monotonic() + self._renew(renew_every)
                if self.state != "leading":
                    continue
            scheduler = self.scheduler
            assert scheduler is not None
            try:
                wait = scheduler.tick()
            except LeaseLost:
                self._lose("the lease was lost before a run could be recorded")
                continue
            except TransportError as exc:
                log.warning("beat: cannot record a run on %s: %s; retrying in %s", lease.url,
                            exc, humanize_seconds(min(renew_every, max_interval)))
                wait = min(renew_every, max_interval)
            self._stop.wait(max(0.0, min(wait, next_renew - time.monotonic())))

    def _take_lease(self, max_interval: float) -> bool:
        lease = self.lease
        assert lease is not None
        started = time.monotonic()
        try:
            taken = lease.acquire(self.owner, self.lock_ttl)
        except TransportError as exc:
            log.warning("beat: cannot reach the broker for the lease: %s", exc)
            return False
        if not taken:
            if self.state != "standby":
                self.state = "standby"
                log.warning("beat: standby: another beat holds the lease %r on %s; taking "
                            "over when it stops or its lease expires (%s)", self.lock_name,
                            lease.url, humanize_seconds(self.lock_ttl))
            return False
        self._valid_until = started + self.lock_ttl
        try:
            scheduler = self._setup(max_interval)
        except TransportError as exc:
            log.warning("beat: cannot read the runs on the broker: %s", exc)
            return False
        if scheduler is None:
            return False
        after_standby = self.state == "standby"
        self.scheduler = scheduler
        self.state = "leading"
        (log.warning if after_standby else log.info)(
            "beat: leading: holds the lease %r on %s (%d entries)", self.lock_name, lease.url,
            len(scheduler.entries))
        return True

    def _setup(self, max_interval: float) -> Scheduler | None:
        """Entries from ``beat_schedule`` (read now: a beat that waited as a standby
        starts new entries' clocks when it takes over), with the later of the file's and
        the broker's run of each, written back to the broker. None: the lease was lost
        meanwhile."""
        lease, file = self.lease, self.file
        assert lease is not None
        assert file is not None
        entries = entries_from_schedule(self.app, beat_settings(self.app).schedule)
        stored = file.load(self._timezone)
        shared = lease.runs(self._timezone)
        for name, entry in entries.items():
            known = [run for run in (stored.get(name), shared.get(name)) if run is not None]
            if known:
                latest = max(known, key=lambda run: (run.last_run_at, run.total_run_count))
                entry.last_run_at = latest.last_run_at
                entry.total_run_count = latest.total_run_count
        runs = {name: _run(entry) for name, entry in entries.items()}
        if not lease.replace_runs(self.owner, runs, self._timezone):
            return None
        self._save(entries)
        return Scheduler(self.app, entries, max_interval=max_interval,
                         reserve=self._record, after_send=self._save_current)

    def _renew(self, renew_every: float) -> float:
        """Renew the lease; the seconds until the next renewal."""
        lease = self.lease
        assert lease is not None
        started = time.monotonic()
        try:
            renewed = lease.renew(self.owner, self.lock_ttl)
        except TransportError as exc:
            if time.monotonic() >= self._valid_until:
                self._lose(f"it could not be renewed before it expired ({exc})")
            else:
                log.warning("beat: cannot renew the lease: %s; retrying", exc)
            return min(1.0, renew_every)
        if not renewed:
            self._lose("another beat holds it, or it expired")
            return renew_every
        self._valid_until = started + self.lock_ttl
        return renew_every

    def _record(self, old: ScheduleEntry, new: ScheduleEntry) -> None:
        lease = self.lease
        assert lease is not None
        if time.monotonic() >= self._valid_until:
            raise LeaseLost
        outcome = lease.record(self.owner, new.name, old.total_run_count, _run(new),
                               self._timezone)
        if outcome is Outcome.LOST:
            raise LeaseLost
        if outcome is Outcome.CONFLICT:
            log.warning("beat: the runs of %r on the broker changed under this beat; "
                        "reading them again", new.name)
            raise LeaseLost

    def _lose(self, why: str) -> None:
        log.warning("beat: standby: lost the lease %r: %s", self.lock_name, why)
        self.state = "standby"
        self.scheduler = None

    # -- the file -----------------------------------------------------------------------

    def _save(self, entries: dict[str, ScheduleEntry]) -> None:
        file = self.file
        assert file is not None
        try:
            file.save(self._timezone, {name: _run(entry) for name, entry in entries.items()})
        except OSError as exc:
            log.error("beat: cannot write the schedule file %s: %s", file.path, exc)  # noqa: TRY400 - the reason is the whole story

    def _save_current(self) -> None:
        if self.scheduler is not None:
            self._save(self.scheduler.entries)

    def _shutdown(self) -> None:
        log.info("beat: Shutting down...")
        lease = self.lease
        try:
            if self.state == "leading" and self.scheduler is not None:
                self._save(self.scheduler.entries)
                if lease is not None:
                    try:
                        lease.release(self.owner)
                    except TransportError as exc:
                        log.warning("beat: cannot release the lease (it expires in %s): %s",
                                    humanize_seconds(self.lock_ttl), exc)
        finally:
            self.state = "stopped"
            if lease is not None:
                lease.close()


def _run(entry: ScheduleEntry) -> Run:
    last: datetime = entry.last_run_at
    if last.tzinfo is None:
        raise ImproperlyConfigured(
            f"beat: the clock of entry {entry.name!r} returned a naive datetime ({last!r}); "
            "nowfun must return aware datetimes", setting="beat_schedule",
        )
    return Run(last, entry.total_run_count)


class EmbeddedBeat:
    """A beat service in a thread of this process (``wiretask worker -B``): ``start()``
    it, ``stop()`` it; the lease makes it safe to embed in every worker."""

    def __init__(self, app: App, **options: Any) -> None:
        self.service = Service(app, **options)
        self._thread = threading.Thread(target=self._run, name="Beat", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.service.run()
        except Exception as exc:
            self.error = exc
            log.exception("beat: the embedded beat stopped")

    def start(self) -> None:
        """Check the beat settings and schedule (raising here, before the worker
        starts), then run the service in its thread."""
        self.service.prepare()
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self.service.stop()
        self._thread.join(timeout)
