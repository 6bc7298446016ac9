"""Importing the pure core loads the pure core only (issue 11, item 3).

Each case runs a fresh interpreter, imports one module and reports every ``wiretask``
module then in ``sys.modules``: the sets are exact, so a new import that drags the app,
the worker or a transport into ``import wiretask.protocol`` fails here, naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import wiretask
from wiretask.protocol import states

ERRORS = {"wiretask", "wiretask.errors"}
CODECS = ERRORS | {
    "wiretask.codecs",
    "wiretask.codecs.compressors",
    "wiretask.codecs.nesting",
    "wiretask.codecs.registry",
    "wiretask.codecs.serializers",
}
PROTOCOL = CODECS | {
    "wiretask.protocol",
    "wiretask.protocol.celery",
    "wiretask.protocol.envelope",
    "wiretask.protocol.frame",
    "wiretask.protocol.signature",
    "wiretask.protocol.timing",
}
STATES = PROTOCOL | {"wiretask.protocol.states", "wiretask.protocol.exceptions"}

#: Modules that do I/O or start machinery; none of them belongs to the pure core.
NOT_PURE = ("socket", "sqlite3", "subprocess", "multiprocessing", "asyncio", "redis", "celery")


def loaded_after(statement: str) -> tuple[set[str], set[str]]:
    """Run ``statement`` in a fresh interpreter: (wiretask modules, other top-level
    packages) it loaded."""
    script = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "new = set(sys.modules) - before\n"
        "print(json.dumps([sorted(m for m in new if m.split('.')[0] == 'wiretask'),"
        " sorted({m.split('.')[0] for m in new})]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    ours, top = json.loads(out)
    return set(ours), set(top)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("import wiretask", {"wiretask"}),
        ("import wiretask.errors", ERRORS),
        ("import wiretask.codecs", CODECS),
        ("import wiretask.protocol", PROTOCOL),
        ("import wiretask.protocol.celery", PROTOCOL),
        ("import wiretask.protocol.states", STATES),
        ("from wiretask import DecodeError, TaskMessage, encode, decode", PROTOCOL),
        ("from wiretask import states", STATES),
    ],
)
def test_the_pure_core_loads_only_pure_modules(statement: str, expected: set[str]) -> None:
    ours, top = loaded_after(statement)
    assert ours == expected, f"{statement}: extra {sorted(ours - expected)}"
    assert not top & set(NOT_PURE), f"{statement} loaded {sorted(top & set(NOT_PURE))}"


def test_a_heavy_name_loads_its_module_when_first_read() -> None:
    ours, _ = loaded_after("import wiretask\nwiretask.Worker")
    assert "wiretask.worker" in ours
    ours, _ = loaded_after("import wiretask\nwiretask.App")
    assert "wiretask.app" in ours


def _by_home() -> dict[str, list[str]]:
    homes: dict[str, list[str]] = {}
    for name in wiretask.__all__:
        if name != "__version__":
            homes.setdefault(wiretask._HOMES[name], []).append(name)
    return homes


@pytest.mark.parametrize(("home", "names"), sorted(_by_home().items()))
def test_public_names_import_first_in_a_fresh_interpreter(home: str, names: list[str]) -> None:
    # Each module's names resolve with nothing of wiretask imported before them: a lazy
    # name whose module depends on import order would pass in this process, not here.
    code = (
        f"from wiretask import {', '.join(names)}\n"
        "import importlib, wiretask\n"
        f"home = importlib.import_module({home!r})\n"
        f"for name, value in zip({names!r}, [{', '.join(names)}]):\n"
        "    assert value is getattr(wiretask, name)\n"
        "    assert value is home or value is getattr(home, name), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_public_name_has_a_home() -> None:
    assert set(wiretask._HOMES) == set(wiretask.__all__) - {"__version__"}


def test_star_import_and_dir_list_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from wiretask import *", namespace)  # the statement under test
    assert set(wiretask.__all__) <= set(namespace)
    assert set(wiretask.__all__) <= set(dir(wiretask))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    name = "no_such_name"
    with pytest.raises(AttributeError, match="'no_such_name'"):
        getattr(wiretask, name)


def test_a_states_read_returns_the_module() -> None:
    assert wiretask.states is states
