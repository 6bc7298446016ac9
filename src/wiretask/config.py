"""Settings: every Celery setting name, its status in wiretask, and ``app.conf``.

A Celery project's configuration carries over setting by setting. Each of Celery 5.7's
settings (``celery.app.defaults.NAMESPACES``; a test keeps this table in step with it)
has one of three statuses here:

* **honoured**: it behaves as in Celery (some only for the values listed in the note;
  any other value is refused);
* **refused**: setting it raises ``ImproperlyConfigured`` at once, naming it, saying why
  and what to do instead (most are features wiretask does not have yet);
* **not applicable**: it configures something wiretask does not have and that cannot be
  selected here either (a result backend wiretask does not offer, Kombu's connection
  pool), so it is accepted and has no effect, as it would have none in Celery without
  that part.

Unknown names are refused with the nearest known name (``task_serialzer`` ->
``task_serializer``), and Celery's old upper-case names (``CELERY_TASK_SERIALIZER``,
``BROKER_URL``) are refused with the new name to use: wiretask reads only the new
names, as Celery's documentation has asked since 4.0.

``docs/settings.md`` is generated from this table (:func:`render_markdown`).
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import os
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Literal, Self

import attrs

from wiretask.beat.settings import CHECKS as BEAT_CHECKS
from wiretask.codecs import DEFAULT_MAX_DECOMPRESSED_SIZE
from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.routing import declared_queues, prepare_routes
from wiretask.tasks import TASK_OPTIONS, check_annotations, parse_rate
from wiretask.transports.base import Transport

__all__ = [
    "BROKER_ONLY",
    "HONOURED",
    "NOT_APPLICABLE",
    "OLD_NAMES",
    "REFUSED",
    "SETTINGS",
    "Configuration",
    "Setting",
    "Settings",
    "broker_options",
    "check_setting",
    "read_object",
    "render_markdown",
]

Status = Literal["honoured", "refused", "not applicable"]
HONOURED: Status = "honoured"
REFUSED: Status = "refused"
NOT_APPLICABLE: Status = "not applicable"

@attrs.frozen
class Setting:
    """One setting: its name, status, wiretask's default and why.

    ``only`` (honoured settings): the values wiretask honours; any other value is refused
    with ``note``. ``celery``: False for wiretask's own settings. ``check``: validates a
    value (raises ``ImproperlyConfigured`` naming the setting) and returns it, possibly
    normalised.
    """

    name: str
    status: Status
    note: str = ""
    default: Any = None
    only: tuple[Any, ...] | None = None
    celery: bool = True
    check: Callable[[str, Any], Any] | None = attrs.field(default=None, eq=False)


# -- value checks ------------------------------------------------------------------------


def _bool(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"{name} must be True or False, got {value!r}", setting=name)
    return value


def _optional_bool(name: str, value: Any) -> Any:
    return None if value is None else _bool(name, value)


def _seconds(name: str, value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise ImproperlyConfigured(
            f"{name} must be a number of seconds (or a timedelta), got {value!r}", setting=name
        )
    return value


def _count(name: str, value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ImproperlyConfigured(f"{name} must be an integer >= 1, got {value!r}", setting=name)
    return value


def _non_negative(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(f"{name} must be an integer >= 0, got {value!r}", setting=name)
    return value


def _mapping(name: str, value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ImproperlyConfigured(
            f"{name} must be a mapping with string keys, got {value!r}", setting=name
        )
    return dict(value)


def _module_names(name: str, value: Any) -> Any:
    """``imports``/``include``: a module name or a sequence of them (Celery's shapes)."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset) or not all(
        isinstance(item, str) and item for item in items
    ):
        raise ImproperlyConfigured(
            f"{name} must be a module name or a list of module names, got {value!r}",
            setting=name,
        )
    return tuple(items)


