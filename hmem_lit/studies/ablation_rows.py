"""The rows of `hmem ablations`: one per complete, evaluated run below a sweeps root (with its gain over the
matching anchor and its seeds aggregated), and the committed record they are kept in (rows.csv, checks.csv)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmem_lit import runs
from hmem_lit.analysis.collect import fmt_count
from hmem_lit.config import ConfigError

_BUCKET = re.compile(r"^([a-z0-9_]+)/bucket(\d+)$")


# ---------------------------------------------------------------------------------------------------------------
# rows


def _rare(ev: dict[str, Any]) -> tuple[float, float]:
    """Mean accuracy over the probes' rarest bucket (bucket0) and over their most frequent bucket."""
    by: dict[str, dict[int, float]] = {}
    for k, v in ev.items():
        m = _BUCKET.match(k)
        if m and isinstance(v, (int, float)):
            by.setdefault(m.group(1), {})[int(m.group(2))] = float(v)
    if not by:
        return math.nan, math.nan
    return (float(np.mean([b[min(b)] for b in by.values()])), float(np.mean([b[max(b)] for b in by.values()])))


def run_row(run_dir: Path, sweep: str) -> dict[str, Any] | None:
    f = run_dir / "final.json"
    if not f.is_file():
        return None
    final = json.loads(f.read_text())
    ev = runs.eval_section(final, "fetched")
    if "hmem_sk" not in ev:
        return None
    cfg = final.get("config") or {}
    mem, an, tr, data = (cfg.get(k) or {} for k in ("memory", "anchor", "train", "data"))
    params = final.get("params") or {}
    levels = [int(r) for r in mem.get("levels") or []]
    used = [i + 1 for i, r in enumerate(levels) if r]
    rare, frequent = _rare(ev)
    try:
        sha = str(json.loads((run_dir / "manifest.json").read_text()).get("git_sha") or "")[:7]
    except (OSError, ValueError, AttributeError):
        sha = ""
    pa, pf = float(params.get("anchor", 0)), float(params.get("fetched", 0))
    mtype = mem.get("type", "none")
    layers = mem.get("layers", "all")
    return {
        "sweep": sweep,
        "study": run_dir.parent.name,
        "run": run_dir.name,
        "path": str(run_dir),
        "corpus": data.get("corpus", "facts") if data.get("source", "builtin") == "builtin" else data.get("source"),
        "seed": tr.get("seed", 0),
        "mode": tr.get("mode", "cotrain") if mtype != "none" else "anchor",
        "commit": sha,
        "tokens": final.get("tokens"),
        "n_layer": an.get("n_layer"),
        "memory_type": mtype,
        # memory.lora.target (memory.lora_target in runs before the rename)
        "lora_target": (mem.get("lora") or {}).get("target", mem.get("lora_target")) if mtype == "lora" else "",
        "layers": layers if isinstance(layers, str) else ",".join(map(str, layers)),
        "levels": ",".join(map(str, levels)) or "-",
        "level": used[0] if len(used) == 1 else 0,
        "params_anchor": pa,
        "params_fetched": pf,
        "params_bank": float(params.get("bank", 0)),
        "fetch_ratio": pf / pa if pa else math.nan,
        "sk": 100 * float(ev["hmem_sk"]),
        "ck": 100 * float(ev.get("hmem_ck", math.nan)),
        "wiki_ppl": float(ev.get("wiki_ppl", math.nan)),
        "val_bpb": float(ev.get("val_bpb", math.nan)),
        "rare": 100 * rare,
        "frequent": 100 * frequent,
        "train_time_s": float(final.get("train_time_s") or 0.0),
        "metric_version": _metric_version(run_dir),
        "eval_time_s": float(ev.get("eval_time_s") or 0.0),
    }


def _metric_version(run_dir: Path) -> int:
    """The metric version of the run's evaluation (fetched memory; an anchor's is under eval/none)."""
    for mode in ("fetched", "none"):
        try:
            return int(json.loads((run_dir / "eval" / mode / "results.json").read_text()).get("metric_version", 1))
        except (OSError, ValueError, AttributeError):
            continue
    return 1


