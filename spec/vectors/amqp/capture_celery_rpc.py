"""Capture the ``rpc://`` reply vectors from a real Celery on a real RabbitMQ:
``python spec/vectors/amqp/capture_celery_rpc.py amqp://guest:guest@127.0.0.1:PORT//``.

Each vector is one state that Celery 5.7's rpc backend sends for a task (the calls its
worker makes: ``mark_as_started``, ``store_result`` of a custom state as
``update_state`` does, ``mark_as_done``, ``mark_as_failure``), with the request a worker
has (``reply_to``, ``correlation_id``), published by Kombu's producer to a reply queue
declared as Celery's client declares it, then taken off it with ``basic.get`` by a plain
py-amqp connection that records the frames (``capture_celery_amqp.raw_get``). A vector
holds the content header's property bytes as they came, the same read into a typed tree
by ``fieldtable.py``, the body, where it was published, and its meaning: the meta dict
read with Kombu's ``loads``. Nothing here imports wiretask.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import celery
import kombu
from celery import Celery
from celery.app.task import Context
from kombu import Connection
from kombu.serialization import loads

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fieldtable  # sibling modules, found through the path set above
from capture_celery_amqp import ACCEPT, raw_get

#: The task the states are for, and its sender's reply queue (fixed, so that the
#: vectors do not change with every capture but for the times and the worker's pid).
TASK_ID = "5e1f0c2a-7b3d-4c8e-9f10-2a3b4c5d6e7f"
REPLY_TO = "c0ffee00-1234-3abc-8def-00112233aabb"


def capture(url: str, call: Callable[[], Any]) -> dict[str, Any]:
    call()
    got = raw_get(url, REPLY_TO)
    typed = fieldtable.read_properties(got["properties"])
    meta = loads(got["body"], typed["content_type"][1], typed["content_encoding"][1],
                 accept=ACCEPT)
    plain = {name: fieldtable.untyped(node) for name, node in typed.items()}
    body = base64.b64encode(got["body"]).decode("ascii")
    return {
        "publish": {"exchange": got["info"]["exchange"],
                    "routing_key": got["info"]["routing_key"]},
        "content_header": base64.b64encode(got["properties"]).decode("ascii"),
        "typed": typed,
        "body": body,
        # The same message in the common vector shape (../README.md), untyped.
        "frame": {"body": body, "content_type": plain.pop("content_type"),
                  "content_encoding": plain.pop("content_encoding"),
                  "headers": plain.pop("application_headers"), "properties": plain},
        "meaning": meta,
    }


def main(url: str) -> None:
    app = Celery("capture", broker=url, backend="rpc://", set_as_current=False)
    app.conf.update(accept_content=["json"], result_serializer="json")
    backend = app.backend
    request = Context(id=TASK_ID, reply_to=REPLY_TO, correlation_id=TASK_ID,
                      task="capture.add", hostname="capture@host")
    with Connection(url) as connection:  # the reply queue, as Celery's client declares it
        queue = backend.binding.bind(connection.default_channel)
        queue.name = REPLY_TO
        queue.routing_key = REPLY_TO
        queue.declare()
        connection.default_channel.queue_purge(REPLY_TO)
    error = ValueError("boom")
    cases: list[tuple[str, str, str, Callable[[], Any]]] = [
        ("celery-rpc-started", "STARTED, as the worker sends it with task_track_started.",
         "backend.store_result(id, {'pid': 4242, 'hostname': 'capture@host'}, 'STARTED', "
         "request=request)",
         lambda: backend.store_result(TASK_ID, {"pid": 4242, "hostname": "capture@host"},
                                      "STARTED", request=request)),
        ("celery-rpc-progress", "A custom state, as update_state sends it.",
         "backend.store_result(id, {'current': 1, 'total': 3}, 'PROGRESS', request=request)",
         lambda: backend.store_result(TASK_ID, {"current": 1, "total": 3}, "PROGRESS",
                                      request=request)),
        ("celery-rpc-success", "The final state of a task that returned 5.",
         "backend.mark_as_done(id, 5, request=request)",
         lambda: backend.mark_as_done(TASK_ID, 5, request=request)),
        ("celery-rpc-failure", "The final state of a task that raised ValueError('boom').",
         "backend.mark_as_failure(id, ValueError('boom'), 'Traceback ...', request=request)",
         lambda: backend.mark_as_failure(TASK_ID, error, traceback="Traceback ...",
                                         request=request)),
    ]
    source = {"celery": celery.__version__, "kombu": kombu.__version__,
              "amqp": amqp.__version__,
              "request": {"id": TASK_ID, "reply_to": REPLY_TO, "correlation_id": TASK_ID}}
    try:
        for name, description, text, call in cases:
            vector = {"name": name, "description": description,
                      "source": {**source, "call": text}, **capture(url, call)}
            path = HERE / f"{name}.json"
            path.write_text(json.dumps(vector, indent=1, ensure_ascii=False) + "\n")
            print("wrote", path.relative_to(HERE.parent.parent.parent))
    finally:
        with Connection(url) as connection:
            connection.default_channel.queue_delete(REPLY_TO)
        app.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
