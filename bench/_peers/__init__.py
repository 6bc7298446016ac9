"""The peer benchmark's shared pieces (``bench/peers.py``, issue 18): payload, keys, URLs.

Standard library only: this package is imported by the harness (wiretask's venv), by
each library's client driver (``_peers.driver``, run with that library's interpreter:
arq runs in its own venv, ``bench/.venvs/arq``) and by the worker processes that each
library's own CLI starts (``celery -A _peers.lib_celery:app worker``, ``dramatiq
_peers.lib_dramatiq``, ...), which import one ``_peers.lib_<name>`` module each.

Every library runs the same task on the same payload. The task body is one Redis
``INCR`` of :data:`COUNTER`: the harness sets the counter to ``-N`` before it publishes
N messages, so the task that brings it to 0 is the N-th completion, and that task
pushes to :data:`DONE`, which the harness waits on with ``BLPOP`` (no polling, exact
completion time). A counter above 0 afterwards means a message ran twice. The counter
stays in Redis when the broker is RabbitMQ (the ``*_amqp`` modules and aio-celery): only
the broker changes, and the results go to the same Redis.

A ``_peers.lib_<name>`` module defines what its worker imports (the app/broker and the
task) and a ``Client`` class for the driver with these methods (plain or ``async``):

``enqueue()``            send one message with the library's single-call API
``batch(n)``             send ``n`` messages with its batch API (or its loop)
``queued() -> int``      messages waiting in its queue(s) (checks what was sent)
``reset()``              redo the client start-up a ``FLUSHDB`` undid (most: nothing);
                         on RabbitMQ: empty the library's queue
``close()``              release connections

and the class attribute ``batch_api``, a phrase naming what ``batch`` calls.
"""

from __future__ import annotations

import os
from typing import Any

#: The environment variable that carries the Redis URL (with the database) to the
#: drivers and the workers.
URL_ENV = "WIRETASK_PEERS_REDIS_URL"
#: ... and the RabbitMQ URL (set when a library of the run uses RabbitMQ).
AMQP_URL_ENV = "WIRETASK_PEERS_AMQP_URL"

#: The payload of issue 18: positional and keyword arguments of every call.
ARGS: tuple[Any, ...] = (1, "some text", [1, 2, 3])
KWARGS: dict[str, Any] = {"flag": True, "name": "x"}

#: The completion counter (``INCR`` by every task; set to ``-N`` by the harness) and
#: the list the N-th completion pushes to.
COUNTER = "peers:counter"
DONE = "peers:done"

#: Messages sent per ``batch`` call, and per chunk when an end-to-end run publishes.
BATCH = 1000


def redis_url() -> str:
    """The Redis URL of this run (the harness sets it for every process it starts)."""
    url = os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(f"${URL_ENV} is not set: start this through bench/peers.py")
    return url


def amqp_url() -> str:
    """The RabbitMQ URL of this run (set by the harness when a RabbitMQ library runs)."""
    url = os.environ.get(AMQP_URL_ENV)
    if not url:
        raise RuntimeError(f"${AMQP_URL_ENV} is not set: start this through bench/peers.py "
                           "with a RabbitMQ library")
    return url
