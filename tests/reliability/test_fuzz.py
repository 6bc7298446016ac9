"""The fuzz harnesses in fuzz/ (issue 13): one per decode entry point (the Celery frame,
the Redis list entry, a SQLite row, an AMQP message's content header and body, each
decompressor), seeded from spec/vectors/. Each
target holds on its seeds and on random inputs here, and a short coverage-guided run
of each (atheris, bounded in runs and time) is part of the test command; the long run
is in fuzz/README.md."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = ["fuzz_decode", "fuzz_redis_entry", "fuzz_sqlite_row", "fuzz_decompress",
             "fuzz_amqp_message"]


def load(name: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))  # the harnesses import fuzz/_harness.py
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: load(name) for name in HARNESSES}


@pytest.mark.parametrize("name", HARNESSES[1:])
def test_every_seed_holds(name: str, tmp_path: Path) -> None:
    module = MODULES[name]
    seeds = list(module.seeds())
    assert len(seeds) >= 20
    for _, data in seeds:
        module.test_one_input(data)


@pytest.mark.parametrize("name", HARNESSES)
@given(data=st.binary(max_size=400))
def test_every_target_holds_on_random_inputs(name: str, data: bytes) -> None:
    MODULES[name].test_one_input(data)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", HARNESSES)
def test_a_short_coverage_guided_run(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris (the test extra) runs the fuzzers")
    corpus = tmp_path / "corpus"
    made = subprocess.run([sys.executable, str(FUZZ / f"{name}.py"), "--make-corpus",
                           str(corpus)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, str(FUZZ / f"{name}.py"), str(corpus), "-runs=3000",
         "-max_total_time=6", f"-artifact_prefix={tmp_path}/"],
        check=False, capture_output=True, text=True, timeout=90,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert run.returncode == 0 and not crashes, (crashes, run.stderr[-3000:])
