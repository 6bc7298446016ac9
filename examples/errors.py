"""Errors: ``link_error`` callbacks, failures in results, expiry and publish errors.

Run it::

    python examples/errors.py

* A failing task is stored as ``FAILURE``; ``get()`` re-raises its exception (or returns
  it with ``propagate=False``), and its ``link_error`` errbacks are called. An errback
  taking ``(request, exc, traceback)`` runs in the worker, as in Celery.
* A task that expired before a worker took it is not run: it ends ``REVOKED``.
* A broker that cannot be reached makes ``apply_async`` raise ``PublishError`` once the
  retry policy is used up, carrying the last cause.

The worker logs each failure with its traceback (on stderr), as Celery's does.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from wiretask.app import App
from wiretask.errors import PublishError
from wiretask.worker import Worker

app = App("errors")


@app.task
def divide(x: float, y: float) -> float:
    return x / y


@app.task
def report(request: Any, exc: BaseException, traceback: str | None) -> None:
    # Runs in the worker right after the failure was stored. Real code would alert
    # someone; here the errback leaves a note in the result store.
    report.update_state(
        task_id=f"{request.id}.report", state="SUCCESS",
        meta=f"{request.task} failed: {exc!r}",
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="[worker log] %(levelname)s %(message)s")
    with Worker(app, concurrency=2):
        failed = divide.apply_async((1, 0), link_error=report.s())
        try:
            failed.get(timeout=10)
        except ZeroDivisionError as exc:
            print(f"divide(1, 0) raised {exc!r}, state {failed.state}")
        note = app.AsyncResult(f"{failed.id}.report").get(timeout=10)
        print(f"the errback said: {note}")

        expired = divide.apply_async((1, 2), expires=app.now() - timedelta(seconds=1))
        error = expired.get(timeout=10, propagate=False)
        print(f"an expired task ends {expired.state}: {error!r}")

    # A broker that cannot be reached: an SQLite file inside a directory that cannot
    # exist (its "parent directory" is this script, a file).
    unreachable = App("errors", broker=f"sqlite:///{Path(__file__).resolve()}/broker.db")
    policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.1}
    try:
        unreachable.send_task("errors.divide", (1, 2), retry_policy=policy)
    except PublishError as exc:
        print(f"no broker: PublishError after {exc.attempts} attempts: "
              f"{type(exc.cause).__name__}")
    finally:
        unreachable.close()
    app.close()


if __name__ == "__main__":
    main()
