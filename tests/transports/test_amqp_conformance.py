"""AMQPTransport passes the public conformance kit on a real RabbitMQ.

Three checks do not apply, for reasons the kit states itself: ``size_purge_peek``
(``Inspection``: AMQP cannot peek without taking messages from their consumers, see
``spec/TRANSPORTS.md`` §6.9), ``broker_delay`` (``BrokerDelay``: the broker moves
delayed messages itself, nobody calls ``due()``) and ``fused_settlement`` (results do
not live in the broker). ``broadcast`` (``Broadcast``: the remote-control channel and
events) runs: section 4 of ``spec/control.md`` gives its mapping.
"""

from __future__ import annotations

import functools

import pytest

from wiretask.testing import CHECKS, check_transport, closed_port
from wiretask.transports.amqp import AMQPTransport

NOT_OFFERED = {"size_purge_peek", "broker_delay", "fused_settlement"}


def broken(password: str) -> AMQPTransport:
    return AMQPTransport(f"amqp://guest:{password}@127.0.0.1:{closed_port()}//",
                         connect_timeout=1)


@pytest.mark.parametrize(
    ("options", "not_run"),
    [
        pytest.param({"max_priority": 9}, set(), id="classic-priorities"),
        # Quorum queues have no priorities in RabbitMQ 3.10 (priority_order is skipped).
        pytest.param({"queue_type": "quorum"}, {"priority_order"}, id="quorum"),
        pytest.param({"delay_mode": "ladder", "confirm_publish": False}, {"priority_order"},
                     id="ladder-without-confirms"),
    ],
)
def test_passes_every_check_it_can(
    amqp_url: str, options: dict[str, object], not_run: set[str]
) -> None:
    factory = functools.partial(AMQPTransport, amqp_url, **options)
    # queue_stats runs on quorum queues too: the count waits for pushes under way
    # (AMQPTransport._ready_as_consumed), so ready is exact right after an ack.
    report = check_transport(factory, process_factory=factory, broken_factory=broken,
                             check_timeout=120)
    assert set(report.passed) == set(CHECKS) - NOT_OFFERED - not_run, report
    skipped = dict(report.skipped)
    assert "Inspection" in skipped["size_purge_peek"]
