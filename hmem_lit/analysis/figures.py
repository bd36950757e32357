"""Figure kinds: one plotting function per kind, registered in FIGURES. Each takes the collected table (collect.py)
and one spec (a dict from analysis/*.yaml) and returns a Drawn (figure, runs used, notes), or raises Skip(message)
when the runs cannot make that figure (a missing metric, no matching run). The look is shared (style.py).

kinds: lines (metric vs a size per series: Fig. 3a-d), buckets (accuracy per frequency bucket: Fig. 1), grid
(metric as colour over fetched x bank: Fig. 4a), ratio (perplexity vs fetched:anchor at a fixed runtime budget:
Fig. 4b), curves (loss vs training tokens), routing (prompts routed to their entity's main leaf per bucket, next
to Fig. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from hmem_lit import runs as runs_mod
from hmem_lit.analysis.collect import (
    apply_spec,
    fmt_count,
    matching_anchor,
    pick_mode,
    probes,
    related_baselines,
)
from hmem_lit.analysis.style import (
    KIND_COLORS,
    KIND_ORDER,
    LINESTYLES,
    MARKERS,
    PALETTE,
    TYPE_NAMES,
    group_color,
    legend_below,
    metric_label,
    new_fig,
    scale,
    series_style,
    style_axes,
)
from hmem_lit.registry import FIGURES  # noqa: F401 (the figure-kind registry; register() below fills it)


class Skip(Exception):
    """The figure cannot be drawn from these runs (missing metric, no matching runs); the message says why."""


@dataclass
class Drawn:
    fig: Any
    runs: list[str]
    notes: list[str] = field(default_factory=list)
    table: Any = None  # a tables.Table shown (and written to tables/<id>.md) with the figure


COMMON_KEYS = (
    *("id", "kind", "reproduces", "title", "width", "ncols", "panel_height", "select", "filter", "eval_mode"),
    "needs",  # {distinct: {column: n}, any: {column: [values]}} over the memory runs drawn (report.unmet)
)
PANEL_KEYS = ("x", "y", "series", "gain", "baseline", "title")


def register(kind: str, keys: tuple[str, ...] = ()):
    """`@register("lines", keys=(...))` on fn(table, spec) -> Drawn: a figure kind usable as `kind:` in
    analysis/*.yaml; `keys` are its own spec keys beyond COMMON_KEYS (load_specs refuses any other key)."""

    def deco(fn):
        fn.spec_keys = (*COMMON_KEYS, *keys)
        return FIGURES.register(kind)(fn)

    return deco


# ---------------------------------------------------------------------------------------------- helpers


def first_metric(df: pd.DataFrame, want: str | list[str]) -> str | None:
    """The first of `want` (a name or a list of fallbacks) that some row has; None when none does."""
    for m in [want] if isinstance(want, str) else want:
        if m in df.columns and df[m].notna().any():
            return m
    return None


def aggregate(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean / std / n of y over the seeds of one config (config_id), at the mean x; sorted by x."""
    g = df.groupby("config_id", sort=False)
    return pd.DataFrame(
        {"x": g[x].mean(), "y": g[y].mean(), "std": g[y].std(ddof=1).fillna(0.0), "n": g[y].size()}
    ).sort_values("x")


def errorbar(ax, a: pd.DataFrame, sc: float, color: str | tuple[float, ...], label: str, **kw: Any) -> None:
    yerr = a["std"] * sc if (a["n"] > 1).any() else None  # error bars only where there are several seeds
    ax.errorbar(a["x"], a["y"] * sc, yerr=yerr, color=color, label=label, **{"marker": "o", **kw})


def missing_note(rows: pd.DataFrame, metric: str, where: str = "") -> list[str]:
    miss = rows[rows[metric].isna()] if metric in rows.columns else rows
    if miss.empty:
        return []
    names = ", ".join(sorted(miss.run.astype(str))[:8]) + (" ..." if len(miss) > 8 else "")
    return [f"{where}{len(miss)} selected run(s) lack `{metric}` and are left out: {names}"]


def with_gain(rows: pd.DataFrame, anchors: pd.DataFrame, y: str) -> tuple[pd.DataFrame, list[str]]:
    """rows[y] minus the matching anchor-only run's y (same anchor size; same seed when there is one)."""
    out, lost = [], []
    for _, r in rows.iterrows():
        base = matching_anchor(anchors[anchors[y].notna()], r.params_anchor, r.seed)
        if base.empty:
            lost.append(r.run)
            continue
        r = r.copy()
        r[y] = r[y] - base[y].mean()
        out.append(r)
    notes = (
        [
            f"no anchor-only run of the same size for {len(lost)} run(s), left out of the gain: "
            + ", ".join(map(str, lost[:6]))
        ]
        if lost
        else []
    )
    return (pd.DataFrame(out) if out else rows.iloc[:0]), notes


def _split_label(col: str, v: Any) -> str:
    if col == "params_anchor":
        return f"anchor {fmt_count(v)}"
    if col == "level":
        return "multi-level" if v != v else f"level {int(v)}"
    return TYPE_NAMES.get(v, str(v)) if col == "memory_type" else f"{col} {v}"


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7, color="0.4")
    ax.set_axis_off()


# ---------------------------------------------------------------------------------------------- kinds


@register("lines", keys=("panels", "split"))
def plot_lines(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Metric vs a size, one colour per `series` value; a line only joins configs that agree on the `split`
    columns (default: anchor size and memory type), so points of different anchors are never connected."""
    mode = spec.get("eval_mode", "fetched")
    base = pick_mode(df, mode)
    rows, notes = apply_spec(df, spec, mode)
    anchors = base[base.kind == "anchor"]
    if rows.empty:
        raise Skip(f"no run matches select={spec.get('select')} filter={spec.get('filter')}")
    fig, axes = new_fig(spec, len(spec["panels"]))
    used, drawn = set(), 0
    for i, (ax, p) in enumerate(zip(axes, spec["panels"])):
        x, y, col = p["x"], first_metric(rows, p["y"]), p.get("series", "memory_type")
        if y is None:
            notes.append(f"panel {i + 1}: no selected run has `{p['y']}`; panel left empty")
            _empty(ax, f"no run has {p['y']}" + ("\n(evaluate with `hmem eval`)" if "val" not in str(p["y"]) else ""))
            continue
        notes += missing_note(rows, y, f"panel {i + 1}: ")
        d = rows[rows[y].notna() & rows[x].notna() & (rows.memory_type != "none")]
        if p.get("gain"):
            d, n2 = with_gain(d, anchors, y)
            notes += [f"panel {i + 1}: {n}" for n in n2]
        if d.empty:
            _empty(ax, "no data")
            continue
        styles, sc = series_style(col, sorted(d[col].dropna().unique().tolist())), scale(y)
        split = [c for c in spec.get("split", ["params_anchor", "memory_type"]) if c != col]
        varying = [c for c in split if d[c].nunique(dropna=False) > 1]
        keys = sorted({tuple(k) for k in d[varying].itertuples(index=False)}, key=str) if varying else [()]
        for val, g in d.groupby(col):
            color, lab = styles[val]
            for key, h in g.groupby(varying, dropna=False) if varying else [((), g)]:
                key = key if isinstance(key, tuple) else (key,)
                k = keys.index(tuple(key)) if varying else 0
                sfx = " (" + ", ".join(_split_label(c, v) for c, v in zip(varying, key)) + ")" if varying else ""
                errorbar(
                    ax,
                    aggregate(h, x, y),
                    sc,
                    color,
                    lab + sfx,
                    marker=MARKERS[k % len(MARKERS)],
                    ls=LINESTYLES[k % len(LINESTYLES)],
                )
        used |= set(d.run)
        drawn += 1
        if p.get("gain"):
            ax.axhline(0, color=KIND_COLORS["anchor"], lw=0.8, ls="--", label="anchor only (zero gain)")
            ax.set_ylabel(f"gain in {metric_label(y)}".replace("accuracy (%)", "accuracy (points)"))
        elif p.get("baseline", True):
            for size, g in anchors[anchors[y].notna()].groupby("params_anchor"):
                if any(abs(size - a) <= 0.02 * size for a in d.params_anchor):
                    ax.axhline(
                        g[y].mean() * sc,
                        color=KIND_COLORS["anchor"],
                        lw=0.9,
                        ls="--",
                        label=f"anchor only ({fmt_count(size)})",
                    )
                    used |= set(g.run)
        style_axes(ax, x, None if p.get("gain") else y, d[x].to_numpy(dtype=float))
        if p.get("title"):
            ax.set_title(p["title"])
    if not drawn:
        plt.close(fig)
        raise Skip("; ".join(notes) or "nothing to draw")
    legend_below(fig, axes)
    return Drawn(fig, sorted(used), notes)


@register("buckets", keys=("probes", "max_series"))
def plot_buckets(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Accuracy per frequency bucket (rarest -> most frequent), grouped bars per configuration, one panel per fact
    probe (Fig. 1). At most `max_series` memory configs (largest bank, then fetch) and only their own baselines
    (same-size anchor, dense 2x, same-runtime dense); error bars = std over seeds."""
    rows, notes = apply_spec(df, spec, spec.get("eval_mode", "fetched"))
    found = probes(rows)
    want = spec.get("probes") or list(found)
    found = {p: found[p] for p in want if p in found}
    if not found:
        raise Skip(
            "no per-bucket fact-probe metrics (`<probe>/bucket<k>`) in the selected runs"
            + (f" for probes {want}" if spec.get("probes") else "")
            + "; evaluate them with `hmem eval`"
        )
    cols = [f"{p}/bucket{k}" for p, ks in found.items() for k in ks]
    has = rows[cols].notna().any(axis=1)
    if (~has).any():
        notes.append(
            f"{int((~has).sum())} selected run(s) without bucket metrics left out: "
            + ", ".join(sorted(rows[~has].run)[:6])
        )
    rows = rows[has]
    labels = rows.groupby("label").agg(
        kind=("kind", "first"),
        mt=("memory_type", "first"),
        bank=("params_bank", "first"),
        fetch=("params_fetched", "first"),
    )
    mem = labels[labels.kind == "memory"].sort_values(["bank", "fetch"], ascending=False)
    keep_n = int(spec.get("max_series", 3))
    if len(mem) > keep_n:
        notes.append(
            f"{len(mem) - keep_n} memory config(s) left out (max_series={keep_n}, largest banks kept): "
            + ", ".join(mem.index[keep_n:][:6])
            + (" ..." if len(mem) > keep_n + 6 else "")
        )
    kept = related_baselines(rows, rows[rows.label.isin(mem.index[:keep_n])]) if len(mem) else rows
    labels = labels[labels.index.isin(kept.label)]
    labels = labels.assign(o=labels.kind.map(KIND_ORDER)).sort_values(["o", "bank", "fetch"])
    colors = dict(zip(rows.label, rows.color))  # one colour per label in every figure (collect.paint)
    fig, axes = new_fig(spec, len(found), panel_h=float(spec.get("panel_height", 2.2)))
    width = 0.8 / max(1, len(labels))
    for ax, (probe, ks) in zip(axes, found.items()):
        cols = [f"{probe}/bucket{k}" for k in ks]
        for j, lab in enumerate(labels.index):
            g = rows[rows.label == lab]
            std = g[cols].std(ddof=1).fillna(0).to_numpy() * 100 if len(g) > 1 else None
            ax.bar(
                np.arange(len(ks)) + (j - (len(labels) - 1) / 2) * width,
                g[cols].mean().to_numpy() * 100,
                width * 0.95,
                yerr=std,
                color=colors[lab],
                error_kw={"lw": 0.7, "capsize": 1.5},
                label=lab + (f" (mean of {len(g)} seeds)" if len(g) > 1 else ""),
            )
        ax.set_xticks(
            range(len(ks)),
            [f"{k}\n(rarest)" if k == ks[0] else f"{k}\n(most frequent)" if k == ks[-1] else str(k) for k in ks],
        )
        ax.set_title(probe.replace("_", " "))
        ax.set_ylim(0, 100)
        if not np.nanmax(rows[rows.label.isin(labels.index)][cols].to_numpy(dtype=float), initial=0.0):
            ax.text(0.5, 0.5, "0% in every bucket", ha="center", transform=ax.transAxes, fontsize=7, color="0.4")
        style_axes(ax, None, None)
        ax.set_xlabel("entity frequency bucket")
        ax.set_ylabel("accuracy (%)")
    legend_below(fig, axes, ncol=2 if len(labels) > 3 else len(labels))
    return Drawn(fig, sorted(rows[rows.label.isin(labels.index)].run), notes)


@register("routing", keys=("probes", "max_series"))
def plot_routing(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Share of fact prompts routed to their entity's main leaf per frequency bucket (`route/<probe>/bucket<k>`,
    written by `hmem eval` for data with a key field), drawn like Fig. 1 for the memory runs."""
    route = {c: c.removeprefix("route/") for c in df.columns if c.startswith("route/") and df[c].notna().any()}
    if not route:
        raise Skip(
            "no routing metrics (`route/<probe>/bucket<k>`): evaluate memory runs with `hmem eval` on data "
            "with a key field (data.key_field)"
        )
    acc = [f"{p}/bucket{k}" for p, ks in probes(df).items() for k in ks]
    d = df.drop(columns=[c for c in acc if c in df.columns]).rename(columns=route)
    d = d[d.kind == "memory"]
    if d.empty:
        raise Skip("no memory runs with routing metrics")
    drawn = plot_buckets(d, spec)
    for ax in drawn.fig.axes:
        if ax.get_ylabel():
            ax.set_ylabel("routed to main leaf (%)")
    return drawn


@register("grid", keys=("x", "y", "metric"))
def plot_grid(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """A metric as colour over two sizes (Fig. 4a: Avg-SK over fetched x bank size), each config's value printed
    beside its marker (seed means); the anchor-only value is given in the panel title."""
    mode = spec.get("eval_mode", "fetched")
    rows, notes = apply_spec(df, spec, mode)
    x, y, m = (
        spec.get("x", "params_fetched"),
        spec.get("y", "params_bank"),
        first_metric(rows, spec.get("metric", "hmem_sk")),
    )
    if m is None:
        raise Skip(f"no selected run has `{spec.get('metric', 'hmem_sk')}`")
    notes += missing_note(rows[rows.memory_type != "none"], m)
    d = rows[rows[m].notna() & (rows.memory_type != "none") & (rows[x] > 0) & (rows[y] > 0)]
    if d.empty:
        raise Skip(f"no memory run with `{m}` and positive {x} / {y}")
    g = d.groupby("config_id")
    a = pd.DataFrame({"x": g[x].mean(), "y": g[y].mean(), "v": g[m].mean() * scale(m), "n": g[m].size()})
    fig, axes = new_fig(spec, 1, panel_h=float(spec.get("panel_height", 2.6)))
    ax = axes[0]
    pts = ax.scatter(a.x, a.y, c=a.v, cmap="viridis", s=36, edgecolors="k", linewidths=0.4, zorder=3)
    for _, r in a.iterrows():
        ax.annotate(
            f"{r.v:.1f}" + ("*" if r.n > 1 else ""), (r.x, r.y), xytext=(4, 3), textcoords="offset points", fontsize=6
        )
    fig.colorbar(pts, ax=ax, label=metric_label(m), shrink=0.9)
    style_axes(ax, x, y, a.x.to_numpy())
    if a.y.max() / a.y.min() > 10:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.margins(x=0.15, y=0.15)
    anchors = pick_mode(df, mode)
    base = [
        matching_anchor(anchors[(anchors.kind == "anchor") & anchors[m].notna()], pa) for pa in d.params_anchor.unique()
    ]
    base = pd.concat(base) if base else anchors.iloc[:0]
    ax.set_title(
        "anchor only: "
        + (f"{base[m].mean() * scale(m):.1f}" if len(base) else "no run")
        + ("   (* = mean over seeds)" if (a.n > 1).any() else ""),
        fontsize=7,
        loc="left",
    )
    return Drawn(fig, sorted(set(d.run) | set(base.run)), notes)


def _budgets(values: list[float], tol: float = 0.05) -> list[list[float]]:
    out: list[list[float]] = []
    for v in sorted(values):
        if out and abs(v - out[-1][0]) <= tol * out[-1][0]:
            out[-1].append(v)
        else:
            out.append([v])
    return out


@register("ratio", keys=("y",))
def plot_ratio(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Perplexity vs fetched:anchor ratio at a fixed runtime budget (Fig. 4b): anchor + memory (solid) and the same
    shrunken anchors alone (dashed) at the same ratio; the dense model of the whole budget is the star at 0."""
    rows, notes = apply_spec(df, spec, spec.get("eval_mode", "fetched"))
    if rows.empty:
        raise Skip(
            f"no run matches select={spec.get('select')} filter={spec.get('filter')} (a fixed runtime budget "
            "needs memory runs plus a `same-runtime dense` run of their anchor + fetched size)"
        )
    y = first_metric(rows, spec.get("y", ["wiki_ppl", "val_ppl"]))
    if y is None:
        raise Skip(f"no selected run has any of {spec.get('y', ['wiki_ppl', 'val_ppl'])}")
    notes += missing_note(rows, y)
    rows = rows[rows[y].notna()]
    mem, dense = rows[rows.kind == "memory"], rows[rows.memory_type == "none"]
    if mem.empty:
        raise Skip(f"no memory run with `{y}` at a fixed runtime budget (a `same-runtime dense` run to compare with)")
    anchors = dense[dense.kind == "anchor"]
    fig, axes = new_fig(spec, 1)
    ax, used = axes[0], set(mem.run)
    groups = _budgets(mem.params_runtime.tolist())
    for gi, b in enumerate(groups):
        color = PALETTE["ffn"] if len(groups) == 1 else plt.get_cmap("viridis")(0.1 + 0.75 * gi / (len(groups) - 1))
        m = mem[mem.params_runtime.between(b[0] * 0.999, b[-1] * 1.001)]
        top = dense[[abs(p - np.mean(b)) <= 0.05 * np.mean(b) for p in dense.params_anchor]]
        alone = []
        for _, r in m.iterrows():
            base = matching_anchor(anchors, r.params_anchor, r.seed)
            if not base.empty:
                alone.append({"x": r.fetch_ratio, "y": base[y].mean(), "config_id": r.config_id})
                used |= set(base.run)
        start = pd.DataFrame([{"x": 0.0, "y": top[y].mean(), "std": 0.0, "n": 1}]) if len(top) else None
        sfx = f", runtime {fmt_count(float(np.mean(b)))}" if len(groups) > 1 else ""
        errorbar(ax, pd.concat([start, aggregate(m, "fetch_ratio", y)]), 1.0, color, "anchor + memory" + sfx)
        if alone:
            al = pd.DataFrame(alone).groupby("config_id").agg(x=("x", "mean"), y=("y", "mean"))
            al = pd.concat([start, al]).sort_values("x")
            ax.plot(al.x, al.y, ls="--", marker="s", mfc="white", color=color, label="anchor only" + sfx)
        else:
            notes.append(f"no anchor-only runs of the memory runs' anchor sizes{sfx}: no anchor-only curve")
        if len(top):
            ax.plot(
                [0],
                [top[y].mean()],
                marker="*",
                ms=9,
                color="k",
                ls="none",
                zorder=4,
                label=f"dense {fmt_count(top.params_anchor.mean())} (whole budget)",
            )
            used |= set(top.run)
        else:
            notes.append(f"no dense model of the whole runtime budget{sfx} (ratio 0)")
    style_axes(ax, "fetch_ratio", y)
    ax.set_xlim(left=-0.03)
    legend_below(fig, axes, ncol=1 if fig.get_figwidth() < 6 else 3)
    return Drawn(fig, sorted(used), notes)


@register("curves", keys=("metrics", "max_legend"))
def plot_curves(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Loss vs training tokens per run (training loss; validation loss with markers). Colour = memory type
    (shades of it per configuration); with more than `max_legend` runs the legend names the types only."""
    rows, notes = apply_spec(df, spec, None)
    rows = rows.sort_values(["kind", "label", "run"])
    if rows.empty:
        raise Skip(f"no run matches select={spec.get('select')}")
    metrics = spec.get("metrics", ["train/loss", "val/loss"])
    fig, axes = new_fig(spec, len(metrics))
    many, used, colors = len(rows) > int(spec.get("max_legend", 12)), set(), {}
    for _, r in rows.iterrows():
        recs = runs_mod.read_metrics(r.path)
        group, base = group_color(r.kind, r.memory_type)
        color, colors[group] = r.color, base  # the run's colour in every figure (collect.paint)
        lab = r.label + (f" (seed {r.seed})" if (rows.label == r.label).sum() > 1 else "")
        for ax, m in zip(axes, metrics):
            pts = [(q["tokens"], q[m]) for q in recs if m in q and "tokens" in q]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(
                    xs,
                    ys,
                    color=color,
                    label=None if many else lab,
                    lw=0.9,
                    marker="o" if m.startswith("val") else None,
                    ms=2.5,
                )
                used.add(r.run)
        if not recs:
            notes.append(f"{r.run}: no metrics.jsonl records")
    if not used:
        plt.close(fig)
        raise Skip("no selected run has a training curve (metrics.jsonl)")
    for ax, m in zip(axes, metrics):
        style_axes(ax, "tokens", m)
    extra = [Line2D([], [], color=c, label=TYPE_NAMES.get(k, k)) for k, c in colors.items()] if many else None
    legend_below(fig, axes, ncol=2 if not many else None, extra=extra)
    if many:
        notes.append(f"{len(rows)} runs: the legend names memory types / run kinds (shades = configurations)")
    return Drawn(fig, sorted(used), notes)


_TELEMETRY_COLORS = ("#1f77b4", "#d95f02", "#7570b3", "#2ca02c", "#e7298a", "#8c564b")


@register("telemetry", keys=("max_runs",))
def plot_telemetry(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Memory use during training (hmem_lit/telemetry.py): per memory run and bank level, the sorted fetch counts of
    the level's blocks (share of the level's fetches; a collapsed bank is one tall bar, an unused one a short tail
    of zeros) and the coverage curve (share of blocks fetched at least once) over training tokens."""
    import json
    from pathlib import Path

    from hmem_lit.telemetry import FILE

    rows, notes = apply_spec(df, spec, None)
    rows = rows[rows.memory_type != "none"].drop_duplicates("run")
    have = [r for _, r in rows.iterrows() if (Path(r.path) / FILE).is_file()][: int(spec.get("max_runs", 4))]
    if not have:
        raise Skip("no memory run has memory_telemetry.json (written by runs trained since the telemetry landed)")
    fig, axes = new_fig(spec, 2)
    for k, r in enumerate(have):
        tel = json.loads((Path(r.path) / FILE).read_text())
        recs = runs_mod.read_metrics(r.path)
        for j, (lvl, info) in enumerate(sorted(tel["levels"].items())):
            counts = np.sort(np.asarray(info["fetch_counts"], dtype=float))[::-1]
            share = counts / max(counts.sum(), 1.0)
            color = _TELEMETRY_COLORS[(k * 3 + j) % len(_TELEMETRY_COLORS)]
            lab = f"{r.label}, level {lvl} ({info['n_blocks']} blocks, {100 * info['coverage']:.0f}% fetched)"
            axes[0].plot(np.arange(1, len(share) + 1) / len(share), share, color=color, label=lab, lw=1)
            pts = [(q["tokens"], q[f"mem/l{lvl}_coverage"]) for q in recs if f"mem/l{lvl}_coverage" in q]
            if pts:
                axes[1].plot(*zip(*pts), color=color, lw=1)
    axes[0].set_xlabel("blocks, most fetched first (fraction of the level)")
    axes[0].set_ylabel("share of the level's fetches")
    axes[0].set_yscale("log")
    axes[1].set_xlabel("training tokens")
    axes[1].set_ylabel("blocks fetched at least once")
    legend_below(fig, axes, ncol=1)
    return Drawn(fig, [r.run for r in have], notes)


@register("leak", keys=("probes",))
def plot_leak(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """Knowledge separation: per frequency bucket (mean over the fact probes), the accuracy of the anchor trained
    alone, of a memory run's anchor with its memory switched off (`--memory none`) and with its fetched memory.
    Long-tail knowledge that sits in the memory shows as 'memory off' far below 'fetched' and near the anchor alone;
    knowledge that leaked into the co-trained anchor shows as 'memory off' above the anchor alone."""
    rows, notes = apply_spec(df, spec, None)
    mem_runs = rows[rows.kind == "memory"].run.unique()
    if not len(mem_runs):
        raise Skip("no memory run")
    off = pick_mode(df[df.run.isin(mem_runs)], "none")
    on = pick_mode(df[df.run.isin(mem_runs)], "fetched")
    anchors = pick_mode(df[df.kind == "anchor"], "fetched")
    found = probes(on)
    want = spec.get("probes") or list(found)
    found = {p: found[p] for p in want if p in found}
    if not found or off.empty:
        raise Skip(
            "memory runs need both `fetched` and `none` evaluations with per-bucket probes (hmem eval --memory none)"
        )
    ks = sorted({k for v in found.values() for k in v})

    def curve(frame: pd.DataFrame) -> np.ndarray:
        def mean(k: int) -> float:
            v = np.array([frame[f"{p}/bucket{k}"].mean() for p in found if f"{p}/bucket{k}" in frame], dtype=float)
            return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")

        return np.array([mean(k) for k in ks]) * 100

    fig, axes = new_fig(spec, len(on))
    used = []
    for ax, (_, r) in zip(axes, on.iterrows()):
        base = matching_anchor(anchors, r.params_anchor, r.seed)
        series = [
            ("anchor trained alone", base, KIND_COLORS["anchor"]),
            ("memory run, memory off", off[off.run == r.run], "#9ecae1"),
            ("memory run, fetched memory", on[on.run == r.run], PALETTE.get(r.memory_type, "#1f77b4")),
        ]
        width = 0.8 / len(series)
        for j, (lab, frame, color) in enumerate(series):
            if len(frame):
                ax.bar(np.arange(len(ks)) + (j - 1) * width, curve(frame), width * 0.95, color=color, label=lab)
        ax.set_xticks(range(len(ks)), [f"{k}\n(rarest)" if k == ks[0] else str(k) for k in ks])
        ax.set_xlabel("entity frequency bucket")
        ax.set_ylabel("fact accuracy, mean over probes (%)")
        ax.set_title(r.label, fontsize=7)
        used += [r.run, *base.run.tolist()]
    legend_below(fig, axes)
    return Drawn(fig, sorted(set(used)), notes)


@register("blocking")
def plot_blocking(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    """The blocking curve (the paper's Fig. 6b): Avg-SK of a memory run with its fetched memory, with the best
    matching subtree blocked at level 1 (`hmem eval --memory blocked`), at level l (`--block-level l`, mode
    `blocked-l<l>`), and with the memory off. Facts stored in the blocked subtree's blocks drop out."""
    rows, notes = apply_spec(df, spec, None)
    mem = rows[rows.kind == "memory"]
    order = ["fetched", *sorted(m for m in df.eval_mode.unique() if str(m).startswith("blocked")), "none"]
    have = [r for r in mem.run.unique() if df[(df.run == r) & df.eval_mode.str.startswith("blocked")].shape[0]]
    if not have:
        raise Skip("no memory run evaluated with --memory blocked (hmem eval RUN --memory blocked [--block-level l])")
    fig, axes = new_fig(spec, 1)
    ax = axes[0]
    width = 0.8 / len(have)
    for j, run in enumerate(have):
        g = df[df.run == run]
        vals = [float(g[g.eval_mode == m].hmem_sk.mean()) * 100 if (g.eval_mode == m).any() else np.nan for m in order]
        ax.bar(
            np.arange(len(order)) + (j - (len(have) - 1) / 2) * width,
            vals,
            width * 0.95,
            label=str(g.label.iloc[0]),
            color=PALETTE.get(str(g.memory_type.iloc[0]), "#1f77b4"),
        )
        for x, v in enumerate(vals):
            if v == v:
                ax.text(x + (j - (len(have) - 1) / 2) * width, v + 0.5, f"{v:.1f}", ha="center", fontsize=6)
    labels = {"fetched": "fetched", "blocked": "blocked\nlevel 1", "none": "memory\noff"}
    ax.set_xticks(range(len(order)), [labels.get(m, m.replace("blocked-l", "blocked\nlevel ")) for m in order])
    ax.set_ylabel("Avg-SK accuracy (%)")
    legend_below(fig, axes)
    return Drawn(fig, have, notes)
