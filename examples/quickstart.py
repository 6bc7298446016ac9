"""Quickstart: an app, its tasks, a worker and the calling API, in one process.

Run it::

    python examples/quickstart.py

Nothing to install or start: the broker and the results live in one SQLite file under
``$XDG_DATA_HOME/wiretask/`` (``~/.local/share/wiretask/wiretask.db``), the embedded
default. Set ``WIRETASK_BROKER_URL=redis://localhost:6379/0`` to use Redis instead.

Here the worker runs in a thread of this process to keep the example in one file; in
production it is its own process: ``wiretask worker -A quickstart:app`` (run from this
directory), and any number of them can share the broker.
"""

from __future__ import annotations

import time
import uuid

from wiretask.app import App
from wiretask.worker import Worker

app = App("quickstart")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


def main() -> None:
    print(f"broker and results: {app.broker_url}")

    # A direct call runs the function here: no message, no worker.
    print(f"add(2, 3) called directly      = {add(2, 3)}")

    with Worker(app, concurrency=2):
        # delay(): send with the default options; get() waits for the worker.
        result = add.delay(2, 3)
        print(f"add.delay(2, 3)                = {result.get(timeout=10)}  ({result.state})")

        # apply_async(): send with options. countdown: not before 1 s from now.
        started = time.monotonic()
        later = add.apply_async((10, 10), countdown=1)
        value = later.get(timeout=10)
        print(f"add countdown=1                = {value}  "
              f"(after {time.monotonic() - started:.1f} s)")

        # link: the result is prepended to the callback's arguments: mul(5, 10).
        # The callback's id is chosen here so that its result can be read.
        callback_id = str(uuid.uuid4())
        add.apply_async((2, 3), link=mul.s(10).set(task_id=callback_id))
        product = app.AsyncResult(callback_id).get(timeout=10)
        print(f"add(2, 3) then link=mul.s(10)  = {product}")

        # send_task(): by name, no local function needed (another service's task).
        by_name = app.send_task("quickstart.add", (40, 2))
        print(f"send_task('quickstart.add')    = {by_name.get(timeout=10)}")
    app.close()


if __name__ == "__main__":
    main()
