"""``wiretask call`` and ``wiretask inspect``, run as real subprocesses."""

from __future__ import annotations

import json
import re

import pytest

from wiretask.codecs import default_registry
from wiretask.protocol.celery import decode
from wiretask.protocol.envelope import TaskMessage
from wiretask.protocol.frame import Frame, Route
from wiretask.transports.url import transport_from_url

from .conftest import CLI

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def queued(cli: CLI, queue: str = "celery") -> list[tuple[str, TaskMessage]]:
    """``(state, decoded message)`` of every waiting message, read in this process."""
    transport = transport_from_url(cli.broker_url)
    try:
        registry = default_registry()
        return [(p.state, decode(p.frame, registry)) for p in transport.peek(queue)]
    finally:
        transport.close()


def test_call_prints_the_id_and_the_message_waits_in_the_queue(cli: CLI) -> None:
    task_id = cli.ok("call", "proj.tasks.add", "2", "3").strip()

    assert UUID.match(task_id)
    [(state, message)] = queued(cli)
    assert state == "ready"
    assert message.id == task_id
    assert message.task == "proj.tasks.add"
    assert message.args == (2, 3)


def test_call_parses_args_as_json_else_strings(cli: CLI) -> None:
    cli.ok("call", "proj.tasks.echo", "1", "two", '"3"', "[4, 5]", "-6",
           "--kwargs", '{"k": null}')

    [(_, message)] = queued(cli)
    assert message.args == (1, "two", "3", [4, 5], -6)
    assert message.kwargs == {"k": None}


def test_call_options_reach_the_message(cli: CLI) -> None:
    cli.ok("call", "proj.tasks.add", "1", "1", "--queue", "math", "--countdown", "60",
           "--expires", "120", "--serializer", "msgpack", "--compression", "gzip",
           "--priority", "7")

    [(state, message)] = queued(cli, "math")
    assert state == "scheduled"
    assert message.eta is not None
    assert message.expires is not None
    assert (message.expires - message.eta).total_seconds() == pytest.approx(60, abs=1)
    assert message.content_type == "application/x-msgpack"
    assert message.compression == "application/x-gzip"
    assert message.priority == 7
    assert queued(cli, "celery") == []


def test_app_option_before_the_command(cli: CLI) -> None:
    task_id = cli.ok("-A", "proj.tasks:app", "call", "proj.tasks.add", "1", "2").strip()
    assert UUID.match(task_id)
    assert [m.id for _, m in queued(cli)] == [task_id]


def test_inspect_shows_ready_and_scheduled_messages_decoded(cli: CLI) -> None:
    ready = cli.ok("call", "proj.tasks.add", "2", "3").strip()
    later = cli.ok("call", "proj.tasks.add", "4", "4", "--countdown", "30",
                   "--compression", "zstd").strip()

    out = cli.ok("queue", "show", "celery")

    assert "2 waiting (1 ready, 1 scheduled), 0 dead-lettered" in out
    header, *rows = [line for line in out.splitlines()[2:] if line]
    assert header.split() == ["STATE", "ID", "TASK", "ETA", "EXPIRES", "RETRIES", "LINK",
                              "LINK_ERROR", "SIZE", "COMPRESSION"]
    by_id = {row.split()[1]: row for row in rows}
    assert by_id[ready].split()[0] == "ready"
    assert "proj.tasks.add" in by_id[ready]
    assert by_id[later].split()[0] == "scheduled"
    remaining = re.search(r"\(in (\d+\.\d)s\)", by_id[later])
    assert remaining is not None
    assert 10 < float(remaining.group(1)) <= 30
    assert by_id[later].endswith("application/zstd")
    # Columns are aligned: every row's TASK starts where the header's does.
    column = header.index("TASK")
    assert all(row[column:].startswith("proj.tasks.add") for row in rows)
    # Inspecting consumes nothing.
    assert len(queued(cli)) == 2


def test_inspect_json(cli: CLI) -> None:
    task_id = cli.ok("call", "proj.tasks.add", "2", "3", "--expires", "60").strip()

    data = json.loads(cli.ok("queue", "show", "--json"))

    assert data["queue"] == "celery"
    assert data["waiting"] == 1
    assert data["dead_letters"] == 0
    [record] = data["messages"]
    assert record["id"] == task_id
    assert record["state"] == "ready"
    assert record["task"] == "proj.tasks.add"
    assert record["args"] == [2, 3]
    assert record["expires"] is not None
    assert record["eta"] is None
    assert record["retries"] == 0
    assert record["size"] > 0


def test_inspect_shows_undecodable_messages_and_dead_letters(cli: CLI) -> None:
    transport = transport_from_url(cli.broker_url)
    try:
        transport.declare_queue("celery")
        good = Frame(body=b"[[], {}, {}]", content_type="application/json",
                     content_encoding="utf-8", headers={"id": "dead-1", "task": "t"})
        transport.publish(good, Route("celery"))
        delivery = transport.receive(["celery"], timeout=5)
        assert delivery is not None
        delivery.dead_letter("refused by the test")
        bad = Frame(body=b"{not json", content_type="application/json",
                    content_encoding="utf-8", headers={"id": "bad-1", "task": "t"})
        transport.publish(bad, Route("celery"))
    finally:
        transport.close()

    out = cli.ok("queue", "show", "celery")

    assert "1 waiting (1 ready, 0 scheduled), 1 dead-lettered" in out
    row = next(line for line in out.splitlines() if line.startswith("ready"))
    assert row.split()[1:3] == ["bad-1", "(undecodable)"]
    assert re.search(r"^undecodable bad-1: cannot decode .+", out, re.MULTILINE)
    data = json.loads(cli.ok("queue", "show", "celery", "--json"))
    assert data["dead_letters"] == 1
    assert "cannot decode" in data["messages"][0]["error"]


def test_inspect_limit(cli: CLI) -> None:
    for n in range(3):
        cli.ok("call", "proj.tasks.add", str(n), "0")

    out = cli.ok("queue", "show", "--limit", "2")

    assert "3 waiting (3 ready, 0 scheduled, showing the first 2)" in out  # exact counts
    assert sum(1 for line in out.splitlines() if line.startswith("ready")) == 2
