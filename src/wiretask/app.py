"""The calling API users touch: ``App``, ``Task``, signatures and results.

This is Celery's calling API (``celery/app/task.py``, ``celery/result.py``) on wiretask's core:

* ``task(*a, **kw)`` runs the function here, no message;
* ``task.delay(*a, **kw)`` sends with default options (every keyword is a task kwarg);
* ``task.apply_async(args, kwargs, **options)`` and ``app.send_task(name, ...)`` send with
  options; ``task.apply_many`` / ``app.send_many`` send many in one round trip;
* ``task.apply(...)`` (and every call under ``task_always_eager``) runs the task here
  through the message path and returns an ``EagerResult``;
* ``task.s(...)`` / ``task.si(...)`` build signatures (``wiretask.canvas``);
* ``AsyncResult.get(on_message=...)`` reads and streams states from the result backend.

An ``App`` holds its settings (``app.conf``, checked: ``wiretask.config``), its tasks,
a router (``wiretask.routing``) and, created on first use, a broker connection and a
result backend. Tasks are registered when decorated; the app is *finalized* on the first
use of ``app.tasks`` (or ``app.finalize()``): then the ``imports``/``include`` modules and
the ``autodiscover_tasks`` packages are imported, ``shared_task`` functions are
registered and ``task_annotations`` applied, as Celery does when its worker starts.

Everything that can be validated is validated before any I/O (``wiretask.calling``).
Publishing goes through the retry driver (``wiretask.retry``) with the call's policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import os
import socket
import sys
import threading
import time
import traceback
import types
import uuid
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    NamedTuple,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)
from zoneinfo import ZoneInfo

import attrs

from wiretask import calling
from wiretask.beat.periodic import PeriodicTasks
from wiretask.canvas import (
    GroupResult,
    ResultSet,
    TaskChain,
    TaskSignature,
    chunks,
    result_from_tuple,
    xmap,
    xstarmap,
)
from wiretask.canvas import signature as canvas_signature
from wiretask.codecs import Registry, default_registry
from wiretask.config import Configuration, Settings, broker_options, read_object
from wiretask.errors import (
    ArgumentsError,
    ConnectionLost,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    Retry,
    TimeoutError,
    TransportError,
    ValidationError,
    WouldBlock,
)
from wiretask.protocol import states
from wiretask.protocol.celery import decode, encode
from wiretask.protocol.envelope import TaskMessage
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.protocol.signature import Signature
from wiretask.protocol.timing import parse_iso
from wiretask.results import ReplyRouted, ResultBackend, ViaBroker, backend_from_url
from wiretask.results.aio import AsyncReplyRouted, AsyncResultBackend, AsyncSubscription
from wiretask.results.base import ChordCounter, resolve_expires
from wiretask.results.exceptions import exception_from_meta
from wiretask.retry import RetryPolicy, acall_with_retry, call_with_retry
from wiretask.routing import QueueBinding, Router
from wiretask.tasks import (
    CALL_DEFAULTS,
    HOOKS,
    TASK_OPTIONS,
    ExceptionInfo,
    annotations_for,
    autoretry,
    check_task_option,
    parse_rate,
)
from wiretask.transports.aio import AsyncQueueBinding, AsyncTransport
from wiretask.transports.base import Capabilities, Transport
from wiretask.transports.url import mask_url, transport_class

if TYPE_CHECKING:
    from wiretask.control import Control
    from wiretask.events.client import SentEvents

__all__ = [
    "App",
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "Request",
    "ResultSet",
    "Settings",
    "Task",
    "TaskChain",
    "TaskSignature",
    "allow_join_result",
    "current_app",
    "shared_task",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

logger = logging.getLogger("wiretask.app")

#: The default settings (every honoured setting), for reference; ``app.conf`` starts
#: with them.
DEFAULT_SETTINGS: Mapping[str, Any] = types.MappingProxyType(dict(Configuration()))

#: Celery constructor arguments wiretask does not take, and why.
_UNSUPPORTED_ARGUMENTS: Mapping[str, str] = {
    "loader": "wiretask has no loaders: use config_from_object and include",
    "amqp": "the AMQP helper cannot be replaced",
    "events": "wiretask does not send events yet",
    "log": "configure logging yourself",
    "control": "the remote-control client cannot be replaced (app.control is "
    "wiretask.control.Control)",
    "tasks": "register tasks with @app.task or app.register_task",
    "fixups": "wiretask has no fix-ups (Django: config_from_object('django.conf:settings', "
    "namespace='CELERY') and autodiscover_tasks() work without one)",
}


def _data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "wiretask"


def default_broker_url() -> str:
    """The broker every app and every ``wiretask`` command uses when none is configured:
    ``$WIRETASK_BROKER_URL``, else one embedded SQLite file,
    ``$XDG_DATA_HOME/wiretask/wiretask.db`` (``~/.local/share/wiretask/wiretask.db``),
    whatever the app is called, so that a client and a worker started by any command
    meet there (as Celery's clients and workers meet at its one default broker)."""
    url = os.environ.get("WIRETASK_BROKER_URL")
    if url:
        return url
    return f"sqlite:///{_data_dir() / 'wiretask.db'}"


# -- the current app and shared tasks ---------------------------------------------------------

_current: App | None = None
_default: App | None = None
_apps: weakref.WeakSet[App] = weakref.WeakSet()
#: ``(function, options)`` of every ``shared_task``: each app registers them when it is
#: finalized (and an already finalized app at once).
_shared: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_state_lock = threading.RLock()


def current_app() -> App:
    """The app made last (unless made with ``set_as_current=False``), else a default app
    made on first use: Celery's ``current_app``."""
    global _default
    if _current is not None:
        return _current
    with _state_lock:
        if _default is None:
            _default = App("default", set_as_current=False)
        return _default


class SharedTask:
    """What ``@shared_task`` returns: the task of that function in the *current* app
    (registered there on first use), so a reusable module's tasks work in whatever app
    imports it, as Celery's proxy does."""

    def __init__(self, function: Callable[..., Any], options: Mapping[str, Any]) -> None:
        self.function = function
        self.options = dict(options)
        functools.update_wrapper(self, function)

    def resolve(self, app: App | None = None) -> Task[Any, Any]:
        """The task in ``app`` (default: the current app)."""
        return (app or current_app())._shared_task(self.function, self.options)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<shared task {self.function.__module__}.{self.function.__qualname__}>"


@overload
def shared_task(fn: Callable[..., Any], /) -> SharedTask: ...


@overload
def shared_task(**options: Any) -> Callable[[Callable[..., Any]], SharedTask]: ...


def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """A task for reusable modules (a Django app's ``tasks.py``): not bound to one app.

    Every app registers it when finalized (apps already finalized register it now), and
    the returned proxy stands for the task in the current app: ``add.delay(2, 2)`` uses
    the app made last. Options are ``@app.task``'s, checked now.
    """
    for key, value in options.items():
        options[key] = check_task_option(key, value)

    def create(function: Callable[..., Any]) -> SharedTask:
        with _state_lock:
            _shared.append((function, options))
            apps = [app for app in _apps if app.finalized]
        for app in apps:
            app._shared_task(function, options)
        return SharedTask(function, options)

    if fn is not None:
        if not callable(fn):
            raise TypeError("argument 1 to @shared_task() must be a callable")
        return create(fn)
    return create


# -- the request ------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Request:
    """The context of the task being run: ``self.request`` inside a bound task.

    It has every field of Celery's ``Context``, with Celery's defaults. A direct call
    (``task(...)``) sees ``id=None`` and ``called_directly=True``, as in Celery; the
    worker fills everything from the message and its delivery, and the eager path
    (``Task.apply``) too, with ``is_eager=True``.

    As in Celery's worker: ``headers`` holds the message's custom headers (None when
    there are none), ``timelimit`` is ``[hard, soft]``, ``callbacks``/``errbacks``/
    ``chain`` are lists of signature dicts and ``chord`` one (None when absent),
    ``properties`` are the message's properties and ``delivery_info`` has
    ``exchange``, ``routing_key``, ``priority`` and ``redelivered`` (and wiretask's
    ``queue``). One difference, on purpose: ``eta`` and ``expires`` are aware
    ``datetime`` values where Celery's worker leaves the header's ISO 8601 string.
    ``children`` collects the results of the tasks sent while this one runs; the
    worker stores them with its state (``AsyncResult.children``).
    """

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.Factory(dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    called_directly: bool = True
    is_eager: bool = False
    hostname: str | None = None
    delivery_info: Mapping[str, Any] | None = None
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    timelimit: list[float | None] | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    origin: str | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    shadow: str | None = None
    stamps: dict[str, Any] | None = None
    stamped_headers: list[str] | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    properties: dict[str, Any] | None = None
    ignore_result: bool = False
    replaced_task_nesting: int = 0
    utc: bool | None = None
    logfile: str | None = None
    loglevel: int | None = None
    #: The results of the tasks sent while this one ran (Celery's ``request.children``).
    children: list[AsyncResult] = attrs.Factory(list)
    #: The message being run (worker and eager path): ``Task.retry`` derives the re-sent
    #: one from it.
    message: TaskMessage | None = attrs.field(default=None, repr=False)

    @property
    def taskset(self) -> str | None:
        """Celery's old name of ``group``."""
        return self.group

    def get(self, key: str, default: Any = None) -> Any:
        """A field by name, or ``default`` (Celery's ``Context.get``)."""
        return getattr(self, key, default)

    @classmethod
    def from_message(
        cls, message: TaskMessage, *, hostname: str | None, is_eager: bool,
        delivery_info: Mapping[str, Any],
    ) -> Request:
        """The request of a received (or eagerly run) message, as Celery's worker
        builds its ``Context`` from the headers, the body's embed and the delivery."""
        hard, soft = message.timelimit
        properties: dict[str, Any] = {
            "correlation_id": message.correlation_id or message.id,
            "reply_to": message.reply_to,
            "delivery_mode": message.delivery_mode,
            "priority": message.priority,
            **message.extra_properties,
        }
        return cls(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=dict(message.kwargs),
            retries=message.retries,
            eta=message.eta,
            expires=message.expires,
            root_id=message.root_id,
            parent_id=message.parent_id,
            group=message.group,
            group_index=message.group_index,
            called_directly=False,
            is_eager=is_eager,
            hostname=hostname,
            delivery_info=dict(delivery_info),
            headers=dict(message.extra_headers) or None,
            reply_to=message.reply_to,
            correlation_id=message.correlation_id or message.id,
            timelimit=[hard, soft],
            time_limit=hard,
            soft_time_limit=soft,
            origin=message.origin,
            callbacks=_sig_dicts(message.callbacks),
            errbacks=_sig_dicts(message.errbacks),
            chain=_sig_dicts(message.chain),
            chord=message.chord.to_dict() if message.chord is not None else None,
            shadow=message.shadow,
            stamps=dict(message.stamps) or None,
            stamped_headers=(list(message.stamped_headers)
                             if message.stamped_headers is not None else None),
            argsrepr=message.argsrepr,
            kwargsrepr=message.kwargsrepr,
            properties=properties,
            ignore_result=message.ignore_result,
            replaced_task_nesting=message.replaced_task_nesting,
            utc=True,
            message=message,
        )


class _Running:
    """``Task.running``: ``request`` is the current one inside the block. A class, not
    a generator-based context manager: the worker enters one per task (a third of the
    cost, ~0.25 us instead of ~0.8 us)."""

    __slots__ = ("_request", "_token")

    def __init__(self, request: Request) -> None:
        self._request = request

    def __enter__(self) -> Request:
        self._token = _current_request.set(self._request)
        return self._request

    def __exit__(self, *exc: object) -> None:
        _current_request.reset(self._token)


def _sig_dicts(sigs: Sequence[Signature] | None) -> list[dict[str, Any]] | None:
    return None if sigs is None else [sig.to_dict() for sig in sigs]


_current_request: ContextVar[Request | None] = ContextVar("wiretask_request", default=None)
#: The task whose custom ``__call__`` the worker or the eager path is running (see
#: ``Task._trace_call``).
_inside_call: ContextVar[Task[Any, Any] | None] = ContextVar("wiretask_call", default=None)
#: ``allow_join_result()`` is active.
_join_allowed: ContextVar[bool] = ContextVar("wiretask_join_allowed", default=False)
#: Set while ``App.asend_canvas`` runs a canvas's sync send: what it would publish or
#: tell the result backend is recorded, to be done on the event loop in that order.
_deferred: ContextVar[_Deferred | None] = ContextVar("wiretask_deferred", default=None)


@contextlib.contextmanager
def allow_join_result() -> Iterator[None]:
    """Allow ``AsyncResult.get()`` inside a running task (Celery's context manager of the
    same name). Waiting for another task from inside one can deadlock a worker whose
    slots are all busy waiting; prefer a chain or a callback."""
    token = _join_allowed.set(True)
    try:
        yield
    finally:
        _join_allowed.reset(token)


def _assert_will_not_block() -> None:
    current = _current_request.get()
    if current is not None and not current.called_directly and not _join_allowed.get():
        raise WouldBlock(
            "never call result.get() within a task: it can deadlock the worker (see "
            "Celery's 'avoid launching synchronous subtasks'); use a chain or a callback, "
            "or pass disable_sync_subtasks=False if you must"
        )


# -- the app ----------------------------------------------------------------------------------


class App(PeriodicTasks):
    """A wiretask application: settings, registered tasks, a broker and a result backend.

    Args:
        main: the app's name; task names of functions defined in ``__main__`` use it.
        broker: broker URL (``memory://``, ``sqlite:///path.db``, ``redis://...``).
            Default: :func:`default_broker_url`.
        backend: result backend URL. Default: ``$WIRETASK_RESULT_BACKEND``, else the
            broker's URL (every bundled broker also stores results).
        include: modules imported when the app is finalized (the ``include`` setting).
        transport: instead of ``broker``, a factory of transports: a callable taking no
            arguments that returns a *new*, unconnected ``Transport`` each time (the app
            keeps one for publishing and every worker asks for its own), all talking to
            the same broker; e.g. ``lambda: MyTransport(...)`` or a ``functools.partial``.
            Not a transport instance (refused: it cannot be shared by the app and its
            workers), and not together with ``broker`` or the ``broker_url`` setting
            (refused, then or whenever a transport is made). The result backend is
            still ``backend`` (its default is then the embedded SQLite store).
        registry: the codec registry (default: ``default_registry`` with ``accept_content``).
        clock: a function returning an aware "now" (tests inject one).
        set_as_current: make this the current app (``shared_task``, ``AsyncResult(id)``).
        strict_typing: the default ``typing`` of tasks (check arguments before sending).
        task_cls: the default ``base`` of tasks (a ``Task`` subclass or its dotted path).
        namespace: the default ``namespace`` of ``config_from_object``.
        autofinalize: False: ``app.tasks`` raises until ``app.finalize()`` was called.
        config_source: an object or module path read with ``config_from_object``.
        **settings: Celery's settings by name (``wiretask.config``), checked at once.

    Raises:
        ImproperlyConfigured: an unknown, refused or malformed setting, or a Celery
            constructor argument wiretask does not take.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | str | None = None,
        registry: Registry | None = None,
        clock: Callable[[], datetime] | None = None,
        transport: Callable[[], Transport] | None = None,
        set_as_current: bool = True,
        strict_typing: bool = True,
        task_cls: type[Task[Any, Any]] | str | None = None,
        namespace: str | None = None,
        autofinalize: bool = True,
        config_source: object = None,
        **settings: Any,
    ) -> None:
        if transport is not None and (isinstance(transport, Transport) or not callable(transport)):
            raise ImproperlyConfigured(
                f"transport= takes a factory (a callable returning a new Transport), got "
                f"{transport!r}: the app and each worker need a transport of their own",
                setting="transport",
            )
        for name in sorted(set(settings) & set(_UNSUPPORTED_ARGUMENTS)):
            raise ImproperlyConfigured(
                f"App({name}=...) is not supported by wiretask: {_UNSUPPORTED_ARGUMENTS[name]}"
            )
        changes = settings.pop("changes", None)
        self.main = main
        self.conf = Configuration()
        self.conf.update(changes or {})
        self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include is not None:
            self.conf.include = include
        #: Settings given to the constructor: they beat a configuration object's, as
        #: Celery's constructor arguments beat its ``config_from_object`` source.
        self._preconf = frozenset(
            {*(changes or {}), *settings}
            | {name for name, value in (("broker_url", broker), ("result_backend", backend),
                                        ("include", include)) if value is not None}
        )
        self.strict_typing = strict_typing
        self.namespace = namespace
        self.autofinalize = autofinalize
        self._task_cls = task_cls
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._finalized = False
        self._finalizing = False
        self._autodiscover: list[tuple[Any, str | None]] = []
        self._registry = registry
        self._clock = clock
        self._lock = threading.RLock()
        self._transport: Transport | None = None
        self._transport_factory = transport
        self._check_transport_source()
        self._backend: ResultBackend | None = None
        self._oid: tuple[int, str] | None = None
        self._declared: set[str] = set()
        #: ``task-sent`` events (``task_send_sent_event``), made on first use.
        self._sent_events: SentEvents | None = None
        self._call_builder: calling.CallBuilder | None = None
        self._contexts: dict[tuple[int, int], calling.CallContext] = {}
        self._router: tuple[int, Router] | None = None
        #: The asyncio API's transport and backend, one of each per event loop.
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        with _state_lock:
            _apps.add(self)
        if set_as_current:
            self.set_current()
        if config_source is not None:
            self.config_from_object(config_source)

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'} broker={self.broker_url}>"

    def start(self, argv: Sequence[str] | None = None) -> int:
        """Run the ``wiretask`` command with this app (Celery's ``app.start()``):
        ``python myapp.py worker -l INFO`` runs a worker for the app of ``myapp.py``.
        ``argv`` defaults to ``sys.argv[1:]``; returns the exit code."""
        from wiretask.cli import main  # noqa: PLC0415 - the command sits above the app

        return main(sys.argv[1:] if argv is None else argv, app=self)

    def worker_main(self, argv: Sequence[str] | None = None) -> int:
        """``start`` for the ``worker`` command only (Celery's ``worker_main``).

        Raises:
            ValueError: ``argv`` has no ``worker`` command.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        if "worker" not in argv:
            raise ValueError("the worker sub-command must be in argv; use app.start() for "
                             "other commands")
        return self.start(argv)

    def set_current(self) -> None:
        """Make this the current app (``current_app()``)."""
        global _current
        _current = self

    # -- configuration ----------------------------------------------------------------

    def config_from_object(
        self, obj: object, silent: bool = False, force: bool = False,
        namespace: str | None = None,
    ) -> bool:
        """Read settings from a module, a module path (``"proj.celeryconfig"``,
        ``"django.conf:settings"``), a class or an instance, as Celery does. With
        ``namespace="CELERY"`` (Django) only ``CELERY_``-prefixed names are read, the
        prefix removed and the rest lower-cased. Every setting read is checked; those
        given to ``App(...)`` itself keep the constructor's value, as in Celery. ``force``
        is accepted for Celery's sake: wiretask reads the object at once.

        Returns:
            True, or False when ``silent`` and the module does not import.

        Raises:
            ImportError: the module does not import (unless ``silent``).
            ImproperlyConfigured: a setting it holds is unknown or refused, naming it.
        """
        del force
        if isinstance(obj, str):
            try:
                obj = _import_object(obj)
            except ImportError:
                if silent:
                    return False
                raise
        namespace = namespace or self.namespace
        self.namespace = namespace
        found = read_object(obj, namespace)
        checked = Configuration(found)  # refuses what it must before anything changes
        self.conf.update({k: checked[k] for k in found if k not in self._preconf})
        return True

    def config_from_envvar(self, variable_name: str, silent: bool = False,
                           force: bool = False) -> bool:
        """``config_from_object`` of the module named by an environment variable.

        Raises:
            ImproperlyConfigured: the variable is not set (unless ``silent``).
        """
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return False
            raise ImproperlyConfigured(
                f"the environment variable {variable_name!r} is not set: it must name a "
                "configuration module"
            )
        return self.config_from_object(module_name, silent=silent, force=force)

    @property
    def broker_url(self) -> str:
        url = self.conf.get("broker_url")
        return str(url) if url else default_broker_url()

    @property
    def backend_url(self) -> str:
        url = self.conf.get("result_backend") or os.environ.get("WIRETASK_RESULT_BACKEND")
        return str(url) if url else self.broker_url

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            with self._lock:
                if self._registry is None:
                    self._registry = default_registry(
                        accept=self.conf.accept_content,
                        max_decompressed_size=self.conf.max_decompressed_size,
                    )
        return self._registry

    @property
    def timezone(self) -> tzinfo:
        name = self.conf.get("timezone") or "UTC"
        if name == "UTC":
            return UTC
        try:
            return ZoneInfo(str(name))
        except (KeyError, ValueError) as exc:
            raise ImproperlyConfigured(f"unknown timezone {name!r}", setting="timezone") from exc

    def now(self) -> datetime:
        """The current time, aware, in the app's time zone (UTC unless ``timezone`` is set)."""
        if self._clock is not None:
            return self._clock()
        return datetime.now(self.timezone)

    @property
    def router(self) -> Router:
        """Routes calls (``task_routes``, ``task_queues``, the default queue); rebuilt
        when the settings change."""
        version = self.conf._version
        cached = self._router
        if cached is None or cached[0] != version:
            cached = self._router = (version, Router(self.conf))
        return cached[1]

    @property
    def transport(self) -> Transport:
        """The app's broker connection (created on first use, connected lazily)."""
        if self._transport is None:
            self.configure()  # on_after_configure, before the lock (a receiver may send)
            with self._lock:
                if self._transport is None:
                    self._transport = self.new_transport()
        return self._transport

    def new_transport(self) -> Transport:
        """A fresh transport for the broker URL, with ``broker_transport_options``, or
        from the ``transport`` factory (the worker uses its own).

        Raises:
            ImproperlyConfigured: a bad broker URL or transport option, or a factory that
                did not return a ``Transport``.
        """
        self.configure()
        if self._transport_factory is None:
            url = self.broker_url
            transport_type = transport_class(url)
            return transport_type.from_url(url, **broker_options(transport_type, self.conf))
        self._check_transport_source()
        made = self._transport_factory()
        if not isinstance(made, Transport):
            raise ImproperlyConfigured(
                f"the transport factory returned {made!r}, not a Transport",
                setting="transport",
            )
        return made

    @property
    def oid(self) -> str:
        """Celery's ``app.oid``: this app's id in this process, a UUID sent as every
        message's ``reply_to`` (the reply queue of ``rpc://`` results)."""
        cached = self._oid
        if cached is None or cached[0] != _forks:
            cached = self._oid = (_forks, _oid(self))
        return cached[1]

    def _via_broker(self) -> ViaBroker:
        """The broker and reply queue, for a result backend that sends states through
        the broker (``rpc://``)."""
        url = self.broker_url
        return ViaBroker(
            url=url, options=broker_options(transport_class(url), self.conf),
            oid=lambda: self.oid, persistent=bool(self.conf.get("result_persistent")),
        )

    @property
    def broker_display(self) -> str:
        """Where the app's broker is, for people: its URL with the password masked (the
        transport's own URL when transports come from a ``transport=`` factory)."""
        if self._transport_factory is not None:
            return self.transport.url
        return mask_url(self.broker_url)

    def _check_transport_source(self) -> None:
        if self._transport_factory is not None and self.conf.get("broker_url"):
            raise ImproperlyConfigured(
                f"broker_url is set ({mask_url(str(self.conf.broker_url))}) but this app "
                "takes its transports from its transport= factory: pass one or the other",
                setting="broker_url",
            )

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._new_backend()
        return self._backend

    def _new_backend(self) -> ResultBackend:
        """A result backend for ``backend_url`` with the result settings."""
        registry = self.registry
        accept = self.conf.get("result_accept_content")
        if accept is not None:
            registry = registry.copy(accept=accept)
        backend = backend_from_url(
            self.backend_url,
            serializer=self.conf.result_serializer,
            expires=self.conf.result_expires,
            registry=registry,
            compression=self.conf.get("result_compression"),
            transport_options=self.conf.get("result_backend_transport_options"),
            via=self._via_broker,
        )
        chord_expires = self.conf.get("result_chord_expires")
        if chord_expires is not None and isinstance(backend, ChordCounter):
            backend.chord_expires = resolve_expires(chord_expires)
        return backend

    def close(self) -> None:
        """Close the broker connection and the result backend (``task-sent`` events
        still queued are published first, for up to 2 s)."""
        with self._lock:
            sent_events, self._sent_events = self._sent_events, None
        if sent_events is not None:
            sent_events.close()
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            if self._backend is not None:
                self._backend.close()
                self._backend = None
            self._declared.clear()
            self._forget_closed_loops()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- tasks and finalizing -----------------------------------------------------------

    @property
    def finalized(self) -> bool:
        """Finalized, or being finalized (a module imported meanwhile may register)."""
        return self._finalized or self._finalizing

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks by name; the first use finalizes the app (other threads
        wait until that is done)."""
        if not self._finalized:
            self.finalize(auto=True)
        return self._tasks

    def finalize(self, auto: bool = False) -> None:
        """Import the ``imports`` and ``include`` modules and the packages given to
        ``autodiscover_tasks``, register the ``shared_task`` functions and apply
        ``task_annotations``. Done once; ``app.tasks`` does it on first use. A module
        imported meanwhile may use ``app.tasks`` (it sees the tasks registered so far).

        Raises:
            RuntimeError: ``auto`` and the app was made with ``autofinalize=False``.
            ImportError: a module does not import (the app stays unfinalized).
        """
        with self._lock:
            if self._finalized or self._finalizing:
                return
            if auto and not self.autofinalize:
                raise RuntimeError(
                    "the app is not finalized: call app.finalize() (autofinalize=False)"
                )
            self._finalizing = True
            try:
                # Celery's built-in tasks (celery.chord_unlock, celery.map, ...); a
                # task of the app's own with one of their names is kept.
                from wiretask.worker.builtins import register_builtins  # noqa: PLC0415

                self.import_default_modules()
                with _state_lock:
                    shared = list(_shared)
                for function, options in shared:
                    self._shared_task(function, options)
                register_builtins(self)
                for task in list(self._tasks.values()):
                    self._annotate(task)
            finally:
                self._finalizing = False
            self._finalized = True

    def import_default_modules(self) -> list[types.ModuleType]:
        """Import the ``imports`` and ``include`` modules and discover the task modules of
        the ``autodiscover_tasks`` packages (Celery's ``loader.import_default_modules``)."""
        modules = []
        pending, self._autodiscover = self._autodiscover, []
        for packages, related_name in pending:
            modules += self._discover(packages, related_name)
        for name in (*self.conf.imports, *self.conf.include):
            modules.append(importlib.import_module(name))
        return modules

    def autodiscover_tasks(
        self, packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str | None = "tasks", force: bool = False,
    ) -> None:
        """Import ``<package>.<related_name>`` for each package (a list, or a callable
        returning one, evaluated late), when the app is finalized (``force``: now), as
        Celery does. Without packages, Django's installed apps (``INSTALLED_APPS``) are
        searched. A package without that module is skipped; an error raised while
        importing one is not."""
        if force or self.finalized:
            self._discover(packages, related_name)
        else:
            self._autodiscover.append((packages, related_name))

    def _discover(self, packages: Any, related_name: str | None) -> list[types.ModuleType]:
        if callable(packages):
            packages = packages()
        if packages is None:
            packages = _django_apps()
        modules = []
        for package in packages:
            module = _find_related_module(package, related_name)
            if module is not None:
                modules.append(module)
        return modules

    def _register(self, task: Task[Any, Any]) -> Task[Any, Any]:
        self._tasks[task.name] = task
        if self._finalized:
            self._annotate(task)
        return task

    def _annotate(self, task: Task[Any, Any]) -> None:
        if task._annotated:
            return
        task._annotated = True
        for values in annotations_for(task, self.conf.get("task_annotations")):
            task._set_options(values)

    def _shared_task(
        self, function: Callable[..., Any], options: Mapping[str, Any]
    ) -> Task[Any, Any]:
        name = options.get("name") or self.task_name(function)
        with self._lock:
            found = self._tasks.get(name)
            if found is None:
                register: Callable[[Callable[..., Any]], Task[Any, Any]] = self.task(**options)
                found = register(function)
        return found

    @property
    def task_cls(self) -> type[Task[Any, Any]]:
        """The default base class of tasks (``App(task_cls=...)``, default ``Task``)."""
        cls = self._task_cls
        if cls is None:
            return Task
        if isinstance(cls, str):
            cls = self._task_cls = cast("type[Task[Any, Any]]", _import_object(cls))
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ImproperlyConfigured(f"task_cls must be a wiretask Task subclass, got {cls!r}")
        return cls

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, /, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., ...)``.

        Options are Celery's task options (``wiretask.tasks.TASK_OPTIONS``): ``name``,
        ``bind``, ``base``, ``typing``, ``max_retries``, ``default_retry_delay``,
        ``autoretry_for``, ``retry_kwargs``, ``retry_backoff``, ``rate_limit``, ...,
        and the per-call defaults ``serializer``, ``queue``, ``priority``, ``expires``,
        ``time_limit``, ... An unknown option raises with the nearest known name; one
        wiretask cannot honour raises with the reason.
        """
        base = options.pop("base", None) or self.task_cls
        if not (isinstance(base, type) and issubclass(base, Task)):
            raise ValidationError("base", f"must be a wiretask Task subclass, got {base!r}")
        for key, value in options.items():
            options[key] = check_task_option(key, value)

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(base(self, function, **options))

        if fn is not None:
            if not callable(fn):
                raise TypeError("argument 1 to @app.task() must be a callable")
            return register(fn)
        return register

    def register_task(self, task: Task[Any, Any] | type[Task[Any, Any]]) -> Task[Any, Any]:
        """Register a class-based task (a ``Task`` subclass defining ``run``, or an
        instance of one), as Celery's ``app.register_task``."""
        if isinstance(task, type):
            task = task(self)
        elif task.app is not self:
            task._bind(self, None, {})
        return self._register(task)

    def task_name(self, fn: Callable[..., Any]) -> str:
        """The name of a task made from ``fn``: ``gen_task_name(qualname, module)``."""
        return self.gen_task_name(fn.__qualname__, fn.__module__)

    def gen_task_name(self, name: str, module: str) -> str:
        """Celery's naming rule: ``module.name``, with ``main`` standing in for
        ``__main__``. An ``App`` subclass may override it, as with Celery."""
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{name}"

    def signature(
        self, name: str, args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
        *, immutable: bool = False, subtask_type: str | None = None, **extra: Any,
    ) -> TaskSignature:
        """A signature for a task by name (it need not be registered here). Keywords
        other than Celery's signature fields are options, as in Celery."""
        calling.check_options(extra)
        return TaskSignature(
            name, args, kwargs, {**(options or {}), **extra}, immutable=immutable,
            subtask_type=subtask_type, app=self,
        )

    # -- sending ----------------------------------------------------------------------

    def _context(self) -> calling.CallContext:
        current = _current_request.get()
        if current is not None and current.id is not None and not current.called_directly:
            base = self._thread_context()
            return calling.CallContext(
                origin=base.origin, reply_to=base.reply_to,
                parent_id=current.id, root_id=current.root_id or current.id,
            )
        return self._thread_context()

    def _thread_context(self) -> calling.CallContext:
        """The sender's part of a call made outside a task: fixed per process and thread."""
        key = (_forks, threading.get_ident())
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = calling.CallContext(
                origin=_origin(), reply_to=self.oid
            )
        return context

    @property
    def _builder(self) -> calling.CallBuilder:
        builder = self._call_builder
        # ``_registry`` read first: the ``registry`` property is a call per publish.
        registry = self._registry
        if registry is None:
            registry = self.registry
        if builder is None or builder.registry is not registry:
            builder = self._call_builder = calling.CallBuilder(self.registry, self.conf)
        return builder

    def build_call(
        self, name: str, args: object = None, kwargs: object = None, **options: Any
    ) -> calling.Call:
        """Validate a call and build its message without sending it."""
        return self._build_one(name, args, kwargs, options, None)

    def build_many(
        self, name: str, arguments: Iterable[tuple[object, object]], **options: Any
    ) -> list[calling.Call]:
        """Validate several calls of one task with the same options, one ``(args,
        kwargs)`` pair each, and build their messages without sending them. The options
        are resolved once, at one instant (the same ``eta``/``expires`` for all), and
        routed (``task_routes``) once, unless a router function may route each call
        differently.

        Raises:
            QueueNotFound: a queue missing from ``task_queues`` while
                ``task_create_missing_queues`` is off.
        """
        return self._build_many(name, arguments, options, None)

    def _build_many(
        self, name: str, arguments: Iterable[tuple[object, object]],
        options: Mapping[str, Any], capabilities: Capabilities | None,
    ) -> list[calling.Call]:
        """``build_many`` against ``capabilities`` (``None``: the sync transport's; the
        asyncio API passes its own transport's)."""
        task = self.tasks.get(name)
        router = self.router
        defaults = None if task is None else task.defaults
        if not router.trivial or _routes_itself(options, defaults):
            items = list(arguments)
            if router.routes and len(items) > 1:
                return [call for item in items
                        for call in self._build_many(name, [item], options, capabilities)]
            first_args, first_kwargs = items[0] if items else ((), {})
            routed = router.route(
                name, first_args, first_kwargs, {**(defaults or {}), **options}, task
            )
            if routed is not None:
                options = routed
            arguments = items
        capabilities = self._capabilities(capabilities)
        return self._builder.build_many(
            name, arguments, options, now=self.now(), context=self._context(),
            task_defaults=defaults, capabilities=capabilities,
            check_arguments=None if task is None else task.check_arguments,
        )

    def _build_one(
        self, name: str, args: object, kwargs: object, options: Mapping[str, Any],
        capabilities: Capabilities | None,
    ) -> calling.Call:
        """One call: ``_build_many`` of one ``(args, kwargs)``, through the builder's
        single-call step (``CallBuilder.build``): the path of ``apply_async``,
        ``delay`` and ``send_task``, sync and asyncio."""
        task = self.tasks.get(name)
        router = self.router
        defaults = None if task is None else task.defaults
        if not router.trivial or _routes_itself(options, defaults):
            routed = router.route(name, args, kwargs, {**(defaults or {}), **options}, task)
            if routed is not None:
                options = routed
        capabilities = self._capabilities(capabilities)
        return self._builder.build(
            name, args, kwargs, options, now=self.now(), context=self._context(),
            task_defaults=defaults, capabilities=capabilities,
            check_arguments=None if task is None else task.check_arguments,
        )

    def _capabilities(self, capabilities: Capabilities | None) -> Capabilities:
        """The capabilities a call is built against: ``capabilities``, or (``None``)
        those of the transport it will be sent on (under ``asend_canvas``, the loop's).

        The transport first: creating it imports the driver, and "now" must be read
        after that, or a short countdown is already due when it reaches the broker."""
        if capabilities is not None:
            return capabilities
        deferred = _deferred.get()
        if deferred is not None and deferred.app is self:
            return deferred.capabilities
        # ``_transport`` read first: the ``transport`` property is a call per publish.
        transport = self._transport
        return (transport if transport is not None else self.transport).capabilities

    def send_task(
        self, name: str, args: object = None, kwargs: object = None, **options: Any
    ) -> AsyncResult:
        """Send a task by name (the function need not exist here). Options as
        ``Task.apply_async``. Returns its ``AsyncResult``. As in Celery, this sends a
        message even under ``task_always_eager`` (and logs that it does).

        Raises:
            ValidationError: an option or argument is invalid (nothing was sent).
            EncodeError: an argument cannot be serialized (nothing was sent).
            PublishError: the broker could not be reached within the retry policy.
        """
        if self.conf.get("task_always_eager"):
            logger.warning("send_task(%r) sends a message: task_always_eager applies to "
                           "apply_async/delay only", name)
        return self._send((self._build_one(name, args, kwargs, options, None),))[0]

    def send_many(
        self,
        signatures: Iterable[Signature | TaskSignature],
        *,
        retry: bool | None = None,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
    ) -> list[AsyncResult]:
        """Send many task calls in one round trip where the broker allows it (Redis
        pipelines them). Each signature carries its own args and options; ``retry`` and
        ``retry_policy`` apply to the batch as a whole. All calls are validated and
        encoded before anything is sent."""
        extra: dict[str, Any] = {}
        if retry is not None:
            extra["retry"] = retry
        if retry_policy is not None:
            extra["retry_policy"] = retry_policy
        calls = [
            self.build_call(sig.task, sig.args, sig.kwargs, **{**sig.options, **extra})
            for sig in signatures
        ]
        return self._send(calls)

    def _send(self, calls: Sequence[calling.Call]) -> list[AsyncResult]:
        """Publish built calls (with the retry policy of the first) and return their
        results."""
        deferred = _deferred.get()
        if deferred is not None and deferred.app is self:
            if calls:
                deferred.steps.append(list(calls))
        else:
            self._publish(calls)
        return self._results(calls)

    def _results(self, calls: Sequence[calling.Call]) -> list[AsyncResult]:
        """The results of sent calls (sync and asyncio), added to the running task's
        children when sent from inside one."""
        results = [
            AsyncResult(c.message.id, app=self, ignore_result=c.message.ignore_result)
            for c in calls
        ]
        if _current_request.get() is not None:  # in a task (no call per publish outside)
            _add_to_parent(self, results)
        return results

    def _dispatch(self, calls: Sequence[calling.Call], capabilities: Capabilities) -> _Dispatch:
        """What publishing ``calls`` sends, for the sync and the asyncio API alike: the
        encoded messages, and the queues to declare or bind before them.

        This is the publish hot path (every ``apply_async``): one call, the common
        case, is sent as ``one`` (a frame, its route and ``not_before``), with no
        ``Outgoing`` list, and its queue sets are tuples of one."""
        registry = self._registry
        if registry is None:  # the property only the first time: a call per publish
            registry = self.registry
        # Broker-side delay only where the transport holds messages for the time the
        # caller gives (``native_delay_on_send``).
        native_delay = capabilities.native_delay and capabilities.native_delay_on_send
        # rpc:// results: the reply queue must exist before the worker answers (Celery's
        # on_task_call), and the backend must know which tasks are this app's.
        tracked = [(c.message.id, c.message.reply_to) for c in calls
                   if not c.message.ignore_result] if self._replies_routed() else []
        if len(calls) == 1:
            call = calls[0]
            route = call.route
            frame = encode(call.message, registry,
                           compress_threshold=call.compression_threshold)
            queue: tuple[str, ...] = (route.queue,)
            return _Dispatch(
                one=(frame, route, call.eta if native_delay else None), outgoing=[],
                queues=() if route.exchange else queue, bound=queue if route.exchange else (),
                tracked=tracked,
            )
        outgoing = [
            Outgoing(encode(c.message, registry, compress_threshold=c.compression_threshold),
                     c.route, c.eta if native_delay else None)
            for c in calls
        ]
        return _Dispatch(
            one=None,
            outgoing=outgoing,
            queues={c.route.queue for c in calls if not c.route.exchange},
            # A message sent through a named exchange needs its queue bound to it first,
            # as Celery declares the queue it publishes to (brokers with bindings).
            bound={c.route.queue for c in calls if c.route.exchange},
            tracked=tracked,
        )

    def _publish(self, calls: Sequence[calling.Call]) -> None:
        if not calls:
            return
        transport = self._transport
        if transport is None:  # the property only the first time: a call per publish
            transport = self.transport
        one, outgoing, queues, bound, sent = self._dispatch(calls, transport.capabilities)
        replies = self._reply_backend() if sent else None
        declared = self._declared

        def attempt() -> None:
            if replies is not None:
                replies.track(sent)
            if not (declared.issuperset(queues) and declared.issuperset(bound)):
                self._declare(transport, queues, bound)
            if one is not None:
                transport.publish(one[0], one[1], not_before=one[2])
            else:
                transport.publish_many(outgoing)

        def recover() -> None:
            declared.clear()
            transport.connect()

        first = calls[0]
        call_with_retry(
            attempt,
            first.retry_policy,
            retry=first.retry,
            recover=recover,
            task_id=first.message.id,
        )
        if self.conf.get("task_send_sent_event"):
            self._sent(transport, calls)

    def _declare(
        self, transport: Transport, queues: Collection[str], bound: Collection[str]
    ) -> None:
        """Declare the queues of a publish not declared yet (and bind those of named
        exchanges), as Celery declares the queue it publishes to."""
        declared = self._declared
        for queue in [q for q in queues if q not in declared]:
            transport.declare_queue(queue)
            declared.add(queue)
        for queue in [q for q in bound if q not in declared]:
            self._bind(transport, queue)
            declared.add(queue)

    def _sent(self, transport: Transport, calls: Sequence[calling.Call]) -> None:
        """``task-sent`` events (``events.client``), off this thread."""
        with self._lock:
            if self._sent_events is None:
                from wiretask.events.client import SentEvents  # noqa: PLC0415 - on first use

                conf = self.conf
                self._sent_events = SentEvents(
                    self.registry, exchange=str(conf.get("event_exchange") or "celeryev"),
                    serializer=str(conf.get("event_serializer") or "json"),
                )
            sent_events = self._sent_events
        sent_events.sent(transport, calls)

    def _replies_routed(self) -> bool:
        """The result backend must hear of every send (``rpc://``); decided from the
        backend URL, so that sending never opens another backend."""
        return self.backend_url.lower().startswith("rpc:")

    def _reply_backend(self) -> ReplyRouted | None:
        """The result backend, when it must hear of every send (``rpc://``)."""
        if not self._replies_routed():
            return None
        backend = self.backend
        return backend if isinstance(backend, ReplyRouted) else None

    def _bind(self, transport: Transport, queue: str) -> None:
        transport.declare_queue(queue)
        if isinstance(transport, QueueBinding):
            declaration = self.router.declaration(queue)
            if declaration.exchange.name and declaration.exchange.name != queue:
                transport.bind_queue(
                    queue, declaration.exchange.name, declaration.routing_key,
                    exchange_type=declaration.exchange.type,
                )

    # -- running here ----------------------------------------------------------------

    def _apply_signature(self, sig: Signature) -> Any:
        """Send a callback as the worker would (options a call does not know dropped),
        through the canvas (a group or chord callback runs as one) and the task's
        ``apply_async`` when it is registered here (so that it runs eagerly under
        ``task_always_eager``)."""
        options = {k: v for k, v in sig.options.items() if k in calling.CALL_OPTIONS}
        return canvas_signature(attrs.evolve(sig, options=options).to_dict(),
                                app=self).apply_async()

    # -- asyncio: the async twin of sending, one transport and backend per loop ----------
    #
    # The same build path (``_build_many``), encoding (``_dispatch``) and retry schedule
    # (``wiretask.retry.Attempts``) as the sync API; only the I/O is awaited, on the
    # loop's own ``AsyncTransport`` (``Transport.async_twin()``) and result backend
    # (``ResultBackend.async_twin()``).

    def _loop_state(self) -> _LoopState:
        """This event loop's transport and backend (made on first use)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            with self._lock:
                state = self._loops.get(loop)
                if state is None:
                    self._forget_closed_loops()
                    state = self._loops[loop] = _LoopState(self)
        return state

    def _forget_closed_loops(self) -> None:
        """Drop the asyncio state of loops that were closed without ``aclose()`` (their
        connections cannot be closed politely any more: they are dropped)."""
        for loop in [loop for loop in self._loops if loop.is_closed()]:
            self._loops.pop(loop).abandon()

    @property
    def async_transport(self) -> AsyncTransport:
        """The running event loop's broker connection (made on first use, connected
        lazily). Call it from a coroutine.

        Raises:
            RuntimeError: no event loop is running in this thread.
        """
        return self._loop_state().transport

    @property
    def async_backend(self) -> AsyncResultBackend:
        """The running event loop's result backend (see ``async_transport``)."""
        return self._loop_state().backend

    async def aclose(self) -> None:
        """Close the running loop's broker connection and result backend (the asyncio
        twin of ``close``; the sync ones stay open). Call it when the loop's work is
        done, e.g. in a FastAPI lifespan."""
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.aclose()

    async def asend_task(
        self, name: str, args: object = None, kwargs: object = None, **options: Any
    ) -> AsyncResult:
        """``send_task``, awaited: the same options, checks and message; the publish and
        its retry policy do not block the loop (``asyncio.sleep`` between attempts, the
        policy's ``timeout`` held with ``asyncio.timeout``).

        Raises:
            ValidationError, EncodeError, PublishError: as ``send_task``.
        """
        if self.conf.get("task_always_eager"):
            logger.warning("asend_task(%r) sends a message: task_always_eager applies to "
                           "apply_async/delay only", name)
        state = self._loop_state()
        call = self._build_one(name, args, kwargs, options, state.transport.capabilities)
        # ``_asend`` of one call without its coroutine level (each is paid twice per
        # publish: at the await and at the reply): the path of ``aapply_async``.
        await self._apublish((call,), state)
        return self._results((call,))[0]

    async def asend_many(
        self,
        signatures: Iterable[Signature | TaskSignature],
        *,
        retry: bool | None = None,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
    ) -> list[AsyncResult]:
        """``send_many``, awaited: one round trip where the broker allows it."""
        extra: dict[str, Any] = {}
        if retry is not None:
            extra["retry"] = retry
        if retry_policy is not None:
            extra["retry_policy"] = retry_policy
        state = self._loop_state()
        capabilities = state.transport.capabilities
        calls = [
            self._build_one(sig.task, sig.args, sig.kwargs, {**sig.options, **extra},
                            capabilities)
            for sig in signatures
        ]
        return await self._asend(calls, state)

    async def _asend(
        self, calls: Sequence[calling.Call], state: _LoopState | None = None
    ) -> list[AsyncResult]:
        """``_send``, awaited: publish built calls with the retry policy of the first."""
        state = state or self._loop_state()
        if calls:
            await self._apublish(calls, state)
        return self._results(calls)

    async def _apublish(self, calls: Sequence[calling.Call], state: _LoopState) -> None:
        transport = state.transport
        one, outgoing, queues, bound, sent = self._dispatch(calls, transport.capabilities)
        declared = state.declared
        # Only rpc:// tracks (``sent`` is empty otherwise): a Protocol isinstance check
        # costs more than the rest of a publish's bookkeeping, so none without it.
        replies = state.backend if sent else None
        tracker = replies if replies is not None and isinstance(replies, AsyncReplyRouted) \
            else None

        def publish() -> Awaitable[None]:
            if one is not None:
                return transport.publish(one[0], one[1], not_before=one[2])
            return transport.publish_many(outgoing)

        async def track_declare_publish() -> None:
            if tracker is not None:
                await tracker.track(sent)
            await self._adeclare(transport, declared, queues, bound)
            await publish()

        def attempt() -> Awaitable[None]:
            # Nothing to track or declare (the common case): the attempt is the
            # transport's publish itself, awaited by the retry driver, with no coroutine
            # of its own around it (each level is paid twice per publish: at the await
            # and at the reply). Decided per attempt: ``recover`` forgets the queues.
            if tracker is None and declared.issuperset(queues) and declared.issuperset(bound):
                return publish()
            return track_declare_publish()

        async def recover() -> None:
            declared.clear()
            await transport.connect()

        first = calls[0]
        await acall_with_retry(
            attempt, first.retry_policy, retry=first.retry, recover=recover,
            task_id=first.message.id,
        )

    async def _adeclare(
        self, transport: AsyncTransport, declared: set[str], queues: Collection[str],
        bound: Collection[str],
    ) -> None:
        """``_declare``, awaited, on the loop's transport and its own ``declared`` set."""
        for queue in [q for q in queues if q not in declared]:
            await transport.declare_queue(queue)
            declared.add(queue)
        for queue in [q for q in bound if q not in declared]:
            await self._abind(transport, queue)
            declared.add(queue)

    def _backend_step(self, step: Callable[[], object]) -> None:
        """A result-backend call a canvas makes while it sends (a chord's size, its
        header): made now, or under ``asend_canvas`` recorded in its place among the
        sends, to run in a thread."""
        deferred = _deferred.get()
        if deferred is not None and deferred.app is self:
            deferred.steps.append(step)
        else:
            step()

    async def asend_canvas(self, send: Callable[[], T]) -> T:
        """Run a canvas's sync ``send`` (``sig.apply_async``: a chain, group, chord,
        ...) with the publishing awaited instead: ``send`` decides every message and id
        at once, as it does for the sync API (no I/O: its publishes and chord backend
        calls are recorded), then they are done here in the same order, the publishes
        on the loop's transport with their own retry policies, the backend calls in a
        thread. Under ``task_always_eager`` ``send`` runs in a thread (the tasks run
        there). What ``send`` returns is returned.

        A cancelled ``await`` stops between two publishes: the canvas is then sent in
        part, as it is when a sync publish fails halfway.
        """
        if self.conf.get("task_always_eager"):
            return await asyncio.to_thread(send)
        state = self._loop_state()
        deferred = _Deferred(self, state.transport.capabilities)
        token = _deferred.set(deferred)
        try:
            result = send()
        finally:
            _deferred.reset(token)
        for step in deferred.steps:
            if isinstance(step, list):
                await self._apublish(step, state)
            else:
                await asyncio.to_thread(step)
        return result

    async def _abind(self, transport: AsyncTransport, queue: str) -> None:
        await transport.declare_queue(queue)
        if isinstance(transport, AsyncQueueBinding):
            declaration = self.router.declaration(queue)
            if declaration.exchange.name and declaration.exchange.name != queue:
                await transport.bind_queue(
                    queue, declaration.exchange.name, declaration.routing_key,
                    exchange_type=declaration.exchange.type,
                )

    def AsyncResult(self, task_id: str) -> AsyncResult:  # Celery's name
        return AsyncResult(task_id, app=self)

    def GroupResult(  # Celery's name
        self, group_id: str, results: Iterable[Any] = (),
    ) -> GroupResult:
        return GroupResult(group_id, results, app=self)

    @functools.cached_property
    def control(self) -> Control:
        """The remote-control client, Celery's ``app.control``: ``ping()``,
        ``revoke(task_id, terminate=...)``, ``inspect(timeout=...).active()`` and the
        rest, to Celery's workers and wiretask's alike (``wiretask.control``)."""
        from wiretask.control import Control  # noqa: PLC0415 - only callers of control load it

        return Control(self)


def _add_to_parent(app: App, results: Sequence[AsyncResult]) -> None:
    """Sent from inside a running task (worker or eager path, not a direct call): the
    results join that task's children, as Celery's ``send_task`` adds them to the
    current worker task's trail (``Task.trail``; stored with its state)."""
    request = _current_request.get()
    if request is None or request.called_directly or request.task is None:
        return
    task = app._tasks.get(request.task)
    if task is not None and task.trail:
        request.children.extend(results)


class _Dispatch(NamedTuple):
    """What publishing some calls sends (``App._dispatch``)."""

    #: The message of a single call: its frame, route and ``not_before`` (else None).
    one: tuple[Frame, Route, datetime | None] | None
    #: The messages of a batch (empty for a single call).
    outgoing: list[Outgoing]
    #: Queues to declare first (the default exchange).
    queues: Collection[str]
    #: Queues to declare and bind to their named exchange first.
    bound: Collection[str]
    #: ``(task id, reply_to)`` of the calls an ``rpc://`` backend must hear of before
    #: they are published (``ReplyRouted.track``); empty for every other backend.
    tracked: list[tuple[str, str | None]]


class _Deferred:
    """What a canvas sent under ``App.asend_canvas``: built calls to publish, and
    result-backend calls, in order."""

    def __init__(self, app: App, capabilities: Capabilities) -> None:
        self.app = app
        self.capabilities = capabilities
        self.steps: list[list[calling.Call] | Callable[[], object]] = []


class _StateUpdate(NamedTuple):
    """A state ``Task.update_state`` stores, and where its sender listens."""

    task_id: str
    meta: dict[str, Any]
    reply_to: str | None
    correlation_id: str | None


class _LoopState:
    """An app's asyncio transport and result backend on one event loop, and the queues
    declared through that transport. Made by ``App._loop_state``."""

    def __init__(self, app: App) -> None:
        self._app = app
        self.transport: AsyncTransport = app.new_transport().async_twin()
        self.declared: set[str] = set()
        self._backend: AsyncResultBackend | None = None

    @property
    def backend(self) -> AsyncResultBackend:
        if self._backend is None:
            app = self._app
            # A backend whose states are this client's (rpc://: one reply queue per app
            # and process) is shared with its twins; any other gets one of its own.
            if app._replies_routed():
                self._backend = app.backend.async_twin()
            else:
                self._backend = app._new_backend().async_twin()
        return self._backend

    async def aclose(self) -> None:
        try:
            await self.transport.close()
        finally:
            if self._backend is not None:
                await self._backend.close()

    def abandon(self) -> None:
        """The loop was closed without ``App.aclose()``: nothing can be awaited on it
        any more, so its connections are left to be closed when they are collected."""
        self.declared.clear()
        self._backend = None


def _routes_itself(options: Mapping[str, Any], defaults: Mapping[str, Any] | None) -> bool:
    """The call (or its task) names an exchange or routing key, or gives its queue as a
    kombu ``Queue``: route it in full."""
    for key in ("exchange", "routing_key", "exchange_type"):
        if options.get(key) is not None or (defaults is not None and key in defaults):
            return True
    queue = options.get("queue")
    return queue is not None and not isinstance(queue, str)


def _import_object(path: str) -> Any:
    """``"module"``, ``"module:attribute"`` or ``"module.attribute"`` (tried in that
    order, as Celery's ``symbol_by_name``)."""
    if ":" in path:
        module_name, _, attribute = path.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        module_name, _, attribute = path.rpartition(".")
        if not module_name or exc.name != path:
            raise
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attribute!r}",
                              name=path) from None


def _find_related_module(package: str, related_name: str | None) -> types.ModuleType | None:
    """Celery's ``find_related_module``: ``package.related_name``, or ``None`` when that
    module does not exist (an import error inside it is raised)."""
    try:
        module = importlib.import_module(package)
        if not related_name:
            return module
    except ModuleNotFoundError:
        # An app config path (``pkg.apps.PkgConfig``): try its package.
        package, _, _ = package.rpartition(".")
        if not package:
            raise
    module_name = f"{package}.{related_name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def _django_transaction(method: str) -> Any:
    try:
        from django.db import transaction  # noqa: PLC0415
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"Task.{method} waits for a Django transaction, and Django is not installed: "
            "use delay/apply_async"
        ) from exc
    return transaction


