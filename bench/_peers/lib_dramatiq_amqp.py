"""Dramatiq on RabbitMQ (pika): the broker and actor its worker runs, and the bench client.

Worker: ``dramatiq _peers.lib_dramatiq_amqp`` (``--processes 1 --threads 1`` for one
slot). ``RabbitmqBroker`` with its defaults (``confirm_delivery=False``: ``send``
returns once pika wrote the message) and the default middleware (no result stored).
"""

from __future__ import annotations

import urllib.parse

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from _peers import ARGS, COUNTER, DONE, KWARGS, amqp_url, redis_url
from _peers._amqp import Queues

URL = redis_url()
QUEUE = "default"


def _pika_url(url: str) -> str:
    """Kombu's ``amqp://host//`` names the vhost ``/``; pika reads the path after its
    first slash, URL-quoted, so the same vhost is ``/%2F`` there."""
    parts = urllib.parse.urlsplit(url)
    vhost = parts.path[1:] or "/"
    return parts._replace(path="/" + urllib.parse.quote(vhost, safe="")).geturl()


broker = RabbitmqBroker(url=_pika_url(amqp_url()))
dramatiq.set_broker(broker)
_counter = redis.Redis.from_url(URL)


@dramatiq.actor(actor_name="small")
def small(a: int, b: str, c: list[int], flag: bool = False, name: str = "") -> int:
    if _counter.incr(COUNTER) == 0:
        _counter.lpush(DONE, 1)
    return a


class Client:
    # dramatiq.group(...).run() enqueues its messages one by one.
    batch_api = "no batch API: a loop of actor.send"

    def __init__(self) -> None:
        self.queues = Queues(QUEUE)

    def enqueue(self) -> None:
        small.send(*ARGS, **KWARGS)

    def batch(self, n: int) -> None:
        for _ in range(n):
            small.send(*ARGS, **KWARGS)

    def queued(self) -> int:
        return self.queues.count()

    def reset(self) -> None:
        self.queues.purge()

    def close(self) -> None:
        broker.close()
        self.queues.close()
