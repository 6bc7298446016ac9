"""The RabbitMQ benchmarks run and print their ratios (tiny counts; no timing asserted),
each as its own process on the test broker, as ``tests/test_bench_smoke.py`` does for
the others."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
RATIO_LINE = re.compile(r"^ratio: .+: \d+\.\d+ \(", re.MULTILINE)


def run_bench(script: str, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
        timeout=300, cwd=BENCH.parent, check=False, env=env,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert "| operation" in result.stdout
    assert RATIO_LINE.findall(result.stdout), result.stdout
    return result.stdout


@pytest.fixture
def bench_env(amqp_url: str, redis_base_url: str) -> dict[str, str]:
    return {**os.environ, "WIRETASK_BENCH_AMQP_URL": amqp_url,
            "WIRETASK_BENCH_REDIS_URL": redis_base_url}


def test_amqp_publish_bench_runs(bench_env: dict[str, str]) -> None:
    output = run_bench("amqp_publish.py", "--scale", "0.01", "--repeat", "1", env=bench_env)
    for operation in ("publish 1 msg: task.apply_async", "batch publish: task.apply_many",
                      "publish 1 msg: apply_async, confirm_publish=false"):
        assert f"ratio: {operation}" in output, output


@pytest.mark.redis
@pytest.mark.slow
def test_amqp_end_to_end_bench_runs(bench_env: dict[str, str]) -> None:
    output = run_bench("amqp_end_to_end.py", "--scale", "0.01", "--concurrency", "2",
                       "--cap", "60", "--repeat", "1", env=bench_env)
    for operation in ("e2e 30 tasks, solo (apply_many publish)",
                      "e2e 30 tasks, 2 threads (apply_many publish)"):
        assert f"ratio: {operation}" in output, output
