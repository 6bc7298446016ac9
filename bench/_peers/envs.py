"""The peers' environments: sections of ``bench/requirements-peers.txt`` and arq's venv.

``requirements-peers.txt`` is split into ``# [name]`` sections because its packages do
not fit one environment (arq 0.28 pins ``redis<6``; wiretask's venv has redis 8).
:func:`ensure_venv` creates ``bench/.venvs/<name>`` (gitignored) from a section, and
recreates it when the section changed (a stamp file holds the section it was built
from); :func:`install` puts a section into an existing interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = BENCH_DIR / "requirements-peers.txt"
VENVS = BENCH_DIR / ".venvs"
_SECTION = re.compile(r"^#\s*\[(?P<name>[\w-]+)\]\s*$")


def sections(path: Path = REQUIREMENTS) -> dict[str, list[str]]:
    """The requirement lines of every ``# [name]`` section (comments dropped)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        match = _SECTION.match(line)
        if match:
            current = found.setdefault(match["name"], [])
        elif line and not line.startswith("#") and current is not None:
            current.append(line)
    return found


def install(section: str, python: str | Path) -> None:
    """``pip install`` the requirement lines of ``section`` with ``python``."""
    lines = sections()[section]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", f.name], check=True)
    finally:
        Path(f.name).unlink()


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """``bench/.venvs/<name>`` with section ``name`` installed; built when missing or
    stale. Returns its interpreter."""
    root = VENVS / name
    stamp = root / "requirements.stamp"
    wanted = "\n".join(sections()[name]) + "\n"
    python = venv_python(name)
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    print(f"peers: building {root} from [{name}] of {REQUIREMENTS.name} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    install(name, python)
    stamp.write_text(wanted, encoding="utf-8")
    return python
