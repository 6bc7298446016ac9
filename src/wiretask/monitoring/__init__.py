"""Queue monitoring: what ``wiretask stats``, the Munin plugin and the Prometheus exporter
show, all read from one transport capability, ``QueueStatistics``
(``wiretask.transports.base``).

* ``report``: the numbers as JSON, a human table, rates between two readings, and the
  thresholds that make a health check fail.
* ``munin``: a Munin plugin (``config`` / ``fetch`` / ``autoconf``).
* ``prometheus``: a ``prometheus_client`` collector that reads the numbers at scrape
  time, and the ``/metrics`` server (needs the ``prometheus`` extra).

Nothing here imports ``prometheus_client`` until the exporter is used.
"""

from __future__ import annotations

from wiretask.monitoring.report import (
    Breach,
    breaches,
    rates,
    stats_record,
    stats_table,
)

__all__ = ["Breach", "breaches", "rates", "stats_record", "stats_table"]
