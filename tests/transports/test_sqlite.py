"""The embedded SQLite broker: single process, real failures, and several processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wiretask.errors import (
    ConnectionLost,
    EncodeError,
    ImproperlyConfigured,
    PublishError,
    TransportError,
    ValidationError,
)
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.retry import RetryPolicy, call_with_retry
from wiretask.transports.sqlite import SCHEMA_VERSION, SQLiteTransport

Q = Route("q")


def frame(body: bytes = b"x", **properties: object) -> Frame:
    return Frame(body=body, content_type="application/json", content_encoding="utf-8",
                 headers={"id": body.decode(errors="replace"), "nested": [1, {"a": None}]},
                 properties=properties)


@pytest.fixture
def transport(tmp_db: Path) -> Iterator[SQLiteTransport]:
    with SQLiteTransport(tmp_db, visibility_timeout=5) as t:
        yield t


def take(transport: SQLiteTransport, queues: list[str], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        delivery = transport.receive(queues, timeout=2)
        assert delivery is not None
        out.append(delivery.frame.body)
        delivery.ack()
    return out


# -- URLs and options -----------------------------------------------------------------------


def test_url_paths_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SQLiteTransport.from_url("sqlite:///sub/broker.db")
    assert relative.path == str(tmp_path / "sub" / "broker.db")
    absolute = SQLiteTransport.from_url(f"sqlite:///{tmp_path}/abs.db")
    assert absolute.path == f"{tmp_path}/abs.db"
    assert absolute.url == f"sqlite:///{tmp_path}/abs.db"
    assert SQLiteTransport.from_url("sqlite:///with%20space.db").path.endswith("with space.db")


def test_url_options_win_over_keyword_defaults(tmp_path: Path) -> None:
    url = (f"sqlite:///{tmp_path}/b.db?visibility_timeout=5&busy_timeout=0.5"
           "&synchronous=normal&create_directory=false&heartbeat_interval=1")
    transport = SQLiteTransport.from_url(url, visibility_timeout=9)
    assert transport.visibility_timeout == 5
    assert transport.capabilities.visibility_timeout == 5
    assert SQLiteTransport.from_url(f"sqlite:///{tmp_path}/b.db",
                                    visibility_timeout=9).visibility_timeout == 9
    assert transport.busy_timeout == 0.5
    assert transport.synchronous == "normal"
    assert transport.heartbeat_interval == 1
    assert transport.create_directory is False
    assert SQLiteTransport(tmp_path / "c.db", visibility_timeout=6).heartbeat_interval == 2


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "without a file path"),
        ("sqlite:///", "without a file path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/x.db", "no host"),
        ("redis://x", "not an sqlite"),
        ("sqlite:///x.db?visibility=3", "unknown sqlite transport option"),
        ("sqlite:///x.db?visibility_timeout=soon", "number of seconds"),
        ("sqlite:///x.db?visibility_timeout=0", "visibility_timeout"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?create_directory=maybe", "true or false"),
        ("sqlite:///x.db?visibility_timeout=3&heartbeat_interval=3", "shorter"),
    ],
)
def test_bad_urls_and_options(url: str, match: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=match):
        SQLiteTransport.from_url(url)


def test_construction_does_no_io(tmp_path: Path) -> None:
    SQLiteTransport(tmp_path / "missing" / "b.db")
    assert not (tmp_path / "missing").exists()


# -- schema ---------------------------------------------------------------------------------


def test_schema_version_is_recorded_and_newer_files_are_refused(tmp_db: Path) -> None:
    SQLiteTransport(tmp_db).connect()
    with sqlite3.connect(tmp_db) as conn:
        (version,) = conn.execute(
            "SELECT version FROM wiretask_schema WHERE component='transport'"
        ).fetchone()
        assert version == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("UPDATE wiretask_schema SET version=? WHERE component='transport'",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(TransportError, match="newer wiretask") as info:
        SQLiteTransport(tmp_db).connect()
    assert not info.value.recoverable


def test_a_file_that_is_not_a_database_is_not_recoverable(tmp_db: Path) -> None:
    tmp_db.write_bytes(b"this is not an sqlite database, just some text" * 100)
    with pytest.raises(TransportError) as info:
        SQLiteTransport(tmp_db).publish(frame(), Q)
    assert not isinstance(info.value, ConnectionLost)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


# -- single-process behaviour --------------------------------------------------------------


def test_priorities_fifo_and_several_queues(transport: SQLiteTransport) -> None:
    transport.publish(frame(b"a0"), Route("a"))
    transport.publish(frame(b"b9", priority=9), Route("b"))
    transport.publish(frame(b"a255", priority=255), Route("a"))
    transport.publish(frame(b"a9", priority=9), Route("a"))
    transport.publish(frame(b"b0"), Route("b"))
    assert take(transport, ["a", "b"], 5) == [b"a255", b"b9", b"a9", b"a0", b"b0"]
    assert transport.receive(["a", "b"], timeout=0) is None


def test_frames_round_trip(transport: SQLiteTransport) -> None:
    sent = Frame(
        body=bytes(range(256)) * 3, content_type="application/x-msgpack",
        content_encoding="binary",
        headers={"uni": "héllo ✓ 日本", "n": None, "t": True, "big": 2**70, "f": 0.1,
                 "deep": {"l": [[], {}, [1, [2, [3]]]]}},
        properties={"correlation_id": "c", "reply_to": "r", "delivery_mode": 2,
                    "expiration": "60000", "priority": 3},
    )
    transport.publish(sent, Q)
    delivery = transport.receive(["q"], timeout=1)
    assert delivery is not None
    assert delivery.frame == sent
    delivery.ack()


def test_bad_values_are_refused_before_anything_is_stored(transport: SQLiteTransport) -> None:
    bad = Frame(body=b"", content_type="x", content_encoding="binary",
                headers={"raw": b"\x00"})
    with pytest.raises(EncodeError, match="headers"):
        transport.publish_many([Outgoing(frame(b"ok"), Q), Outgoing(bad, Q)])
    with pytest.raises(ValidationError):
        transport.publish(frame(priority=256), Q)
    with pytest.raises(ValidationError):
        transport.publish(frame(), Q, not_before=datetime(2030, 1, 1))
    assert transport.size("q") == 0


def test_delayed_delivery_is_held_by_the_broker(transport: SQLiteTransport) -> None:
    not_before = datetime.now(UTC) + timedelta(seconds=0.3)
    transport.publish(frame(b"later"), Q, not_before=not_before)
    assert transport.receive(["q"], timeout=0) is None
    [peeked] = transport.peek("q")
    assert (peeked.state, peeked.not_before) == ("scheduled", not_before)
    delivery = transport.receive(["q"], timeout=5)
    assert time.time() >= not_before.timestamp()
    assert delivery is not None
    assert (delivery.frame.body, delivery.redelivered) == (b"later", False)
    delivery.ack()


def test_size_purge_peek(transport: SQLiteTransport) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    transport.publish_many([
        Outgoing(frame(b"s1"), Q, later),
        Outgoing(frame(b"r1"), Q),
        Outgoing(frame(b"r2", priority=3), Q),
    ])
    assert transport.size("q") == 3
    assert [(p.frame.body, p.state) for p in transport.peek("q")] == [
        (b"r2", "ready"), (b"r1", "ready"), (b"s1", "scheduled"),
    ]
    assert len(transport.peek("q", limit=1)) == 1
    held = transport.receive(["q"], timeout=0)
    assert held is not None
    assert transport.size("q") == 2
    assert transport.purge("q") == 2
    assert transport.size("q") == 0
    held.ack()


def test_requeue_reject_dead_letter_and_double_settle(transport: SQLiteTransport) -> None:
    transport.publish_many([Outgoing(frame(b"1"), Q), Outgoing(frame(b"2"), Q)])
    first = transport.receive(["q"], timeout=0)
    assert first is not None
    first.reject(requeue=True)
    again = transport.receive(["q"], timeout=0)
    assert again is not None
    assert (again.frame.body, again.redelivered) == (b"1", True)
    again.dead_letter("no such task")
    with pytest.raises(TransportError, match="already dead-lettered"):
        again.ack()
    second = transport.receive(["q"], timeout=0)
    assert second is not None
    second.reject()
    with pytest.raises(TransportError, match="already rejected"):
        second.reject(requeue=True)
    assert transport.size("q") == 0
    [dead] = transport.dead_letters("q")
    assert (dead.reason, dead.frame) == ("no such task", frame(b"1"))


def test_unreadable_stored_rows_are_dead_lettered_not_blocking(
    transport: SQLiteTransport, tmp_db: Path
) -> None:
    transport.publish(frame(b"corrupt"), Q)
    transport.publish(frame(b"fine"), Q)
    with sqlite3.connect(tmp_db) as conn:
        conn.execute("UPDATE wiretask_messages SET headers='{not json' WHERE body=?",
                     (b"corrupt",))
    assert take(transport, ["q"], 1) == [b"fine"]
    [dead] = transport.dead_letters("q")
    assert dead.reason.startswith("unreadable stored frame")
    assert dead.frame is None
    assert dead.raw == b"corrupt"


def test_close_returns_unsettled_deliveries_at_once(tmp_db: Path) -> None:
    consumer = SQLiteTransport(tmp_db, visibility_timeout=60)
    consumer.publish(frame(b"m"), Q)
    delivery = consumer.receive(["q"], timeout=0)
    assert delivery is not None
    consumer.close()
    with pytest.raises(TransportError, match="closed"):
        delivery.ack()
    with SQLiteTransport(tmp_db) as other:
        back = other.receive(["q"], timeout=0)
        assert back is not None
        assert (back.frame.body, back.redelivered) == (b"m", True)
        back.ack()
    consumer.close()


def test_live_lease_is_kept_by_the_heartbeat(tmp_db: Path) -> None:
    holder = SQLiteTransport(tmp_db, visibility_timeout=0.6)
    holder.publish(frame(b"long task"), Q)
    delivery = holder.receive(["q"], timeout=0)
    assert delivery is not None
    with SQLiteTransport(tmp_db, visibility_timeout=0.6) as other:
        # Three visibility timeouts pass while the task "runs": never redelivered.
        assert other.receive(["q"], timeout=1.8) is None
    delivery.ack()
    assert holder.size("q") == 0
    holder.close()


def test_many_threads_share_one_transport(transport: SQLiteTransport) -> None:
    transport.publish_many([Outgoing(frame(str(i).encode()), Q) for i in range(200)])
    seen: list[bytes] = []
    lock = threading.Lock()

    def consume() -> None:
        while (delivery := transport.receive(["q"], timeout=0.3)) is not None:
            with lock:
                seen.append(delivery.frame.body)
            delivery.ack()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(seen) == sorted(str(i).encode() for i in range(200))


# -- real failures: recoverable errors and the retry policy --------------------------------


def test_locked_database_is_connection_lost(tmp_db: Path) -> None:
    transport = SQLiteTransport(tmp_db, busy_timeout=0.05)
    transport.connect()
    locker = sqlite3.connect(tmp_db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConnectionLost, match="locked") as info:
            transport.publish(frame(), Q)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert info.value.recoverable
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    transport.publish(frame(), Q)  # the same transport works again
    assert transport.size("q") == 1
    transport.close()


def test_retry_rides_out_a_database_lock(tmp_db: Path) -> None:
    transport = SQLiteTransport(tmp_db, busy_timeout=0.05)
    transport.connect()
    locker = sqlite3.connect(tmp_db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    retries: list[int] = []

    def on_retry(exc: BaseException, number: int, delay: float) -> None:
        assert isinstance(exc, ConnectionLost)
        retries.append(number)
        if number == 2:  # the other process finishes its long transaction
            locker.execute("ROLLBACK")

    policy = RetryPolicy(max_retries=5, interval_start=0.01, interval_step=0.01,
                         interval_max=0.05)
    try:
        call_with_retry(lambda: transport.publish(frame(b"ok"), Q), policy,
                        recover=transport.connect, on_retry=on_retry)
    finally:
        locker.close()
    assert retries == [1, 2]  # attempts 1 and 2 failed, attempt 3 published
    assert take(transport, ["q"], 1) == [b"ok"]
    transport.close()


@pytest.mark.parametrize("failure", ["path-is-a-file", "directory-renamed-away"])
def test_retry_rides_out_an_unavailable_file_at_connect(tmp_path: Path, failure: str) -> None:
    home = tmp_path / "broker"
    db = home / "b.db"
    if failure == "path-is-a-file":
        home.write_text("in the way")  # mkdir of the parent fails
        transport = SQLiteTransport(db)

        def restore() -> None:
            home.unlink()
    else:
        home.mkdir()
        SQLiteTransport(db).connect()
        home.rename(tmp_path / "away")  # sqlite cannot open a file in a missing dir
        transport = SQLiteTransport(db, create_directory=False)

        def restore() -> None:
            (tmp_path / "away").rename(home)

    with pytest.raises(ConnectionLost):
        transport.publish(frame(), Q)

    attempts = 0

    def publish() -> None:
        nonlocal attempts
        attempts += 1
        transport.publish(frame(b"after outage"), Q)

    def on_retry(exc: BaseException, number: int, delay: float) -> None:
        if number == 3:
            restore()

    policy = RetryPolicy(max_retries=5, interval_start=0.01, interval_step=0.01,
                         interval_max=0.02)
    call_with_retry(publish, policy, recover=transport.connect, on_retry=on_retry)
    # Attempts 1-3 failed (2 and 3 inside recover()), attempt 4 connected and published.
    assert attempts == 2
    assert take(transport, ["q"], 1) == [b"after outage"]
    transport.close()


def test_outage_longer_than_the_policy_is_a_publish_error(tmp_path: Path) -> None:
    (tmp_path / "in-the-way").write_text("")
    transport = SQLiteTransport(tmp_path / "in-the-way" / "b.db")
    with pytest.raises(PublishError) as info:
        call_with_retry(lambda: transport.publish(frame(), Q),
                        RetryPolicy(max_retries=2, interval_step=0.01, interval_max=0.01),
                        recover=transport.connect, task_id="tid")
    assert info.value.attempts == 3
    assert info.value.task_id == "tid"
    assert isinstance(info.value.cause, ConnectionLost)


# -- several processes ---------------------------------------------------------------------

CHILD_PRELUDE = """
import os, sys, time
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.sqlite import SQLiteTransport
"""

# Producers and consumers behave like the real ones: a publish goes through the retry
# policy, and a consumer that sees a recoverable error (the write lock stayed busy past
# busy_timeout under heavy contention) reconnects and goes on, as the worker does.
PRODUCER = CHILD_PRELUDE + """
from wiretask.retry import RetryPolicy, call_with_retry
db, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = SQLiteTransport(db)
policy = RetryPolicy(max_retries=10, interval_start=0.1, interval_max=1)
for i in range(n):
    f = Frame(body=f"{name}-{i}".encode(), content_type="text/plain", content_encoding="utf-8")
    call_with_retry(lambda: t.publish(f, Route("work")), policy, recover=t.connect)
