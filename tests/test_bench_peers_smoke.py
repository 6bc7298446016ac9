"""``bench/peers.py`` runs end to end in a tiny bounded mode and prints its report: the
Redis table with every peer importable here, then the RabbitMQ and asyncio tables.

It runs wiretask and Celery (the test extra installs both) plus every peer that is
importable here (``bench/requirements-peers.txt``; arq only when its venv
``bench/.venvs/arq`` is already built): a few hundred messages, one round, each end-to-end
run capped. No timing is asserted; the report's structure and the exactness of the
completion count are. Needs a ``redis-server`` (skipped without one, failed under
``CI=true``, as the other bench smoke tests).
"""

from __future__ import annotations

import importlib.util
import os
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
    assert "QUEUE HELD" not in report and "NO WARM-UP" not in report, report
    capped = [line for line in report.splitlines() if "CAPPED" in line]
    assert all(line.startswith("| arq ") for line in capped), capped
    assert "worker RSS, peak MiB (one slot)" in report


#: The RabbitMQ peers of the main environment, by the module each needs (none is in the
#: test extra: without them the RabbitMQ test below runs wiretask's own rows only).
OPTIONAL_AMQP = {"celery-amqp": "celery", "dramatiq-amqp": "pika", "aio-celery": "aio_celery"}


@pytest.mark.redis
@pytest.mark.interop
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_peers_bench_runs_the_rabbitmq_and_asyncio_rows(tmp_path: Path, amqp_url: str) -> None:
    """``--broker both`` restricted to the new rows' libraries, on the test RabbitMQ (its
    ``amqp_url`` fixture fails under CI=true without one) and a private Redis: wiretask's
    AMQP transport, its asyncio API on Redis and on RabbitMQ, and the RabbitMQ peers that
    import here; one round of the two publish rows and the one-slot end-to-end row."""
    needs_redis()
    libs = ["wiretask-amqp", "wiretask-amqp-nc", "wiretask-aio", "wiretask-aio-amqp"]
    libs += [name for name, module in OPTIONAL_AMQP.items() if importlib.util.find_spec(module)]
    out = tmp_path / "peers.md"
    result = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "--scale", "0.01", "--repeat", "1",
         "--cap", "20", "--rows", "enqueue,batch,e2e1", "--libs", ",".join(libs),
         "--out", str(out)],
        capture_output=True, text=True, timeout=280, cwd=BENCH.parent, check=False,
        env={**os.environ, "WIRETASK_BENCH_AMQP_URL": amqp_url},
    )
    assert result.returncode == 0, f"peers.py failed:\n{result.stdout}\n{result.stderr}"
    report = result.stdout
    assert out.read_text(encoding="utf-8").strip() == report.strip()
    for table, ours in (("RabbitMQ", "wiretask-amqp"), ("asyncio on Redis", "wiretask-aio"),
                        ("asyncio on RabbitMQ", "wiretask-aio-amqp")):
        assert f"### {table}: Summary ({ours}, same run)" in report, report
        for title in ("enqueue one at a time", "batch of 1,000",
                      "end to end, one slot, CLI defaults"):
            assert f"### {table}: {title}" in report, report
    # wiretask's asyncio set-up on Redis has no peer in this run; on RabbitMQ, with the
    # peers installed, its rows are ratios to the best of them.
    if "aio-celery" in libs:
        assert re.search(r"^ratio: asyncio on RabbitMQ: batch of 1,000: wiretask-aio-amqp / "
                         r"best peer \(aio-celery\): \d+\.\d+$", report, re.MULTILINE), report
    # The Redis table (and its floor) is not shown: wiretask's sync Redis set-up did not run.
    assert "### Summary (wiretask, same run)" not in report
    assert not re.search(r"^\| floor ", report, re.MULTILINE)
    # Rows per library: 3 per table it is in, and one in the guarantees table.
    tables = {"aio-celery": 2}
    for lib in libs:
        rows = re.findall(rf"^\| {re.escape(lib)} +\|", report, re.MULTILINE)
        assert len(rows) == 3 * tables.get(lib, 1) + 1, (lib, report)
    for trouble in ("DUPLICATES", "CAPPED", "QUEUE HELD", "NO WARM-UP"):
        assert trouble not in report, report
    # The RabbitMQ node of the tests runs here: its CPU per message is measured (a
    # number, not "-"), in the RabbitMQ tables only.
    section = report.split("### RabbitMQ: enqueue one at a time", 1)[1]
    header, _, *lines = [line for line in section.splitlines() if line.startswith("|")]
    column = [cell.strip() for cell in header.split("|")].index("RabbitMQ CPU us/msg")
    ours = next(line for line in lines if line.startswith("| wiretask-amqp "))
    assert re.fullmatch(r"[\d,]+", ours.split("|")[column].strip()), ours
    assert "RabbitMQ CPU" not in report.split("### asyncio on Redis: enqueue", 1)[1].split(
        "\n\n", 2)[1]
