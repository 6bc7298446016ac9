"""The floors: the least redis-py code that moves the same bytes (issue 18).

Client: ``enqueue`` is one ``LPUSH`` of a pre-built message (the exact bytes wiretask
writes for the payload; nothing is built per call), ``batch(n)`` one non-transactional
pipeline of ``n`` such ``LPUSH``. Worker (``python -m _peers.floor``): a bare ``BRPOP``
loop that runs the task body (the counter ``INCR``) for every message and nothing else:
no decoding, no acknowledgement, no result.
"""

from __future__ import annotations

import redis

from _peers import COUNTER, DONE, redis_url

URL = redis_url()
QUEUE = "floor"


def _wiretask_message() -> bytes:
    """What wiretask's ``apply_async`` writes for the payload, taken off its queue."""
    from _peers import ARGS, KWARGS  # noqa: PLC0415 - only the client needs wiretask
    from _peers.lib_wiretask import QUEUE as WT_QUEUE  # noqa: PLC0415
    from _peers.lib_wiretask import app, small  # noqa: PLC0415

    small.apply_async(ARGS, KWARGS)
    client = redis.Redis.from_url(URL)
    try:
        message = client.rpop(WT_QUEUE)
    finally:
        client.close()
    app.close()
    if message is None:
        raise RuntimeError("wiretask published nothing to copy for the floor")
    return bytes(message)


class Client:
    batch_api = "one redis-py pipeline of LPUSH"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(URL)
        self.message = _wiretask_message()

    def enqueue(self) -> None:
        self.redis.lpush(QUEUE, self.message)

    def batch(self, n: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for _ in range(n):
            pipe.lpush(QUEUE, self.message)
        pipe.execute()

    def queued(self) -> int:
        return int(self.redis.llen(QUEUE))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.redis.close()


def main() -> None:
    """The floor worker: ``BRPOP``, ``INCR``, until SIGTERM."""
    client = redis.Redis.from_url(URL)
    while True:
        if client.brpop([QUEUE], timeout=1) is not None and client.incr(COUNTER) == 0:
            client.lpush(DONE, 1)


if __name__ == "__main__":
    main()
