"""The atheris harness in fuzz/ imports and runs without atheris, and its target holds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_decode.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_decode", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load()


def test_seed_corpus_replays(tmp_path: Path) -> None:
    assert harness.make_corpus(tmp_path) >= 40
    for seed in sorted(tmp_path.iterdir()):
        harness.test_one_input(seed.read_bytes())


def test_split_inverts_join() -> None:
    data = harness.join(b"body", {"task": "t"}, {"priority": 1}, "application/json", "zlib")
    assert harness.split(data) == (b"body", {"task": "t"}, {"priority": 1},
                                   "application/json", "zlib")


@given(st.binary(max_size=300))
def test_target_on_random_inputs(data: bytes) -> None:
    harness.test_one_input(data)


@given(st.sampled_from(sorted(harness.CONTENT_TYPES)), st.binary(max_size=200),
       st.dictionaries(st.sampled_from(["task", "id", "eta", "timelimit", "x"]),
                       st.none() | st.text(max_size=8) | st.integers() | st.lists(st.none()),
                       max_size=5))
def test_target_on_structured_inputs(content_type: str, body: bytes,
                                     headers: dict[str, object]) -> None:
    harness.test_one_input(harness.join(body, headers, {}, content_type, None))
