"""AMQPTransport passes the public conformance kit on a real RabbitMQ.

(On quorum queues ``queue_stats`` is skipped too, for the reason ``QUORUM_STATS``
gives; ``test_amqp_transport.py`` checks the numbers there once the push has arrived.)

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
#: Why queue_stats is not checked on quorum queues (AMQPTransport._ready_as_consumed):
#: the check reads ``ready`` right after an ack, exactly, and a quorum queue pushes the
#: next message through its Raft log apart from the count's answer, so that message can
#: be in transit, counted by neither side, for that one read.
QUORUM_STATS = ("quorum queues: a message in transit to this consumer right after an "
                "ack can be missed by one read of ready")


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
    skip = {}
    if options.get("queue_type") == "quorum":
        skip["queue_stats"] = QUORUM_STATS
    report = check_transport(factory, process_factory=factory, broken_factory=broken,
                             check_timeout=120, skip=skip)
    assert set(report.passed) == set(CHECKS) - NOT_OFFERED - not_run - set(skip), report
    skipped = dict(report.skipped)
    assert "Inspection" in skipped["size_purge_peek"]
