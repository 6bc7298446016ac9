"""The Prometheus exporter: ``wiretask exporter`` serves ``/metrics`` (needs the
``prometheus`` extra, ``pip install 'wiretask[prometheus]'``).

Metrics, read from the broker at scrape time (``QueueCollector``)::

    wiretask_queue_messages{queue, state}             gauge  ready | scheduled | in_flight | dead
    wiretask_queue_oldest_message_age_seconds{queue}  gauge  0 when nothing is ready
    wiretask_queue_next_due_timestamp_seconds{queue}  gauge  only while one is scheduled
    wiretask_queue_messages_published_total{queue}    counter   (where the broker
    wiretask_queue_messages_delivered_total{queue}    counter    keeps counters)
    wiretask_queue_messages_acked_total{queue}        counter
    wiretask_queue_messages_dead_lettered_total{queue} counter
    wiretask_broker_up                                gauge  1 if the last read worked
    wiretask_broker_read_seconds                      gauge  how long that read took

A number the broker cannot tell has no sample (Prometheus reads an absent series as
unknown; a 0 would be a lie). When the broker cannot be reached, ``wiretask_broker_up``
is 0 and the queue series are absent for that scrape.

The exporter serves any number of ``prometheus_client`` collectors (objects with a
``collect()`` that yields metric families): ``QueueCollector`` is one; worker counts and
task outcome and runtime histograms from Celery events will be another, added beside it
without touching this one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector, CollectorRegistry

from wiretask.errors import TransportError
from wiretask.monitoring.report import COUNTERS, STATES
from wiretask.transports.base import QueueStatistics, QueueStats

__all__ = ["DEFAULT_PORT", "Exporter", "QueueCollector"]

log = logging.getLogger(__name__)

#: The port ``wiretask exporter`` listens on unless told otherwise.
DEFAULT_PORT = 9808


class QueueCollector:
    """Reads ``queues``' statistics from ``source`` at every scrape and yields them as
    metric families (see the module docs for the names)."""

    def __init__(
        self, source: QueueStatistics, queues: Sequence[str], *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._source = source
        self._queues = list(queues)
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        started = self._clock()
        try:
            readings = self._source.queue_stats(self._queues)
        except TransportError as exc:
            log.warning("could not read queue statistics: %s", exc)
            readings = []
            up = 0.0
        else:
            up = 1.0
        took = self._clock() - started
        yield from _queue_families(readings)
        broker_up = GaugeMetricFamily(
            "wiretask_broker_up", "Whether the last read of queue statistics worked (1) or "
            "the broker could not be reached (0).")
        broker_up.add_metric([], up)
        yield broker_up
        read = GaugeMetricFamily(
            "wiretask_broker_read_seconds", "Seconds the last read of queue statistics took.")
        read.add_metric([], took)
        yield read


def _queue_families(readings: Sequence[QueueStats]) -> Iterator[Metric]:
    messages = GaugeMetricFamily(
        "wiretask_queue_messages", "Messages in a queue, by state: ready (a consumer could "
        "take it now), scheduled (held until its eta), in_flight (delivered, not acked), "
        "dead (dead letters kept).", labels=["queue", "state"])
    age = GaugeMetricFamily(
        "wiretask_queue_oldest_message_age_seconds", "Seconds the oldest ready message of "
        "a queue has waited since it was published or fell due (0 when none is ready).",
        labels=["queue"])
    due = GaugeMetricFamily(
        "wiretask_queue_next_due_timestamp_seconds", "Unix time at which the first "
        "scheduled message of a queue falls due.", labels=["queue"])
    counters = {
        counter: CounterMetricFamily(
            f"wiretask_queue_messages_{counter}", f"Messages {counter.replace('_', '-')} "
            "since the broker started counting.", labels=["queue"])
        for counter in COUNTERS
    }
    for stats in readings:
        for state in STATES:
            value = getattr(stats, state)
            if value is not None:
                messages.add_metric([stats.queue, state], value)
        oldest = 0.0 if stats.ready == 0 else stats.oldest_age
        if oldest is not None:
            age.add_metric([stats.queue], oldest)
        if stats.next_due is not None:
            due.add_metric([stats.queue], stats.next_due)
        for counter, family in counters.items():
            value = getattr(stats, counter)
            if value is not None:
                family.add_metric([stats.queue], value)
    yield messages
    yield age
    yield due
    for family in counters.values():
        if family.samples:
            yield family


class _Quiet(WSGIRequestHandler):
    """Logs requests at debug level instead of writing them to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class Exporter:
    """An HTTP server of ``/metrics`` for ``collectors`` (``prometheus_client``
    collectors; see the module docs), on ``bind``:``port`` (127.0.0.1 by default, so
    nothing is exposed beyond the host unless asked). ``port=0`` takes a free port;
    ``start()`` returns the one bound.

    Raises:
        OSError: from ``start()``, when the address cannot be bound.
    """

    def __init__(
        self, collectors: Iterable[Collector], *, bind: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.registry.register(collector)
        self.bind = bind
        self.port = port
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start serving in a background thread; return the port bound."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics(environ, start_response)
            if path == "/":
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"wiretask exporter: metrics at /metrics\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]

        family = socket.getaddrinfo(self.bind, self.port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_Server", (ThreadingWSGIServer,), {"address_family": family})
        server: ThreadingWSGIServer = make_server(
            self.bind, self.port, app, server_class, handler_class=_Quiet
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="wiretask-exporter", daemon=True
        )
        self._thread.start()
        port: int = server.server_address[1]
        return port

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
