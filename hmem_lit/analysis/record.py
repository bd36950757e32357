"""Tables in README.md and docs/ rendered from committed records, so that every number there has a source.

A record is a `comparisons.csv` that `hmem report` writes (analysis/compare.py: one row per arm x metric and per
difference, with corpus, runs, seeds, config hash, training and evaluation commits, date and metric version),
committed under docs/results/. A Markdown file quotes it between two markers:

    <!-- record: docs/results/quickstart_facts.csv values Avg-SK,paraphrase,QA -->
    (the table; regenerated, never edited by hand)
    <!-- /record -->

`values` renders arms x metrics (estimate [95% CI]); `diffs` renders each difference with its verdict. The
metric list is optional (default: every metric in the record). `python -m hmem_lit.analysis.record FILE ...`
rewrites the blocks of the files in place; tests/test_records.py fails when a block differs from its record.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- record: (\S+) (values|diffs)(?: ([^>]*?))? -->\n)(.*?)(<!-- /record -->)", re.S)


def read_record(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _cell(r: dict[str, str], dec: int) -> str:
    est = float(r["estimate"])
    if not r.get("ci_lo"):
        return f"{est:.{dec}f}"
    return f"{est:.{dec}f} [{float(r['ci_lo']):.{dec}f}, {float(r['ci_hi']):.{dec}f}]"


def _dec(metric: str) -> int:
    return 3 if "bpb" in metric else 1


def render(path: str | Path, kind: str, metrics: list[str] | None = None, root: Path | None = None) -> str:
    """The Markdown table of one record (`kind` values | diffs) over `metrics` (None: all, in record order)."""
    rows = read_record(Path(root or ".") / path)
    what = "value" if kind == "values" else "diff"
    rows = [r for r in rows if r["what"] == what]
    ms = metrics or list(dict.fromkeys(r["metric"] for r in rows))
    if kind == "values":
        arms = list(dict.fromkeys(r["arm"] for r in rows))
        got = {(r["arm"], r["metric"]): r for r in rows}
        seeds = {r["arm"]: len(r["seeds"].split()) if r["arm"] != "leaf prior" else "-" for r in rows}
        out = ["| arm | seeds | " + " | ".join(ms) + " |", "|---|---|" + "---|" * len(ms)]
        for a in arms:
            cells = [_cell(got[(a, m)], _dec(m)) if (a, m) in got else "-" for m in ms]
            out.append(f"| {a} | {seeds[a]} | " + " | ".join(cells) + " |")
        return "\n".join(out)
    pairs = list(dict.fromkeys((r["arm"], r["against"]) for r in rows))
    by = {(r["arm"], r["against"], r["metric"]): r for r in rows}
    out = ["| difference | " + " | ".join(ms) + " |", "|---|" + "---|" * len(ms)]
    for a, b in pairs:
        cells = []
        for m in ms:
            r = by.get((a, b, m))
            cells.append("-" if r is None else f"{_cell(r, _dec(m))} {r['verdict']}")
        out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def refresh(text: str, root: Path | None = None) -> str:
    """`text` with every record block re-rendered from its record."""

    def one(m: re.Match) -> str:
        metrics = [x.strip() for x in m.group(4).split(",")] if m.group(4) else None
        return m.group(1) + render(m.group(2), m.group(3), metrics, root) + "\n" + m.group(6)

    return BLOCK.sub(one, text)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(record path, kind, the block's current body) of every record block in `text`."""
    return [(m.group(2), m.group(3), m.group(5)) for m in BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    files = list(sys.argv[1:] if argv is None else argv)
    for f in files:
        p = Path(f)
        old = p.read_text(encoding="utf-8")
        new = refresh(old)
        if new != old:
            p.write_text(new, encoding="utf-8")
            print(f"{f}: {len(blocks(new))} record table(s) rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
