"""The pure parts: ``QueueStats`` validation, the table, rates, thresholds and the Munin
answers, from readings built by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from wiretask.errors import ImproperlyConfigured, ValidationError
from wiretask.monitoring import munin
from wiretask.monitoring.report import breaches, duration, rates, stats_record, stats_table
from wiretask.transports.base import QueueStats

AT = 1_700_000_000.0


def reading(**fields: Any) -> QueueStats:
    base: dict[str, Any] = {"queue": "q", "at": AT, "ready": 0, "scheduled": 0,
                            "in_flight": 0, "dead": 0}
    return QueueStats(**{**base, **fields})


@pytest.mark.parametrize(("fields", "field"), [
    ({"queue": ""}, "queue"),
    ({"ready": -1}, "ready"),
    ({"ready": None}, "ready"),
    ({"ready": True}, "ready"),
    ({"scheduled": 1.5}, "scheduled"),
    ({"dead": -2}, "dead"),
    ({"at": float("nan")}, "at"),
    ({"next_due": "soon", "scheduled": 1}, "next_due"),
    ({"ready": 0, "oldest_ready_at": AT}, "oldest_ready_at"),
    ({"scheduled": 0, "next_due": AT + 1}, "next_due"),
])
def test_queue_stats_refuses_what_cannot_be(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        reading(**fields)
    assert caught.value.field == field


def test_derived_numbers() -> None:
    stats = reading(ready=3, scheduled=2, oldest_ready_at=AT - 90)
    assert (stats.oldest_age, stats.waiting) == (90.0, 5)
    assert reading(ready=2, scheduled=None).waiting is None
    assert reading(ready=2).oldest_age is None  # the broker cannot tell
    assert reading(ready=1, oldest_ready_at=AT + 5).oldest_age == 0.0  # clocks apart
    record = stats_record(stats)
    assert record["oldest_age"] == 90.0 and record["published"] is None
    assert list(record)[:6] == ["queue", "at", "ready", "scheduled", "in_flight", "dead"]


def test_duration() -> None:
    assert [duration(s) for s in (0, 12.34, 60, 245, 3600, 7380, 90000)] == [
        "0.0s", "12.3s", "1m00s", "4m05s", "1h00m", "2h03m", "1d01h"]


def test_table_marks_unknown_and_absent_numbers() -> None:
    rows = stats_table([
        reading(queue="celery", ready=150, scheduled=5, next_due=AT + 30, in_flight=4,
                dead=1, oldest_ready_at=AT - 245),
        reading(queue="amqp", ready=3, scheduled=None, in_flight=None, dead=None),
        reading(queue="idle"),
    ])
    assert rows == [
        "QUEUE   READY  SCHEDULED  NEXT DUE  IN FLIGHT  DEAD  OLDEST",
        "celery    150          5  in 30.0s          4     1   4m05s",
        "amqp        3          ?         ?          ?     ?       ?",
        "idle        0          0         -          0     0       -",
    ]


def test_rates_between_two_readings() -> None:
    before = reading(published=10, delivered=5, acked=5, dead_lettered=0)
    after = reading(at=AT + 2, published=30, delivered=9, acked=3, dead_lettered=1)
    assert rates(before, after) == {"published": 10.0, "delivered": 2.0,
                                    "acked": 1.5,  # went down: the broker restarted
                                    "dead_lettered": 0.5}
    assert set(rates(reading(), reading(at=AT + 1)).values()) == {None}
    table = stats_table([after], {"q": rates(before, after)})
    assert table[0].split()[-5:] == ["PUBLISHED/s", "DELIVERED/s", "ACKED/s", "DEAD",
                                     "LETTERED/s"]
    assert table[1].split()[-4:] == ["10.0", "2.0", "1.5", "0.5"]


def test_breaches() -> None:
    busy = reading(queue="busy", ready=11, oldest_ready_at=AT - 61)
    calm = reading(queue="calm", ready=1, oldest_ready_at=AT - 1)
    blind = reading(queue="blind", ready=1)  # age unknown
    assert breaches([busy, calm], max_ready=20, max_age=100) == []
    found = breaches([busy, calm, blind], max_ready=10, max_age=60)
    assert [(b.queue, b.what) for b in found] == [
        ("busy", "ready"), ("busy", "age"), ("blind", "age")]
    assert str(found[0]) == "queue 'busy': 11 ready messages, above 10"
    assert str(found[1]) == "queue 'busy': its oldest ready message has waited 1m01s, " \
                            "above 1m00s"
    assert "cannot be told" in str(found[2])
    assert breaches([reading(queue="empty")], max_age=0) == []  # nothing waits


def test_munin_queues_and_names() -> None:
    assert munin.plugin_queues("wiretask_emails", {}) == ["emails"]
    assert munin.plugin_queues("wiretask_", {"queues": "a, b c"}) == ["a", "b", "c"]
    assert munin.plugin_queues("wiretask_", {}) == ["celery"]
    assert munin.plugin_queues(None, {"queues": "x"}, ["given"]) == ["given"]
    assert munin.graph_name("jobs.high-1") == "wiretask_jobs_high_1"
    with pytest.raises(ImproperlyConfigured, match="both make the Munin graph name"):
        munin.fetch_lines([reading(queue="a.b"), reading(queue="a-b")])


@pytest.mark.parametrize("value", ["10", "10:", ":10", "5:10", "-1.5:2.5", ".5"])
def test_munin_thresholds_in_munins_syntax(value: str) -> None:
    assert munin.thresholds({"ready_warning": value}) == {"ready": {"warning": value}}


@pytest.mark.parametrize("value", ["", "ten", "1:2:3", "10s"])
def test_munin_refuses_other_thresholds(value: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        munin.thresholds({"age_critical": value})
    assert caught.value.setting == "age_critical"


def test_munin_fetch_unknown_and_counters() -> None:
    lines = munin.fetch_lines([
        reading(queue="amqp", ready=3, scheduled=None, in_flight=None, dead=None),
        reading(queue="mem", ready=0, published=5, delivered=4, acked=3, dead_lettered=1),
    ])
    assert lines == [
        "multigraph wiretask_amqp", "ready.value 3",
        "multigraph wiretask_amqp_age", "age.value U",
        "multigraph wiretask_mem", "ready.value 0", "scheduled.value 0",
        "in_flight.value 0", "dead.value 0",
        "multigraph wiretask_mem_age", "age.value 0",
        "multigraph wiretask_mem_rates", "published.value 5", "delivered.value 4",
        "acked.value 3", "dead_lettered.value 1",
    ]
    config = munin.config_lines([reading(queue="amqp", ready=3, scheduled=None,
                                         in_flight=None, dead=None)], {}, "amqp://h")
    assert "ready.label ready" in config and "scheduled.label scheduled (delayed)" not in config


def test_the_grafana_dashboard_reads_only_metrics_the_exporter_serves() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "wiretask-queues.json"
    dashboard = json.loads(path.read_text())
    served = {"wiretask_queue_messages", "wiretask_queue_oldest_message_age_seconds",
              "wiretask_queue_next_due_timestamp_seconds", "wiretask_broker_up",
              "wiretask_broker_read_seconds"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        assert set(re.findall(r"wiretask_[a-z_]+", expr)) <= served, expr
