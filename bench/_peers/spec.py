"""What the harness runs per library: its client module, its worker commands, and its
delivery guarantee as read in its source (the versions pinned in
``bench/requirements-peers.txt``; paths are inside each project's wheel).

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


WARNING = ("-l", "WARNING")

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

BY_NAME = {lib.name: lib for lib in (*LIBRARIES, FLOOR)}
