"""Remote control of the worker: Celery's control commands on the worker's parts.

Two parts plug into the worker (the facade builds them when remote control is on):

* ``SkipRevoked``, a routing step (``routing.Step``): a received message whose id was
  revoked (or whose stamps were, ``revoke_by_stamped_headers``) is not run: ``REVOKED`` is
  stored as Celery's worker stores it (``TaskRevokedError('revoked')``, no errbacks:
  Celery calls none for a revoked task) and the message is acked.
* ``RemoteControl``: the command table a ``control.mailbox.Mailbox`` runs, reading the
  ledger (active and queued jobs, held eta messages), asking the pool to terminate, and
  keeping the revoked ids (``control.revoked.RevokedStore``).

What a revoke does, as Celery's worker does it (``celery.worker.control._revoke``): the
ids join the revoked set (saved to ``worker_state_db`` if set); a message with one of
them that is held for its eta, or queued for the pool and not started, is taken out now,
``REVOKED`` is stored and it is acked; one that arrives later meets ``SkipRevoked``; for
the others, ``REVOKED`` is stored right away if their state is ``PENDING``, ``RECEIVED``,
``RETRY`` or ``REJECTED`` (a state that is final, or that another worker set, is left
alone). A running task goes on unless ``terminate`` is set; then the pool ends it if it
can (processes: the child is killed, ``REVOKED``/``terminated`` is stored) and the reply
says so where it cannot (threads, solo: a thread cannot be stopped from outside).

Threading: commands run in the mailbox thread. A revoke holds the ledger's
``receiving`` lock while it looks at the held messages and the jobs, so no message is
being routed or released at that moment (every dispatch happens under it).
"""

from __future__ import annotations

import logging
import os
import resource
import signal as signals
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import wiretask
from wiretask.control.mailbox import NO_REPLY, Command
from wiretask.control.revoked import RevokedStore
from wiretask.control.wire import LamportClock, nok, ok
from wiretask.errors import ImproperlyConfigured, TransportError
from wiretask.protocol import states
from wiretask.results.exceptions import revoked_meta_result
from wiretask.transports.url import mask_url

if TYPE_CHECKING:
    import threading

    from wiretask.app import App
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.transports.base import Delivery
    from wiretask.worker.job import Job
    from wiretask.worker.ledger import Ledger
    from wiretask.worker.outcome import Outcome
    from wiretask.worker.pools.base import Pool
    from wiretask.worker.settlement import AckRetry
    from wiretask.worker.tracer import Tracer

__all__ = ["UNSUPPORTED", "RemoteControl", "SkipRevoked"]

logger = logging.getLogger("wiretask.worker")

#: States a revoke overwrites with ``REVOKED`` (Celery's ``_revoke``): the task has not
#: started anywhere, or will be retried.
_REVOCABLE: Final = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})
#: The task info items ``registered`` shows by default (Celery's).
_DEFAULT_TASK_INFO_ITEMS: Final = ("exchange", "routing_key", "rate_limit")
#: ``scheduled``'s ``priority``: Celery reports its timer entry's priority, always 6.
_TIMER_PRIORITY: Final = 6

#: Celery's control commands that wiretask's worker does not carry out, and why: the
#: reply says so (``{"error": "unsupported control command ..."}``) instead of a silent
#: success.
UNSUPPORTED: Final[Mapping[str, str]] = {
    "rate_limit": "wiretask's worker has no rate limits",
    "time_limit": "time limits come from the message or the worker app's settings",
    "election": "wiretask's worker takes no part in elections (gossip)",
    "pool_grow": "the pool size is fixed when the worker starts",
    "pool_shrink": "the pool size is fixed when the worker starts",
    "pool_restart": "wiretask's worker does not restart its pool",
    "autoscale": "wiretask's worker does not autoscale",
    "add_consumer": "the queues are fixed when the worker starts",
    "cancel_consumer": "the queues are fixed when the worker starts",
    "memsample": "not available",
    "memdump": "not available",
    "objgraph": "not available",
}


def _ids(value: object) -> list[str]:
    """Celery's ``maybe_list``: one id or a list of them, as strings."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        return [str(items)]
    return [str(item) for item in items]


def _signum(name: object) -> signals.Signals:
    """Celery's ``signals.signum``: ``"SIGKILL"``, ``"KILL"`` or a number.

    Raises:
        ValueError: not a signal of this platform.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        return signals.Signals(name)
    if isinstance(name, str):
        text = name.upper()
        if text.isdigit():
            return signals.Signals(int(text))
        try:
            return signals.Signals[text if text.startswith("SIG") else f"SIG{text}"]
        except KeyError:
            pass
    raise ValueError(f"unknown signal {name!r}")


