"""A real ``wiretask worker`` process for the asyncio tests, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SRC = ROOT / "src"


@contextlib.contextmanager
def worker_process(
    app_path: str, broker: str, *, pool: str = "asyncio", concurrency: int = 50,
    cwd: Path = EXAMPLES, backend: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``wiretask worker -A app_path --pool pool -c concurrency`` on ``broker`` (also its
    result backend, unless ``backend`` is given), run from ``cwd``; terminated (then
    killed) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
    env["WIRETASK_BROKER_URL"] = broker
    if backend is not None:
        env["WIRETASK_RESULT_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(cwd), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "wiretask", "worker", "-A", app_path, "--pool", pool,
         "-c", str(concurrency), "-l", "WARNING"],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
