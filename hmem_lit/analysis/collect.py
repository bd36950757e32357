"""Run directories -> one table (pandas DataFrame, written as runs.csv by the report).

Layout: **long format, one row per run x evaluation memory mode** (`eval_mode` = fetched | generic | none | blocked);
a complete run that has not been evaluated yet has one row with an empty `eval_mode` (its training metrics
`val_loss` / `val_ppl` still plot). Long rows keep every mode's numbers without inventing column names per mode;
tables pivot them back (e.g. Avg-SK [fetched] vs Avg-SK [generic]).

Run classification (`kind`), derived from config + params only, never from names:
1. `memory.type != none`                                             -> `memory`
2. no memory, anchor params within 2% of some memory run's anchor     -> `anchor` (the anchor those memories extend)
3. no memory, params 1.7x-2.3x some memory run's anchor               -> `dense-2x`
4. no memory, params within 5% of some memory run's runtime params    -> `same-runtime dense` (anchor + fetched)
5. otherwise (no memory run to compare with)                          -> `anchor`
Runs that differ only in seed (and name / output dir / init_from / thread settings; same parameter counts) share a
`config_id`; figures
average over them and draw error bars (std over seeds) when there are several.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmem_lit import runs
from hmem_lit.config import RENAMED, STORAGE_KIND
from hmem_lit.config_text import load_yaml
from hmem_lit.effects import FIELD_EFFECTS
from hmem_lit.utils import fmt_count  # noqa: F401 (re-exported: tables and figures read it from here)

TOL_SAME, TOL_RUNTIME, DENSE2X = 0.02, 0.05, (1.7, 2.3)
KINDS = ("anchor", "memory", "dense-2x", "same-runtime dense")
# memory.storage's, memory.lora's and retriever.tree's keys in the flat layout config ids were first computed in
# (memory.offload, memory.lora_target, retriever.router, ...): a run's config is hashed in that layout, so a run
# keeps its config_id across the moves to the sections, and runs trained before and after them fall in one arm
_SECTIONS = ("memory.storage.", "memory.lora.", "retriever.tree.")
_FLAT = {new: old for old, new in {**STORAGE_KIND, **RENAMED}.items() if new.startswith(_SECTIONS)}
# section fields added after config ids were first computed: at their default they are not part of the id
_SINCE = {"memory.lora.scaling": "alpha/r"}
# config keys that are not part of a run's configuration identity (bookkeeping, evaluation settings, the seed):
# ignored by config_id; declared once in effects.FIELD_EFFECTS (fields without "id")
_NOT_CONFIG = tuple(tuple(_FLAT.get(k, k).split(".")) for k, eff in FIELD_EFFECTS.items() if "id" not in eff)


def _flat(top: str, node: dict[str, Any]) -> dict[str, Any]:
    """A run's `top` config section (memory, retriever) with its moved sub-sections' keys as the flat keys they
    were (see _FLAT); a sub-section key that never was flat stays in the sub-section, unless it is at the default
    it was added with (_SINCE)."""
    flat = dict(node)
    for sub in (p.split(".")[1] for p in _SECTIONS if p.startswith(top + ".")):
        section = node.get(sub)
        if not isinstance(section, dict):
            continue
        del flat[sub]
        prefix = f"{top}.{sub}."
        rest = {k: v for k, v in section.items() if _SINCE.get(prefix + k, object()) != v}
        for new, old in _FLAT.items():  # <top>.<sub>.<key> -> <top>.<old key>
            if new.startswith(prefix) and new[len(prefix) :] in rest:
                flat[old.split(".", 1)[1]] = rest.pop(new[len(prefix) :])
        if rest:
            flat[sub] = rest
    return flat


@dataclass
class Collected:
    table: pd.DataFrame  # one row per run x eval mode (see module docstring)
    incomplete: list[dict[str, Any]] = field(default_factory=list)  # {run, status, reason}
    root: Path = Path(".")

    @property
    def runs(self) -> pd.DataFrame:
        """One row per complete run (its first eval row), for per-run questions."""
        return self.table.drop_duplicates("run") if len(self.table) else self.table


def _config_id(cfg: dict[str, Any], params: dict[str, Any]) -> str:
    c = json.loads(json.dumps(cfg))  # deep copy
    for top in ("memory", "retriever"):
        if isinstance(c.get(top), dict):
            c[top] = _flat(top, c[top])
    c["_params"] = {k: params.get(k) for k in ("anchor", "fetched", "bank")}
    for path in _NOT_CONFIG:
        node = c
        for k in path[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:8]


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else np.nan


def _layers(spec: Any) -> str:
    """memory.layers as one cell: all | early | middle | late | 0,2,4."""
    return spec if isinstance(spec, str) else ",".join(map(str, spec or []))


def _base_row(run_dir: Path, root: Path, final: dict[str, Any]) -> dict[str, Any]:
    cfg = final.get("config") or {}
    mem, tr, an = _flat("memory", cfg.get("memory") or {}), cfg.get("train") or {}, cfg.get("anchor") or {}
    params, metrics = final.get("params") or {}, final.get("metrics") or {}
    levels = [int(r) for r in (mem.get("levels") or [])]
    used = [i + 1 for i, r in enumerate(levels) if r]
    pa, pf, pb = _num(params.get("anchor")), _num(params.get("fetched", 0)), _num(params.get("bank", 0))
    return {
        "run": run_dir.name,  # collect() replaces it with the path relative to the collection root
        "experiment": final.get("experiment", cfg.get("experiment")),
        "name": final.get("name", cfg.get("name")),
        "status": final.get("status", "complete"),
        "kind": "",
        "label": "",
        "memory_type": mem.get("type", "none"),
        "train_mode": tr.get("mode", "anchor"),
        "levels": ",".join(map(str, levels)) or "-",
        "n_levels": len(used),
        "level": float(used[0]) if len(used) == 1 else np.nan,  # the memory level of single-level runs
        "generic": bool(mem.get("generic", False)),
        # the bank's number type and, for bfloat16, its rounding (runs before these fields were float32)
        "memory_dtype": mem.get("dtype", "float32") if mem.get("type", "none") != "none" else "-",
        "rounding": mem.get("rounding", "stochastic") if mem.get("dtype") == "bfloat16" else "-",
        "seed": tr.get("seed"),
        "layers": _layers(mem.get("layers", "all")),
        "anchor_preset": an.get("preset"),
        "n_layer": an.get("n_layer"),
        "d_model": an.get("d_model"),
        "params_anchor": pa,
        "params_fetched": pf,
        "params_bank": pb,
        "params_runtime": _num(params.get("runtime", pa + pf)),
        "fetch_ratio": pf / pa if pa and not math.isnan(pa) else np.nan,
        "steps": final.get("steps"),
        "tokens": final.get("tokens"),
        "train_time_s": final.get("train_time_s"),
        "tokens_per_s": _num((final.get("throughput") or {}).get("tokens_per_s")),  # throughput.py
        "mfu": _num((final.get("throughput") or {}).get("mfu")),
        "val_loss": _num(metrics.get("val/loss")),
        "val_ppl": _num(metrics.get("val/ppl")),
        "config_id": _config_id(cfg, params),
        "path": str(run_dir),
    }


def _close(a: float, b: float, tol: float) -> bool:
    return bool(a and b) and abs(a - b) <= tol * max(abs(a), abs(b))


def classify(rows: list[dict[str, Any]]) -> None:
    """Set `kind` and `label` on base rows (the rule is in the module docstring)."""
    mem = [r for r in rows if r["memory_type"] != "none"]
    for r in rows:
        p = r["params_anchor"]
        if r["memory_type"] != "none":
            r["kind"] = "memory"
        elif any(_close(p, m["params_anchor"], TOL_SAME) for m in mem):
            r["kind"] = "anchor"
        elif any(m["params_anchor"] and DENSE2X[0] <= p / m["params_anchor"] <= DENSE2X[1] for m in mem):
            r["kind"] = "dense-2x"
        elif any(_close(p, m["params_runtime"], TOL_RUNTIME) for m in mem):
            r["kind"] = "same-runtime dense"
        else:
            r["kind"] = "anchor"
        if r["kind"] == "memory":
            mode = "" if r["train_mode"] == "frozen" else f" [{r['train_mode']}]"
            dtype = {"bfloat16": " bf16", "-": ""}.get(r.get("memory_dtype", "-"), "")
            if dtype and r.get("rounding") == "nearest":
                dtype += "-nearest"
            r["label"] = (
                f"{fmt_count(p)} + {r['memory_type']} {fmt_count(r['params_fetched'])} of "
                f"{fmt_count(r['params_bank'])}{dtype}{mode}"
            )
        else:
            r["label"] = {
                "anchor": "anchor {}",
                "dense-2x": "dense {} (2x)",
                "same-runtime dense": "dense {} (same runtime)",
            }[r["kind"]].format(fmt_count(p))
    seen: dict[str, list[str]] = {}  # a label shared by different configs gets a #k suffix
    for r in sorted(rows, key=lambda r: r["run"]):
        ids = seen.setdefault(r["label"], [])
        if r["config_id"] not in ids:
            ids.append(r["config_id"])
    tokens: dict[str, set] = {}
    for r in rows:
        tokens.setdefault(r["label"], set()).add(r.get("tokens"))
    for r in rows:
        ids = seen[r["label"]]
        if len(ids) > 1:  # e.g. the anchor at equal tokens and at equal wall-clock: say what differs
            same_tokens = len(tokens[r["label"]]) == 1 or not r.get("tokens")
            r["label"] += f" #{ids.index(r['config_id']) + 1}" if same_tokens else f", {fmt_count(r['tokens'])} tokens"


def name_labels(rows: list[dict[str, Any]]) -> None:
    """Where every configuration's runs share one name (seeds as <name>_seed<k>, as `hmem quickstart --seeds`
    writes them) and the names differ between configurations, the legends and tables say the run's name (the
    report's comparison tables name the arms so too); a sweep's trials keep the label that says their config."""
    stem = {r["run"]: re.sub(r"_seed\d+$", "", str(r["name"])) for r in rows}
    by_cfg: dict[str, set[str]] = {}
    for r in rows:
        by_cfg.setdefault(r["config_id"], set()).add(stem[r["run"]])
    names = [next(iter(v)) for v in by_cfg.values()]
    if rows and all(len(v) == 1 for v in by_cfg.values()) and len(set(names)) == len(names):
        for r in rows:
            r["label"] = stem[r["run"]]


def paint(rows: list[dict[str, Any]]) -> None:
    """One colour per label for every figure of a report (`color`): the style's fixed colour for a known run name,
    else its group's colour (memory type, or baseline kind), shaded when a group holds several labels."""
    from hmem_lit.analysis.style import group_color, named_color, shaded  # matplotlib: only when painting

    labels = {
        r["label"]: r
        for r in sorted(rows, key=lambda r: (KINDS.index(r["kind"]) if r["kind"] in KINDS else 9, r["label"]))
    }
    shades = shaded([(lab, *group_color(r["kind"], r["memory_type"])) for lab, r in labels.items()])
    for r in rows:
        r["color"] = named_color(r["label"]) or shades[r["label"]]


