"""The worker on a real Redis: several messages per receive, acks batched across slots
and sent with the next receive, each ack sent only after its task's outcome was
stored."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from wiretask.app import App
from wiretask.errors import ConnectionLost
from wiretask.protocol import states
from wiretask.results.redis import PendingResult
from wiretask.testing import ForwardingTransport
from wiretask.transports.base import Delivery, Settlement
from wiretask.transports.redis import RedisTransport
from wiretask.worker import Worker

from .conftest import Recorder, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


class Watched(ForwardingTransport):
    """A Redis transport that records its batches and checks, at every ack, that the
    task's outcome is already stored."""

    def __init__(self, url: str, app: App, *, fail_first_ack: bool = False,
                 fail_first_store: bool = False) -> None:
        super().__init__(RedisTransport(url))
        self.app = app
        self.limits: list[int] = []
        self.received: list[int] = []
        self.refills: list[tuple[int, int]] = []  # (limit, received) of ack_and_receive
        self.acked: list[str] = []
        self.unstored: list[str] = []
        self.fail_first_ack = fail_first_ack
        self.failed: list[str] = []
        self.fail_first_store = fail_first_store
        self.stored_with_ack: list[str] = []
        self.stored_later: list[str] = []
        #: While set, an ack made with ``Delivery.ack`` (the worker's retries) fails as
        #: if Redis were unreachable; batch calls still work.
        self.refuse_single_acks = False
        self._watch = threading.Lock()

    def _receive_many(
        self, queues: list[str], limit: int, timeout: float
    ) -> Sequence[Delivery]:
        got = super()._receive_many(queues, limit, timeout)
        with self._watch:
            self.limits.append(limit)
            if got:
                self.received.append(len(got))
        return got

    def _check_acks(self, deliveries: Sequence[Delivery]) -> None:
        ids = [str(d.frame.task_id) for d in deliveries]
        with self._watch:
            for task_id in ids:
                meta = self.app.backend.get(task_id)
                if meta is None or meta["status"] != states.SUCCESS:
                    self.unstored.append(task_id)
            if self.fail_first_ack and ids and not self.failed:
                self.failed.extend(ids)
                raise ConnectionLost("ack lost (test)", url=self.url)
            self.acked.extend(ids)

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        self._check_acks(deliveries)
        super()._ack_many(deliveries)

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        # Single settlements only: batches go through _ack_many and the fused path.
        if self.refuse_single_acks and how in ("ack", "reject"):
            raise ConnectionLost("ack lost (test)", url=self.url)
        super()._settle(delivery, how, reason)

    def store_ack_and_receive(
        self, results: Sequence[tuple[Delivery, PendingResult]], deliveries: Sequence[Delivery],
        queues: Sequence[str], *, limit: int,
    ) -> tuple[Sequence[Delivery], list[int]]:
        self._check_acks(deliveries)
        ids = [str(d.frame.task_id) for d, _ in results]
        with self._watch:
            if self.fail_first_store and not self.failed:
                self.failed.extend(ids)
                raise ConnectionLost("store lost (test)", url=self.url)
        # The forwarder of FusedSettlement (RedisTransport offers it) is next in line.
        got, skipped = super().store_ack_and_receive(results, deliveries, queues, limit=limit)
        with self._watch:
            self.refills.append((limit, len(got)))
            for i, task_id in enumerate(ids):
                # Written and acked in one script: the result is there, the ack is done.
                meta = self.app.backend.get(task_id)
                if meta is None or meta["status"] != states.SUCCESS:
                    self.unstored.append(task_id)
                (self.stored_later if i in skipped else self.stored_with_ack).append(task_id)
            self.acked.extend(t for i, t in enumerate(ids) if i not in skipped)
        return got, skipped

    def _ack_and_receive(
        self, deliveries: list[Delivery], queues: list[str], limit: int
    ) -> Sequence[Delivery]:
        self._check_acks(deliveries)
        got = super()._ack_and_receive(deliveries, queues, limit)
        with self._watch:
            self.refills.append((limit, len(got)))
        return got


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    application = App("wt", broker=redis_url, backend=redis_url)
    yield application
    application.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_batches_in_and_out_every_task_once_acked_after_its_result(
    app: App, redis_url: str, client: redis.Redis, recorder: Recorder
) -> None:
    note = recorder.note_task(app)

    results = note.apply_many([((i,), {}) for i in range(60)])
    transport = Watched(redis_url, app)
    worker = Worker(app, concurrency=4, prefetch=4, transport=transport)
    with worker:
        assert [r.get(timeout=20) for r in results] == list(range(60))
        wait_until(lambda: len(transport.acked) == 60, what="every ack")
    assert sorted(i for (i,) in recorder.of("ran")) == list(range(60))
    assert sorted(transport.acked) == sorted(r.id for r in results)
    assert transport.unstored == []  # no ack before its outcome was stored
    # Broker and backend share the database: every result went with its ack.
    assert sorted(transport.stored_with_ack) == sorted(r.id for r in results)
    # The first receive had room for concurrency + prefetch and found that many waiting.
    assert transport.limits[0] == 8 and transport.received[0] == 8
    limits = transport.limits + [limit for limit, _ in transport.refills]
    assert max(limits) <= 8
    assert sum(transport.received) + sum(got for _, got in transport.refills) == 60
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert app.transport.size("celery") == 0


