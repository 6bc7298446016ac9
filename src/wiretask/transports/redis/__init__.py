"""Redis transport, wire-compatible with Kombu 5.7's Redis transport (Celery's default).

See ``wiretask.transports.redis.transport``.
"""

from wiretask.transports.redis.transport import RedisDelivery, RedisTransport, run_scheduler

__all__ = ["RedisDelivery", "RedisTransport", "run_scheduler"]