def _path(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ImproperlyConfigured(f"{name} must be a file path, got {value!r}", setting=name)
    return value


def _positive(name: str, value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not value > 0):
        raise ImproperlyConfigured(f"{name} must be a number > 0, got {value!r}", setting=name)
    return value


def _ssl(name: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise ImproperlyConfigured(
        f"{name} must be True, False or a dict of TLS options, got {value!r}", setting=name
    )


def _string(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise ImproperlyConfigured(f"{name} must be a string, got {value!r}", setting=name)
    return value


def _routes(name: str, value: Any) -> Any:
    prepare_routes(value)  # raises, naming the entry
    return value


def _queues(name: str, value: Any) -> Any:
    declared_queues(value)
    return value


def _rate(name: str, value: Any) -> Any:
    try:
        parse_rate(value, field=name)
    except ValidationError as exc:
        raise ImproperlyConfigured(f"{name}: {exc.problem}", setting=name) from exc
    return value


def _annotations(name: str, value: Any) -> Any:
    check_annotations(value)
    return value


# -- the table ---------------------------------------------------------------------------

_EVENTS = "Celery's events (spec/events.md)"
_CONTROL = "the remote-control channel (spec/control.md)"
_NO_CONTROL = "wiretask's beat is not on the remote-control channel"
_IN_URL = "put it in broker_url (and give transport options in broker_transport_options)"


def _backend(kind: str) -> str:
    return (
        f"only Celery's {kind} result backend reads it; wiretask has no such backend "
        "(a result_backend URL for it is refused)"
    )


def _rows() -> Iterator[Setting]:
    h, r, n = HONOURED, REFUSED, NOT_APPLICABLE
    yield from (
        Setting("accept_content", h, "content types the worker and the result reader accept; "
                "wiretask's default also accepts msgpack; pickle needs an explicit opt-in "
                "(App(registry=default_registry(pickle=True, ...)))",
                ("json", "msgpack")),
        Setting("result_accept_content", h, "content types accepted when reading results "
                "(None: accept_content)"),
        Setting("enable_utc", h, "only True: protocol 2 has no utc flag and wiretask's "
                "clock is UTC unless timezone is set; set timezone instead of False",
                True, only=(True,)),
        Setting("imports", h, "modules imported when the app is finalized (first use of "
                "app.tasks, or the worker starting)", (), check=_module_names),
        Setting("include", h, "as imports", (), check=_module_names),
        Setting("timezone", h, "the zone of eta/expires headers and app.now() (default UTC)",
                "UTC", check=_string),
    )
    yield from _beat_rows()
    yield from (
        Setting("broker_url", h, "memory://, sqlite:///path.db, redis://..., amqp://... (default: "
                "$WIRETASK_BROKER_URL, else the embedded SQLite file; see App)"),
        Setting("broker_read_url", r, "wiretask uses one broker URL: set broker_url"),
        Setting("broker_write_url", r, "wiretask uses one broker URL: set broker_url"),
        Setting("broker_transport", r, "the URL's scheme picks the transport: set broker_url"),
        Setting("broker_transport_options", h, "passed to the transport, which refuses an "
                "option it does not know by name (Redis: visibility_timeout, "
                "global_keyprefix, ... and redis-py's connection options)", {},
                check=_mapping),
        Setting("broker_connection_timeout", h, "AMQP: seconds to connect and open (None: "
                "the transport's 4 s, Celery's default); other brokers refuse it: give the "
                "transport's own option (Redis: socket_connect_timeout in "
                "broker_transport_options)", check=_seconds),
        Setting("broker_connection_retry", r, "a worker always reconnects; publish retries "
                "follow task_publish_retry_policy"),
        Setting("broker_connection_retry_on_startup", r, "a worker always reconnects; "
                "publish retries follow task_publish_retry_policy"),
        Setting("broker_connection_max_retries", r, "a worker always reconnects; publish "
                "retries follow task_publish_retry_policy"),
        Setting("broker_channel_error_retry", r, "an AMQP channel error (a queue declared "
                "with other arguments, a missing queue) is reported, not retried; a lost "
                "connection is (the worker reconnects)"),
        Setting("broker_failover_strategy", r, "wiretask connects to one broker URL"),
        Setting("broker_heartbeat", h, "AMQP: heartbeat seconds of every connection, the "
                "app's and the worker's (None: the transport's 60 s; Celery's worker uses "
                "120 and its client none; 0 disables); other brokers have no heartbeats and "
                "ignore it, as Celery's do", check=_seconds),
        Setting("broker_heartbeat_checkrate", h, "AMQP: heartbeat checks per heartbeat "
                "interval (None: four); ignored by other brokers, as in Celery",
                check=_positive),
        Setting("broker_login_method", h, "AMQP: the login method (AMQPLAIN, PLAIN, "
                "EXTERNAL, GSSAPI); ignored by other brokers, as in Celery", check=_string),
        Setting("broker_native_delayed_delivery_queue_type", h, "AMQP: the type of the "
                "delay ladder's queues (Celery 5.5+'s native delayed delivery); other "
                "brokers delay messages themselves and ignore it", "quorum",
                only=("classic", "quorum")),
        Setting("broker_pool_limit", n, "Kombu's producer connection pool: wiretask keeps "
                "one broker connection per app and per worker", 10),
        Setting("broker_pool_acquire_timeout", n, "Kombu's producer connection pool: "
                "wiretask keeps one broker connection per app and per worker"),
        Setting("broker_use_ssl", h, "AMQP: True, or py-amqp's TLS options (keyfile, "
                "certfile, ca_certs, cert_reqs, server_hostname, ...); other brokers refuse "
                "it: use a rediss:// URL with its ssl_* query options", check=_ssl),
    )
    for key in ("host", "port", "user", "password", "vhost"):
        yield Setting(f"broker_{key}", r, _IN_URL)
    backends = {
        "cache": ("cache", ("backend", "backend_options")),
        "cassandra": ("Cassandra", ("entry_ttl", "keyspace", "port", "read_consistency",
                                    "servers", "bundle_path", "table", "write_consistency",
                                    "auth_provider", "auth_kwargs", "options")),
        "s3": ("S3", ("access_key_id", "secret_access_key", "bucket", "base_path",
                      "endpoint_url", "region")),
        "azureblockblob": ("Azure Block Blob", (
            "container_name", "retry_initial_backoff_sec", "retry_increment_base",
            "retry_max_attempts", "base_path", "connection_timeout", "read_timeout")),
        "gcs": ("Google Cloud Storage", ("bucket", "project", "base_path", "ttl")),
        "couchbase": ("Couchbase", ("backend_settings",)),
        "arangodb": ("ArangoDB", ("backend_settings",)),
        "mongodb": ("MongoDB", ("backend_settings",)),
        "cosmosdbsql": ("CosmosDB", ("database_name", "collection_name", "consistency_level",
                                     "max_retry_attempts", "max_retry_wait_time")),
        "elasticsearch": ("Elasticsearch", ("retry_on_timeout", "max_retries", "timeout",
                                            "save_meta_as_text")),
        "database": ("SQLAlchemy database", (
            "url", "engine_options", "engine_callback", "short_lived_sessions",
            "table_schemas", "table_names", "create_tables_at_setup")),
    }
    for prefix, (kind, keys) in backends.items():
        for key in keys:
            yield Setting(f"{prefix}_{key}", n, _backend(kind))
    yield from (
        Setting("control_exchange", h, f"the pidbox namespace of {_CONTROL}: exchanges "
                "<name>.pidbox and reply.<name>.pidbox", "celery", check=_string),
        Setting("control_queue_ttl", h, f"x-message-ttl of the queues of {_CONTROL}", 300.0,
                check=_seconds),
        Setting("control_queue_expires", h, f"x-expires of the queues of {_CONTROL} (on "
                "Redis: the binding table's deadline)", 10.0, check=_seconds),
        Setting("control_queue_exclusive", h, f"only True: the queues of {_CONTROL} are "
                "exclusive", True, only=(True,)),
        Setting("control_queue_durable", h, f"only False: the queues of {_CONTROL} are "
                "transient", False, only=(False,)),
    )
    yield from (
        Setting("event_exchange", h, f"the exchange of {_EVENTS}: topic on AMQP, fanout on "
                "Redis", "celeryev", check=_string),
        Setting("event_serializer", h, f"the serializer of {_EVENTS} a worker or client "
                "sends", "json", check=_string),
        Setting("event_queue_prefix", h, "the name prefix of the queues wiretask's event "
                "readers listen on (wiretask events, wiretask exporter --events)",
                "celeryev", check=_string),
        Setting("event_queue_ttl", h, "x-message-ttl of those queues", 5.0, check=_seconds),
        Setting("event_queue_expires", h, "x-expires of those queues", 60.0, check=_seconds),
        Setting("event_queue_exclusive", h, "those queues are exclusive to their reader",
                False, check=_bool),
        Setting("event_queue_durable", h, "only False: those queues are transient", False,
                only=(False,)),
    )
    for key in ("backend_use_ssl", "db", "host", "max_connections", "username", "password",
                "port", "socket_timeout", "socket_connect_timeout", "retry_on_timeout",
                "socket_keepalive"):
        yield Setting(f"redis_{key}", r, "give the Redis result backend's connection in the "
                      "result_backend URL and result_backend_transport_options")
    yield from (
        Setting("result_backend", h, "memory://, sqlite:///path.db, redis://..., rpc:// (default: "
                "$WIRETASK_RESULT_BACKEND, else the broker URL)"),
        Setting("result_cache_max", n, "wiretask does not cache results in the client "
                "(Celery's default, -1, means the same)", -1),
        Setting("result_compression", h, "compress stored results (Celery 5.7 reads them)"),
        Setting("result_exchange", n, "Celery 5.7's rpc:// backend reads it and ignores it "
                "(states go through the default exchange to the reply queue); wiretask's "
                "does the same", "celeryresults"),
        Setting("result_exchange_type", n, "Celery 5.7's rpc:// backend reads it and "
                "ignores it (states go through the default exchange to the reply queue); "
                "wiretask's does the same", "direct"),
        Setting("result_expires", h, "seconds (or a timedelta) a result is kept; None or 0: "
                "forever", 86400, check=_seconds),
        Setting("result_chord_expires", h, "seconds a chord's counting keys live on Redis "
                "(None: result_expires)", check=_seconds),
        Setting("result_failure_expires", r, "failures are kept for result_expires like "
                "every result"),
        Setting("result_persistent", h, "rpc://: send states as persistent messages "
                "(delivery mode 2; False: transient, Celery's default); the other backends "
                "store states and ignore it", False, check=_bool),
        Setting("result_extended", h, "the worker stores name, args, kwargs, worker, "
                "retries and queue with every state, as Celery's; AsyncResult reads them",
                False, check=_bool),
        Setting("result_serializer", h, "", "json"),
        Setting("result_backend_transport_options", h, "passed to the result backend, which "
                "refuses an option it does not know by name", {}, check=_mapping),
        Setting("result_chord_retry_interval", h, "how often celery.chord_unlock polls a "
                "chord's header (backends that do not count chords: SQLite, memory)", 1.0,
                check=_seconds),
        Setting("result_chord_join_timeout", h, "how long the worker completing a chord "
                "waits for the header's results when they nest groups, and "
                "celery.chord_unlock for all of them", 3.0, check=_seconds),
    )
    for key in ("backend_max_sleep_between_retries_ms", "backend_max_retries",
                "backend_base_sleep_between_retries_ms", "backend_always_retry"):
        yield Setting(f"result_{key}", r, "result backend operations are not retried by a "
                      "policy; a worker requeues a task whose outcome it could not store")
    for key in ("certificate", "cert_store", "key", "key_password", "digest"):
        yield Setting(f"security_{key}", r, "message signing (the auth serializer) is not "
                      "supported")
    yield from _task_rows()
    yield from _worker_rows()
    yield from (
        Setting("task_compression_threshold", h, "wiretask: compress only bodies of at least "
                "this many bytes (None: always)", celery=False),
        Setting("max_decompressed_size", h, "wiretask: the cap on a received body's "
                "size, in bytes, once decompressed (an uncompressed body's own size); a "
                "bigger one is dead-lettered before it is parsed",
                DEFAULT_MAX_DECOMPRESSED_SIZE, celery=False),
        Setting("task_default_retry_delay", h, "wiretask: the default_retry_delay of tasks "
                "that set none, read when a task is registered (Celery's Task default)", 180,
                celery=False),
        Setting("task_max_retries", h, "wiretask: the max_retries of tasks that set none, "
                "read when a task is registered (Celery's Task default)", 3, celery=False),
    )


def _beat_rows() -> Iterator[Setting]:
    h, n = HONOURED, NOT_APPLICABLE
    yield from (
        Setting("beat_schedule", h, "the periodic tasks wiretask beat sends (entries checked "
                "when beat reads them; see docs/periodic-tasks.md)", {},
                check=BEAT_CHECKS["beat_schedule"]),
        Setting("beat_schedule_filename", h, "beat's schedule file (JSON, not Celery's "
                "shelve: a Celery file there is refused, not overwritten)",
                "celerybeat-schedule", check=BEAT_CHECKS["beat_schedule_filename"]),
        Setting("beat_max_loop_interval", h, "seconds; 0: 300, as in Celery", 0,
                check=BEAT_CHECKS["beat_max_loop_interval"]),
        Setting("beat_scheduler", h, "only Celery's default: wiretask beat keeps its history "
                "in a file and on the broker (custom and database schedulers cannot be "
                "loaded)", "celery.beat:PersistentScheduler",
                only=("celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler")),
        Setting("beat_sync_every", h, "beat writes its schedule file after every send, "
                "which is at least as often as any value asks", 0,
                check=BEAT_CHECKS["beat_sync_every"]),
        Setting("beat_cron_starting_deadline", h, "seconds: a crontab run missed by more is "
                "not made up", check=BEAT_CHECKS["beat_cron_starting_deadline"]),
        Setting("beat_enable_remote_control", h, f"only False: {_NO_CONTROL}", False,
                only=(False,)),
        Setting("beat_remote_control_max_tick_age", n, "beat's remote-control health check; "
                f"beat answers no remote control ({_NO_CONTROL})"),
    )


def _task_rows() -> Iterator[Setting]:
    h = HONOURED
    yield from (
        Setting("task_acks_late", h, "only True: wiretask's worker always acknowledges a "
                "message after its task ran and its outcome was stored (at least once); "
                "Celery's early acknowledgement (False: at most once, the task lost if its "
                "worker dies while it runs) is refused rather than silently made late",
                True, only=(True,)),
        Setting("task_acks_on_failure_or_timeout", h, "the default of task_acks_on_failure "
                "and task_acks_on_timeout", True, check=_bool),
        Setting("task_acks_on_failure", h, "False: a failed task's message is rejected "
                "(dead-lettered with the reason) once its FAILURE is stored; None: "
                "task_acks_on_failure_or_timeout", check=_optional_bool),
        Setting("task_acks_on_timeout", h, "False: the message of a task past its hard time "
                "limit is requeued to run again (its FAILURE is not stored: a stored final "
                "state is never replaced, and the next run's counts); None: "
                "task_acks_on_failure_or_timeout", check=_optional_bool),
        Setting("task_always_eager", h, "run tasks in-process on apply_async/delay and "
                "return an EagerResult (send_task still sends)", False, check=_bool),
        Setting("task_annotations", h, "a dict, a list of dicts, or objects with annotate(); "
                "keys are task options (rate_limit, time_limit, ...); a key wiretask cannot "
                "honour is refused by name", check=_annotations),
        Setting("task_compression", h, ""),
        Setting("task_create_missing_queues", h, "", True, check=_bool),
        Setting("task_create_missing_queue_type", h, "'quorum': queues created on first use "
                "are quorum queues (AMQP only; other brokers refuse it)", "classic",
                only=("classic", "quorum")),
        Setting("task_create_missing_queue_exchange_type", h, "AMQP: the exchange type of "
                "queues created on first use (None: direct); other brokers refuse 'topic'",
                only=(None, "direct", "topic")),
        Setting("task_inherit_parent_priority", h, "only False: child tasks do not inherit "
                "the parent's priority yet", False, only=(False,)),
        Setting("task_default_delivery_mode", h, "", 2),
        Setting("task_default_queue", h, "also the queue a worker consumes when no queues "
                "are given and task_queues is empty", "celery", check=_string),
        Setting("task_default_queue_type", h, "'quorum': the default queue is a quorum queue "
                "when task_queues is empty, as in Celery (AMQP only; other brokers refuse "
                "it)", "classic", only=("classic", "quorum")),
        Setting("task_default_exchange", h, "None: the default queue's name, as in Celery",
                check=_string),
        Setting("task_default_exchange_type", h, "only 'direct' or 'topic' (fanout and "
                "headers exchanges are not supported); on AMQP the default queue's exchange "
                "is declared with it", "direct", only=("direct", "topic")),
        Setting("task_default_routing_key", h, "None: the default queue's name, as in Celery",
                check=_string),
        Setting("task_default_rate_limit", h, "the rate limit of tasks that set none "
                "('10/s', '100/m', '5/h'), enforced per worker and task type as Celery's "
                "token bucket", check=_rate),
        Setting("task_default_priority", h, ""),
        Setting("task_eager_propagates", h, "eager tasks re-raise their exception at once",
                False, check=_bool),
        Setting("task_ignore_result", h, "", False, check=_bool),
        Setting("task_store_eager_result", h, "eager results are stored in the result backend",
                False, check=_bool),
        Setting("task_protocol", h, "only 2, the protocol wiretask speaks", 2, only=(2,)),
        Setting("task_publish_retry", h, "", True, check=_bool),
        Setting("task_publish_retry_policy", h, "the documented Celery policy (interval_max "
                "0.2; Celery's code default is 1)",
                {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                 "interval_max": 0.2}),
        Setting("task_queues", h, "kombu Queue objects (read duck-typed: kombu is not needed) "
                "or dicts: exchange, exchange type (direct or topic), routing key and queue "
                "arguments such as x-max-priority (used by brokers that have them)",
                check=_queues),
        Setting("task_queue_max_priority", h, "x-max-priority of declared queues (RabbitMQ "
                "reads it; Redis, SQLite and memory always have priorities)", check=_count),
        Setting("task_reject_on_worker_lost", h, "True: a task whose child process died "
                "(pool='processes') is requeued instead of failed, as Celery (which warns "
                "that a task killing its process then comes back for ever)",
                check=_optional_bool),
        Setting("task_retry_on_worker_lost", h, "only False: a task whose worker process died "
                "is failed, not retried", False, only=(False,)),
        Setting("task_remote_tracebacks", h, "only False (tblib remote tracebacks are not "
                "supported)", False, only=(False,)),
        Setting("task_repr_maxlevels", h, "only 3, the depth wiretask's argsrepr uses", 3,
                only=(3,)),
        Setting("task_routes", h, "resolved as Celery's router does: dicts with exact, glob "
                "and re.compile keys, lists of them, router functions and dotted paths",
                check=_routes),
        Setting("task_send_sent_event", h, f"True: the client sends task-sent ({_EVENTS}) "
                "for each task it sends, where the broker can broadcast", False, check=_bool),
        Setting("task_serializer", h, "", "json"),
        Setting("task_soft_time_limit", h, "seconds before SoftTimeLimitExceeded is raised "
                "in a task whose message sets none", check=_seconds),
        Setting("task_time_limit", h, "seconds before a task whose message sets none is "
                "ended (processes: its child killed; threads and solo: abandoned) and "
                "failed with TimeLimitExceeded", check=_seconds),
        Setting("task_store_errors_even_if_ignored", h, "True: the failures (and retries) of "
                "ignore_result tasks are stored", False, check=_bool),
        Setting("task_track_started", h, "store STARTED (pid, hostname) when a task "
                "starts; never for ignore_result tasks, as Celery", False, check=_bool),
        Setting("task_allow_error_cb_on_chord_header", h, "only False: a chord's errbacks "
                "go to its body (True would also link them to every header task)", False,
                only=(False,)),
    )


def _worker_rows() -> Iterator[Setting]:
    h, r = HONOURED, REFUSED
    refused = {
        "agent": "the cell agent is not supported",
        "autoscaler": "autoscaling is not supported yet",
        "cancel_long_running_tasks_on_connection_loss": "running tasks go on through a "
        "broker outage and are acknowledged when it is back",
        "soft_shutdown_timeout": "pass Worker(shutdown_timeout=...)",
        "enable_soft_shutdown_on_idle": "pass Worker(shutdown_timeout=...)",
        "consumer": "the consumer class cannot be replaced",
        "direct": "per-worker direct queues are not supported",
        "deduplicate_successful_tasks": "deduplication is not supported",
        "hijack_root_logger": "the wiretask command configures logging itself; an embedded "
        "Worker leaves logging to you",
        "log_color": "the wiretask command's log format is fixed",
        "log_datefmt": "the wiretask command's log format is fixed",
        "log_format": "the wiretask command's log format is fixed",
        "lost_wait": "a lost child process is detected at once",
        "pool": "pass Worker(pool=...) or wiretask worker --pool (threads, processes, solo)",
        "pool_putlocks": "not applicable to wiretask's pools",
        "pool_restarts": "pool restarts are not supported",
        "pool_start_method": "the processes pool picks its own start method",
        "proc_alive_timeout": "not configurable",
        "enable_prefetch_count_reduction": "not applicable to wiretask's consumer",
        "redirect_stdouts": "the wiretask command does not redirect stdout",
        "redirect_stdouts_level": "the wiretask command does not redirect stdout",
        "task_log_datefmt": "the wiretask command's log format is fixed",
        "task_log_format": "the wiretask command's log format is fixed",
        "timer": "the timer cannot be replaced",
        "timer_precision": "not configurable",
        "detect_quorum_queues": "quorum queues need RabbitMQ; no AMQP transport yet",
    }
    for key, note in refused.items():
        yield Setting(f"worker_{key}", r, note)
    yield Setting("worker_send_task_events", h, f"True: the worker sends task events "
                  f"({_EVENTS}; Celery's -E)", False, check=_bool)
    yield Setting("worker_concurrency", h, "tasks run at once (default: the CPU count)",
                  check=_count)
    yield Setting("worker_max_tasks_per_child", h, "pool='processes': a child process is "
                  "replaced after this many tasks (other pools refuse it: no child)",
                  check=_count)
    yield Setting("worker_max_memory_per_child", h, "pool='processes': a child process is "
                  "replaced after a task that left its resident memory above this "
                  "many KiB (other pools refuse it: no child)", check=_count)
    yield Setting("worker_disable_rate_limits", h, "True: the worker ignores every rate "
                  "limit", False, check=_bool)
    yield Setting("worker_prefetch_multiplier", h, "messages a worker reserves beyond "
                  "the running ones: concurrency x this (Celery's worker acks a message as "
                  "it starts, so its prefetch count is what waits); 0: no limit",
                  4, check=_non_negative)
    yield Setting("worker_disable_prefetch", h, "True: reserve no message beyond the "
                  "running ones (Celery honours it on Redis only; wiretask on every "
                  "broker)", False, check=_bool)
    yield Setting("worker_eta_task_limit", h, "early-eta messages a worker holds (None: "
                  "wiretask's bound, DEFAULT_ETA_TASK_LIMIT)", check=_count)
    yield Setting("worker_enable_remote_control", h, f"the worker answers {_CONTROL} "
                  "(ping, inspect, revoke); needs a broker that can broadcast", True,
                  check=_bool)
    yield Setting("worker_state_db", h, "a file that keeps the revoked task ids across "
                  "restarts (wiretask's JSON format; a Celery shelve is refused)",
                  check=_path)


def _sorted_table() -> dict[str, Setting]:
    table: dict[str, Setting] = {}
    for row in _rows():
        if row.name in table:
            raise AssertionError(f"setting {row.name} listed twice")
        table[row.name] = row
    return table


#: Every setting wiretask knows: Celery's, then wiretask's own.
SETTINGS: Mapping[str, Setting] = types.MappingProxyType(_sorted_table())

#: The prefix of each Celery namespace's pre-4.0 upper-case names (``celery/app/defaults.py``).
_OLD_PREFIXES: Mapping[str, str] = {
    "beat": "CELERYBEAT_", "broker": "BROKER_", "cache": "CELERY_CACHE_",
    "cassandra": "CASSANDRA_", "s3": "S3_", "azureblockblob": "AZUREBLOCKBLOB_",
    "gcs": "GCS_", "control": "CONTROL_", "couchbase": "CELERY_COUCHBASE_",
    "arangodb": "CELERY_ARANGODB_", "mongodb": "CELERY_MONGODB_",
    "cosmosdbsql": "COSMOSDBSQL_", "event": "CELERY_EVENT_", "redis": "CELERY_REDIS_",
    "result": "CELERY_RESULT_", "elasticsearch": "CELERY_ELASTICSEARCH_",
    "security": "CELERY_SECURITY_", "database": "DATABASE_", "task": "CELERY_",
    "worker": "CELERYD_",
}
#: Old names that do not follow their namespace's prefix.
_OLD_EXCEPTIONS: Mapping[str, str] = {
    "result_accept_content": "RESULT_ACCEPT_CONTENT", "enable_utc": "ENABLE_UTC",
    "result_cache_max": "CELERY_MAX_CACHED_RESULTS",
    "result_expires": "CELERY_TASK_RESULT_EXPIRES",
    "database_url": "CELERY_RESULT_DBURI",
    "database_engine_options": "CELERY_RESULT_ENGINE_OPTIONS",
    "database_short_lived_sessions": "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS",
    "database_table_names": "CELERY_RESULT_DB_TABLENAMES",
    "task_compression": "CELERY_MESSAGE_COMPRESSION",
    "task_eager_propagates": "CELERY_EAGER_PROPAGATES_EXCEPTIONS",
    "task_protocol": "CELERY_TASK_PROTOCOL",
    "task_publish_retry": "CELERY_TASK_PUBLISH_RETRY",
    "task_publish_retry_policy": "CELERY_TASK_PUBLISH_RETRY_POLICY",
    "task_send_sent_event": "CELERY_SEND_TASK_SENT_EVENT",
    "task_serializer": "CELERY_TASK_SERIALIZER",
    "task_soft_time_limit": "CELERYD_TASK_SOFT_TIME_LIMIT",
    "task_time_limit": "CELERYD_TASK_TIME_LIMIT",
    "worker_direct": "CELERY_WORKER_DIRECT",
    "worker_disable_rate_limits": "CELERY_DISABLE_RATE_LIMITS",
    "worker_enable_remote_control": "CELERY_ENABLE_REMOTE_CONTROL",
    "worker_lost_wait": "CELERYD_WORKER_LOST_WAIT",
    "worker_redirect_stdouts": "CELERY_REDIRECT_STDOUTS",
    "worker_redirect_stdouts_level": "CELERY_REDIRECT_STDOUTS_LEVEL",
    "worker_send_task_events": "CELERY_SEND_EVENTS",
}


def _old_name(name: str) -> str:
    if name in _OLD_EXCEPTIONS:
        return _OLD_EXCEPTIONS[name]
    namespace, _, key = name.partition("_")
    prefix = _OLD_PREFIXES.get(namespace)
    if prefix is None or not key:  # a top-level setting: accept_content, imports, ...
        return "CELERY_" + name.upper()
    return prefix + key.upper()


#: Celery's pre-4.0 upper-case setting names, to the new names wiretask reads.
OLD_NAMES: Mapping[str, str] = types.MappingProxyType(
    {_old_name(name): name for name, row in SETTINGS.items() if row.celery}
)


def _refusal(name: str) -> ImproperlyConfigured:
    """The error for a name that is not a usable setting (unknown, old or refused)."""
    row = SETTINGS.get(name)
    if row is not None:
        return ImproperlyConfigured(
            f"setting {name!r} is not supported by wiretask: {row.note}", setting=name
        )
    new = OLD_NAMES.get(name)
    if new is not None:
        return ImproperlyConfigured(
            f"{name!r} is Celery's old setting name: use {new!r} (wiretask reads only the "
            "lower-case names Celery uses since 4.0)", setting=name,
        )
    if not isinstance(name, str):
        return ImproperlyConfigured(f"setting names are strings, got {name!r}")
    pool = list(OLD_NAMES) if name.isupper() else list(SETTINGS)
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
    hint = ""
    if close:
        suggestion = OLD_NAMES.get(close[0], close[0])
        hint = f"; did you mean {suggestion!r}?"
    return ImproperlyConfigured(f"unknown setting {name!r}{hint}", setting=name)


def check_setting(name: str, value: Any) -> Any:
    """Check one setting and return its value (normalised where a check does so).

    Raises:
        ImproperlyConfigured: an unknown name (with the nearest known one), one of
            Celery's old upper-case names (with the new one), a refused setting or value
            (with why and what to do instead), or a value of the wrong shape.
    """
    row = SETTINGS.get(name) if isinstance(name, str) else None
    if row is None or row.status == REFUSED:
        raise _refusal(name)
    if row.only is not None and not any(
        value is allowed or (type(value) is type(allowed) and value == allowed)
        for allowed in row.only
    ):
        raise ImproperlyConfigured(
            f"{name}={value!r} is not supported by wiretask: {row.note}", setting=name
        )
    if row.check is not None:
        return row.check(name, value)
    return value


def _defaults() -> dict[str, Any]:
    return {
        name: (dict(row.default) if isinstance(row.default, dict) else row.default)
        for name, row in SETTINGS.items()
        if row.status == HONOURED
    }


class Settings(dict[str, Any]):
    """A dict of settings with attribute access (``conf.task_serializer``) that counts
    its changes.

    Every change through the mapping API bumps ``_version``, so what is derived from the
    settings (the calling API's validated option plans, the router) is recomputed. A
    value mutated in place (``conf.some_dict["key"] = ...``) is not seen: assign a new
    value instead (``task_publish_retry_policy``, read on every call, is the exception).
    This class takes any key; ``Configuration`` (``app.conf``) checks them.
    """

    _version: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_version", 0)
        self.update(*args, **kwargs)

    def _check(self, key: str, value: Any) -> Any:
        del key
        return value

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
        super().__setitem__(key, self._check(key, value))
        self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        items = dict(*args, **kwargs)
        checked = {key: self._check(key, value) for key, value in items.items()}
        super().update(checked)
        self._changed()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            default = self._check(key, default)
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


class Configuration(Settings):
    """``app.conf``: Celery's setting names, checked as they are set.

    It starts with wiretask's defaults for the honoured settings. Setting an unknown
    name, an old upper-case name, a refused setting or an unsupported value raises
    ``ImproperlyConfigured`` at once (through ``conf[...]``, ``conf.name = ...``,
    ``update``, ``setdefault`` and ``|=`` alike). Reading a not-applicable setting that
    was never set gives Celery's default; reading a refused one raises the refusal.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        dict.update(self, _defaults())
        self.update(*args, **kwargs)

    def _check(self, key: str, value: Any) -> Any:
        return check_setting(key, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            pass
        row = SETTINGS.get(name)
        if row is not None and row.status != REFUSED:
            return row.default
        if name.startswith("__"):
            raise AttributeError(name)
        error = _refusal(name)
        raise AttributeError(str(error)) from error


# -- settings a broker turns into options -------------------------------------------------

#: Settings that only some brokers honour, as ``{name: (values that ask nothing, why
#: another broker refuses the others)}``. A transport that honours one names it in its
#: ``honoured_settings`` and reads it in ``options_from_settings`` (AMQP reads them
#: all); with any other transport, a value that asks something is refused by name when
#: the transport is made. (``broker_heartbeat``, ``broker_heartbeat_checkrate``,
#: ``broker_login_method`` and ``broker_native_delayed_delivery_queue_type`` are not
#: here: other brokers ignore them, as Celery's do.)
BROKER_ONLY: Mapping[str, tuple[tuple[Any, ...], str]] = types.MappingProxyType({
    "task_default_queue_type": (("classic",), "quorum queues need RabbitMQ"),
    "task_create_missing_queue_type": (("classic",), "quorum queues need RabbitMQ"),
    "task_create_missing_queue_exchange_type": (
        (None, "direct"), "exchange types of the queues it creates are RabbitMQ's"),
    "broker_connection_timeout": (
        (None,), "give the transport's own option in broker_transport_options (Redis: "
                 "socket_connect_timeout)"),
    "broker_use_ssl": ((None, False), "use a rediss:// URL with its ssl_* query options"),
})


def broker_options(transport: type[Transport], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The options a transport class is made with: what Celery's settings mean for it
    (``transport.options_from_settings``), with ``broker_transport_options`` over them.

    Raises:
        ImproperlyConfigured: a setting of ``BROKER_ONLY`` asks something this
            transport does not honour (named, with the transport and why).
    """
    honoured = transport.honoured_settings
    for name, (neutral, why) in BROKER_ONLY.items():
        value = settings.get(name)
        if name not in honoured and not any(value == ok for ok in neutral):
            raise ImproperlyConfigured(
                f"{name}={value!r} is not supported by the {transport.__name__} broker: "
                f"{why}", setting=name,
            )
    options = transport.options_from_settings(settings)
    options.update(settings.get("broker_transport_options") or {})
    return options


# -- reading a configuration object -------------------------------------------------------


def read_object(source: object, namespace: str | None = None) -> dict[str, Any]:
    """The settings an object holds, as Celery's ``config_from_object`` reads them.

    ``source`` is a module, a class or an instance (or a mapping). Without a
    ``namespace`` every public attribute is a setting, except modules, classes and
    functions that are not setting names (the imports and helpers a config module
    holds) and upper-case names that are not Celery's (constants); with
    ``namespace="CELERY"`` (Django) only ``CELERY_``-prefixed names are read, the prefix
    removed and the rest lower-cased, as Celery does. Nothing is checked here: the
    caller applies the result to ``app.conf``, which refuses what it must.
    """
    if isinstance(source, Mapping):
        items: Iterable[tuple[str, Any]] = [
            (k, v) for k, v in source.items() if isinstance(k, str)
        ]
    else:
        items = [(k, getattr(source, k)) for k in dir(source) if not k.startswith("_")]
    settings: dict[str, Any] = {}
    if namespace:
        prefix = namespace.rstrip("_").upper() + "_"
        for key, value in items:
            if key.startswith(prefix) and len(key) > len(prefix):
                settings[key[len(prefix):].lower()] = value
        return settings
    for key, value in items:
        if key.startswith("_"):
            continue
        if key not in SETTINGS and (
            inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value)
        ):
            continue
        if key.isupper() and key not in OLD_NAMES and not _looks_like_celery(key):
            continue
        settings[key] = value
    return settings


def _looks_like_celery(name: str) -> bool:
    """An upper-case name close to one of Celery's old names (a misspelt one)."""
    return name.startswith(("CELERY", "BROKER_")) or bool(
        difflib.get_close_matches(name, list(OLD_NAMES), n=1, cutoff=0.85)
    )


# -- the published table -------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, timedelta):
        return f"`{value.total_seconds():g}`"
    return f"`{value!r}`"


def render_markdown() -> str:
    """``docs/settings.md``: every setting with its status, default and note."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from wiretask.config.SETTINGS by tests/app/test_settings.py; "
        "do not edit by hand. -->",
        "",
        "Every setting of Celery 5.7, and wiretask's own, with its status in wiretask:",
        "",
        "* **honoured**: it behaves as in Celery (where the note lists values, only those; "
        "any other value is refused);",
        "* **refused**: setting it raises `ImproperlyConfigured` at once, with the reason "
        "and what to do instead;",
        "* **not applicable**: it configures a part wiretask does not have and that cannot "
        "be selected here either; it is accepted and has no effect.",
        "",
        "Unknown names are refused with the nearest known one, and Celery's old upper-case "
        "names (`CELERY_TASK_SERIALIZER`, `BROKER_URL`) with the new name to use. Settings "
        "are checked however they are given: `App(**settings)`, `app.conf[...]`, "
        "`app.conf.name = ...`, `app.conf.update(...)` and `app.config_from_object(...)`.",
        "",
    ]
    counts = dict.fromkeys((HONOURED, REFUSED, NOT_APPLICABLE), 0)
    for row in SETTINGS.values():
        if row.celery:
            counts[row.status] += 1
    lines += [
        f"Celery's {sum(counts.values())} settings: {counts[HONOURED]} honoured, "
        f"{counts[REFUSED]} refused, {counts[NOT_APPLICABLE]} not applicable.",
        "",
    ]
    for title, celery in (("Celery's settings", True), ("wiretask's own settings", False)):
        lines += [f"## {title}", "", "| Setting | Status | Default | Note |", "|---|---|---|---|"]
        for row in sorted(SETTINGS.values(), key=lambda r: r.name):
            if row.celery is not celery:
                continue
            default = _show(row.default) if row.status != REFUSED else ""
            note = row.note.replace("|", "\\|")
            lines.append(f"| `{row.name}` | {row.status} | {default} | {note} |")
        lines.append("")
    lines += [
        "## Task options",
        "",
        "What `@app.task(...)`, a `base=` class's attributes and `task_annotations` may set "
        "(Celery's `Task` attributes). An unknown option is refused with the nearest known "
        "name; a refused one with the reason.",
        "",
        "| Option | Status | Note |",
        "|---|---|---|",
    ]
    for option in sorted(TASK_OPTIONS.values(), key=lambda o: o.name):
        status = HONOURED if option.honoured else REFUSED
        note = option.note.replace("|", "\\|")
        lines.append(f"| `{option.name}` | {status} | {note} |")
    lines.append("")
    return "\n".join(lines)