@pytest.fixture
def split_app(redis_url: str) -> Iterator[App]:
    """Broker and result backend in two databases: results are stored on their own,
    before the ack, not in its script."""
    backend_url = redis_url.rsplit("/", 1)[0] + "/14"
    results = redis.Redis.from_url(backend_url)
    results.flushdb()
    application = App("wt", broker=redis_url, backend=backend_url)
    yield application
    application.close()
    results.flushdb()
    results.close()


def _runs(recorder: Recorder) -> dict[Any, int]:
    ran: dict[Any, int] = {}
    for (i,) in recorder.of("ran"):
        ran[i] = ran.get(i, 0) + 1
    return ran


def _run_six_with_a_failed_ack(
    app: App, redis_url: str, recorder: Recorder, *, retries_fail: bool,
    then: Callable[[Watched], None],
) -> Watched:
    """Six tasks on a worker whose first ack call fails (and, with ``retries_fail``, its
    retries too); ``then`` runs while the worker still runs, after every result."""

    note = recorder.note_task(app)

    results = note.apply_many([((i,), {}) for i in range(6)])
    transport = Watched(redis_url, app, fail_first_ack=True)
    transport.refuse_single_acks = retries_fail
    with Worker(app, concurrency=2, transport=transport):
        assert [r.get(timeout=20) for r in results] == list(range(6))
        then(transport)
    assert transport.failed and transport.unstored == []
    assert transport.stored_with_ack == []  # two databases: results stored on their own
    return transport


def test_a_failed_batch_ack_is_retried_so_nothing_runs_twice(
    split_app: App, redis_url: str, client: redis.Redis, recorder: Recorder
) -> None:
    def retried(transport: Watched) -> None:
        # The consumer acks them again (about every second) while the worker runs.
        wait_until(lambda: client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0,
                   timeout=10, what="the failed acks retried")

    _run_six_with_a_failed_ack(split_app, redis_url, recorder, retries_fail=False,
                               then=retried)
    assert split_app.transport.size("celery") == 0  # nothing came back when it closed
    assert _runs(recorder) == dict.fromkeys(range(6), 1)


def test_an_ack_that_never_goes_through_leaves_the_message_to_be_delivered_again(
    split_app: App, redis_url: str, client: redis.Redis, recorder: Recorder
) -> None:
    app = split_app

    def refused(transport: Watched) -> None:
        wait_until(lambda: len(transport.acked) == 6 - len(transport.failed), what="acks")
        time.sleep(1.5)  # at least one retry, refused

    transport = _run_six_with_a_failed_ack(app, redis_url, recorder, retries_fail=True,
                                           then=refused)
    # Unacknowledged, they went back to the queue when the worker closed its transport:
    # at least once, never lost.
    waiting = sorted(str(p.frame.task_id) for p in app.transport.peek("celery"))
    assert waiting == sorted(transport.failed)
    with Worker(app, concurrency=2):
        recorder.wait_for("ran", 6 + len(transport.failed), timeout=20)
        wait_until(lambda: app.transport.size("celery") == 0 and client.hlen("unacked") == 0,
                   what="the redelivered ones acked")
    ran = _runs(recorder)
    assert sorted(ran) == list(range(6)) and sum(ran.values()) == 6 + len(transport.failed)


def test_a_result_stored_with_its_ack_follows_the_state_rules(
    app: App, redis_url: str, client: redis.Redis, recorder: Recorder
) -> None:
    """A task that already has a state: PROGRESS may be followed by SUCCESS; a SUCCESS
    (a redelivered task that had finished) is never replaced. Both messages are acked."""

    note = recorder.note_task(app)

    results = note.apply_many([((i,), {}) for i in range(2)])
    app.backend.store(results[0].id, states.make_meta(results[0].id, "PROGRESS", None))
    first = states.make_meta(results[1].id, states.SUCCESS, "first")
    app.backend.store(results[1].id, first)
    transport = Watched(redis_url, app)
    with Worker(app, concurrency=1, transport=transport):
        recorder.wait_for("ran", 2, timeout=20)
        wait_until(lambda: len(transport.acked) + len(transport.stored_later) == 2
                   and client.hlen("unacked") == 0, what="both acked")
    assert sorted(transport.stored_later) == sorted(r.id for r in results)
    assert results[0].get(timeout=5) == 0
    assert app.backend.get(results[1].id) == first
    assert app.transport.size("celery") == 0


def test_results_whose_write_failed_are_stored_again_not_run_again(
    app: App, redis_url: str, client: redis.Redis, recorder: Recorder
) -> None:
    """A store-and-ack call that fails: the tasks ran, so their results are stored and
    their messages acked again until the broker answers (issue 13 item 3); the tasks do
    not run a second time (they used to be requeued and run again)."""
    note = recorder.note_task(app)

    results = note.apply_many([((i,), {}) for i in range(4)])
    transport = Watched(redis_url, app, fail_first_store=True)
    with Worker(app, concurrency=2, transport=transport):
        assert [r.get(timeout=20) for r in results] == list(range(4))
        wait_until(lambda: client.hlen("unacked") == 0 and app.transport.size("celery") == 0,
                   timeout=10, what="every message acked")
    assert transport.failed and transport.unstored == []
    ran = [i for (i,) in recorder.of("ran")]
    assert sorted(ran) == list(range(4))  # each ran once, the failed ones included
