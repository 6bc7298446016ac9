"""What is particular to the sqlite:// backend: processes, locking, pruning, errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from wiretask.errors import ConnectionLost, ImproperlyConfigured, TransportError
from wiretask.protocol import states
from wiretask.protocol.states import make_meta
from wiretask.results import backend_from_url
from wiretask.results import sqlite as sqlite_backend
from wiretask.results.sqlite import SQLiteBackend, path_from_url

DONE = "2026-01-01T00:00:00+00:00"


def url_for(path: Path) -> str:
    return f"sqlite:///{path}"


def run_child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_url_paths_follow_sqlalchemy() -> None:
    assert path_from_url("sqlite:///rel/x.db") == "rel/x.db"
    assert path_from_url("sqlite:////abs/x.db") == "/abs/x.db"
    for bad in ["sqlite://", "sqlite:///:memory:", "sqlite://host/x.db", "memory://x"]:
        with pytest.raises(ImproperlyConfigured):
            path_from_url(bad)


@pytest.mark.slow
def test_a_subscriber_sees_every_state_stored_by_another_process(tmp_db: Path) -> None:
    url = url_for(tmp_db)
    backend = backend_from_url(url)
    task_id = str(uuid.uuid4())
    sub = backend.subscribe(task_id)  # before the other process stores anything
    child = run_child(f"""
        import time
        from wiretask.results import backend_from_url
        from wiretask.protocol.states import make_meta
        b = backend_from_url({url!r})
        tid = {task_id!r}
        b.store(tid, make_meta(tid, "STARTED", {{"pid": 1}}))
        for i in range(30):
            b.store(tid, make_meta(tid, "PROGRESS", {{"current": i}}))
            if i % 10 == 0:
                time.sleep(0.05)
        b.store(tid, make_meta(tid, "SUCCESS", "done", date_done={DONE!r}))
        b.close()
    """)
    got = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = sub.next(deadline - time.monotonic())
        if meta is not None:
            got.append(meta)
            if meta["status"] in states.READY_STATES:
                break
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert [m["status"] for m in got] == ["STARTED", *["PROGRESS"] * 30, "SUCCESS"]
    assert [m["result"]["current"] for m in got[1:-1]] == list(range(30))
    assert got[-1]["result"] == "done"
    sub.close()
    backend.close()


@pytest.mark.slow
def test_a_late_subscriber_in_another_process_gets_the_current_then_later_states(
    tmp_db: Path,
) -> None:
    url = url_for(tmp_db)
    backend = backend_from_url(url)
    task_id = str(uuid.uuid4())
    backend.store(task_id, make_meta(task_id, "PROGRESS", {"current": 0}))
    child = run_child(f"""
        import json
        from wiretask.results import backend_from_url
        b = backend_from_url({url!r})
        with b.subscribe({task_id!r}) as sub:
            print("subscribed", flush=True)
            while True:
                meta = sub.next(20)
                assert meta is not None, "timed out"
                print(meta["status"], json.dumps(meta["result"]), flush=True)
                if sub.finished:
                    break
    """)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "subscribed"
    for i in range(1, 4):
        backend.store(task_id, make_meta(task_id, "PROGRESS", {"current": i}))
    backend.store(task_id, make_meta(task_id, "SUCCESS", 7, date_done=DONE))
    # The rest through the same reader: readline() may have buffered the lines after
    # "subscribed" already, and communicate() reads the pipe past that buffer (it lost
    # them, or cut a line in two: seen once in a full run of the suite).
    out = child.stdout.read()  # to EOF: the child exits after SUCCESS (or a timeout)
    assert child.stderr is not None
    err = child.stderr.read()
    assert child.wait(timeout=30) == 0, err
    lines = out.splitlines()
    # The current state may be PROGRESS 0 or a later one, or already SUCCESS (the stores
    # race the child's first read), but what follows is gap-free, ordered and ends with
    # SUCCESS.
    counters = [json.loads(line.split(" ", 1)[1])["current"] for line in lines[:-1]]
    assert counters == list(range(counters[0], 4)) if counters else lines == ["SUCCESS 7"]
    assert lines[-1] == "SUCCESS 7"
    backend.close()


@pytest.mark.slow
def test_racing_final_states_from_several_processes_one_wins(tmp_db: Path) -> None:
    url = url_for(tmp_db)
    task_ids = [str(uuid.uuid4()) for _ in range(20)]
    backend_from_url(url).close()  # create the schema once
    children = [
        run_child(f"""
            from wiretask.results import backend_from_url
            from wiretask.protocol.states import make_meta
            b = backend_from_url({url!r})
            for tid in {task_ids!r}:
                b.store(tid, make_meta(tid, "SUCCESS", {n}, date_done={DONE!r}))
            b.close()
        """)
        for n in range(4)
    ]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    with sqlite3.connect(tmp_db) as conn:
        for task_id in task_ids:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM wiretask_result_events WHERE task_id = ?", (task_id,)
            ).fetchone()
            assert count == 1, task_id
    conn.close()


def test_a_subscriber_behind_a_pruning_still_gets_the_final_state(
    tmp_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "PRUNE_INTERVAL", 0.0)
    monkeypatch.setattr(sqlite_backend, "READY_EVENT_GRACE", -1.0)
    backend = SQLiteBackend(url_for(tmp_db))
    task_id = str(uuid.uuid4())
    sub = backend.subscribe(task_id)
    backend.store(task_id, make_meta(task_id, "PROGRESS", 1))
    backend.store(task_id, make_meta(task_id, "SUCCESS", 2, date_done=DONE))
    other = str(uuid.uuid4())
    backend.store(other, make_meta(other, "STARTED", None))  # prunes the ready task's events
    with sqlite3.connect(tmp_db) as conn:
        assert conn.execute(
            "SELECT COUNT(*) FROM wiretask_result_events WHERE task_id = ?", (task_id,)
        ).fetchone() == (0,)
    conn.close()
    assert sub.next(5) == make_meta(task_id, "SUCCESS", 2, date_done=DONE)
    assert sub.finished
    backend.close()


def test_old_events_and_expired_results_are_pruned(
    tmp_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "PRUNE_INTERVAL", 0.0)
    backend = SQLiteBackend(url_for(tmp_db), expires=0.1, event_retention=0.1)
    old = str(uuid.uuid4())
    backend.store(old, make_meta(old, "PROGRESS", 1))
    time.sleep(0.3)
    new = str(uuid.uuid4())
    backend.store(new, make_meta(new, "PROGRESS", 1))
    with sqlite3.connect(tmp_db) as conn:
        tasks = {r[0] for r in conn.execute("SELECT task_id FROM wiretask_results")}
        events = {r[0] for r in conn.execute("SELECT task_id FROM wiretask_result_events")}
    conn.close()
    assert tasks == {new} and events == {new}
    backend.close()


def test_shares_a_file_with_other_tables(tmp_db: Path) -> None:
    with sqlite3.connect(tmp_db) as conn:
        conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
        conn.execute("INSERT INTO messages (body) VALUES (x'00')")
    conn.close()
    backend = SQLiteBackend(url_for(tmp_db))
    backend.store("t", make_meta("t", "PROGRESS", 1))
    with sqlite3.connect(tmp_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    backend.close()


def test_a_locked_database_is_connection_lost(tmp_db: Path) -> None:
    backend = SQLiteBackend(url_for(tmp_db), busy_timeout=0.1)
    assert backend.get("t") is None  # connected, schema created
    locker = sqlite3.connect(tmp_db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionLost) as info:
            backend.store("t", make_meta("t", "PROGRESS", 1))
        assert time.monotonic() - start < 3
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert info.value.url == url_for(tmp_db)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    backend.store("t", make_meta("t", "PROGRESS", 1))  # works again
    backend.close()


def test_a_path_that_cannot_be_opened_is_connection_lost_as_for_the_broker(
        tmp_path: Path) -> None:
    # SQLITE_CANTOPEN is recoverable for the SQLite broker and backend alike (one table,
    # wiretask._sqlite.SQLITE_ERRORS): the file may be back later (a directory renamed
    # back, a mount), as a Redis that is down. This test expected a plain TransportError
    # while the backend translated errors its own way.
    backend = SQLiteBackend(url_for(tmp_path))  # a directory, not a file
    with pytest.raises(ConnectionLost) as info:
        backend.get("t")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert "SQLITE_CANTOPEN" in str(info.value)


def test_a_file_that_is_not_a_database_is_a_transport_error(tmp_db: Path) -> None:
    tmp_db.write_bytes(b"this is not an sqlite database, just some text" * 100)
    backend = SQLiteBackend(url_for(tmp_db))
    with pytest.raises(TransportError) as info:
        backend.get("t")
    assert not isinstance(info.value, ConnectionLost)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    backend.close()


def test_parent_directories_are_created(tmp_path: Path) -> None:
    backend = SQLiteBackend(url_for(tmp_path / "a" / "b" / "r.db"))
    backend.store("t", make_meta("t", "PROGRESS", 1))
    assert (tmp_path / "a" / "b" / "r.db").exists()
    backend.close()


def test_closed_backend(tmp_db: Path) -> None:
    backend = SQLiteBackend(url_for(tmp_db))
    backend.get("t")
    backend.close()
    backend.close()
    with pytest.raises(TransportError, match="closed"):
        backend.get("t")


def test_transport_options(tmp_db: Path) -> None:
    backend = backend_from_url(url_for(tmp_db), transport_options={"busy_timeout": 1})
    assert isinstance(backend, SQLiteBackend) and backend.busy_timeout == 1.0
    with pytest.raises(ImproperlyConfigured, match="global_keyprefix"):
        backend_from_url(url_for(tmp_db), transport_options={"global_keyprefix": "x"})