def _stamp_match(revoked: RevokedStore, message: TaskMessage) -> tuple[str, Any] | None:
    """The revoked ``(header, value)`` among the message's stamped headers (Celery looks
    only at the stamps its ``stamped_headers`` name)."""
    names = message.stamped_headers or ()
    if not names:
        return None
    stamps = message.stamps or {}
    return revoked.stamp_revoked({name: stamps.get(name) for name in names})


class _Discard:
    """Settles a revoked message that is in the worker's hands: ``REVOKED`` stored (not
    for ``ignore_result`` tasks, like Celery's ``store_errors``), then acked. A message
    whose state could not be stored is acked all the same: it must not run, and Celery
    does the same."""

    def __init__(self, tracer: Tracer, unacked: AckRetry) -> None:
        self._tracer = tracer
        self._unacked = unacked
        #: Told the outcome (the worker's ``task-revoked`` event), or None.
        self.on_outcome: Callable[[TaskMessage, Outcome], None] | None = None

    def __call__(self, delivery: Delivery, message: TaskMessage, why: str = "") -> None:
        logger.info("Discarding revoked task: %s[%s]%s", message.task, message.id, why)
        outcome = self._tracer.revoke(message, "revoked")
        if self.on_outcome is not None:
            self.on_outcome(message, outcome)
        try:
            delivery.ack()
        except TransportError:
            logger.exception("task %s[%s]: could not ack the revoked message",
                             message.task, message.id)
            self._unacked.add([delivery])


class SkipRevoked:
    """The routing step: a message revoked by id or by stamp is discarded, not run."""

    def __init__(self, revoked: RevokedStore, discard: _Discard) -> None:
        self._revoked = revoked
        self._discard = discard

    def __call__(self, delivery: Delivery, message: TaskMessage) -> bool:
        if message.id in self._revoked:
            self._discard(delivery, message)
            return True
        stamp = _stamp_match(self._revoked, message)
        if stamp is not None:
            self._discard(delivery, message, f" (revoked by header: {{{stamp[0]!r}: "
                                             f"{stamp[1]!r}}})")
            return True
        return False


