"""Capture the control channel from a real Celery on Redis:
``python spec/vectors/control/capture_celery_control.py redis://127.0.0.1:6379/15``.

The database given is flushed first. The script starts a Celery 5.7 worker
(``-P prefork -c 1``, node name ``capture@vectors``) on it, watches Redis with
``MONITOR``, and makes Celery client calls: ``control.ping()``, ``control.revoke(id)``
(no reply), ``control.revoke(id, reply=True)``, ``AsyncResult.revoke()``,
``inspect().active()`` while a task runs, and a command no worker knows. Each
``PUBLISH`` on the control channel and each ``LPUSH`` of a reply becomes one vector file
here:

* ``redis``: the command, and the channel or list it went to;
* ``envelope``: the Kombu envelope exactly as Redis received it (the text);
* ``frame``: the frame in it (``body`` base64 of the exact body bytes; ``properties``
  without the transport's ``delivery_info``, ``delivery_tag`` and ``body_encoding``);
* ``meaning``: what Celery put in it, read with ``json`` only (never with wiretask's
  code): for a request ``method``, ``arguments``, ``destination``, ``pattern``,
  ``matcher``, ``ticket``, ``reply_to``, ``clock``, ``expires``; for a reply ``hostname``,
  ``result``, ``ticket``, ``clock``.

``tests/control/test_control_vectors.py`` checks that wiretask reads each to its meaning
and writes the meaning back to the same bytes (envelope included, given the same
delivery tag). Times, tickets, oids and task ids change on every capture.
Requires celery and kombu (5.7.0 was used) and a Redis server.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import celery
import kombu
import redis

HERE = Path(__file__).resolve().parent
NODE = "capture@vectors"
TRANSPORT_PROPERTIES = ("delivery_info", "delivery_tag", "body_encoding")

TASKS = textwrap.dedent('''
    import os, time
    from celery import Celery
    app = Celery("capture", broker=os.environ["CAPTURE_URL"], backend=os.environ["CAPTURE_URL"])
    app.conf.update(accept_content=["json"], worker_hijack_root_logger=False)

    @app.task(name="capture.sleep")
    def sleep(seconds):
        time.sleep(seconds)
        return seconds
''')


def unrepr(text: str) -> list[str]:
    """The arguments of one ``MONITOR`` line's command (Redis quotes each with
    ``sdscatrepr``: ``\\"``, ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\a``, ``\\b``,
    ``\\xHH``)."""
    args: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != '"':
            i += 1
            continue
        i += 1
        out = bytearray()
        while text[i] != '"':
            char = text[i]
            if char == "\\":
                nxt = text[i + 1]
                if nxt == "x":
                    out.append(int(text[i + 2:i + 4], 16))
                    i += 4
                    continue
                out += {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b"}.get(
                    nxt, nxt.encode())
                i += 2
                continue
            out += char.encode("utf-8")
            i += 1
        args.append(out.decode("utf-8"))
        i += 1
    return args


class Monitor(threading.Thread):
    """Records the control channel's PUBLISHes and the replies' LPUSHes (``MONITOR`` read off a raw
    socket, so that every argument arrives exactly as Redis quotes it)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        parts = redis.Redis.from_url(url).connection_pool.connection_kwargs
        self.address = (parts.get("host", "127.0.0.1"), int(parts.get("port", 6379)))
        self.seen: list[tuple[str, str, str]] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with socket.create_connection(self.address) as sock:
            sock.sendall(b"MONITOR\r\n")
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\r\n")
                for line in lines:
                    if line == b"+OK":
                        self.ready.set()
                        continue
                    args = unrepr(line.decode("utf-8").split("] ", 1)[-1])
                    if (args and args[0] == "PUBLISH" and args[1].endswith(".celery.pidbox")
                            or args and args[0] == "LPUSH"
                            and args[1].endswith(".reply.celery.pidbox")):
                        self.seen.append((args[0], args[1], args[2]))


def frame_of(envelope: dict[str, Any]) -> dict[str, Any]:
    props = envelope["properties"]
    body = envelope["body"]
    raw = base64.b64decode(body) if props.get("body_encoding") == "base64" else body.encode()
    return {
        "body": base64.b64encode(raw).decode("ascii"),
        "content_type": envelope["content-type"],
        "content_encoding": envelope["content-encoding"],
        "headers": envelope["headers"],
        "properties": {k: v for k, v in props.items() if k not in TRANSPORT_PROPERTIES},
    }


