"""Every table quoted from a record in README.md and docs/ equals the table rendered from that committed record
(analysis/record.py), and the renderer itself on a hand-made record."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmem_lit.analysis import record

ROOT = Path(__file__).resolve().parents[1]
QUOTING = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", QUOTING, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_tables_equal_their_records(path):
    text = path.read_text(encoding="utf-8")
    for rec, _, _ in record.blocks(text):
        assert (ROOT / rec).is_file(), f"{path.name} quotes {rec}, which is not committed"
    assert record.refresh(text, ROOT) == text, (
        f"{path.relative_to(ROOT)}: a table differs from its record; run "
        f"`python -m hmem_lit.analysis.record {path.relative_to(ROOT)}`"
    )


def test_the_readme_headline_comes_from_records():
    blocks = record.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {kind for _, kind, _ in blocks} == {"values", "diffs"}
    for rec, _, _ in blocks:
        rows = record.read_record(ROOT / rec)
        for r in rows:  # provenance on every row
            assert r["config_hash"] and r["train_commit"] and r["eval_commit"] and r["date"] and r["metric_version"]
            assert r["corpus"] and r["runs"] and r["seeds"] != ""


def test_render_on_a_hand_made_record(tmp_path):
    p = tmp_path / "r.csv"
    head = "corpus,arm,what,against,metric,estimate,ci_lo,ci_hi,verdict,n_items,seeds\n"
    p.write_text(
        head
        + "facts,memory,value,,Avg-SK,41.25,38.5,44.0,,100,0 1 2\n"
        + "facts,anchor,value,,Avg-SK,30.0,,,,100,0\n"
        + "facts,memory,diff,anchor,Avg-SK,11.25,8.0,14.5,holds,100,0 1 2\n"
    )
    assert record.render(p, "values") == (
        "| arm | seeds | Avg-SK |\n|---|---|---|\n| memory | 3 | 41.2 [38.5, 44.0] |\n| anchor | 1 | 30.0 |"
    )
    diffs = "| difference | Avg-SK |\n|---|---|\n| memory − anchor | 11.2 [8.0, 14.5] holds |"
    assert record.render(p, "diffs") == diffs
    text = f"x\n<!-- record: {p} values -->\nstale\n<!-- /record -->\ny\n"
    assert record.refresh(text) == text.replace("stale", record.render(p, "values"))
