"""The plumbing's import arrows: ``transports`` and ``results`` are siblings that share the
plumbing below them (``_redis/``, ``_sqlite``, ``_url``, ``_ids``, ``_errormap``) and
import nothing from each other; the plumbing imports neither. Every import counts,
function-level and ``TYPE_CHECKING`` ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wiretask

SRC = Path(wiretask.__file__).parent
PLUMBING = ["_redis", "_sqlite.py", "_url.py", "_ids.py", "_errormap.py"]


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from x import y`` counts as ``x`` and ``x.y``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def files(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        path = SRC / part
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


@pytest.mark.parametrize(("sources", "forbidden"), [
    (["results"], ("wiretask.transports",)),
    (["transports"], ("wiretask.results",)),
    (PLUMBING, ("wiretask.transports", "wiretask.results", "wiretask.app",
                "wiretask.worker", "wiretask.calling")),
], ids=["results", "transports", "plumbing"])
def test_no_arrow_crosses(sources: list[str], forbidden: tuple[str, ...]) -> None:
    crossing = {
        f"{path.relative_to(SRC)} -> {name}"
        for path in files(*sources) for name in imported(path)
        if name.startswith(forbidden)
    }
    assert not crossing
