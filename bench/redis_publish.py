"""Redis publish benchmark (issue 5): wiretask vs Celery vs bare redis-py, same Redis.

Run: ``python bench/redis_publish.py`` (``--scale 0.1`` for a quick look). Uses
``$WIRETASK_BENCH_REDIS_URL`` or starts a private ``redis-server`` on a free port (and
stops it); database ``$WIRETASK_BENCH_REDIS_DB`` (default 9) is emptied before and after.

What is compared, with the SMALL payload, one process, the same Redis:

* **publish one at a time** -- wiretask ``task.apply_async(args, kwargs)`` vs Celery 5.7
  ``task.apply_async(args, kwargs)`` (both: a registered task, signature check, default
  options, publish retry on, the default queue on the default exchange; Celery with no
  result backend so it does not subscribe for the result). Also ``app.send_task`` vs
  Celery's ``app.send_task``, and the floor: a bare redis-py ``LPUSH`` loop of a
  pre-built envelope (the exact bytes wiretask writes; no message is built). And the
  no-glue floor (``NoGlue``): build, encode, list entry and a raw-socket
  ``MULTI``/``EXEC``, nothing else, vs Celery's ``apply_async``.
* **batch publish** -- wiretask ``task.apply_many`` of 1000 calls (every one built,
  validated and encoded; one pipelined round trip) vs Celery's one-at-a-time
  ``apply_async`` (Celery has no batch call) and vs the floor: one redis-py pipeline of
  1000 ``LPUSH`` of a pre-built envelope.

Queues are emptied between timed loops (untimed). Rates are messages per second.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis
import redis
from _common import (
    REDIS_DB,
    SMALL_ARGS,
    SMALL_KWARGS,
    Row,
    arguments,
    compare,
    machine_facts,
    print_ratio_lines,
    print_table,
    redis_url,
    scaled,
)
from celery import Celery

from wiretask._ids import new_id
from wiretask.app import App
from wiretask.protocol.celery import encode
from wiretask.transports.redis.envelope import encode as kombu_entry

WT_QUEUE = "bench.wiretask"
CELERY_QUEUE = "bench.celery"
FLOOR_QUEUE = "bench.floor"
TASK_NAME = "bench.publish.small"

#: Targets (issue 5).
PUBLISH_TARGET = 6.0
BATCH_RATE_TARGET = 50_000.0
BATCH = 1000


def make_apps(url: str) -> tuple[App, Any, Celery, Any]:
    app = App("bench", broker=url, backend=url, task_default_queue=WT_QUEUE)

    @app.task(name=TASK_NAME)
    def small(user_id: int, email: str, account: dict[str, Any], notify: bool = False,
              retries_left: int = 0) -> int:
        return user_id

    celery = Celery("bench", broker=url, set_as_current=False)
    celery.conf.task_default_queue = CELERY_QUEUE
    celery.conf.broker_connection_retry_on_startup = True

    @celery.task(name=TASK_NAME, shared=False)
    def celery_small(user_id: int, email: str, account: dict[str, Any], notify: bool = False,
                     retries_left: int = 0) -> int:
        return user_id

    return app, small, celery, celery_small


class NoGlue:
    """The least a validated publish can cost with wiretask's parts: build the call,
    encode it, write Kombu's list entry, and send the marker and the push as one
    ``MULTI``/``EXEC`` on a raw socket (hiredis packs and parses), with nothing around
    them: no retry driver, no connection checks, no result object. What
    ``task.apply_async`` costs above it is glue; what this row costs is the floor of
    the build, the encode and the list entry as they are."""

    def __init__(self, app: App, url: str) -> None:
        self.app = app
        options = redis.ConnectionPool.from_url(url).connection_kwargs
        self.sock = socket.create_connection((options["host"], options["port"]))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.replies(hiredis.pack_command(("SELECT", options.get("db", 0))), 1)

    def replies(self, request: bytes, count: int) -> list[Any]:
        self.sock.sendall(request)
        got: list[Any] = []
        while len(got) < count:
            reply = self.reader.gets()
            if reply is False:
                self.reader.feed(self.sock.recv(65536))
            else:
                got.append(reply)
        return got

    def publish(self) -> object:
        call = self.app.build_call(TASK_NAME, SMALL_ARGS, SMALL_KWARGS)
        frame = encode(call.message, self.app.registry)
        tag = new_id()
        entry = kombu_entry(frame, exchange="", routing_key=WT_QUEUE, delivery_tag=tag)
        pack = hiredis.pack_command
        return self.replies(
            pack(("MULTI",)) + pack(("SET", f"_wiretask.published.{tag}", 1, "EX", 300))
            + pack(("LPUSH", WT_QUEUE, entry)) + pack(("EXEC",)), 4)

    def __enter__(self) -> NoGlue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


def run(url: str, client: redis.Redis, scale: float, repeat: int) -> list[Row]:
    app, task, celery, celery_task = make_apps(url)
    n = scaled(500, scale, minimum=5)
    batch = scaled(BATCH, scale, minimum=10)
    rows: list[Row] = []

    def empty() -> None:
        client.delete(WT_QUEUE, CELERY_QUEUE, FLOOR_QUEUE)

    try:
        # What wiretask writes, for the floor (and a check that publishing works).
        task.apply_async(SMALL_ARGS, SMALL_KWARGS)
        celery_task.apply_async(SMALL_ARGS, SMALL_KWARGS)
        envelope = client.lindex(WT_QUEUE, 0)
        assert envelope is not None, "wiretask published nothing"
        assert client.llen(CELERY_QUEUE) == 1, "celery published nothing"
        empty()

        def wt_one() -> object:
            return task.apply_async(SMALL_ARGS, SMALL_KWARGS)

        def celery_one() -> object:
            return celery_task.apply_async(SMALL_ARGS, SMALL_KWARGS)

        def floor_one() -> object:
            return client.lpush(FLOOR_QUEUE, envelope)

        ours, ref = compare(wt_one, celery_one, number=n, repeat=repeat, between=empty)
        rows.append(Row("publish 1 msg: task.apply_async", ours, ref, "celery apply_async",
                        target=PUBLISH_TARGET))
        celery_one_us = ref
        ours, ref = compare(wt_one, floor_one, number=n, repeat=repeat, between=empty)
        rows.append(Row("publish 1 msg: task.apply_async", ours, ref,
                        "bare redis-py LPUSH (floor)", kind="overhead"))
        with NoGlue(app, url) as no_glue:
            ours, ref = compare(no_glue.publish, celery_one, number=n, repeat=repeat,
                                between=empty)
        rows.append(Row("publish 1 msg: the no-glue floor", ours, ref, "celery apply_async"))

        def wt_send() -> object:
            return app.send_task(TASK_NAME, SMALL_ARGS, SMALL_KWARGS)

        def celery_send() -> object:
            return celery.send_task(TASK_NAME, SMALL_ARGS, SMALL_KWARGS)

        ours, ref = compare(wt_send, celery_send, number=n, repeat=repeat, between=empty)
        rows.append(Row("publish 1 msg: app.send_task", ours, ref, "celery send_task"))

        calls = [(SMALL_ARGS, SMALL_KWARGS)] * batch

        def wt_batch() -> object:
            return task.apply_many(calls)

        def floor_batch() -> object:
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.lpush(FLOOR_QUEUE, envelope)
            return pipe.execute()

        wt_batch()
        assert client.llen(WT_QUEUE) == batch, "apply_many did not publish the whole batch"
        empty()
        ours, ref = compare(wt_batch, floor_batch, number=1, repeat=repeat, between=empty)
        ours, ref = ours / batch, ref / batch
        rows.append(Row(f"batch publish: task.apply_many({batch})", ours, celery_one_us,
                        "celery apply_async (1 at a time)", rate_target=BATCH_RATE_TARGET))
        rows.append(Row(f"batch publish: task.apply_many({batch})", ours, ref,
                        f"bare redis-py pipeline of {batch} LPUSH (floor)", kind="overhead"))
    finally:
        app.close()
        celery.close()
    return rows


def main() -> None:
    options = arguments(__doc__.splitlines()[0])
    repeat = options.repeat or (5 if options.scale >= 0.5 else 2)
    print(f"wiretask redis publish bench -- {machine_facts()}")
    print(f"method: best of {repeat} interleaved repeats, perf_counter_ns, GC on; "
          "rates are 1e6 / (us per message)")
    with redis_url() as base:
        url = f"{base}/{REDIS_DB}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            rows = run(url, client, options.scale, repeat)
        finally:
            client.flushdb()
            client.close()
    print_table("Redis publish, SMALL payload (higher msg/s is better)", rows, unit="msg/s")
    print_ratio_lines(rows)


if __name__ == "__main__":
    main()
