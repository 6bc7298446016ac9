"""Redis transport, wire-compatible with Kombu 5.7's Redis transport (Celery's default).

What wiretask publishes runs on a Celery worker and what Celery publishes runs on
wiretask's worker, sharing queues, ack bookkeeping and bindings. Keys (all behind the
``global_keyprefix`` option, exactly like Kombu):

===================================== ====== ==============================================
key                                   type   content
===================================== ====== ==============================================
``<queue>``, ``<queue>\\x06\\x16<3|6|9>`` list   Kombu envelopes (JSON), one list per
                                             priority bucket; LPUSH in, RPOP/BRPOP out
``_kombu.binding.<exchange>``         set    ``routing_key\\x06\\x16pattern\\x06\\x16queue``
``_kombu.binding_permanent.<ex>``     set    the same members (keeps Kombu 5.7's sweeper off)
``unacked`` / ``unacked_index``       hash / tag -> ``[envelope, exchange, routing_key]`` /
                                      zset   tag -> delivery (or last lease) time; also
                                             the restore tokens of held messages
``unacked_mutex``                     string redis-py lock guarding ``restore_visible``
``_wiretask.leases``                  zset   tag -> when the lease of a wiretask
                                             consumer on it runs out (unix s)
``_wiretask.delayed``                 zset   member -> due time (unix s), all queues
``_wiretask.delayed.messages``        hash   member -> ``[list, queue, envelope, 1]`` JSON
``_wiretask.delayed.queue.<queue>``   zset   member -> due time, one queue's share
``_wiretask.movers``                  zset   mover id -> heartbeat expiry (unix s)
``_wiretask.published.<id>``          string publish marker of one publish attempt (one
                                             message or a batch), set by the same script
                                             as the pushes; expires after
                                             ``PUBLISH_MARKER_TTL``
``<queue>.dead``                      list   dead letters, oldest first (RPUSH), each
                                             ``{"reason", "raw", "raw_encoding", "queue",
                                             "at"}``; ``raw_encoding`` is ``"text"`` (raw
                                             is the entry text) or ``"base64"``
===================================== ====== ==============================================

A delayed member is ``<delivery_tag>\\x06\\x16<queue>``: one per destination queue.
Every entry wiretask writes carries its publish time in the envelope property
``x-wiretask-published`` (and a delayed one its due time in ``x-wiretask-due``), after
Kombu's own properties; Kombu and Celery ignore them, queue statistics read them.

**Priorities** follow Kombu: ``priority_steps`` ``[0, 3, 6, 9]``, values clamped to 0..9, and
BRPOP drains bucket 0 first, so on Redis **a lower number is a higher priority**.

**Consuming** first runs the ``POP`` script, which pops *and* records the message in
``unacked``/``unacked_index`` in one atomic step (Kombu's BRPOP + MULTI leaves a gap);
``receive_many`` pops up to ``limit`` of them in the same script run, exactly those that
as many single receives would get. ``ack`` (and ``ack_many``, for a batch) is one
``ACK`` script run. Only
when every bucket is empty does the transport block in BRPOP (Redis cannot block and move
from several lists at once); a message that arrives during that wait is recorded right
after the pop, so a consumer killed (or a connection lost) in that one round trip loses
that message, as with Kombu (kombu#305, celery#4354). With the ``poll_interval`` option
the transport never blocks in BRPOP: it runs ``POP`` again every ``poll_interval``
seconds, which closes that window for good at the price of latency and idle polling.
Entries that are not envelopes are popped by ``POP`` without being recorded and then
written to ``<queue>.dead`` (one round trip in which a crash loses them).

**Delayed delivery** (spec/TRANSPORTS.md §1.5): a held ``not_before`` message waits
in the ``_wiretask.delayed*`` keys, held by no consumer, so no visibility timeout can
redeliver it however long it waits (kombu#337). ``receive`` moves the due messages of
the queues it consumes inside ``POP`` and never blocks past the next one, so a wiretask
consumer needs no scheduler; ``due()`` (which the worker calls periodically) and
``run_scheduler`` move those of every queue, which Celery consumers need: they are the
*movers*, and each run refreshes the mover's heartbeat in ``_wiretask.movers``. With
``delay_mode="auto"`` (the default) a publisher holds a message only while a mover is
alive (checked at most once a second); otherwise it pushes it at once with its ``eta``
header, as Celery does. Every held message also has a *restore token* in ``unacked``
(member -> ``[envelope, "", queue]``, scored ``due - visibility_timeout``), so that any
consumer's ``restore_visible``, Celery's included, pushes it once due if no mover did;
whoever removes the token pushes the message, so it is pushed once. Moved messages are
plain entries with their ``eta`` header, so Celery workers run them too.

**Publishing is idempotent across retries.** Every publish attempt writes one marker key
atomically with its pushes (one ``MULTI``/``EXEC`` transaction for one message or a
whole batch, sent in one write), so the messages and their marker land together or not
at all. When a publish fails with ``ConnectionLost`` its outcome is unknown (the
write may have run and only the reply been lost); the transport remembers each staged
message with its attempt's marker, and when the same ``Frame`` object is published again
(the publish retry driver does exactly that) it reuses the delivery tag and checks that
marker first: a message that already landed is not pushed twice. Every attempt has its
own marker, so a retry that sends only part of an earlier batch, and fails again, still
leaves each message's fate readable. The guarantee lasts ``PUBLISH_MARKER_TTL``
seconds after the first attempt; the cost is one short-lived key per publish call (about
300 s x the call rate keys alive at once) and a transaction instead of a bare LPUSH. The
``publish_markers=False`` option turns this off and publishes exactly as Kombu does.

The hot paths (receive, ack, publish, and the result backend's store) send their
commands through ``wiretask._redis.client.Commands``, on connections it keeps, instead of through
``redis.Redis``: redis-py 8 spends more CPU on its client and pool per command than a
loopback round trip takes.

**Leases.** While this process holds a delivery a heartbeat thread refreshes its
``unacked_index`` score and its lease in ``_wiretask.leases`` (``ZADD XX``) every
``lease_interval`` seconds, so neither wiretask's nor Celery's ``restore_visible`` hands a
running message to a second consumer. A lease nobody renews runs out after
``lease_timeout`` (default 60 s) and a wiretask restorer brings the message back then,
while messages without a lease (a Celery worker's) wait for Kombu's whole
``visibility_timeout`` (spec TRANSPORTS.md §1.3 says why that is safe). Set ``lease_interval`` below
the smallest ``visibility_timeout`` of any consumer on the database.

**Layout.** The package is split by job; ``RedisTransport`` (``transport``) composes one
part of each and delegates its hooks to them:

=================== ==================================================================
module              job
=================== ==================================================================
``transport``       ``RedisTransport``: options, capabilities, connect/close, delegation
``database``        ``Database``: key names, redis-py's pool and client, ``Commands``,
                    the error boundary of each action (shared by every part)
``publishing``      ``Publisher``: list entries, markers, the unsettled-retry memory
``consuming``       ``Consumer``: ``POP``, the BRPOP fallback, round robin, taking entries
``settling``        ``Settler``: ack, reject, requeue, dead-letter; batches; settle-once
``leases``          ``LeaseKeeper`` (held deliveries, heartbeat) and ``Restorer``
                    (``restore_visible``, restore by tag, the ``unacked_mutex``)
``admin``           ``Admin``: bindings, ``size``/``purge``/``peek``/``dead_letters``, and
                    any other command that reports on queues
``scheduler``       ``Scheduler`` (``due``), ``Movers`` (the heartbeat) and
                    ``run_scheduler``
``broadcast``       ``Broadcaster``: fanout over pub/sub and reply queues (``Broadcast``:
                    Celery's remote control, ``spec/control.md``)
``envelope``        Kombu's list entry, priorities and bindings (pure)
``deadletters``     the ``<queue>.dead`` entries (written by several parts, read by admin)
``delivery``        ``RedisDelivery``
=================== ==================================================================

The Lua scripts, key names and options are the shared plumbing in ``wiretask._redis``.
"""

from wiretask.transports.redis.delivery import RedisDelivery
from wiretask.transports.redis.scheduler import run_scheduler
from wiretask.transports.redis.transport import RedisTransport

__all__ = ["RedisDelivery", "RedisTransport", "run_scheduler"]
