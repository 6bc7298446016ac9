"""The calling API users touch: ``App``, ``Task``, signatures and ``AsyncResult``.

This is Celery's calling API (``celery-protocol.md`` §A) on wiretask's core:

* ``task(*a, **kw)`` runs the function here, no message;
* ``task.delay(*a, **kw)`` sends with default options (every keyword is a task kwarg);
* ``task.apply_async(args, kwargs, **options)`` and ``app.send_task(name, ...)`` send with
  options; ``task.apply_many`` / ``app.send_many`` send many in one round trip;
* ``task.s(...)`` / ``task.si(...)`` build signatures for ``link``/``link_error``;
* ``AsyncResult.get(on_message=...)`` reads and streams states from the result backend.

Everything that can be validated is validated before any I/O (``wiretask.calling``).
Publishing goes through the retry driver (``wiretask.retry``) with the call's policy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Self, TypeVar, overload
from zoneinfo import ZoneInfo

import attrs

from wiretask import calling
from wiretask.codecs import DEFAULT_MAX_DECOMPRESSED_SIZE, Registry, default_registry
from wiretask.errors import (
    ArgumentsError,
    ImproperlyConfigured,
    NotRegistered,
    Retry,
    TaskError,
    TimeoutError,
    ValidationError,
)
from wiretask.protocol import states
from wiretask.protocol.celery import encode
from wiretask.protocol.envelope import TaskMessage
from wiretask.protocol.frame import Outgoing
from wiretask.protocol.signature import Signature
from wiretask.results import ResultBackend, backend_from_url
from wiretask.results.exceptions import exception_from_meta
from wiretask.retry import RetryPolicy, call_with_retry
from wiretask.transports.base import Transport
from wiretask.transports.url import mask_url, transport_from_url

__all__ = ["App", "AsyncResult", "Request", "Settings", "Task", "TaskSignature"]

P = ParamSpec("P")
R = TypeVar("R")

#: App settings, with Celery's names where Celery has one, and their defaults.
DEFAULT_SETTINGS: Mapping[str, Any] = {
    "broker_url": None,
    "result_backend": None,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ("json", "msgpack"),
    "result_accept_content": None,
    "task_compression": None,
    # wiretask: compress only bodies of at least this many bytes (None: always).
    "task_compression_threshold": None,
    "task_publish_retry": True,
    # The documented Celery policy (the code default's interval_max is 1; see the spec).
    "task_publish_retry_policy": {
        "max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2,
    },
    "task_default_queue": "celery",
    "task_default_exchange": "",
    "task_default_routing_key": None,
    "task_default_priority": None,
    "task_default_delivery_mode": 2,
    "task_ignore_result": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_track_started": False,
    "task_default_retry_delay": 180,
    "task_max_retries": 3,
    "result_expires": 86400,
    "timezone": "UTC",
    # wiretask: the decompressed-size cap applied to every received body.
    "max_decompressed_size": DEFAULT_MAX_DECOMPRESSED_SIZE,
}

#: Keyword options ``@app.task(...)`` accepts besides the per-call options.
_TASK_ATTRIBUTES = frozenset(
    {"name", "bind", "typing", "max_retries", "default_retry_delay", "track_started",
     "acks_late", "base"}
)


class Settings(dict[str, Any]):
    """``app.conf``: a dict of settings with attribute access (``app.conf.task_serializer``).

    Every change through the mapping API bumps ``_version``, so what is derived from the
    settings (the calling API's validated option plans) is recomputed. A value mutated in
    place (``app.conf.some_dict["key"] = ...``) is not seen: assign a new value instead
    (``task_publish_retry_policy``, read on every call, is the exception).
    """

    _version: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_version", 0)

    def _changed(self) -> None:
        # ``__dict__.get``: unpickling and copying set items before the instance state.
        object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def setdefault(self, key: str, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        self._changed()
        return value

    def pop(self, key: str, *default: Any) -> Any:
        value = super().pop(key, *default)
        self._changed()
        return value

    def popitem(self) -> tuple[str, Any]:
        item = super().popitem()
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()


def _data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "wiretask"


@attrs.define(kw_only=True)
class Request:
    """The context of the task being run: ``self.request`` inside a bound task.

    A direct call (``task(...)``) sees ``id=None`` and ``called_directly=True``, as in
    Celery; the worker fills everything from the message.
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
    #: The message being run (worker only): ``Task.retry`` derives the re-sent one from it.
    message: TaskMessage | None = None


_current_request: ContextVar[Request | None] = ContextVar("wiretask_request", default=None)


class App:
    """A wiretask application: settings, registered tasks, a broker and a result backend.

    Args:
        main: the app's name; task names of functions defined in ``__main__`` use it.
        broker: broker URL (``memory://``, ``sqlite:///path.db``, ``redis://...``).
            Default: ``$WIRETASK_BROKER_URL``, else an embedded SQLite file under
            ``$XDG_DATA_HOME/wiretask/`` named after ``main``.
        backend: result backend URL. Default: ``$WIRETASK_RESULT_BACKEND``, else the
            broker's URL (every bundled broker also stores results).
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
        **settings: any of ``DEFAULT_SETTINGS`` (Celery's names).
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        registry: Registry | None = None,
        clock: Callable[[], datetime] | None = None,
        transport: Callable[[], Transport] | None = None,
        **settings: Any,
    ) -> None:
        if transport is not None and (isinstance(transport, Transport) or not callable(transport)):
            raise ImproperlyConfigured(
                f"transport= takes a factory (a callable returning a new Transport), got "
                f"{transport!r}: the app and each worker need a transport of their own",
                setting="transport",
            )
        self.main = main
        self.conf = Settings(DEFAULT_SETTINGS)
        self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._registry = registry
        self._clock = clock
        self._lock = threading.RLock()
        self._transport: Transport | None = None
        self._transport_factory = transport
        self._check_transport_source()
        self._backend: ResultBackend | None = None
        self._declared: set[str] = set()
        self._call_builder: calling.CallBuilder | None = None
        self._contexts: dict[tuple[int, int], calling.CallContext] = {}

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'} broker={self.broker_url}>"

    # -- configuration ----------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        url = self.conf.broker_url or os.environ.get("WIRETASK_BROKER_URL")
        if url:
            return str(url)
        return f"sqlite:///{_data_dir() / ((self.main or 'wiretask') + '.db')}"

    @property
    def backend_url(self) -> str:
        url = self.conf.result_backend or os.environ.get("WIRETASK_RESULT_BACKEND")
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
        name = self.conf.timezone or "UTC"
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
    def transport(self) -> Transport:
        """The app's broker connection (created on first use, connected lazily)."""
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = self.new_transport()
        return self._transport

    def new_transport(self) -> Transport:
        """A fresh transport for the broker URL, or from the ``transport`` factory (the
        worker uses its own).

        Raises:
            ImproperlyConfigured: a bad broker URL, or a factory that did not return a
                ``Transport``.
        """
        if self._transport_factory is None:
            return transport_from_url(self.broker_url)
        self._check_transport_source()
        made = self._transport_factory()
        if not isinstance(made, Transport):
            raise ImproperlyConfigured(
                f"the transport factory returned {made!r}, not a Transport",
                setting="transport",
            )
        return made

    def _check_transport_source(self) -> None:
        if self._transport_factory is not None and self.conf.broker_url:
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
                    self._backend = backend_from_url(
                        self.backend_url,
                        serializer=self.conf.result_serializer,
                        expires=self.conf.result_expires,
                        registry=self.registry,
                    )
        return self._backend

    def close(self) -> None:
        """Close the broker connection and the result backend."""
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            if self._backend is not None:
                self._backend.close()
                self._backend = None
            self._declared.clear()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- tasks ------------------------------------------------------------------------

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

        Options: ``name``, ``bind``, ``typing`` (check arguments before sending, default
        True), ``max_retries``, ``default_retry_delay``, ``track_started``, and the
        per-call defaults ``serializer``, ``compression``, ``queue``, ``exchange``,
        ``routing_key``, ``priority``, ``expires``, ``ignore_result``, ``time_limit``,
        ``soft_time_limit``, ``delivery_mode``.
        """
        for key, value in options.items():
            if key not in _TASK_ATTRIBUTES and key not in calling.TASK_OPTIONS:
                raise ValidationError(key, "unknown task option", value=value)

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self, function, **options)
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def task_name(self, fn: Callable[..., Any]) -> str:
        """Celery's naming rule: ``module.qualname``, with ``main`` standing in for
        ``__main__``."""
        module = fn.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{fn.__qualname__}"

    def signature(
        self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskSignature:
        """A signature for a task by name (it need not be registered here)."""
        return TaskSignature(
            task=name, args=tuple(args), kwargs=dict(kwargs or {}), options=options, app=self
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
                origin=_origin(), reply_to=_thread_oid(self)
            )
        return context

    @property
    def _builder(self) -> calling.CallBuilder:
        builder = self._call_builder
        if builder is None or builder.registry is not self.registry:
            builder = self._call_builder = calling.CallBuilder(self.registry, self.conf)
        return builder

    def build_call(
        self, name: str, args: object = None, kwargs: object = None, **options: Any
    ) -> calling.Call:
        """Validate a call and build its message without sending it."""
        return self.build_many(name, ((args, kwargs),), **options)[0]

    def build_many(
        self, name: str, arguments: Iterable[tuple[object, object]], **options: Any
    ) -> list[calling.Call]:
        """Validate several calls of one task with the same options, one ``(args,
        kwargs)`` pair each, and build their messages without sending them. The options
        are resolved once, at one instant (the same ``eta``/``expires`` for all)."""
        task = self.tasks.get(name)
        # The transport first: creating it imports the driver, and "now" must be read
        # after that, or a short countdown is already due when it reaches the broker.
        capabilities = self.transport.capabilities
        return self._builder.build_many(
            name, arguments, options, now=self.now(), context=self._context(),
            task_defaults=None if task is None else task.defaults,
            capabilities=capabilities,
            check_arguments=None if task is None else task.check_arguments,
        )

    def send_task(
        self, name: str, args: object = None, kwargs: object = None, **options: Any
    ) -> AsyncResult:
        """Send a task by name (the function need not exist here). Options as
        ``Task.apply_async``. Returns its ``AsyncResult``.

        Raises:
            ValidationError: an option or argument is invalid (nothing was sent).
            EncodeError: an argument cannot be serialized (nothing was sent).
            PublishError: the broker could not be reached within the retry policy.
        """
        return self._send([self.build_call(name, args, kwargs, **options)])[0]

    def send_many(
        self,
        signatures: Iterable[Signature],
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
        self._publish(calls)
        return [
            AsyncResult(c.message.id, app=self, ignore_result=c.message.ignore_result)
            for c in calls
        ]

    def _publish(self, calls: Sequence[calling.Call]) -> None:
        if not calls:
            return
        registry = self.registry
        frames = [
            encode(c.message, registry, compress_threshold=c.compression_threshold) for c in calls
        ]
        transport = self.transport
        native_delay = transport.capabilities.native_delay
        outgoing = [
            Outgoing(frame, c.route, c.eta if native_delay else None)
            for frame, c in zip(frames, calls, strict=True)
        ]
        queues = {c.route.queue for c in calls if not c.route.exchange}

        def attempt() -> None:
            for queue in queues - self._declared:
                transport.declare_queue(queue)
                self._declared.add(queue)
            if len(outgoing) == 1:
                one = outgoing[0]
                transport.publish(one.frame, one.route, not_before=one.not_before)
            else:
                transport.publish_many(outgoing)

        def recover() -> None:
            self._declared.clear()
            transport.connect()

        first = calls[0]
        call_with_retry(
            attempt,
            first.retry_policy,
            retry=first.retry,
            recover=recover,
            task_id=first.message.id,
        )

    def AsyncResult(self, task_id: str) -> AsyncResult:  # Celery's name
        return AsyncResult(task_id, app=self)


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


def _thread_oid(app: App) -> str:
    """A UUID-format id stable per app, process and thread (Celery's ``thread_oid``,
    sent as ``reply_to``). ``App._thread_context`` keeps it per process and thread."""
    node = f"{_hostname()}/{os.getpid()}/{threading.get_ident()}/{id(app)}"
    return str(uuid.uuid3(uuid.NAMESPACE_OID, node))


#: The kwargs of an ``apply_many`` item given as args alone (the builder copies it).
_NO_KWARGS: dict[str, Any] = {}


class Task(Generic[P, R]):
    """A registered task. Call it to run it here; ``delay``/``apply_async`` to send it."""

    def __init__(self, app: App, fn: Callable[..., R], **options: Any) -> None:
        self.app = app
        self.run = fn
        self.name: str = options.pop("name", None) or app.task_name(fn)
        self.bind: bool = bool(options.pop("bind", False))
        self.typing: bool = bool(options.pop("typing", True))
        self.max_retries: int | None = options.pop("max_retries", app.conf.task_max_retries)
        self.default_retry_delay: float = options.pop(
            "default_retry_delay", app.conf.task_default_retry_delay
        )
        self.track_started: bool | None = options.pop("track_started", None)
        options.pop("acks_late", None)  # wiretask always acknowledges after the task ran
        options.pop("base", None)
        #: Task-level defaults for the per-call options (call > task > setting); read-only
        #: (the calling API validates them once and keeps the result).
        self.defaults: Mapping[str, Any] = types.MappingProxyType(
            {k: v for k, v in options.items() if v is not None}
        )
        functools.update_wrapper(self, fn)
        self._signature = inspect.signature(fn)
        self._check = calling.argument_checker(self._signature)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    # -- running here -------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task body in this process: no message, no state, no callbacks."""
        request = Request(task=self.name, args=tuple(args), kwargs=dict(kwargs))
        token = _current_request.set(request)
        try:
            if self.bind:
                return self.run(self, *args, **kwargs)
            return self.run(*args, **kwargs)
        finally:
            _current_request.reset(token)

    @contextlib.contextmanager
    def running(self, request: Request) -> Iterator[Request]:
        """Make ``request`` the current one while the worker runs this task."""
        token = _current_request.set(request)
        try:
            yield request
        finally:
            _current_request.reset(token)

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
        return self.app.send_task(self.name, args, kwargs)

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
        ``kwargsrepr``, ...). See ``App.send_task`` for what it raises."""
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
        calls are validated and encoded before anything is sent."""
        arguments: list[tuple[object, object]] = []
        for item in calls:
            if (
                isinstance(item, tuple) and len(item) == 2
                and isinstance(item[0], list | tuple) and isinstance(item[1], Mapping)
            ):
                arguments.append(item)
            else:
                arguments.append((item, _NO_KWARGS))
        return self.app._send(self.app.build_many(self.name, arguments, **options))

    def signature(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> TaskSignature:
        return TaskSignature(
            task=self.name, args=tuple(args), kwargs=dict(kwargs or {}), options=options,
            app=self.app,
        )

    def s(self, *args: Any, **kwargs: Any) -> TaskSignature:
        """A signature with partial arguments (the parent's result is prepended)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> TaskSignature:
        """An immutable signature: callbacks get exactly these arguments."""
        return attrs.evolve(self.signature(args, kwargs), immutable=True)

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
        task_id = task_id or self.request.id
        if task_id is None:
            raise ValidationError("task_id", "update_state outside a worker needs a task_id")
        request = self.request
        self.app.backend.store(
            task_id,
            states.make_meta(
                task_id, state, meta,
                parent_id=request.parent_id if request.id == task_id else None,
                group_id=request.group if request.id == task_id else None,
            ),
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

        Outside a worker it re-raises ``exc`` (as Celery does). Past ``max_retries`` it
        raises ``exc``, or a ``TaskError`` saying the limit was reached when there is none.
        """
        request = self.request
        message = request.message
        if request.called_directly or message is None:
            if exc is not None:
                raise exc
            raise ValidationError("retry", "Task.retry() called outside a worker")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and message.retries >= limit:
            if exc is not None:
                raise exc
            raise TaskError(f"{self.name}[{message.id}]: max retries ({limit}) exceeded")
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
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
        if countdown is not None:
            retry_options["countdown"] = countdown
        else:
            retry_options["eta"] = eta
        retry_options.update(options)
        self.app.send_task(
            self.name,
            message.args if args is None else args,
            message.kwargs if kwargs is None else kwargs,
            **retry_options,
        )
        signal = Retry(exc=exc, when=countdown if countdown is not None else eta)
        if throw:
            raise signal
        return signal


@attrs.frozen(kw_only=True)
class TaskSignature(Signature):
    """A signature bound to an app: ``task.s(...)``. Call, ``delay`` or ``apply_async`` it;
    pass it as ``link``/``link_error``. On the wire it is Celery's signature dict."""

    app: App = attrs.field(eq=False, repr=False)

    def set(self, **options: Any) -> TaskSignature:
        """Return a copy with ``options`` merged over the stored ones."""
        calling.check_options(options)
        return attrs.evolve(self, options={**self.options, **options})

    def clone(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> TaskSignature:
        return super().clone(args, kwargs, **options)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Send it: partial args prepended (unless immutable), kwargs and options merged."""
        sig = self.clone(args, kwargs, **options)
        return self.app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run it here (the task must be registered in this app)."""
        sig = self.clone(args, kwargs)
        task = self.app.tasks.get(sig.task)
        if task is None:
            raise NotRegistered(sig.task)
        return task(*sig.args, **sig.kwargs)

    def link(self, callback: Signature) -> TaskSignature:
        """Add a success callback (``options['link']``)."""
        return self._add_option("link", callback)

    def on_error(self, errback: Signature) -> TaskSignature:
        """Add an error callback (``options['link_error']``)."""
        return self._add_option("link_error", errback)

    def _add_option(self, key: str, sig: Signature) -> TaskSignature:
        current = self.options.get(key)
        items = [] if current is None else (
            list(current) if isinstance(current, list | tuple) else [current]
        )
        items.append(sig.to_dict())
        return attrs.evolve(self, options={**self.options, key: items})


class AsyncResult:
    """The result of a sent task, read from the app's result backend.

    ``get(on_message=...)`` works on every bundled backend and hands every state change
    to ``on_message`` as Celery's meta dict; a late caller first receives the current
    state, so it never misses the final one.
    """

    def __init__(self, id: str, *, app: App, ignore_result: bool = False) -> None:
        self.id = id
        self.app = app
        self.ignore_result = ignore_result

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

    status = state

    @property
    def info(self) -> Any:
        """The result, the exception of a failed task, or a custom state's meta."""
        return _value(self._meta())

    result = info

    @property
    def traceback(self) -> str | None:
        value = self._meta().get("traceback")
        return str(value) if value is not None else None

    @property
    def date_done(self) -> str | None:
        value = self._meta().get("date_done")
        return str(value) if value is not None else None

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def forget(self) -> None:
        """Remove the stored result."""
        self.backend.forget(self.id)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[dict[str, Any]], object] | None = None,
    ) -> Any:
        """Wait for the task to finish and return its result.

        Args:
            timeout: seconds to wait (None: forever). On expiry a wiretask
                ``TimeoutError`` names the task id and the last state seen.
            propagate: re-raise the task's exception if it failed or was revoked.
            interval: accepted for Celery compatibility; backends push state changes
                (memory, Redis) or poll on their own short schedule (SQLite).
            on_message: called with every state change's meta dict, in order, starting
                with the current state.
        """
        del interval
        if self.ignore_result:
            return None
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
                    break
        finally:
            subscription.close()
        value = _value(meta)
        if propagate and last_state in states.PROPAGATE_STATES and isinstance(
            value, BaseException
        ):
            raise value
        return value

    wait = get


_monotonic = time.monotonic


def _value(meta: Mapping[str, Any]) -> Any:
    result = meta.get("result")
    if meta.get("status") in states.EXCEPTION_STATES and isinstance(result, Mapping):
        return exception_from_meta(result)
    return result

