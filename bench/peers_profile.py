"""Where wiretask's time goes on each row of ``bench/peers.py`` (issue 18), by py-spy.

Run: ``python bench/peers_profile.py`` (``--rows enqueue,e2e1``, ``--n 20000``,
``--top 25``); needs ``py-spy`` (``[profile]`` of ``bench/requirements-peers.txt``) and
ptrace rights over its own children. Uses ``$WIRETASK_BENCH_REDIS_URL`` or a private
``redis-server``; database ``$WIRETASK_BENCH_REDIS_DB`` (default 9) is emptied.

* **enqueue**, **batch**: ``py-spy record`` of a process that sends N messages with
  ``task.apply_async`` (one at a time) or ``task.apply_many`` (chunks of 1,000), the
  bench's app and payload (``_peers.lib_wiretask``).
* **e2e1**, **e2e**: N messages are queued first (``apply_many``), then ``py-spy
  record`` runs the bench's worker command (``--pool solo``, or the CLI's defaults)
  until the N-th task completes: the worker alone, with no publisher beside it.

py-spy samples every thread (``--rate`` per second, ``--nonblocking``, ``--function``:
one frame per function, ``--gil``: only samples holding the GIL, i.e. Python running).
Printed per row: the functions with the most samples on top of the stack (self) and
in the stack (inclusive), as shares of all samples but those of the start-up's imports.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import BENCH_DIR, REDIS_DB, ROOT, redis_url
from _peers import ARGS, BATCH, COUNTER, DONE, KWARGS, URL_ENV, procstat
from _peers.spec import BY_NAME

ROWS = ("enqueue", "batch", "e2e1", "e2e")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--n", type=int, default=20000, help="messages per row (20000)")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples/s (1000)")
    parser.add_argument("--top", type=int, default=25, help="functions shown (25)")
    parser.add_argument("--target", nargs=2, metavar=("ROW", "N"), help=argparse.SUPPRESS)
    return parser.parse_args()


def target(row: str, n: int) -> None:
    """The profiled client loop (run under py-spy by ``profile_client``)."""
    from _peers.lib_wiretask import app, small  # noqa: PLC0415 - needs the URL first

    if row == "enqueue":
        for _ in range(n):
            small.apply_async(ARGS, KWARGS)
    else:
        calls = [(ARGS, KWARGS)] * BATCH
        for _ in range(max(1, n // BATCH)):
            small.apply_many(calls)
    app.close()


def environment(url: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", ""),
                                       str(ROOT / "src")) if p)
    return {**os.environ, URL_ENV: url, "PYTHONPATH": path}


def py_spy(rate: int, out: Path) -> list[str]:
    binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
        "py-spy")
    if binary is None:
        raise SystemExit("py-spy not found: python bench/peers.py --install")
    return [binary, "record", "--format", "raw", "--function", "--nonblocking", "--gil",
            "--rate", str(rate), "--output", str(out), "--"]


def profile_client(row: str, n: int, url: str, rate: int, out: Path) -> None:
    subprocess.run([*py_spy(rate, out), sys.executable, __file__, "--target", row, str(n)],
                   cwd=BENCH_DIR, env=environment(url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_worker(row: str, n: int, url: str, rate: int, out: Path,
                   client: redis.Redis) -> None:
    os.environ[URL_ENV] = url
    from _peers.lib_wiretask import small  # noqa: PLC0415 - needs the URL first

    calls = [(ARGS, KWARGS)] * BATCH
    for start in range(0, n, BATCH):
        small.apply_many(calls[: min(BATCH, n - start)])
    client.set(COUNTER, -n)
    lib = BY_NAME["wiretask"]
    command = lib.one_slot if row == "e2e1" else lib.default
    python = Path(sys.executable)
    argv = [part.format(bin=python.parent, python=python, url=url) for part in command]
    spy = subprocess.Popen([*py_spy(rate, out), *argv], cwd=BENCH_DIR, env=environment(url),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        while client.blpop([DONE], timeout=1) is None:
            if spy.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"{row}: the worker did not finish {n} tasks")
        print(f"{row}: {n} tasks in {time.monotonic() - started:.2f} s (from start-up, "
              "under py-spy)", file=sys.stderr)
    finally:
        for pid in procstat.tree(spy.pid)[1:]:  # the worker: py-spy writes when it exits
            os.kill(pid, signal.SIGTERM)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def summarise(row: str, out: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = skipped = 0
    for line in out.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first frame is the thread (or process)
        if any(frame.startswith("_find_and_load ") for frame in frames):
            skipped += count  # start-up: imports
            continue
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"\n### {row}: {total} samples holding the GIL (and {skipped} in imports, left "
          "out)\n")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"{title}:")
        for frame, count in counter.most_common(top):
            print(f"  {count / total:6.1%}  {frame}")
    print()


def main() -> None:
    options = parse()
    if options.target:
        target(options.target[0], int(options.target[1]))
        return
    rows = [r for r in options.rows.split(",") if r]
    with redis_url() as base, tempfile.TemporaryDirectory() as tmp:
        url = f"{base}/{REDIS_DB}"
        client = redis.Redis.from_url(url)
        try:
            for row in rows:
                client.flushdb()
                out = Path(tmp) / f"{row}.txt"
                if row in ("enqueue", "batch"):
                    profile_client(row, options.n, url, options.rate, out)
                else:
                    profile_worker(row, options.n, url, options.rate, out, client)
                summarise(row, out, options.top)
        finally:
            client.flushdb()
            client.close()


if __name__ == "__main__":
    main()