class RemoteControl:
    """The control commands of one worker (see the module docstring).

    Args:
        app: the worker's app (its backend, tasks and settings).
        hostname: the worker's node name.
        queues: the queues it consumes.
        pool: its pool (``terminate``, pids).
        ledger: its jobs and held eta messages.
        tracer: stores ``REVOKED``.
        unacked: where failed acks are retried.
        revoked: the revoked ids.
        clock: the node's Lamport clock.
        stopping: set to stop the worker (``shutdown``).
        prefetch: the worker's prefetch (None: no limit), for ``stats``.
    """

    def __init__(
        self,
        *,
        app: App,
        hostname: str,
        queues: list[str],
        pool: Pool,
        ledger: Ledger,
        tracer: Tracer,
        unacked: AckRetry,
        revoked: RevokedStore,
        clock: LamportClock,
        stopping: threading.Event,
        prefetch: int | None,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.queues = list(queues)
        self.pool = pool
        self.ledger = ledger
        self.tracer = tracer
        self.revoked = revoked
        self.clock = clock
        self.stopping = stopping
        self.prefetch = prefetch
        self.started = time.monotonic()
        self.discard = _Discard(tracer, unacked)
        self.step = SkipRevoked(revoked, self.discard)

    def commands(self) -> dict[str, Command]:
        """The command table: Celery's names (and their ``dump_*`` aliases), and a reply
        that says "unsupported" for each of ``UNSUPPORTED``."""
        table: dict[str, Command] = {
            "ping": self.ping,
            "revoke": self.revoke,
            "terminate": self.terminate,
            "revoke_by_stamped_headers": self.revoke_by_stamped_headers,
            "active": self.active,
            "reserved": self.reserved,
            "scheduled": self.scheduled,
            "registered": self.registered,
            "stats": self.stats,
            "revoked": self.revoked_ids,
            "active_queues": self.active_queues,
            "query_task": self.query_task,
            "clock": self.clock_value,
            "conf": self.conf,
            "report": self.report,
            "hello": self.hello,
            "shutdown": self.shutdown,
        }
        for alias, name in (("dump_active", "active"), ("dump_reserved", "reserved"),
                            ("dump_schedule", "scheduled"), ("dump_tasks", "registered"),
                            ("dump_revoked", "revoked"), ("dump_conf", "conf")):
            table[alias] = table[name]
        for name, why in UNSUPPORTED.items():
            table[name] = _unsupported(name, why)
        return table

    # -- the worker's state -----------------------------------------------------------

    def _info(self, job: Job | None, message: TaskMessage, delivery: Delivery,
              safe: bool = False) -> dict[str, Any]:
        """Celery's ``Request.info()``."""
        return {
            "id": message.id,
            "name": message.task,
            "args": message.argsrepr if safe else list(message.args),
            "kwargs": message.kwargsrepr if safe else dict(message.kwargs),
            "type": message.task,
            "hostname": self.hostname,
            "time_start": job.started if job is not None else None,
            # wiretask acknowledges after the task ran (Celery: at the start by default).
            "acknowledged": False,
            "delivery_info": {
                "exchange": "",
                "routing_key": delivery.queue,
                "priority": delivery.frame.priority,
                "redelivered": delivery.redelivered,
            },
            "worker_pid": self.pool.worker_pid(job) if job is not None else None,
        }

    def _jobs(self) -> tuple[list[Job], list[Job]]:
        """``(running, queued)`` jobs, oldest first."""
        jobs = self.ledger.jobs()
        running = sorted((j for j in jobs if j.claimed and not j.settled),
                         key=lambda j: j.started or 0.0)
        queued = [j for j in jobs if not j.claimed and not j.settled]
        return running, queued

    # -- commands ---------------------------------------------------------------------

    def ping(self, **_: Any) -> dict[str, Any]:
        return ok("pong")

    def active(self, safe: bool | None = False, **_: Any) -> list[dict[str, Any]]:
        running, _queued = self._jobs()
        return [self._info(j, j.message, j.delivery, bool(safe)) for j in running]

    def reserved(self, **_: Any) -> list[dict[str, Any]]:
        _running, queued = self._jobs()
        return [self._info(j, j.message, j.delivery) for j in queued]

    def scheduled(self, **_: Any) -> list[dict[str, Any]]:
        return [
            {"eta": message.eta.isoformat() if message.eta is not None else None,
             "priority": _TIMER_PRIORITY,
             "request": self._info(None, message, delivery)}
            for _eta, delivery, message in self.ledger.held_entries()
        ]

    def query_task(self, ids: object = None, **_: Any) -> dict[str, Any]:
        wanted = set(_ids(ids))
        found: dict[str, Any] = {}
        running, queued = self._jobs()
        for state, jobs in (("active", running), ("reserved", queued)):
            for job in jobs:
                if job.message.id in wanted:
                    found[job.message.id] = [state, self._info(job, job.message, job.delivery)]
        for _eta, delivery, message in self.ledger.held_entries():
            if message.id in wanted:
                found[message.id] = ["scheduled", self._info(None, message, delivery)]
        return found

    def registered(self, taskinfoitems: object = None, builtins: bool = False,
                   **_: Any) -> list[str]:
        items = [i for i in (_ids(taskinfoitems) or _DEFAULT_TASK_INFO_ITEMS)
                 if not i.startswith("_")]
        listed = []
        for name in sorted(self.app.tasks):
            if name.startswith("celery.") and not builtins:
                continue
            task = self.app.tasks[name]
            fields = {item: str(getattr(task, item)) for item in items
                      if getattr(task, item, None) is not None}
            listed.append(f"{name} [{' '.join(f'{k}={v}' for k, v in fields.items())}]"
                          if fields else name)
        return listed

    def revoked_ids(self, **_: Any) -> list[str]:
        return self.revoked.ids()

    def clock_value(self, **_: Any) -> dict[str, int]:
        return {"clock": self.clock.value}

    def active_queues(self, **_: Any) -> list[dict[str, Any]]:
        """What Celery's worker reports for its queues (Kombu's ``Queue.as_dict``): each
        is a durable queue on the direct exchange of its own name."""
        return [
            {"name": name,
             "exchange": {"name": name, "type": "direct", "arguments": None, "durable": True,
                          "passive": False, "auto_delete": False, "delivery_mode": None,
                          "no_declare": False},
             "routing_key": name, "queue_arguments": None, "binding_arguments": None,
             "consumer_arguments": None, "durable": True, "exclusive": False,
             "auto_delete": False, "no_ack": False, "alias": None, "bindings": [],
             "no_declare": None, "expires": None, "message_ttl": None, "max_length": None,
             "max_length_bytes": None, "max_priority": None}
            for name in self.queues
        ]

    def stats(self, **_: Any) -> dict[str, Any]:
        """Celery's ``stats`` keys (Flower reads ``total``, ``pool``, ``broker``,
        ``prefetch_count``, ``rusage``, ``pid``, ``uptime``)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        hard, soft = (self.app.conf.get("task_time_limit"),
                      self.app.conf.get("task_soft_time_limit"))
        pool = type(self.pool)
        return {
            "total": dict(self.ledger.total),
            "pid": os.getpid(),
            "clock": str(self.clock.value),
            "uptime": int(time.monotonic() - self.started),
            "pool": {
                "implementation": f"{pool.__module__}:{pool.__qualname__}",
                "max-concurrency": self.pool.capacity,
                "processes": self.pool.processes(),
                "max-tasks-per-child": None,
                "put-guarded-by-semaphore": False,
                "timeouts": [soft or 0, hard or 0],
            },
            "broker": _broker_info(self.app),
            "prefetch_count": self.ledger.capacity,
            "rusage": {
                name: getattr(usage, f"ru_{name}") for name in (
                    "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt",
                    "majflt", "nswap", "inblock", "oublock", "msgsnd", "msgrcv",
                    "nsignals", "nvcsw", "nivcsw",
                )
            },
        }

    def conf(self, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
        """The app's settings, JSON-safe, with secrets hidden (Celery's ``conf``): only
        those that differ from the defaults unless ``with_defaults``."""
        from wiretask.app import DEFAULT_SETTINGS  # noqa: PLC0415 - app is above the worker

        shown: dict[str, Any] = {}
        for key, value in self.app.conf.items():
            if not isinstance(key, str) or key.startswith("__"):
                continue
            if not with_defaults and key in DEFAULT_SETTINGS and DEFAULT_SETTINGS[key] == value:
                continue
            shown[key] = _jsonable(key, value)
        return shown

    def report(self, **_: Any) -> dict[str, Any]:
        return ok(
            f"software -> wiretask:{wiretask.__version__} python:{sys.version.split()[0]}\n"
            f"platform -> {sys.platform}\n"
            f"pool -> {self.pool.name} ({self.pool.capacity})\n"
            f"broker -> {mask_url(self.app.broker_url)}\n"
            f"results -> {mask_url(self.app.backend_url)}"
        )

    def hello(self, from_node: str = "", revoked: object = None, **_: Any) -> Any:
        """Celery's mingle: a starting Celery worker sends its revoked ids and takes
        ours. (No reply to our own ``hello``, as Celery.)"""
        if from_node == self.hostname:
            return None
        logger.info("sync with %s", from_node)
        ids = _ids(revoked)
        if ids:
            self.revoked.add(ids)
        return {"revoked": self.revoked.ids(), "clock": self.clock.forward()}

    def shutdown(self, msg: str = "Got shutdown from remote", **_: Any) -> Any:
        """Stop the worker as SIGTERM does (warm: running tasks finish). No reply, as
        Celery sends none."""
        logger.warning("%s", msg)
        self.stopping.set()
        return NO_REPLY

    # -- revoking ---------------------------------------------------------------------

    def revoke(self, task_id: object = None, terminate: bool = False, signal: object = None,
               **_: Any) -> dict[str, Any]:
        ids = _ids(task_id)
        signum = _signum(signal or "SIGTERM") if terminate else None
        self.revoked.add(ids)
        wanted = set(ids)
        running, in_hand = self._take_in_hand(lambda m: m.id in wanted)
        for job_or_entry in in_hand:
            self._discard_in_hand(job_or_entry)
        self._mark_revoked([i for i in ids if i not in {j.message.id for j in running}
                            and i not in {_message_of(x).id for x in in_hand}])
        if terminate:
            assert signum is not None
            return self._terminate(running, [_message_of(x).id for x in in_hand], signum)
        logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
        return ok("tasks {" + ", ".join(repr(i) for i in ids) + "} flagged as revoked")

    def terminate(self, signal: object = None, task_id: object = None,
                  **_: Any) -> dict[str, Any]:
        return self.revoke(task_id, terminate=True, signal=signal)

    def revoke_by_stamped_headers(self, headers: object = None, terminate: bool = False,
                                  signal: object = None, **_: Any) -> dict[str, Any]:
        if isinstance(headers, list):  # the CLI's "key=value" form
            headers = dict(str(h).split("=", 1) for h in headers)
        if not isinstance(headers, dict):
            return nok(f"headers must be a mapping, got {headers!r}")
        signum = _signum(signal or "SIGTERM") if terminate else None
        self.revoked.add_stamps(headers)
        probe = RevokedStore()
        probe.add_stamps(headers)
        running, in_hand = self._take_in_hand(lambda m: _stamp_match(probe, m) is not None)
        for job_or_entry in in_hand:
            self._discard_in_hand(job_or_entry)
        if not terminate:
            return ok(f"headers {headers} flagged as revoked, but not terminated")
        assert signum is not None
        if not running:
            return ok(f"headers {headers} were not terminated")
        reply = self._terminate(running, [], signum)
        if "error" in reply:
            return reply
        return ok(f"headers {headers} revoked")

    def _take_in_hand(
        self, revoked: Callable[[TaskMessage], bool]
    ) -> tuple[list[Job], list[Job | tuple[Delivery, TaskMessage]]]:
        """The running jobs of revoked messages, and the revoked messages taken out of
        the worker's hands: held for their eta, or queued and not started."""
        with self.ledger.receiving:
            held = self.ledger.take_held(revoked)
            running, queued = self._jobs()
            taken = [j for j in queued if revoked(j.message)
                     and j.take_settlement(only_if_queued=True)]
        return [j for j in running if revoked(j.message)], [*held, *taken]

    def _discard_in_hand(self, item: Job | tuple[Delivery, TaskMessage]) -> None:
        if isinstance(item, tuple):
            self.discard(*item)
            return
        try:
            self.discard(item.delivery, item.message)
        finally:
            self.ledger.discard(item)

    def _mark_revoked(self, ids: list[str]) -> None:
        """Celery's ``_revoke``: store ``REVOKED`` for ids whose task has not started
        anywhere (``PENDING``, ``RECEIVED``, ``RETRY``, ``REJECTED``)."""
        backend = self.app.backend
        for task_id in ids:
            try:
                meta = backend.get(task_id)
                state = str(meta.get("status")) if meta is not None else states.PENDING
                if state not in _REVOCABLE:
                    continue
                backend.store(task_id, states.make_meta(
                    task_id, states.REVOKED, revoked_meta_result("revoked"),
                    date_done=self.app.now(),
                ))
            except Exception as exc:
                logger.warning("Failed to mark task %s as revoked in backend: %s", task_id, exc)

    def _terminate(self, running: list[Job], discarded: list[str],
                   signum: signals.Signals) -> dict[str, Any]:
        """End the running jobs (the pool decides how; the processes pool kills the
        child with SIGKILL, which its child cannot ignore, whatever ``signum``)."""
        ended = list(discarded)
        for job in running:
            logger.info("Terminating %s (%s asked for)", job.message.id, signum.name)
            try:
                if self.pool.terminate(job):
                    ended.append(job.message.id)
            except ImproperlyConfigured as exc:
                logger.warning("task %s flagged as revoked, not terminated: %s",
                               job.describe, exc)
                return nok(f"terminate: {exc}; {job.message.id} is flagged as revoked and "
                           "keeps running")
        if not ended:
            return ok("terminate: tasks unknown")
        return ok(f"terminate: {', '.join(ended)}")


