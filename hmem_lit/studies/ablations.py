"""`hmem ablations`: the paper's ablation sweeps read back as one page: a table and a figure per question, both
built-in corpora side by side, each with the check of the paper's shape computed from the numbers.

Input: the sweep studies under ROOT (default runs/sweeps): a study directory per sweep and corpus, named
`<sweep>` or `<sweep>-<anything>` (the chain in docs/ablations.md names the airports runs `<sweep>-airports`), and
the shared anchor runs in ROOT/_baselines (spec key `baselines`). Every complete run directory (final.json with
eval.fetched) counts; its corpus is read from its own config, so the directory names only pick the sweep. Seeds of
one configuration are averaged (mean, std, n); the anchor a configuration is compared with is the baseline of the
same corpus, anchor depth and token count.

Output (OUT, default docs/ablations/): ablations.md (tables, shape checks, run counts, wall time), one PNG per
sweep, rows.csv (one row per run: what the tables are computed from, with the commit and protocol that made it)
and checks.csv (each verdict line as computed from the runs: paired item-level intervals need the run
directories, so a rebuild from rows.csv reads the verdicts from here instead of recomputing them from seeds). A
hand-written OUT/notes.md (the reading of the numbers) is included at the top when it exists.

Runs do not outlive a machine, so the page accumulates: `--merge` keeps the committed rows and verdicts of every
(sweep, setting) that the runs below ROOT do not cover, and replaces the ones they do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmem_lit.analysis import stats
from hmem_lit.analysis.collect import fmt_count
from hmem_lit.analysis.compare import diff_runs
from hmem_lit.config import ConfigError
from hmem_lit.studies.ablation_rows import (  # noqa: F401 (run_row: part of this module's API)
    aggregate,
    collect_rows,
    merge_rows,
    read_checks,
    read_rows,
    run_row,
    with_gain,
)
from hmem_lit.utils import atomic_write_text

CORPORA = ("facts", "airports")


# ---------------------------------------------------------------------------------------------------------------
# differences with their noise (analysis/stats.py)

_ITEM_METRIC = {"sk": "Avg-SK", "val_bpb": "val bpb"}  # a row column -> the item-level metric measuring it


def step(a: pd.Series, b: pd.Series, col: str = "sk", better: int = 1) -> tuple[stats.Interval, str]:
    """a - b on `col` with its 95% CI and verdict: a paired bootstrap over the items and seeds when both
    configurations' run directories hold item records, else a Welch interval over their seeds (per-run numbers)."""
    iv = None
    if a.get("paths") and b.get("paths") and col in _ITEM_METRIC:
        iv = diff_runs([Path(p) for p in a.paths], [Path(p) for p in b.paths], _ITEM_METRIC[col])
    if iv is None:
        iv = stats.seed_interval(list(a[f"{col}_vals"]), list(b[f"{col}_vals"]))
    return iv, stats.verdict(iv, better)


def _says(label: str, iv: stats.Interval, v: str, dec: int = 1) -> str:
    ci = "" if math.isnan(iv.lo) else f" [{iv.lo:+.{dec}f}, {iv.hi:+.{dec}f}]"
    return f"{label} {iv.estimate:+.{dec}f}{ci} {v}"


def combine(verdicts: list[str]) -> str:
    """A shape made of steps: holds when every step holds, does not hold when any step does not, otherwise within
    noise (or not resolved when a step has no CI)."""
    if any(v == "does not hold" for v in verdicts):
        return "**does not hold**"
    if verdicts and all(v == "holds" for v in verdicts):
        return "**holds**"
    return "**not resolved (one seed)**" if any(v.startswith("no CI") for v in verdicts) else "**within noise**"


# ---------------------------------------------------------------------------------------------------------------
# one section per question


@dataclass
class Section:
    sweep: str
    title: str
    reproduces: str
    keys: list[str]  # configuration columns (besides corpus)
    label: Callable[[pd.Series], str]  # a configuration's name in tables and on axes
    check: Callable[[pd.DataFrame], list[str]]  # aggregated rows of one corpus -> shape verdict lines
    paper: str  # the paper's shape, in words


def _pm(r: pd.Series) -> str:
    return f"{r.sk:.1f}" + (f" ± {r.sk_std:.1f}" if r.n > 1 else "")