def _incomplete_reason(run_dir: Path) -> str:
    recs = [r for r in runs.read_metrics(run_dir) if "step" in r]
    target = ""
    try:
        cfg = load_yaml((run_dir / runs.CONFIG).read_text(), str(run_dir / runs.CONFIG)) or {}
        target = f" of {int(cfg['train']['max_tokens']):,} tokens"
    except (OSError, KeyError, TypeError, ValueError):
        pass
    if not recs:
        return "no final.json and nothing logged (failed at start, or still starting)"
    last = recs[-1]
    return f"no final.json; last logged step {last['step']} ({last.get('tokens', 0):,}{target})"


def collect(root: str | Path | None, extra: list[Path] | tuple[Path, ...] = ()) -> Collected:
    """Every run directory below `root` (None: none) plus `extra` run dirs (e.g. sweep trials stored elsewhere)."""
    extra_dirs = {Path(p).resolve() for p in extra if Path(p).is_dir()}
    if root is None:
        root = Path(os.path.commonpath([str(p) for p in extra_dirs])) if extra_dirs else Path(".")
        found: set[Path] = set()
    else:
        root = Path(root).resolve()
        found = set(runs.list_runs(root))
    dirs = sorted(found | extra_dirs)
    outside = [str(d) for d in dirs if not d.is_relative_to(root)]
    ext_root = Path(os.path.commonpath(outside)).parent if outside else root  # names like fx/run for those
    base, evals, incomplete = [], [], []
    for d in dirs:
        rel = d.name if d == root else str(d.relative_to(root if d.is_relative_to(root) else ext_root))
        if not runs.is_complete(d):
            incomplete.append({"run": rel, "status": "incomplete", "reason": _incomplete_reason(d)})
            continue
        try:
            final = runs.read_final(d)
        except (OSError, ValueError) as e:
            incomplete.append({"run": rel, "status": "unreadable", "reason": f"final.json: {e}"})
            continue
        if final.get("status", "complete") != "complete":
            why = final.get("error") or final.get("reason") or "final.json says so"
            incomplete.append({"run": rel, "status": str(final.get("status")), "reason": str(why)})
            continue
        row = _base_row(d, root, final)
        row["run"] = rel
        base.append(row)
        evals.append(final.get("eval") or {})
    classify(base)
    name_labels(base)
    paint(base)
    rows = []
    for row, ev in zip(base, evals):
        modes = {m: v for m, v in ev.items() if isinstance(v, dict)}
        if not modes:
            rows.append({**row, "eval_mode": ""})
        for mode, vals in modes.items():
            rows.append({**row, "eval_mode": mode, **{k: _num(v) for k, v in vals.items() if not isinstance(v, dict)}})
    return Collected(pd.DataFrame(rows), incomplete, root)


