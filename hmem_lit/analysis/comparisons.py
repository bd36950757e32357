"""Figure kinds for the comparisons the paper's reviewers asked for (issue 17), each with its table:

- `rag`: accuracy vs forward FLOPs per query (the paper's Table 3 as a plot): every evaluation of the selected runs,
  without retrieval and with each RAG baseline (`hmem eval RUN --rag KIND --rag-k K`, sections
  `<memory>-rag-<kind>-k<k>`), i.e. the anchor alone, RAG, memory and RAG + memory. The table lists per point the
  fetched parameters, the context tokens, tokens read, FLOPs per query, Avg-SK and the rarest bucket's accuracy.
- `head_to_head`: memory types at one budget (e.g. hierarchical FFN memory vs PKM at equal parameters used per
  token, equal memory size, tokens and schedule): Avg-SK, Avg-CK, perplexity, training time and per-bucket accuracy.

The FIGURES registry loads it through analysis/kinds.py.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from hmem_lit.analysis.collect import apply_spec, fmt_count, probes
from hmem_lit.analysis.figures import Drawn, Skip, register
from hmem_lit.analysis.style import KIND_COLORS, PALETTE, legend_below, new_fig
from hmem_lit.analysis.tables import simple_table

_RAG = re.compile(r"^(?P<mem>[a-z0-9-]+?)(?:-rag-(?P<kind>[a-z0-9]+)-k(?P<k>\d+)(?P<join>-sep|-inline)?)?$")
_MARKERS = {"": "o", "cluster": "s", "bm25": "^", "dense": "D"}


def _rarest(r: pd.Series, found: dict[str, list[int]]) -> float:
    """Mean over the fact probes of the rarest bucket's accuracy (NaN when none was evaluated)."""
    vals = [r.get(f"{p}/bucket{min(ks)}") for p, ks in found.items() if ks]
    v = np.array([x for x in vals if x is not None and x == x], dtype=float)
    return float(v.mean()) if len(v) else float("nan")