def _type_label(r: pd.Series) -> str:
    return str(r.memory_type).upper() + (f"-{r.lora_target}" if r.memory_type == "lora" else "")


def _chain(g: pd.DataFrame, label: Callable[[Any], str], col: str = "sk", better: int = 1) -> tuple[str, list[str]]:
    """Consecutive rows of g: each step (next - previous) with its CI -> (combined verdict, step texts)."""
    rows = [r for _, r in g.iterrows()]
    got = [step(b, a, col, better) for a, b in zip(rows, rows[1:])]
    texts = [_says(f"{label(a)} -> {label(b)}", iv, v) for (a, b), (iv, v) in zip(zip(rows, rows[1:]), got)]
    return combine([v for _, v in got]), texts


def _check_types(a: pd.DataFrame) -> list[str]:
    main = a[(a.memory_type != "lora") | (a.lora_target == "qk")].set_index("memory_type", drop=False)
    if not {"ffn", "lora", "kv"} <= set(main.index):
        return ["incomplete: needs ffn, lora and kv"]
    order = [main.loc[t] for t in ("kv", "lora", "ffn")]
    verdict, texts = _chain(pd.DataFrame(order), _type_label)
    return [f"FFN > LoRA > KV: {verdict} (Avg-SK steps: {'; '.join(texts)})"]


def _check_level_fetched(a: pd.DataFrame) -> list[str]:
    out = []
    for fetched, g in a.groupby("params_fetched"):
        g = g.sort_values("level")
        if len(g) >= 2:
            verdict, texts = _chain(g, lambda r: f"L{int(r.level)}")
            out.append(f"fetched {fmt_count(fetched)}: deeper level helps more: {verdict} ({'; '.join(texts)})")
    return out or ["incomplete"]


def _check_level_bank(a: pd.DataFrame) -> list[str]:
    out = []
    for level, g in a.groupby("level"):
        g = g.sort_values("params_bank")
        if len(g) >= 2:
            verdict, texts = _chain(g, lambda r: fmt_count(r.params_bank))
            out.append(f"level {int(level)}: accuracy rises with bank size: {verdict} ({'; '.join(texts)})")
    return out or ["incomplete"]


def _check_fetched_bank(a: pd.DataFrame) -> list[str]:
    out = []
    big = a.params_bank.max()
    g = a[np.isclose(a.params_bank, big, rtol=0.02)].sort_values("params_fetched")
    if len(g) >= 2:
        verdict, texts = _chain(g, lambda r: fmt_count(r.params_fetched))
        out.append(f"bank {fmt_count(big)}: SK rises with the fetched size: {verdict} ({'; '.join(texts)})")
    for fetched, h in a.groupby(a.params_fetched.round(-2)):
        h = h.sort_values("params_bank")
        if len(h) >= 2:
            verdict, texts = _chain(h, lambda r: fmt_count(r.params_bank))
            out.append(f"fetched {fmt_count(fetched)}: a larger bank helps: {verdict} ({'; '.join(texts)})")
    return out or ["incomplete"]


def _check_ratio(a: pd.DataFrame) -> list[str]:
    """The paper's optimum is on perplexity (Table 8): the best ratio must be interior and beat both ends beyond
    the noise; the same read on Avg-SK beside it."""
    g = a.sort_values("fetch_ratio").reset_index(drop=True)
    if len(g) < 3:
        return ["incomplete: needs at least 3 ratios"]
    out = []
    ppl = "val_bpb" if "val_bpb" in g and g.val_bpb.notna().all() else "wiki_ppl"  # bits per byte when measured
    for col, better, name in ((ppl, -1, "perplexity" if ppl == "wiki_ppl" else "bits per byte"), ("sk", 1, "Avg-SK")):
        vals = g[col].to_numpy(float)
        inner = vals[1:-1] * better  # the best interior ratio (lowest perplexity, highest Avg-SK)
        best = 1 + int(np.nanargmax(inner))
        dec = 3 if col == "val_bpb" else 1
        listing = " / ".join(f"{r.fetch_ratio:.2f}: {getattr(r, col):,.{dec}f}" for r in g.itertuples())
        ends = [step(g.loc[best], g.loc[e], col, better) for e in (0, len(g) - 1)]
        texts = [
            _says(f"ratio {g.fetch_ratio[best]:.2f} - ratio {g.fetch_ratio[e]:.2f}", iv, v, dec)
            for e, (iv, v) in zip((0, len(g) - 1), ends)
        ]
        out.append(
            f"interior optimum on {name}: {combine([v for _, v in ends])} (the best interior ratio against both "
            f"ends: {'; '.join(texts)}; {listing})"
        )
    return out


