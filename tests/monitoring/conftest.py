"""A queue in a known state on a real broker, and the ways to read it back: the CLI as a
subprocess, Debian's ``munin-run`` with the ``wiretask`` script linked as a plugin, and
the exporter scraped over HTTP."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.base import Delivery, Transport

SRC = Path(__file__).resolve().parents[2] / "src"
MUNIN_RUN = shutil.which("munin-run") or "/usr/sbin/munin-run"


@attrs.frozen
class Known:
    """What ``fill`` left in a queue: every number the outputs must show."""

    queue: str
    ready: int
    scheduled: int
    in_flight: int
    dead: int
    #: When the ready messages were published (a known instant, an hour ago).
    published: float
    #: When the first scheduled message falls due.
    next_due: float
    held: tuple[Delivery, ...]


def frame(body: bytes, **properties: Any) -> Frame:
    return Frame(body=body, content_type="application/octet-stream",
                 content_encoding="binary", headers={"id": body.decode(), "task": "t"},
                 properties=properties)


def fill(transport: Transport, queue: str, monkeypatch: pytest.MonkeyPatch, *,
         ready: int = 7, scheduled: int = 3, in_flight: int = 2, dead: int = 1) -> Known:
    """Leave ``queue`` with exactly ``ready`` ready messages published at a known instant
    an hour ago, ``scheduled`` delayed ones, ``in_flight`` held by ``transport`` and
    ``dead`` dead letters. The clock is set back only around the publishes."""
    published = float(int(time.time()) - 3600) + 0.25
    taken = in_flight + dead
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: published - 10)
        transport.publish_many([Outgoing(frame(f"t{i}".encode()), Route(queue))
                                for i in range(taken)])
    held = list(transport.receive_many([queue], limit=taken, timeout=5))
    assert len(held) == taken
    for delivery in held[:dead]:
        delivery.dead_letter("dead on purpose")
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: published)
        transport.publish_many([Outgoing(frame(f"r{i}".encode()), Route(queue))
                                for i in range(ready)])
    due = datetime.fromtimestamp(int(time.time()) + 600, UTC)
    transport.publish_many([Outgoing(frame(f"s{i}".encode()), Route(queue),
                                     due + timedelta(seconds=i)) for i in range(scheduled)])
    return Known(queue=queue, ready=ready, scheduled=scheduled, in_flight=in_flight,
                 dead=dead, published=published, next_due=due.timestamp(),
                 held=tuple(held[dead:]))


def env_for(broker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
    env["WIRETASK_BROKER_URL"] = broker
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def run_cli(broker: str, *args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``wiretask ARGS`` as a subprocess, on ``broker``."""
    return subprocess.run(
        [sys.executable, "-m", "wiretask.cli", *args], env=env_for(broker), input=stdin,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def wiretask_script() -> Path:
    """The installed ``wiretask`` console script (what a Munin plugin links to)."""
    script = Path(sys.executable).parent / "wiretask"
    if not script.exists():
        found = shutil.which("wiretask")
        if found is None:
            pytest.fail("the wiretask console script is not installed beside python")
        script = Path(found)
    return script


def munin_run(tmp_path: Path, plugin: str, broker: str, *args: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Debian's ``munin-run`` on the ``wiretask`` script linked as ``plugin``, in a
    private plugin directory, with a private node and plugin configuration."""
    if not os.access(MUNIN_RUN, os.X_OK):
        pytest.fail(f"munin-run is not installed at {MUNIN_RUN} (scripts/test installs it)")
    plugins = tmp_path / "munin-plugins"
    plugins.mkdir(exist_ok=True)
    link = plugins / plugin
    if not link.exists():
        link.symlink_to(wiretask_script())
    node = tmp_path / "munin-node.conf"
    node.write_text(f"log_file {tmp_path / 'munin-node.log'}\n"
                    f"pid_file {tmp_path / 'munin-node.pid'}\nhost_name wiretask-test\n")
    settings = {"WIRETASK_BROKER_URL": broker, **(env or {})}
    conf = tmp_path / "plugin.conf"
    conf.write_text(f"[{plugin}]\nuser {getpass.getuser()}\n"
                    + "".join(f"env.{k} {v}\n" for k, v in settings.items()))
    return subprocess.run(
        [MUNIN_RUN, "--ignore-systemd-properties", "--config", str(node),
         "--servicedir", str(plugins), "--sconffile", str(conf), plugin, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


@contextmanager
def exporter(broker: str, *queues: str) -> Iterator[str]:
    """``wiretask exporter`` as a subprocess on a free port; yields its ``/metrics`` URL
    and stops it (SIGTERM) afterwards, checking that it exits 0."""
    child = subprocess.Popen(
        [sys.executable, "-m", "wiretask.cli", "exporter", "--port", "0",
         "--queues", ",".join(queues)],
        env=env_for(broker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), (line, child.poll())
        yield line.split()[1]
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, (out, err)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode("utf-8"))
