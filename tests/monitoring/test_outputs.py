"""A queue in a known state (ready, scheduled, in flight, dead, and ready messages
published at a known instant) on memory, SQLite and Redis, read back exactly through
every output: ``wiretask stats`` (table and JSON), the Munin plugin (through Debian's
``munin-run`` for the brokers other processes can reach) and the Prometheus exporter
(scraped over HTTP and parsed with ``prometheus_client``'s parser)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from wiretask.cli import main
from wiretask.monitoring.prometheus import Exporter, QueueCollector
from wiretask.transports.base import Transport
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.redis import RedisTransport
from wiretask.transports.sqlite import SQLiteTransport

from .conftest import Known, exporter, fill, munin_run, run_cli, scrape

QUEUE = "jobs"


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Transport]]:
    """(URL, transport) of a real broker other processes can reach."""
    if request.param == "sqlite":
        db = tmp_path / "broker.db"
        transport: Transport = SQLiteTransport(db)
        url = f"sqlite:///{db}"
    else:
        url = request.getfixturevalue("redis_url")
        transport = RedisTransport(url, delay_mode="native")  # holds without a mover
    try:
        yield url, transport
    finally:
        transport.close()


# -- what each output must show ------------------------------------------------------------


def check_record(record: dict[str, Any], known: Known, lo: float, hi: float) -> None:
    assert record["queue"] == known.queue
    assert (record["ready"], record["scheduled"], record["in_flight"], record["dead"]) == (
        known.ready, known.scheduled, known.in_flight, known.dead)
    assert record["next_due"] == pytest.approx(known.next_due, abs=1e-3)
    assert record["oldest_ready_at"] == known.published  # the known instant, exactly
    assert record["oldest_age"] == pytest.approx(record["at"] - known.published)
    assert lo <= record["oldest_age"] <= hi


def check_table(out: str, known: Known) -> None:
    header, row = out.splitlines()[1:3]
    assert header.split() == ["QUEUE", "READY", "SCHEDULED", "NEXT", "DUE", "IN", "FLIGHT",
                              "DEAD", "OLDEST"]
    # Published an hour and a quarter second ago; the first due in ten minutes.
    assert re.fullmatch(
        rf"{known.queue}\s+{known.ready}\s+{known.scheduled}\s+in (9m5\ds|10m00s)\s+"
        rf"{known.in_flight}\s+{known.dead}\s+1h00m", row), row


def check_munin_fetch(out: str, known: Known, lo: float, hi: float) -> None:
    lines = out.splitlines()
    assert lines[:7] == [
        f"multigraph wiretask_{known.queue}",
        f"ready.value {known.ready}", f"scheduled.value {known.scheduled}",
        f"in_flight.value {known.in_flight}", f"dead.value {known.dead}",
        f"multigraph wiretask_{known.queue}_age", lines[6],
    ]
    age = float(lines[6].removeprefix("age.value "))
    assert lo - 0.001 <= age <= hi + 0.001


MUNIN_ENV = {"ready_warning": "5", "ready_critical": "100", "age_warning": "60",
             "age_critical": "1800", "dead_warning": "0"}


def check_munin_config(out: str, known: Known) -> None:
    lines = out.splitlines()
    assert lines[0] == f"multigraph wiretask_{known.queue}"
    assert f"multigraph wiretask_{known.queue}_age" in lines
    for line in ("ready.label ready", "ready.warning 5", "ready.critical 100",
                 "scheduled.label scheduled (delayed)", "in_flight.label in flight",
                 "dead.label dead letters", "dead.warning 0", "age.warning 60",
                 "age.critical 1800", "graph_vlabel seconds", "graph_category wiretask"):
        assert line in lines, (line, lines)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels (parsed by prometheus_client)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def check_prometheus(text: str, known: Known, lo: float, hi: float) -> None:
    assert "# HELP wiretask_queue_messages " in text
    assert "# TYPE wiretask_queue_messages gauge" in text
    assert "# TYPE wiretask_queue_oldest_message_age_seconds gauge" in text
    got = samples(text)
    q = ("queue", known.queue)
    for state, value in (("ready", known.ready), ("scheduled", known.scheduled),
                         ("in_flight", known.in_flight), ("dead", known.dead)):
        assert got[("wiretask_queue_messages", (q, ("state", state)))] == value
    age = got[("wiretask_queue_oldest_message_age_seconds", (q,))]
    assert lo <= age <= hi
    assert got[("wiretask_queue_next_due_timestamp_seconds", (q,))] == pytest.approx(
        known.next_due, abs=1e-3)
    assert got[("wiretask_broker_up", ())] == 1


# -- SQLite and Redis, read from other processes -------------------------------------------


def test_stats_json_and_table(broker: tuple[str, Transport],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, transport = broker
    known = fill(transport, QUEUE, monkeypatch)
    lo = time.time() - known.published
    done = run_cli(url, "stats", QUEUE, "--json")
    table = run_cli(url, "stats", QUEUE)
    hi = time.time() - known.published
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["broker"] == transport.url
    [record] = document["queues"]
    check_record(record, known, lo, hi)
    assert table.returncode == 0, table.stderr
    check_table(table.stdout, known)
    for delivery in known.held:
        delivery.ack()
    after = json.loads(run_cli(url, "stats", QUEUE, "--json").stdout)["queues"][0]
    assert (after["ready"], after["in_flight"], after["dead"]) == (known.ready, 0, known.dead)


def test_munin_run_config_and_fetch(broker: tuple[str, Transport], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url, transport = broker
    known = fill(transport, QUEUE, monkeypatch)
    lo = time.time() - known.published
    fetched = munin_run(tmp_path, f"wiretask_{QUEUE}", url)
    hi = time.time() - known.published
    assert fetched.returncode == 0, fetched.stderr
    check_munin_fetch(fetched.stdout, known, lo, hi)
    config = munin_run(tmp_path, f"wiretask_{QUEUE}", url, "config", env=MUNIN_ENV)
    assert config.returncode == 0, config.stderr
    check_munin_config(config.stdout, known)
    autoconf = munin_run(tmp_path, f"wiretask_{QUEUE}", url, "autoconf")
    assert (autoconf.returncode, autoconf.stdout) == (0, "yes\n")


def test_munin_queues_from_the_plugin_environment(
        broker: tuple[str, Transport], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, transport = broker
    known = fill(transport, QUEUE, monkeypatch)
    fetched = munin_run(tmp_path, "wiretask_", url, env={"queues": f"idle {QUEUE}"})
    assert fetched.returncode == 0, fetched.stderr
    lines = fetched.stdout.splitlines()
    assert lines[:7] == ["multigraph wiretask_idle", "ready.value 0", "scheduled.value 0",
                         "in_flight.value 0", "dead.value 0", "multigraph wiretask_idle_age",
                         "age.value 0"]
    check_munin_fetch("\n".join(lines[7:]), known, 3599, 3700)


def test_prometheus_exporter(broker: tuple[str, Transport],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    url, transport = broker
    known = fill(transport, QUEUE, monkeypatch)
    with exporter(url, QUEUE, "idle") as metrics:
        lo = time.time() - known.published
        text = scrape(metrics)
        hi = time.time() - known.published
        check_prometheus(text, known, lo, hi)
        idle = samples(text)
        assert idle[("wiretask_queue_messages", (("queue", "idle"), ("state", "ready")))] == 0
        assert idle[("wiretask_queue_oldest_message_age_seconds", (("queue", "idle"),))] == 0
        # Read at scrape time: an ack shows at the next scrape.
        for delivery in known.held:
            delivery.ack()
        again = samples(scrape(metrics))
        assert again[("wiretask_queue_messages",
                      (("queue", QUEUE), ("state", "in_flight")))] == 0
        # Counters only where the broker keeps them: neither SQLite nor Redis does.
        assert not any(name.endswith("_total") for name, _ in again)
        root = metrics.removesuffix("metrics")
        assert "/metrics" in scrape(root)


# -- memory: one process, so the CLI runs in it -------------------------------------------


def test_memory_through_every_output(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    name = f"mon-{uuid.uuid4().hex}"
    url = f"memory://{name}"
    transport = MemoryTransport(name)
    known = fill(transport, QUEUE, monkeypatch)
    monkeypatch.setenv("WIRETASK_BROKER_URL", url)
    for key, value in MUNIN_ENV.items():
        monkeypatch.setenv(key, value)

    lo = time.time() - known.published
    assert main(["stats", QUEUE, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["queues"][0]
    assert main(["stats", QUEUE]) == 0
    table = capsys.readouterr().out
    assert main(["munin", "fetch", "--queues", QUEUE]) == 0
    fetched = capsys.readouterr().out
    server = Exporter([QueueCollector(transport, [QUEUE])], port=0)
    port = server.start()
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.stop()
    hi = time.time() - known.published

    check_record(record, known, lo, hi)
    # The memory broker counts: 2 + 1 + 7 + 3 published, 3 delivered, 1 dead-lettered.
    assert (record["published"], record["delivered"], record["acked"],
            record["dead_lettered"]) == (13, 3, 0, 1)
    header, row = table.splitlines()[1:3]
    assert header.split()[-5:] == ["PUBLISHED", "DELIVERED", "ACKED", "DEAD", "LETTERED"]
    assert row.split()[-4:] == ["13", "3", "0", "1"]
    check_munin_fetch(fetched, known, lo, hi)
    assert f"multigraph wiretask_{QUEUE}_rates" in fetched
    assert "published.value 13" in fetched and "dead_lettered.value 1" in fetched
    check_prometheus(text, known, lo, hi)
    got = samples(text)
    assert got[("wiretask_queue_messages_published_total", (("queue", QUEUE),))] == 13
    assert got[("wiretask_queue_messages_dead_lettered_total", (("queue", QUEUE),))] == 1
    assert "# TYPE wiretask_queue_messages_published_total counter" in text

    assert main(["munin", "config", "--queues", QUEUE]) == 0
    config = capsys.readouterr().out
    check_munin_config(config, known)
    assert "published.type DERIVE" in config.splitlines()

    for delivery in known.held:
        delivery.ack()
    assert main(["stats", QUEUE, "--watch", "0.05", "--count", "2"]) == 0
    watched = capsys.readouterr().out
    assert watched.count("(every 0.05s, Ctrl-C to stop)") == 2
    assert "PUBLISHED/s" in watched  # the second reading shows rates


# -- a message without a publish time (Celery's, on Redis) ---------------------------------


def test_a_celery_message_at_the_head_makes_the_age_unknown(
        redis_url: str, tmp_path: Path) -> None:
    with kombu.Connection(redis_url) as conn:
        queue = conn.SimpleQueue(QUEUE)
        queue.put({"sent": "by kombu"})
        queue.close()
    assert redis.Redis.from_url(redis_url).llen(QUEUE) == 1

    record = json.loads(run_cli(redis_url, "stats", QUEUE, "--json").stdout)["queues"][0]
    assert (record["ready"], record["oldest_ready_at"], record["oldest_age"]) == (1, None, None)
    row = run_cli(redis_url, "stats", QUEUE).stdout.splitlines()[2]
    assert row.split()[-1] == "?"  # unknown, not "-" (nothing ready) and not 0
    checked = run_cli(redis_url, "stats", QUEUE, "--max-age", "60")
    assert checked.returncode == 3
    assert "cannot be told" in checked.stderr
    fetched = munin_run(tmp_path, f"wiretask_{QUEUE}", redis_url)
    assert "age.value U" in fetched.stdout.splitlines()
    with exporter(redis_url, QUEUE) as metrics:
        got = samples(scrape(metrics))
    assert got[("wiretask_queue_messages", (("queue", QUEUE), ("state", "ready")))] == 1
    assert ("wiretask_queue_oldest_message_age_seconds", (("queue", QUEUE),)) not in got