def _check_placement(a: pd.DataFrame) -> list[str]:
    s = a.set_index("layers", drop=False)
    if not {"late", "all"} <= set(s.index):
        return ["incomplete: needs late and all"]
    iv, v = step(s.loc["late"], s.loc["all"])
    order = " > ".join(s.sort_values("sk", ascending=False).layers)
    return [
        f"late at least as good as all layers (late - all > 0): {combine([v])} "
        f"({_says('late - all', iv, v)}; measured order {order})"
    ]


SECTIONS = [
    Section(
        "memory_type",
        "Memory types at equal fetched size",
        "Fig. 3a/b",
        ["memory_type", "lora_target"],
        _type_label,
        _check_types,
        "FFN > LoRA > KV at every fetched size",
    ),
    Section(
        "level_fetched",
        "Which level, at a fixed fetched size",
        "Fig. 3c",
        ["level", "params_fetched"],
        lambda r: f"L{int(r.level)}, fetched {fmt_count(r.params_fetched)}",
        _check_level_fetched,
        "deeper levels help more at a fixed fetched size",
    ),
    Section(
        "level_bank",
        "Which level, at a fixed bank size",
        "Fig. 3d",
        ["level", "params_bank"],
        lambda r: f"L{int(r.level)}, bank {fmt_count(r.params_bank)}",
        _check_level_bank,
        "accuracy rises with bank size at every level",
    ),
    Section(
        "fetched_bank",
        "Fetched vs bank size",
        "Fig. 4a / Table 7",
        ["levels"],
        lambda r: f"fetched {fmt_count(r.params_fetched)} of {fmt_count(r.params_bank)}",
        _check_fetched_bank,
        "at a fixed bank SK rises with the fetched size; a larger bank helps at the same fetch",
    ),
    Section(
        "fetch_ratio",
        "Fetched-to-anchor ratio at a fixed runtime budget",
        "Fig. 4b / Table 8",
        ["n_layer"],
        lambda r: f"ratio {r.fetch_ratio:.2f} ({int(r.n_layer)} layers)",
        _check_ratio,
        "an interior optimum, about 1:10",
    ),
    Section(
        "placement",
        "Placement of the memory layers",
        "Table 9",
        ["layers"],
        lambda r: str(r.layers),
        _check_placement,
        "late placement at least as good as all layers",
    ),
]


# ---------------------------------------------------------------------------------------------------------------
# page


def _figure(sec: Section, agg: pd.DataFrame, out: Path) -> str | None:
    import matplotlib.pyplot as plt

    from hmem_lit.analysis.style import STYLE  # matplotlib: only when a figure is drawn

    settings = _settings(agg)
    if not settings:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(settings), figsize=(3.4 * len(settings), 2.6), squeeze=False)
        for ax, c in zip(axes[0], settings):
            a = agg[agg.setting == c].reset_index(drop=True)
            labels = [sec.label(r) for _, r in a.iterrows()]
            x = np.arange(len(a))
            err = np.where(a.n > 1, a.sk_std, 0.0)
            ax.bar(x, a.sk, yerr=err, color="#1f77b4", alpha=0.85, error_kw={"lw": 0.8})
            base = a.sk - a.gain
            if base.notna().any():
                ax.axhline(float(base.mean()), color="#7f7f7f", ls="--", lw=1, label="anchor alone")
                ax.legend(loc="lower right", frameon=False)
            for xi, r in zip(x, a.itertuples()):
                ax.text(
                    xi,
                    r.sk + (err[xi] if len(err) else 0) + 0.5,
                    f"{r.sk:.1f}" + ("*" if r.n > 1 else ""),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
            ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=6)
            ax.set_ylabel("Avg-SK accuracy (%)")
            ax.set_title(f"{c} ({sec.reproduces})", loc="left")
        fig.suptitle(sec.title + "   (* = mean of seeds, bars = std)", fontsize=8)
        fig.tight_layout()
        name = f"{sec.sweep}.png"
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(out / name)
    return name


