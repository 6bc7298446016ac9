"""Bad option values: one line on stderr naming the option, exit 2, nothing sent."""

from __future__ import annotations

import pytest

from wiretask.transports.url import transport_from_url

from .conftest import CLI


def queue_size(cli: CLI) -> int:
    transport = transport_from_url(cli.broker_url)
    try:
        return transport.size("celery")
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("args", "option", "detail"),
    [
        (["--countdown", "abc"], "--countdown", "'abc'"),
        (["--serializer", "nope"], "--serializer", "'nope'"),
        (["--compression", "nope"], "--compression", "'nope'"),
        (["--eta", "garbage"], "--eta", "garbage"),
        (["--expires", "soon"], "--expires", "soon"),
        (["--priority", "high"], "--priority", "'high'"),
        (["--priority", "999"], "--priority", "999"),
        (["--kwargs", "[1]"], "--kwargs", "JSON object"),
        (["--kwargs", "{bad"], "--kwargs", "not valid JSON"),
        (["--countdown", "5", "--eta", "2030-01-01T00:00:00Z"], "--countdown", "eta"),
    ],
)
def test_bad_call_options(cli: CLI, args: list[str], option: str, detail: str) -> None:
    done = cli.run("call", "proj.tasks.add", "1", "2", *args)

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = cli.errors(done)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wiretask call: error: ")
    assert option in lines[0]
    assert detail in lines[0]


def test_nothing_is_sent_after_a_validation_error(cli: CLI) -> None:
    assert cli.run("call", "proj.tasks.add", "--serializer", "nope").returncode == 2
    assert cli.run("call", "proj.tasks.add", "--priority", "999").returncode == 2
    assert queue_size(cli) == 0


def test_unknown_broker_scheme_is_a_usage_error(cli: CLI) -> None:
    done = cli.run("--broker", "carrier-pigeon://coop", "call", "proj.tasks.add")

    assert done.returncode == 2
    assert "carrier-pigeon://" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_command_prints_usage(cli: CLI) -> None:
    done = cli.run()
    assert done.returncode == 2
    assert "COMMAND" in done.stderr


def test_an_unknown_flag_is_refused_by_name(cli: CLI) -> None:
    done = cli.run("call", "proj.tasks.add", "--countdwn", "5")
    assert done.returncode == 2
    assert "unrecognized arguments: --countdwn" in done.stderr
    assert queue_size(cli) == 0


def test_a_misspelt_setting_in_the_app_is_a_usage_error(cli: CLI) -> None:
    (cli.cwd / "proj" / "typo.py").write_text(
        "from wiretask.app import App\napp = App('proj', task_serialzer='json')\n"
    )
    done = cli.run("-A", "proj.typo:app", "call", "proj.tasks.add")
    assert done.returncode == 2
    [line] = cli.errors(done)
    assert "task_serialzer" in line and "did you mean 'task_serializer'?" in line
