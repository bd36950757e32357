"""Figure kinds of the knowledge-separation analyses (issue 17), drawn from what `hmem edit` and `hmem attribute`
wrote into each memory run's `separation/` folder (the collected table only says which runs there are):

- editing: per edit (`separation/edit-*.json`), the memory edit and the dense fine-tune side by side: edit
  success, the old answer's retention, and the locality change (points, bootstrap 95% interval) on the unedited
  facts; notes carry the bit-identity check and the held-out loss.
- attribution: per frequency bucket (mean over the fact probes) the accuracy with the fetched memory, with each
  bank level's block ablated, with the memory off (and the generic block).
- errors: the fetched memory's wrong answers by cause per entity kind, and accuracy by leaf purity; notes carry
  examples (prompt, greedy output, gold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmem_lit.analysis.collect import apply_spec
from hmem_lit.analysis.figures import Drawn, Skip, register
from hmem_lit.analysis.style import KIND_COLORS, PALETTE, legend_below, new_fig


def _memory_runs(df: pd.DataFrame, spec: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    rows, notes = apply_spec(df, spec, None)
    mem = rows[rows.kind == "memory"].drop_duplicates("run")
    if "path" not in mem or mem.empty:
        raise Skip("no memory run")
    return mem, notes


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


@register("editing")
def plot_editing(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    mem, notes = _memory_runs(df, spec)
    edits = []
    for _, r in mem.iterrows():
        for f in sorted(Path(r.path).glob("separation/edit-*.json")):
            e = _read(f)
            if e and "memory" in e:
                edits.append((r, e))
    if not edits:
        raise Skip("no edit results (hmem edit RUN --baseline ANCHOR_RUN)")
    # one row per edit (its tag: people, seed, levels, replay, steps, LRs), bars horizontal: long labels stay readable
    fig, axes = new_fig({**spec, "ncols": 3}, 3, panel_h=max(2.3, 0.32 * len(edits) + 0.8))
    labels = [e.get("tag", "edit").removeprefix("edit-") for _, e in edits]
    x = np.arange(len(edits))
    colors = {"memory": PALETTE.get("ffn", "#1f77b4"), "dense": KIND_COLORS["anchor"]}
    for j, k in enumerate(("memory", "dense")):
        off = (j - 0.5) * 0.38
        have = [e.get(k) for _, e in edits]
        succ = [100 * h["edit_success"]["after"] if h else np.nan for h in have]
        old = [100 * h["old_answer"]["after"] if h else np.nan for h in have]
        loc = [100 * h["locality"]["diff"] if h else np.nan for h in have]
        err = np.array(
            [
                [
                    100 * (h["locality"]["diff"] - h["locality"]["ci95"][0]),
                    100 * (h["locality"]["ci95"][1] - h["locality"]["diff"]),
                ]
                if h
                else [np.nan, np.nan]
                for h in have
            ]  # fmt: skip
        ).T
        lab = "memory edit (anchor frozen)" if k == "memory" else "dense fine-tune (anchor-only run)"
        axes[0].barh(x - off, succ, 0.36, color=colors[k], label=lab)
        axes[1].barh(x - off, old, 0.36, color=colors[k])
        axes[2].barh(x - off, loc, 0.36, xerr=err, color=colors[k], capsize=2)
    for i, (ax, t) in enumerate(
        zip(axes, ("edit success: new answer (%)", "old answer still given (%)", "locality: change (pts)"))
    ):
        ax.set_yticks(x, labels if i == 0 else [""] * len(labels), fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(t)
    axes[2].axvline(0, color="black", lw=0.6)
    for r, e in edits:
        m = e["memory"]
        idr = m.get("identity", {})
        lv = "; ".join(f"level {lvl}: {v['changed']} rows changed, {v['changed_off_paths']} off the edited paths"
                       for lvl, v in idr.get("levels", {}).items())  # fmt: skip
        notes.append(
            f"{r.run} {e.get('tag')}: {e['n']} people, {e['edited_documents']} documents, {e['steps']} steps; memory "
            f"edit {m['edit_success']['after']:.1%}, locality {m['locality']['before']:.3f} -> "
            f"{m['locality']['after']:.3f}; anchor bit-identical {idr.get('anchor_identical')}, untouched rows "
            f"bit-identical {idr.get('all_untouched_identical')} ({lv}); val loss {m['val_loss']['before']:.3f} -> "
            f"{m['val_loss']['after']:.3f}"
        )
        if "dense" in e:
            d = e["dense"]
            notes.append(
                f"{r.run} {e.get('tag')}: dense fine-tune edit {d['edit_success']['after']:.1%}, locality "
                f"{d['locality']['before']:.3f} -> {d['locality']['after']:.3f}, val loss "
                f"{d['val_loss']['before']:.3f} -> {d['val_loss']['after']:.3f}"
            )
    legend_below(fig, axes)
    return Drawn(fig, sorted({r.run for r, _ in edits}), notes)


def _attributions(df: pd.DataFrame, spec: dict[str, Any]) -> tuple[list[tuple[Any, dict]], list[str]]:
    mem, notes = _memory_runs(df, spec)
    out = [(r, a) for _, r in mem.iterrows() if (a := _read(Path(r.path) / "separation" / "attribution.json"))]
    if not out:
        raise Skip("no attribution results (hmem attribute RUN)")
    return out, notes


COND_LABELS = {"fetched": "fetched memory", "none": "memory off", "generic": "generic block"}
COND_COLORS = {
    "fetched": "#1f77b4",
    "minus_l1": "#6baed6",
    "minus_l2": "#fd8d3c",
    "none": "#7f7f7f",
    "generic": "#bcbd22",
}


@register("attribution")
def plot_attribution(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    found, notes = _attributions(df, spec)
    fig, axes = new_fig(spec, len(found))
    for ax, (r, a) in zip(axes, found):
        conds = a["conditions"]
        probes = [k for k in conds["fetched"] if "/" not in k and k != "sk"]
        ks = sorted({int(k.split("bucket")[1]) for k in conds["fetched"] if "/bucket" in k})
        width = 0.8 / len(conds)
        for j, (c, v) in enumerate(conds.items()):
            ys = [100 * np.nanmean([v.get(f"{p}/bucket{k}", np.nan) for p in probes]) for k in ks]
            lab = COND_LABELS.get(c, c.replace("minus_l", "level ") + " block ablated")
            ax.bar(np.arange(len(ks)) + (j - (len(conds) - 1) / 2) * width, ys, width * 0.95, label=lab,
                   color=COND_COLORS.get(c, "#999999"))  # fmt: skip
        ax.set_xticks(range(len(ks)), [f"{k}\n(rarest)" if k == ks[0] else str(k) for k in ks])
        ax.set_xlabel("entity frequency bucket")
        ax.set_ylabel("fact accuracy, mean over probes (%)")
        ax.set_title(str(r.label), fontsize=7)
        h = a["held"]
        lost = ", ".join(
            f"{k.replace('minus_l', 'level ')} ablated loses {v['lost_share_of_right']:.1%}"
            for k, v in h.items()
            if isinstance(v, dict)
        )
        notes.append(
            f"{r.run}: {a['items']} items; of the facts right with memory, {lost}; {h['anchor_share_of_right']:.1%} "
            f"are right with the memory off too; Avg-SK " + ", ".join(f"{k} {v['sk']:.3f}" for k, v in conds.items())
        )
        if a.get("held_by"):
            notes.append(
                f"{r.run}: held by (facts right with memory): " + ", ".join(f"{k} {v}" for k, v in a["held_by"].items())
            )
    legend_below(fig, axes)
    return Drawn(fig, [r.run for r, _ in found], notes)


@register("errors", keys=("max_examples",))
def plot_errors(df: pd.DataFrame, spec: dict[str, Any]) -> Drawn:
    found, notes = _attributions(df, spec)
    r, a = found[0]
    e = a["errors"]
    fig, axes = new_fig({**spec, "ncols": 3}, 3)
    kinds = list(e["by_kind"])
    bottom = np.zeros(len(kinds))
    for c, color in (("right", "#2ca02c"), ("routed_elsewhere", "#d62728"), ("not_stored", "#ff7f0e")):
        n = np.array([e["by_kind"][k][c] for k in kinds], float)
        tot = np.array([sum(e["by_kind"][k].values()) for k in kinds], float)
        share = 100 * n / np.maximum(tot, 1)
        axes[0].bar(kinds, share, bottom=bottom, color=color, label=c.replace("_", " "))
        bottom += share
    axes[0].set_ylabel("items (%)")
    axes[0].set_title("fetched memory: right, or why wrong", fontsize=7)
    bins = e["accuracy_by_purity"]
    axes[1].bar(
        [
            ("pure" if b["purity_range"][0] >= 0.999 else "{:g}-{:g}".format(*b["purity_range"])) + f"\n({b['items']})"
            for b in bins
        ],
        [100 * b["accuracy"] if b["accuracy"] is not None else np.nan for b in bins],
        color="#1f77b4",
    )
    axes[1].set_xlabel("routed leaf: share of its top kind")
    axes[1].set_ylabel("accuracy (%)")
    axes[1].set_title("routed to the entity's main leaf", fontsize=7)
    ents = e.get("accuracy_by_leaf_entities", [])
    axes[2].bar(
        [f"{b['entities'][0]}-{b['entities'][1] if b['entities'][1] < 10**9 else ''}\n({b['items']})" for b in ents],
        [100 * b["accuracy"] if b["accuracy"] is not None else np.nan for b in ents],
        color="#9467bd",
    )
    axes[2].set_xlabel("entities sharing the routed leaf")
    axes[2].set_ylabel("accuracy (%)")
    axes[2].set_title("routed to the entity's main leaf", fontsize=7)
    lr, ln = e["leaves_right"], e["leaves_not_stored"]
    notes.append(
        f"{r.run}: leaves of right items: purity {lr['mean_purity']:.3f}, {lr['mean_entities']:.1f} entities; of "
        f"not-stored items: purity {ln['mean_purity']:.3f}, {ln['mean_entities']:.1f} entities"
    )
    for x in e["examples"][: int(spec.get("max_examples", 8))]:
        notes.append(
            f"example ({x['cause'].replace('_', ' ')}, {x['probe']}, bucket {x['bucket']}): {x['prompt']!r} -> "
            f"{x['output']!r}, gold {x['answer']!r}; routed leaf {x['routed_leaf']} (main {x['main_leaf']}, "
            f"{x['leaf_kind']}, purity {x['leaf_purity']:.2f})"
        )
    legend_below(fig, axes[:1])
    return Drawn(fig, [r.run], notes)
