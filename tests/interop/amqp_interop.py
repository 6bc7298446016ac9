"""Helpers of the RabbitMQ interop tests: a virtual host per test module (so that each
module's ``celery`` queue, delay ladder and dead letters start empty), and a look at a
queue straight on the broker."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote

from wiretask.transports.amqp import AMQPTransport

#: Celery's configuration for quorum queues with native delayed delivery: Celery 5.5+
#: uses its delay ladder only for quorum queues behind a topic (not direct) exchange.
CELERY_QUORUM = {
    "task_default_queue_type": "quorum",
    "task_create_missing_queue_type": "quorum",
    "task_default_exchange_type": "topic",
    "task_create_missing_queue_exchange_type": "topic",
}
#: The same fleet configuration, as wiretask's AMQP transport options (a URL query).
WIRETASK_QUORUM = "queue_type=quorum&exchange_type=topic"


def ctl(*args: str) -> None:
    command = os.environ["WIRETASK_TEST_AMQP_CTL"]
    subprocess.run([command, *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def virtual_host(base_url: str, label: str) -> Iterator[str]:
    """A fresh virtual host on the test broker (``WIRETASK_TEST_AMQP_CTL`` creates it;
    without it, the base URL's own), deleted afterwards; yields its URL."""
    if not os.environ.get("WIRETASK_TEST_AMQP_CTL"):
        yield base_url
        return
    name = f"wt-{label}-{uuid.uuid4().hex[:6]}"
    ctl("add_vhost", name)
    try:
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield base_url.rstrip("/") + "/" + quote(name, safe="")
    finally:
        ctl("delete_vhost", name)


def ready(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (what a passive declare reports)."""
    transport = AMQPTransport(url, heartbeat=0)
    try:
        return transport.size(queue)
    finally:
        transport.close()