def _django_apps() -> list[str]:
    """Django's installed apps, for ``autodiscover_tasks()`` without packages. Django is
    set up first if it was not (a worker started by the command line), as Celery's
    Django fix-up does when its worker starts."""
    try:
        import django  # noqa: PLC0415
        from django.apps import apps  # noqa: PLC0415
    except ImportError as exc:
        raise ImproperlyConfigured(
            "autodiscover_tasks() without packages searches Django's installed apps, and "
            "Django is not installed: give the packages"
        ) from exc
    if not apps.ready:
        from django.conf import settings  # noqa: PLC0415

        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ImproperlyConfigured(
                "autodiscover_tasks() without packages searches Django's installed apps, "
                "and Django is not configured (DJANGO_SETTINGS_MODULE is not set): give "
                "the packages"
            )
        try:
            django.setup()
        except Exception as exc:
            raise ImproperlyConfigured(
                f"autodiscover_tasks(): Django could not be set up: {exc}"
            ) from exc
    return [config.name for config in apps.get_app_configs()]


#: How many times this process is a fork child of the one that imported wiretask: keys
#: what is fixed per process (``origin``, ``reply_to``) without a ``getpid`` per call.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def _origin() -> str:
    """Celery's ``origin`` header: ``gen<pid>@<hostname>``."""
    return f"gen{os.getpid()}@{_hostname()}"


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


