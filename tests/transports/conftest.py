"""Installing a distribution with ``wiretask.transports`` entry points, for real, on a
temporary ``sys.path`` entry (a ``*.dist-info`` directory, as pip would leave it)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretask.transports.url import ENTRY_POINT_GROUP


class Site:
    """A directory on ``sys.path`` that distributions and modules can be written to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modules: list[str] = []

    def module(self, name: str, source: str) -> None:
        """Write ``name.py`` (imported by name from now on)."""
        (self.path / f"{name}.py").write_text(source, encoding="utf-8")
        self.modules.append(name)

    def distribution(self, name: str, transports: dict[str, str]) -> None:
        """Install distribution ``name`` registering ``transports`` ({scheme: value})."""
        # pip's directory name: the name with "-" as "_" (the first "-" ends it).
        info = self.path / f"{name.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8"
        )
        lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in transports.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    path = tmp_path / "site-packages"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    installed = Site(path)
    yield installed
    for name in installed.modules:
        sys.modules.pop(name, None)
