"""Shared look of every figure: one fixed colour per memory type (PALETTE), per run kind (KIND_COLORS) and per memory
level (LEVEL_COLORS); paper-size fonts (STYLE, applied by the report around each figure); axis labels with units;
parameter counts printed as 18M / 4.6B on log axes when sizes span more than a decade; one legend per figure,
below the panels, so it never covers data. Widths are paper widths: 3.4 in single column, 7 in double."""

from __future__ import annotations

import colorsys
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from hmem_lit.utils import fmt_count  # noqa: E402

PALETTE = {"none": "#7f7f7f", "ffn": "#1f77b4", "lora": "#ff7f0e", "kv": "#2ca02c", "pkm": "#9467bd"}
TYPE_NAMES = {"none": "anchor only", "ffn": "FFN", "lora": "LoRA", "kv": "KV", "pkm": "PKM"}
KIND_COLORS = {"anchor": "#7f7f7f", "dense-2x": "#222222", "same-runtime dense": "#8c564b"}
LEVEL_COLORS = {1: "#1b9e77", 2: "#d95f02", 3: "#7570b3", 4: "#e7298a", 5: "#66a61e"}
# the quickstart's runs (and the comparison's control arms) by name: the same colour in every figure of a report
NAMED_COLORS = {
    "memory": "#1f77b4",
    "fetched": "#1f77b4",
    "generic": "#9ecae1",
    "none": "#c6dbef",
    "random": "#9467bd",
    "anchor": "#7f7f7f",
    "anchor_wallclock": "#bcbd22",
    "dense_runtime": "#8c564b",
    "dense_2x": "#222222",
    "leaf prior": "#d62728",
}
# colours for arms without a fixed one (matplotlib's tab20 order: the tab10 hues first, then their light shades)
PALETTE_CYCLE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip
KIND_ORDER = {"anchor": 0, "memory": 1, "same-runtime dense": 2, "dense-2x": 3}
MARKERS, LINESTYLES = "os^Dv<>p", ("-", "--", ":", "-.")
# rc parameters for plt.rc_context (Any keys: matplotlib's stub types them as a Literal of the rc names)
STYLE: dict[Any, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,
    "errorbar.capsize": 2,
}
LABELS = {
    "hmem_sk": "Avg-SK accuracy (%)",
    "hmem_ck": "Avg-CK accuracy (%)",
    "wiki_ppl": "Wikipedia perplexity",
    "wiki_bpb": "Wikipedia bits per byte",
    "val_ppl": "validation perplexity",
    "val_loss": "validation loss (nats/token)",
    "train/loss": "training loss (nats/token)",
    "val/loss": "validation loss (nats/token)",
    "probe/sk": "in-loop Avg-SK (fraction of items)",
    "params_fetched": "fetched parameters",
    "params_bank": "bank parameters",
    "params_anchor": "anchor parameters",
    "params_runtime": "runtime parameters (anchor + fetched)",
    "fetch_ratio": "fetched : anchor parameters",
    "tokens": "training tokens",
    "level": "memory level",
}
_NOT_ACC = (
    "wiki",
    "val",
    "train",
    "params",
    "n_",
    "eval_time",
    "retrieval_time",
    "fetch_ratio",
    "tokens",
    "steps",
    "level",
)


def is_acc(metric: str) -> bool:
    """Accuracies are stored in [0, 1] and shown in %: Avg-SK / Avg-CK, fact probes and their buckets."""
    return not metric.startswith(_NOT_ACC)


def metric_label(metric: str) -> str:
    return LABELS.get(metric) or (f"{metric.replace('_', ' ')} accuracy (%)" if is_acc(metric) else metric)


def scale(metric: str) -> float:
    return 100.0 if is_acc(metric) else 1.0


