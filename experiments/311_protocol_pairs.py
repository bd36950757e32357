"""Question: under the paper's protocol, how do the training modes (A2 co-train from a trained anchor, A3 frozen
          trained anchor, A4 co-train from scratch) and hierarchy vs flat (A3 at equal fetch: (32,64) vs leaf only
          (0,96) vs top only (96,0)) compare at the quickstart's scale? (../shared/PAPERS.md A1-A4, Table 7, Fig. 3c/d)
Command:  hmem train experiments/102_qs_memory.yaml experiment=protocol name=a3 train.mode=frozen \
              train.init_from=runs/quickstart/anchor            (a2: train.mode=cotrain; a3_leaf / a3_top:
              memory.levels=[0,96] / [96,0]; anchor_8m: 101_qs_anchor.yaml train.max_tokens=8000000)
          hmem eval runs/protocol/<name> --memory fetched      (anchor_8m: --memory none)
          python experiments/311_protocol_pairs.py --runs runs --out docs/results/protocol_facts.csv
Result:   docs/results/protocol_facts.csv (a record: paired differences with 95% CIs and verdicts) and
          experiments/LOG.md 2026-12-07 "issue 31". A4 is the quickstart's memory run and A1 its anchor (same seed).

Each row is one paired difference (a - b) of one metric over the items both runs were evaluated on (test
entities; analysis/compare.diff_runs: a bootstrap over items stratified by probe, and over seeds when several), with
the verdict of analysis/stats.py, in the schema of `hmem report`'s comparisons.csv so docs can quote it through
analysis/record.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.analysis import compare, stats  # noqa: E402
from hmem_lit.utils import atomic_write_text  # noqa: E402

# (label a, label b, runs of a, runs of b, mode of a, mode of b): runs relative to --runs, one seed each
PAIRS = [
    ("A3 frozen", "A4 scratch", "protocol/a3", "quickstart/memory"),
    ("A2 co-train", "A4 scratch", "protocol/a2", "quickstart/memory"),
    ("A3 frozen", "A2 co-train", "protocol/a3", "protocol/a2"),
    ("A3 (32,64)", "A3 leaf only (0,96)", "protocol/a3", "protocol/a3_leaf"),
    ("A3 (32,64)", "A3 top only (96,0)", "protocol/a3", "protocol/a3_top"),
    ("A3 leaf only (0,96)", "A3 top only (96,0)", "protocol/a3_leaf", "protocol/a3_top"),
    ("A3 frozen", "anchor 8M tokens", "protocol/a3", "protocol/anchor_8m"),
    ("A4 scratch", "anchor 8M tokens", "quickstart/memory", "protocol/anchor_8m"),
    ("A2 co-train", "anchor 8M tokens", "protocol/a2", "protocol/anchor_8m"),
]
# each arm's own value (one seed: a CI over items only)
ARMS = [
    ("A1 anchor 4M tokens", "quickstart/anchor"),
    ("anchor 8M tokens", "protocol/anchor_8m"),
    ("A4 scratch", "quickstart/memory"),
    ("A3 frozen", "protocol/a3"),
    ("A2 co-train", "protocol/a2"),
    ("A3 leaf only (0,96)", "protocol/a3_leaf"),
    ("A3 top only (96,0)", "protocol/a3_top"),
]
METRICS = ["Avg-SK", "Avg-SK rare", "paraphrase", "QA", "MC hard", "val bpb"]


def _mode(run: Path) -> str:
    return "fetched" if (run / "eval" / "fetched").is_dir() else "none"


def _provenance(run: Path) -> dict[str, str]:
    res = json.loads((run / "eval" / _mode(run) / "results.json").read_text())
    man = json.loads((run / "manifest.json").read_text())
    return {
        "train_commit": str(man.get("git_sha") or "")[:8],
        "eval_commit": str((res.get("code") or {}).get("git_sha") or "")[:8],
        "date": str(res.get("date", ""))[:10],
        "metric_version": str(res.get("metric_version", "")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="the runs directory holding quickstart/ and protocol/")
    ap.add_argument("--out", default="docs/results/protocol_facts.csv")
    a = ap.parse_args()
    root = Path(a.runs)
    rows = []
    for label, r in ARMS:
        p = root / r
        if not (p / "final.json").is_file():
            continue
        for metric in METRICS:
            spec = next(m for m in compare.METRICS if m.name == metric)
            items = compare._load(p, _mode(p))
            if items is None:
                continue
            arm = compare.Arm(label, _mode(p), [p], [0], [items])
            keys = compare._keys([arm], spec)
            if not keys:
                continue
            iv = stats.bootstrap(compare._matrix(arm, spec, keys), seed=3)
            rows.append(_row(label, "value", "", metric, iv, "", r, p, spec.scale))
    for la, lb, ra, rb in PAIRS:
        pa, pb = root / ra, root / rb
        if not (pa / "final.json").is_file() or not (pb / "final.json").is_file():
            print(f"skip {la} - {lb}: {pa} or {pb} not complete")
            continue
        for metric in METRICS:
            # a difference between two runs evaluated in different memory modes (an anchor has only `none`)
            iv = _diff(pa, pb, metric)
            if iv is None:
                continue
            spec = next(m for m in compare.METRICS if m.name == metric)
            rows.append(_row(la, "diff", lb, metric, iv, stats.verdict(iv, spec.better), f"{ra} {rb}", pa, 1.0))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = list(rows[0]) if rows else ["corpus"]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=head, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())
    print(f"{len(rows)} rows -> {out}")


def _row(
    arm: str, what: str, against: str, metric: str, iv: stats.Interval, verdict: str, runs: str, run: Path, scale: float
) -> dict[str, object]:
    return {
        "corpus": "facts",
        "arm": arm,
        "what": what,
        "against": against,
        "metric": metric,
        "estimate": round(iv.estimate * scale, 4),
        "ci_lo": None if math.isnan(iv.lo) else round(iv.lo * scale, 4),
        "ci_hi": None if math.isnan(iv.hi) else round(iv.hi * scale, 4),
        "verdict": verdict,
        "n_items": iv.n_items,
        "seeds": "0",
        "runs": runs,
        "config_hash": "",
        **_provenance(run),
    }


def _diff(pa: Path, pb: Path, metric: str) -> stats.Interval | None:
    """compare.diff_runs with each run read in its own memory mode (memory runs fetched, an anchor none)."""
    ma, mb = _mode(pa), _mode(pb)
    if ma == mb:
        return compare.diff_runs([pa], [pb], metric, ma)
    arms = []
    for p, m in ((pa, ma), (pb, mb)):
        items = compare._load(p, m)
        if items is None:
            return None
        arms.append(compare.Arm("", m, [p], [0], [items]))
    spec = next(x for x in compare.METRICS if x.name == metric)
    keys = compare._keys(arms, spec)
    if not keys:
        return None
    iv = stats.bootstrap_diff(compare._matrix(arms[0], spec, keys), compare._matrix(arms[1], spec, keys), seed=2)
    return stats.Interval(iv.estimate * spec.scale, iv.lo * spec.scale, iv.hi * spec.scale, iv.n_items, iv.n_seeds)


if __name__ == "__main__":
    main()
