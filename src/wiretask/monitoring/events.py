"""Worker and task metrics from Celery's events, for the Prometheus exporter
(``wiretask exporter --events``): ``EventCollector`` listens on the event exchange with
an ``events.receiver.EventReceiver`` in a thread of its own and keeps counts, which
``collect()`` yields at every scrape::

    wiretask_workers{state}                           gauge    alive | offline
    wiretask_worker_up{hostname}                      gauge    1 alive, 0 offline or silent
    wiretask_worker_active_tasks{hostname}            gauge    from its last heartbeat
    wiretask_worker_processed_tasks{hostname}         gauge    from its last heartbeat
    wiretask_task_events_total{name, type}            counter  sent | received | started |
                                                               succeeded | failed |
                                                               retried | revoked | rejected
    wiretask_task_runtime_seconds{name}               histogram  task-succeeded's runtime
    wiretask_events_up                                gauge    1 while listening

A worker is alive as Celery's ``State`` says: its last heartbeat (or ``worker-online``)
came less than twice its ``freq`` ago, and it has not sent ``worker-offline``. Task events
other than ``task-sent``/``task-received`` carry no name: it is taken from the
``task-received`` (or ``task-sent``) event of the same id seen earlier (the last
``NAMES_KEPT`` ids are remembered), else the label is empty. Counts start when the
exporter starts (a Prometheus counter may start at any value: ``rate()`` reads it).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from wiretask.codecs import Registry
from wiretask.errors import TransportError
from wiretask.events.receiver import EventReceiver
from wiretask.transports.base import Broadcast, Exchange

__all__ = ["NAMES_KEPT", "RUNTIME_BUCKETS", "EventCollector"]

log = logging.getLogger(__name__)

#: Task ids whose names are remembered (their later events are labelled with them).
NAMES_KEPT: Final = 10_000
#: The runtime histogram's buckets (seconds): Prometheus client's defaults, and longer.
RUNTIME_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                          30.0, 60.0, 300.0)
#: Celery's ``HEARTBEAT_EXPIRE_WINDOW``: a worker is alive for 200 % of its ``freq``.
_EXPIRE_WINDOW: Final = 2.0


class _Worker:
    __slots__ = ("active", "expires", "offline", "processed")

    def __init__(self) -> None:
        self.expires = 0.0
        self.offline = False
        self.active: int | None = None
        self.processed: int | None = None


class _Runtimes:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(RUNTIME_BUCKETS)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.total += seconds
        for index, bound in enumerate(RUNTIME_BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
                return

    def cumulative(self, count: int) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip(RUNTIME_BUCKETS, self.counts, strict=True):
            running += n
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(count)))
        return out


class EventCollector:
    """Task and worker metrics from the events on ``exchange`` (module docstring).

    ``start()`` binds the receiver's queue (events from then on are counted) and starts
    its thread; ``stop()`` ends it. ``feed(event)`` counts one event (the thread's
    handler; tests may call it).
    """

    def __init__(
        self, transport: Broadcast, exchange: Exchange, registry: Registry, *,
        prefix: str = "celeryev", queue_ttl: float | None = 5.0,
        queue_expires: float | None = 60.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self._receiver = EventReceiver(transport, exchange, registry,
                                       handlers={"*": self.feed}, prefix=prefix,
                                       queue_ttl=queue_ttl, queue_expires=queue_expires)
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._names: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._runtimes: dict[str, _Runtimes] = {}
        self._runtime_counts: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None
        self._listening = False

    def start(self) -> None:
        """Listen (raises ``ConnectionLost``/``TransportError`` if the broker cannot be
        reached) and count in a background thread."""
        self._receiver.open()
        self._listening = True
        self._thread = threading.Thread(target=self._run, name="wiretask-event-collector",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        receiver = self._receiver
        pause = 0.1
        while not receiver.should_stop.is_set():
            try:
                for _ in receiver.itercapture():
                    pause = 0.1
            except TransportError as exc:
                self._listening = False
                log.warning("events: %s; listening again", exc)
                receiver.close()
                receiver.should_stop.wait(pause)
                pause = min(pause * 2, 5.0)
                try:
                    receiver.open()
                except TransportError:
                    continue
                self._listening = True

    def stop(self) -> None:
        self._receiver.should_stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
        self._receiver.close()
        self._listening = False

    def feed(self, event: dict[str, Any]) -> None:
        """Count one event (already prepared by the receiver)."""
        type_ = event.get("type")
        if not isinstance(type_, str):
            return
        group, _, kind = type_.partition("-")
        with self._lock:
            if group == "worker":
                self._worker_event(kind, event)
            elif group == "task":
                self._task_event(kind, event)

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return
        worker = self._workers.setdefault(hostname, _Worker())
        if kind == "offline":
            worker.offline = True
            worker.expires = 0.0
            return
        worker.offline = False
        freq = event.get("freq")
        freq = float(freq) if isinstance(freq, int | float) and freq > 0 else 2.0
        stamp = event.get("local_received")
        stamp = float(stamp) if isinstance(stamp, int | float) else self._clock()
        worker.expires = stamp + freq * _EXPIRE_WINDOW
        if isinstance(event.get("active"), int):
            worker.active = event["active"]
        if isinstance(event.get("processed"), int):
            worker.processed = event["processed"]

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        task_id = event.get("uuid")
        name = event.get("name")
        names = self._names
        if isinstance(task_id, str):
            if isinstance(name, str):
                names[task_id] = name
                names.move_to_end(task_id)
                while len(names) > NAMES_KEPT:
                    names.popitem(last=False)
            else:
                name = names.get(task_id, "")
        label = name if isinstance(name, str) else ""
        self._counts[(label, kind)] += 1
        runtime = event.get("runtime")
        if kind == "succeeded" and isinstance(runtime, int | float) and runtime >= 0:
            self._runtimes.setdefault(label, _Runtimes()).add(float(runtime))
            self._runtime_counts[label] += 1

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            workers = {h: (w.expires > now and not w.offline, w.active, w.processed)
                       for h, w in self._workers.items()}
            counts = dict(self._counts)
            runtimes = {name: (r.cumulative(self._runtime_counts[name]), r.total)
                        for name, r in self._runtimes.items()}
        yield from _worker_families(workers)
        events = CounterMetricFamily(
            "wiretask_task_events", "Task events seen since the exporter started, by task "
            "name and event (sent, received, started, succeeded, failed, retried, revoked, "
            "rejected).", labels=["name", "type"])
        for (name, kind), value in sorted(counts.items()):
            events.add_metric([name, kind], value)
        yield events
        histogram = HistogramMetricFamily(
            "wiretask_task_runtime_seconds", "Seconds successful tasks ran "
            "(task-succeeded's runtime), by task name.", labels=["name"])
        for name, (buckets, total) in sorted(runtimes.items()):
            histogram.add_metric([name], buckets, total)
        yield histogram
        up = GaugeMetricFamily("wiretask_events_up",
                               "Whether the exporter is listening for events (1) or not (0).")
        up.add_metric([], 1.0 if self._listening else 0.0)
        yield up


def _worker_families(
    workers: dict[str, tuple[bool, int | None, int | None]],
) -> Sequence[Metric]:
    count = GaugeMetricFamily(
        "wiretask_workers", "Workers seen in events, by state: alive (a heartbeat within "
        "twice its interval) or offline (worker-offline, or silent since).",
        labels=["state"])
    alive = sum(1 for up, _, _ in workers.values() if up)
    count.add_metric(["alive"], alive)
    count.add_metric(["offline"], len(workers) - alive)
    up = GaugeMetricFamily("wiretask_worker_up", "1 while a worker is alive (see "
                           "wiretask_workers), else 0.", labels=["hostname"])
    active = GaugeMetricFamily("wiretask_worker_active_tasks", "Tasks a worker was running "
                               "at its last heartbeat.", labels=["hostname"])
    processed = GaugeMetricFamily("wiretask_worker_processed_tasks", "Tasks a worker had "
                                  "started since it started, at its last heartbeat.",
                                  labels=["hostname"])
    for hostname, (is_up, running, done) in sorted(workers.items()):
        up.add_metric([hostname], 1.0 if is_up else 0.0)
        if running is not None:
            active.add_metric([hostname], running)
        if done is not None:
            processed.add_metric([hostname], done)
    return [count, up, active, processed]
