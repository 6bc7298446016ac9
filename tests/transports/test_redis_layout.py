"""The Redis transport's parts import each other one way: a module of
``wiretask.transports.redis`` imports only modules of a lower layer, so that a part never
reaches back into the transport that composes it (nor into a part beside it). Every
import counts, function-level and ``TYPE_CHECKING`` ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import wiretask.transports.redis as package

PACKAGE = "wiretask.transports.redis"
ROOT = Path(package.__file__).parent

#: Lowest first. The pure envelope; the values and the database every part shares; the
#: parts; the parts built on other parts (settling; ``aio``, the asyncio twin, on the
#: publishing and admin parts); the transport that composes them; the package.
LAYERS: list[set[str]] = [
    {"envelope"},
    {"deadletters", "delivery", "database"},
    {"leases", "publishing", "admin", "scheduler", "broadcast"},
    {"settling", "aio"},
    {"consuming"},
    {"transport"},
    {"__init__"},
]


def siblings(path: Path) -> set[str]:
    """The modules of this package that ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path.name}: relative import"
            names = [node.module or ""]
        found |= {name.removeprefix(f"{PACKAGE}.").split(".")[0]
                  for name in names if name.startswith(f"{PACKAGE}.")}
    return found


def test_every_module_has_a_layer() -> None:
    modules = {path.stem for path in ROOT.glob("*.py")}
    assert modules == set().union(*LAYERS)


def test_imports_run_down_the_layers() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    upward = {
        f"{path.stem} -> {imported}"
        for path in ROOT.glob("*.py") for imported in siblings(path)
        if layer[imported] >= layer[path.stem]
    }
    assert not upward
