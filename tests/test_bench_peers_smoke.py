"""``bench/peers.py`` runs end to end in a tiny bounded mode and prints its report.

It runs wiretask and Celery (the test extra installs both) plus every peer that is
importable here (``bench/requirements-peers.txt``; arq only when its venv
``bench/.venvs/arq`` is already built): a few hundred messages, one round, each end-to-end
run capped. No timing is asserted; the report's structure and the exactness of the
completion count are. Needs a ``redis-server`` (skipped without one, failed under
``CI=true``, as the other bench smoke tests).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_bench_smoke import needs_redis

BENCH = Path(__file__).resolve().parent.parent / "bench"

#: The peers of the main environment, by the module each needs.
OPTIONAL = {"dramatiq": "dramatiq", "rq": "rq", "taskiq-stream": "taskiq_redis",
            "taskiq-list": "taskiq_redis", "huey": "huey"}


def available_libs() -> list[str]:
    libs = ["wiretask", "celery"]
    libs += [name for name, module in OPTIONAL.items() if importlib.util.find_spec(module)]
    arq_python = BENCH / ".venvs" / "arq" / "bin" / "python"
    if arq_python.exists() and subprocess.run(
        [str(arq_python), "-c", "import arq"], capture_output=True, check=False
    ).returncode == 0:
        libs.append("arq")
    return libs


@pytest.mark.redis
@pytest.mark.interop
@pytest.mark.slow
@pytest.mark.timeout(600)  # up to nine libraries' workers start twice each
def test_peers_bench_runs(tmp_path: Path) -> None:
    needs_redis()
    libs = available_libs()
    out = tmp_path / "peers.md"
    result = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "--scale", "0.02", "--repeat", "1",
         "--cap", "20", "--libs", ",".join(libs), "--out", str(out)],
        capture_output=True, text=True, timeout=540, cwd=BENCH.parent, check=False,
    )
    assert result.returncode == 0, f"peers.py failed:\n{result.stdout}\n{result.stderr}"
    report = result.stdout
    assert out.read_text(encoding="utf-8").strip() == report.strip()
    assert "### Summary (wiretask, same run)" in report
    for title in ("enqueue one at a time", "batch of 1,000",
                  "end to end, one slot, CLI defaults", "end to end, default concurrency"):
        assert f"### {title}" in report, report
        assert f"ratio: {title}: wiretask / floor: " in report, report
    for lib in [*libs, "floor"]:
        # One line per row (4) and one in the guarantees table.
        rows = re.findall(rf"^\| {re.escape(lib)} +\|", report, re.MULTILINE)
        assert len(rows) == 5, (lib, report)
    # Every end-to-end run completed its messages exactly once (no duplicate), within
    # the cap; arq excepted, whose one-slot worker (max_jobs 1) starts one job per
    # 0.5 s poll of its queue and so is cut by the cap.
    assert "DUPLICATES" not in report, report
    capped = [line for line in report.splitlines() if "CAPPED" in line]
    assert all(line.startswith("| arq ") for line in capped), capped
    assert "worker RSS, peak MiB (one slot)" in report