def meaning_of(command: str, envelope: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(base64.b64decode(envelope["body"]))
    headers = envelope["headers"]
    if command == "PUBLISH":
        return {
            "method": body["method"], "arguments": body["arguments"],
            "destination": body["destination"], "pattern": body["pattern"],
            "matcher": body["matcher"], "ticket": body.get("ticket"),
            "reply_to": body.get("reply_to"), "clock": headers["clock"],
            "expires": headers["expires"],
        }
    [(hostname, result)] = body.items()
    return {"hostname": hostname, "result": result, "ticket": headers["ticket"],
            "clock": headers["clock"]}


def write(name: str, description: str, call: str, seen: tuple[str, str, str]) -> None:
    command, key, payload = seen
    envelope = json.loads(payload)
    vector = {
        "name": name,
        "description": description,
        "source": {"celery": celery.__version__, "kombu": kombu.__version__, "call": call},
        "redis": {"command": command, ("channel" if command == "PUBLISH" else "key"): key},
        "envelope": payload,
        "frame": frame_of(envelope),
        "meaning": meaning_of(command, envelope),
    }
    (HERE / f"{name}.json").write_text(json.dumps(vector, indent=2) + "\n", encoding="utf-8")
    print("wrote", name)


def main(url: str) -> None:
    redis.Redis.from_url(url).flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="capture-control-"))
    (workdir / "capture_tasks.py").write_text(TASKS)
    env = {**os.environ, "CAPTURE_URL": url, "PYTHONPATH": str(workdir)}
    sys.path.insert(0, str(workdir))
    os.environ["CAPTURE_URL"] = url
    from capture_tasks import app, sleep  # written above

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "capture_tasks", "worker", "-P", "prefork",
         "-c", "1", "-n", NODE, "--without-mingle", "--without-gossip",
         "--without-heartbeat", "-l", "WARNING"], cwd=workdir, env=env,
    )
    monitor = Monitor(url)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise SystemExit("the Celery worker did not answer")
        monitor.start()
        monitor.ready.wait(10)
        time.sleep(0.5)

        def one(call: str, run: Any, commands: int) -> list[tuple[str, str, str]]:
            before = len(monitor.seen)
            run()
            until = time.monotonic() + 10
            while len(monitor.seen) < before + commands and time.monotonic() < until:
                time.sleep(0.05)
            found = monitor.seen[before:before + commands]
            if len(found) != commands:
                raise SystemExit(f"{call}: expected {commands} commands, saw {found}")
            return found

        request, reply = one("app.control.ping()", lambda: app.control.ping(timeout=1), 2)
        write("celery-ping-request", "Celery's control.ping(): a request with a reply.",
              "app.control.ping(timeout=1)", request)
        write("celery-ping-reply", "The Celery worker's reply to ping.",
              "app.control.ping(timeout=1)", reply)

        task_id = "5ff8a95f-7f8c-4b0b-9a0e-2f3c1d5e6a70"
        [request] = one("revoke", lambda: app.control.revoke(task_id), 1)
        write("celery-revoke-request", "Celery's control.revoke(id): a cast, no reply "
              "wanted (no ticket, no reply_to).", f"app.control.revoke({task_id!r})", request)

        request, reply = one("revoke reply", lambda: app.control.revoke(
            [task_id, "c4d2e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f"], terminate=True,
            signal="SIGKILL", reply=True, timeout=1), 2)
        write("celery-revoke-terminate-request", "Celery's control.revoke([ids], "
              "terminate=True, signal='SIGKILL', reply=True).",
              "app.control.revoke([...], terminate=True, signal='SIGKILL', reply=True)",
              request)
        write("celery-revoke-terminate-reply", "The Celery worker's reply to a terminate of "
              "tasks it does not run.", "app.control.revoke(..., terminate=True)", reply)

        [request] = one("AsyncResult.revoke", lambda: app.AsyncResult(task_id).revoke(), 1)
        write("celery-asyncresult-revoke-request", "Celery's AsyncResult.revoke(): signal "
              "null and expires 0 (no timeout given).", "AsyncResult(id).revoke()", request)

        running = sleep.delay(5)
        deadline = time.monotonic() + 20
        while not (app.control.inspect(timeout=0.5).active() or {}).get(NODE):
            if time.monotonic() > deadline:
                raise SystemExit("the task did not start")
        request, reply = one("inspect active", lambda: app.control.inspect(timeout=1).active(), 2)
        write("celery-inspect-active-request", "Celery's inspect().active().",
              "app.control.inspect(timeout=1).active()", request)
        write("celery-inspect-active-reply", "The Celery worker's reply to active, one task "
              "running.", "app.control.inspect(timeout=1).active()", reply)
        running.get(timeout=20)

        request, reply = one("unknown", lambda: app.control.broadcast(
            "no_such_command", reply=True, timeout=1), 2)
        write("celery-unknown-command-request", "A command no worker knows.",
              "app.control.broadcast('no_such_command', reply=True)", request)
        write("celery-unknown-command-reply", "How a Celery worker answers a command it does "
              "not know.", "app.control.broadcast('no_such_command', reply=True)", reply)
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/15")
