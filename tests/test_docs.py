"""The documentation reads in order and its links hold: every relative link in README.md and docs/**/*.md names an
existing file, every page of docs/ is reachable from docs/index.md, and every module path a page names in backticks
(`hmem_lit/...py`) exists (files move in refactors; the docs must follow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
MODULE = re.compile(r"`(hmem_lit/[\w/]+\.py)`")
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SOURCES = set((ROOT / "docs" / "ablations").rglob("notes.md"))  # hand-written parts `hmem ablations` puts in pages


def _links(page: Path) -> list[Path]:
    out = []
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        out.append((page.parent / target).resolve())
    return out


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_module_paths_exist(page):
    missing = [str(t) for t in _links(page) if not t.exists()]
    assert not missing, f"{page.name}: broken links {missing}"
    gone = [m for m in MODULE.findall(page.read_text()) if not (ROOT / m).is_file()]
    assert not gone, f"{page.name}: names modules that do not exist {gone}"


def test_every_page_is_reachable_from_the_index():
    seen, todo = set(), [ROOT / "docs" / "index.md"]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.is_file():
            continue
        seen.add(page)
        todo += _links(page)
    unreachable = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in seen and p not in SOURCES]
    assert not unreachable, f"pages no reader finds from docs/index.md: {unreachable}"
