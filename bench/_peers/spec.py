"""What the harness runs per library: its client module, its worker commands, its broker,
the tables it is compared in, and its delivery guarantee as read in its source (the
versions pinned in ``bench/requirements-peers.txt``; paths are inside each project's
wheel).

**Tables** (:data:`TABLES`): each compares one of wiretask's set-ups (``peer=False``)
with the peers of the same broker and kind of API: ``redis`` (wiretask's sync API on
Redis; the floors), ``asyncio`` (wiretask's asyncio API and its asyncio pool on Redis
vs arq and taskiq, which are in the ``redis`` table too, from the same runs), ``amqp``
(RabbitMQ: wiretask, Celery over py-amqp, Dramatiq over pika, aio-celery) and
``amqp-asyncio`` (wiretask's asyncio API on RabbitMQ vs aio-celery). The task and its
counter stay in Redis whatever the broker.

Worker commands are each library's own CLI (arq's and the floor's excepted, see
below) with ``{bin}`` standing for the scripts directory and ``{python}`` for the
interpreter of the library's environment, ``{url}`` for the Redis URL. Every worker but
Dramatiq's (which logs nothing per message) logs at WARNING (a flag of its CLI; arq's
through ``--custom-log-dict``): RQ, Huey, arq and taskiq log every task at INFO by
default, which would measure their log formatting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Library:
    #: The name in the tables and in ``--libs``.
    name: str
    #: The ``_peers`` module with its app and ``Client``.
    module: str
    #: Distributions whose versions the table shows.
    dists: tuple[str, ...]
    #: ``"main"`` (the bench's own interpreter) or a section of requirements-peers.txt
    #: that gets its own venv (``"arq"``).
    env: str
    #: The worker with one slot (one task at a time), the CLI's defaults otherwise.
    one_slot: tuple[str, ...]
    #: The worker with the CLI's defaults.
    default: tuple[str, ...]
    #: What the default worker runs, in words.
    default_shape: str
    #: What the one-slot worker runs, in words.
    one_slot_shape: str
    #: Its delivery guarantee, short (the table) and where it was read.
    guarantee: str
    source: str
    #: True for wiretask and the floor: not a peer.
    peer: bool = True
    #: ``"redis"`` or ``"amqp"``: the broker its messages go through.
    broker: str = "redis"
    #: The tables (:data:`TABLES`) it is in.
    tables: tuple[str, ...] = ("redis",)


WARNING = ("-l", "WARNING")

#: Table name -> its title in the report (in the report's order).
TABLES: dict[str, str] = {
    "redis": "Redis",
    "asyncio": "asyncio on Redis",
    "amqp": "RabbitMQ",
    "amqp-asyncio": "asyncio on RabbitMQ",
}

LIBRARIES: tuple[Library, ...] = (
    Library(
        name="wiretask",
        module="lib_wiretask",
        dists=("wiretask",),
        env="main",
        one_slot=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask:app", "-Q", "wiretask",
                  "--pool", "solo", *WARNING),
        default=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask:app", "-Q", "wiretask",
                 *WARNING),
        default_shape="threads, -c CPU count, prefetch multiplier 4",
        one_slot_shape="--pool solo, prefetch multiplier 4",
        guarantee="ack after the result is stored; at least once (unacked restored after "
                  "the visibility timeout, leases while running); a retried publish is "
                  "de-duplicated (marker in the same MULTI/EXEC)",
        source="src/wiretask/worker/__init__.py (module doc, ack after store); "
               "src/wiretask/transports/redis.py (module doc: idempotent publishing, leases)",
        peer=False,
    ),
    Library(
        name="celery",
        module="lib_celery",
        dists=("celery", "kombu"),
        env="main",
        one_slot=("{python}", "-m", "celery", "-A", "_peers.lib_celery:app", "worker",
                  "-P", "solo", *WARNING),
        default=("{python}", "-m", "celery", "-A", "_peers.lib_celery:app", "worker", *WARNING),
        default_shape="prefork, -c CPU count, prefetch multiplier 4",
        one_slot_shape="-P solo, prefetch multiplier 4",
        guarantee="acks when a task starts (task_acks_late=False): at most once once "
                  "started, reserved messages restored after visibility_timeout 3600 s; "
                  "result stored after the run; publish retried (3x), not de-duplicated",
        source="celery/app/defaults.py (task: acks_late=False, publish_retry=True); "
               "celery/worker/request.py Request.on_accepted (acknowledge unless acks_late); "
               "kombu/transport/redis.py (unacked hash, visibility_timeout, restore_visible)",
    ),
    Library(
        name="dramatiq",
        module="lib_dramatiq",
        dists=("dramatiq",),
        env="main",
        one_slot=("{python}", "-m", "dramatiq", "_peers.lib_dramatiq", "--processes", "1",
                  "--threads", "1"),
        default=("{python}", "-m", "dramatiq", "_peers.lib_dramatiq"),
        default_shape="--processes CPU count x --threads 8, prefetch 2 per thread",
        one_slot_shape="--processes 1 --threads 1, prefetch 2",
        guarantee="ack after the actor returns; fetched ids kept per worker and requeued "
                  "when its heartbeat is 60 s stale: at least once; no result stored "
                  "(Results middleware is opt-in); enqueue not retried",
        source="dramatiq/worker.py _ConsumerThread.post_process_message; "
               "dramatiq/brokers/redis/dispatch.lua (fetch, ack, maintenance); "
               "dramatiq/middleware/__init__.py default_middleware; "
               "dramatiq/brokers/redis.py RedisBroker.enqueue",
    ),
    Library(
        name="rq",
        module="lib_rq",
        dists=("rq",),
        env="main",
        one_slot=("{python}", "-m", "rq.cli", "worker", "-u", "{url}", "--logging_level",
                  "WARNING", "peers"),
        default=("{python}", "-m", "rq.cli", "worker", "-u", "{url}", "--logging_level",
                 "WARNING", "peers"),
        default_shape="one Worker, a forked work horse per job (the same as one slot)",
        one_slot_shape="one Worker, a forked work horse per job",
        guarantee="BLMOVE to an intermediate queue, job run in a forked horse; result "
                  "stored (result_ttl 500 s); a job whose worker died goes to the "
                  "FailedJobRegistry (requeued only with Retry): at most once; enqueue "
                  "not retried",
        source="rq/queue.py Queue.lmove, dequeue_any; rq/worker/worker_classes.py "
               "Worker.fork_work_horse; rq/worker/base.py handle_job_success; "
               "rq/registry.py StartedJobRegistry.cleanup",
    ),
    Library(
        name="arq",
        module="lib_arq",
        dists=("arq", "redis"),
        env="arq",
        one_slot=("{bin}/arq", "_peers.lib_arq.OneSlot", "--custom-log-dict",
                  "_peers.lib_arq.LOG_CONFIG"),
        default=("{bin}/arq", "_peers.lib_arq.WorkerSettings", "--custom-log-dict",
                 "_peers.lib_arq.LOG_CONFIG"),
        default_shape="max_jobs 10, polls every 0.5 s",
        one_slot_shape="max_jobs 1 (settings class), polls every 0.5 s",
        guarantee="job stays queued until finished; claimed by an in-progress key "
                  "(timeout + 10 s), so a dead worker's job re-runs: at least once "
                  "(max_tries 5); result kept 3600 s; enqueue de-duplicated only with an "
                  "explicit _job_id (WATCH + EXISTS), not retried",
        source="arq/connections.py ArqRedis.enqueue_job; arq/worker.py Worker.start_jobs, "
               "run_job, finish_job",
        tables=("redis", "asyncio"),
    ),
    Library(
        name="taskiq-stream",
        module="lib_taskiq_stream",
        dists=("taskiq", "taskiq-redis"),
        env="main",
        one_slot=("{python}", "-m", "taskiq", "worker", "_peers.lib_taskiq_stream:broker",
                  "--workers", "1", "--max-async-tasks", "1", "--log-level", "WARNING"),
        default=("{python}", "-m", "taskiq", "worker", "_peers.lib_taskiq_stream:broker",
                 "--log-level", "WARNING"),
        default_shape="--workers 2 processes x --max-async-tasks 100",
        one_slot_shape="--workers 1 --max-async-tasks 1",
        guarantee="RedisStreamBroker: XREADGROUP, XACK after the result is saved "
                  "(--ack-type when_saved); pending entries XAUTOCLAIMed after 600 s idle: "
                  "at least once; kick not retried",
        source="taskiq/cli/worker/args.py (ack_type default WHEN_SAVED); "
               "taskiq/receiver/receiver.py Receiver.callback; "
               "taskiq_redis/redis_broker.py RedisStreamBroker",
        tables=("redis", "asyncio"),
    ),
    Library(
        name="taskiq-list",
        module="lib_taskiq_list",
        dists=("taskiq", "taskiq-redis"),
        env="main",
        one_slot=("{python}", "-m", "taskiq", "worker", "_peers.lib_taskiq_list:broker",
                  "--workers", "1", "--max-async-tasks", "1", "--log-level", "WARNING"),
        default=("{python}", "-m", "taskiq", "worker", "_peers.lib_taskiq_list:broker",
                 "--log-level", "WARNING"),
        default_shape="--workers 2 processes x --max-async-tasks 100",
        one_slot_shape="--workers 1 --max-async-tasks 1",
        guarantee="ListQueueBroker: BRPOP, no acknowledgement (its README: a killed "
                  "worker loses the message): at most once; result saved; kick not retried",
        source="taskiq_redis/redis_broker.py ListQueueBroker; taskiq-redis README "
               "(ListQueue warning)",
        tables=("redis", "asyncio"),
    ),
    Library(
        name="huey",
        module="lib_huey",
        dists=("huey",),
        env="main",
        one_slot=("{python}", "-m", "huey.bin.huey_consumer", "_peers.lib_huey.huey", "-q"),
        default=("{python}", "-m", "huey.bin.huey_consumer", "_peers.lib_huey.huey", "-q"),
        default_shape="-w 1 thread (the same as one slot)",
        one_slot_shape="-w 1 thread",
        guarantee="BRPOP, no acknowledgement: a task running when the consumer dies is "
                  "lost: at most once; result stored (unless None); enqueue one LPUSH, "
                  "not retried",
        source="huey/storage.py RedisStorage.enqueue, dequeue; huey/api.py Huey._execute "
               "(put_result); huey/consumer.py Worker.loop",
    ),
    Library(
        name="wiretask-aio",
        module="lib_wiretask_aio",
        dists=("wiretask",),
        env="main",
        one_slot=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_aio:app", "-Q",
                  "wiretask-aio", "--pool", "asyncio", "-c", "1", *WARNING),
        default=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_aio:app", "-Q",
                 "wiretask-aio", "--pool", "asyncio", *WARNING),
        default_shape="--pool asyncio, -c CPU count, prefetch multiplier 4",
        one_slot_shape="--pool asyncio -c 1, prefetch multiplier 4",
        guarantee="as wiretask's (ack after the result is stored; a retried publish is "
                  "de-duplicated); client: await aapply_async / aapply_many on the Redis "
                  "transport's asyncio twin",
        source="docs/asyncio.md; src/wiretask/worker/pools/asyncio.py (module doc)",
        peer=False,
        tables=("asyncio",),
    ),
    Library(
        name="wiretask-amqp",
        module="lib_wiretask_amqp",
        dists=("wiretask", "amqp"),
        env="main",
        one_slot=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_amqp:app", "-Q",
                  "wiretask", "--pool", "solo", *WARNING),
        default=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_amqp:app", "-Q",
                 "wiretask", *WARNING),
        default_shape="threads, -c CPU count, prefetch multiplier 4",
        one_slot_shape="--pool solo, prefetch multiplier 4",
        guarantee="publisher confirms (a publish returns once RabbitMQ has it; a batch: "
                  "one round of confirms), persistent messages; ack after the result is "
                  "stored: at least once (RabbitMQ redelivers a dead consumer's unacked "
                  "messages); a retried publish is not de-duplicated (no marker on AMQP)",
        source="src/wiretask/transports/amqp.py (module doc: confirms); "
               "src/wiretask/worker/__init__.py (ack after store); docs/asyncio.md",
        peer=False,
        broker="amqp",
        tables=("amqp",),
    ),
    Library(
        name="wiretask-amqp-nc",
        module="lib_wiretask_amqp_unconfirmed",
        dists=("wiretask", "amqp"),
        env="main",
        one_slot=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_amqp_unconfirmed:app",
                  "-Q", "wiretask-nc", "--pool", "solo", *WARNING),
        default=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_amqp_unconfirmed:app",
                 "-Q", "wiretask-nc", *WARNING),
        default_shape="threads, -c CPU count, prefetch multiplier 4",
        one_slot_shape="--pool solo, prefetch multiplier 4",
        guarantee="wiretask-amqp with ?confirm_publish=false (not its default): a publish "
                  "returns once written, as Celery's and Dramatiq's; the worker as "
                  "wiretask-amqp's",
        source="src/wiretask/transports/amqp.py (confirm_publish option)",
        peer=False,
        broker="amqp",
        tables=("amqp",),
    ),
    Library(
        name="celery-amqp",
        module="lib_celery_amqp",
        dists=("celery", "kombu", "amqp"),
        env="main",
        one_slot=("{python}", "-m", "celery", "-A", "_peers.lib_celery_amqp:app", "worker",
                  "-P", "solo", *WARNING),
        default=("{python}", "-m", "celery", "-A", "_peers.lib_celery_amqp:app", "worker",
                 *WARNING),
        default_shape="prefork, -c CPU count, prefetch multiplier 4",
        one_slot_shape="-P solo, prefetch multiplier 4",
        guarantee="no publisher confirms (confirm_publish off: returns once written); "
                  "acks when a task starts (task_acks_late=False): at most once once "
                  "started, unacked prefetched messages redelivered by RabbitMQ; result "
                  "stored after the run; publish retried (3x), not de-duplicated",
        source="kombu/transport/pyamqp.py (module doc: confirm_publish transport "
               "option); amqp/connection.py Connection (confirm_publish=False); "
               "celery/app/defaults.py (acks_late=False, publish_retry=True); "
               "celery/worker/request.py Request.on_accepted",
        broker="amqp",
        tables=("amqp",),
    ),
    Library(
        name="dramatiq-amqp",
        module="lib_dramatiq_amqp",
        dists=("dramatiq", "pika"),
        env="main",
        one_slot=("{python}", "-m", "dramatiq", "_peers.lib_dramatiq_amqp", "--processes",
                  "1", "--threads", "1"),
        default=("{python}", "-m", "dramatiq", "_peers.lib_dramatiq_amqp"),
        default_shape="--processes CPU count x --threads 8, prefetch 2 per thread",
        one_slot_shape="--processes 1 --threads 1, prefetch 2",
        guarantee="no publisher confirms (confirm_delivery=False: send returns once pika "
                  "wrote it); ack after the actor returns: at least once; no result "
                  "stored; enqueue retried on a connection error (6 attempts), not "
                  "de-duplicated",
        source="dramatiq/brokers/rabbitmq.py RabbitmqBroker (confirm_delivery, enqueue, "
               "MAX_ENQUEUE_ATTEMPTS, _RabbitmqConsumer.ack); "
               "dramatiq/worker.py _ConsumerThread.post_process_message",
        broker="amqp",
        tables=("amqp",),
    ),
    Library(
        name="aio-celery",
        module="lib_aio_celery",
        dists=("aio-celery", "aio-pika"),
        env="main",
        one_slot=("{bin}/aio_celery", "worker", "_peers.lib_aio_celery:app", "-c", "1",
                  "-l", "WARNING"),
        default=("{bin}/aio_celery", "worker", "_peers.lib_aio_celery:app", "-l",
                 "WARNING"),
        default_shape="-c 10000 async tasks on one loop, prefetch 4 x c (max 65535)",
        one_slot_shape="-c 1, prefetch 4",
        guarantee="publisher confirms (aio-pika's channel default); ack after the task ran "
                  "and its result was stored (message.process() around the run): at "
                  "least once; publish not retried",
        source="aio_celery/app.py Celery.setup, send_task; aio_celery/broker.py; "
               "aio_celery/worker.py on_message_received, run; "
               "aio_pika/channel.py (publisher_confirms=True)",
        broker="amqp",
        tables=("amqp", "amqp-asyncio"),
    ),
    Library(
        name="wiretask-aio-amqp",
        module="lib_wiretask_aio_amqp",
        dists=("wiretask", "aiormq"),
        env="main",
        one_slot=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_aio_amqp:app", "-Q",
                  "wiretask-aio", "--pool", "asyncio", "-c", "1", *WARNING),
        default=("{bin}/wiretask", "worker", "-A", "_peers.lib_wiretask_aio_amqp:app", "-Q",
                 "wiretask-aio", "--pool", "asyncio", *WARNING),
        default_shape="--pool asyncio, -c CPU count, prefetch multiplier 4",
        one_slot_shape="--pool asyncio -c 1, prefetch multiplier 4",
        guarantee="as wiretask-amqp's (publisher confirms, ack after the result is "
                  "stored); client: await aapply_async / aapply_many on the AMQP "
                  "transport's asyncio twin (aiormq)",
        source="docs/asyncio.md (amqp:// row); src/wiretask/transports/amqp_aio.py",
        peer=False,
        broker="amqp",
        tables=("amqp-asyncio",),
    ),
)

FLOOR = Library(
    name="floor",
    module="floor",
    dists=("redis",),
    env="main",
    one_slot=("{python}", "-m", "_peers.floor"),
    default=("{python}", "-m", "_peers.floor"),
    default_shape="bare BRPOP loop + the task's INCR",
    one_slot_shape="bare BRPOP loop + the task's INCR",
    guarantee="none: no acknowledgement, no result, nothing checked",
    source="bench/_peers/floor.py",
    peer=False,
)

#: The floor of each table that has one.
FLOORS: dict[str, Library] = {"redis": FLOOR}

BY_NAME = {lib.name: lib for lib in (*LIBRARIES, FLOOR)}
