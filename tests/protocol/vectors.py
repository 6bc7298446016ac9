"""The golden vectors of ``spec/vectors/``: their directory and ``vectorfile``, the module
that lives next to them and reads them (loaded by path: ``spec/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"


def _load_vectorfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vectorfile", VECTORS / "vectorfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vectorfile", module)
    spec.loader.exec_module(module)
    return module


vectorfile = _load_vectorfile()
