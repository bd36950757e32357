"""Arms, their numbers with CIs, and every memory-vs-baseline difference with its verdict, from item records.

An **arm** is one configuration (seeds of one `config_id` pooled) evaluated in one memory mode: for a memory run
each evaluated mode (fetched, generic, none, random, ...) is its own arm; `leaf prior` is the no-model control
(each probe item's `prior_ok`, data/questions.py). Arms are named after their runs (`memory`, `anchor`,
`dense_2x`, ... without the `_seed<k>` suffix), with the mode in brackets for memory runs.

Metrics (METRICS) are computed on the test entities from `eval/<mode>/items.jsonl` (evaluation/scores.py), the
same records for every arm, aligned on the item key, so every difference is paired (analysis/stats.py has the
interval and the rule). `compare(root)` -> Comparison: `arms` (arm x metric: estimate and CI), `diffs` (each
fetched-memory arm minus every other arm, per metric, with the verdict), and `records()`: the rows of the
machine-readable record (`comparisons.csv` in a report; the README's tables are rendered from a committed copy),
with the provenance of every number: corpus, runs, seeds, config hash, the commits that trained and evaluated
them, the date and METRIC_VERSION.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.analysis import stats
from hmem_lit.evaluation.scores import ITEMS, LN2, METRIC_VERSION, read_items
from hmem_lit.utils import read_json

PRIOR = "leaf prior"
RARE = (0, 1)  # the two rarest frequency buckets


@dataclass(frozen=True)
class MetricSpec:
    name: str  # column name in tables and records
    pick: Callable[[dict[str, Any]], bool]  # which item records count
    value: str  # record field ("acc", "rank", "bits")
    better: int  # +1 higher is better, -1 lower
    scale: float = 100.0  # accuracies in %
    dec: int = 1
    prior: bool = True  # the leaf prior has this metric (its prior_ok on the same items)


def _sk(variant: str, buckets: tuple[int, ...] | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda r: (
        r.get("variant") == variant
        and (r.get("split") or "test") == "test"
        and (buckets is None or r.get("bucket") in buckets)
    )


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("Avg-SK", _sk("base"), "acc", +1),
    MetricSpec("Avg-SK rare", _sk("base", RARE), "acc", +1),
    MetricSpec("paraphrase", _sk("para"), "acc", +1),
    MetricSpec("paraphrase rare", _sk("para", RARE), "acc", +1),
    MetricSpec("QA", _sk("qa"), "acc", +1),
    MetricSpec("MC hard", _sk("mc"), "acc", +1),
    MetricSpec("gold rank rare", _sk("rank"), "rank", -1, scale=1.0, prior=False),
    MetricSpec("val bpb", lambda r: r.get("task") == "hmem_val_bpb", "bits", -1, scale=1.0, dec=3, prior=False),
    MetricSpec("Avg-CK", lambda r: "probe" not in r and "acc" in r, "acc", +1, prior=False),
)


MODE_ORDER = ("fetched", "generic", "none", "random", "blocked")


@dataclass
class Arm:
    name: str
    mode: str  # evaluation memory mode, or "prior"
    runs: list[Path]  # one per seed
    seeds: list[int]
    items: list[dict[str, dict[str, Any]]]  # per seed: key -> record
    info: dict[str, Any] = field(default_factory=dict)  # provenance
    order: tuple = ()  # memory arms first (by mode), then baselines by size and tokens, the leaf prior last
    keys: dict[str, list[set[str]]] = field(default_factory=dict)  # metric -> per seed, the items it counts


@dataclass
class Comparison:
    corpus: str
    arms: list[Arm]
    table: dict[tuple[str, str], stats.Interval]  # (arm, metric) -> interval
    diffs: list[tuple[str, str, str, stats.Interval, str]]  # (arm a, arm b, metric, a - b, verdict)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for arm in self.arms:
            for m in METRICS:
                iv = self.table.get((arm.name, m.name))
                if iv is not None:
                    out.append(self._row(arm, m, "value", iv, ""))
        by = {a.name: a for a in self.arms}
        for a, b, metric, iv, verdict in self.diffs:
            m = next(x for x in METRICS if x.name == metric)
            out.append(self._row(by[a], m, "diff", iv, verdict, against=b))
        return out

    def _row(self, arm: Arm, m: MetricSpec, what: str, iv: stats.Interval, verdict: str, against: str = ""):
        sc = m.scale
        return {
            "corpus": self.corpus,
            "arm": arm.name,
            "what": what,
            "against": against,
            "metric": m.name,
            "estimate": round(iv.estimate * sc, 4),
            "ci_lo": None if math.isnan(iv.lo) else round(iv.lo * sc, 4),
            "ci_hi": None if math.isnan(iv.hi) else round(iv.hi * sc, 4),
            "verdict": verdict,
            "n_items": iv.n_items,
            "seeds": " ".join(map(str, arm.seeds)),
            "runs": " ".join(p.name for p in arm.runs),
            **arm.info,
            "metric_version": METRIC_VERSION,
        }


# ------------------------------------------------------------------------------------------------ arms


def _arm_name(row: Any) -> str:
    """An arm's label from its first run's name, without the seed: `memory_seed2` -> `memory` (quickstart --seeds);
    a sweep trial `type-ffn_seed-0_82c220` -> `type-ffn` (its seed is one of the params, its hash covers it)."""
    name = re.sub(r"_seed\d+$", "", str(row["name"]))
    unseeded = re.sub(r"(^|_)seed-\d+(?=_)", "", name)
    if unseeded != name:
        name = re.sub(r"_[0-9a-f]{6}$", "", unseeded).lstrip("_") or name
    return name


def _load(run: Path, mode: str) -> dict[str, dict[str, Any]] | None:
    p = run / "eval" / mode / ITEMS
    return {r["key"]: r for r in read_items(p)} if p.is_file() else None


def find_arms(col: Any, modes: tuple[str, ...] = ("fetched", "generic", "none", "random")) -> list[Arm]:
    """Arms from a collect() result: runs grouped by config_id (seeds), one arm per evaluated memory mode."""
    df = col.table
    if df.empty:
        return []
    arms: list[Arm] = []
    for _, g in df.drop_duplicates("run").groupby("config_id", sort=False):
        first = g.iloc[0]
        name = _arm_name(first)
        paths = [Path(p) for p in g.path]
        for mode in modes if first.memory_type != "none" else ("none", "fetched"):
            loaded = [(p, s, it) for p, s in zip(paths, g.seed) if (it := _load(p, mode)) is not None]
            if not loaded:
                continue
            label = f"{name} [{mode}]" if first.memory_type != "none" else name
            order = (
                (0, name, MODE_ORDER.index(mode) if mode in MODE_ORDER else 9)
                if first.memory_type != "none"
                else (1, float(first.params_runtime), float(first.tokens or 0))
            )
            arm = Arm(label, mode, [x[0] for x in loaded], [int(x[1]) for x in loaded], [x[2] for x in loaded])
            arm.order = order
            arms.append(arm)
            if first.memory_type == "none":
                break
    arms.sort(key=lambda a: a.order)
    ids = dict(zip(df.path, df.config_id))
    for arm in arms:
        arm.info = {"config_hash": ids[str(arm.runs[0])], **provenance(arm)}
    base = next((a for a in arms if a.mode == "fetched" and " [" in a.name), arms[0] if arms else None)
    if base is not None:  # the leaf prior: the same items, each item's prior_ok (one "seed": it is deterministic)
        prior = Arm(PRIOR, "prior", base.runs[:1], [0], [{k: _as_prior(r) for k, r in base.items[0].items()}])
        prior.info = {**base.info, "config_hash": "-", "train_commit": "-"}
        arms.append(prior)
    return arms


def _as_prior(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "acc": r.get("prior_ok")} if "probe" in r else {}


def provenance(arm: Arm) -> dict[str, Any]:
    """Training and evaluation commits and the evaluation date of the arm's runs (every seed's, joined when they
    differ)."""
    train_c, eval_c, dates = set(), set(), set()
    for run in arm.runs:
        man = read_json(run / "manifest.json") if (run / "manifest.json").is_file() else {}
        train_c.add(_short(man))
        res = run / "eval" / arm.mode / "results.json"
        r = read_json(res) if res.is_file() else {}
        eval_c.add(_short(r.get("code") or {}))
        dates.add(str(r.get("date") or "")[:10])
    return {
        "train_commit": " ".join(sorted(train_c)),
        "eval_commit": " ".join(sorted(eval_c)),
        "date": " ".join(sorted(d for d in dates if d)) or dt.date.today().isoformat(),
    }


def _short(rec: dict[str, Any]) -> str:
    sha = rec.get("git_sha")
    return "unknown" if not sha else sha[:8] + ("+dirty" if rec.get("git_dirty") else "")


# ------------------------------------------------------------------------------------------------ metrics


def _matrix(arm: Arm, spec: MetricSpec, keys: list[str]) -> stats.Metric:
    """Items `keys` of one arm as a stats.Metric: per-probe (per-task) strata, each probe weighted equally."""
    first = arm.items[0]
    strata_names = [first[k].get("probe") or first[k]["task"] for k in keys]
    uniq = sorted(set(strata_names))
    strata = np.array([uniq.index(s) for s in strata_names])
    if spec.value == "bits":
        num = np.array([[-s[k]["ll"] / LN2 for k in keys] for s in arm.items])
        den = np.array([[float(s[k]["bytes"]) for k in keys] for s in arm.items])
        return stats.Metric(num, den, strata)
    size = Counter(strata_names)
    w = np.array([1.0 / (len(uniq) * size[s]) for s in strata_names])
    vals = np.array([[float(s[k][spec.value]) for k in keys] for s in arm.items])
    return stats.Metric(vals * w, None, strata)


def _keys(arms: list[Arm], spec: MetricSpec) -> list[str]:
    """Items of `spec` present with a value in every seed of every arm (the intersection, in a fixed order)."""
    field_ = "ll" if spec.value == "bits" else spec.value
    common: set[str] | None = None
    for arm in arms:
        if spec.name not in arm.keys:  # per arm and metric, once
            arm.keys[spec.name] = [
                {k for k, r in s.items() if r and r.get(field_) is not None and spec.pick(r)} for s in arm.items
            ]
        for ks in arm.keys[spec.name]:
            common = set(ks) if common is None else common & ks
    return sorted(common or ())


def compare(
    root: str | Path, corpus: str | None = None, n_boot: int = stats.N_BOOT, col: Any = None
) -> Comparison | None:
    """The comparison of every arm under `root` (None when no run has item records)."""
    from hmem_lit.analysis.collect import collect

    col = col if col is not None else collect(root)
    arms = find_arms(col)
    if not arms:
        return None
    if corpus is None:
        fin = read_json(arms[0].runs[0] / "final.json")
        corpus = str(((fin.get("config") or {}).get("data") or {}).get("corpus", ""))
    table: dict[tuple[str, str], stats.Interval] = {}
    diffs = []
    focus = [a for a in arms if a.mode == "fetched" and " [" in a.name]
    for spec in METRICS:
        present = [a for a in arms if spec.prior or a.name != PRIOR]
        for arm in present:
            keys = _keys([arm], spec)
            if keys:
                table[(arm.name, spec.name)] = stats.bootstrap(_matrix(arm, spec, keys), n_boot, seed=1)
        for a in focus:
            for b in present:
                if b is a or (" [" in b.name and b.mode != "prior" and b.runs != a.runs):
                    continue  # another memory configuration: its own arms, not a baseline of this one
                keys = _keys([a, b], spec)
                if not keys:
                    continue
                iv = stats.bootstrap_diff(_matrix(a, spec, keys), _matrix(b, spec, keys), n_boot, seed=2)
                diffs.append((a.name, b.name, spec.name, iv, stats.verdict(iv, spec.better)))
    return Comparison(corpus, arms, table, diffs)


def diff_runs(a: list[Path], b: list[Path], metric: str, mode: str = "fetched") -> stats.Interval | None:
    """Paired a - b of one metric between two sets of run directories (seeds) evaluated in `mode`; None when a run
    lacks item records or the two share no items."""
    arms = []
    for paths in (a, b):
        items = [_load(p, mode) for p in paths]
        if any(x is None for x in items):
            return None
        arms.append(Arm("", mode, paths, list(range(len(paths))), items))  # type: ignore[arg-type]
    spec = next(m for m in METRICS if m.name == metric)
    keys = _keys(arms, spec)
    if not keys:
        return None
    iv = stats.bootstrap_diff(_matrix(arms[0], spec, keys), _matrix(arms[1], spec, keys), seed=2)
    return stats.Interval(iv.estimate * spec.scale, iv.lo * spec.scale, iv.hi * spec.scale, iv.n_items, iv.n_seeds)


# ------------------------------------------------------------------------------------------------ rendering


def tables(c: Comparison, metrics: tuple[str, ...] | None = None) -> tuple[Any, Any, list[str]]:
    """(arms x metrics with CIs, differences with verdicts, notes: the rule and what one seed resolves)."""
    from hmem_lit.analysis.tables import Table

    ms = [m for m in METRICS if metrics is None or m.name in metrics]
    ms = [m for m in ms if any((a.name, m.name) in c.table for a in c.arms)]
    head = [f"{m.name}{' (%)' if m.scale == 100 else ''}" for m in ms]
    rows = []
    for a in c.arms:
        cells = [c.table[(a.name, m.name)].fmt(m.scale, m.dec) if (a.name, m.name) in c.table else "-" for m in ms]
        rows.append([a.name, str(len(a.seeds)) if a.mode != "prior" else "-", *cells])
    runs = sorted({p.name for a in c.arms for p in a.runs})
    arms_t = Table(["arm", "seeds", *head], rows, runs)
    got = {(x, y, m): (iv, v) for x, y, m, iv, v in c.diffs}
    drows = []
    for x, y in dict.fromkeys((x, y) for x, y, *_ in c.diffs):
        cells = []
        for m in ms:
            iv_v = got.get((x, y, m.name))
            cells.append("-" if iv_v is None else f"{iv_v[0].fmt(m.scale, m.dec)} {iv_v[1]}")
        drows.append([f"{x} − {y}", *cells])
    diffs_t = Table(["difference", *[m.name for m in ms]], drows, runs)
    notes = [f"Rule: {stats.RULE}. Test entities only; 95% CIs; metric version {METRIC_VERSION}."]
    one = [a.name for a in c.arms if a.mode != "prior" and len(a.seeds) == 1]
    if one:
        half = [
            (iv.hi - iv.lo) / 2 * 100
            for (arm, m), iv in c.table.items()
            if m == "Avg-SK" and arm in one and not math.isnan(iv.lo) and iv.hi > iv.lo  # 0 everywhere: no width
        ]
        notes.append(
            f"One seed for {', '.join(one)}: those intervals cover item sampling only, not seed-to-seed variation"
            + (
                f"; one seed resolves Avg-SK differences above about ±{np.median(half):.1f} points from items alone"
                if half
                else ""
            )
            + " (`hmem quickstart --seeds 3` pools seeds into the intervals)."
        )
    return arms_t, diffs_t, notes


def markdown(c: Comparison, metrics: tuple[str, ...] | None = None) -> str:
    a, d, notes = tables(c, metrics)
    return "\n\n".join([a.markdown(), d.markdown(), *notes])


# ------------------------------------------------------------------------------------------------ Fig. 1

FIG1_VARIANTS = (("base", "training phrasing"), ("para", "paraphrase"), ("mc", "multiple choice, hard negatives"))
FIG1_ARMS = ("fetched", "generic", "none", "random", "anchor", "anchor_wallclock", "dense_runtime", "dense_2x", PRIOR)


def _colors(arms: list[Arm]) -> dict[str, str]:
    """One colour per arm: a memory run's controls by mode, every other arm by its run's name (style.NAMED_COLORS,
    the colours of the report's other figures); an arm whose colour an earlier arm took (a sweep's several memory
    configurations) gets the next colour no arm uses."""
    from hmem_lit.analysis.style import NAMED_COLORS, PALETTE_CYCLE, named_color

    out: dict[str, str] = {}
    spare = sorted(PALETTE_CYCLE, key=lambda c: c in NAMED_COLORS.values())  # fixed colours last
    for arm in arms:
        want = named_color(arm.mode if " [" in arm.name else arm.name)
        if want is None or want in out.values():
            free = [c for c in spare if c not in out.values()]
            want = free[0] if free else PALETTE_CYCLE[len(out) % len(PALETTE_CYCLE)]
        out[arm.name] = want
    return out


def by_bucket(c: Comparison, variant: str, n_boot: int = 1000) -> dict[str, list[tuple[int, stats.Interval]]]:
    """Per arm: (bucket, mean over probes with its CI) of one variant on the test entities."""
    out: dict[str, list[tuple[int, stats.Interval]]] = {}
    buckets = sorted({r["bucket"] for r in c.arms[0].items[0].values() if r.get("variant") == variant})
    for arm in c.arms:
        if arm.mode == "prior" and variant == "rank":
            continue
        for b in buckets:
            spec = MetricSpec(f"{variant}/{b}", _sk(variant, (b,)), "acc", +1)
            keys = _keys([arm], spec)
            if keys:
                out.setdefault(arm.name, []).append((b, stats.bootstrap(_matrix(arm, spec, keys), n_boot, seed=3)))
    return out


def figure(c: Comparison, arms: tuple[str, ...] = FIG1_ARMS):
    """Fig. 1 analog: accuracy by entity frequency bucket, one panel per probe variant, one line per arm with its
    95% CI band (seeds pooled); the leaf prior dashed. -> (matplotlib figure, runs drawn)."""
    import matplotlib.pyplot as plt

    from hmem_lit.analysis.style import STYLE

    pick = [a for a in c.arms if (a.mode if " [" in a.name else a.name) in arms]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(FIG1_VARIANTS), figsize=(7, 2.6), sharey=True, squeeze=False)
        for ax, (variant, title) in zip(axes[0], FIG1_VARIANTS):
            got = by_bucket(Comparison(c.corpus, pick, {}, []), variant)
            color = _colors(pick)
            for arm in pick:
                pts = got.get(arm.name)
                if not pts:
                    continue
                x = [b for b, _ in pts]
                y = [iv.estimate * 100 for _, iv in pts]
                lo = [iv.lo * 100 for _, iv in pts]
                hi = [iv.hi * 100 for _, iv in pts]
                style = "--" if arm.mode == "prior" else "-"
                seeds = "" if arm.mode == "prior" else f" ({len(arm.seeds)} seed{'s' * (len(arm.seeds) > 1)})"
                ax.plot(x, y, style, marker="o", color=color[arm.name], label=arm.name + seeds)
                ax.fill_between(x, lo, hi, color=color[arm.name], alpha=0.15, lw=0)
            ax.set_title(title, loc="left")
            ax.set_xlabel("frequency bucket (0 = rarest)")
            ax.set_xticks(range(5))
        axes[0][0].set_ylabel("accuracy, test entities (%)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.02))
        fig.suptitle(f"{c.corpus}: fact recall by entity frequency (mean over probes; bands: 95% CI)", fontsize=8)
        fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig, sorted({p.name for a in pick for p in a.runs})


# ------------------------------------------------------------------------------------------------ routing


def _keys_json(run: Path) -> dict[str, Any] | None:
    """The run's data directory's tree/keys.json (each key's main leaf), or None."""
    from types import SimpleNamespace

    from hmem_lit.evaluation.resources import resolve_data_dir

    cfg = read_json(run / "final.json").get("config") or {}
    d = resolve_data_dir(SimpleNamespace(data=SimpleNamespace(dir=(cfg.get("data") or {}).get("dir", ""))))
    p = Path(d) / "tree" / "keys.json"
    return read_json(p) if p.is_file() else None


def routing_table(c: Comparison) -> Any | None:
    """Per routed arm and variant (test entities, seeds pooled): the share of prompts routed to their entity's main
    leaf, and the accuracy when routed there vs elsewhere (with the item counts)."""
    from hmem_lit.analysis.tables import Table

    rows = []
    for arm in c.arms:
        if arm.mode not in ("fetched", "random"):
            continue
        keys = _keys_json(arm.runs[0])
        if not keys:
            continue
        for variant in ("base", "para", "qa"):
            hit: list[float] = []
            miss: list[float] = []
            for s in arm.items:
                for r in s.values():
                    if r.get("variant") != variant or (r.get("split") or "test") != "test" or "path" not in r:
                        continue
                    k = keys.get(r["entity"])
                    if k is not None:
                        (hit if list(r["path"]) == k["main_path"] else miss).append(float(r["acc"]))
            if hit or miss:
                pct = lambda xs: f"{100 * np.mean(xs):.1f} (n={len(xs)})" if xs else "-"  # noqa: E731
                share = 100 * len(hit) / (len(hit) + len(miss))
                rows.append([arm.name, variant, f"{share:.1f}", pct(hit), pct(miss)])
    if not rows:
        return None
    head = ["arm", "variant", "routed to the entity's leaf (%)", "accuracy there (%, items)"]
    head.append("accuracy elsewhere (%, items)")
    return Table(head, rows, sorted({p.name for a in c.arms for p in a.runs}))
