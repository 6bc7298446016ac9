"""RabbitMQ publish benchmark (issue 15): wiretask vs Celery vs bare py-amqp, same broker.

Run: ``python bench/amqp_publish.py`` (``--scale 0.1`` for a quick look). Uses
``$WIRETASK_BENCH_AMQP_URL`` (or the test node's ``$WIRETASK_TEST_AMQP_URL``), else starts
a private RabbitMQ with ``scripts/rabbitmq.sh`` (and stops it).

What is compared, with the SMALL payload, one process, one durable classic queue per side,
persistent messages (delivery mode 2, Celery's default):

* **publish one at a time** -- wiretask ``task.apply_async(args, kwargs)`` (publisher
  confirms: it returns once the broker has the message) vs Celery 5.7 ``apply_async`` as
  Celery runs by default (no confirms: it returns once the bytes are written), vs Celery
  with ``broker_transport_options={'confirm_publish': True}`` (the same promise as
  wiretask's), and vs the floor: py-amqp's ``basic_publish`` with confirms of a pre-built
  message (the exact properties and body wiretask sends; no message is built). And
  wiretask with ``confirm_publish=false`` vs Celery's default: the same (weaker) promise.
* **batch publish** -- wiretask ``task.apply_many`` of 1000 calls (every one built,
  validated and encoded; one write; one round of confirms) vs Celery's one-at-a-time
  ``apply_async`` (Celery has no batch call) and vs the floor: 1000 py-amqp
  ``basic_publish`` of a pre-built message on a confirming channel, then one wait for
  all the confirms.

Queues are purged between timed loops (untimed). Rates are messages per second.
"""

from __future__ import annotations

from typing import Any

import amqp
from _common import (
    SMALL_ARGS,
    SMALL_KWARGS,
    Row,
    arguments,
    compare,
    machine_facts,
    print_ratio_lines,
    print_table,
    scaled,
)
from amqp_common import amqp_url, rabbitmq_version, raw_connection
from celery import Celery

from wiretask.app import App
from wiretask.protocol.celery import encode

WT_QUEUE = "bench.amqp.wiretask"
CELERY_QUEUE = "bench.amqp.celery"
CONFIRMED_QUEUE = "bench.amqp.celery-confirmed"
FLOOR_QUEUE = "bench.amqp.floor"
TASK_NAME = "bench.publish.small"

#: Targets (issue 15).
PUBLISH_TARGET = 5.0
FLOOR_TARGET = 2.0
BATCH = 1000


def wiretask_app(url: str) -> tuple[App, Any]:
    app = App("bench", broker=url, backend="memory://", task_default_queue=WT_QUEUE)

    @app.task(name=TASK_NAME)
    def small(user_id: int, email: str, account: dict[str, Any], notify: bool = False,
              retries_left: int = 0) -> int:
        return user_id

    return app, small


def make_apps(url: str) -> tuple[App, Any, Any, Any, list[Celery]]:
    app, small = wiretask_app(url)

    def celery_app(queue: str, **transport_options: Any) -> tuple[Celery, Any]:
        celery = Celery("bench", broker=url, set_as_current=False)
        celery.conf.task_default_queue = queue
        celery.conf.broker_connection_retry_on_startup = True
        celery.conf.broker_transport_options = transport_options

        @celery.task(name=TASK_NAME, shared=False)
        def celery_small(user_id: int, email: str, account: dict[str, Any],
                         notify: bool = False, retries_left: int = 0) -> int:
            return user_id

        return celery, celery_small

    plain, plain_task = celery_app(CELERY_QUEUE)
    confirmed, confirmed_task = celery_app(CONFIRMED_QUEUE, confirm_publish=True)
    return app, small, plain_task, confirmed_task, [plain, confirmed]


class Floor:
    """Bare py-amqp on a confirming channel: ``basic_publish`` of a pre-built message."""

    def __init__(self, url: str, app: App) -> None:
        self._connections = raw_connection(url, confirm_publish=True)
        self.connection = self._connections.__enter__()
        self.channel = self.connection.channel()
        self.channel.queue_declare(FLOOR_QUEUE, durable=True, auto_delete=False)
        frame = encode(app.build_call(TASK_NAME, SMALL_ARGS, SMALL_KWARGS).message,
                       app.registry)
        self.message = amqp.Message(
            frame.body, content_type=frame.content_type,
            content_encoding=frame.content_encoding,
            application_headers=dict(frame.headers), **dict(frame.properties))
        # A second channel for batches: confirm mode, acks counted, one wait at the end.
        self.batch_channel = self.connection.channel()
        self.batch_channel.confirm_select()
        self.acked = 0
        self.batch_channel.events["basic_ack"].add(self._on_ack)
        self._published = 0

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self.acked = tag if multiple else max(self.acked, tag)

    def one(self) -> object:
        return self.channel.basic_publish(self.message, "", FLOOR_QUEUE)

    def batch(self, count: int) -> object:
        publish = self.batch_channel._basic_publish
        for _ in range(count):
            publish(self.message, "", FLOOR_QUEUE)
        self._published += count
        while self.acked < self._published:
            self.connection.drain_events(timeout=30)
        return None

    def close(self) -> None:
        self._connections.__exit__(None, None, None)


