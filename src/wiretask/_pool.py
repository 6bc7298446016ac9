"""The worker's execution slots: time limits for threads, and child processes.

Two ways to run a task body, with the same tracer (``wiretask._trace``):

* **Threads** (the default). A soft time limit raises ``SoftTimeLimitExceeded`` inside
  the task's thread with ``PyThreadState_SetAsyncExc``; the exception is delivered at
  the next Python bytecode the thread runs, so a task blocked in C code (a long
  ``time.sleep``, a socket read) sees it only when that call returns. A thread cannot
  be killed: at the hard limit the worker records ``FAILURE``/``TimeLimitExceeded``,
  acknowledges the message, raises ``TimeLimitExceeded`` in the thread the same way and
  gives up on it (a new thread takes its slot; whatever the old one does later is
  ignored).
* **Processes** (``pool="processes"``). Each slot owns one child process started with
  the ``spawn`` method (safe next to threads, unlike ``fork``), which imports the app by
  its path. The soft limit is a ``SIGALRM`` timer in the child, the hard limit is
  enforced by the parent, which kills the child and starts a new one, as Celery's
  prefork pool does.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from wiretask.errors import (
    ImproperlyConfigured,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext, SpawnProcess

    from wiretask._trace import Outcome
    from wiretask.app import App
    from wiretask.protocol.envelope import TaskMessage

__all__ = [
    "AlarmControl",
    "ChildProcess",
    "ThreadControl",
    "async_raise",
    "find_app_path",
    "load_app",
]

logger = logging.getLogger("wiretask.worker")

#: Seconds a new child process may take to import the app and report ready.
CHILD_START_TIMEOUT = 60.0


# -- threads -------------------------------------------------------------------------


def async_raise(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Raise ``exc_type`` in the thread ``thread_id`` at its next bytecode (``None``
    clears a pending one). Returns True if the thread was found."""
    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    # With no argtypes, ctypes passes None as a NULL pointer, which clears.
    target = ctypes.py_object(exc_type) if exc_type is not None else None
    found = int(set_async(ctypes.c_ulong(thread_id), target))
    if found > 1:  # cannot happen for a valid id; undo as the C API docs require
        set_async(ctypes.c_ulong(thread_id), None)
        return False
    return found == 1


class ThreadControl:
    """Time limits for a task body running in a worker thread.

    Args:
        soft: seconds until ``SoftTimeLimitExceeded`` is raised in the thread, or None.
        hard: seconds until ``on_hard`` is called, or None. ``on_hard`` records the
            outcome and replaces the thread; this object has already marked the run
            abandoned and raised ``TimeLimitExceeded`` in the thread by then.
        on_hard: called (from a timer thread) when the hard limit passes.
        describe: the task's ``name[id]`` for log lines.
    """

    def __init__(
        self,
        *,
        soft: float | None,
        hard: float | None,
        on_hard: Callable[[], None],
        describe: str,
    ) -> None:
        self._soft = soft
        self._hard = hard
        self._on_hard = on_hard
        self._describe = describe
        self._lock = threading.Lock()
        self._phase = "new"  # new -> running -> done | abandoned
        self._thread_id: int | None = None
        self._timers: list[threading.Timer] = []

    @property
    def abandoned(self) -> bool:
        return self._phase == "abandoned"

    def abandon(self) -> bool:
        """Give up on the run (the worker is stopping and requeues the message).
        Returns False if the body had already finished."""
        with self._lock:
            if self._phase == "done":
                return False
            self._phase = "abandoned"
            self._cancel()
            return True

    def begin(self) -> None:
        with self._lock:
            if self._phase != "new":
                return
            self._phase = "running"
            self._thread_id = threading.get_ident()
            for delay, fire in ((self._soft, self._fire_soft), (self._hard, self._fire_hard)):
                if delay is not None:
                    timer = threading.Timer(delay, fire)
                    timer.daemon = True
                    timer.name = f"wiretask-timelimit-{self._describe}"
                    self._timers.append(timer)
                    timer.start()

    def end(self) -> bool:
        with self._lock:
            self._cancel()
            if self._phase == "abandoned":
                return False
            self._phase = "done"
            if self._thread_id is not None and (self._soft, self._hard) != (None, None):
                # A limit that fired just before we took the lock may still be pending
                # for this thread: clear it so it cannot hit the worker's own code.
                # (Without limits nothing can be pending: skip the C call.)
                async_raise(self._thread_id, None)
            return True

    def _cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _fire_soft(self) -> None:
        with self._lock:
            if self._phase != "running" or self._thread_id is None:
                return
            logger.warning("task %s: soft time limit (%gs) exceeded", self._describe, self._soft)
            async_raise(self._thread_id, SoftTimeLimitExceeded)

    def _fire_hard(self) -> None:
        with self._lock:
            if self._phase != "running" or self._thread_id is None:
                return
            self._phase = "abandoned"
            logger.error(
                "task %s: hard time limit (%gs) exceeded; a thread cannot be killed, so it "
                "is abandoned and replaced", self._describe, self._hard,
            )
            async_raise(self._thread_id, TimeLimitExceeded)
        self._on_hard()


