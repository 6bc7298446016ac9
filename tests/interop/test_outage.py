"""Redis outages, against a real private ``redis-server`` that the tests stop and start:
publish retry (with a real Celery worker running what survived the outage, and
Celery's own retry feeding wiretask's worker), publish failure after the policy, no
duplicate from a retried publish, a worker that outlives a Redis restart, and a worker
killed with SIGKILL mid-task.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery

from interop.celery_tasks import make_client
from interop.support import WAIT, CeleryWorker, subprocess_env, wait_for
from interop.wiretask_tasks import STARTED_KEY, make_app
from wiretask.app import App
from wiretask.errors import ConnectionLost, PublishError
from wiretask.transports.redis import RedisTransport
from wiretask.worker import Worker

if TYPE_CHECKING:
    from conftest import RedisServer  # tests/conftest.py

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: A policy that outlasts a ~0.5 s outage (and a redis-server start) comfortably.
PATIENT = {"max_retries": 10, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.5}


def queued(url: str, queue: str = "celery") -> list[str]:
    """Task ids waiting in ``queue`` (ready or scheduled), read straight from Redis."""
    transport = RedisTransport(url)
    try:
        return [str(p.frame.task_id) for p in transport.peek(queue)]
    finally:
        transport.close()


@pytest.fixture
def private_url(redis_server: RedisServer) -> str:
    return f"{redis_server.url}/0"


@pytest.fixture
def wt(private_url: str) -> Iterator[App]:
    app = make_app(private_url)
    yield app
    app.close()


def restart_later(server: RedisServer, delay: float) -> threading.Thread:
    """Start ``server`` again after ``delay`` seconds, from a thread (the outage)."""
    thread = threading.Timer(delay, server.start)
    thread.start()
    return thread


# -- publishing while Redis is down ----------------------------------------------------


def publish_through_an_outage(
    server: RedisServer, url: str, publish: Callable[[], str]
) -> str:
    """Stop ``server``, start it again 0.5 s later, and meanwhile ``publish`` (with a
    retry policy that outlasts the outage); check that the publish waited for Redis and
    that its message landed exactly once. Returns the task id ``publish`` returned."""
    server.stop()
    restarter = restart_later(server, 0.5)
    started = time.monotonic()
    task_id = publish()
    elapsed = time.monotonic() - started
    restarter.join()
    assert elapsed >= 0.4, "the publish cannot have succeeded while Redis was down"
    assert queued(url) == [task_id]  # landed exactly once
    return task_id


@pytest.mark.interop
def test_publish_retries_through_a_restart_and_celery_runs_the_message_once(
    redis_server: RedisServer, private_url: str, wt: App
) -> None:
    wt.transport.connect()  # connected first: the outage breaks a live connection
    result = wt.AsyncResult(publish_through_an_outage(
        redis_server, private_url,
        lambda: wt.send_task("interop.add", (40, 2), retry=True, retry_policy=PATIENT).id,
    ))
    with CeleryWorker(private_url, ["celery"]):
        assert result.get(timeout=WAIT) == 42
    assert queued(private_url) == []


@pytest.mark.interop
def test_celerys_publish_retried_through_a_restart_runs_once_on_wiretask(
    redis_server: RedisServer, private_url: str, wt: App
) -> None:
    """The other direction: Celery's own publish retry (Kombu's ``ensure``) carries a
    call through the outage, wiretask's worker runs it once, and Celery reads the
    result. The sender has no result backend: Celery's Redis backend subscribes to
    the result channel before publishing, which an outage breaks outside the publish
    retry.

    The warm-up goes to the same queue on purpose. Kombu 5.7's retry fails, once Redis
    is back, with ``AttributeError: 'NoneType' object has no attribute 'client'`` when
    the retried publish is the first to its queue and the outage broke a connection
    that had published to another queue (seen with Kombu 5.7.0 while writing this
    test)."""
    sender = Celery("interop-sender", broker=private_url, set_as_current=False)
    sender.conf.broker_connection_retry_on_startup = True
    reader = make_client(private_url)
    try:
        # A first publish leaves a live pooled connection for the outage to break (its
        # message goes with the restart: no persistence).
        sender.send_task("interop.add", (0, 0))
        task_id = publish_through_an_outage(
            redis_server, private_url,
            lambda: sender.send_task("interop.add", (40, 2), retry=True,
                                     retry_policy=PATIENT).id,
        )
        with Worker(wt, queues=["celery"], concurrency=1, shutdown_timeout=5):
            result = reader.AsyncResult(task_id)
            assert result.get(timeout=WAIT) == 42
            assert result.state == "SUCCESS"
        assert queued(private_url) == []
    finally:
        sender.close()
        reader.close()


def test_publish_gives_up_after_the_policy_with_publish_error(
    redis_server: RedisServer, wt: App
) -> None:
    redis_server.stop()

    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        wt.send_task("interop.add", (1, 2), retry=True, retry_policy={
            "max_retries": 2, "interval_start": 0.1, "interval_step": 0.1,
            "interval_max": 0.1,
        })
    elapsed = time.monotonic() - started

    assert caught.value.attempts == 3  # the first one and two retries
    assert isinstance(caught.value.cause, ConnectionLost)
    assert caught.value.__cause__ is caught.value.cause
    assert caught.value.task_id is not None
    assert 0.2 <= elapsed < 5


def test_publish_without_retry_fails_at_once(redis_server: RedisServer, wt: App) -> None:
    redis_server.stop()

    with pytest.raises(PublishError) as caught:
        wt.send_task("interop.add", (1, 2), retry=False)

    assert caught.value.attempts == 1


# -- the ambiguous failure: the write landed, the reply was lost -------------------------


class ReplyDroppingProxy:
    """A TCP proxy in front of Redis that, once armed, lets the next write whose commands
    contain ``trigger`` (the publish marker key, written by both publish paths) reach
    Redis, swallows Redis's reply to it (the ``EXEC`` array of a ``MULTI``, or the integer
    reply of the one-command ``EVALSHA`` publish) so that the write has run, and closes
    the client's connection: the client sees a connection error for a write that landed.
    A ``NOSCRIPT`` reply (the script not loaded yet) is passed on and the proxy re-armed,
    since nothing ran. ``landed_cuts`` counts such cuts. Disarms itself after one."""

    def __init__(self, port: int, trigger: bytes = b"_wiretask.published.") -> None:
        self.target = ("127.0.0.1", port)
        self.trigger = trigger
        self.armed = threading.Event()
        self.landed_cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            cut = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, cut),
                             daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, cut),
                             daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket,
                  cut: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and self.trigger in data:
                    self.armed.clear()
                    cut.set()
                server.sendall(data)
        except OSError:
            pass

    def _downstream(self, server: socket.socket, client: socket.socket,
                    cut: threading.Event) -> None:
        swallowed = b""
        try:
            while data := server.recv(65536):
                if not cut.is_set():
                    client.sendall(data)
                    continue
                server.settimeout(5.0)  # bounded, should the write never be answered
                swallowed += data
                if swallowed.startswith(b"-NOSCRIPT"):  # nothing ran: let redis-py EVAL
                    client.sendall(swallowed)
                    swallowed = b""
                    server.settimeout(None)
                    cut.clear()
                    self.armed.set()
                    continue
                # EVALSHA's integer reply, or EXEC's array reply after +OK/+QUEUED.
                if swallowed.startswith(b":") or (b"\r\n" + swallowed).find(b"\r\n*") >= 0:
                    self.landed_cuts += 1
                    break
        except OSError:
            pass
        for sock in (client, server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[ReplyDroppingProxy]:
    p = ReplyDroppingProxy(redis_server.port)
    yield p
    p.close()


def test_publish_retried_after_a_lost_reply_lands_once(
    proxy: ReplyDroppingProxy, private_url: str
) -> None:
    app = make_app(proxy.url)
    try:
        app.transport.connect()
        proxy.armed.set()
        result = app.send_task("interop.add", (1, 2), retry=True, retry_policy=PATIENT)
    finally:
        app.close()

    assert proxy.landed_cuts == 1, "no publish landed with its reply lost: nothing proved"
    assert queued(private_url) == [result.id]


def test_batch_publish_retried_after_a_lost_reply_lands_once(
    proxy: ReplyDroppingProxy, private_url: str
) -> None:
    app = make_app(proxy.url)
    try:
        app.transport.connect()
        proxy.armed.set()
        results = app.tasks["interop.add"].apply_many(
            [(1, 1), (2, 2), (3, 3)], retry=True, retry_policy=PATIENT
        )
    finally:
        app.close()

    assert proxy.landed_cuts == 1, "no publish landed with its reply lost: nothing proved"
    assert sorted(queued(private_url)) == sorted(r.id for r in results)


# -- consuming through an outage -------------------------------------------------------


def test_worker_reconnects_after_redis_restarts(redis_server: RedisServer, wt: App) -> None:
    with Worker(wt, queues=["celery"], concurrency=1, shutdown_timeout=5):
        assert wt.send_task("interop.add", (1, 1)).get(timeout=WAIT) == 2

        redis_server.stop()  # the worker's connections break; it backs off and retries
        restarter = restart_later(redis_server, 1.0)  # empty again: no persistence
        after = wt.send_task("interop.add", (2, 2), retry=True, retry_policy=PATIENT)
        restarter.join()

        assert after.get(timeout=WAIT) == 4


# -- a worker killed mid-task ----------------------------------------------------------


def start_wiretask_worker(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "worker", "-A", "interop.wiretask_tasks:app",
         "-Q", "celery", "-c", "1", "--loglevel", "WARNING"],
        env=subprocess_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err.decode(errors="replace")


def test_message_of_a_sigkilled_worker_comes_back_and_runs_on_a_new_worker(
    private_url: str,
) -> None:
    url = f"{private_url}?visibility_timeout=2&restore_interval=0.5"
    client = redis.Redis.from_url(private_url)
    app = make_app(url)
    workers = [start_wiretask_worker(url)]
    try:
        result = app.send_task("interop.slow", (1.5,))
        wait_for(lambda: client.lrange(STARTED_KEY, 0, -1),
                 what="the first worker to start the task")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        assert result.state == "PENDING"  # it never finished there

        workers.append(start_wiretask_worker(url))
        assert result.get(timeout=WAIT) == "slept"
        runs: list[Any] = client.lrange(STARTED_KEY, 0, -1)
        assert runs == [result.id.encode()] * 2  # started on both workers
    finally:
        errors = [stop(worker) for worker in workers]
        app.close()
        client.close()
    assert workers[1].returncode == 0, errors[1]  # the second one stopped cleanly
