"""Child processes of the process pool: starting one, loading the app in it, and the
pipe through which it runs one task message at a time.

Each child is started with the ``spawn`` method (safe next to threads, unlike
``fork``) and imports the app by its path (``find_app_path``/``load_app``), with the
parent's picklable settings (``portable_settings``), so that an app configured in code
after import runs with the same broker and backend. It runs the same tracer as the
thread pools. Its soft time limit is a ``SIGALRM`` timer (``AlarmControl``) that
raises ``SoftTimeLimitExceeded`` in the task; the hard limit is the parent's business
(it kills the child, ``pools/processes.py``).

A child never outlives its parent: a thread in the child waits on the pipe end that
``multiprocessing`` gives every spawned child to watch its parent (it reaches end of
file when the parent exits, however it exits, SIGKILL included) and ends the child at
once, mid-task if need be (``watch_parent``). Otherwise the children of a killed worker
would finish tasks whose messages the broker hands out again, and run them twice.

Threading: a ``ChildProcess`` is driven by one parent thread at a time (its pool slot);
the child itself runs one task at a time in its main thread, next to the thread that
watches its parent.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from wiretask.errors import (
    ImproperlyConfigured,
    SoftTimeLimitExceeded,
)

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext, SpawnProcess

    from wiretask.app import App
    from wiretask.protocol.envelope import TaskMessage
    from wiretask.worker.outcome import Outcome

__all__ = [
    "AlarmControl",
    "ChildProcess",
    "find_app_path",
    "load_app",
    "portable_settings",
    "spawn_context",
]

logger = logging.getLogger("wiretask.worker")

#: Seconds a new child process may take to import the app and report ready.
CHILD_START_TIMEOUT = 60.0
#: The exit code of a child whose parent died.
PARENT_GONE_EXIT_CODE = 70


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
    (``__main__`` does not count: a child process cannot import it by that name; nor do
    wiretask's own modules, which hold the current app in a variable a child would not
    have set)."""
    for name, module in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__") or not isinstance(module, ModuleType):
            continue
        if name == "wiretask" or name.startswith("wiretask."):
            continue  # its own references (the current app) are not importable paths
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

    def wait(self, seconds: float) -> bool:
        # The parent gives up on a run by killing this process: keep waiting until then.
        time.sleep(seconds)
        return True


def rss_kib() -> int:
    """The resident memory of this process in KiB, for ``max_memory_per_child``: the
    current figure where the system tells it (``/proc/self/statm``), else the peak
    (``ru_maxrss``). Not the peak on Linux: a spawned child's ``ru_maxrss`` starts at
    its parent's high-water mark (it survives ``execve``), so a large worker process
    would replace every child at once."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise SoftTimeLimitExceeded


def watch_parent() -> bool:
    """In a spawned child: end this process as soon as its parent process is gone.

    ``multiprocessing`` keeps the write end of a pipe open in the parent for each
    spawned child and hands the child the read end (``parent_process().sentinel``);
    the kernel closes it when the parent exits, for any reason. A daemon thread waits
    for that and calls ``os._exit``: no cleanup runs, nothing more is stored or sent
    (the message is not acked, so the broker delivers it again: at least once).
    Returns False where there is no parent to watch (not a spawned child)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(PARENT_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="wiretask-watch-parent", daemon=True).start()
    return True


def _child_main(
    conn: multiprocessing.connection.Connection,
    app_path: str,
    settings: dict[str, Any],
    hostname: str,
    log_level: int,
) -> None:
    """The loop of a child process: receive a message, run it, send the outcome."""
    from wiretask.worker.tracer import Tracer  # noqa: PLC0415 - keep the child's imports lazy

    # The parent decides when to stop: Ctrl-C (SIGINT to the whole process group) and
    # SIGTERM must not interrupt a task mid-way; the parent kills with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    watch_parent()
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
    # The parent may send task events: task-succeeded carries the result's repr.
    tracer.describe_results = True
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
            conn.send((outcome, rss_kib()))
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
        #: Tasks run, and the resident memory (KiB) reported after the last one.
        self.tasks_run = 0
        self.rss_kib = 0

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
        outcome: Outcome
        outcome, self.rss_kib = self._conn.recv()
        self.tasks_run += 1
        return outcome

    def signal_kill(self) -> None:
        """Send the child SIGKILL now, from any thread; the thread that drives it sees
        the pipe close and reaps it (``kill``)."""
        self.process.kill()

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