def pick_mode(df: pd.DataFrame, mode: str | None) -> pd.DataFrame:
    """One row per run: its `mode` evaluation. A run without memory counts its `none` evaluation as any mode (all
    modes are the same model); a run never evaluated keeps its training-metrics row (eval columns NaN, so a
    figure of an eval metric reports it as missing instead of dropping it silently)."""
    if df.empty or mode is None:
        return df.drop_duplicates("run")
    out = []
    for _, g in df.groupby("run", sort=False):
        ok = g[g.eval_mode == mode]
        if ok.empty and g.memory_type.iloc[0] == "none":
            ok = g[g.eval_mode.isin(["none", "fetched", "generic"])]
        if ok.empty and (g.eval_mode == "").all():
            ok = g
        if not ok.empty:
            out.append(ok.iloc[:1])
    return pd.concat(out, ignore_index=True) if out else df.iloc[:0]


def select(df: pd.DataFrame, where: dict[str, Any] | None) -> pd.DataFrame:
    """Rows matching every `column: value` (or `column: [values]`) of `where`; unknown columns match nothing."""
    for col, val in (where or {}).items():
        if col not in df.columns:
            return df.iloc[:0]
        vals = val if isinstance(val, list) else [val]
        df = df[df[col].isin(vals)]
    return df


