"""RabbitMQ for the peers' clients: how many messages a queue holds, and emptying it.

One py-amqp connection per client process (py-amqp is Celery's driver, installed with
wiretask's test extra), separate from the library's own connections, so that asking
costs the library nothing. A queue the library has not declared yet counts 0 and is
left alone (a passive declare of a missing queue closes the channel: a new one is
opened).
"""

from __future__ import annotations

import time

import amqp
from amqp.exceptions import NotFound

from _peers import amqp_url


def _connection_kwargs(url: str) -> dict[str, object]:
    from wiretask._amqp.options import parse  # noqa: PLC0415 - the URL rules, not I/O

    return dict(parse(url, {}).connection_kwargs())


class Queues:
    def __init__(self, *names: str) -> None:
        self.names = names
        self.connection = amqp.Connection(**{**_connection_kwargs(amqp_url()), "heartbeat": 0})
        self.connection.connect()
        self.channel = self.connection.channel()

    def _count(self, name: str) -> int:
        try:
            return int(self.channel.queue_declare(name, passive=True).message_count)
        except NotFound:
            self.channel = self.connection.channel()
            return 0

    def count(self) -> int:
        """Messages ready in the queues: the first answer once two in a row agree, as a
        publish without confirms may still be on its way into the queue."""
        last = -1
        deadline = time.monotonic() + 5
        while True:
            now = sum(self._count(name) for name in self.names)
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(0.05)

    def purge(self) -> None:
        for name in self.names:
            try:
                self.channel.queue_purge(name)
            except NotFound:
                self.channel = self.connection.channel()

    def close(self) -> None:
        self.connection.close()
