"""Table kinds (Table 1, 7, 8 analogs): rows = configurations (seeds averaged, "mean ± std" when several), columns
from COLUMNS; metric columns repeat per evaluation memory mode (`Avg-SK` = fetched, `Avg-SK [generic]`, ...) for
the modes that some selected run was evaluated with. Rendered as Markdown and as HTML."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hmem_lit.analysis.collect import apply_spec, fmt_count, pick_mode
from hmem_lit.analysis.figures import Skip
from hmem_lit.analysis.style import KIND_ORDER


def _levels(r: pd.Series) -> str:
    return "-" if r.levels == "-" else f"({r.levels})"


# column id -> (header, cell from the group's first row)
CONFIG_COLUMNS: dict[str, tuple[str, Callable[[pd.Series], str]]] = {
    "run": ("run", lambda r: r.label),
    "kind": ("kind", lambda r: r.kind),
    "type": ("memory", lambda r: r.memory_type),
    "mode": ("training", lambda r: r.train_mode),
    "anchor": ("anchor", lambda r: fmt_count(r.params_anchor)),
    "config": ("config", _levels),
    "bank": ("bank", lambda r: fmt_count(r.params_bank) if r.params_bank else "0"),
    "fetch": ("fetched", lambda r: fmt_count(r.params_fetched) if r.params_fetched else "0"),
    "runtime": ("runtime", lambda r: fmt_count(r.params_runtime)),
    "ratio": ("fetched:anchor", lambda r: f"{r.fetch_ratio:.2f}" if r.fetch_ratio == r.fetch_ratio else "-"),
    "tokens": ("tokens", lambda r: fmt_count(r.tokens)),
    "layers": ("memory layers", lambda r: r.layers if r.memory_type != "none" else "-"),
}
# column id -> (header, metric column, scale, decimals)
METRIC_COLUMNS = {
    "ck": ("Avg-CK", "hmem_ck", 100, 1),
    "sk": ("Avg-SK", "hmem_sk", 100, 1),
    "ppl": ("Wiki ppl", "wiki_ppl", 1, 2),
    "bpb": ("Wiki bpb", "wiki_bpb", 1, 3),
    "val_ppl": ("val ppl", "val_ppl", 1, 2),
    "val_loss": ("val loss", "val_loss", 1, 3),
    "tok_s": ("tokens/s", "tokens_per_s", 1, 0),
    "mfu": ("MFU %", "mfu", 100, 1),
}
TRAINING = ("val_ppl", "val_loss", "tok_s", "mfu")  # training-time metrics: one column, not one per evaluation mode


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    runs: list[str]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        esc = [[c.replace("|", "\\|") for c in r] for r in [self.header, *self.rows]]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in self.header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(values: pd.Series, scale: float, dec: int) -> str:
    v = values.dropna().astype(float) * scale
    if v.empty:
        return "-"
    return f"{v.mean():.{dec}f}" + (f" ± {v.std(ddof=1):.{dec}f}" if len(v) > 1 else "")


def make_table(df: pd.DataFrame, spec: dict[str, Any]) -> Table:
    base, notes = apply_spec(df, spec, "fetched")
    if base.empty:
        raise Skip(f"no run matches select={spec.get('select')}")
    cols = spec.get("columns", ["run", "anchor", "mode", "config", "bank", "fetch", "ck", "sk", "ppl"])
    bad = [c for c in cols if c not in CONFIG_COLUMNS and c not in METRIC_COLUMNS]
    if bad:
        raise Skip(f"unknown table column(s) {bad}; known: {', '.join([*CONFIG_COLUMNS, *METRIC_COLUMNS])}")
    evaluated = set(df[df.run.isin(base.run)].eval_mode)
    modes = [m for m in spec.get("modes", ["fetched", "generic"]) if m in evaluated or m == "fetched"]
    per_mode = {}
    for m in modes:
        t = pick_mode(df[df.run.isin(base.run)], m)
        if m != "fetched":  # a run without memory has no generic / blocked numbers of its own
            t = t[(t.memory_type != "none") & (t.eval_mode == m)]
        per_mode[m] = t.set_index("run")

    def has(m: str, metric: str) -> bool:  # a column nobody has is left out (the notes below name it)
        return metric in per_mode[m].columns and bool(per_mode[m][metric].notna().any())

    # the table's columns in order: ("cfg", id) or ("metric", id, mode)
    layout = [
        ("cfg", c, "") if c in CONFIG_COLUMNS else ("metric", c, m)
        for c in cols
        for m in (modes if c in METRIC_COLUMNS and c not in TRAINING else ["fetched"] if c in TRAINING else [""])
        if c in CONFIG_COLUMNS or has(m, METRIC_COLUMNS[c][1])
    ]
    header = [
        CONFIG_COLUMNS[c][0] if k == "cfg" else METRIC_COLUMNS[c][0] + ("" if m == "fetched" else f" [{m}]")
        for k, c, m in layout
    ]
    seeds = bool((base.groupby("config_id").size() > 1).any())
    header += ["seeds"] if seeds else []
    order = base.assign(o=base.kind.map(KIND_ORDER))
    sort = [s for s in spec.get("sort", ["params_anchor", "o", "params_bank", "params_fetched"]) if s in order]
    order = order.sort_values(sort)
    rows = []
    for cid in order.config_id.unique():
        g = order[order.config_id == cid]
        cells = []
        for k, c, m in layout:
            if k == "cfg":
                cells.append(CONFIG_COLUMNS[c][1](g.iloc[0]))
                continue
            _, metric, sc, dec = METRIC_COLUMNS[c]
            t = per_mode[m]
            vals = t.loc[t.index.intersection(g.run), metric] if metric in t.columns else pd.Series(dtype=float)
            cells.append(_cell(vals, sc, dec))
        rows.append(cells + ([str(len(g))] if seeds else []))
    for c in cols:
        if c in METRIC_COLUMNS:
            metric = METRIC_COLUMNS[c][1]
            miss = base[base[metric].isna()].run.tolist() if metric in base else base.run.tolist()
            if len(miss) == len(base):
                notes.append(f"`{metric}`: no selected run has it; column left out")
            elif miss:
                notes.append(
                    f"`{metric}` missing for {len(miss)} run(s) (shown as -): {', '.join(miss[:6])}"
                    + (" ..." if len(miss) > 6 else "")
                )
    return Table(header, rows, sorted(base.run), notes)


def runs_overview(df: pd.DataFrame) -> Table:
    """One row per complete run: what the collection holds and how each run was classified."""
    header = ["run", "kind", "label", "memory", "config", "seed", "anchor", "fetched", "bank", "tokens/s", "MFU"]
    header.append("eval modes")
    rows = []
    for run, g in df.groupby("run", sort=True):
        r = g.iloc[0]
        modes = ", ".join(sorted(m for m in g.eval_mode if m)) or "(not evaluated)"
        rows.append(
            [
                run,
                r.kind,
                r.label,
                r.memory_type,
                _levels(r),
                str(r.seed),
                fmt_count(r.params_anchor),
                fmt_count(r.params_fetched) if r.params_fetched else "0",
                fmt_count(r.params_bank) if r.params_bank else "0",
                _cell(g.tokens_per_s.iloc[:1], 1, 0) if "tokens_per_s" in g else "-",
                _cell(g.mfu.iloc[:1], 100, 1) + "%" if "mfu" in g and g.mfu.notna().any() else "-",
                modes,
            ]
        )
    return Table(header, rows, sorted(df.run.unique()) if len(df) else [])


def simple_table(header: list[str], rows: list[list[Any]]) -> Table:
    return Table(
        header,
        [[("-" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)) for v in r] for r in rows],
        [],
    )