def run(url: str, scale: float, repeat: int) -> list[Row]:
    app, task, celery_task, confirmed_task, celeries = make_apps(url)
    n = scaled(500, scale, minimum=5)
    batch = scaled(BATCH, scale, minimum=10)
    rows: list[Row] = []
    floor = Floor(url, app)
    admin = floor.connection.channel()

    def empty() -> None:
        for queue in (WT_QUEUE, CELERY_QUEUE, CONFIRMED_QUEUE, FLOOR_QUEUE):
            admin.queue_purge(queue)

    def size(queue: str) -> int:
        return int(admin.queue_declare(queue, passive=True).message_count)

    try:
        task.apply_async(SMALL_ARGS, SMALL_KWARGS)  # declares the queues, and checks
        celery_task.apply_async(SMALL_ARGS, SMALL_KWARGS)
        confirmed_task.apply_async(SMALL_ARGS, SMALL_KWARGS)
        assert size(WT_QUEUE) == 1, "wiretask published nothing"
        empty()

        def wt_one() -> object:
            return task.apply_async(SMALL_ARGS, SMALL_KWARGS)

        def celery_one() -> object:
            return celery_task.apply_async(SMALL_ARGS, SMALL_KWARGS)

        def confirmed_one() -> object:
            return confirmed_task.apply_async(SMALL_ARGS, SMALL_KWARGS)

        ours, ref = compare(wt_one, celery_one, number=n, repeat=repeat, between=empty)
        rows.append(Row("publish 1 msg: task.apply_async", ours, ref,
                        "celery apply_async (no confirms)", target=PUBLISH_TARGET))
        celery_one_us = ref
        ours, ref = compare(wt_one, confirmed_one, number=n, repeat=repeat, between=empty)
        rows.append(Row("publish 1 msg: task.apply_async", ours, ref,
                        "celery apply_async (confirm_publish)"))
        ours, ref = compare(wt_one, floor.one, number=n, repeat=repeat, between=empty)
        rows.append(Row("publish 1 msg: task.apply_async", ours, ref,
                        "bare py-amqp basic_publish + confirm (floor)", kind="overhead",
                        target=FLOOR_TARGET))
        unconfirmed_app, unconfirmed = wiretask_app(f"{url}?confirm_publish=false")
        try:
            def wt_unconfirmed() -> object:
                return unconfirmed.apply_async(SMALL_ARGS, SMALL_KWARGS)

            ours, ref = compare(wt_unconfirmed, celery_one, number=n, repeat=repeat,
                                between=empty)
        finally:
            unconfirmed_app.close()
        rows.append(Row("publish 1 msg: apply_async, confirm_publish=false", ours, ref,
                        "celery apply_async (no confirms)"))

        calls = [(SMALL_ARGS, SMALL_KWARGS)] * batch

        def wt_batch() -> object:
            return task.apply_many(calls)

        def floor_batch() -> object:
            return floor.batch(batch)

        wt_batch()
        assert size(WT_QUEUE) == batch, "apply_many did not publish the whole batch"
        empty()
        ours, ref = compare(wt_batch, floor_batch, number=1, repeat=repeat, between=empty)
        ours, ref = ours / batch, ref / batch
        rows.append(Row(f"batch publish: task.apply_many({batch})", ours, celery_one_us,
                        "celery apply_async (1 at a time)"))
        rows.append(Row(f"batch publish: task.apply_many({batch})", ours, ref,
                        f"bare py-amqp: {batch} publishes, then all confirms (floor)",
                        kind="overhead"))
        empty()
    finally:
        app.close()
        for celery in celeries:
            celery.close()
        floor.close()
    return rows


def main() -> None:
    options = arguments(__doc__.splitlines()[0])
    repeat = options.repeat or (5 if options.scale >= 0.5 else 2)
    with amqp_url() as url:
        print(f"wiretask AMQP publish bench -- {machine_facts()} | "
              f"RabbitMQ {rabbitmq_version(url)}, py-amqp {amqp.__version__}")
        print(f"method: best of {repeat} interleaved repeats, perf_counter_ns, GC on; "
              "rates are 1e6 / (us per message)")
        rows = run(url, options.scale, repeat)
    print_table("RabbitMQ publish, SMALL payload (higher msg/s is better)", rows,
                unit="msg/s")
    print_ratio_lines(rows)


if __name__ == "__main__":
    main()