# -- finding the app in a child process ----------------------------------------------


def load_app(app_path: str) -> App:
    """Import ``"package.module:attribute"`` (``:app`` when no attribute is given).

    Raises:
        ImproperlyConfigured: the module cannot be imported, or the attribute is not an
            ``App``.
    """
    from wiretask.app import App  # noqa: PLC0415 - app imports this module's users

    module_name, _, attribute = app_path.partition(":")
    attribute = attribute or "app"
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(f"cannot load the app {app_path!r}: {exc}") from exc
    if not isinstance(obj, App):
        raise ImproperlyConfigured(f"{app_path!r} is a {type(obj).__name__}, not a wiretask App")
    return obj


def find_app_path(app: App) -> str | None:
    """``"module:attribute"`` of an imported module that holds ``app``, if there is one
    (``__main__`` does not count: a child process cannot import it by that name)."""
    for name, module in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__") or not isinstance(module, ModuleType):
            continue
        for attribute, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attribute}"
    return None


def portable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that can be sent to a child process (the picklable ones), so that
    an app configured in code after import runs with the same broker and backend."""
    portable = {}
    for key, value in settings.items():
        try:
            pickle.dumps(value)
        except Exception:  # an unpicklable setting stays behind
            logger.debug("setting %s cannot be sent to child processes", key)
            continue
        portable[key] = value
    return portable


# -- processes -----------------------------------------------------------------------


class AlarmControl:
    """The soft time limit inside a child process: a ``SIGALRM`` timer whose handler
    raises ``SoftTimeLimitExceeded`` in the (main) thread running the task."""

    def __init__(self, soft: float | None) -> None:
        self._soft = soft

    def begin(self) -> None:
        if self._soft:
            signal.setitimer(signal.ITIMER_REAL, self._soft)

    def end(self) -> bool:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return True


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise SoftTimeLimitExceeded


def _child_main(
    conn: multiprocessing.connection.Connection,
    app_path: str,
    settings: dict[str, Any],
    hostname: str,
    log_level: int,
) -> None:
    """The loop of a child process: receive a message, run it, send the outcome."""
    from wiretask._trace import Tracer  # noqa: PLC0415 - keep the child's imports lazy

    # The parent decides when to stop: Ctrl-C (SIGINT to the whole process group) and
    # SIGTERM must not interrupt a task mid-way; the parent kills with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=log_level, format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
        )
    logging.getLogger("wiretask").setLevel(log_level)
    try:
        app = load_app(app_path)
        app.conf.update(settings)
    except BaseException as exc:  # reported to the parent, which raises
        conn.send(("error", "".join(traceback.format_exception_only(type(exc), exc)).strip()))
        return
    tracer = Tracer(app, hostname)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                break
            if item is None:
                break
            message, delivery_info, soft = item
            outcome = tracer.execute(
                message, delivery_info=delivery_info, control=AlarmControl(soft)
            )
            conn.send(outcome)
    finally:
        app.close()


class ChildProcess:
    """One child process of the process pool, and the pipe to it.

    Raises (from the constructor):
        ImproperlyConfigured: the child could not load the app or did not start in time.
    """

    def __init__(
        self,
        context: SpawnContext,
        *,
        app_path: str,
        settings: dict[str, Any],
        hostname: str,
        log_level: int,
        index: int,
    ) -> None:
        self._conn, child_conn = context.Pipe()
        self.process: SpawnProcess = context.Process(
            target=_child_main,
            args=(child_conn, app_path, settings, hostname, log_level),
            name=f"wiretask-child-{index}",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self._ready = False
        self._app_path = app_path

    def wait_ready(self, timeout: float = CHILD_START_TIMEOUT) -> None:
        """Wait for the child to report that it loaded the app."""
        if self._ready:
            return
        try:
            if not self._conn.poll(timeout):
                self.kill()
                raise ImproperlyConfigured(
                    f"a worker child process did not start within {timeout:g}s"
                )
            status, detail = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise ImproperlyConfigured(
                f"a worker child process exited while loading {self._app_path!r} "
                f"(exit code {self.process.exitcode})"
            ) from exc
        if status != "ready":
            self.kill()
            raise ImproperlyConfigured(f"a worker child process could not start: {detail}")
        self._ready = True

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def submit(self, message: TaskMessage, delivery_info: Mapping[str, Any],
               soft: float | None) -> None:
        """Hand one message to the child.

        Raises:
            OSError: the child is gone (``BrokenPipeError``).
        """
        self._conn.send((message, dict(delivery_info), soft))

    def wait(self, timeout: float) -> Outcome | None:
        """The outcome, or None if it did not arrive within ``timeout`` seconds.

        Raises:
            EOFError: the child exited without reporting one.
        """
        if not self._conn.poll(timeout):
            return None
        outcome: Outcome = self._conn.recv()
        return outcome

    def kill(self) -> None:
        """End the child at once (SIGKILL: it ignores SIGTERM) and reap it."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self._conn.close()

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to exit after its current message; kill it if it does not."""
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        self.kill()


def spawn_context() -> SpawnContext:
    return multiprocessing.get_context("spawn")