def matching_anchor(anchors: pd.DataFrame, params_anchor: float, seed: Any = None) -> pd.DataFrame:
    """Anchor-only rows with the same anchor size (within 2%); the same seed when that run exists."""
    if anchors.empty:
        return anchors
    same = anchors[[_close(p, params_anchor, TOL_SAME) for p in anchors.params_anchor]]
    if seed is not None and (same.seed == seed).any():
        return same[same.seed == seed]
    return same


def probes(df: pd.DataFrame) -> dict[str, list[int]]:
    """Fact probes present in the table: `<probe>/bucket<k>` columns -> {probe: sorted buckets}."""
    out: dict[str, list[int]] = {}
    for c in df.columns:  # exactly <probe>/bucket<k>: not route/..., para/..., rank/... (other measures)
        m = _PROBE_BUCKET.fullmatch(c)
        if m and df[c].notna().any():
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return {p: sorted(ks) for p, ks in sorted(out.items())}


_PROBE_BUCKET = re.compile(r"([^/]+)/bucket(\d+)")


def related_baselines(rows: pd.DataFrame, memory: pd.DataFrame) -> pd.DataFrame:
    """The memory rows plus only those no-memory rows that are baselines *of these memory runs*, by their kind: an
    `anchor` of the same size, a `dense-2x` 1.7-2.3x that size, a `same-runtime dense` of their runtime size."""
    anchors, runtimes = memory.params_anchor.dropna().tolist(), memory.params_runtime.dropna().tolist()

    def keep(r: pd.Series) -> bool:
        if r.memory_type != "none":
            return r.run in set(memory.run)
        p = r.params_anchor
        if r.kind == "dense-2x":
            return any(DENSE2X[0] <= p / a <= DENSE2X[1] for a in anchors)
        if r.kind == "same-runtime dense":
            return any(_close(p, q, TOL_RUNTIME) for q in runtimes)
        return any(_close(p, a, TOL_SAME) for a in anchors)

    return rows[rows.apply(keep, axis=1)] if len(rows) else rows


