"""A real Flower-style consumer for the event tests: Celery's own ``EventReceiver``
feeding Celery's ``State`` (what Flower and ``celery events`` build on), in a thread.

``CeleryCapture(broker_url)`` starts it; ``events_of(uuid)`` and ``types_of(uuid)`` read
what arrived, ``wait(predicate)`` waits for it; ``stop()`` ends the thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events import EventReceiver
from celery.events.state import State

WAIT = 20.0


class CeleryCapture:
    """Celery's ``EventReceiver`` on ``broker_url`` (every event: routing key ``#``),
    each event handed to a ``State`` and kept in ``events``."""

    def __init__(self, broker_url: str, *, conf: dict[str, Any] | None = None) -> None:
        self.app = Celery("events-capture", broker=broker_url, set_as_current=False)
        self.app.conf.update(broker_connection_retry_on_startup=True, **(conf or {}))
        self.state = State()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: EventReceiver | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="celery-capture", daemon=True)
        self._ready = threading.Event()

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(dict(event))
            self.state.event(event)

    def _run(self) -> None:
        capture = self

        class Receiver(EventReceiver):
            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)
                capture._ready.set()

        try:
            with self.app.connection_for_read() as conn:
                receiver = Receiver(conn, handlers={"*": self._on_event}, app=self.app)
                self._receiver = receiver
                receiver.capture(limit=None, timeout=None, wakeup=True)
        except BaseException as exc:  # reported by wait()
            self._error = exc
            self._ready.set()

    def start(self) -> CeleryCapture:
        self._thread.start()
        assert self._ready.wait(WAIT), "Celery's EventReceiver did not start consuming"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "Celery's EventReceiver did not stop"
        self.app.close()

    def __enter__(self) -> CeleryCapture:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def events_of(self, uuid: str) -> list[dict[str, Any]]:
        return [e for e in self.snapshot() if e.get("uuid") == uuid]

    def types_of(self, uuid: str) -> list[str]:
        return [e["type"] for e in self.events_of(uuid)]

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._error is not None:
                raise AssertionError(f"the EventReceiver failed: {self._error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: "
                                     f"{[(e['type'], e.get('uuid')) for e in self.snapshot()]}")
            time.sleep(0.02)

    def wait_type(self, uuid: str, type_: str, timeout: float = WAIT) -> None:
        self.wait(lambda: type_ in self.types_of(uuid), f"{type_} of {uuid}", timeout)

    def wait_worker(self, hostname: str, timeout: float = WAIT) -> None:
        def known() -> bool:
            with self._lock:
                worker = self.state.workers.get(hostname)
                return worker is not None and bool(worker.alive)
        self.wait(known, f"worker {hostname} alive", timeout)
