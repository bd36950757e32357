"""The routing sensitivity figure: a function of benchmarks/bench_routing.py's JSON, headless (Agg), saved as PNG
and PDF. (Per evaluated run, the routing-per-bucket figure is the `routing` kind in figures.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_VARIANT_COLORS = {
    "centroid/none": "#9e9e9e",
    "bm25/none": "#6baed6",
    "centroid/bm25": "#fdae6b",
    "bm25/bm25": "#d94801",
}


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    plt.close(fig)
    return out


def routing_sensitivity(result: dict[str, Any], stem: str | Path) -> list[Path]:
    """Per corpus: min-over-buckets hit rate and mean concentration of every grid variant (router/refine as
    colour, tree shape and balancing on the x axis)."""
    corpora = [c for c, r in result["corpora"].items() if r.get("grid")]
    fig, axes = plt.subplots(2, len(corpora), figsize=(5.2 * len(corpora), 5.6), squeeze=False)
    for j, corpus in enumerate(corpora):
        grid = [r for r in result["corpora"][corpus]["grid"] if r["embedder"] == "tfidf"] or result["corpora"][corpus][
            "grid"
        ]
        shapes = sorted({(r["branching"], r["depth"], r["balance"]) for r in grid}, key=lambda s: (s[0] ** s[1], s[2]))
        variants = [v for v in _VARIANT_COLORS if any(f"{r['router']}/{r['refine']}" == v for r in grid)]
        x = np.arange(len(shapes))
        w = 0.8 / max(1, len(variants))
        for row, (metric, label) in enumerate(
            (
                ("min_hit_rate", "prompts to main leaf\n(worst bucket)"),
                ("concentration", "entity docs in main leaf\n(mean)"),
            )
        ):
            ax = axes[row, j]
            for i, v in enumerate(variants):
                ys = []
                for s in shapes:
                    r = next(
                        (
                            r
                            for r in grid
                            if (r["branching"], r["depth"], r["balance"]) == s and f"{r['router']}/{r['refine']}" == v
                        ),
                        None,
                    )
                    val = None if r is None else r[metric] if metric != "concentration" else r[metric]["mean_share"]
                    ys.append(np.nan if val is None else val)
                ax.bar(
                    x + (i - (len(variants) - 1) / 2) * w, ys, w, color=_VARIANT_COLORS[v], label=f"router/refine {v}"
                )
            ax.axhline(0.8 if row == 0 else 0.6, color="k", lw=0.8, ls=":")
            ax.set_ylim(0, 1)
            ax.set_xticks(x, [f"{b}^{d}\n{'bal' if bal < 1 else 'no bal'}" for b, d, bal in shapes], fontsize=7)
            ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(f"corpus={corpus}", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle("Routing sensitivity (no training): router x refinement x tree shape x balancing", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    return _save(fig, Path(stem))
