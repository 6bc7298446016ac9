"""A soft time limit under a trace function (coverage, a debugger) leaves the process
running.

``ThreadControl.end`` once cleared a possibly pending time-limit exception with
``PyThreadState_SetAsyncExc(id, NULL)``. That leaves CPython's interpreter-wide "async
exception pending" flag set, and with a trace function installed every thread then
livelocks: the whole suite hung under ``pytest --cov`` in
``test_soft_time_limit_raises_inside_the_task``. Each case runs in a fresh interpreter
with a trace function, bounded by a timeout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from wiretask.errors import SoftTimeLimitExceeded
    from wiretask.worker.pools._inthread import ThreadControl

    def trace(frame, event, arg):
        return trace

    threading.settrace(trace)
    sys.settrace(trace)
    seen = []

    def body():
        control = ThreadControl(soft=0.1, hard=None, on_hard=lambda: None, describe="t")
        control.begin()
        try:
            for _ in range(250):
                time.sleep(0.01)
            seen.append("finished")
        except SoftTimeLimitExceeded:
            seen.append("soft")
        seen.append(control.end())

    for _ in range(3):
        thread = threading.Thread(target=body)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "the task thread is stuck"
    started = time.monotonic()
    total = sum(range(200_000))
    print(seen, total, time.monotonic() - started < 10)
    """
)


@pytest.mark.parametrize("tracer", ["settrace", "coverage"])
def test_a_soft_limit_under_a_tracer_finishes(tracer: str, tmp_path: Path) -> None:
    script = tmp_path / "soft_limit.py"
    script.write_text(SCRIPT, encoding="utf-8")
    command = [sys.executable, str(script)]
    if tracer == "coverage":  # coverage's own tracer, as under pytest --cov
        command[1:1] = ["-m", "coverage", "run", f"--data-file={tmp_path / 'data'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['soft', True, 'soft', True, 'soft', True] 19999900000 True"