def _settings(agg: pd.DataFrame) -> list[str]:
    """Settings in corpus order (facts first), then by token budget."""
    order = {c: i for i, c in enumerate(CORPORA)}
    keys = agg.drop_duplicates("setting")[["setting", "corpus"]].itertuples()
    return [k.setting for k in sorted(keys, key=lambda k: (order.get(k.corpus, 99), k.setting))]


def _wall(df: pd.DataFrame) -> str:
    t = df.train_time_s.sum() + df.eval_time_s.sum()
    return f"{t / 3600:.1f} h of run time" if t >= 3600 else f"{t / 60:.0f} min of run time"


def _rows_for_page(root: str | Path, rows_csv: str | Path | None) -> tuple[pd.DataFrame, str]:
    """The page's rows and where they came from: a committed rows.csv as it is, else the runs below root with
    their gains. -> (rows, the `hmem ablations` source option)."""
    if rows_csv is not None:
        df, source = read_rows(rows_csv), f"--rows {rows_csv}"
    else:
        df, source = collect_rows(root), f"--root {root}"
    if df.empty:
        raise ConfigError(f"{root}: no complete, evaluated sweep runs (final.json with eval.fetched) below it")
    if rows_csv is None:
        df = with_gain(df)
    return df, source


def _page_head(df: pd.DataFrame, source: str, out: Path) -> list[str]:
    """The page's lines before the sections: what it was built from, how to read the checks, the hand-written
    notes (OUT/notes.md, when there: the reading and the commands that regenerate the runs), the anchors alone."""
    versions = sorted({int(v) for v in df.metric_version.dropna()})
    lines = [
        "# The paper's ablations at the quickstart's scale",
        "",
        f"Generated by `hmem ablations {source} --out {out}` from {len(df)} run directories "
        f"({_wall(df)}). Avg-SK = mean fact accuracy over the corpus's probes, fetched memory; 'rare' = the "
        "probes' rarest frequency bucket; gain = Avg-SK minus the anchor alone (same corpus, depth and tokens). "
        f"Metric version {', '.join(map(str, versions))}"
        + (
            " (version 1: Avg-SK mixes generation and multiple choice with random distractors, over all entities; "
            "the quickstart's numbers are version 2, see docs/results.md)"
            if 1 in versions
            else ""
        )
        + ".",
        "",
        f"Every check prints each step's difference with its 95% CI and a verdict. Rule: {stats.RULE}; "
        "without item records (a rebuild from rows.csv) the interval is a Welch t interval over seeds, which "
        "needs two seeds per configuration: a step with one seed is *not resolved*, whatever its size.",
        "",
    ]
    notes = out / "notes.md"  # hand-written: the reading of the numbers and the commands that made them
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    anchors = df[df.sweep == "_baselines"]
    if len(anchors):
        a = anchors.groupby(["setting", "n_layer"]).agg(sk=("sk", "mean"), rare=("rare", "mean"), n=("sk", "size"))
        lines += [
            "Anchors alone (Avg-SK, rarest bucket; mean over seeds): "
            + ", ".join(
                f"{s}, {int(nl)} layers: {r.sk:.1f} ({r.rare:.1f}; {int(r.n)} seed{'s' if r.n > 1 else ''})"
                for (s, nl), r in a.iterrows()
            ),
            "",
        ]
    return lines


def _compared_rows(sec: Section, rows: pd.DataFrame) -> pd.DataFrame:
    """One sweep's rows (a copy, changed in place) as its section compares them: fetch_ratio's gains against its
    own dense point, every other sweep without its anchor-only runs."""
    if sec.sweep == "fetch_ratio":  # compared with the ratio-0 point: the dense anchor at the same budget
        dense = rows[rows.memory_type == "none"].groupby("setting")[["sk", "rare"]].mean()
        rows["gain"] = rows.sk - rows.setting.map(dense.sk)
        rows["rare_gain"] = rows.rare - rows.setting.map(dense.rare)
    if sec.sweep != "fetch_ratio":
        rows = rows[rows.memory_type != "none"]
    return rows