#: Kombu's node id (``kombu.common.get_node_id``): random, drawn once per process tree.
_NODE = uuid.uuid4().int


def _oid(app: App) -> str:
    """Celery's ``app.oid`` (``kombu.common.oid_from(app, threads=False)``): a UUID 3 of
    the node, the process and the app, stable per app and process. Sent as every
    message's ``reply_to``: the app's reply queue (``rpc://``). Celery sends the
    per-thread ``thread_oid`` because its rpc backend is per thread; wiretask's reads
    one queue per app and process for all its threads."""
    return str(uuid.uuid3(uuid.NAMESPACE_OID, f"{_NODE:x}-{os.getpid():x}-0-{id(app):x}"))


#: The kwargs of an ``apply_many`` item given as args alone (the builder copies it).
_NO_KWARGS: dict[str, Any] = {}


def _call_arguments(
    calls: Iterable[Sequence[Any] | tuple[Sequence[Any], Mapping[str, Any]]],
) -> list[tuple[object, object]]:
    """``apply_many``'s items as ``(args, kwargs)`` pairs: an args sequence, or an
    ``(args, kwargs)`` pair when written as ``(tuple/list, dict)``."""
    arguments: list[tuple[object, object]] = []
    for item in calls:
        if (
            isinstance(item, tuple) and len(item) == 2
            and isinstance(item[0], list | tuple) and isinstance(item[1], Mapping)
        ):
            arguments.append(item)
        else:
            arguments.append((item, _NO_KWARGS))
    return arguments


