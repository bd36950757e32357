"""Question: does memory add capacity, or only speed? Trained to 4x the quickstart's tokens, do the anchor or the dense
          model of twice its size reach the memory run's accuracy on the rarest facts? (issue 31 item 5; the paper
          claims capacity: ../shared/PAPERS.md, Fig. 1 and the long-tail buckets)
Command:  P="train.max_tokens=16000000 train.probe_every=100 train.val_every=400 train.ckpt_every=400"
          hmem train experiments/101_qs_anchor.yaml experiment=capacity name=anchor_16m $P      (likewise
              104_qs_dense_2x.yaml -> dense_2x_16m, 102_qs_memory.yaml -> memory_16m; airports: add
              data.corpus=airports data.dir=data/quickstart_airports experiment=capacity_airports)
          python experiments/313_capacity_curves.py --runs runs --corpus facts      (then --corpus airports)
          python experiments/313_capacity_curves.py --figure   (both corpora's records -> docs/capacity_curves.png)
Result:   docs/results/capacity_curves_<corpus>.csv (a record: one row per arm, probe point and metric) and
          experiments/LOG.md 2026-12-07 "capacity". The final numbers of each arm are `hmem eval`'s, in
          docs/results/capacity_<corpus>.csv (311_protocol_pairs.py --set capacity).

The curve is the in-loop probe (evaluation/inloop.py): every 100 steps, `train.probe_per_bucket` (8) items per
frequency bucket of each fact probe, training phrasing, greedy exact match / MC argmax. Each point pools the items
of all probes: `sk` all buckets, `rare` bucket 0 (the entities with the fewest training documents), `frequent` the
last bucket; the CI is Wilson's over those items (a point is one seed; the items are the same at every point).
Points of one run share one learning-rate schedule (cosine to the run's own max_tokens), so the 4M-token point
of a 16M run is not a 4M-token run: compare the final points, and the full `hmem eval` numbers.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit import runs as runs_mod  # noqa: E402
from hmem_lit.evaluation.inloop import _items  # noqa: E402
from hmem_lit.utils import atomic_write_text  # noqa: E402

ARMS = [("anchor", "anchor_16m"), ("dense 2x", "dense_2x_16m"), ("anchor + memory", "memory_16m")]
Z = 1.959964


def wilson(k: float, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + Z * Z / n
    mid = (p + Z * Z / (2 * n)) / den
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / den
    return mid - half, mid + half


def counts(cfg: Any) -> dict[tuple[str, int], int]:
    """(probe, bucket) -> the number of in-loop items a run scored there (the callback's own selection)."""
    out: dict[tuple[str, int], int] = {}
    for name, items in _items(cfg, cfg.train.probe_per_bucket).items():
        for it in items:
            out[(name, int(it["bucket"]))] = out.get((name, int(it["bucket"])), 0) + 1
    return out


def curve_rows(corpus: str, arm: str, run: Path) -> list[dict[str, object]]:
    cfg = runs_mod.load_run_config(run)
    n = counts(cfg)
    last = max(b for _, b in n)
    complete = runs_mod.is_complete(run)
    commit = str(json.loads((run / "manifest.json").read_text()).get("git_sha") or "")[:8]
    rows = []
    for rec in runs_mod.read_metrics(run):
        if "probe/sk" not in rec:
            continue
        for metric, pick in (("sk", None), ("rare", 0), ("frequent", last)):
            k = tot = 0.0
            for (probe, b), m in n.items():
                key = f"probe/{probe}/bucket{b}"
                if key in rec and (pick is None or b == pick):
                    k, tot = k + rec[key] * m, tot + m
            lo, hi = wilson(k, int(tot))
            rows.append(
                {
                    "corpus": corpus,
                    "arm": arm,
                    "metric": metric,
                    "step": rec["step"],
                    "tokens": rec["tokens"],
                    "estimate": round(100 * k / tot, 2) if tot else None,
                    "ci_lo": round(max(0.0, 100 * lo), 2),
                    "ci_hi": round(min(100.0, 100 * hi), 2),
                    "n_items": int(tot),
                    "seed": cfg.train.seed,
                    "run": f"{run.parent.name}/{run.name}",
                    "complete": complete,
                    "train_commit": commit,
                }
            )
    return rows


def write(corpus: str, root: Path, out: Path) -> None:
    exp = "capacity" if corpus == "facts" else f"capacity_{corpus}"
    rows: list[dict[str, object]] = []
    for arm, name in ARMS:
        run = root / exp / name
        if (run / "metrics.jsonl").is_file():
            rows += curve_rows(corpus, arm, run)
        else:
            print(f"skip {arm}: no {run}/metrics.jsonl")
    if not rows:
        raise SystemExit(f"error: no capacity runs under {root}/{exp}; train them first (see --help)")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())
    print(f"{len(rows)} rows -> {out}")


def figure(records: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hmem_lit.utils import atomic_write

    recs = [p for p in records if p.is_file()]
    fig, axes = plt.subplots(len(recs), 2, figsize=(9, 3.2 * len(recs)), squeeze=False)
    colors = {"anchor": "#7f7f7f", "dense 2x": "#1f77b4", "anchor + memory": "#d95f02"}
    for row, path in zip(axes, recs):
        data = list(csv.DictReader(path.open()))
        for ax, metric in zip(row, ("sk", "rare")):
            for arm, c in colors.items():
                pts = [r for r in data if r["arm"] == arm and r["metric"] == metric]
                if not pts:
                    continue
                x = [int(r["tokens"]) / 1e6 for r in pts]
                ax.plot(x, [float(r["estimate"]) for r in pts], color=c, lw=1.2, label=arm)
                ax.fill_between(
                    x, [float(r["ci_lo"]) for r in pts], [float(r["ci_hi"]) for r in pts], color=c, alpha=0.15, lw=0
                )
            ax.axvline(4, color="k", lw=0.6, ls=":")
            corpus = data[0]["corpus"] if data else path.stem
            ax.set_title(f"{corpus}: in-loop {'Avg-SK, all buckets' if metric == 'sk' else 'rarest bucket'}")
            ax.set_xlabel("training tokens (M); dotted: the quickstart's 4M")
            ax.set_ylabel("exact match / MC accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    print(f"figure -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="the runs directory holding capacity/ and capacity_airports/")
    ap.add_argument("--corpus", default="facts", choices=["facts", "airports"])
    ap.add_argument("--out", default=None, help="default: docs/results/capacity_curves_<corpus>.csv")
    ap.add_argument("--figure", action="store_true", help="draw docs/capacity_curves.png from both records")
    a = ap.parse_args()
    if a.figure:
        recs = [Path(f"docs/results/capacity_curves_{c}.csv") for c in ("facts", "airports")]
        figure(recs, Path("docs/capacity_curves.png"))
        return
    write(a.corpus, Path(a.runs), Path(a.out or f"docs/results/capacity_curves_{a.corpus}.csv"))


if __name__ == "__main__":
    main()
