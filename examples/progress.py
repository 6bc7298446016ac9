"""Progress: a task reports its progress, the caller follows it with ``on_message``.

Run it::

    python examples/progress.py

The task stores a custom ``PROGRESS`` state with ``update_state``; the caller's
``get(on_message=...)`` receives every state change (Celery's meta dict: ``status``,
``result``, ...) in order, then returns the task's result. This works on every bundled
result backend, SQLite (the embedded default) included.
"""

from __future__ import annotations

import time
from typing import Any

from wiretask.app import App, Task
from wiretask.worker import Worker

app = App("progress")


@app.task(bind=True)
def resize_images(self: Task[Any, Any], count: int) -> str:
    for done in range(1, count + 1):
        time.sleep(0.1)  # the real work
        self.update_state(state="PROGRESS", meta={"done": done, "total": count})
    return f"{count} images resized"


def show(meta: dict[str, Any]) -> None:
    if meta["status"] == "PROGRESS":
        info = meta["result"]
        bar = "#" * info["done"] + "." * (info["total"] - info["done"])
        print(f"  PROGRESS [{bar}] {info['done']}/{info['total']}")
    else:
        print(f"  {meta['status']}: {meta['result']!r}")


def main() -> None:
    with Worker(app, concurrency=1):
        result = resize_images.delay(5)
        print(f"resize_images.delay(5) -> {result.id}")
        value = result.get(timeout=30, on_message=show)
        print(f"get() returned {value!r}")
    app.close()


if __name__ == "__main__":
    main()
