"""The asyncio API on RabbitMQ when things go wrong, against the real broker (behind a
TCP proxy, ``tests/tcp_proxy.py``, where a fault is played; the shared broker itself is
never stopped):

* a broker that stops answering never blocks the loop, and every ``await`` ends by its
  timeout with the ``wiretask.errors`` error that names the cause; no connection is left;
* a cancellation at any point of a publish or of a wait leaks no connection, channel or
  consumer;
* a publish whose caller was cancelled after its frames were written is still confirmed
  or reported, and a retry of the same frames does not publish them again once the
  broker confirmed them; a retry after confirms that never came (the connection lost
  after the write) may publish twice, and says so: at least once, counted in the queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from amqp_support import raw_channel, unique
from tcp_proxy import TcpProxy
from wiretask import errors
from wiretask.app import App
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.results.rpc import RPCBackend
from wiretask.transports.amqp import AMQPTransport
from wiretask.transports.amqp_aio import AsyncAMQPTransport

from .test_cancellation import cancel_at_every_step

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

#: The bounds the faulty connections get (seconds): what each await must end by.
CONNECT_TIMEOUT = 1.0
CONFIRM_TIMEOUT = 1.0
#: How late an await may end past its bound, on a loaded 2-core machine.
SLACK = 1.0
#: How late the loop may run a 1 ms timer while the broker is frozen: a call that
#: blocked on it would hold the loop for a whole bound (a second); this leaves room for
#: the OS preempting the process on a loaded machine (measured when quiet: under 5 ms).
MAX_LAG = 0.25


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[TcpProxy]:
    port = int(amqp_url.rsplit(":", 1)[1].split("/", 1)[0])
    running = TcpProxy(port)
    yield running
    running.close()


def through(proxy: TcpProxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}//"


def fault_app(proxy: TcpProxy, **settings: Any) -> App:
    """An app whose broker (and ``rpc://`` results) are behind ``proxy``, with short
    bounds."""
    settings.setdefault("backend", "rpc://")
    return App(f"faults-{uuid.uuid4().hex[:8]}", broker=through(proxy),
               broker_connection_timeout=CONNECT_TIMEOUT,
               broker_transport_options={"confirm_timeout": CONFIRM_TIMEOUT},
               task_default_queue=unique("faults"), set_as_current=False, **settings)


def frame(body: str) -> Frame:
    return Frame(body=body.encode(), content_type="application/octet-stream",
                 content_encoding="binary", headers={"id": body})


def bodies(url: str, queue: str) -> list[str]:
    """Every message in ``queue``, taken off it."""
    taken = []
    with raw_channel(url) as channel:
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(bytes(message.body).decode())
    return taken


async def cancel_at_every_await(
    start: Callable[[], Awaitable[Any]], after_cancel: Callable[[], Awaitable[None]],
    *, limit: int = 500,
) -> int:
    """Run ``start()`` and cancel it at each of its await points in turn (a future it
    is suspended on that it was not on when last looked at): as it begins to wait
    there, then 1, 4, 16, ... turns of the loop later while it still waits there (a
    driver's connect is one await of thousands of turns, with steps inside); call
    ``after_cancel()`` after each cancellation, until a run finishes first; return how
    many runs were cancelled. ``cancel_at_every_step`` does the same at every turn of
    the loop, which is quadratic in the turns: minutes for a first publish."""
    point, delay = 1, 0
    for runs in range(limit):
        running = asyncio.ensure_future(start())
        seen, waited, last = 0, 0, None
        while not running.done():
            await asyncio.sleep(0)
            waiter = getattr(running, "_fut_waiter", None)  # CPython's, C and Python
            if waiter is not None and waiter is not last:
                last, seen, waited = waiter, seen + 1, 0
            elif seen:
                waited += 1
            if seen > point or (seen == point and waited >= delay):
                break
        if running.done():
            await running
            return runs
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await after_cancel()
        # Next: this point later, or (once it went on before the delay) the next one.
        point, delay = (point + 1, 1) if seen > point else (point, delay * 4 or 1)
    raise AssertionError(f"still not done after {limit} cancelled runs")


class LagProbe:
    """How late the loop runs a 1 ms timer, measured until ``stop()``."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.lags.append(loop.time() - before - 0.001)

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        assert len(self.lags) > 20
        return max(self.lags)


# -- a frozen broker ---------------------------------------------------------------------


async def test_a_frozen_broker_never_blocks_the_loop_and_every_await_ends_by_its_bound(
    proxy: TcpProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="wiretask.transports.amqp")
    app = fault_app(proxy)
    add = app.signature("faults.add")
    sent = await add.adelay(1, 1)  # connected: publishing, and consuming the replies
    assert proxy.open_connections == 2
    loop = asyncio.get_running_loop()
    proxy.freeze()
    probe = LagProbe()

    async def ends(awaited: Any) -> tuple[BaseException | None, float]:
        began = loop.time()
        try:
            await awaited
        except BaseException as exc:
            return exc, loop.time() - began
        return None, loop.time() - began

    async def stream() -> None:
        async for _ in sent.astates(timeout=3):
            pass

    async def cancelled_publish() -> None:
        publishing = asyncio.ensure_future(add.adelay(3, 3))
        await asyncio.sleep(0.2)  # written, its confirm awaited
        publishing.cancel()
        await publishing

    (once, once_took), (patient, patient_took), (wait, wait_took), (streamed, stream_took), \
        (cancelled, cancelled_took) = await asyncio.gather(
            ends(add.aapply_async((2, 2), retry=False)),
            ends(add.aapply_async((2, 2), retry=True,
                                  retry_policy={"max_retries": None, "timeout": 1.5})),
            ends(sent.aget(timeout=3)),
            ends(stream()),
            ends(cancelled_publish()),
        )
    closing, close_took = await ends(app.aclose())
    max_lag = await probe.stop()
    app.close()  # the sync API's part (no connection was opened by it)
    print(f"a frozen broker: publish {once_took:.2f} s, with retries {patient_took:.2f} s, "
          f"aget {wait_took:.2f} s, astates {stream_took:.2f} s, a cancelled publish "
          f"{cancelled_took:.2f} s, aclose {close_took:.2f} s; loop lag max "
          f"{max_lag * 1e3:.1f} ms")

    # A publish without retries: no confirm within confirm_timeout, its outcome unknown.
    assert isinstance(once, errors.PublishError), once
    assert isinstance(once.cause, errors.ConnectionLost)
    assert "confirm_timeout=1 s" in str(once) and "unknown" in str(once)
    assert once_took < CONFIRM_TIMEOUT + SLACK
    # With retries: reconnecting cannot work either, and the policy's deadline holds.
    assert isinstance(patient, errors.PublishError), patient
    assert "deadline of 1.5 s" in str(patient)
    assert isinstance(patient.cause, errors.ConnectionLost)
    assert "connect_timeout=1 s" in str(patient) or "confirm_timeout=1 s" in str(patient)
    assert patient_took < 1.5 + SLACK
    # Waiting for a result: the reply queue's round trip is bounded by connect_timeout.
    for error in (wait, streamed):
        assert isinstance(error, errors.ConnectionLost), error
        assert "connect_timeout=1 s" in str(error)
    assert wait_took < 3 + SLACK
    # A cancelled publish ends at once; what became of it is reported when its
    # confirm_timeout ran out (the transport's close waited for that).
    assert isinstance(cancelled, asyncio.CancelledError)
    assert cancelled_took < 0.2 + SLACK
    unknown = [r.getMessage() for r in caplog.records if "outcome is unknown" in r.getMessage()]
    assert len(unknown) == 1 and "confirm_timeout=1 s" in unknown[0], unknown
    # Closing does not wait on the frozen broker past its bounds, and leaves nothing.
    assert closing is None
    assert close_took < CONFIRM_TIMEOUT + CONNECT_TIMEOUT + SLACK
    assert max_lag < MAX_LAG, f"the loop was held {max_lag * 1e3:.0f} ms"
    for _ in range(10):  # the proxy's thread sees the sockets closed, aiormq's tasks end
        if proxy.open_connections == 0 and asyncio.all_tasks() == {asyncio.current_task()}:
            break
        await asyncio.sleep(0.02)
    assert proxy.open_connections == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


# -- cancellation at every await point -----------------------------------------------------


async def test_a_publish_cancelled_at_every_step_leaks_no_connection_or_channel(
    proxy: TcpProxy, amqp_url: str,
) -> None:
    app = fault_app(proxy, backend=None)
    add = app.signature("faults.add")
    queue = app.conf.task_default_queue
    twins: list[AsyncAMQPTransport] = []

    async def publish() -> None:
        await add.aapply_async((1, 1))

    def channels() -> int:
        twin = app.async_transport
        assert isinstance(twin, AsyncAMQPTransport)
        twins.append(twin)
        return 0 if twin._connection is None else len(twin._connection.channels)

    async def nothing_leaked() -> None:
        # At most one connection, with the publishing and the declaring channel. What a
        # cancellation dropped is closed in the background: given a moment, not more.
        for _ in range(100):
            if proxy.open_connections <= 1 and channels() <= 2:
                break
            await asyncio.sleep(0.01)
        assert proxy.open_connections <= 1
        assert channels() <= 2

    try:
        cancelled = await cancel_at_every_await(publish, nothing_leaked)
        assert cancelled >= 3
        assert len({id(twin) for twin in twins}) == 1
    finally:
        await app.aclose()
        app.close()
    await asyncio.sleep(0.05)
    assert proxy.open_connections == 0
    sync = AMQPTransport(amqp_url)
    sync.purge(queue)
    sync.close()


async def test_a_wait_cancelled_at_every_step_leaks_no_consumer_or_connection(
    proxy: TcpProxy, amqp_url: str,
) -> None:
    app = fault_app(proxy)
    result = await app.signature("faults.add").adelay(1, 1)  # never run: no worker
    backend = app.backend
    assert isinstance(backend, RPCBackend)  # rpc:// (fault_app's default)
    reply_queue = backend.reply_to

    async def wait() -> None:
        await result.aget(timeout=30)

    def consumers() -> int:
        with raw_channel(amqp_url) as channel:
            _, _, count = channel.queue_declare(reply_queue, passive=True)
            return int(count)

    async def nothing_leaked() -> None:
        await asyncio.sleep(0.01)
        assert proxy.open_connections <= 2  # the publishing one, the consuming one
        assert consumers() <= 1
        with backend._lock:
            assert not any(record.subscriptions  # no subscription left behind
                           for record in backend._tasks.values())

    for step in range(60):  # the wait never ends by itself: cancel it at each step
        running = asyncio.ensure_future(wait())
        for _ in range(step):
            await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await nothing_leaked()
    assert consumers() == 1
    await app.aclose()
    app.close()
    await asyncio.sleep(0.05)
    assert proxy.open_connections == 0
    sync = AMQPTransport(amqp_url)
    sync.purge(app.conf.task_default_queue)
    sync.close()


# -- a cancelled publish, and its retry --------------------------------------------------


@pytest_asyncio.fixture
async def twin(amqp_url: str) -> AsyncIterator[AsyncAMQPTransport]:
    made = AMQPTransport(amqp_url).async_twin()
    assert isinstance(made, AsyncAMQPTransport)
    yield made
    await made.close()


@pytest.mark.parametrize("batch", [1, 3])
async def test_a_cancelled_publish_and_a_retry_of_its_frames_land_once(
    twin: AsyncAMQPTransport, amqp_url: str, caplog: pytest.LogCaptureFixture, batch: int,
) -> None:
    """Cancelled at every turn of the loop, then published again (what a retry does:
    the same frames): each message is in the queue exactly once."""
    caplog.set_level(logging.INFO, logger="wiretask.transports.amqp")
    q = unique("once")
    sent: list[list[Frame]] = []
    retried: list[list[Frame]] = []

    async def publish() -> None:
        sent.append([frame(f"m{len(sent)}-{n}") for n in range(batch)])
        await twin.publish_many([Outgoing(f, Route(q)) for f in sent[-1]])

    async def retry() -> None:
        if sent and (not retried or retried[-1] is not sent[-1]):  # it had begun
            retried.append(sent[-1])
            await twin.publish_many([Outgoing(f, Route(q)) for f in sent[-1]])

    cancelled = await cancel_at_every_step(publish, retry)
    assert cancelled >= 3
    taken = bodies(amqp_url, q)
    expected = [f.headers["id"] for frames in sent for f in frames]
    assert sorted(taken) == sorted(expected)  # each once: none lost, none twice
    skipped = [r for r in caplog.records if "not published again" in r.getMessage()]
    assert skipped, "no cancellation came after a write: nothing proved"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_retry_after_lost_confirms_publishes_again_and_says_so(
    proxy: TcpProxy, amqp_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection dies after the broker took the message and before its confirm
    came back: the retry policy publishes it again on a new connection. RabbitMQ has no
    publish markers, so the queue holds it twice (at least once), both copies with the
    task's id, and the retry said so."""
    caplog.set_level(logging.WARNING, logger="wiretask.transports.amqp")
    app = fault_app(proxy, backend=None)
    add = app.signature("faults.add")
    queue = app.conf.task_default_queue
    sync = AMQPTransport(amqp_url)
    try:
        await add.adelay(0, 0)
        sync.purge(queue)
        proxy.lose_answers()
        result = await add.aapply_async((1, 2), retry=True, retry_policy={
            "max_retries": 3, "interval_start": 0, "interval_step": 0, "timeout": 10})
        assert sync.size(queue) == 2
        with raw_channel(amqp_url) as channel:
            ids = [channel.basic_get(queue, no_ack=True).headers["id"] for _ in range(2)]
        assert ids == [result.id, result.id]
        again = [r.getMessage() for r in caplog.records if "published again" in r.getMessage()]
        assert len(again) == 1 and result.id in again[0] and "twice" in again[0], again
    finally:
        await app.aclose()
        app.close()
        sync.purge(queue)
        sync.close()


async def test_a_declaration_cancelled_at_every_step_leaks_no_channel(
    twin: AsyncAMQPTransport,
) -> None:
    """A declaration cut short (its channel's state unknown) closes the channel it
    drops: cancelled at each of its first 64 turns of the loop (on a connected
    transport, its declaring channel open: the write is in those), then every 16th
    while it waits for the broker's answer (each of those turns looks alike)."""
    await twin.connect()
    connection = twin._connection
    assert connection is not None
    queues: list[str] = []

    async def ready() -> None:
        async with twin._lock:
            await twin._admin_channel()

    async def declare() -> None:
        queues.append(unique("declare"))
        await twin.declare_queue(queues[-1])

    async def nothing_leaked() -> None:
        for _ in range(100):  # closed in the background: given a moment
            if len(connection.channels) <= 2:
                break
            await asyncio.sleep(0.01)
        assert len(connection.channels) <= 2, connection.channels
        await ready()

    await ready()
    cancelled = 0
    for step in itertools.chain(range(64), itertools.count(64, 16)):
        running = asyncio.ensure_future(declare())
        for _ in range(step):
            await asyncio.sleep(0)
            if running.done():
                break
        if running.done():
            await running
            break
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await nothing_leaked()
        cancelled += 1
    assert cancelled >= 3
    assert twin._connection is connection  # the same connection all along


async def test_a_refusal_after_the_caller_was_cancelled_is_reported(
    amqp_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker nacks a batch whose caller was cancelled once it was written: the
    transport logs the refusal naming the task; a retry of the frame sends it again
    (it is not on the broker) and gets the refusal itself."""
    caplog.set_level(logging.WARNING, logger="wiretask.transports.amqp")
    q = unique("full")
    sync = AMQPTransport(amqp_url, queue_arguments={
        q: {"x-max-length": 1, "x-overflow": "reject-publish"}})
    twin = sync.async_twin()
    assert isinstance(twin, AsyncAMQPTransport)
    try:
        await twin.publish(frame("first"), Route(q))  # the queue is full now
        second = frame("second")
        sending = asyncio.ensure_future(twin.publish(second, Route(q)))
        channel = twin._publisher
        assert channel is not None
        while not channel.confirmations:  # its delivery tag taken, its frames queued
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        await asyncio.wait(twin._following, timeout=CONFIRM_TIMEOUT + SLACK)
        refused = [r.getMessage() for r in caplog.records if "nacked" in r.getMessage()]
        assert len(refused) == 1 and "second" in refused[0] and "cancelled" in refused[0]
        with pytest.raises(errors.TransportError, match="nacked"):
            await twin.publish(second, Route(q))  # the retry: sent again, refused again
        assert sync.size(q) == 1
    finally:
        await twin.close()
        sync.purge(q)
        sync.close()
