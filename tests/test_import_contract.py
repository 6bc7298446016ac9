"""The import contract in ``pyproject.toml`` holds, and it catches what it is meant to.

``./scripts/test`` runs ``lint-imports`` itself; these tests run it too, so ``pytest``
alone enforces the layers, and they plant wrong imports in a copy of the package to show
that the contract is not vacuous: an upward import (also one inside a function or under
``TYPE_CHECKING``), a sibling import, an I/O import in the pure core, and a new module
that no layer names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "wiretask"

LINT = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def lint(source_root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` with the project's contract on the package under
    ``source_root`` (found first on ``sys.path``)."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_the_contract() -> None:
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "reported"),
    [
        (
            "protocol/frame.py",
            "\nimport typing\nif typing.TYPE_CHECKING:\n    from wiretask.app import App\n",
            "wiretask.protocol is not allowed to import wiretask.app",
        ),
        (
            "codecs/registry.py",
            "\ndef _late() -> None:\n    import wiretask.protocol.celery\n",
            "wiretask.codecs is not allowed to import wiretask.protocol",
        ),
        (
            "transports/memory.py",
            "\ndef _late() -> None:\n    from wiretask.results import memory\n",
            "wiretask.transports is not allowed to import wiretask.results",
        ),
        (
            "retry.py",
            "\nfrom wiretask.transports import base\n",
            "wiretask.retry is not allowed to import wiretask.transports",
        ),
        (
            "protocol/timing.py",
            "\nimport time\n",
            "wiretask.protocol is not allowed to import time",
        ),
        (
            "unplaced.py",
            "X = 1\n",
            "- wiretask.unplaced",
        ),
    ],
)
def test_a_planted_import_breaks_the_contract(
    tmp_path: Path, module: str, planted: str, reported: str
) -> None:
    copy = tmp_path / "wiretask"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + planted if target.exists() else planted)
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert reported in result.stdout, result.stdout
