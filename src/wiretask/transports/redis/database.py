"""The Redis database a transport talks to, as every part of the transport sees it.

``Database`` is built once from the parsed options (``wiretask._redis.options``) and
shared by the parts (publishing, consuming, settling, leases, admin, scheduler): the key
names and priority steps, redis-py's pool and client (the cold paths: bindings, restore,
inspection, lease renewal), the lean ``Commands`` client of the hot paths (receive, ack,
publish), and the error boundary of each action.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wiretask._errormap import map_exceptions
from wiretask._redis.client import Commands, Target
from wiretask._redis.errors import Boundaries
from wiretask._redis.options import RedisOptions
from wiretask.errors import ImproperlyConfigured
from wiretask.transports.redis.envelope import bucket_for, queue_key

__all__ = ["Database", "text"]


class Database:
    """One Redis database, its key names and the connections to it.

    Raises:
        ImproperlyConfigured: a connection option redis-py refuses.
    """

    def __init__(self, config: RedisOptions) -> None:
        #: The URL with its password masked (what messages show).
        self.url = config.masked_url
        self.keys = config.keys
        #: Kombu's ``priority_steps``: one list per step and queue.
        self.steps = config.priority_steps
        #: The bucket of priority 0 (the common case, computed once).
        self.bucket0 = bucket_for(0, self.steps)
        # redis-py's own retries are off: a retried LPUSH after a timeout can publish
        # twice, and the publish retry policy above the transport decides anyway.
        redis_options = {**config.redis_kwargs, "retry": Retry(NoBackoff(), 0)}
        try:
            self.pool = redis.ConnectionPool.from_url(config.redis_url, **redis_options)
            # Building (not connecting) one connection checks the options now, not later.
            self.pool.connection_class(**self.pool.connection_kwargs)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"bad Redis connection option for {self.url}: {exc}", setting="broker_url"
            ) from exc
        self.password: str | None = self.pool.connection_kwargs.get("password")
        #: Which database this is (``stores_results_of`` compares it with a backend's).
        self.target = Target.of(self.pool)
        timeout = self.pool.connection_kwargs.get("socket_timeout")
        self.socket_timeout: float | None = float(timeout) if timeout else None
        #: redis-py's client: the cold paths.
        self.client = redis.Redis(connection_pool=self.pool)
        #: The hot paths (receive, ack, publish) go through this, not ``client``.
        self.commands = Commands(self.pool)
        self._boundaries = Boundaries(self.pool, url=self.url, secret=self.password)

    def errors(self, action: str) -> map_exceptions:
        """``with database.errors(action):`` translates redis-py exceptions by
        ``REDIS_ERRORS`` (the only place they are caught), scrubbing the password, and
        drops the pool's idle connections after a wrong-server reply
        (``wiretask._redis.errors.Boundaries``). One boundary per action, made once."""
        return self._boundaries(action)

    def lists(self, queues: Sequence[str]) -> list[str]:
        """The bucket lists of ``queues``, bucket-major (every queue's list of bucket 0
        in ``queues`` order, then of the next bucket, ...): BRPOP's order, and ``POP``'s."""
        p = self.keys.p
        return [p(queue_key(queue, step)) for step in self.steps for queue in queues]

    def disconnect(self) -> None:
        """Close every connection; each reconnects on its next use."""
        self.commands.disconnect()
        self.pool.disconnect()


def text(value: bytes | str) -> str:
    """A reply as text (redis-py answers bytes)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
