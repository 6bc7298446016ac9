"""The ``wiretask`` command: run a worker, send and inspect tasks, read results, demo.

Every subcommand finds its app the same way: ``-A/--app pkg.module:app`` imports an
``App`` (the current directory is importable, as with Celery); without it a plain ``App``
is built from ``--broker``/``--backend``, or from ``$WIRETASK_BROKER_URL`` and the
embedded SQLite default. ``--broker``/``--backend`` also override an imported app's URLs.

Exit codes: 0 success, 1 a runtime failure (the broker could not be reached, a waited-for
task failed), 2 a usage error (a bad option value, an app that does not import), 3 a
health-check threshold of ``wiretask stats`` was crossed (or could not be checked), 69 no
worker answered a remote-control command in time (``inspect``, ``control``, ``status``:
Celery's ``EX_UNAVAILABLE``, so a health check copied from Celery fails as it should).

Linked under another name as a Munin plugin (``wiretask_<queue>``), the script runs
``wiretask munin`` (``wiretask.monitoring.munin``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import wiretask
from wiretask.app import App, AsyncResult
from wiretask.errors import (
    DecodeError,
    ImproperlyConfigured,
    PublishError,
    TimeoutError,
    TransportError,
    UnknownCodec,
    ValidationError,
    WiretaskError,
)
from wiretask.monitoring import munin
from wiretask.monitoring.report import breaches, iso, rates, stats_record, stats_table
from wiretask.protocol import states
from wiretask.protocol.celery import decode
from wiretask.results.exceptions import exception_from_meta
from wiretask.transports.base import (
    Broadcast,
    Exchange,
    Inspection,
    Peeked,
    QueueAdmin,
    QueueStatistics,
    QueueStats,
)
from wiretask.transports.url import mask_url

if TYPE_CHECKING:
    from wiretask.beat.service import EmbeddedBeat

__all__ = ["CommandError", "load_app", "main", "parse_arg"]

#: The CLI option that carries each ``ValidationError.field`` of ``send_task``.
_CALL_OPTION_OF_FIELD: Mapping[str, str] = {
    "args": "ARGS",
    "kwargs": "--kwargs",
    "countdown": "--countdown",
    "eta": "--eta",
    "expires": "--expires",
    "queue": "--queue",
    "serializer": "--serializer",
    "compression": "--compression",
    "compressor": "--compression",
    "priority": "--priority",
    "task": "TASK",
}


class CommandError(Exception):
    """A failure the command reports as one line on stderr, with an exit code."""

    def __init__(self, message: str, *, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``prog: error: message``,
    and whose unknown options are refused with the nearest known one."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def refuse_unknown(self, extras: Sequence[str]) -> NoReturn:
        """Refuse what no option took, naming the nearest option of this parser
        (Python 3.11's argparse has no suggestions of its own)."""
        known = [flag for action in self._actions for flag in action.option_strings]
        parts = []
        for extra in extras:
            hint = ""
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.partition("=")[0], known, n=1,
                                                  cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
            parts.append(f"{extra}{hint}")
        self.error(f"unrecognized arguments: {' '.join(parts)}")


# -- argument types ---------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds, got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    return value


def _non_negative_seconds(text: str) -> float:
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def _expires(text: str) -> float | str:
    """``--expires``: seconds from now, or an absolute ISO 8601 time (checked on send)."""
    try:
        return _seconds(text)
    except argparse.ArgumentTypeError:
        return text


def _at_least(low: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _at_least(1, text)


def _non_negative_int(text: str) -> int:
    return _at_least(0, text)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object like '{{\"x\": 1}}', got {text!r}"
        )
    return value


def _queues(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be comma-separated queue names, got {text!r}")
    return names


def _loglevel(text: str) -> int:
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(
            f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {text!r}"
        )
    return level


def parse_arg(text: str) -> Any:
    """A positional task argument: its JSON value if it parses as JSON, else the string.

    ``2`` is the number 2, ``'"2"'`` and ``two`` are strings, ``'[1, 2]'`` is a list.
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- finding the app --------------------------------------------------------------------


def load_app(spec: str) -> App:
    """The ``App`` that ``-A spec`` names, found as Celery's ``find_app`` finds one.

    ``pkg.module:attribute`` is that attribute. ``pkg.module`` (no colon) is the
    attribute ``module`` of ``pkg`` if there is one, else the module; a module stands
    for its ``app``, else its ``celery`` attribute, else (a package) its ``celery``
    submodule's app, else the first ``App`` among its attributes, so ``-A proj`` finds
    ``proj.celery:app`` as Celery does. The current directory is put first on
    ``sys.path``.

    Raises:
        CommandError: the module does not import, has no such attribute, or what was
            found is not an ``App`` (the message names which, and why).
    """
    module_name, colon, attribute = spec.partition(":")
    if not module_name:
        raise CommandError(f"-A/--app: expected 'package.module:app', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if colon:
        target: Any = _import(module_name)
        for part in (attribute or "app").split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise CommandError(
                    f"-A/--app: module {module_name!r} has no attribute "
                    f"{attribute or 'app'!r}"
                ) from None
    else:
        target = _symbol(module_name)
        if isinstance(target, ModuleType):
            found = _app_in_module(target)
            if found is None:
                raise CommandError(
                    f"-A/--app: module {module_name!r} has no attribute 'app' (nor "
                    "'celery', nor a wiretask App among its attributes)"
                )
            target = found
    if not isinstance(target, App):
        raise CommandError(
            f"-A/--app: {spec!r} is a {type(target).__name__}, not a wiretask App"
        )
    return target


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise CommandError(
            f"-A/--app: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _symbol(name: str) -> Any:
    """Kombu's ``symbol_by_name`` without a colon: ``a.b`` is attribute ``b`` of module
    ``a`` when it has one, else the module ``a.b``."""
    parent, _, last = name.rpartition(".")
    if parent:
        try:
            module = importlib.import_module(parent)
        except ImportError:
            module = None
        if module is not None and hasattr(module, last):
            return getattr(module, last)
    return _import(name)


def _app_in_module(module: ModuleType) -> Any:
    """Celery's rules for a module given to ``-A``: its ``app``, its ``celery``, its
    ``celery`` submodule (a package), then any ``App`` it holds (None: nothing)."""
    for attribute in ("app", "celery"):
        found = getattr(module, attribute, None)
        if found is not None and not isinstance(found, ModuleType):
            return found
    if getattr(module, "__path__", None):
        try:
            submodule = importlib.import_module(f"{module.__name__}.celery")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module.__name__}.celery":
                raise CommandError(
                    f"-A/--app: cannot import {module.__name__}.celery: {exc}"
                ) from exc
        except Exception as exc:
            raise CommandError(
                f"-A/--app: cannot import {module.__name__}.celery: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        else:
            found = _app_in_module(submodule)
            if found is not None:
                return found
    return next((value for value in vars(module).values() if isinstance(value, App)), None)


def _app_from_args(args: argparse.Namespace, *, quiet: bool = False) -> App:
    """The command's app; says on stderr which broker and result store it talks to (a
    client and a worker that do not meet are the first thing to rule out), unless
    ``quiet`` (a Munin plugin, whose stderr goes to munin-node's log at every run)."""
    spec: str | None = getattr(args, "app", None)
    broker: str | None = getattr(args, "broker", None)
    backend: str | None = getattr(args, "backend", None)
    default: App | None = getattr(args, "default_app", None)
    if spec or default is not None:
        app = load_app(spec) if spec else default
        assert app is not None
        if broker:
            app.conf.broker_url = broker
        if backend:
            app.conf.result_backend = backend
    else:
        app = App(broker=broker, backend=backend)
    if not quiet:
        sys.stderr.write(
            f"wiretask {args.command}: broker {app.broker_display}, "
            f"results {mask_url(app.backend_url)}\n"
        )
        sys.stderr.flush()
    return app


# -- output helpers ---------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _show(value: Any) -> str:
    """A value as the user would type it: JSON when it is JSON, else ``repr``."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}({', '.join(repr(a) for a in value.args)})"
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _iso(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _relative(value: datetime | None, now: datetime) -> str:
    if value is None:
        return ""
    seconds = (value - now).total_seconds()
    return f" (in {seconds:.1f}s)" if seconds >= 0 else f" ({-seconds:.1f}s ago)"


# -- commands ---------------------------------------------------------------------------


#: Celery's pool names: ``prefork`` is the process pool; what wiretask has not.
_POOL_NAMES: Mapping[str, str] = {"prefork": "processes", "processes": "processes",
                                  "threads": "threads", "solo": "solo", "asyncio": "asyncio"}
_POOLS_REFUSED: Mapping[str, str] = {
    "eventlet": "wiretask's worker does not run on green threads (its transports block "
    "on sockets): use --pool threads for I/O-bound tasks",
    "gevent": "wiretask's worker does not run on green threads (its transports block on "
    "sockets): use --pool threads for I/O-bound tasks",
    "custom": "give a Pool subclass to Worker(pool=...) in Python instead",
}

#: Celery worker flags wiretask refuses, and what to do instead (checked by
#: ``_cmd_worker``, so that ``--help`` still lists them).
_WORKER_REFUSED: Mapping[str, tuple[str, str]] = {
    "detach": ("-D/--detach", "wiretask worker runs in the foreground: start it from a "
               "service manager (systemd, supervisord) or with 'nohup wiretask worker "
               "... &'"),
    "scheduler": ("--scheduler", "wiretask beat keeps its history in a file and on the "
                  "broker: only Celery's default scheduler (leave it out)"),
    "autoscale": ("--autoscale", "the pool has a fixed size: give -c N"),
    "uid": ("--uid", "it belongs to --detach, which is refused"),
    "gid": ("--gid", "it belongs to --detach, which is refused"),
    "umask": ("--umask", "it belongs to --detach, which is refused"),
    "executable": ("--executable", "it belongs to --detach, which is refused"),
}


def _pool(text: str) -> str:
    name = text.strip().lower()
    if name in _POOL_NAMES:
        return _POOL_NAMES[name]
    if name in _POOLS_REFUSED:
        raise argparse.ArgumentTypeError(f"{name!r} is not supported: {_POOLS_REFUSED[name]}")
    close = difflib.get_close_matches(name, list(_POOL_NAMES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown pool {text!r}{hint} (prefork or processes, threads, solo, asyncio)"
    )


def _nodename(text: str) -> str:
    """``-n``: Celery's node-name formats: ``%h`` the host name, ``%n`` its first part,
    ``%d`` the rest (the domain), ``%%`` a percent sign; without ``@``, ``@<host>`` is
    added, as Celery's ``default_nodename``."""
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    out, i = [], 0
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text) and text[i + 1] in "hnd%":
            out.append({"h": host, "n": name, "d": domain, "%": "%"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    value = "".join(out)
    if not value:
        raise argparse.ArgumentTypeError("must be a non-empty node name")
    return value if "@" in value else f"{value}@{host}"


class _PidFile:
    """``--pidfile``: the worker's pid in a file while it runs, removed when it stops.
    A file naming a process that is still running is refused, as Celery does; a stale
    one is replaced."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> _PidFile:
        try:
            with open(self.path) as existing:
                pid = int(existing.read().strip() or 0)
        except FileNotFoundError:
            pid = 0
        except (OSError, ValueError) as exc:
            raise CommandError(f"--pidfile: cannot read {self.path}: {exc}") from exc
        if pid and pid != os.getpid() and _running(pid):
            raise CommandError(
                f"--pidfile: {self.path} names process {pid}, which is running "
                "(another worker?)"
            )
        try:
            with open(self.path, "w") as file:
                file.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise CommandError(f"--pidfile: cannot write {self.path}: {exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            os.remove(self.path)
        except OSError:
            pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmd_worker(args: argparse.Namespace) -> int:
    from wiretask.worker import Worker  # noqa: PLC0415 - only this command needs it

    for attribute, (flag, why) in _WORKER_REFUSED.items():
        if getattr(args, attribute) not in (None, False):
            raise CommandError(f"{flag} is not supported: {why}")
    if args.pool == "processes" and not getattr(args, "app", None):
        raise CommandError("--pool processes: child processes import the app, so give -A/--app")
    handler: logging.Handler = (
        logging.FileHandler(args.logfile) if args.logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s %(levelname)s %(processName)s] %(name)s: %(message)s"
    ))
    logging.basicConfig(level=args.loglevel, handlers=[handler])
    app = _app_from_args(args)
    queues = _worker_app(args, app)
    worker = Worker(
        app, queues=queues, concurrency=args.concurrency, pool=args.pool,
        prefetch=args.prefetch, prefetch_multiplier=args.prefetch_multiplier,
        hostname=args.hostname, max_tasks_per_child=args.max_tasks_per_child,
        # module:attribute is what the children import; -A proj (Celery's search) is
        # found among the imported modules by the pool.
        app_path=args.app if ":" in (getattr(args, "app", None) or "") else None,
        max_memory_per_child=args.max_memory_per_child,
        statedb=args.statedb,
        # -E: task events from the start; worker events unless --without-heartbeat.
        send_events=True if args.events else None,
        heartbeat=not args.without_heartbeat,
        heartbeat_interval=args.heartbeat_interval or None,
    )
    logging.getLogger("wiretask.cli").info(
        "app %r: broker %s, results %s", app.main or "__main__", app.transport.url,
        app.backend.url,
    )
    beat = _embedded_beat(app, args) if args.beat else None
    try:
        with contextlib.ExitStack() as stack:
            if args.pidfile:
                stack.enter_context(_PidFile(args.pidfile))
            worker.run()
    finally:
        if beat is not None:
            beat.stop()
        app.close()
    return 0


def _embedded_beat(app: App, args: argparse.Namespace) -> EmbeddedBeat:
    """``worker -B``: the beat service in a thread of the worker (its lease makes it safe
    on every worker: one sends, the others wait). Its settings and schedule are checked
    before the worker starts."""
    from wiretask.beat.service import EmbeddedBeat  # noqa: PLC0415

    beat = EmbeddedBeat(app, schedule_filename=args.schedule_filename)
    beat.start()
    return beat


def _worker_app(args: argparse.Namespace, app: App) -> list[str]:
    """Apply the worker's flags to the app's settings, import its modules (Celery's
    worker imports the include/imports modules when it starts), and return the queues
    to consume: ``-Q``, else the declared queues (task_queues), else
    task_default_queue, as Celery's worker consumes, less the ``-X`` ones."""
    if args.include:
        app.conf.include = (*app.conf.include, *args.include)
    if args.time_limit is not None:
        app.conf.task_time_limit = args.time_limit
    if args.soft_time_limit is not None:
        app.conf.task_soft_time_limit = args.soft_time_limit
    if args.disable_prefetch:
        app.conf.worker_disable_prefetch = True
    app.finalize()
    queues = list(args.queues if args.queues is not None else app.router.consume_from)
    if args.exclude_queues:
        queues = [name for name in queues if name not in args.exclude_queues]
        if not queues:
            raise CommandError("-X/--exclude-queues: every queue is excluded")
    if args.purge:
        _purge(app, queues)
    return queues


def _purge(app: App, queues: Sequence[str]) -> None:
    """``--purge``: remove the messages waiting in the worker's queues before it starts,
    as Celery's worker does (``wiretask purge`` without the question)."""
    transport = app.transport
    if not isinstance(transport, Inspection):
        raise CommandError(f"--purge: the broker {transport.url} cannot purge a queue (its "
                           "transport does not offer Inspection)")
    removed = sum(transport.purge(name) for name in queues)
    logging.getLogger("wiretask.cli").warning(
        "purged %d message(s) from %s", removed, ", ".join(queues)
    )


def _worker_options(worker: argparse.ArgumentParser) -> None:
    """The ``worker`` subcommand's options: Celery's ``celery worker`` flags (refused ones
    say what to do instead) and wiretask's ``--prefetch``."""
    worker.add_argument("-Q", "--queues", type=_queues, default=None, metavar="Q1,Q2",
                        help="queues to consume (default: the app's task_queues, else its "
                        "task_default_queue, celery)")
    worker.add_argument("-X", "--exclude-queues", type=_queues, default=None,
                        metavar="Q1,Q2", help="queues not to consume of the default ones")
    worker.add_argument("-I", "--include", type=_queues, default=None, metavar="M1,M2",
                        help="more modules to import (added to the app's include)")
    worker.add_argument("-c", "--concurrency", type=_positive_int, default=None,
                        metavar="N", help="tasks run at once (default: the app's "
                        "worker_concurrency, else the CPU count; 1 with --pool solo)")
    worker.add_argument("-P", "--pool", type=_pool, default="threads",
                        metavar="POOL", help="prefork (or processes: child processes), "
                        "threads, solo (one at a time in the receiving thread), or "
                        "asyncio (async def tasks many in flight on one event loop); "
                        "eventlet and gevent are refused (default: threads)")
    worker.add_argument("-n", "--hostname", type=_nodename, default=None, metavar="NAME",
                        help="node name for remote control, e.g. w1@%%h (%%h host, %%n "
                        "its first part, %%d domain; default: wiretask@<host>)")
    worker.add_argument("-S", "--statedb", metavar="FILE", default=None,
                        help="keep revoked task ids in FILE across restarts "
                        "(default: the worker_state_db setting)")
    prefetch = worker.add_mutually_exclusive_group()
    prefetch.add_argument("--prefetch-multiplier", type=_non_negative_int, default=None,
                          metavar="N", help="reserve concurrency x N messages beyond the "
                          "running ones, as Celery; 0: no limit (default: the app's "
                          "worker_prefetch_multiplier, 4)")
    prefetch.add_argument("--prefetch", type=_non_negative_int, default=None, metavar="N",
                          help="wiretask's own: reserve exactly N messages beyond the "
                          "running ones, instead of the multiplier")
    prefetch.add_argument("--disable-prefetch", action="store_true",
                          help="reserve no message beyond the running ones")
    worker.add_argument("-O", "--optimization", choices=("default", "fair"),
                        default="default", help="accepted for Celery's command lines: "
                        "wiretask's pools already hand a message to a slot only when the "
                        "slot is free (what -O fair asks of Celery's prefork pool)")
    worker.add_argument("--time-limit", type=_non_negative_seconds, default=None,
                        metavar="S", help="hard time limit of tasks that set none "
                        "(task_time_limit)")
    worker.add_argument("--soft-time-limit", type=_non_negative_seconds, default=None,
                        metavar="S", help="soft time limit of tasks that set none "
                        "(task_soft_time_limit)")
    worker.add_argument("--max-tasks-per-child", type=_positive_int, default=None,
                        metavar="N", help="--pool prefork: replace a child process after "
                        "N tasks")
    worker.add_argument("--max-memory-per-child", type=_positive_int, default=None,
                        metavar="KIB", help="--pool prefork: replace a child process after "
                        "a task that left it above KIB KiB resident")
    worker.add_argument("-B", "--beat", action="store_true",
                        help="also run beat in this worker (safe on several workers: one "
                        "sends, the others wait on its lease)")
    worker.add_argument("-s", "--schedule-filename", "--schedule", metavar="PATH",
                        default=None,
                        help="-B's schedule file (default: beat_schedule_filename)")
    worker.add_argument("--purge", "--discard", action="store_true",
                        help="remove the messages waiting in the worker's queues first")
    worker.add_argument("-l", "--loglevel", type=_loglevel, default=logging.INFO,
                        metavar="LEVEL", help="DEBUG, INFO, WARNING, ... (default: INFO)")
    worker.add_argument("-f", "--logfile", default=None, metavar="FILE",
                        help="log to FILE instead of stderr")
    worker.add_argument("--pidfile", default=None, metavar="FILE",
                        help="write the worker's pid to FILE while it runs (refused if "
                        "FILE names a running process)")
    worker.add_argument("-E", "--events", "--task-events", action="store_true",
                        help="send Celery's task events (celery events, Flower); the "
                        "worker events (heartbeats) are sent without it, as Celery's")
    worker.add_argument("--without-heartbeat", action="store_true",
                        help="send no worker events (worker-online, -heartbeat, -offline)")
    worker.add_argument("--heartbeat-interval", type=_non_negative_seconds, metavar="S",
                        help="seconds between worker-heartbeat events (default 2)")
    no_ops = worker.add_argument_group(
        "accepted for Celery's command lines, no effect here",
        "wiretask workers do not gossip or synchronise at start (mingle)",
    )
    no_ops.add_argument("--without-gossip", action="store_true")
    no_ops.add_argument("--without-mingle", action="store_true")
    refused = worker.add_argument_group(
        "Celery's flags that wiretask refuses (each says what to do instead)"
    )
    refused.add_argument("-D", "--detach", action="store_true")
    refused.add_argument("--scheduler", metavar="CLASS")
    refused.add_argument("--autoscale", metavar="MAX,MIN")
    for flag in ("--uid", "--gid", "--umask", "--executable"):
        refused.add_argument(flag, metavar="VALUE")


def _call_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in ("countdown", "eta", "expires", "queue", "serializer", "compression",
                 "priority"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    return options


def _cmd_call(args: argparse.Namespace) -> int:
    app = _app_from_args(args)
    task_args = [parse_arg(text) for text in args.args]
    try:
        result = app.send_task(args.task, task_args, args.kwargs or {}, **_call_options(args))
    except UnknownCodec as exc:
        option = "--serializer" if exc.kind == "serializer" else "--compression"
        raise CommandError(f"{option}: {exc.problem}") from exc
    except ValidationError as exc:
        option = _CALL_OPTION_OF_FIELD.get(exc.field, exc.field)
        raise CommandError(f"{option}: {exc.problem}") from exc
    except PublishError as exc:
        raise CommandError(f"could not send {args.task!r}: {exc}", code=1) from exc
    finally:
        app.close()
    _out(result.id)
    return 0


def _describe(peeked: Peeked, app: App, now: datetime) -> tuple[list[str], dict[str, Any]]:
    """One ``inspect`` row and its JSON form, for a message seen by ``Inspection.peek``."""
    frame = peeked.frame
    not_before = peeked.not_before
    record: dict[str, Any] = {
        "state": peeked.state,
        "id": frame.task_id,
        "size": len(frame.body),
        "not_before": not_before.isoformat() if not_before is not None else None,
    }
    try:
        message = decode(frame, app.registry)
    except DecodeError as exc:
        record["error"] = str(exc)
        row = [peeked.state, frame.task_id or "?", "(undecodable)", "-", "-", "-", "-", "-",
               str(len(frame.body)), frame.headers.get("compression") or "-"]
        return row, record
    eta = message.eta if message.eta is not None else not_before
    callbacks = [sig.task for sig in message.callbacks or ()]
    errbacks = [sig.task for sig in message.errbacks or ()]
    record.update(
        id=message.id,
        task=message.task,
        eta=eta.isoformat() if eta is not None else None,
        expires=message.expires.isoformat() if message.expires is not None else None,
        retries=message.retries,
        callbacks=callbacks,
        errbacks=errbacks,
        compression=message.compression,
        args=list(message.args),
        kwargs=dict(message.kwargs),
    )
    row = [
        peeked.state,
        message.id,
        message.task,
        _iso(eta) + _relative(eta, now),
        _iso(message.expires) + _relative(message.expires, now),
        str(message.retries),
        ",".join(callbacks) or "-",
        ",".join(errbacks) or "-",
        str(len(frame.body)),
        message.compression or "-",
    ]
    return row, record


def _read_queue(
    transport: QueueAdmin, queue: str, limit: int
) -> tuple[QueueStats | None, int, list[Peeked] | None, int]:
    """What ``inspect`` shows of ``queue``: exact counts from ``QueueStatistics`` where
    the transport offers it, else from ``QueueAdmin``; the first ``limit`` messages
    where the broker can show them (``Inspection``), else ``None``."""
    stats = (transport.queue_stats([queue])[0]
             if isinstance(transport, QueueStatistics) else None)
    waiting = (stats.waiting if stats is not None and stats.waiting is not None
               else transport.size(queue))
    peeked = transport.peek(queue, limit=limit) if isinstance(transport, Inspection) else None
    dead = (stats.dead if stats is not None and stats.dead is not None
            else len(transport.dead_letters(queue)))
    return stats, waiting, peeked, dead


def _cmd_inspect(args: argparse.Namespace) -> int:
    app = _app_from_args(args)
    try:
        transport = app.transport
        if not isinstance(transport, QueueAdmin):
            raise CommandError(f"the broker {transport.url} cannot show a queue without "
                               "consuming it (its transport does not offer Inspection)", code=1)
        stats, waiting, peeked, dead = _read_queue(transport, args.queue, args.limit)
    except TransportError as exc:
        raise CommandError(f"cannot read queue {args.queue!r}: {exc}", code=1) from exc
    finally:
        app.close()
    if peeked is None:
        return _show_counts_only(args, transport.url, stats, waiting, dead)
    return _show_peeked(args, app, transport.url, (stats, waiting, peeked, dead))


def _show_peeked(
    args: argparse.Namespace, app: App, url: str,
    read: tuple[QueueStats | None, int, list[Peeked], int],
) -> int:
    """``inspect`` on a broker that shows messages: the counts, then the messages."""
    stats, waiting, peeked, dead = read
    now = app.now()
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for item in peeked:
        row, record = _describe(item, app, now)
        rows.append(row)
        records.append(record)
    ready, scheduled = _inspect_counts(stats, waiting, peeked)
    if args.json:
        _out(json.dumps(
            {"queue": args.queue, "waiting": waiting, "ready": ready, "scheduled": scheduled,
             "dead_letters": dead, "messages": records},
            indent=2, default=repr,
        ))
        return 0
    shown = f", showing the first {len(peeked)}" if len(peeked) < waiting else ""
    if ready is None or scheduled is None:
        counts = f"showing the first {len(peeked)}"
    else:
        counts = f"{ready} ready, {scheduled} scheduled{shown}"
    _out(f"queue {args.queue!r} on {url}: {waiting} waiting ({counts}), {dead} dead-lettered")
    if rows:
        _out()
        headers = ["STATE", "ID", "TASK", "ETA", "EXPIRES", "RETRIES", "LINK", "LINK_ERROR",
                   "SIZE", "COMPRESSION"]
        for line in _table(headers, rows):
            _out(line)
        errors = [r for r in records if "error" in r]
        if errors:
            _out()
            for record in errors:
                _out(f"undecodable {record['id'] or '(no id)'}: {record['error']}")
    return 0


#: Why ``queue show`` lists no message on a broker that offers ``QueueAdmin`` alone.
_NO_PEEK = ("its messages cannot be listed without consuming them (the transport offers "
            "QueueAdmin, not Inspection's peek)")


def _show_counts_only(
    args: argparse.Namespace, url: str, stats: QueueStats | None, waiting: int, dead: int
) -> int:
    """``queue show`` on a broker that can count but not show messages (AMQP): the counts
    it can tell (``None`` in JSON for those it cannot), and why no message is listed."""
    ready = stats.ready if stats is not None else None
    scheduled = stats.scheduled if stats is not None else None
    if args.json:
        _out(json.dumps(
            {"queue": args.queue, "waiting": waiting, "ready": ready, "scheduled": scheduled,
             "dead_letters": dead, "messages": None, "messages_not_shown": _NO_PEEK},
            indent=2,
        ))
        return 0
    known = [f"{ready} ready"] if ready is not None else []
    known.append(f"{scheduled} scheduled" if scheduled is not None
                 else "scheduled ones not known")
    counts = f" ({', '.join(known)})"
    _out(f"queue {args.queue!r} on {url}: {waiting} waiting{counts}, {dead} dead-lettered")
    _out(_NO_PEEK)
    return 0


def _inspect_counts(
    stats: QueueStats | None, waiting: int, peeked: Sequence[Peeked]
) -> tuple[int | None, int | None]:
    """Ready and scheduled counts for ``inspect``: exact from ``stats``; without it, from
    the peeked messages only when they are all of them (``None``: not known)."""
    if stats is not None:
        return stats.ready, waiting - stats.ready
    if len(peeked) < waiting:
        return None, None
    ready = sum(1 for item in peeked if item.state == "ready")
    return ready, len(peeked) - ready


def _statistics(app: App) -> QueueStatistics:
    """The app's transport as a ``QueueStatistics``, or a one-line error saying the
    broker cannot tell."""
    transport = app.transport
    if not isinstance(transport, QueueStatistics):
        raise CommandError(
            f"the broker {transport.url} cannot report queue statistics (its transport "
            "does not offer QueueStatistics)", code=1,
        )
    return transport


def _read_stats(app: App, source: QueueStatistics, queues: Sequence[str]) -> list[QueueStats]:
    try:
        return source.queue_stats(queues)
    except TransportError as exc:
        raise CommandError(
            f"cannot read queue statistics from {app.transport.url}: {exc}", code=1
        ) from exc


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.count is not None and args.watch is None:
        raise CommandError("--count: only with --watch")
    app = _app_from_args(args)
    previous: dict[str, QueueStats] = {}
    rounds = 0
    try:
        source = _statistics(app)
        url = app.transport.url
        while True:
            readings = _read_stats(app, source, args.queues)
            rounds += 1
            _show_stats(args, url, readings, previous if args.watch is not None else None)
            crossed = breaches(readings, max_ready=args.fail_above, max_age=args.max_age)
            if crossed:
                for breach in crossed:
                    sys.stderr.write(f"wiretask stats: threshold: {breach}\n")
                return 3
            if args.watch is None or (args.count is not None and rounds >= args.count):
                return 0
            previous = {stats.queue: stats for stats in readings}
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how --watch ends
    finally:
        app.close()


def _show_stats(
    args: argparse.Namespace, url: str, readings: Sequence[QueueStats],
    previous: Mapping[str, QueueStats] | None,
) -> None:
    at = readings[0].at if readings else time.time()
    if args.json:
        document = {"broker": url, "at": at, "queues": [stats_record(s) for s in readings]}
        # --watch writes one line per reading (JSON Lines); once, an indented document.
        _out(json.dumps(document) if args.watch is not None
             else json.dumps(document, indent=2))
        sys.stdout.flush()
        return
    per_second = None
    if previous:
        per_second = {s.queue: rates(previous[s.queue], s) for s in readings
                      if s.queue in previous}
    if args.watch is not None:
        _out(f"{url} at {iso(at)} (every {args.watch:g}s, Ctrl-C to stop)")
    else:
        _out(f"{url} at {iso(at)}")
    for line in stats_table(readings, per_second):
        _out(line)
    if args.watch is not None:
        _out()
    sys.stdout.flush()


def _cmd_purge(args: argparse.Namespace) -> int:
    app = _app_from_args(args)
    try:
        transport = app.transport
        if not isinstance(transport, QueueAdmin):
            raise CommandError(f"the broker {transport.url} cannot purge a queue (its "
                               "transport does not offer QueueAdmin)", code=1)
        names = ", ".join(args.queues)
        if not args.force:
            sys.stderr.write(
                f"WARNING: this removes every waiting message (ready and scheduled) of "
                f"{'queue' if len(args.queues) == 1 else 'queues'} {names} on "
                f"{transport.url}.\n"
                "There is no undo for this operation.\n"
                "(to skip this prompt use the -f option)\n"
                "Are you sure you want to delete them (yes/NO)? "
            )
            sys.stderr.flush()
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                raise CommandError("aborted: nothing was purged", code=1)
        total = 0
        for queue in args.queues:
            try:
                removed = transport.purge(queue)
            except TransportError as exc:
                raise CommandError(f"cannot purge queue {queue!r}: {exc}", code=1) from exc
            total += removed
            _out(f"purged {_plural(removed, 'message')} from {queue!r}")
        if len(args.queues) > 1:
            _out(f"purged {_plural(total, 'message')} from "
                 f"{_plural(len(args.queues), 'queue')}")
    finally:
        app.close()
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _cmd_munin(args: argparse.Namespace) -> int:
    queues = munin.plugin_queues(args.plugin_name, os.environ, args.queues)
    app = _app_from_args(args, quiet=True)
    try:
        if args.mode == "autoconf":
            # Munin's rule: always exit 0, answer "yes" or "no (why)".
            try:
                _read_stats(app, _statistics(app), queues)
            except (CommandError, WiretaskError) as exc:
                _out(f"no ({exc})")
                return 0
            _out("yes")
            return 0
        limits = munin.thresholds(os.environ)
        readings = _read_stats(app, _statistics(app), queues)
        if args.mode == "config":
            lines = munin.config_lines(readings, limits, app.transport.url)
        else:
            lines = munin.fetch_lines(readings)
    finally:
        app.close()
    for line in lines:
        _out(line)
    return 0


def _cmd_exporter(args: argparse.Namespace) -> int:
    try:
        from wiretask.monitoring.prometheus import (  # noqa: PLC0415 - optional extra
            Exporter,
            QueueCollector,
        )
    except ImportError as exc:
        raise CommandError(
            "the exporter needs the prometheus extra (pip install 'wiretask[prometheus]'): "
            f"{exc}", code=1,
        ) from exc
    app = _app_from_args(args)
    log = logging.getLogger("wiretask.cli")
    logging.basicConfig(
        level=args.loglevel, format="[%(asctime)s %(levelname)s] %(name)s: %(message)s"
    )
    events = None
    try:
        source = _statistics(app)
        _read_stats(app, source, args.queues)  # an unreachable broker fails here, loudly
        collectors: list[Any] = [QueueCollector(source, args.queues)]
        if args.events:
            from wiretask.monitoring.events import EventCollector  # noqa: PLC0415 - extra

            transport, exchange = _event_source(app)
            events = EventCollector(transport, exchange, app.registry, **_event_queue(app))
            events.start()
            collectors.append(events)
        exporter = Exporter(collectors, bind=args.bind, port=args.port)
        try:
            port = exporter.start()
        except OSError as exc:
            raise CommandError(
                f"--bind/--port: cannot listen on {args.bind} port {args.port}: {exc}", code=1
            ) from exc
        host = f"[{args.bind}]" if ":" in args.bind else args.bind
        _out(f"serving http://{host}:{port}/metrics ({_plural(len(args.queues), 'queue')} "
             f"of {app.transport.url}) until SIGTERM/SIGINT")
        sys.stdout.flush()
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            del frame
            log.info("exporter: %s, stopping", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            exporter.stop()
    finally:
        if events is not None:
            events.stop()
        app.close()
    return 0

# -- events: wiretask events, the exporter's event collector -------------------------------


def _event_source(app: App) -> tuple[Broadcast, Exchange]:
    """The app's broker and event exchange (``event_exchange``), or a CommandError."""
    from wiretask.events.wire import event_exchange  # noqa: PLC0415 - only these commands

    transport = app.transport
    if not isinstance(transport, Broadcast):
        raise CommandError(f"{transport.url} cannot broadcast, so it carries no events",
                           code=1)
    name = str(app.conf.get("event_exchange") or "celeryev")
    return transport, event_exchange(transport.url.partition(":")[0], name)


def _event_queue(app: App) -> dict[str, Any]:
    """The event queue's settings (Celery's ``event_queue_*``), for a receiver."""
    conf = app.conf
    return {"prefix": str(conf.get("event_queue_prefix") or "celeryev"),
            "queue_ttl": conf.get("event_queue_ttl", 5.0),
            "queue_expires": conf.get("event_queue_expires", 60.0)}


def _event_line(event: dict[str, Any]) -> str:
    """One event as Celery's ``celery events --dump`` prints it."""
    ev = dict(event)
    stamp = datetime.fromtimestamp(float(ev.pop("timestamp", 0.0)), UTC)
    kind = str(ev.pop("type", "")).lower()
    hostname = ev.pop("hostname", "")
    task = ""
    if kind.startswith("task-"):
        task_id = ev.pop("uuid", "")
        if kind in ("task-received", "task-sent"):
            task = (f" {ev.pop('name', '')}({task_id}) args={ev.pop('args', '')} "
                    f"kwargs={ev.pop('kwargs', '')}")
        else:
            task = f" {task_id}"
    fields = ", ".join(f"{key}={ev[key]}" for key in sorted(ev))
    label = kind.replace("-", " ") if kind.startswith("task-") else kind.partition("-")[2]
    return f"{hostname} [{stamp}] {label}{':' if fields or task else ''}{task} {fields}"


def _cmd_events(args: argparse.Namespace) -> int:
    from wiretask.events.receiver import EventReceiver  # noqa: PLC0415 - only this command

    app = _app_from_args(args)
    try:
        transport, exchange = _event_source(app)
        receiver = EventReceiver(
            transport, exchange, app.registry, **_event_queue(app),
            exclusive=bool(app.conf.get("event_queue_exclusive", False)),
        )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            del signum, frame
            receiver.should_stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM,
                                                                    signal.SIGINT)}
        try:
            with receiver:
                _out("-> evdump: starting capture...")
                sys.stdout.flush()
                for event in receiver.itercapture(limit=args.limit, timeout=args.timeout):
                    _out(json.dumps(event, default=str) if args.json else _event_line(event))
                    sys.stdout.flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        app.close()
    return 0


# -- remote control: inspect, control, status ----------------------------------------------

#: Celery's ``EX_UNAVAILABLE``: no worker answered in time.
EX_UNAVAILABLE = 69

def _flag_text(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on", "y"):
        return True
    if value in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


#: The remote commands the CLI sends, as Celery's ``Panel`` declares them: their kind,
#: their positional arguments (name, type) and the name of the variadic rest, if any.
_Spec = tuple[str, tuple[tuple[str, Callable[[str], Any]], ...], str | None, str]
_REMOTE: Mapping[str, _Spec] = {
    # inspect: read-only
    "ping": ("inspect", (), None, "is anyone there? ({'ok': 'pong'})"),
    "active": ("inspect", (), None, "tasks running now"),
    "reserved": ("inspect", (), None, "tasks received and waiting for a pool slot"),
    "scheduled": ("inspect", (), None, "tasks held until their eta"),
    "registered": ("inspect", (), "taskinfoitems", "registered tasks [attr ...]"),
    "stats": ("inspect", (), None, "worker statistics"),
    "revoked": ("inspect", (), None, "revoked task ids"),
    "active_queues": ("inspect", (), None, "queues consumed"),
    "query_task": ("inspect", (), "ids", "what a worker knows of task ids: ID [ID ...]"),
    "conf": ("inspect", (("with_defaults", _flag_text),), None,
             "the worker app's settings [with_defaults]"),
    "clock": ("inspect", (), None, "the worker's logical clock"),
    "report": ("inspect", (), None, "software and broker of the worker"),
    # control: changes something
    "revoke": ("control", (), "task_id", "revoke tasks: ID [ID ...]"),
    "terminate": ("control", (("signal", str),), "task_id",
                  "revoke and end running tasks: SIGNAL ID [ID ...]"),
    "revoke_by_stamped_headers": ("control", (), "headers",
                                  "revoke tasks by stamp: KEY=VALUE [KEY=VALUE ...]"),
    "shutdown": ("control", (), None, "stop the workers (warm)"),
    "rate_limit": ("control", (("task_name", str), ("rate_limit", str)), None,
                   "set a task's rate limit (Celery workers): TASK RATE"),
    "time_limit": ("control", (("task_name", str), ("soft", float), ("hard", float)), None,
                   "set a task's time limits (Celery workers): TASK SOFT [HARD]"),
    "enable_events": ("control", (), None, "start sending task events (Celery workers)"),
    "disable_events": ("control", (), None, "stop sending task events (Celery workers)"),
    "pool_grow": ("control", (("n", int),), None, "grow the pool (Celery workers): [N]"),
    "pool_shrink": ("control", (("n", int),), None, "shrink the pool (Celery workers): [N]"),
    "add_consumer": ("control", (("queue", str), ("exchange", str), ("exchange_type", str),
                                 ("routing_key", str)), None,
                     "consume another queue (Celery workers): QUEUE"),
    "cancel_consumer": ("control", (("queue", str),), None,
                        "stop consuming a queue (Celery workers): QUEUE"),
}


def _node_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be comma-separated node names, got {text!r}")
    return names


def _remote_arguments(kind: str, command: str, given: Sequence[str]) -> dict[str, Any]:
    """The command's arguments from the command line, as Celery's ``_compile_arguments``
    reads them: the declared ones in order, the rest as the variadic one."""
    if command not in _REMOTE or _REMOTE[command][0] != kind:
        names = sorted(name for name, spec in _REMOTE.items() if spec[0] == kind)
        close = difflib.get_close_matches(command, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if kind == "inspect" and not close:
            hint += f" (to list the messages of a queue: wiretask queue show {command})"
        raise CommandError(f"unknown {kind} command {command!r}{hint} "
                           f"(known: {', '.join(names)})")
    _, declared, variadic, _ = _REMOTE[command]
    arguments: dict[str, Any] = {}
    rest = list(given)
    for name, kind_of in declared:
        if not rest:
            break
        text = rest.pop(0)
        try:
            arguments[name] = kind_of(text)
        except ValueError as exc:
            raise CommandError(f"{command} {name}: {exc}") from None
    if rest and variadic is None:
        raise CommandError(f"{command} takes at most {len(declared)} argument(s), got "
                           f"{len(given)}: {' '.join(given)}")
    if variadic is not None:
        arguments[variadic] = rest
    if command in ("revoke", "terminate") and not rest:
        raise CommandError(f"{command}: give at least one task id")
    if command == "query_task" and not rest:
        raise CommandError("query_task: give at least one task id")
    return arguments


def _pretty(reply: Any) -> tuple[str, str]:
    """``(status, text)`` of one node's reply, as Celery's ``pretty``."""
    if isinstance(reply, dict) and ("ok" in reply or "error" in reply):
        status = "OK" if "ok" in reply else "ERROR"
        text = _pretty(reply["ok"] if "ok" in reply else reply["error"])[1]
        return status, "\n".join("    " + line for line in text.splitlines())
    if isinstance(reply, list):
        return "OK", "\n".join(f"* {item}" for item in reply) if reply else "- empty -"
    if isinstance(reply, dict):
        return "OK", json.dumps(reply, sort_keys=True, indent=4, default=repr)
    return "OK", str(reply)


def _say_reply(body: Mapping[str, Any], *, show: bool) -> None:
    for node, reply in body.items():
        status, text = _pretty(reply)
        _out(f"->  {node}: {status}")  # two spaces, as Celery prints it
        if show and text:
            for line in text.splitlines():
                _out(f"    {line}")


def _remote(args: argparse.Namespace, kind: str) -> int:
    """``inspect`` and ``control``: send the command, show each reply as it comes, exit
    ``EX_UNAVAILABLE`` when none came within ``--timeout``."""
    arguments = _remote_arguments(kind, args.remote_command, args.arguments)
    app = _app_from_args(args)
    show = None if args.json else (lambda body: _say_reply(body, show=True))
    try:
        replies = app.control.broadcast(
            args.remote_command, arguments=arguments, destination=args.destination,
            reply=True, timeout=args.timeout, callback=show,
        )
    except TransportError as exc:
        raise CommandError(f"{kind} {args.remote_command}: {exc}", code=1) from exc
    finally:
        app.close()
    return _replied(args, replies)


def _replied(args: argparse.Namespace, replies: list[dict[str, Any]] | None) -> int:
    if not replies:
        sys.stderr.write(f"wiretask {args.command}: error: no nodes replied within "
                         f"{args.timeout:g} s\n")
        return EX_UNAVAILABLE
    nodes: dict[str, Any] = {}
    for body in replies:
        nodes.update(body)
    if args.json:
        _out(json.dumps(nodes, default=repr))
    elif not args.quiet:
        _out()
        _out(f"{len(nodes)} node{'' if len(nodes) == 1 else 's'} online.")
    return 0


def _cmd_remote_inspect(args: argparse.Namespace) -> int:
    return _remote(args, "inspect")


def _cmd_control(args: argparse.Namespace) -> int:
    return _remote(args, "control")


def _cmd_status(args: argparse.Namespace) -> int:
    """``celery status``: ping, one line per node that answered."""
    app = _app_from_args(args)
    show = None if args.json else (lambda body: _say_reply(body, show=False))
    try:
        replies = app.control.broadcast("ping", destination=args.destination, reply=True,
                                        timeout=args.timeout, callback=show)
    except TransportError as exc:
        raise CommandError(f"status: {exc}", code=1) from exc
    finally:
        app.close()
    return _replied(args, replies)


def _remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--timeout", type=_non_negative_seconds, default=1.0,
                        metavar="S", help="seconds to wait for each next reply (default: 1)")
    parser.add_argument("-d", "--destination", type=_node_names, metavar="NODE[,NODE]",
                        help="only these worker node names (default: every worker)")
    parser.add_argument("-j", "--json", action="store_true",
                        help="print the replies as one JSON object by node")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no 'N nodes online.' line")


def _cmd_result(args: argparse.Namespace) -> int:
    app = _app_from_args(args)
    try:
        if args.wait is not None:
            try:
                AsyncResult(args.id, app=app).get(timeout=args.wait, propagate=False)
            except TimeoutError as exc:
                raise CommandError(str(exc), code=1) from exc
        meta = app.backend.get(args.id)
    except TransportError as exc:
        raise CommandError(f"cannot read the result of {args.id}: {exc}", code=1) from exc
    finally:
        app.close()
    if meta is None:
        meta = states.make_meta(args.id, states.PENDING, None)
    state = str(meta.get("status"))
    result = meta.get("result")
    if state in states.EXCEPTION_STATES and isinstance(result, Mapping):
        result = exception_from_meta(result)
    if args.json:
        _out(json.dumps(dict(meta), indent=2, default=repr))
    else:
        lines = [("id", args.id), ("state", state), ("result", _show(result))]
        if meta.get("date_done"):
            lines.append(("done", str(meta["date_done"])))
        for label, value in lines:
            _out(f"{label:<8}{value}")
        traceback = meta.get("traceback")
        if traceback:
            _out()
            _out(str(traceback).rstrip())
    return 1 if state in states.PROPAGATE_STATES else 0


def _cmd_scheduler(args: argparse.Namespace) -> int:
    app = _app_from_args(args)
    url = app.broker_url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise CommandError(
            f"--broker: the scheduler is for Redis brokers only (got {app.transport.url}); "
            "SQLite and memory brokers deliver delayed messages themselves"
        )
    try:
        from wiretask.transports.redis import run_scheduler  # noqa: PLC0415
    except ImportError as exc:
        raise CommandError(
            f"the Redis transport needs the redis extra (pip install 'wiretask[redis]'): {exc}"
        ) from exc
    logging.basicConfig(
        level=args.loglevel, format="[%(asctime)s %(levelname)s] %(name)s: %(message)s"
    )
    stop = threading.Event()
    log = logging.getLogger("wiretask.cli")
    log.info("scheduler: moving due messages on %s every %g s (a mover: while it runs, "
             "delay_mode=auto publishers hold delayed messages broker-side)",
             app.transport.url, args.interval)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("scheduler: %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # The app's transport options too: global_keyprefix must match the publishers'.
        run_scheduler(url, interval=args.interval, stop_event=stop,
                      **app.conf.broker_transport_options)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _cmd_beat(args: argparse.Namespace) -> int:
    from wiretask.beat.service import Service  # noqa: PLC0415 - only this command needs it
    from wiretask.beat.settings import check_scheduler  # noqa: PLC0415

    if args.detach:
        raise CommandError("--detach is not supported: run wiretask beat in the foreground "
                           "under a process supervisor (systemd, supervisord, a container)")
    if args.scheduler is not None:
        try:
            check_scheduler(args.scheduler, setting="-S/--scheduler")
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
    app = _app_from_args(args)
    logging.basicConfig(
        level=args.loglevel, format="[%(asctime)s %(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    service = Service(
        app, schedule_filename=args.schedule, max_interval=args.max_interval,
        lock_name=args.lock_name, lock_ttl=args.lock_ttl,
    )
    log = logging.getLogger("wiretask.cli")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("beat: %s, stopping", signal.Signals(signum).name)
        service.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        service.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        app.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from wiretask.demo import run_demo  # noqa: PLC0415

    return run_demo(color=None if not args.no_color else False)


# -- the parser -------------------------------------------------------------------------


def _app_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    group = parser.add_argument_group("app")
    group.add_argument(
        "-A", "--app", metavar="MODULE:APP", default=default,
        help="the App to use, e.g. proj.tasks:app (default: a plain App)",
    )
    group.add_argument(
        "--broker", metavar="URL", default=default,
        help="broker URL (default: the app's, $WIRETASK_BROKER_URL, or embedded SQLite)",
    )
    group.add_argument(
        "--backend", metavar="URL", default=default,
        help="result backend URL (default: the app's, or the broker's)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``wiretask`` argument parser with its subcommands."""
    parser = _Parser(
        prog="wiretask",
        description="Celery task protocol 2 on a typed core: run a worker, send, "
        "inspect and follow tasks.",
    )
    parser.add_argument("--version", action="version", version=f"wiretask {wiretask.__version__}")
    _app_options(parser, default=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, command=name, parser=sub)
        if name != "demo":
            # SUPPRESS: an option given before the command is not reset by this one.
            _app_options(sub, default=argparse.SUPPRESS)
        return sub

    worker = command("worker", _cmd_worker, "run a worker until SIGTERM/SIGINT (Celery's "
                     "celery worker flags)")
    _worker_options(worker)

    call = command("call", _cmd_call, "send a task by name and print its id")
    call.add_argument("task", metavar="TASK", help="the task name, e.g. proj.tasks.add")
    call.add_argument("args", metavar="ARGS", nargs="*",
                      help="positional arguments: JSON values, else strings")
    call.add_argument("--kwargs", type=_json_object, metavar="JSON",
                      help="keyword arguments as a JSON object")
    call.add_argument("--countdown", type=_seconds, metavar="S",
                      help="run no earlier than S seconds from now")
    call.add_argument("--eta", metavar="TIME",
                      help="run no earlier than this ISO 8601 time (naive means UTC)")
    call.add_argument("--expires", type=_expires, metavar="S|TIME",
                      help="revoke if not started within S seconds, or by this ISO time")
    call.add_argument("--queue", metavar="Q", help="queue to send to (default: celery)")
    call.add_argument("--serializer", metavar="NAME", help="json (default), msgpack, ...")
    call.add_argument("--compression", metavar="NAME", help="zstd, gzip, zlib, bzip2, ...")
    call.add_argument("--priority", type=_integer, metavar="P", help="message priority")

    queue = command("queue", _cmd_inspect, "look at a queue without consuming it")
    queue_commands = queue.add_subparsers(title="queue commands", metavar="ACTION",
                                          required=True)
    show = queue_commands.add_parser(
        "show", help="list the messages waiting in a queue without consuming them",
        description="list the messages waiting in a queue without consuming them",
    )
    _app_options(show, default=argparse.SUPPRESS)
    show.add_argument("queue", metavar="QUEUE", nargs="?", default="celery",
                      help="the queue (default: celery)")
    show.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                      help="show at most N messages (default: 100)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def listing(kind: str) -> str:
        return "\n".join(f"  {name:<26}{spec[3]}" for name, spec in _REMOTE.items()
                         if spec[0] == kind)

    for kind, run, what, examples in (
        ("inspect", _cmd_remote_inspect, "ask the workers (Celery's and wiretask's) for "
         "their state: celery inspect", "ping, active, stats, ..."),
        ("control", _cmd_control, "send the workers (Celery's and wiretask's) a command: "
         "celery control", "revoke, terminate, ..."),
    ):
        remote = command(kind, run, what)
        remote.formatter_class = argparse.RawDescriptionHelpFormatter
        remote.epilog = f"commands:\n{listing(kind)}"
        remote.add_argument("remote_command", metavar="COMMAND", help=examples)
        remote.add_argument("arguments", metavar="ARG", nargs="*", default=[],
                            help="the command's arguments")
        _remote_options(remote)

    status = command("status", _cmd_status, "list the workers that answer a ping: "
                     "celery status")
    _remote_options(status)

    stats = command(
        "stats", _cmd_stats,
        "exact numbers of queues: ready, scheduled, in flight, dead, oldest ready age",
    )
    stats.add_argument("queues", metavar="QUEUE", nargs="*", default=["celery"],
                       help="queues to read (default: celery)")
    stats.add_argument("--json", action="store_true",
                       help="print JSON (one line per reading with --watch)")
    stats.add_argument("--watch", type=_positive_seconds, nargs="?", const=2.0,
                       metavar="S", help="read again every S seconds (default 2) until "
                       "Ctrl-C, with rates where the broker counts")
    stats.add_argument("--count", type=_positive_int, metavar="N",
                       help="with --watch: stop after N readings")
    stats.add_argument("--fail-above", type=_non_negative_int, metavar="N",
                       help="exit 3 when a queue has more than N ready messages")
    stats.add_argument("--max-age", type=_non_negative_seconds, metavar="S",
                       help="exit 3 when a queue's oldest ready message has waited more "
                       "than S seconds (or its age cannot be told)")

    purge = command(
        "purge", _cmd_purge,
        "remove every waiting message (ready and scheduled) of queues; asks first",
    )
    purge.add_argument("queues", metavar="QUEUE", nargs="+", help="the queues to empty")
    purge.add_argument("-f", "--force", action="store_true",
                       help="do not ask for confirmation")

    munin_plugin = command(
        "munin", _cmd_munin,
        "a Munin plugin (or link the wiretask script as /etc/munin/plugins/wiretask_<queue>)",
    )
    munin_plugin.add_argument("mode", nargs="?", default="fetch",
                              choices=("config", "fetch", "autoconf"),
                              help="what Munin asks for (default: fetch)")
    munin_plugin.add_argument("--queues", type=_queues, metavar="Q1,Q2",
                              help="queues to graph (default: from the plugin's link name "
                              "wiretask_<queue>, else env.queues, else celery)")
    munin_plugin.add_argument("--plugin-name", default=None, help=argparse.SUPPRESS)

    exporter = command(
        "exporter", _cmd_exporter,
        "serve queue metrics for Prometheus at /metrics, until SIGTERM/SIGINT",
    )
    exporter.add_argument("-Q", "--queues", type=_queues, default=["celery"],
                          metavar="Q1,Q2", help="queues to export (default: celery)")
    exporter.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                          help="address to listen on (default: 127.0.0.1)")
    exporter.add_argument("--port", type=_non_negative_int, default=9808, metavar="PORT",
                          help="port to listen on (default: 9808; 0 takes a free one)")
    exporter.add_argument("--events", action="store_true",
                          help="also listen to Celery's events: worker counts, task "
                          "outcomes and runtimes (workers need -E for task events)")
    exporter.add_argument("-l", "--loglevel", type=_loglevel, default=logging.WARNING,
                          metavar="LEVEL", help="DEBUG, INFO, WARNING, ... (default: WARNING)")

    events = command(
        "events", _cmd_events,
        "print Celery's events (task and worker events from wiretask and Celery workers and "
        "clients) as they arrive, like 'celery events --dump', until SIGTERM/SIGINT",
    )
    events.add_argument("--dump", action="store_true",
                        help="accepted for Celery's command line: printing is what it does")
    events.add_argument("--json", action="store_true", help="one JSON object per event")
    events.add_argument("--limit", type=_non_negative_int, default=None, metavar="N",
                        help="stop after N events")
    events.add_argument("--timeout", type=_positive_seconds, default=None, metavar="S",
                        help="stop after S seconds without an event")

    result = command("result", _cmd_result, "show a task's state and result")
    result.add_argument("id", metavar="ID", help="the task id")
    result.add_argument("--wait", type=_non_negative_seconds, metavar="S",
                        help="wait up to S seconds for the task to finish")
    result.add_argument("--json", action="store_true", help="print the stored meta as JSON")

    scheduler = command(
        "scheduler", _cmd_scheduler,
        "move due delayed messages into their queues on a Redis broker, until SIGTERM/SIGINT "
        "(its heartbeat lets delay_mode=auto publishers hold delayed messages broker-side)",
    )
    scheduler.add_argument("--interval", type=_positive_seconds, default=1.0, metavar="S",
                           help="seconds between scans (default: 1)")
    scheduler.add_argument("-l", "--loglevel", type=_loglevel, default=logging.INFO,
                           metavar="LEVEL", help="DEBUG, INFO, WARNING, ... (default: INFO)")

    beat = command(
        "beat", _cmd_beat,
        "send the app's periodic tasks (beat_schedule) when due, until SIGTERM/SIGINT; "
        "safe to run twice (one beat sends, the others wait on its lease)",
    )
    beat.add_argument("-s", "--schedule", metavar="PATH", default=None,
                      help="the schedule file (default: beat_schedule_filename, "
                      "celerybeat-schedule)")
    beat.add_argument("-S", "--scheduler", metavar="CLASS", default=None,
                      help="only celery.beat:PersistentScheduler, the one wiretask has")
    beat.add_argument("--max-interval", type=_positive_seconds, default=None, metavar="S",
                      help="longest sleep between looks at the schedule (default: "
                      "beat_max_loop_interval, else 300)")
    beat.add_argument("--lock-ttl", type=_positive_seconds, default=10.0, metavar="S",
                      help="seconds the lease lasts unless renewed: a standby takes over "
                      "within about 1.25 times this after the sending beat dies (default: 10)")
    beat.add_argument("--lock-name", metavar="NAME", default=None,
                      help="the lease's name: beats with the same name share one schedule "
                      "(default: the app's name)")
    beat.add_argument("--detach", action="store_true", help=argparse.SUPPRESS)
    beat.add_argument("-l", "--loglevel", type=_loglevel, default=logging.WARNING,
                      metavar="LEVEL", help="DEBUG, INFO, WARNING, ... (default: WARNING, "
                      "as Celery's beat)")

    demo = command("demo", _cmd_demo, "a guided tour of the calling API (a few seconds)")
    demo.add_argument("--no-color", action="store_true", help="plain output")
    return parser


def main(argv: Sequence[str] | None = None, *, app: App | None = None) -> int:
    """Run the ``wiretask`` command; return its exit code. ``app`` is the app to use
    when no ``-A`` is given (``App.start()``, Celery's ``app.start()``). Run from a link
    named ``wiretask_<queue>`` (a Munin plugin), it is ``wiretask munin`` for that
    queue."""
    parser = build_parser()
    if argv is None:
        program = os.path.basename(sys.argv[0])
        argv = sys.argv[1:]
        if program.startswith(munin.PLUGIN_PREFIX):
            argv = ["munin", "--plugin-name", program, *argv]
    args, extras = parser.parse_known_args(argv)
    if extras:
        command_parser = getattr(args, "parser", parser)
        assert isinstance(command_parser, _Parser)
        command_parser.refuse_unknown(extras)
    args.default_app = app
    handler: Callable[[argparse.Namespace], int] = args.handler
    prog = f"wiretask {args.command}"
    try:
        return handler(args)
    except CommandError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return exc.code
    except (ImproperlyConfigured, ValidationError) as exc:
        # A bad setting or value the user gave (a broker URL, a pool): a usage error.
        sys.stderr.write(f"{prog}: error: {type(exc).__name__}: {exc}\n")
        return 2
    except WiretaskError as exc:
        sys.stderr.write(f"{prog}: error: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``wiretask demo | head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