def _page_order(agg: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Aggregated rows in page order: settings (_settings), then the section's configuration keys."""
    rank = {c: i for i, c in enumerate(_settings(agg))}
    return agg.assign(_r=agg.setting.map(rank)).sort_values(["_r", *keys]).drop(columns="_r").reset_index(drop=True)


def _section_lines(
    sec: Section,
    df: pd.DataFrame,
    out: Path,
    recorded: dict[tuple[str, str], list[str]],
    checks: list[dict[str, str]],
) -> list[str]:
    """One question's part of the page (its figure written into OUT): the shape checks per setting (from
    `recorded` where it has them, else computed; every line appended to `checks`), the table."""
    rows = df[df.sweep == sec.sweep].copy()
    if rows.empty:
        return [f"## {sec.title} ({sec.reproduces})", "", "no runs in this build (see the notes above)", ""]
    rows = _compared_rows(sec, rows)
    agg = _page_order(aggregate(rows, sec.keys), sec.keys)
    fig = _figure(sec, agg, out)
    modes = ", ".join(sorted({str(m) for m in rows["mode"].dropna()} - {"anchor"})) if "mode" in rows else ""
    lines = [
        f"## {sec.title} ({sec.reproduces})",
        "",
        f"Paper: {sec.paper}. {len(rows)} runs, {_wall(rows)}" + (f"; memory trained {modes}" if modes else "") + ".",
        "",
    ]
    for c in _settings(agg):
        got = recorded.get((sec.sweep, c)) or sec.check(agg[agg.setting == c])
        checks += [{"sweep": sec.sweep, "setting": c, "line": t} for t in got]
        lines += [f"- {c}: " + "; ".join(got)]
    bpb = "val_bpb" in agg and agg.val_bpb.notna().all()  # bits per byte on the validation split when measured
    lines += [
        "",
        "| setting | config | fetched | bank | Avg-SK | gain | rare bucket | "
        + ("val bpb" if bpb else "wiki ppl")
        + " | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in agg.iterrows():
        ppl = f"{r.val_bpb:.3f}" if bpb else f"{r.wiki_ppl:,.0f}"
        lines.append(
            f"| {r.setting} | {sec.label(r)} | {fmt_count(r.params_fetched)} | {fmt_count(r.params_bank)} "
            f"| {_pm(r)} | {r.gain:+.1f} | {r.rare:.1f} | {ppl} | {int(r.n)} |"
        )
    lines += ["", f"![{sec.sweep}]({fig})" if fig else "", ""]
    return lines


def build(
    root: str | Path = "runs/sweeps",
    out: str | Path = "docs/ablations",
    rows_csv: str | Path | None = None,
    merge: bool = False,
) -> Path:
    """Write OUT/ablations.md, OUT/<sweep>.png, OUT/rows.csv and OUT/checks.csv from the runs below root (or from
    a committed rows.csv and the checks.csv beside it, both then left as they are). merge: also keep OUT's
    committed rows and verdicts of the (sweep, setting)s the runs do not cover. -> the page's path."""
    out = Path(out)
    if merge and rows_csv is not None:
        raise ConfigError("--merge adds runs to a committed page; with --rows there are no runs to add")
    df, source = _rows_for_page(root, rows_csv)
    recorded = read_checks(Path(rows_csv).parent / "checks.csv") if rows_csv is not None else {}
    if merge and (out / "rows.csv").is_file():
        have = set(zip(df.sweep, df.setting))
        old = read_rows(out / "rows.csv")
        recorded = {k: v for k, v in read_checks(out / "checks.csv").items() if k not in have}
        df, source = merge_rows(df, old), f"--root {root} --merge"
    out.mkdir(parents=True, exist_ok=True)
    lines = _page_head(df, source, out)
    checks: list[dict[str, str]] = []
    for sec in SECTIONS:
        lines += _section_lines(sec, df, out, recorded, checks)
    if rows_csv is None:  # the records, then the page (the page is the completion marker)
        atomic_write_text(out / "rows.csv", df.drop(columns=["path"], errors="ignore").to_csv(index=False))
        checks_csv = pd.DataFrame(checks, columns=["sweep", "setting", "line"]).to_csv(index=False)
        atomic_write_text(out / "checks.csv", checks_csv)
    atomic_write_text(out / "ablations.md", "\n".join(lines) + "\n")
    return out / "ablations.md"
