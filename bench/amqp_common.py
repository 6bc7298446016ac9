"""The RabbitMQ of the AMQP benchmarks: ``$WIRETASK_BENCH_AMQP_URL``, else
``$WIRETASK_TEST_AMQP_URL`` (the test node), else a private node started with
``scripts/rabbitmq.sh`` on free ports (stopped on exit)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import amqp
from _common import ROOT


@contextlib.contextmanager
def amqp_url() -> Iterator[str]:
    url = os.environ.get("WIRETASK_BENCH_AMQP_URL") or os.environ.get("WIRETASK_TEST_AMQP_URL")
    if url:
        yield url
        return
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        raise SystemExit("rabbitmq-server not found: install it or set WIRETASK_BENCH_AMQP_URL")
    workdir = tempfile.mkdtemp(prefix="wiretask-bench-rabbitmq-")
    script = ROOT / "scripts" / "rabbitmq.sh"
    started = subprocess.run(
        ["bash", "-c", f'. "{script}" && rabbitmq_start "$1/node" >&2 && '
         'echo "$WIRETASK_TEST_AMQP_URL"', "bash", workdir],
        capture_output=True, text=True, timeout=60, check=False,
    )
    try:
        if started.returncode != 0:
            raise SystemExit(f"RabbitMQ did not start:\n{started.stderr[-2000:]}")
        yield started.stdout.strip()
    finally:
        subprocess.run(
            ["bash", "-c", f'. "{script}" && RABBITMQ_DIR="$1/node" && '
             'RABBITMQ_PID="$(cat "$1/node/rabbitmq.pid" 2>/dev/null)" && rabbitmq_stop',
             "bash", workdir],
            capture_output=True, timeout=60, check=False,
        )
        shutil.rmtree(workdir, ignore_errors=True)


def rabbitmq_version(url: str) -> str:
    with raw_connection(url) as connection:
        version = connection.server_properties.get("version", "?")
        return str(version)


@contextlib.contextmanager
def raw_connection(url: str, **options: object) -> Iterator[amqp.Connection]:
    from wiretask._amqp.options import parse  # noqa: PLC0415 - the URL rules, not I/O

    kwargs = parse(url, {}).connection_kwargs()
    connection = amqp.Connection(**{**kwargs, "heartbeat": 0, **options})
    connection.connect()
    try:
        yield connection
    finally:
        connection.close()


def empty_queues(url: str, *queues: str, delete: bool = False) -> None:
    """Purge (or delete) ``queues``; a missing one is fine."""
    with raw_connection(url) as connection:
        channel = connection.channel()
        for queue in queues:
            if delete:
                channel.queue_delete(queue)
            else:  # declared as Celery and wiretask declare it, then emptied
                channel.queue_declare(queue, durable=True, auto_delete=False)
                channel.queue_purge(queue)