t.close()
"""

CONSUMER = CHILD_PRELUDE + """
from wiretask.errors import ConnectionLost
db, done = sys.argv[1], sys.argv[2]
t = SQLiteTransport(db, visibility_timeout=30)
while True:
    try:
        d = t.receive(["work"], timeout=0.3)
    except ConnectionLost:
        t.connect()
        continue
    if d is None:
        if os.path.exists(done):
            break
        continue
    print(d.frame.body.decode(), int(d.redelivered), flush=True)
    while True:
        try:
            d.ack()
            break
        except ConnectionLost:
            t.connect()
t.close()
"""

HOLDER = CHILD_PRELUDE + """
db, vt, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
t = SQLiteTransport(db, visibility_timeout=vt)
d = t.receive(["q"], timeout=10)
print("got", d.frame.body.decode(), flush=True)
if hold < 0:
    sys.stdin.readline()  # wait to be told (after a SIGSTOP/SIGCONT)
else:
    time.sleep(hold)
try:
    d.ack()
    print("acked", flush=True)
except Exception as exc:
    print("failed", type(exc).__name__, exc, flush=True)
"""


def spawn(script: str, *args: object, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None, text=True,
    )


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.mark.slow
def test_producers_and_consumers_in_several_processes(tmp_path: Path) -> None:
    db, done = tmp_path / "b.db", tmp_path / "done"
    SQLiteTransport(db).connect()  # create the schema once, before the race
    consumers = [spawn(CONSUMER, db, done) for _ in range(3)]
    producers = [spawn(PRODUCER, db, f"p{i}", 200) for i in range(3)]
    try:
        for proc in producers:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        done.touch()
        results = [proc.communicate(timeout=60) for proc in consumers]
    finally:
        for proc in producers + consumers:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(consumers, results, strict=True):
        assert proc.returncode == 0, err
    outputs = [out for out, _ in results]
    lines = [line.split() for out in outputs for line in out.splitlines()]
    received = [body for body, _ in lines]
    expected = {f"p{i}-{j}" for i in range(3) for j in range(200)}
    assert len(received) == len(expected)  # nothing delivered twice
    assert set(received) == expected  # nothing lost
    assert {flag for _, flag in lines} == {"0"}  # acked in time: no redelivery
    assert SQLiteTransport(db).size("work") == 0


@pytest.mark.slow
def test_killed_consumer_message_comes_back_after_the_visibility_timeout(
    tmp_db: Path,
) -> None:
    vt = 2.0
    with SQLiteTransport(tmp_db, visibility_timeout=vt) as transport:
        transport.publish(frame(b"job"), Q)
        holder = spawn(HOLDER, tmp_db, vt, 3600)
        try:
            assert first_line(holder) == "got job"
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
            # Its lease has at least 2/3 of the visibility timeout left.
            assert transport.receive(["q"], timeout=0) is None
            delivery = transport.receive(["q"], timeout=vt * 5)
        finally:
            if holder.poll() is None:
                holder.kill()
        assert delivery is not None
        assert (delivery.frame.body, delivery.redelivered) == (b"job", True)
        delivery.ack()
        assert transport.size("q") == 0


@pytest.mark.slow
def test_live_consumer_in_another_process_keeps_its_message(tmp_db: Path) -> None:
    vt = 0.6
    with SQLiteTransport(tmp_db, visibility_timeout=vt) as transport:
        transport.publish(frame(b"slow job"), Q)
        holder = spawn(HOLDER, tmp_db, vt, vt * 4)
        try:
            assert first_line(holder) == "got slow job"
            # The holder runs for four visibility timeouts; meanwhile nobody gets it.
            assert transport.receive(["q"], timeout=vt * 3) is None
            assert first_line(holder) == "acked"
            assert holder.wait(timeout=10) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
        assert transport.size("q") == 0
        assert transport.receive(["q"], timeout=0) is None


@pytest.mark.slow
def test_stalled_consumer_loses_its_lease_and_is_told_on_ack(tmp_db: Path) -> None:
    vt = 0.6
    with SQLiteTransport(tmp_db, visibility_timeout=vt) as transport:
        transport.publish(frame(b"job"), Q)
        holder = spawn(HOLDER, tmp_db, vt, -1, stdin=True)
        try:
            assert first_line(holder) == "got job"
            os.kill(holder.pid, signal.SIGSTOP)  # a stalled process: no heartbeats
            delivery = transport.receive(["q"], timeout=vt * 10)
            assert delivery is not None
            assert delivery.redelivered
            delivery.ack()
            os.kill(holder.pid, signal.SIGCONT)
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert first_line(holder).startswith("failed TransportError")
            assert holder.wait(timeout=10) == 0
        finally:
            if holder.poll() is None:
                os.kill(holder.pid, signal.SIGCONT)
                holder.kill()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_transport_inherited_through_fork_works_in_the_child(tmp_db: Path) -> None:
    vt = 0.6
    transport = SQLiteTransport(tmp_db, visibility_timeout=vt)
    transport.publish_many([Outgoing(frame(b"parent's"), Q), Outgoing(frame(b"child's"), Q)])
    held = transport.receive(["q"], timeout=0)  # the parent's heartbeat thread is running
    assert held is not None
    assert held.frame.body == b"parent's"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same object, a fresh connection, its own leases
        code = 1
        try:
            os.close(read_end)
            mine = transport.receive(["q"], timeout=5)
            if mine is not None and mine.frame.body == b"child's":
                os.write(write_end, b"got")
                time.sleep(vt * 4)  # only the child's own heartbeat can keep this lease
                mine.ack()
                code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        assert os.read(read_end, 3) == b"got"
    finally:
        os.close(read_end)
    # The parent settles and closes: that must not touch the child's lease.
    held.ack()
    transport.close()
    with SQLiteTransport(tmp_db, visibility_timeout=vt) as observer:
        assert observer.receive(["q"], timeout=vt * 3) is None
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # the child's ack kept its lease
        assert observer.size("q") == 0


def test_many_connections_opening_a_new_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.db"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_one() -> None:
        transport = SQLiteTransport(path)
        try:
            start.wait(5)
            transport.connect()
            transport.declare_queue("q")
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)
        finally:
            transport.close()

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []


def test_a_url_given_as_a_path_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(ImproperlyConfigured, match="is a URL, not a file path") as info:
        SQLiteTransport(url)
    assert "from_url" in str(info.value)
    assert SQLiteTransport.from_url(url).path == str(tmp_path / "b.db")
