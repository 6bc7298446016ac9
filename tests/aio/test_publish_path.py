"""The asyncio publish's attempt: the transport's publish itself when its queue is
declared, the declaring step again once ``recover`` forgot the declared queues."""

from __future__ import annotations

import pytest
import redis

from wiretask.app import App


@pytest.mark.asyncio
async def test_a_send_declares_its_queue_again_after_a_recovery(redis_url: str) -> None:
    app = App("aio-declare", broker=redis_url, backend=redis_url, set_as_current=False)
    client = redis.Redis.from_url(redis_url)
    binding = "_kombu.binding.q.declared"
    try:
        await app.asend_task("t.x", queue="q.declared")
        assert client.exists(binding)  # declared (bound) before the first publish
        client.delete(binding)
        await app.asend_task("t.x", queue="q.declared")
        assert not client.exists(binding)  # known as declared: published at once
        app._loop_state().declared.clear()  # what the retry driver's recover does
        await app.asend_task("t.x", queue="q.declared")
        assert client.exists(binding)
        assert client.llen("q.declared") == 3
    finally:
        await app.aclose()
        app.close()
        client.close()
