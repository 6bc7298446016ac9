"""What every harness in ``fuzz/`` shares: the golden vectors as seeds, and the command
line (``--make-corpus DIR``, ``--replay FILE...``, or libFuzzer's flags under atheris).

A harness module defines ``test_one_input(data: bytes)`` (the target: any input either
reads as the entry point promises or raises ``WiretaskError``; anything else is a bug)
and ``seeds() -> Iterator[tuple[str, bytes]]``, then calls ``run(sys.argv, ...)``.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"


def vector_frames() -> Iterator[tuple[str, dict[str, Any], bytes]]:
    """``(name, frame as in the vector file, body bytes)`` of every golden vector that
    holds a frame. The canvas vectors (``spec/vectors/canvas/``) describe a call and the
    messages it sends as decoded documents, not frames: they are not seeds."""
    for path in sorted(VECTORS.rglob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if "frame" not in document:
            if path.parent.name != "canvas":
                raise ValueError(f"{path}: a vector without a frame outside canvas/")
            continue
        frame = document["frame"]
        yield path.stem, frame, base64.b64decode(frame["body"])


def make_corpus(seeds: Callable[[], Iterator[tuple[str, bytes]]], folder: Path) -> int:
    """Write every seed into ``folder``; return how many."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, data in seeds():
        (folder / f"{name}.bin").write_bytes(data)
        count += 1
    return count


def run(argv: list[str], target: Callable[[bytes], None],
        seeds: Callable[[], Iterator[tuple[str, bytes]]]) -> int:
    """The command line of a harness (see the module doc)."""
    if len(argv) > 1 and argv[1] == "--make-corpus":
        folder = Path(argv[2] if len(argv) > 2 else "fuzz/corpus")
        print(f"wrote {make_corpus(seeds, folder)} seeds to {folder}")
        return 0
    if len(argv) > 1 and argv[1] == "--replay":
        for name in argv[2:]:
            target(Path(name).read_bytes())
            print(f"ok {name}")
        return 0
    try:
        import atheris  # noqa: PLC0415 - only the fuzzing run needs it
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    atheris.Setup(argv, target)
    atheris.Fuzz()
    return 0
