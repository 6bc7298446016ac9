"""The canvas vectors of ``spec/vectors/canvas/`` and ``canvasfile``, the module that
lives next to them (loaded by path: ``spec/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CANVAS_VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "canvas"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("canvasfile", CANVAS_VECTORS / "canvasfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("canvasfile", module)
    spec.loader.exec_module(module)
    return module


canvasfile = _load()