def _setting(r: pd.Series) -> str:
    return f"{r.corpus}, {fmt_count(r.tokens)} tokens" if r.tokens == r.tokens and r.tokens else str(r.corpus)


def collect_rows(root: str | Path) -> pd.DataFrame:
    """One row per complete, evaluated run below root/<study>/ (the baselines' sweep is `_baselines`)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory; run the sweeps first (docs/ablations.md) or pass --root")
    rows = []
    for study in sorted(p for p in root.iterdir() if p.is_dir()):
        sweep = study.name if study.name == "_baselines" else study.name.split("-")[0]
        for d in sorted(p for p in study.iterdir() if p.is_dir() and not p.name.startswith("_")):
            r = run_row(d, sweep)
            if r:
                rows.append(r)
    df = pd.DataFrame(rows)
    if len(df):  # a corpus at one token budget: the unit of every table and figure panel
        df["setting"] = df.apply(_setting, axis=1)
    return df


def with_gain(df: pd.DataFrame) -> pd.DataFrame:
    """Add `anchor_sk` / `gain` (SK minus the matching anchor-only run: same corpus, depth, tokens, seed if there
    is one) to every row."""
    df = df.copy()
    anchors = df[df.memory_type == "none"]
    base, rare = [], []
    for r in df.itertuples():
        a = anchors[(anchors.corpus == r.corpus) & (anchors.n_layer == r.n_layer) & (anchors.tokens == r.tokens)]
        a = a[a.seed == r.seed] if (a.seed == r.seed).any() else a
        base.append(a.sk.mean() if len(a) else math.nan)
        rare.append(a.rare.mean() if len(a) else math.nan)
    df["anchor_sk"], df["anchor_rare"] = base, rare
    df["gain"], df["rare_gain"] = df.sk - df.anchor_sk, df.rare - df.anchor_rare
    return df


def aggregate(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean / std / n over seeds of each configuration (keys + setting: corpus and token budget)."""
    cols = [
        c
        for c in (
            "sk",
            "gain",
            "rare",
            "rare_gain",
            "wiki_ppl",
            "val_bpb",
            "params_fetched",
            "params_bank",
            "fetch_ratio",
        )
        if c not in keys
    ]
    g = df.groupby(["setting", "corpus", *keys], dropna=False)
    out = g[cols].mean()
    out["sk_std"] = g["sk"].std(ddof=1).fillna(0.0)
    out["n"] = g.size()
    for c in ("sk", "wiki_ppl", "val_bpb"):  # per-seed values, for the intervals of the checks
        out[f"{c}_vals"] = g[c].apply(list)
    out["paths"] = (  # run directories (rows read back from a rows.csv have none)
        g["path"].apply(lambda s: [p for p in s if isinstance(p, str)])
        if "path" in df.columns
        else [[] for _ in range(len(out))]
    )
    return out.reset_index()


def read_rows(path: str | Path) -> pd.DataFrame:
    """A committed rows.csv (the record of an earlier build): the page regenerates from it without the runs."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--rows {p}: no such file (a rows.csv written by `hmem ablations`)")
    df = pd.read_csv(p, keep_default_na=False, na_values=[""])
    old_rows = (("val_bpb", math.nan), ("metric_version", 1), ("mode", ""), ("commit", ""))
    for c, default in old_rows:  # rows written before these columns
        if c not in df.columns:
            df[c] = default
    df["lora_target"] = df["lora_target"].fillna("")
    return df


def read_checks(path: Path) -> dict[tuple[str, str], list[str]]:
    """A committed checks.csv -> {(sweep, setting): verdict lines} ({} when there is none)."""
    if not path.is_file():
        return {}
    out: dict[tuple[str, str], list[str]] = {}
    for r in pd.read_csv(path, keep_default_na=False).itertuples():
        out.setdefault((r.sweep, r.setting), []).append(r.line)
    return out


def merge_rows(new: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    """new, plus the rows of `old` whose (sweep, setting) new does not cover."""
    have = set(zip(new.sweep, new.setting))
    keep = old[[(a, b) not in have for a, b in zip(old.sweep, old.setting)]]
    return pd.concat([new, keep], ignore_index=True) if len(keep) else new
