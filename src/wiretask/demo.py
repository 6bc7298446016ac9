"""``wiretask demo``: a guided tour of the calling API, with a real worker process.

Everything happens in a temporary directory: the broker and the result store are one
SQLite file there (the embedded default; the user's data directory is never touched),
and a worker runs as a separate process (``wiretask worker -A wiretask.demo:app``), so
every message really crosses a process boundary. The tour prints a timeline, one
heading per step:

1. a direct call (runs here, no message);
2. ``delay``;
3. ``apply_async`` with a ``countdown`` (the task reports when it ran: not before its eta);
4. an already expired task: the worker revokes it and calls its errback;
5. ``link`` and ``link_error``: the callback's result, the errback receiving the failure;
6. ``on_message``: a task streaming ``PROGRESS`` states, then ``SUCCESS``;
7. compression: the encoded body's size before and after zstd;
8. publish retry: the client's path to the broker is cut, a timer restores it during the
   retry schedule, and the attempts are shown as the transport sees them.

The tasks are defined at module level on ``app`` so the worker process can import them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TextIO, TypeVar

import wiretask
from wiretask._ids import new_id
from wiretask.app import App, AsyncResult, Task
from wiretask.errors import WiretaskError
from wiretask.protocol import states
from wiretask.protocol.celery import decode, encode
from wiretask.retry import RetryPolicy
from wiretask.testing import ForwardingTransport
from wiretask.transports.base import Inspection, Prepared, Transport

__all__ = ["DemoFailed", "Timeline", "app", "run_demo"]

P = ParamSpec("P")
R = TypeVar("R")

#: The demo's app. Its broker comes from ``$WIRETASK_BROKER_URL`` in the worker process;
#: ``run_demo`` points it at the temporary SQLite file.
app = App("wiretask.demo")

#: Seconds a task or result may take before the demo reports a failure.
STEP_TIMEOUT = 15.0


# -- the tasks ----------------------------------------------------------------------------


@app.task
def ping() -> str:
    """Answer ``"pong"``: the demo waits for it to know the worker is up."""
    return "pong"


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    """Multiply two numbers (the ``link`` callback)."""
    return x * y


@app.task
def timestamp() -> float:
    """The wall-clock time at which the worker ran this task."""
    return time.time()


@app.task
def fail(reason: str) -> None:
    """Fail with ``ValueError(reason)``."""
    raise ValueError(reason)


@app.task
def on_error(request: Any, exc: BaseException, traceback: str | None) -> None:
    """An errback (Celery's new style: the failed task's request, its exception and the
    traceback). It records what it received as the result of ``<task id>.errback`` so
    the demo, in another process, can show it."""
    del traceback
    task_id = str(request.id)
    on_error.update_state(
        task_id=errback_note_id(task_id),
        state=states.SUCCESS,
        meta={"task": request.task, "error": f"{type(exc).__name__}: {exc}"},
    )


def errback_note_id(task_id: str) -> str:
    """Where ``on_error`` records what it received for the failed task ``task_id``."""
    return f"{task_id}.errback"


@app.task(bind=True)
def progress(self: Task[Any, Any], steps: int, pause: float = 0.15) -> str:
    """Work in ``steps`` steps of ``pause`` seconds, storing a ``PROGRESS`` state after
    each (``meta={"current": i, "total": steps}``)."""
    for current in range(1, steps + 1):
        time.sleep(pause)
        self.update_state(state="PROGRESS", meta={"current": current, "total": steps})
    return f"counted to {steps}"


@app.task
def word_count(text: str) -> int:
    """Count the words of ``text`` (the compression step sends a long one)."""
    return len(text.split())


# -- the timeline --------------------------------------------------------------------------


class DemoFailed(WiretaskError):
    """A step did not do what the demo shows (a bug, or a broken installation)."""


_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def use_color(stream: TextIO) -> bool:
    """Color only on a terminal, and never when ``NO_COLOR`` is set or ``TERM=dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Timeline:
    """Lines stamped with the time elapsed since the start (``+0.41s``), aligned.

    Safe to use from several threads (the publish-retry step reports from a timer).
    """

    #: Width of the label column in detail lines.
    LABEL = 10

    def __init__(self, stream: TextIO, *, color: bool) -> None:
        self.stream = stream
        self.color = color
        self.started = time.monotonic()
        self.wall_started = time.time()
        self._lock = threading.Lock()
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "→·…".encode(encoding)
            self.arrow, self.dot, self.ellipsis = "→", "·", "…"
        except (UnicodeEncodeError, LookupError):
            self.arrow, self.dot, self.ellipsis = "->", "-", "..."

    def paint(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        codes = ";".join(_CODES[style] for style in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def elapsed(self, wall: float | None = None) -> float:
        """Seconds since the start: now, or at the wall-clock time ``wall``."""
        if wall is None:
            return time.monotonic() - self.started
        return wall - self.wall_started

    def stamp(self, wall: float | None = None) -> str:
        return f"+{self.elapsed(wall):.2f}s"

    def write(self, text: str = "", *, stamped: bool = True) -> None:
        prefix = self.paint(self.stamp().rjust(7), "dim") + "  " if stamped else ""
        with self._lock:
            self.stream.write(f"{prefix}{text}\n" if text else "\n")
            self.stream.flush()

    def heading(self, number: int, title: str) -> None:
        self.write(stamped=False)
        self.write(self.paint(f"{number}. {title}", "bold", "cyan"))

    def code(self, text: str) -> None:
        self.write("   " + self.paint(text, "bold"))

    def detail(self, label: str, value: str, *styles: str) -> None:
        self.write("     " + label.ljust(self.LABEL) + " " + self.paint(value, *styles))

    def state(self, state: str) -> str:
        style = {states.SUCCESS: "green", states.FAILURE: "red", states.REVOKED: "yellow"}
        return self.paint(state, style.get(state, "cyan"))


# -- watching publish attempts -----------------------------------------------------------


class WatchedTransport(ForwardingTransport):
    """A transport that reports every failed operation and every successful publish to
    ``report`` (``None`` for a success), and otherwise does what ``inner`` does.

    The publish retry driver makes one attempt per round: it stops at the first failing
    operation (reconnect, declare, publish), so each failure reported here is one failed
    attempt, and a successful publish ends the last one.
    """

    def __init__(self, inner: Transport, report: Callable[[BaseException | None], None]) -> None:
        super().__init__(inner)
        self.report = report

    def _watch(self, operation: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return operation(*args, **kwargs)
        except Exception as exc:
            self.report(exc)
            raise

    def connect(self) -> None:
        self._watch(super().connect)

    def _declare(self, queue: str) -> None:
        self._watch(super()._declare, queue)

    def _publish(self, messages: Sequence[Prepared]) -> None:
        self._watch(super()._publish, messages)
        self.report(None)


class _WatchedApp(App):
    """An ``App`` whose transport is a ``WatchedTransport``."""

    def __init__(self, report: Callable[[BaseException | None], None], **kwargs: Any) -> None:
        super().__init__("wiretask.demo", **kwargs)
        self._report = report

    def new_transport(self) -> Transport:
        return WatchedTransport(super().new_transport(), self._report)


# -- the worker process -------------------------------------------------------------------


class WorkerProcess:
    """``wiretask worker -A wiretask.demo:app`` in a child process, logging to a file."""

    def __init__(self, broker_url: str, workdir: Path, concurrency: int = 4) -> None:
        self.command = [
            sys.executable, "-m", "wiretask.cli", "worker", "-A", "wiretask.demo:app",
            "-c", str(concurrency), "--loglevel", "WARNING",
        ]
        self.shown = f"wiretask worker -A wiretask.demo:app -c {concurrency}"
        self.log_path = workdir / "worker.log"
        self.workdir = workdir
        # The child imports wiretask from where this process did, whatever sys.path
        # tricks got it here.
        package_root = str(Path(wiretask.__file__).resolve().parents[1])
        pythonpath = os.environ.get("PYTHONPATH")
        self.env = {
            **os.environ,
            "WIRETASK_BROKER_URL": broker_url,
            "WIRETASK_RESULT_BACKEND": broker_url,
            "XDG_DATA_HOME": str(workdir),
            "PYTHONPATH": os.pathsep.join([package_root, pythonpath] if pythonpath
                                          else [package_root]),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# -- the steps ----------------------------------------------------------------------------


def _short(task_id: str) -> str:
    return task_id[:8]


def _exc_text(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}({', '.join(repr(a) for a in value.args)})"
    return repr(value)


def _wait(result: AsyncResult, what: str) -> Any:
    """``result.get`` without propagating, turning a timeout into ``DemoFailed``."""
    try:
        return result.get(timeout=STEP_TIMEOUT, propagate=False)
    except TimeoutError as exc:
        raise DemoFailed(f"{what}: {exc}") from exc


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def _words(count: int) -> str:
    """``count`` words of seeded pseudo-random prose (compressible like real text)."""
    vocabulary = (
        "the", "a", "worker", "broker", "decodes", "sends", "runs", "stores", "task",
        "message", "body", "header", "result", "queue", "retry", "eta", "expires", "link",
        "protocol", "compressed", "json", "frame", "state", "progress", "callback", "error",
        "of", "and", "to", "with", "before", "after", "every", "one", "its", "on",
    )
    rng = random.Random(2)
    return " ".join(rng.choice(vocabulary) for _ in range(count))


class Tour:
    """The demo's steps, run in order against a started worker."""

    def __init__(self, timeline: Timeline, workdir: Path, data_dir: Path, link: Path) -> None:
        self.t = timeline
        self.workdir = workdir
        self.data_dir = data_dir
        self.link = link

    def run(self) -> int:
        steps = [
            self.direct_call, self.delay, self.countdown, self.expired, self.links,
            self.on_message, self.compression, self.publish_retry,
        ]
        for step in steps:
            step()
        return len(steps)

    def direct_call(self) -> None:
        t = self.t
        t.heading(1, "direct call: runs here, no message, no worker")
        t.code("add(2, 3)")
        t.detail("result", str(add(2, 3)), "green")

    def delay(self) -> None:
        t = self.t
        t.heading(2, "delay: send with the default options")
        t.code("add.delay(2, 3).get()")
        result = add.delay(2, 3)
        t.detail("sent", f"task {_short(result.id)}")
        value = _wait(result, "add.delay")
        t.detail("result", f"{value}  {t.state(result.state)}")
        _expect(value == 5, f"add.delay(2, 3) returned {value!r}")

    def countdown(self) -> None:
        t = self.t
        t.heading(3, "apply_async with a countdown: not run before its eta")
        t.code("timestamp.apply_async(countdown=1)")
        result = timestamp.apply_async(countdown=1)
        t.detail("sent", f"task {_short(result.id)}")
        eta = self._scheduled_eta(result.id)
        t.detail("waiting", f"in the broker, scheduled for its eta {t.stamp(eta)}")
        ran_at = _wait(result, "timestamp.apply_async")
        _expect(isinstance(ran_at, float), f"timestamp returned {ran_at!r}")
        late = ran_at - eta
        t.detail(
            "ran", f"at {t.stamp(ran_at)}, {late * 1000:.0f} ms after the eta  "
            f"{t.state(result.state)}",
        )
        _expect(late >= 0, f"the task ran {-late:.3f} s before its eta")

    def _scheduled_eta(self, task_id: str) -> float:
        """The eta (wall-clock time) of a message the broker holds for later, read from
        the message itself with ``Inspection.peek`` (what ``wiretask queue show`` shows)."""
        transport = app.transport
        _expect(isinstance(transport, Inspection),
                f"the demo's broker {transport.url} cannot show a waiting message")
        assert isinstance(transport, Inspection)
        for peeked in transport.peek(app.conf.task_default_queue):
            if peeked.frame.task_id == task_id:
                message = decode(peeked.frame, app.registry)
                _expect(peeked.state == "scheduled" and message.eta is not None,
                        f"task {task_id} is {peeked.state}, not scheduled")
                assert message.eta is not None
                return message.eta.timestamp()
        raise DemoFailed(f"task {task_id} is not waiting in the broker")

    def expired(self) -> None:
        t = self.t
        t.heading(4, "expires: an expired task is revoked, not run")
        t.code("add.apply_async((1, 1), expires=<1 s ago>, link_error=on_error.s())")
        result = add.apply_async(
            (1, 1), expires=app.now() - timedelta(seconds=1), link_error=on_error.s()
        )
        t.detail("sent", f"task {_short(result.id)}")
        value = _wait(result, "expired add")
        state = result.state
        t.detail("state", f"{t.state(state)}  {_exc_text(value)}")
        _expect(state == states.REVOKED, f"an expired task ended {state}, not REVOKED")
        self._show_errback(result.id)

    def _show_errback(self, task_id: str) -> None:
        t = self.t
        note = _wait(AsyncResult(errback_note_id(task_id), app=app), "on_error")
        _expect(isinstance(note, Mapping), f"on_error recorded {note!r}")
        t.detail("errback", f"on_error got {note['error']}", "yellow")

    def links(self) -> None:
        t = self.t
        t.heading(5, "link and link_error: callbacks on success and on failure")
        callback_id = new_id()
        t.code("add.apply_async((2, 3), link=mul.s(10))")
        result = add.apply_async((2, 3), link=mul.s(10).set(task_id=callback_id))
        t.detail("sent", f"task {_short(result.id)}")
        value = _wait(result, "add with link")
        t.detail("result", f"{value}  {t.state(result.state)}")
        callback = AsyncResult(callback_id, app=app)
        product = _wait(callback, "the link callback mul")
        t.detail(
            "callback", f"mul({value}, 10) {t.arrow} {product}  {t.state(callback.state)}"
        )
        _expect(product == 50, f"the callback mul(5, 10) returned {product!r}")

        t.code('fail.apply_async(("boom",), link_error=on_error.s())')
        failed = fail.apply_async(("boom",), link_error=on_error.s())
        t.detail("sent", f"task {_short(failed.id)}")
        error = _wait(failed, "fail")
        t.detail("state", f"{t.state(failed.state)}  {_exc_text(error)}")
        _expect(failed.state == states.FAILURE, f"fail ended {failed.state}")
        self._show_errback(failed.id)

    def on_message(self) -> None:
        t = self.t
        t.heading(6, "on_message: a task streams its PROGRESS")
        t.code("progress.delay(4).get(on_message=show)")
        seen: list[str] = []

        def show(meta: dict[str, Any]) -> None:
            state = str(meta["status"])
            seen.append(state)
            info = meta.get("result")
            if state == "PROGRESS" and isinstance(info, Mapping):
                text = f"{info['current']}/{info['total']}"
            else:
                text = repr(info)
            t.detail("on_message", f"{t.state(state)}  {text}")

        result = progress.delay(4)
        try:
            result.get(timeout=STEP_TIMEOUT, on_message=show)
        except TimeoutError as exc:
            raise DemoFailed(f"progress: {exc}") from exc
        _expect(
            seen.count("PROGRESS") == 4 and seen[-1] == states.SUCCESS,
            f"on_message saw {seen}, expected 4 PROGRESS then SUCCESS",
        )

    def compression(self) -> None:
        t = self.t
        t.heading(7, "compression: the body is compressed on the wire")
        text = _words(4000)
        t.code('word_count.apply_async((text,), compression="zstd")')
        name = word_count.name
        plain = encode(app.build_call(name, (text,), compression=None).message, app.registry)
        packed = encode(app.build_call(name, (text,), compression="zstd").message, app.registry)
        before, after = len(plain.body), len(packed.body)
        t.detail("body", f"{before:,} bytes of JSON {t.arrow} {after:,} bytes with zstd "
                 f"({after / before:.0%})")
        t.detail("header", f"compression: {packed.headers.get('compression')}")
        result = word_count.apply_async((text,), compression="zstd")
        count = _wait(result, "word_count")
        t.detail("result", f"{count:,} words  {t.state(result.state)}")
        _expect(count == 4000, f"word_count returned {count!r}")

    def publish_retry(self) -> None:
        t = self.t
        t.heading(8, "publish retry: the broker goes away and comes back")
        policy = {"max_retries": 5, "interval_start": 0.3, "interval_step": 0, "interval_max": 0.3}
        schedule = RetryPolicy.from_options(policy)
        failures: list[BaseException] = []
        restorer: list[threading.Timer] = []

        def restore() -> None:
            _point(self.link, self.data_dir)
            t.detail("broker", "back: a timer restored the path", "green")

        def report(exc: BaseException | None) -> None:
            if exc is None:
                t.detail(f"attempt {len(failures) + 1}", "published", "green")
                return
            failures.append(exc)
            pause = schedule.delay(len(failures))
            t.detail(f"attempt {len(failures)}",
                     f"{type(exc).__name__}, retry in {pause:.2f} s", "red")
            if len(failures) == 1:
                t.detail("error", self._reason(exc), "dim")
            if len(failures) == 2:
                # Come back in the middle of the second pause.
                timer = threading.Timer(pause / 2, restore)
                timer.daemon = True
                restorer.append(timer)
                timer.start()

        client = _WatchedApp(report, broker=f"sqlite:///{self.link / 'broker.db'}",
                             backend=app.backend_url)
        _point(self.link, self.workdir / "nowhere")
        t.detail("broker", f"gone: the client's path to it ({self.link.name}/) now leads nowhere",
                 "yellow")
        t.code("add.apply_async((20, 22), retry_policy=policy)")
        t.detail("policy", ", ".join(f"{key}={value}" for key, value in policy.items()))
        try:
            sent = client.send_task(add.name, (20, 22), retry_policy=policy)
        finally:
            for timer in restorer:
                timer.join()
            _point(self.link, self.data_dir)
            client.close()
        result = AsyncResult(sent.id, app=app)
        value = _wait(result, "add after publish retry")
        t.detail("result", f"{value}  {t.state(result.state)}")
        _expect(len(failures) >= 2, f"expected failed attempts first, saw {len(failures)}")
        _expect(value == 42, f"add(20, 22) returned {value!r}")

    def _reason(self, exc: BaseException) -> str:
        """The error's message without the broker URL it ends with, and with the
        temporary directory shortened."""
        text = str(exc)
        url = getattr(exc, "url", None)
        if url and text.endswith(f" [{url}]"):
            text = text[: -len(url) - 3]
        return text.replace(str(self.workdir), "$TMP")


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically (``target`` need not exist)."""
    staging = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    staging.symlink_to(target, target_is_directory=True)
    staging.replace(link)


@contextlib.contextmanager
def _configured(broker_url: str) -> Iterator[None]:
    """Point the module's ``app`` at ``broker_url`` for the duration of the demo."""
    saved = app.conf.broker_url, app.conf.result_backend
    app.close()
    app.conf.broker_url = app.conf.result_backend = broker_url
    try:
        yield
    finally:
        app.close()
        app.conf.broker_url, app.conf.result_backend = saved


def run_demo(*, color: bool | None = None, stream: TextIO | None = None) -> int:
    """Run the demo; return the exit code (0 when every step did what it shows).

    Args:
        color: force color on or off; ``None``: on for a terminal unless ``NO_COLOR``.
        stream: where to print (default: ``sys.stdout``).
    """
    out = stream if stream is not None else sys.stdout
    t = Timeline(out, color=use_color(out) if color is None else color)
    workdir = Path(tempfile.mkdtemp(prefix="wiretask-demo-"))
    data_dir = workdir / "data"
    data_dir.mkdir()
    link = workdir / "client-path"
    _point(link, data_dir)
    broker_url = f"sqlite:///{data_dir / 'broker.db'}"
    worker = WorkerProcess(broker_url, workdir)
    ok = False
    steps = 0
    restore_sigterm = _exit_on_sigterm()
    try:
        with _configured(broker_url):
            t.write(t.paint("wiretask demo", "bold") + f" {t.dot} Celery's calling API on the "
                    "embedded SQLite broker, with a worker process", stamped=False)
            t.write(f"  temp dir  {workdir} (removed at the end)", stamped=False)
            t.write(f"  broker    {broker_url} (results too)", stamped=False)
            pid = worker.start()
            t.write(f"  worker    {worker.shown} (pid {pid})", stamped=False)
            t.write(stamped=False)
            _wait_for_worker(worker)
            t.write(f"worker ready {t.dot} {t.paint('ping', 'bold')} {t.arrow} pong")
            steps = Tour(t, workdir, data_dir, link).run()
            ok = True
    except WiretaskError as exc:
        t.write(stamped=False)
        t.write(t.paint(f"demo failed: {type(exc).__name__}: {exc}", "red", "bold"))
        tail = worker.log_tail()
        if tail:
            t.write("worker log:", stamped=False)
            t.write(tail, stamped=False)
    finally:
        code = worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        restore_sigterm()
    if not ok:
        return 1
    t.write(stamped=False)
    t.write(
        t.paint(f"done {t.dot} {steps} steps", "bold", "green")
        + f"; worker stopped (exit {code}), temp dir removed"
    )
    return 0


def _exit_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise ``SystemExit`` (so the worker is stopped and the temp dir
    removed); return what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        del frame
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _wait_for_worker(worker: WorkerProcess, timeout: float = 30.0) -> None:
    """Wait until the worker answers ``ping`` (it imports, connects, consumes)."""
    result = ping.delay()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise DemoFailed("the worker process exited before it was ready")
        try:
            if result.get(timeout=0.25) == "pong":
                return
        except TimeoutError:
            continue
    raise DemoFailed(f"the worker did not answer within {timeout:g} s")


if __name__ == "__main__":
    sys.exit(run_demo())
