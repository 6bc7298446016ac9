"""``wiretask demo``: the README's first command. It runs here in full."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from wiretask.demo import Timeline, use_color

from .conftest import CLI

HEADINGS = [
    "1. direct call: runs here, no message, no worker",
    "2. delay: send with the default options",
    "3. apply_async with a countdown: not run before its eta",
    "4. expires: an expired task is revoked, not run",
    "5. link and link_error: callbacks on success and on failure",
    "6. on_message: a task streams its PROGRESS",
    "7. compression: the body is compressed on the wire",
    "8. publish retry: the broker goes away and comes back",
]

STAMP = r"^ *\+\d+\.\d\ds  "


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLI, int, str, str]:
    cli = CLI(tmp_path_factory.mktemp("demo"))
    done = cli.run("demo", timeout=120)
    return cli, done.returncode, done.stdout, done.stderr


def test_demo_exits_0_and_prints_every_step(demo: tuple[CLI, int, str, str]) -> None:
    _, code, out, err = demo
    assert code == 0, out + err
    for heading in HEADINGS:
        assert re.search(STAMP + re.escape(heading) + "$", out, re.MULTILINE), heading
    assert re.search(STAMP + r"done . 8 steps; worker stopped \(exit 0\), temp dir removed$",
                     out, re.MULTILINE)


def test_demo_shows_what_each_step_did(demo: tuple[CLI, int, str, str]) -> None:
    _, _, out, _ = demo
    expected = [
        r"worker ready . ping (→|->) pong",
        r"result +5  SUCCESS",
        r"waiting +in the broker, scheduled for its eta \+\d+\.\d\ds",
        r"ran +at \+\d+\.\d\ds, \d+ ms after the eta  SUCCESS",
        r"state +REVOKED  TaskRevokedError\('expired'\)",
        r"errback +on_error got TaskRevokedError: expired",
        r"callback +mul\(5, 10\) (→|->) 50  SUCCESS",
        r"state +FAILURE  ValueError\('boom'\)",
        r"errback +on_error got ValueError: boom",
        r"on_message PROGRESS  1/4",
        r"on_message PROGRESS  4/4",
        r"on_message SUCCESS  'counted to 4'",
        r"body +[\d,]+ bytes of JSON (→|->) [\d,]+ bytes with zstd \(\d+%\)",
        r"header +compression: application/zstd",
        r"result +4,000 words  SUCCESS",
        r"attempt 1 +ConnectionLost, retry in 0\.30 s",
        r"attempt 2 +ConnectionLost, retry in 0\.30 s",
        r"broker +gone: the client's path to it \(client-path/\) now leads nowhere",
        r"error +\S.+",
        r"broker +back: a timer restored the path",
        # Attempt 3 on an idle machine; a later one if the timer thread ran late.
        r"attempt [3-9] +published",
        r"result +42  SUCCESS",
    ]
    for pattern in expected:
        assert re.search(STAMP + r" *" + pattern + "$", out, re.MULTILINE), pattern
    # The steps come in order, and the progress lines in between their neighbours.
    positions = [out.index(heading) for heading in HEADINGS]
    assert positions == sorted(positions)
    assert out.count("on_message PROGRESS") == 4


def test_demo_times_are_increasing(demo: tuple[CLI, int, str, str]) -> None:
    _, _, out, _ = demo
    stamps = [float(m) for m in re.findall(r"^ *\+(\d+\.\d\d)s", out, re.MULTILINE)]
    assert len(stamps) > 40
    assert stamps == sorted(stamps)
    assert stamps[-1] < 60


def test_demo_is_plain_text_when_not_a_terminal(demo: tuple[CLI, int, str, str]) -> None:
    _, _, out, _ = demo
    assert "\x1b[" not in out


def test_demo_cleans_up_and_leaves_the_data_dir_alone(demo: tuple[CLI, int, str, str]) -> None:
    cli, _, out, _ = demo
    match = re.search(r"^  temp dir  (\S+) \(removed at the end\)$", out, re.MULTILINE)
    assert match is not None
    assert not Path(match.group(1)).exists()
    assert not (cli.cwd / "xdg").exists()
    assert not cli.db.exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_color_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_color(FakeTerminal())
    assert not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(FakeTerminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_color(FakeTerminal())


def test_timeline_lines_are_stamped_and_aligned() -> None:
    plain, colored = io.StringIO(), FakeTerminal()
    for stream, color in ((plain, False), (colored, True)):
        timeline = Timeline(stream, color=color)
        timeline.heading(1, "step")
        timeline.code("task.delay()")
        timeline.detail("sent", "task 1234")
        timeline.detail("on_message", "SUCCESS")

    lines = plain.getvalue().splitlines()
    assert lines[0] == ""
    assert re.fullmatch(r" \+0\.0\ds  1\. step", lines[1])
    assert re.fullmatch(r" \+0\.0\ds     task\.delay\(\)", lines[2])
    assert re.fullmatch(r" \+0\.0\ds       sent       task 1234", lines[3])
    assert re.fullmatch(r" \+0\.0\ds       on_message SUCCESS", lines[4])
    assert "\x1b[1;36m1. step\x1b[0m" in colored.getvalue()
    # Color changes nothing but the escape codes.
    unstyled = re.sub(r"\x1b\[[\d;]*m", "", colored.getvalue())
    assert re.sub(r"\+\d\.\d\ds", "+T", unstyled) == re.sub(r"\+\d\.\d\ds", "+T", plain.getvalue())