def same_budget(rows: pd.DataFrame) -> pd.DataFrame:
    """Fixed-runtime-budget studies (Table 8, Fig. 4b): memory rows whose runtime params match a `same-runtime
    dense` run's size (within 5%), those dense runs, and the anchor-only runs of the memory rows' anchors."""
    dense = rows[rows.memory_type == "none"]
    budgets = dense[dense.kind == "same-runtime dense"].params_anchor.tolist()
    mem = rows[
        (rows.memory_type != "none")
        & rows.params_runtime.apply(lambda q: any(_close(q, p, TOL_RUNTIME) for p in budgets))
    ]
    if mem.empty:
        return mem
    anchors = mem.params_anchor.tolist()
    base = dense[
        dense.params_anchor.apply(
            lambda p: (
                any(_close(p, q, TOL_RUNTIME) for q in mem.params_runtime)
                or any(_close(p, a, TOL_SAME) for a in anchors)
            )
        )
    ]
    return pd.concat([mem, base])


def main_anchor(rows: pd.DataFrame) -> pd.DataFrame:
    """Memory rows on the most common anchor size among them (ties: the largest) and their own baselines: the
    paper's Fig. 3 / 4a / Table 7 hold the anchor fixed, a mixed collection must not join different anchors."""
    mem = rows[rows.memory_type != "none"]
    if mem.empty:
        return rows
    counts = mem.groupby("params_anchor").run.nunique()
    pa = counts[counts == counts.max()].index.max()
    return related_baselines(rows, mem[mem.params_anchor == pa])


FILTERS = {
    "related_baselines": lambda d: related_baselines(d, d[d.memory_type != "none"]),
    "same_budget": same_budget,
    "main_anchor": main_anchor,
}


def apply_spec(df: pd.DataFrame, spec: dict[str, Any], mode: str | None) -> tuple[pd.DataFrame, list[str]]:
    """pick_mode -> select -> the spec's named `filter` (FILTERS); notes say which runs the filter left out."""
    rows = select(pick_mode(df, mode), spec.get("select"))
    f, notes = spec.get("filter"), []
    if f:
        if f not in FILTERS:
            raise ValueError(f"filter {f!r} unknown; known: {', '.join(FILTERS)}")
        kept = FILTERS[f](rows)
        out = sorted(set(rows.run) - set(kept.run))
        if out:
            notes.append(
                f"filter {f} left out {len(out)} run(s): {', '.join(out[:6])}" + (" ..." if len(out) > 6 else "")
            )
        rows = kept
    return rows, notes
