"""The commands, as processes on one SQLite broker file: ``wiretask worker -E`` (threads
and the process pool) sends the events, ``wiretask events`` prints them as ``celery
events --dump`` does (or as JSON), and ``wiretask exporter --events`` turns them into
Prometheus metrics, scraped over HTTP and parsed with ``prometheus_client``'s parser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.conftest import CLI, wait_until
from monitoring.conftest import scrape

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text('''
from wiretask.app import App

app = App("proj")


@app.task
def add(x, y):
    return x + y


@app.task
def boom(reason):
    raise ValueError(reason)
''')
    runner = CLI(tmp_path)
    try:
        yield runner
    finally:
        runner.cleanup()


def read_events(child: subprocess.Popen[str], count: int, timeout: float = 60) -> list[str]:
    """Up to ``count`` more lines of ``child``'s output, waiting up to ``timeout``."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    os.set_blocking(fd, False)
    pending = _PENDING.setdefault(child, [""])
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        if "\n" in pending[0]:
            line, pending[0] = pending[0].split("\n", 1)
            lines.append(line)
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            pending[0] += chunk.decode()
        elif chunk == b"" or child.poll() is not None:
            break
        else:
            time.sleep(0.05)
    return lines


def close_pipes(child: subprocess.Popen[str]) -> None:
    for pipe in (child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()


#: What was read past the last whole line, per process.
_PENDING: dict[subprocess.Popen[str], list[str]] = {}


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_E_and_wiretask_events(cli: CLI, pool: str) -> None:
    listener = cli.popen("events", "--json")
    assert read_events(listener, 1)[0] == "-> evdump: starting capture..."
    worker = cli.popen("-A", "proj.tasks", "worker", "-E", "-P", pool, "-c", "1",
                       "-n", "cli@events", "--heartbeat-interval", "0.5")
    try:
        ok = cli.ok("call", "proj.tasks.add", "2", "3").strip()
        assert "5" in cli.ok("result", ok, "--wait", "30", timeout=60)
        bad = cli.ok("call", "proj.tasks.boom", "oops").strip()
        cli.run("result", bad, "--wait", "30", timeout=60)
        events: list[dict[str, Any]] = []

        def both_done() -> bool:
            events.extend(json.loads(line) for line in read_events(listener, 1, timeout=0.2))
            kinds = {(e.get("uuid"), e["type"]) for e in events}
            return (ok, "task-succeeded") in kinds and (bad, "task-failed") in kinds

        wait_until(both_done, timeout=60)
    finally:
        code, _, err = cli.stop(worker)
        listener.send_signal(signal.SIGINT)
        listener.wait(30)
        close_pipes(listener)
    assert code == 0, err
    assert [e["type"] for e in events if e.get("uuid") == ok] == [
        "task-received", "task-started", "task-succeeded"]
    succeeded = next(e for e in events if e.get("uuid") == ok and e["type"] == "task-succeeded")
    assert succeeded["result"] == "5" and succeeded["hostname"] == "cli@events"
    failed = next(e for e in events if e.get("uuid") == bad and e["type"] == "task-failed")
    assert failed["exception"] == "ValueError('oops')"
    assert any(e["type"] == "worker-online" and e["hostname"] == "cli@events" for e in events)
    assert listener.returncode == 0


def test_dump_lines_are_celerys(cli: CLI) -> None:
    listener = cli.popen("events", "--dump", "--limit", "3")
    assert read_events(listener, 1)[0] == "-> evdump: starting capture..."
    worker = cli.popen("-A", "proj.tasks", "worker", "-E", "-c", "1", "-n", "dump@events",
                       "--without-heartbeat")
    try:
        task = cli.ok("call", "proj.tasks.add", "20", "22").strip()
        lines = read_events(listener, 3)
        assert listener.wait(30) == 0  # --limit: it stops after 3 events
    finally:
        cli.stop(worker)
        close_pipes(listener)
    received, started, succeeded = lines
    assert received.startswith("dump@events [")
    assert f"task received: proj.tasks.add({task}) args=(20, 22) kwargs={{}}" in received
    assert f"task started: {task}" in started
    assert f"task succeeded: {task}" in succeeded and "result=42" in succeeded


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_exporter_events(cli: CLI) -> None:
    exporter = cli.popen("exporter", "--port", "0", "--events")
    assert exporter.stdout is not None
    line = exporter.stdout.readline()
    assert line.startswith("serving http://127.0.0.1:"), line
    url = line.split()[1]
    worker = cli.popen("-A", "proj.tasks", "worker", "-E", "-c", "1", "-n", "prom@events",
                       "--heartbeat-interval", "0.5")
    try:
        for n in range(3):
            task = cli.ok("call", "proj.tasks.add", str(n), "1").strip()
            cli.ok("result", task, "--wait", "30", timeout=60)
        bad = cli.ok("call", "proj.tasks.boom", "x").strip()
        cli.run("result", bad, "--wait", "30", timeout=60)
        wait_until(lambda: samples(scrape(url)).get(
            ("wiretask_task_events_total", (("name", "proj.tasks.boom"), ("type", "failed")))
        ) == 1.0, timeout=60)
        got = samples(scrape(url))
    finally:
        code, _, err = cli.stop(worker)
    assert code == 0, err
    add = (("name", "proj.tasks.add"),)
    assert got[("wiretask_task_events_total", (*add, ("type", "succeeded")))] == 3.0
    assert got[("wiretask_task_events_total", (*add, ("type", "received")))] == 3.0
    assert got[("wiretask_task_runtime_seconds_count", add)] == 3.0
    assert got[("wiretask_task_runtime_seconds_bucket", (("le", "+Inf"), *add))] == 3.0
    assert got[("wiretask_task_runtime_seconds_sum", add)] >= 0.0
    assert got[("wiretask_worker_up", (("hostname", "prom@events"),))] == 1.0
    assert got[("wiretask_workers", (("state", "alive"),))] == 1.0
    assert got[("wiretask_events_up", ())] == 1.0
    # The worker stopped and said so: offline at the next scrape.
    wait_until(lambda: samples(scrape(url)).get(
        ("wiretask_worker_up", (("hostname", "prom@events"),))) == 0.0, timeout=30)
    assert samples(scrape(url))[("wiretask_workers", (("state", "offline"),))] == 1.0
    exporter.send_signal(signal.SIGTERM)
    _, err = exporter.communicate(timeout=30)
    assert exporter.returncode == 0, err
