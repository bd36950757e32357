"""Question: is early placement the worst (Table 9, ../shared/PAPERS.md: early placement is worst)? The ablation
          page checks only late vs all; this prints the other placement steps from its record.
Command:  .venv/bin/python experiments/315_placement_order.py [docs/ablations/rows.csv]
Reads:    the committed record (one row per run). Each step is a Welch t interval (95%) over the seeds' Avg-SK,
          the page's interval for a rebuild from rows.csv; the item-level bootstrap needs the run directories.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from scipy import stats

STEPS = (("late", "early"), ("middle", "early"), ("late", "middle"))


def main(path: str = "docs/ablations/rows.csv") -> int:
    rows = [r for r in csv.DictReader(open(path, encoding="utf-8")) if r["sweep"] == "placement"]
    for corpus in sorted({r["corpus"] for r in rows}):
        by: dict[str, list[float]] = {}
        for r in rows:
            if r["corpus"] == corpus:
                by.setdefault(r["layers"], []).append(float(r["sk"]))
        for a, b in STEPS:
            x, y = np.array(by[a]), np.array(by[b])
            va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
            d, se = x.mean() - y.mean(), np.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
            h = stats.t.ppf(0.975, df) * se
            verdict = "holds" if d - h > 0 else "does not hold" if d + h < 0 else "within noise"
            print(f"{corpus}: {a} - {b} {d:+.1f} [{d - h:+.1f}, {d + h:+.1f}] {verdict} (seeds {len(x)}, {len(y)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
