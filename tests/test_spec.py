"""Every reference into the specification resolves, and no link leaves the repository.

* A section reference (the section sign and a number, such as 11.3) in any source,
  test, script or document names a section that exists: in ``spec/TRANSPORTS.md`` when
  ``TRANSPORTS.md`` stands right before it, or when it is written inside that document;
  in ``spec/PROTOCOL.md`` otherwise. (References with a letter, 'A.2', cite the Celery
  notes the project was built from, not the spec, and are not checked here.)
* A relative Markdown link points at a file inside the repository, and its ``#anchor``
  at a heading of that file (GitHub's heading slugs).
* A ``spec/...#anchor`` or ``docs/...#anchor`` written in code names a heading too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec"
DOCS = {"PROTOCOL": SPEC / "PROTOCOL.md", "TRANSPORTS": SPEC / "TRANSPORTS.md"}

TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml", ".sh"}
SKIP_DIRS = {".git", "__pycache__", "build", "dist", ".venv", "venv", "node_modules"}

SIGN = "\u00a7"  # written escaped so that this file holds no reference of its own
SECTION_REF = re.compile(
    r"(?:(?P<doc>PROTOCOL|TRANSPORTS)\.md`{0,2}\)?,?\s*)?" + SIGN + r"\s?(?P<number>\d+(?:\.\d+)*)"
)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?\s")
MD_LINK = re.compile(r"\[(?:[^\]]|\][^(])*?\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_ANCHOR = re.compile(r"(?P<path>(?:spec|docs)/[\w./-]+\.md)#(?P<anchor>[\w-]+)")


def repo_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = set(path.relative_to(ROOT).parts)
        if parts & SKIP_DIRS or any(p.startswith(".") for p in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.parent.name == "scripts"):
            yield path


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = unicodedata.normalize("NFC", text).lower()
    kept = "".join(c for c in text if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


@cache
def headings(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(anchors, section numbers) of a Markdown file, outside code blocks."""
    anchors: set[str] = set()
    numbers: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match is None:
            continue
        title = match.group(2)
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
        number = NUMBERED.match(title)
        if number:
            numbers.add(number.group(1))
    return frozenset(anchors), frozenset(numbers)


def section_refs() -> Iterator[tuple[str, str, str]]:
    for path in repo_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        default = "TRANSPORTS" if path == DOCS["TRANSPORTS"] else "PROTOCOL"
        for lineno, line in enumerate(text.splitlines(), 1):
            for match in SECTION_REF.finditer(line):
                where = f"{path.relative_to(ROOT)}:{lineno}"
                yield where, match.group("doc") or default, match.group("number")


def links() -> Iterator[tuple[str, Path, str]]:
    """(where, file the link is relative to, target) for every relative link."""
    for path in repo_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            if path.suffix == ".md":
                for match in MD_LINK.finditer(line):
                    target = match.group("target")
                    if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # not http:, mailto:
                        yield where, path, target
            for match in CODE_ANCHOR.finditer(line):
                if path.suffix != ".md" or f"]({match.group(0)}" not in line:
                    yield where, ROOT / "x", f"{match.group('path')}#{match.group('anchor')}"


def test_the_spec_documents_have_numbered_sections() -> None:
    for doc in DOCS.values():
        assert len(headings(doc)[1]) > 10, doc


def test_every_section_reference_resolves() -> None:
    refs = list(section_refs())
    assert len(refs) > 50  # the scan found the references the documents are full of
    broken = [
        f"{where}: {doc}.md has no section {number}"
        for where, doc, number in refs
        if number not in headings(DOCS[doc])[1]
    ]
    assert broken == []


def test_every_relative_link_and_anchor_resolves() -> None:
    found = list(links())
    assert len(found) > 10
    broken = []
    for where, source, target in found:
        path_part, _, anchor = target.partition("#")
        file = (source.parent / path_part).resolve() if path_part else source
        if not file.is_relative_to(ROOT):
            broken.append(f"{where}: {target} leaves the repository")
        elif not file.exists():
            broken.append(f"{where}: {target} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in headings(file)[0]:
            broken.append(f"{where}: {file.relative_to(ROOT)} has no heading #{anchor}")
    assert broken == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("1.3 Acknowledgement (Kombu's emulation, shared with Celery workers)",
         "13-acknowledgement-kombus-emulation-shared-with-celery-workers"),
        ("4.1 Redis (`redis://`, `rediss://`): Celery's layout",
         "41-redis-redis-rediss-celerys-layout"),
        ("Back-pressure and batches", "back-pressure-and-batches"),
    ],
)
def test_slugs_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_reference_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# One\n\n## 1. First\n\n### 1.2 Second\n", encoding="utf-8")
    anchors, numbers = headings(page)
    assert anchors == {"one", "1-first", "12-second"}
    assert numbers == {"1", "1.2"}
    refs = [m.group("doc", "number") for m in SECTION_REF.finditer(
        f"see {SIGN}1.2, `TRANSPORTS.md` {SIGN}4 and (`PROTOCOL.md` {SIGN}17.3), {SIGN}A.2"
    )]
    assert refs == [(None, "1.2"), ("TRANSPORTS", "4"), ("PROTOCOL", "17.3")]