def _defined_below_task(cls: type, name: str) -> bool:
    """Whether a subclass of ``Task`` (not ``Task`` itself) defines ``name``."""
    for klass in cls.__mro__:
        if klass is Task:
            return False
        if name in vars(klass):
            return True
    return False


# -- tasks ------------------------------------------------------------------------------------


class Task(Generic[P, R]):
    """A registered task. Call it to run it here; ``delay``/``apply_async`` to send it.

    ``@app.task`` makes one from a function; ``@app.task(base=MyTask)`` makes it an
    instance of a subclass, whose class attributes are the defaults of its options
    (the decorator's options win), whose ``__call__`` wraps the run (the worker and
    the eager path go through it, as in Celery) and whose handler methods
    (``before_start``, ``on_success``, ``on_retry``, ``on_failure``, ``after_return``)
    the worker and the eager path call with Celery's arguments, in Celery's order. A
    subclass that defines ``run`` is a class-based task (``app.register_task(MyTask)``).
    ``task.run`` is the body; for a bound task the task is already bound to it, as in
    Celery (``task.run(2, 3)``).
    """

    # Celery's Task attributes and their defaults (``wiretask.tasks.TASK_OPTIONS``).
    name: str
    run: Callable[..., R]
    bind: bool = False
    typing: bool | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    rate_limit: str | float | None = None
    ignore_result: bool | None = None
    track_started: bool | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    acks_on_failure: bool | None = None
    acks_on_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    retry_on_worker_lost: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    store_eager_result: bool | None = None
    trail: bool = True
    send_events: bool = True
    throws: tuple[type[BaseException], ...] = ()
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: Mapping[str, Any] = types.MappingProxyType({})
    retry_backoff: bool | float = False
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: Any = None
    priority: Any = None
    queue: str | None = None
    exchange: Any = None
    routing_key: str | None = None
    serializer: str | None = None
    compression: str | None = None
    delivery_mode: Any = None
    #: An ``async def`` task (set when the function is bound; see ``_bind``).
    is_coroutine: bool = False

    MaxRetriesExceededError = MaxRetriesExceededError

    def __init__(
        self, app: App | None = None, fn: Callable[..., R] | None = None, /, **options: Any
    ) -> None:
        self.app = cast("App", None)
        self._annotated = False
        #: Tasks per second from ``rate_limit`` (None: no limit), for the worker.
        self.rate: float | None = None
        self.defaults: Mapping[str, Any] = types.MappingProxyType({})
        if app is not None:
            self._bind(app, fn, options)

    def _bind(self, app: App, fn: Callable[..., R] | None, options: Mapping[str, Any]) -> None:
        self.app = app
        explicit = self._class_options(app, options)
        if fn is None:
            run = getattr(self, "run", None)
            if run is None or not _defined_below_task(type(self), "run"):
                raise ValidationError("run", f"{type(self).__qualname__} defines no run() method")
            self.name = (options.get("name") or getattr(type(self), "name", None)
                         or app.task_name(type(self)))
            explicit["bind"] = False  # a method run gets self by itself
            real: Callable[..., Any] = run
        else:
            self.name = options.get("name") or app.task_name(fn)
            functools.update_wrapper(self, fn)
            real = fn
        explicit.pop("name", None)
        self._set_options(explicit)
        self._signature = inspect.signature(real)
        self._check = calling.argument_checker(self._signature)
        #: An ``async def`` task: the worker's asyncio pool awaits it on its event loop
        #: (the other pools run it with ``asyncio.run``).
        self.is_coroutine = inspect.iscoroutinefunction(real)
        if self.autoretry_for:
            real = autoretry(self, real)
        # A bound function task's run takes the task first: bind it, as Celery does.
        self.run = types.MethodType(real, self) if self.bind and fn is not None else real
        cls = type(self)
        #: The handler methods this task's class defines (Celery's ``task_has_custom``):
        #: the tracer calls only these.
        self.custom_hooks: frozenset[str] = frozenset(
            hook for hook in HOOKS if _defined_below_task(cls, hook)
        )
        #: Whether the class overrides ``__call__``: the worker then runs the body
        #: through it, as Celery's tracer does.
        self.custom_call = cls.__call__ is not Task.__call__

    def _class_options(self, app: App, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options given, over the ones a subclass sets as class attributes, over
        the app's defaults (``task_max_retries``, ``task_default_retry_delay``,
        ``strict_typing``)."""
        cls = type(self)
        explicit = dict(options)
        for key in TASK_OPTIONS.keys() - {"name", "base"} - explicit.keys():
            if _defined_below_task(cls, key):
                explicit[key] = check_task_option(key, getattr(cls, key))
        explicit.setdefault("max_retries", app.conf.get("task_max_retries"))
        explicit.setdefault("default_retry_delay", app.conf.get("task_default_retry_delay"))
        explicit.setdefault("typing", app.strict_typing)
        return explicit

    def _set_options(self, options: Mapping[str, Any]) -> None:
        """Set checked options as attributes and recompute what derives from them."""
        for key, value in options.items():
            setattr(self, key, check_task_option(key, value))
        hard, soft = self.time_limit, self.soft_time_limit
        if hard and soft and soft > hard:
            raise ValidationError(
                "soft_time_limit", f"{soft} is greater than time_limit {hard}", value=soft
            )
        self.rate = parse_rate(self.rate_limit)
        self.defaults = types.MappingProxyType(
            {k: getattr(self, k) for k in CALL_DEFAULTS if getattr(self, k) is not None}
        )

    def _call_run(self, *args: Any, **kwargs: Any) -> R:
        return self.run(*args, **kwargs)

    def _trace_call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> R:
        """Run the body as Celery's tracer does (the worker and the eager path): through
        the class's own ``__call__`` if it overrides it (``super().__call__(...)`` or
        ``self.run(...)`` in it reach the body), else ``run`` directly."""
        if not self.custom_call:
            return self.run(*args, **kwargs)
        token = _inside_call.set(self)
        try:
            return type(self).__call__(self, *args, **kwargs)
        finally:
            _inside_call.reset(token)

    # -- handlers (Celery's; a subclass overrides them) -------------------------------

    def before_start(self, task_id: str, args: Sequence[Any],
                     kwargs: Mapping[str, Any]) -> None:
        """Called by the worker right before the body runs."""

    def on_success(self, retval: Any, task_id: str, args: Sequence[Any],
                   kwargs: Mapping[str, Any]) -> None:
        """Called by the worker after ``SUCCESS`` was stored."""

    def on_retry(self, exc: BaseException | None, task_id: str, args: Sequence[Any],
                 kwargs: Mapping[str, Any], einfo: ExceptionInfo) -> None:
        """Called by the worker after ``RETRY`` was stored (``exc``: ``retry(exc=...)``)."""

    def on_failure(self, exc: BaseException, task_id: str, args: Sequence[Any],
                   kwargs: Mapping[str, Any], einfo: ExceptionInfo) -> None:
        """Called by the worker after ``FAILURE`` was stored and the errbacks called."""

    def after_return(self, status: str, retval: Any, task_id: str, args: Sequence[Any],
                     kwargs: Mapping[str, Any], einfo: ExceptionInfo | None) -> None:
        """Called by the worker after ``on_success`` or ``on_failure`` (``einfo`` is
        always None, as in Celery's tracer)."""

    def call_hook(self, name: str, *args: Any) -> BaseException | None:
        """Call the handler ``name`` (one of ``HOOKS``) if this task's class defines it.
        What it raises is logged and returned (the caller decides what it means)."""
        if name not in self.custom_hooks:
            return None
        try:
            getattr(self, name)(*args)
        except Exception as exc:
            logger.exception("task %s[%s]: %s raised", self.name, self.request.id, name)
            return exc
        return None

    def add_trail(self, result: AsyncResult) -> AsyncResult:
        """Record ``result`` as a child of the running task (when ``trail`` is on), as
        sending a task from inside one does."""
        if self.trail:
            self.request.children.append(result)
        return result

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    # -- running here -------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task body in this process: no message, no state, no callbacks."""
        if _inside_call.get() is self:
            # super().__call__ inside a custom __call__ run by the worker or the eager
            # path: the request is already the message's.
            return self._call_run(*args, **kwargs)
        request = Request(task=self.name, args=tuple(args), kwargs=dict(kwargs))
        token = _current_request.set(request)
        try:
            return self._call_run(*args, **kwargs)
        finally:
            _current_request.reset(token)

    def running(self, request: Request) -> contextlib.AbstractContextManager[Request]:
        """Make ``request`` the current one while the worker runs this task."""
        return _Running(request)

    @property
    def request(self) -> Request:
        """The current request (``id=None``, ``called_directly=True`` outside a worker)."""
        current = _current_request.get()
        if current is None or current.task != self.name:
            return Request(task=self.name)
        return current

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Bind the arguments to the function's signature, as Celery does before sending."""
        if not self.typing:
            return
        check = self._check
        if check is not None:
            try:
                if self.bind:
                    check(self, *args, **kwargs)
                else:
                    check(*args, **kwargs)
            except TypeError:
                pass  # inspect's wording for the error, below
            else:
                return
        try:
            if self.bind:
                self._signature.bind(self, *args, **kwargs)
            else:
                self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError("args", f"{self.name}(): {exc}") from None

    # -- sending ------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """``apply_async(args, kwargs)``: every keyword is a task kwarg, never an option."""
        return self.apply_async(args, kwargs)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Django: ``delay`` once the current database transaction commits (at once
        outside one). Returns None, as Celery's ``DjangoTask.delay_on_commit``.

        Raises:
            ImproperlyConfigured: Django is not installed.
        """
        transaction = _django_transaction("delay_on_commit")
        transaction.on_commit(functools.partial(self.apply_async, args, kwargs))

    def apply_async_on_commit(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Django: ``apply_async`` once the current database transaction commits.
        Returns None, as Celery's ``DjangoTask.apply_async_on_commit``."""
        transaction = _django_transaction("apply_async_on_commit")
        transaction.on_commit(functools.partial(self.apply_async, args, kwargs, **options))

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send this task with options (``countdown``, ``eta``, ``expires``, ``retry``,
        ``retry_policy``, ``queue``, ``exchange``, ``routing_key``, ``priority``,
        ``serializer``, ``compression``, ``link``, ``link_error``, ``headers``, ``task_id``,
        ``shadow``, ``ignore_result``, ``time_limit``, ``soft_time_limit``, ``argsrepr``,
        ``kwargsrepr``, ...). Under ``task_always_eager`` it runs here instead
        (``apply``). See ``App.send_task`` for what it raises."""
        if self.app.conf.get("task_always_eager"):
            return self.apply(args, kwargs, **options)
        return self.app.send_task(self.name, args, kwargs, **options)

    def apply_many(
        self,
        calls: Iterable[Sequence[Any] | tuple[Sequence[Any], Mapping[str, Any]]],
        **options: Any,
    ) -> list[AsyncResult]:
        """Send many calls of this task, with the same options and retry policy, in one
        round trip where the broker allows it. Each item is an args sequence, or an
        ``(args, kwargs)`` pair when written as ``(tuple/list, dict)``. The options are
        resolved once, at one instant (the same ``eta``/``expires`` for every call); all
        calls are validated and encoded before anything is sent. Under
        ``task_always_eager`` each call runs here (``apply``) instead."""
        arguments = _call_arguments(calls)
        if self.app.conf.get("task_always_eager"):
            return self._apply_each(arguments, options)
        return self.app._send(self.app.build_many(self.name, arguments, **options))

    def _apply_each(
        self, arguments: list[tuple[object, object]], options: Mapping[str, Any]
    ) -> list[AsyncResult]:
        return [self.apply(cast("Sequence[Any]", args), cast("Mapping[str, Any]", kwargs),
                           **options) for args, kwargs in arguments]

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        task_id: str | None = None,
        retries: int | None = None,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task here, now, and return an ``EagerResult`` (Celery's ``apply``).

        The call is built and checked as if it were sent, encoded and decoded again (so
        the task sees what a worker would: JSON turns tuples into lists), then run with
        an eager request (``request.is_eager``): the result is not stored (unless
        ``task_store_eager_result``), ``link`` callbacks and the chain are applied
        (eagerly under ``task_always_eager``), errbacks run as in the worker, and
        ``retry()`` runs the task again at once. ``throw`` (default
        ``task_eager_propagates``) re-raises the task's exception here.
        """
        app = self.app
        call = app.build_call(
            self.name, args, kwargs, link=link, link_error=link_error, task_id=task_id,
            retries=retries, **options,
        )
        registry = app.registry
        frame = encode(call.message, registry)
        message = decode(frame, registry, accept=[call.message.content_type])
        if throw is None:
            throw = bool(app.conf.get("task_eager_propagates"))
        return _EagerRun(self, message, throw).run()

    def signature(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None, *, immutable: bool = False, **extra: Any,
    ) -> TaskSignature:
        """A signature of this task (Celery's ``task.signature``); keywords are options."""
        return self.app.signature(self.name, args, kwargs, options, immutable=immutable,
                                  **extra)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> TaskSignature:
        """A signature with partial arguments (the parent's result is prepended)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> TaskSignature:
        """An immutable signature: callbacks get exactly these arguments."""
        return self.signature(args, kwargs, immutable=True)

    # -- asyncio: sending from coroutines -------------------------------------------
    #
    # ``delay``/``apply_async``/``apply_many`` with the same options, checks and
    # messages (``App.asend_task``); under ``task_always_eager`` the task runs in a
    # worker thread (``asyncio.to_thread``), so neither it nor an ``async def`` body it
    # runs with ``asyncio.run`` blocks the loop.

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """``delay``, awaited: every keyword is a task kwarg."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async``, awaited: the same options and checks (see
        ``App.asend_task`` for what the publish does on the loop)."""
        if self.app.conf.get("task_always_eager"):
            return await asyncio.to_thread(functools.partial(self.apply, args, kwargs,
                                                             **options))
        return await self.app.asend_task(self.name, args, kwargs, **options)

    async def aapply_many(
        self,
        calls: Iterable[Sequence[Any] | tuple[Sequence[Any], Mapping[str, Any]]],
        **options: Any,
    ) -> list[AsyncResult]:
        """``apply_many``, awaited: one round trip where the broker allows it."""
        arguments = _call_arguments(calls)
        app = self.app
        if app.conf.get("task_always_eager"):
            return await asyncio.to_thread(self._apply_each, arguments, options)
        state = app._loop_state()
        return await app._asend(
            app._build_many(self.name, arguments, options, state.transport.capabilities),
            state,
        )

    def chunks(self, it: Iterable[Sequence[Any]], n: int) -> chunks:
        """``it`` cut into parts of ``n`` argument tuples, each part one
        ``celery.starmap`` message (Celery's ``task.chunks``)."""
        return chunks(self.s(), it, n, app=self.app)

    def map(self, it: Iterable[Any]) -> xmap:
        """One ``celery.map`` message calling this task for each item (``task.map``)."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Sequence[Any]]) -> xstarmap:
        """One ``celery.starmap`` message calling this task with each argument tuple."""
        return xstarmap(self.s(), it, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # Celery's name
        return AsyncResult(task_id, app=self.app)

    # -- inside a running task ----------------------------------------------------------

    def update_state(
        self,
        task_id: str | None = None,
        state: str = states.PENDING,
        meta: Any = None,
    ) -> None:
        """Store a state (e.g. a custom ``PROGRESS`` with ``meta``) for this task or
        ``task_id``; ``on_message`` listeners receive it."""
        update = self._state_update(task_id, state, meta)
        self.app.backend.store_reply(update.task_id, update.meta, reply_to=update.reply_to,
                                     correlation_id=update.correlation_id)

    async def aupdate_state(
        self,
        task_id: str | None = None,
        state: str = states.PENDING,
        meta: Any = None,
    ) -> None:
        """``update_state``, awaited (from an ``async def`` task: the store does not
        block the event loop)."""
        update = self._state_update(task_id, state, meta)
        await self.app.async_backend.store_reply(
            update.task_id, update.meta, reply_to=update.reply_to,
            correlation_id=update.correlation_id,
        )

    def _state_update(self, task_id: str | None, state: str, meta: Any) -> _StateUpdate:
        task_id = task_id or self.request.id
        if task_id is None:
            raise ValidationError("task_id", "update_state outside a worker needs a task_id")
        request = self.request
        message = request.message
        return _StateUpdate(
            task_id,
            states.make_meta(
                task_id, state, meta,
                parent_id=request.parent_id if request.id == task_id else None,
                group_id=request.group if request.id == task_id else None,
            ),
            # A worker's request: the state goes where its sender listens (rpc://).
            reply_to=message.reply_to if message is not None else None,
            correlation_id=(message.correlation_id or message.id)
            if message is not None and request.id == task_id else task_id,
        )

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | str | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Re-send the running task (same id, ``retries + 1``, a new eta) and raise
        ``Retry`` so the worker records ``RETRY``. ``expires``, links, chain, chord, group,
        priority, time limits and custom headers are carried over.

        Outside a worker it raises ``exc`` (as Celery does). Past ``max_retries`` it
        raises ``exc``, or ``MaxRetriesExceededError`` when there is none, as Celery does.
        In the eager path the task runs again at once.
        """
        request = self.request
        if request.called_directly:
            raise exc if exc is not None else Retry("Task can be retried")
        next_args = request.args if args is None else tuple(args)
        next_kwargs = request.kwargs if kwargs is None else kwargs
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries + 1 > limit:
            raise exc if exc is not None else MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{next_args} kwargs:{next_kwargs}",
                task_args=next_args, task_kwargs=next_kwargs,
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        when = countdown if countdown is not None else eta
        if request.is_eager:
            signal = Retry(exc=exc, when=when, sig=(tuple(next_args), dict(next_kwargs)))
        else:
            retry_options = self._retry_options(request)
            retry_options.update({"countdown": countdown} if countdown is not None
                                 else {"eta": eta})
            retry_options.update(options)
            self.app.send_task(self.name, next_args, next_kwargs, **retry_options)
            signal = Retry(exc=exc, when=when)
        if throw:
            raise signal
        return signal

    def _retry_options(self, request: Request) -> dict[str, Any]:
        """What a retry carries over from the message being run (Celery's
        ``signature_from_request``)."""
        message = request.message
        if message is None:
            raise ValidationError("retry", "Task.retry() needs the message being run")
        hard, soft = message.timelimit
        retry_options: dict[str, Any] = {
            "task_id": message.id,
            "retries": message.retries + 1,
            "expires": message.expires,
            "link": message.callbacks,
            "link_error": message.errbacks,
            "chain": message.chain,
            "chord": message.chord,
            "group_id": message.group,
            "group_index": message.group_index,
            "root_id": message.root_id,
            "parent_id": message.id,
            "priority": message.priority,
            "time_limit": hard,
            "soft_time_limit": soft,
            "headers": {k: v for k, v in message.extra_headers.items()
                        if not k.startswith("x-death")},
            "ignore_result": message.ignore_result,
            "shadow": message.shadow,
            "serializer": self.app.registry.serializer(message.content_type).name,
            "compression": message.compression,
        }
        info = request.delivery_info or {}
        if info.get("queue"):
            retry_options["queue"] = info["queue"]
        return retry_options


def _run_eagerly(body: Any) -> Any:
    """Run an ``async def`` task's coroutine to its end here (``Task.apply``), on a
    loop of its own.

    Raises:
        ImproperlyConfigured: an event loop is running in this thread (``asyncio.run``
            cannot nest): the asyncio API (``await task.adelay()``) runs eager tasks in
            a thread for that.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(body)
    body.close()
    raise ImproperlyConfigured(
        "an async def task cannot run eagerly inside a running event loop (apply(), or "
        "delay() under task_always_eager): await task.aapply_async()/adelay() instead, "
        "which runs it in a worker thread"
    )


class _EagerRun:
    """One eager run of a decoded message (``Task.apply``): the worker's tracer order
    (run, then callbacks or errbacks), without a broker or a stored state."""

    def __init__(self, task: Task[Any, Any], message: TaskMessage, throw: bool) -> None:
        self.task = task
        self.app = task.app
        self.message = message
        self.throw = throw

    def request(self) -> Request:
        message = self.message
        return Request.from_message(
            message, hostname=_hostname(), is_eager=True,
            delivery_info={"is_eager": True, "exchange": None, "routing_key": None,
                           "priority": message.priority},
        )

    def run(self) -> EagerResult:
        task = self.task
        request = self.request()
        with task.running(request):
            return self._traced(request)

    def _traced(self, request: Request) -> EagerResult:
        """The run, with the request current (the handlers and the callbacks see it,
        and what they send becomes the task's children), in Celery's tracer order."""
        task, message = self.task, self.message
        args, kwargs = list(message.args), dict(message.kwargs)
        try:
            task.before_start(message.id, args, kwargs)
            retval = task._trace_call(message.args, message.kwargs)
            if inspect.iscoroutine(retval):
                retval = _run_eagerly(retval)
        except Retry as signal:
            if signal.sig is None:
                return self.failed(request, signal)
            reason: BaseException = signal.exc if signal.exc is not None else signal
            task.call_hook("on_retry", signal.exc, message.id, args, kwargs,
                           ExceptionInfo.of(reason, "".join(traceback.format_exception(
                               type(reason), reason, reason.__traceback__
                               or signal.__traceback__))))
            return task.apply(
                *signal.sig, task_id=message.id, retries=message.retries + 1,
                throw=self.throw, link=message.callbacks, link_error=message.errbacks,
                chain=message.chain, root_id=message.root_id, parent_id=message.parent_id,
            )
        except Exception as exc:  # the task's failure, as the tracer records it
            return self.failed(request, exc)
        root_id = message.root_id or message.id
        for sig in message.callbacks or ():
            self.app._apply_signature(
                sig.clone((retval,), parent_id=message.id, root_id=root_id)
            )
        if message.chain:
            rest = message.chain[:-1]
            self.app._apply_signature(message.chain[-1].clone(
                (retval,), parent_id=message.id, root_id=root_id, chain=rest or None
            ))
        # Celery: the callbacks are applied before the result is stored (so that it
        # lists them among its children), then on_success and after_return.
        self.store(states.SUCCESS, retval, children=request.children)
        failed = task.call_hook("on_success", retval, message.id, args, kwargs)
        if failed is not None:
            return self.failed(request, failed)
        task.call_hook("after_return", states.SUCCESS, retval, message.id, args, kwargs,
                       None)
        return EagerResult(message.id, retval, states.SUCCESS, name=task.name, app=self.app)

    def failed(self, request: Request, exc: BaseException) -> EagerResult:
        message = self.message
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.store(states.FAILURE, exc, tb, children=request.children)
        root_id = message.root_id or message.id
        for sig in message.errbacks or ():
            # The worker's rule for which errbacks run in-process (imported here: the
            # worker package is loaded only when there is an errback to call).
            from wiretask.worker.links import errback_runs_in_worker  # noqa: PLC0415

            if errback_runs_in_worker(self.app, sig):
                merged = sig.clone((request, exc, tb))
                self.app.tasks[sig.task](*merged.args, **merged.kwargs)
            else:
                self.app._apply_signature(
                    sig.clone((message.id,), parent_id=message.id, root_id=root_id)
                )
        if self.throw:
            # Celery's eager tracer propagates at once: no on_failure, no after_return.
            raise exc
        args, kwargs = list(message.args), dict(message.kwargs)
        self.task.call_hook("on_failure", exc, message.id, args, kwargs,
                            ExceptionInfo.of(exc, tb))
        self.task.call_hook("after_return", states.FAILURE, exc, message.id, args, kwargs,
                            None)
        return EagerResult(message.id, exc, states.FAILURE, traceback=tb,
                           name=self.task.name, app=self.app)

    def store(self, status: str, result: Any, tb: str | None = None, *,
              children: Sequence[AsyncResult] = ()) -> None:
        store = self.task.store_eager_result
        if store is None:
            store = bool(self.app.conf.get("task_store_eager_result"))
        if not store or self.message.ignore_result:
            return
        message = self.message
        # result_extended: the fields Celery's eager run stores too (worker.canvas).
        from wiretask.worker.canvas import extended_fields  # noqa: PLC0415 - lazily

        self.app.backend.store(message.id, states.make_meta(
            message.id, status, result, traceback=tb, date_done=self.app.now(),
            parent_id=message.parent_id, group_id=message.group,
            extra=extended_fields(self.app, message, self.request(), _hostname()),
            children=[child.as_tuple() for child in children],
        ))


# -- results ----------------------------------------------------------------------------------


class AsyncResult:
    """The result of a sent task, read from the app's result backend.

    ``get(on_message=...)`` works on every bundled backend and hands every state change
    to ``on_message`` as Celery's meta dict; a late caller first receives the current
    state, so it never misses the final one.
    """

    def __init__(self, id: str, *, app: App | None = None, ignore_result: bool = False,
                 parent: AsyncResult | GroupResult | None = None) -> None:
        self.id = id
        self.app = app if app is not None else current_app()
        self.ignore_result = ignore_result
        self._parent = parent

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    def _meta(self) -> Mapping[str, Any]:
        meta = self.backend.get(self.id)
        return meta if meta is not None else states.make_meta(self.id, states.PENDING, None)

    @property
    def state(self) -> str:
        return str(self._meta()["status"])

    @property
    def status(self) -> str:
        return self.state

    @property
    def info(self) -> Any:
        """The result, the exception of a failed task, or a custom state's meta."""
        return _value(self._meta())

    @property
    def result(self) -> Any:
        return self.info

    @property
    def traceback(self) -> str | None:
        value = self._meta().get("traceback")
        return str(value) if value is not None else None

    @property
    def date_done(self) -> datetime | None:
        """When the task finished, as an aware datetime (a stored value without an
        offset is UTC), or ``None`` while it is not ready."""
        return _datetime(self._meta().get("date_done"))

    @property
    def parent(self) -> AsyncResult | GroupResult | None:
        """The result of the task that sent this one: set by a chain, else read from the
        stored ``parent_id``."""
        if self._parent is not None:
            return self._parent
        parent_id = self._meta().get("parent_id")
        return AsyncResult(str(parent_id), app=self.app) if parent_id else None

    @parent.setter
    def parent(self, value: AsyncResult | GroupResult | None) -> None:
        self._parent = value

    @property
    def children(self) -> list[AsyncResult | GroupResult] | None:
        """The results of the tasks this one sent, as stored (Celery's worker stores
        them), or ``None`` while there is nothing stored."""
        meta = self.backend.get(self.id)
        children = None if meta is None else meta.get("children")
        if children is None:
            return None
        return [result_from_tuple(item, self.app, f"children[{index}]")
                for index, item in enumerate(children)]

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def as_tuple(self) -> tuple[Any, Any]:
        """Celery's result tuple, ``((id, parent_tuple), None)`` (stored in
        ``children`` and in a saved group)."""
        parent = self._parent.as_tuple() if self._parent is not None else None
        return (self.id, parent), None

    # -- result_extended: what the worker that ran the task stored about it ------------

    def _extended(self, field: str) -> Any:
        return self._meta().get(field)

    def _extended_text(self, field: str) -> str | None:
        value = self._extended(field)
        return None if value is None else str(value)

    @property
    def name(self) -> str | None:
        """The task's name (stored with ``result_extended``, by wiretask or Celery)."""
        return self._extended_text("name")

    @property
    def args(self) -> Any:
        """The task's positional arguments (``result_extended``)."""
        return self._extended("args")

    @property
    def kwargs(self) -> Any:
        """The task's keyword arguments (``result_extended``)."""
        return self._extended("kwargs")

    @property
    def worker(self) -> str | None:
        """The node name of the worker that ran it (``result_extended``)."""
        return self._extended_text("worker")

    @property
    def queue(self) -> str | None:
        """The routing key it was delivered with (``result_extended``)."""
        return self._extended_text("queue")

    @property
    def retries(self) -> int | None:
        """How many times it had been retried (``result_extended``)."""
        value = self._extended("retries")
        return None if value is None else int(value)

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def forget(self) -> None:
        """Remove the stored result."""
        self.backend.forget(self.id)

    def revoke(
        self, connection: object = None, terminate: bool = False, signal: str | None = None,
        wait: bool = False, timeout: float | None = None,
    ) -> None:
        """Tell every worker to revoke this task (Celery's ``AsyncResult.revoke``): one
        that has not run it will not, and with ``terminate`` one whose pool can stop a
        running task stops it. ``wait`` waits up to ``timeout`` seconds for each
        worker's reply (the replies are not returned, as in Celery).

        Raises:
            ImproperlyConfigured: the broker cannot broadcast (``spec/control.md``).
            TransportError: the broker failed.
        """
        self.app.control.revoke(self.id, connection=connection, terminate=terminate,
                                signal=signal, reply=wait, timeout=timeout)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
    ) -> Any:
        """Wait for the task to finish and return its result.

        Args:
            timeout: seconds to wait (None: forever). On expiry a wiretask
                ``TimeoutError`` names the task id and the last state seen.
            propagate: re-raise the task's exception if it failed or was revoked (and,
                with ``follow_parents``, a failed parent's first, as Celery does for a
                chain).
            interval: read the stored state every ``interval`` seconds (Celery's polling
                backends' period). Not given: follow the backend's stream of state
                changes (pushed by memory and Redis, polled every few ms by SQLite).
            on_message: called with every state change's meta dict, in order, starting
                with the current state (with ``interval``: every change seen).
            disable_sync_subtasks: inside a running task ``get()`` raises
                ``WouldBlock`` (a ``RuntimeError``, as in Celery), because waiting for
                another task from a worker slot can deadlock the worker; pass False (or
                use ``allow_join_result()``) to wait anyway.
        """
        if disable_sync_subtasks:
            _assert_will_not_block()
        if self.ignore_result:
            return None
        _check_interval(interval)
        if propagate and follow_parents:
            self._raise_failed_parent()
        backend = self.backend
        if isinstance(backend, ReplyRouted):
            backend.check_wait(self.id)  # rpc://: states that go elsewhere never come
        if interval is None:
            meta = self._stream(timeout, on_message)
        else:
            meta = self._poll(timeout, float(interval), on_message)
        return _outcome(meta, propagate)

    wait = get

    def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the task's error now if it failed or was revoked (Celery's
        ``maybe_throw``); otherwise do nothing."""
        meta = self._meta()
        if propagate and meta.get("status") in states.PROPAGATE_STATES:
            value = _value(meta)
            if isinstance(value, BaseException):
                raise value

    def _raise_failed_parent(self) -> None:
        """Celery's ``_maybe_reraise_parent_error``: the oldest failed ancestor's error
        (a group ancestor: its first failed task's)."""
        parents = []
        node = self._parent
        while node is not None:
            parents.append(node)
            node = node._parent
        for node in reversed(parents):
            node.maybe_throw()

    def _stream(self, timeout: float | None,
                on_message: Callable[[dict[str, Any]], object] | None) -> Mapping[str, Any]:
        deadline = None if timeout is None else _monotonic() + timeout
        last_state = states.PENDING
        subscription = self.backend.subscribe(self.id)
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                meta = subscription.next(remaining)
                if meta is None:
                    if deadline is not None and _monotonic() >= deadline:
                        raise TimeoutError(self.id, timeout or 0.0, last_state)
                    continue
                last_state = str(meta.get("status"))
                if on_message is not None:
                    on_message(dict(meta))
                if last_state in states.READY_STATES:
                    return meta
        finally:
            subscription.close()

    def _poll(self, timeout: float | None, interval: float,
              on_message: Callable[[dict[str, Any]], object] | None) -> Mapping[str, Any]:
        deadline = None if timeout is None else _monotonic() + timeout
        last: Mapping[str, Any] | None = None
        while True:
            try:
                meta = self.backend.get(self.id)
            except ConnectionLost:
                # The backend is away (restarting): read again at the next interval,
                # within the caller's timeout.
                if deadline is not None and _monotonic() >= deadline:
                    raise
                meta = None
            if meta is not None and meta != last:
                last = meta
                if on_message is not None:
                    on_message(dict(meta))
                if meta.get("status") in states.READY_STATES:
                    return meta
            now = _monotonic()
            if deadline is not None and now >= deadline:
                state = str(last.get("status")) if last is not None else states.PENDING
                raise TimeoutError(self.id, timeout or 0.0, state)
            _sleep(interval if deadline is None else min(interval, deadline - now))

    # -- asyncio: awaiting results without blocking the loop ------------------------------
    #
    # The same rules as ``get`` (the checks, ``propagate``/``follow_parents``, the
    # stream or the polling, the timeout naming the last state), read through the
    # running loop's result backend (``App.async_backend``).

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
    ) -> Any:
        """``get``, awaited: wait for the task without blocking the event loop, and
        return its result. The arguments are ``get``'s; ``timeout`` holds for the whole
        wait, and a cancelled ``await`` closes the subscription it opened.

        Raises:
            TimeoutError: as ``get`` (wiretask's, also the built-in ``TimeoutError``).
            WouldBlock: inside a running task, as ``get`` (an ``async def`` task awaiting
                another one holds a slot of the worker's asyncio pool).
        """
        if disable_sync_subtasks:
            _assert_will_not_block()
        if self.ignore_result:
            return None
        _check_interval(interval)
        backend = self.app.async_backend
        if propagate and follow_parents:
            await self._araise_failed_parent(backend)
        if isinstance(backend, AsyncReplyRouted):
            backend.check_wait(self.id)  # rpc://: states that go elsewhere never come
        if interval is None:
            meta = await self._astream(backend, timeout, on_message)
        else:
            meta = await self._apoll(backend, timeout, float(interval), on_message)
        return _outcome(meta, propagate)

    async def astates(self, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The task's state changes as they happen, for ``async for``: each as Celery's
        meta dict (``status``, ``result``, ...), the current state first, each once, in
        order, ending after the ready state (which is never missed: a late iterator gets
        it first). ``timeout``: seconds for the whole iteration, then wiretask's
        ``TimeoutError``. Leaving the loop early closes the subscription when the
        iterator is collected; ``contextlib.aclosing(result.astates())`` closes it at
        once."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last_state = states.PENDING
        backend = self.app.async_backend
        if isinstance(backend, AsyncReplyRouted):
            backend.check_wait(self.id)  # rpc://: states that go elsewhere never come
        subscription = await backend.subscribe(self.id)
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                meta = await self._anext_state(subscription, remaining, timeout, last_state)
                last_state = str(meta.get("status"))
                yield dict(meta)
                if last_state in states.READY_STATES:
                    return
        finally:
            await subscription.close()

    async def _anext_state(
        self, subscription: AsyncSubscription, remaining: float | None,
        timeout: float | None, last_state: str,
    ) -> Mapping[str, Any]:
        """The subscription's next state, or ``TimeoutError`` once ``remaining`` (None:
        no limit) seconds passed."""
        if remaining is not None and remaining <= 0:
            raise TimeoutError(self.id, timeout or 0.0, last_state)
        meta = await subscription.next(remaining)
        if meta is not None:
            return meta
        if subscription.closed:
            raise TransportError(
                f"the subscription to task {self.id} was closed while waiting (the app's "
                "asyncio backend was closed)"
            )
        raise TimeoutError(self.id, timeout or 0.0, last_state)

    async def _araise_failed_parent(self, backend: AsyncResultBackend) -> None:
        node = self._parent
        while node is not None:
            meta = await backend.get(node.id)
            if meta is not None and meta.get("status") in states.PROPAGATE_STATES:
                value = _value(meta)
                if isinstance(value, BaseException):
                    raise value
            node = node._parent

    async def _astream(
        self, backend: AsyncResultBackend, timeout: float | None,
        on_message: Callable[[dict[str, Any]], object] | None,
    ) -> Mapping[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last_state = states.PENDING
        async with await backend.subscribe(self.id) as subscription:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                meta = await self._anext_state(subscription, remaining, timeout, last_state)
                last_state = str(meta.get("status"))
                if on_message is not None:
                    on_message(dict(meta))
                if last_state in states.READY_STATES:
                    return meta

    async def _apoll(
        self, backend: AsyncResultBackend, timeout: float | None, interval: float,
        on_message: Callable[[dict[str, Any]], object] | None,
    ) -> Mapping[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last: Mapping[str, Any] | None = None
        while True:
            meta = await backend.get(self.id)
            if meta is not None and meta != last:
                last = meta
                if on_message is not None:
                    on_message(dict(meta))
                if meta.get("status") in states.READY_STATES:
                    return meta
            now = loop.time()
            if deadline is not None and now >= deadline:
                state = str(last.get("status")) if last is not None else states.PENDING
                raise TimeoutError(self.id, timeout or 0.0, state)
            await asyncio.sleep(interval if deadline is None else min(interval, deadline - now))


class EagerResult(AsyncResult):
    """The result of a task run here (``Task.apply``, ``task_always_eager``): known at
    once, nothing read from a backend. Behaves like Celery's ``EagerResult``."""

    def __init__(self, id: str, ret_value: Any, state: str, traceback: str | None = None,
                 name: str | None = None, *, app: App | None = None) -> None:
        super().__init__(id, app=app)
        self._result = ret_value
        self._state = state
        self._traceback = traceback
        self._name = name
        self._date_done = datetime.now(UTC)

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    @property
    def name(self) -> str | None:
        return self._name

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        """Celery's: the task ran already, here; the result only reads ``REVOKED`` now
        (no worker is told anything)."""
        del args, kwargs
        self._state = states.REVOKED

    def _meta(self) -> Mapping[str, Any]:
        return {"task_id": self.id, "status": self._state, "result": self._result,
                "traceback": self._traceback, "name": self.name}

    @property
    def state(self) -> str:
        return self._state

    @property
    def result(self) -> Any:
        return self._result

    @property
    def info(self) -> Any:
        return self._result

    @property
    def traceback(self) -> str | None:
        return self._traceback

    @property
    def date_done(self) -> datetime | None:
        return self._date_done

    @property
    def children(self) -> list[AsyncResult | GroupResult] | None:
        return None

    def ready(self) -> bool:
        return True

    def forget(self) -> None:
        return None

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
    ) -> Any:
        """The result at once: the return value, or the exception (raised when
        ``propagate``). ``timeout``/``interval`` mean nothing here."""
        del timeout, interval, follow_parents
        if disable_sync_subtasks:
            _assert_will_not_block()
        if on_message is not None:
            on_message(dict(self._meta()))
        if self._state == states.SUCCESS:
            return self._result
        if self._state in states.PROPAGATE_STATES and propagate:
            value = self._result
            raise value if isinstance(value, BaseException) else Exception(value)
        return self._result

    wait = get

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
    ) -> Any:
        """``get``: the result is known already."""
        return self.get(timeout, propagate, interval, on_message, disable_sync_subtasks,
                        follow_parents)

    async def astates(self, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The one, final state."""
        del timeout
        yield dict(self._meta())


_monotonic = time.monotonic
_sleep = time.sleep


def _check_interval(interval: object) -> None:
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0
    ):
        raise ValidationError("interval", f"must be a number of seconds > 0, got {interval!r}")


def _outcome(meta: Mapping[str, Any], propagate: bool) -> Any:
    """What ``get`` returns for a ready ``meta``: the result, or (``propagate``) the
    exception of a failed or revoked task, raised."""
    value = _value(meta)
    if propagate and meta.get("status") in states.PROPAGATE_STATES and isinstance(
        value, BaseException
    ):
        raise value
    return value


def _value(meta: Mapping[str, Any]) -> Any:
    result = meta.get("result")
    if meta.get("status") in states.EXCEPTION_STATES and isinstance(result, Mapping):
        return exception_from_meta(result)
    return result


def _datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return parse_iso(value, field="date_done", decoding=True)
