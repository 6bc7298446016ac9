"""AMQPTransport passes the public conformance kit on a real RabbitMQ.

The checks the AMQP transport cannot serve are skipped with the reason, named here:
``size_purge_peek`` needs ``peek``, which AMQP cannot do without taking the messages
(see ``AMQPTransport.peek``).
"""

from __future__ import annotations

import functools

import pytest

from wiretask.testing import CHECKS, check_transport
from wiretask.transports.amqp import AMQPTransport

NO_PEEK = "AMQP cannot peek without taking messages from their consumers (AMQPTransport.peek)"


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
    report = check_transport(factory, process_factory=factory, check_timeout=120,
                             skip={"size_purge_peek": NO_PEEK})
    assert set(report.passed) == set(CHECKS) - {"size_purge_peek"} - not_run, report
