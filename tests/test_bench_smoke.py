"""The benchmarks run and print their ratios (tiny iteration counts; no timing asserted).

Each bench runs as its own process, as a user runs it. The Redis benches start a private
``redis-server`` (or use ``$WIRETASK_BENCH_REDIS_URL``); without one they are skipped,
or fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
RATIO_LINE = re.compile(r"^ratio: .+: \d+\.\d+ \(", re.MULTILINE)


def run_bench(script: str, *args: str, timeout: float = 240) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent, check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def needs_redis() -> None:
    if os.environ.get("WIRETASK_BENCH_REDIS_URL"):
        return
    if not (os.environ.get("WIRETASK_TEST_REDIS_SERVER") or shutil.which("redis-server")):
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI=true but is not available")
        pytest.skip("redis-server is not available")


def check_output(output: str, operations: list[str]) -> None:
    assert "| operation" in output  # the table
    ratios = RATIO_LINE.findall(output)
    assert ratios, output
    for operation in operations:
        assert f"ratio: {operation}" in output, output


def test_codec_bench_runs() -> None:
    output = run_bench("codec.py", "--scale", "0.01", "--repeat", "1")
    check_output(output, ["SMALL build (json)", "SMALL decode (msgpack)",
                          "LARGE build (msgpack)", "LARGE decode (msgpack)"])


@pytest.mark.redis
def test_redis_publish_bench_runs() -> None:
    needs_redis()
    output = run_bench("redis_publish.py", "--scale", "0.01", "--repeat", "1")
    check_output(output, ["publish 1 msg: task.apply_async", "batch publish: task.apply_many"])


@pytest.mark.redis
def test_async_api_bench_runs() -> None:
    needs_redis()
    output = run_bench("async_api.py", "--scale", "0.01", "--repeat", "1")
    check_output(output, ["publish: await aapply_async (1 at a time)",
                          "await: adelay + aget (100 in flight)"])


@pytest.mark.redis
@pytest.mark.interop
@pytest.mark.slow
def test_end_to_end_bench_runs() -> None:
    needs_redis()
    output = run_bench("end_to_end.py", "--scale", "0.01", "--concurrency", "2", "--cap", "60",
                       "--repeat", "1")
    check_output(output, ["e2e 30 tasks, solo (apply_many publish)",
                          "e2e 30 tasks, solo (apply_async publish)",
                          "e2e 30 tasks, 2 threads (apply_many publish)"])


@pytest.mark.redis
def test_queue_stats_bench_runs() -> None:
    needs_redis()
    output = run_bench("queue_stats.py", "--scale", "0.0001", "--repeat", "1")
    check_output(output, ["SQLite queue_stats, 100 messages",
                          "Redis queue_stats, 100 messages",
                          "Redis queue_stats, 10 in flight (any queue)"])


@pytest.mark.slow
def test_soak_bench_runs() -> None:
    """bench/soak.py on SQLite with a few hundred messages: its table counts them all."""
    output = run_bench("soak.py", "--messages", "300", "--transports", "sqlite",
                       "--cap", "120")
    assert "| transport | messages | executed once | duplicated | lost |" in output
    assert "| sqlite | 300 | 300 | 0 | 0 |" in output


def test_soak_bench_runs_on_rabbitmq(amqp_url: str) -> None:
    """bench/soak.py on RabbitMQ (the test node, through ``amqp_url``): it counts them all."""
    output = run_bench("soak.py", "--messages", "300", "--transports", "amqp", "--cap", "120")
    assert "| amqp | 300 | 300 | 0 | 0 |" in output


@pytest.mark.redis
def test_versions_bench_runs() -> None:
    """``versions.py`` with this checkout on both sides: it runs each side's bench and
    prints one row per operation both printed, with the ratio of their rates."""
    needs_redis()
    result = subprocess.run(
        [sys.executable, str(BENCH / "versions.py"), "--before", str(BENCH.parent),
         "--before-python", sys.executable, "--benches", "redis_publish", "--rounds", "1",
         "--scale", "0.01", "--bench-args", "--repeat 1"],
        capture_output=True, text=True, timeout=240, cwd=BENCH.parent, check=False,
    )
    assert result.returncode == 0, f"versions.py failed:\n{result.stdout}\n{result.stderr}"
    assert "| bench | operation | before /s | tip /s | tip / before |" in result.stdout
    assert "| redis_publish | publish 1 msg: task.apply_async (ref: celery apply_async) |" \
        in result.stdout, result.stdout
    assert re.search(r"^ratio: redis_publish: batch publish: task\.apply_many\(\d+\): \d+\.\d+$",
                     result.stderr, re.MULTILINE), result.stderr


@pytest.mark.redis
def test_publish_cpu_bench_runs(redis_base_url: str) -> None:
    """``publish_cpu.py`` prints the CPU and wall time of one ``apply_async`` (us)."""
    out = run_bench("publish_cpu.py", "--count", "50", "--runs", "1",
                    "--redis-url", redis_base_url)
    cpu, wall = (float(x) for x in out.split())
    assert cpu > 0 and wall > 0
