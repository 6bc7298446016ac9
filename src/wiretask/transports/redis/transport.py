"""``RedisTransport``: the transport contract on Redis, put together from its parts.

The class holds the configuration and composes one part per job; each hook and
capability method delegates to the part that does it (the package doc describes the
wire and names the parts). Nothing here talks to Redis itself except ``connect``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from wiretask._redis import scripts
from wiretask._redis.client import target_of
from wiretask._redis.options import DelayMode, parse
from wiretask.errors import ValidationError
from wiretask.protocol.frame import Frame
from wiretask.transports.base import (
    BoundQueue,
    Capabilities,
    DeadLetter,
    Delivery,
    Exchange,
    Peeked,
    Prepared,
    QueueStats,
    Settlement,
    Transport,
    queue_names,
)
from wiretask.transports.redis.admin import Admin
from wiretask.transports.redis.broadcast import Broadcaster, RedisInbox
from wiretask.transports.redis.consuming import Consumer
from wiretask.transports.redis.database import Database
from wiretask.transports.redis.delivery import RedisDelivery
from wiretask.transports.redis.leases import LeaseKeeper, Restorer
from wiretask.transports.redis.publishing import Publisher
from wiretask.transports.redis.scheduler import Movers, Scheduler
from wiretask.transports.redis.settling import Settler

if TYPE_CHECKING:
    from wiretask.protocol.states import PendingState
    from wiretask.transports.redis.aio import AsyncRedisTransport

__all__ = ["RedisTransport"]


class RedisTransport(Transport):
    """Kombu-compatible Redis transport for ``redis://`` and ``rediss://`` URLs.

    Args:
        url: ``redis[s]://[[user]:password@]host[:port][/db][?option=value&...]``. Query
            options are wiretask's own (below) or redis-py connection options; the URL
            wins over keyword arguments.
        delay_mode: what becomes of a message published with ``not_before`` (see the
            package doc and spec/TRANSPORTS.md §1.5). ``"auto"`` (default): it waits
            broker-side in ``_wiretask.delayed`` while a mover (a wiretask worker or
            ``wiretask scheduler`` on this database and key prefix) is alive, as its
            heartbeat read at most ``MOVER_CACHE`` (1 s) ago says; with none it goes
            straight to the queue with its ``eta`` header, as Celery sends it, and the
            consumer holds it. ``"native"``: it always waits broker-side (a message held
            while no mover runs reaches its queue only through a consumer's
            ``restore_visible`` after its due time: late by up to that scan's period,
            about 100 s for Celery workers). ``"celery"``: never (and
            ``capabilities.native_delay`` is False).
        global_keyprefix: Prepended to every key, as Kombu's option of that name.
        visibility_timeout: Kombu's: seconds after which an unacked message that no
            wiretask consumer leases (a Celery worker's) is restored (default 3600, as
            Kombu's). Keep it at least as long as the Celery workers sharing the
            database hold a message (their longest task, their longest eta).
        lease_timeout: Seconds after which a message received by a wiretask consumer
            that stopped renewing its lease (it died, or lost the reply of the pop that
            took it) is restored (default 60, at most ``visibility_timeout``). See spec
            TRANSPORTS.md §1.3: why this is safe next to Celery workers, and how long a lost message
            takes to come back.
        lease_interval: Seconds between lease renewals of held deliveries (default:
            ``lease_timeout / 4``, and at most ``visibility_timeout / 6`` and 60).
        restore_interval: Least seconds between two ``restore_visible`` scans that
            ``receive`` runs (default ``lease_timeout / 4``, at most 30; Kombu's
            effective cadence is about 100).
        restore_limit: Most messages restored per scan (default: all).
        poll_interval: Seconds between atomic ``POP`` attempts while the queues are
            empty, instead of blocking in BRPOP (default: None, BRPOP). See the package
            doc.
        publish_markers: Write a marker per message so that retried publishes do not
            duplicate (default True, see the package doc). False publishes as Kombu does
            (one LPUSH, no extra key) for fleets that accept at-least-once publishing.
        priority_steps: Kombu's ``priority_steps`` (default ``[0, 3, 6, 9]``).
        unacked_key, unacked_index_key, unacked_mutex_key, unacked_mutex_expire: Kombu's
            options of those names.
        **redis_options: Passed to ``redis.ConnectionPool`` (``socket_timeout`` defaults to
            15 s and ``socket_connect_timeout`` to 5 s; redis-py's own retries are off,
            the publish retry policy above decides).

    Raises:
        ImproperlyConfigured: bad URL scheme or option.
    """

    def __init__(self, url: str, **options: Any) -> None:
        config = parse(url, options)
        #: What the asyncio twin is built from (``async_twin``).
        self._config = config
        self._db = db = Database(config)
        self.url = db.url
        self.delay_mode: DelayMode = config.delay_mode
        self.visibility_timeout = config.visibility_timeout
        self.lease_timeout = config.lease_timeout
        self.lease_interval = config.lease_interval
        self.restore_interval = config.restore_interval
        self.restore_limit = config.restore_limit
        self.poll_interval = config.poll_interval
        self.publish_markers = config.publish_markers
        self.capabilities = Capabilities(
            native_delay=config.delay_mode != "celery",
            priorities=True,
            priority_order="lower-first",
            max_priority=9,
            out_of_range_priority="clamp",
            per_message_ttl=False,
            visibility_timeout=config.visibility_timeout,
        )
        #: Which database this is (``stores_results_of`` compares it with a backend's,
        #: through ``wiretask._redis.client.target_of``).
        self._redis = db.target
        # The parts, one per job (see the package doc).
        self._restorer = Restorer(
            db, visibility_timeout=config.visibility_timeout,
            interval=config.restore_interval, limit=config.restore_limit,
            mutex_expire=config.mutex_expire,
        )
        self._leases = LeaseKeeper(db, config.lease_interval, config.lease_timeout,
                                   self._restorer)
        self._settler = Settler(self, db, self._leases, self._restorer)
        self._consumer = Consumer(
            self, db, leases=self._leases, restorer=self._restorer, settler=self._settler,
            poll_interval=config.poll_interval, lease_timeout=config.lease_timeout,
        )
        movers = Movers(db)
        hold = {"auto": movers.alive, "native": lambda: True, "celery": lambda: False}
        self._publisher = Publisher(db, hold=hold[config.delay_mode],
                                    visibility_timeout=config.visibility_timeout,
                                    markers=config.publish_markers)
        self._admin = Admin(db)
        self._scheduler = Scheduler(db, movers)
        self._broadcaster = Broadcaster(db)

    def __repr__(self) -> str:
        return f"<RedisTransport {self.url} delay_mode={self.delay_mode}>"

    def async_twin(self) -> AsyncRedisTransport:
        """The asyncio twin: the same URL, options, key layout and publish markers, over
        ``redis.asyncio`` (``transports.redis.aio``). It shares no connection with this
        transport."""
        from wiretask.transports.redis.aio import AsyncRedisTransport  # noqa: PLC0415

        return AsyncRedisTransport(self._config, self.capabilities)

    # -- life cycle -----------------------------------------------------------------

    def connect(self) -> None:
        """Check the connection and load the scripts (so that the first ``EVALSHA`` of
        each needs no ``EVAL`` fallback), in one round trip."""
        with self._db.errors("connect"):
            self._db.commands.run([("PING",), *(("SCRIPT", "LOAD", script.text)
                                                for script in scripts.TRANSPORT_SCRIPTS)])

    def close(self) -> None:
        """Stop the lease heartbeat, return held deliveries to the front of their queues
        (RPUSH, flagged redelivered, like Kombu's ``restore_unacked``), remove this
        process's mover heartbeat if ``due()`` wrote one, and disconnect. If Redis is
        unreachable the messages stay in ``unacked`` and come back through
        ``restore_visible`` after ``visibility_timeout``, and the heartbeat expires."""
        self._leases.close(self._restorer)
        self._scheduler.retire()
        self._db.disconnect()

    # -- producing ------------------------------------------------------------------

    def _declare(self, queue: str) -> None:
        """What Celery's declare does for a queue on its default direct exchange of the
        same name: bind ``queue`` to exchange ``queue`` with routing key ``queue``."""
        self._admin.bind_queue(queue, queue, queue)

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, *,
        exchange_type: Literal["direct", "topic"] = "direct",
    ) -> None:
        """Bind ``queue`` to a named exchange (``Admin.bind_queue``: Kombu's
        ``_queue_bind``, direct or topic; fanout is not supported).

        Raises:
            ValidationError: an empty queue or exchange name, or another exchange type.
            ConnectionLost, TransportError: Redis failed.
        """
        self._admin.bind_queue(queue, exchange, routing_key, exchange_type=exchange_type)

    def _publish(self, messages: Sequence[Prepared]) -> None:
        """``Publisher.publish``: the whole batch and its publish marker in one
        ``MULTI``/``EXEC``; all of it lands or none, and a retry of the same frames after
        ``ConnectionLost`` does not duplicate what landed."""
        self._publisher.publish(messages)

    # -- consuming ------------------------------------------------------------------

    def _receive(self, queues: list[str], timeout: float) -> RedisDelivery | None:
        """Next message from ``queues``: priority bucket first (0 before 3, 6, 9), then
        queue order, rotated round-robin after each delivery (Kombu's default
        ``queue_order_strategy``), FIFO within a list. Waits up to ``timeout`` seconds.

        Delayed messages of ``queues`` that are due are moved into their lists first, in
        the same script, so a consumer needs no scheduler for its own queues; Celery
        consumers of a queue rely on ``due()`` (the worker's or ``run_scheduler``)."""
        received = self._receive_many(queues, 1, timeout)
        return received[0] if received else None

    def _receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> list[RedisDelivery]:
        """``Consumer.receive_many``: up to ``limit`` messages in one ``POP`` run, exactly
        those that ``limit`` consecutive ``receive`` calls would return."""
        return self._consumer.receive_many(queues, limit, timeout)

    def _ack_and_receive(
        self, deliveries: list[Delivery], queues: list[str], limit: int
    ) -> list[RedisDelivery]:
        """Acknowledge ``deliveries`` and take up to ``limit`` messages, in one ``POP``
        script run: the acks land with the pops or neither does. Never waits. A
        delivery that was settled already raises ``TransportError`` before anything is
        done; deliveries of another transport are acknowledged by their own ``ack()``
        first."""
        return self._consumer.store_ack_and_receive((), deliveries, queues, limit)[0]

    def stores_results_of(self, backend: object) -> bool:
        """Whether ``backend`` keeps its results in this transport's Redis database, so
        that ``store_ack_and_receive`` can write them in the script that acks."""
        return target_of(backend) == self._redis

    def store_ack_and_receive(
        self, results: Sequence[tuple[Delivery, PendingState]], deliveries: Sequence[Delivery],
        queues: Sequence[str], *, limit: int,
    ) -> tuple[list[RedisDelivery], list[int]]:
        """One ``POP`` run that writes each result of ``results`` (a state the
        result backend prepared, for a delivery of this transport) and acknowledges
        its delivery, if the task has no state stored yet; acknowledges
        ``deliveries``; and takes up to ``limit`` (0: none) messages, never waiting.
        Returns the messages taken and the positions in ``results`` that were not
        written because a state was already stored: their deliveries stay
        unacknowledged, for the caller to store under the full rules
        (``RedisBackend.store_pending``) and then ack. Only for a result backend on
        this same database (``stores_results_of``).

        Raises:
            ValidationError: no queue, or ``limit`` not an int >= 0.
            ConnectionLost: Redis cannot be reached; nothing is known to be written.
            TransportError: any other failure (a delivery settled already: nothing done).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", f"must be an int >= 0, got {limit!r}")
        names = queue_names(queues, required=True)
        return self._consumer.store_ack_and_receive(results, deliveries, names, limit)

    # -- settling (called by RedisDelivery under its lock) -----------------------------

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        self._settler.settle(delivery, how, reason)

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        """Acknowledge several deliveries in one round trip (one ``ACK`` script call);
        see ``Settler.ack_many``."""
        self._settler.ack_many(deliveries)

    # -- leases and visibility ----------------------------------------------------------

    def restore_visible(self) -> int:
        """Kombu's ``QoS.restore_visible`` (``Restorer.restore_visible``): restore every
        message whose lease is older than ``visibility_timeout``, under the
        ``unacked_mutex`` lock. Returns how many; 0 when another process holds the mutex.

        Raises:
            ConnectionLost, TransportError: Redis failed.
        """
        return self._restorer.restore_visible()

    # -- delayed delivery (BrokerDelay) ---------------------------------------------------

    def due(self, *, limit: int = 1000) -> int:
        """Move every due delayed message into its list (``Scheduler.due``: the ``DUE``
        script, ``limit`` per call to Redis); return how many moved. Safe to call from
        many processes. Each call refreshes this process's mover heartbeat, valid for
        ``MOVER_TTL`` (10 s): a process that calls it is a mover, for which publishers
        in ``delay_mode="auto"`` hold delayed messages broker-side.

        Raises:
            ConnectionLost, TransportError: Redis failed.
        """
        return self._scheduler.due(limit=limit)

    def movers(self) -> dict[str, float]:
        """The live movers of this database and key prefix (wiretask workers and
        schedulers that ran ``DUE`` within their heartbeat): mover id -> when its
        heartbeat expires (unix s). While there is one, ``delay_mode="auto"`` holds
        delayed messages broker-side.

        Raises:
            ConnectionLost, TransportError: Redis failed.
        """
        return self._scheduler.live()

    # -- inspection (Inspection) and admin ------------------------------------------------

    def size(self, queue: str) -> int:
        """Ready and scheduled messages of ``queue`` (not the ones in flight)."""
        return self._admin.size(queue)

    def purge(self, queue: str) -> int:
        """Remove the ready and scheduled messages of ``queue``; return how many."""
        return self._admin.purge(queue)

    def peek(self, queue: str, *, limit: int = 100) -> list[Peeked]:
        """Ready messages in delivery order (bucket 0 first, oldest first), then scheduled
        ones by due time. Entries that are not envelopes are left out."""
        return self._admin.peek(queue, limit=limit)

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Entries of ``<queue>.dead``, oldest first."""
        return self._admin.dead_letters(queue)

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """``QueueStatistics``: every queue's numbers in one script run (see
        ``Admin.queue_stats`` for how each is read, and what Redis cannot tell)."""
        return self._admin.queue_stats(queues)

    # -- broadcast (Broadcast: Kombu's fanout over pub/sub and its reply queues) ----------

    def broadcast(self, exchange: Exchange, frame: Frame, *, routing_key: str = "") -> None:
        """``Broadcaster.broadcast``: fanout over pub/sub, direct and topic through
        Kombu's binding table."""
        self._broadcaster.broadcast(exchange, frame, routing_key)

    def listen(self, exchange: Exchange, queue: BoundQueue) -> RedisInbox:
        """``Broadcaster.listen``: a pub/sub subscription (fanout) or the queue's lists."""
        return self._broadcaster.listen(exchange, queue)