def _message_of(item: Job | tuple[Delivery, TaskMessage]) -> TaskMessage:
    return item[1] if isinstance(item, tuple) else item.message


def _unsupported(name: str, why: str) -> Command:
    def refuse(**_: Any) -> dict[str, Any]:
        logger.warning("unsupported control command %r received: %s", name, why)
        return nok(f"unsupported control command {name!r}: {why}")

    return refuse


_SECRET_WORDS: Final = ("API", "TOKEN", "KEY", "SECRET", "PASS", "SIGNATURE", "DATABASE")


def _jsonable(key: str, value: Any) -> Any:
    """A setting as ``conf`` shows it: secrets masked (Celery's ``filter_hidden_settings``
    words), URLs without passwords, anything JSON cannot hold as its ``repr``."""
    if any(word in key.upper() for word in _SECRET_WORDS) and key not in (
        "broker_url", "result_backend"
    ):
        return "********"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(key, item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(str(k), v) for k, v in value.items()}
    return repr(value)


def _broker_info(app: App) -> dict[str, Any]:
    """``stats``' ``broker`` section: what the broker URL says (no password)."""
    url = mask_url(app.broker_url)
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme
    return {
        "hostname": parts.hostname,
        "userid": parts.username or None,
        "virtual_host": parts.path.lstrip("/") or ("0" if scheme.startswith("redis") else "/"),
        "port": parts.port,
        "insist": False,
        "ssl": scheme in ("rediss", "amqps"),
        "transport": "redis" if scheme in ("redis", "rediss") else scheme,
        "connect_timeout": None,
        "transport_options": {},
        "login_method": None,
        "uri_prefix": None,
        "heartbeat": None,
        "failover_strategy": "round-robin",
        "alternates": [],
    }