def rag_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, evaluation) with FLOPs per query: memory mode, RAG kind and k parsed from the section."""
    if "flops_per_query" not in df.columns:
        return df.iloc[0:0]
    rows = df[df.flops_per_query.notna() & df.hmem_sk.notna()].copy() if "hmem_sk" in df else df.iloc[0:0]
    parsed = rows.eval_mode.astype(str).str.extract(_RAG)
    rows["memory_mode"] = np.where(rows.memory_type == "none", "none", parsed["mem"].fillna(""))
    rows["rag_kind"] = parsed["kind"].fillna("")
    rows["rag_k"] = pd.to_numeric(parsed["k"], errors="coerce").fillna(0).astype(int)
    rows["rag_join"] = parsed["join"].fillna("").str.lstrip("-")
    rows = rows[(rows.rag_join != "sep") & parsed["mem"].notna()]  # the separate-document control is not a point
    if "rag_tokens" not in rows:
        rows["rag_tokens"] = np.nan
    return rows.drop_duplicates(["run", "memory_mode", "rag_kind", "rag_k", "rag_join"])


def _pct(r: pd.Series, c: str) -> str:
    return f"{r[c] * 100:.1f}" if c in r and r[c] == r[c] else "-"


def _label(r: pd.Series) -> str:
    mem = "anchor" if r.memory_mode in ("none", "") else f"memory ({r.memory_mode})"
    join = " inline" if r.rag_join == "inline" else ""
    return mem + ("" if not r.rag_kind else f" + RAG {r.rag_kind}{join} k={r.rag_k}")


@register("rag")
def plot_rag(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    rows, notes = apply_spec(df, spec, None)
    pts = rag_points(df[df.run.isin(rows.run)])
    if pts.empty or not (pts.rag_kind != "").any():
        raise Skip("no RAG evaluation with FLOPs per query (hmem eval RUN --rag bm25|cluster|dense --rag-k K)")
    found = probes(pts)
    fig, axes = new_fig(spec, 1)
    ax = axes[0]
    table = []
    for i, (_, r) in enumerate(pts.sort_values(["memory_type", "flops_per_query"]).iterrows()):
        mem = r.memory_mode not in ("none", "")
        color = PALETTE.get(str(r.memory_type), "#1f77b4") if mem else KIND_COLORS["anchor"]
        inline = r.rag_join == "inline"  # hollow markers: the context inline, in the prompt's document
        ax.scatter(
            r.flops_per_query,
            r.hmem_sk * 100,
            marker=_MARKERS.get(r.rag_kind, "o"),
            s=24,
            facecolors="none" if inline else color,
            edgecolors=color,
        )
        short = (
            ("memory" if mem else "anchor") if not r.rag_kind else f"{r.rag_kind}{' inl' if inline else ''} k{r.rag_k}"
        )
        ax.annotate(
            short,
            (r.flops_per_query, r.hmem_sk * 100),
            fontsize=5,
            xytext=(4, 3 - 8 * (i % 2)),
            textcoords="offset points",
        )
        rare = _rarest(r, found)
        table.append(
            [
                str(r.run),
                "on" if mem else "off",
                (r.rag_kind + (" inline" if r.rag_join == "inline" else "")) or "-",
                str(r.rag_k) if r.rag_kind else "-",
                fmt_count(r.params_fetched) if mem and r.params_fetched else "0",
                f"{r.rag_tokens:.1f}" if r.rag_tokens == r.rag_tokens else "0",
                f"{r.tokens_per_query:.1f}"
                if "tokens_per_query" in r and r.tokens_per_query == r.tokens_per_query
                else "-",
                f"{r.flops_per_query / 1e6:.2f}",
                f"{r.hmem_sk * 100:.1f}",
                f"{rare * 100:.1f}" if rare == rare else "-",
            ]
        )
    ax.set_xscale("log")
    ax.set_xlabel("forward FLOPs per fact query (log)")
    ax.set_ylabel("Avg-SK accuracy (%)")
    handles = [
        ax.scatter([], [], marker=m, color="#555555", label=("no retrieval" if k == "" else f"RAG {k}"))
        for k, m in _MARKERS.items()
        if (pts.rag_kind == k).any()
    ]
    handles.append(ax.scatter([], [], marker="o", facecolors="none", edgecolors="#555555", label="hollow: inline"))
    ax.legend(handles=handles, fontsize=6, loc="best", title="blue: memory on; grey: anchor", title_fontsize=6)
    header = ["run", "memory", "RAG", "k", "fetched", "context tok", "tokens/query", "MFLOPs/query", "Avg-SK", "rarest"]
    return Drawn(fig, sorted(pts.run.unique()), notes, table=simple_table(header, table))


@register("head_to_head", keys=("types",))
def plot_head_to_head(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Per memory type (and the anchor alone): Avg-SK per frequency bucket (bars); the table adds CK, perplexity,
    parameters and training time."""
    rows, notes = apply_spec(df, spec, spec.get("eval_mode", "fetched"))
    types = spec.get("types")
    if types:
        rows = rows[rows.memory_type.isin(types)]
    if rows.empty or rows.memory_type.nunique() < 2:
        raise Skip("needs runs of at least two memory types (or one and the anchor alone) evaluated")
    found = probes(rows)
    ks = sorted({k for v in found.values() for k in v})
    fig, axes = new_fig(spec, 1)
    ax = axes[0]
    width = 0.8 / len(rows)
    table = []
    for j, (_, r) in enumerate(rows.sort_values(["memory_type", "run"]).iterrows()):
        vals = []
        for k in ks:
            v = np.array([r.get(f"{p}/bucket{k}") for p in found if f"{p}/bucket{k}" in r], dtype=float)
            vals.append(float(np.nanmean(v)) * 100 if (~np.isnan(v)).any() else np.nan)
        color = PALETTE.get(str(r.memory_type), KIND_COLORS.get(str(r.kind), "#777777"))
        ax.bar(
            np.arange(len(ks)) + (j - (len(rows) - 1) / 2) * width,
            vals,
            width * 0.95,
            label=f"{r.run}: {r.label}",
            color=color,
            alpha=0.6 + 0.4 * (j % 2),
        )

        table.append(
            [
                str(r.run),
                str(r.label),
                str(r.memory_type),
                fmt_count(r.params_anchor),
                fmt_count(r.params_fetched) if r.params_fetched else "0",
                fmt_count(r.params_bank) if r.params_bank else "0",
                _pct(r, "hmem_sk"),
                _pct(r, "hmem_ck"),
                f"{r.wiki_ppl:.0f}" if "wiki_ppl" in r and r.wiki_ppl == r.wiki_ppl else "-",
                f"{r.train_time_s:.0f}" if r.train_time_s == r.train_time_s else "-",
                *[f"{v:.1f}" if v == v else "-" for v in vals],
            ]
        )
    ax.set_xticks(range(len(ks)), [f"{k}\n(rarest)" if k == ks[0] else str(k) for k in ks])
    ax.set_xlabel("entity frequency bucket")
    ax.set_ylabel("fact accuracy, mean over probes (%)")
    legend_below(fig, axes)
    header = ["run", "config", "memory", "anchor", "fetched", "bank", "Avg-SK", "Avg-CK", "Wiki ppl", "train s"]
    header += [f"b{k}" for k in ks]
    return Drawn(fig, sorted(rows.run.unique()), notes, table=simple_table(header, table))