def lighten(color: str, k: int, n: int) -> str:
    """Shade k of n of one base colour (k=0 is the colour itself): same hue, so the type stays recognisable."""
    if n <= 1 or k == 0:
        return color
    h, lum, s = colorsys.rgb_to_hls(*mcolors.to_rgb(color))
    return mcolors.to_hex(colorsys.hls_to_rgb(h, min(0.82, lum + (0.82 - lum) * k / n), s))


def named_color(label: str) -> str | None:
    """The fixed colour of a known run or arm name (NAMED_COLORS), else None."""
    return NAMED_COLORS.get(label)


def group_color(kind: str, memory_type: str) -> tuple[str, str]:
    """(group, base colour) of a run: memory runs and anchors by memory type, other baselines by their kind."""
    if kind in ("memory", "anchor"):
        return memory_type, PALETTE.get(memory_type, "C0")
    return kind, KIND_COLORS.get(kind, "C7")


def shaded(series: list[tuple[str, str, str]]) -> dict[str, str]:
    """[(label, group, base colour)] in plotting order -> label colour: one hue per group, several labels of one
    group get shades of it (so two anchors with different token budgets never share a colour)."""
    groups: dict[str, list[str]] = {}
    for lab, g, _ in series:
        if lab not in groups.setdefault(g, []):
            groups[g].append(lab)
    return {lab: lighten(base, groups[g].index(lab), len(groups[g])) for lab, g, base in series}


def series_style(col: str, values: list[Any]) -> dict[Any, tuple[str, str]]:
    """value -> (colour, legend label) for a series column; fixed colours for memory types, kinds and levels."""
    out: dict[Any, tuple[str, str]] = {}
    nums = sorted(v for v in values if isinstance(v, (int, float, np.number)))
    for i, v in enumerate(values):
        if col == "memory_type":
            out[v] = (PALETTE.get(v, f"C{i}"), TYPE_NAMES.get(v, str(v)))
        elif col == "kind":
            out[v] = (KIND_COLORS.get(v, PALETTE["ffn"]), str(v))
        elif col == "level":
            out[v] = (LEVEL_COLORS.get(int(v), f"C{i}"), f"level {int(v)}")
        elif len(nums) == len(values):  # numeric series (e.g. bank size): sequential colours
            pos = nums.index(v) / max(1, len(nums) - 1)
            name = LABELS.get(col, col).replace(" parameters", "")
            out[v] = (
                mcolors.to_hex(plt.get_cmap("viridis")(0.1 + 0.75 * pos)),
                f"{name} {fmt_count(v) if col.startswith('params') else v}",
            )
        else:
            out[v] = (f"C{i % 10}", str(v))
    return out


def new_fig(spec: dict[str, Any], n: int, panel_h: float = 2.3):
    """Figure of n panels at paper width (spec `width`, default 7 in for several panels, 3.4 in for one)."""
    width = float(spec.get("width", 7.0 if n > 1 else 3.4))
    ncols = min(n, int(spec.get("ncols", 3 if width >= 6 else 1)))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_h * nrows + 0.7), layout="constrained", squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    if spec.get("title"):
        fig.suptitle(spec["title"])
    return fig, list(axes.flat[:n])


def style_axes(ax, x: str | None, y: str | None, xs: np.ndarray | None = None) -> None:
    """Labels with units; count axes for parameter sizes; a light grid."""
    if x:
        ax.set_xlabel(metric_label(x))
    if y:
        ax.set_ylabel(metric_label(y))
    if x and x.startswith(("params", "tokens")):
        pos = np.asarray(xs if xs is not None else [], dtype=float)
        pos = pos[pos > 0]
        if len(pos) and pos.max() / pos.min() > 10:
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(True, alpha=0.25, linewidth=0.5)


def legend_below(fig, axes, ncol: int | None = None, extra: list | None = None) -> None:
    """One legend for the figure, below the panels (outside the data area), de-duplicated by label."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    for h in extra or []:
        seen.setdefault(h.get_label(), h)
    if seen:
        n = ncol or min(len(seen), 4 if fig.get_figwidth() >= 6 else 2)
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=n, frameon=False)
