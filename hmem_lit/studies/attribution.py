"""Attribution and error analysis of a memory run (issue 17: which blocks hold which facts; why memory is wrong).

    hmem attribute RUN [--per-bucket K] [--seed 0]     -> <RUN>/separation/attribution.json (+ attribution_items.jsonl:
                                                          every item's path, cause, holder, per-condition scores)

Attribution: every bucketed probe item (or K per probe and bucket, seeded) is scored directly
(studies/direct.py) with the fetched memory, then with one bank level ablated at a time, with the memory off
and with the generic block. Ablating level l zeroes the whole level-l table; each item reads exactly one level-l
block (its own path's), so this is the item's own block ablated, for every item at once (a zeroed FFN unit adds
nothing). Per probe and bucket: the accuracy in each condition, and of the items right with memory the share each
ablation loses (the facts that level's block holds) and the mean drop of the gold log-likelihood.

Error analysis: each item the fetched memory gets wrong gets one cause:
- routed_elsewhere: the prompt's routed leaf is not its entity's main leaf (the most common leaf of the entity's
  training fact documents, the one routing diagnostics use), so the prompt read blocks that never saw the fact;
- not_stored: routed to the main leaf, and still wrong (the block saw the documents but does not hold the answer).
For the second kind, cluster mixing is measured by leaf purity: the share of a leaf's training documents of its
most common kind (wiki, element, country, synthetic) and the number of distinct entities in it; the report
compares the leaves of right and wrong items. Examples (prompt, gold, greedy output) per cause.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmem_lit.config import ConfigError
from hmem_lit.data.prepare import entity_fact_paths
from hmem_lit.data.tokenizer import load_tokenizer
from hmem_lit.evaluation.resources import check_threads
from hmem_lit.evaluation.routing import load_run_router
from hmem_lit.model import load_model
from hmem_lit.studies import direct
from hmem_lit.utils import atomic_write_text, set_threads, write_json

CAUSES = ("routed_elsewhere", "not_stored")
ENTITY_BINS = ((1, 3), (4, 7), (8, 15), (16, 10**9))  # entities whose fact documents share the routed leaf
PURITY_BINS = ((0.0, 0.5), (0.5, 0.8), (0.8, 0.999), (0.999, 1.0))  # the last: pure leaves


def sample_items(items: list[dict[str, Any]], per_bucket: int, seed: int) -> list[dict[str, Any]]:
    """per_bucket items per (probe, bucket), seeded; 0 = all."""
    if per_bucket <= 0:
        return items
    rng = np.random.default_rng([seed, 31])
    groups: dict[tuple[str, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it["probe"], int(it["bucket"])), []).append(i)
    keep = sorted(i for g in groups.values() for i in rng.permutation(g)[:per_bucket].tolist())
    return [items[i] for i in keep]


def leaf_purity(docs: list[dict], split: np.ndarray, paths: np.ndarray) -> dict[int, dict[str, Any]]:
    """leaf id -> {docs, kind (most common), purity (its share), entities (distinct)} over training documents."""
    kinds: dict[int, Counter] = {}
    ents: dict[int, set] = {}
    for d, s, p in zip(docs, split, paths):
        if s != 0:
            continue
        leaf = int(p[-1])
        kinds.setdefault(leaf, Counter())[d.get("kind", "?")] += 1
        if d.get("entity"):
            ents.setdefault(leaf, set()).add(d["entity"])
    out = {}
    for leaf, c in kinds.items():
        kind, n = c.most_common(1)[0]
        total = sum(c.values())
        out[leaf] = {"docs": total, "kind": kind, "purity": n / total, "entities": len(ents.get(leaf, ()))}
    return out


@torch.no_grad()
def greedy(model: Any, tok: Any, prompt: str, path: np.ndarray | None, n: int = 6) -> str:
    """The model's greedy continuation of `prompt` (n tokens, fetched along `path`; None: memory off)."""
    ids = tok.encode(prompt)
    p = None if path is None else torch.as_tensor(np.asarray(path)[None], dtype=torch.long)
    for _ in range(n):
        logits = model(torch.tensor([ids]), paths=p, memory_mode="fetched" if p is not None else "none")
        nxt = int(logits[0, -1].argmax())
        if nxt == tok.eot_id:
            break
        ids.append(nxt)
    return tok.decode(ids[len(tok.encode(prompt)) :]).strip()


def holder(right: bool, ablated_right: dict[str, bool], right_off: bool) -> str | None:
    """Which blocks hold a fact the memory gets right (None: it is wrong): "anchor" (right with the memory off
    too), "level<l>" (only ablating level l's block loses it), "all of ..." (ablating any one loses it: several
    levels needed), "redundant" (no single ablation loses it, the memory off does)."""
    if not right:
        return None
    if right_off:
        return "anchor"
    lost = [k.replace("minus_l", "level") for k, v in ablated_right.items() if not v]
    if not lost:
        return "redundant"
    return lost[0] if len(lost) == 1 else "all of " + "+".join(lost)


def _by(items: list[dict[str, Any]], values: np.ndarray) -> dict[str, float]:
    """Mean of values per probe and per probe/bucket, and "sk" (the mean over probes)."""
    out: dict[str, float] = {}
    probes = sorted({it["probe"] for it in items})
    pr = np.array([it["probe"] for it in items])
    bk = np.array([int(it["bucket"]) for it in items])
    for p in probes:
        m = pr == p
        out[p] = float(values[m].mean())
        for b in sorted(set(bk[m].tolist())):
            out[f"{p}/bucket{b}"] = float(values[m & (bk == b)].mean())
    out["sk"] = float(np.mean([out[p] for p in probes])) if probes else float("nan")
    return out


def _attribution_items(
    run_dir: Path, cfg: Any, per_bucket: int, seed: int
) -> tuple[Path, Any, list[dict[str, Any]], list, np.ndarray]:
    """The probe items to score (sampled), encoded and routed -> (data dir, tokenizer, items, encoded, paths)."""
    root = direct.facts_data_dir(run_dir, cfg, "attribution")
    tok = load_tokenizer(root)
    items = sample_items(direct.probe_items(root), per_bucket, seed)
    if not items:
        raise ConfigError(f"{root}/questions: no bucketed probe items (prepare the data with a facts corpus)")
    enc = direct.encode(items, tok)
    routed = np.asarray(load_run_router(cfg).route([it.get("route_text") or it["prompt"] for it in items]))
    return root, tok, items, enc, routed


def _score_conditions(
    model: Any, cfg: Any, enc: list, routed: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every item scored with the fetched memory, each bank level ablated (zeroed, then restored), the memory off
    and the generic block -> (right, gold log-likelihood), each condition -> per item."""
    ok, lp = {}, {}
    ok["fetched"], lp["fetched"] = direct.score(model, enc, routed)
    for lvl, _, t in model.memory.bank.tables():
        saved = t.detach().clone()
        with torch.no_grad():
            t.zero_()
        ok[f"minus_l{lvl}"], lp[f"minus_l{lvl}"] = direct.score(model, enc, routed)
        with torch.no_grad():
            t.copy_(saved)
    ok["none"], lp["none"] = direct.score(model, enc, None)
    if cfg.memory.generic:
        ok["generic"], lp["generic"] = direct.score(model, enc, routed, memory_mode="generic")
    return ok, lp


def _held(
    items: list[dict[str, Any]], ok: dict[str, np.ndarray], lp: dict[str, np.ndarray]
) -> tuple[dict[str, Any], list[str | None]]:
    """What each level's block holds of the facts the memory gets right -> (the report's `held`, each item's
    holder)."""
    right = ok["fetched"]
    held: dict[str, Any] = {}
    for k in ok:
        if k.startswith("minus_l"):
            lost = right & ~ok[k]
            held[k] = {
                "lost_share_of_right": float(lost.sum() / max(1, right.sum())),
                "lost": int(lost.sum()),
                "mean_lp_drop": float((lp["fetched"] - lp[k]).mean()),
                "by_probe": _by([it for it, r in zip(items, right) if r], lost[right].astype(float))
                if right.any()
                else {},
            }
    both = [k for k in ok if k.startswith("minus_l")]
    only_both = right & np.all([ok[k] for k in both], axis=0) & ~ok["none"]  # survives each single ablation
    held["redundant_share_of_right"] = float(only_both.sum() / max(1, right.sum()))
    held["anchor_share_of_right"] = float((right & ok["none"]).sum() / max(1, right.sum()))
    held_by = [holder(bool(r), {k: bool(ok[k][i]) for k in both}, bool(ok["none"][i])) for i, r in enumerate(right)]
    return held, held_by


def _causes(
    items: list[dict[str, Any]], right: np.ndarray, routed: np.ndarray, main_leaf: dict[str, int]
) -> np.ndarray:
    """Each item's cause: "right", or for a wrong one "routed_elsewhere" / "not_stored" (module docstring)."""
    return np.array(
        [
            "right"
            if r
            else "routed_elsewhere"
            if main_leaf.get(it["entity"]) is not None and int(p[-1]) != main_leaf[it["entity"]]
            else "not_stored"
            for it, r, p in zip(items, right, routed)
        ]
    )


def _cause_counts(items: list[dict[str, Any]], cause: np.ndarray) -> dict[str, Any]:
    """{by_probe, by_kind}: the number of items per cause ("right" first)."""
    kinds = np.array([it["kind"] for it in items])
    errors: dict[str, Any] = {"by_probe": {}, "by_kind": {}}
    for p in sorted({it["probe"] for it in items}):
        m = np.array([it["probe"] == p for it in items])
        errors["by_probe"][p] = {c: int((cause[m] == c).sum()) for c in ("right", *CAUSES)}
    for k in sorted(set(kinds.tolist())):
        m = kinds == k
        errors["by_kind"][k] = {c: int((cause[m] == c).sum()) for c in ("right", *CAUSES)}
    return errors


def _leaf_stats(mask: np.ndarray, leaf_of: np.ndarray, purity: dict[int, dict[str, Any]]) -> dict[str, float]:
    """The items in mask and the mean purity, entities and documents of their routed leaves."""
    ls = [purity.get(int(x), {"purity": np.nan, "entities": np.nan, "docs": np.nan}) for x in leaf_of[mask]]
    return {
        "items": int(mask.sum()),
        "mean_purity": float(np.nanmean([x["purity"] for x in ls])) if ls else float("nan"),
        "mean_entities": float(np.nanmean([x["entities"] for x in ls])) if ls else float("nan"),
        "mean_docs": float(np.nanmean([x["docs"] for x in ls])) if ls else float("nan"),
    }


def _leaf_report(
    right: np.ndarray, cause: np.ndarray, leaf_of: np.ndarray, purity: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Cluster mixing: the routed leaves of right and not-stored items, and the accuracy of the items routed to
    their main leaf by that leaf's purity and by how many entities share it."""
    on_main = cause != "routed_elsewhere"
    out: dict[str, Any] = {
        "leaves_right": _leaf_stats(on_main & right, leaf_of, purity),
        "leaves_not_stored": _leaf_stats(cause == "not_stored", leaf_of, purity),
    }
    pur = np.array([purity.get(int(x), {"purity": np.nan})["purity"] for x in leaf_of])
    out["accuracy_by_purity"] = [  # routed to the main leaf: accuracy by the purity of that leaf
        {"purity_range": [lo, hi], "items": int(m.sum()), "accuracy": float(right[m].mean()) if m.any() else None}
        for lo, hi in PURITY_BINS
        for m in [on_main & (pur >= lo) & ((pur < hi) if hi < 1 else (pur <= hi))]
    ]
    n_ent = np.array([purity.get(int(x), {"entities": 0})["entities"] for x in leaf_of])
    out["accuracy_by_leaf_entities"] = [  # routed to the main leaf: accuracy by how many entities share it
        {"entities": [lo, hi], "items": int(m.sum()), "accuracy": float(right[m].mean()) if m.any() else None}
        for lo, hi in ENTITY_BINS
        for m in [on_main & (n_ent >= lo) & (n_ent <= hi)]
    ]
    out["leaf_purity_overall"] = {
        "leaves": len(purity),
        "mean_purity": float(np.mean([v["purity"] for v in purity.values()])),
        "mixed_leaves_below_0.8": int(sum(v["purity"] < 0.8 for v in purity.values())),
    }
    return out


def _examples(
    model: Any,
    tok: Any,
    items: list[dict[str, Any]],
    cause: np.ndarray,
    routed: np.ndarray,
    main_leaf: dict[str, int],
    purity: dict[int, dict[str, Any]],
    seed: int,
) -> list[dict[str, Any]]:
    """Up to 4 generation items per cause (seeded), with the model's greedy output and their leaves."""
    rng = np.random.default_rng([seed, 37])
    examples = []
    for c in CAUSES:
        idx = np.nonzero((cause == c) & np.array([not it.get("choices") for it in items]))[0]
        for i in sorted(rng.permutation(idx)[:4].tolist()):
            it = items[i]
            leaf = int(routed[i][-1])
            examples.append(
                {
                    "cause": c,
                    "probe": it["probe"],
                    "bucket": int(it["bucket"]),
                    "prompt": it["prompt"],
                    "answer": it["answer"],
                    "output": greedy(model, tok, it["prompt"], routed[i]),
                    "routed_leaf": leaf,
                    "main_leaf": main_leaf.get(it["entity"]),
                    "leaf_kind": purity.get(leaf, {}).get("kind"),
                    "leaf_purity": purity.get(leaf, {}).get("purity"),
                }
            )
    return examples


def _error_analysis(
    model: Any, tok: Any, root: Path, items: list[dict[str, Any]], right: np.ndarray, routed: np.ndarray, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Why the fetched memory is wrong (module docstring) -> (the report's `errors`, each item's cause)."""
    docs = [json.loads(x) for x in open(root / "corpus" / "docs.jsonl", encoding="utf-8")]
    split = np.load(root / "corpus" / "split.npy")
    doc_paths = np.load(root / "tree" / "doc_paths.npy")
    purity = leaf_purity(docs, split, doc_paths)
    main_leaf = {e: Counter(p[-1] for p in ps).most_common(1)[0][0] for e, ps in entity_fact_paths(root).items()}
    cause = _causes(items, right, routed, main_leaf)
    leaf_of = np.array([int(p[-1]) for p in routed])
    errors = _cause_counts(items, cause)
    errors.update(_leaf_report(right, cause, leaf_of, purity))
    errors["examples"] = _examples(model, tok, items, cause, routed, main_leaf, purity, seed)
    return errors, cause


def _item_rows(
    items: list[dict[str, Any]],
    routed: np.ndarray,
    cause: np.ndarray,
    held_by: list[str | None],
    ok: dict[str, np.ndarray],
    lp: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """attribution_items.jsonl: every item's path, cause, holder and per-condition scores."""
    return [
        {
            "entity": it["entity"],
            "probe": it["probe"],
            "bucket": int(it["bucket"]),
            "path": [int(v) for v in p],
            "cause": str(c),
            "held_by": h,
            **{f"right/{k}": bool(v[i]) for k, v in ok.items()},
            **{f"loglik/{k}": round(float(v[i]), 4) for k, v in lp.items()},
        }  # fmt: skip
        for i, (it, p, c, h) in enumerate(zip(items, routed, cause, held_by))
    ]


def run_attribution(run_dir: str | Path, per_bucket: int = 0, seed: int = 0, threads: int = 0) -> dict[str, Any]:
    if per_bucket < 0:
        raise ConfigError(f"--per-bucket: must be >= 0 (0 = every item), got {per_bucket}")
    check_threads(threads)
    set_threads(threads)
    run_dir = Path(run_dir)
    model, cfg = load_model(run_dir)
    if cfg.memory.type == "none" or not getattr(model.memory, "routed", False):
        raise ConfigError(f"{run_dir}: attribution needs a bank-backed memory run (memory.type ffn | lora | kv)")
    root, tok, items, enc, routed = _attribution_items(run_dir, cfg, per_bucket, seed)
    ok, lp = _score_conditions(model, cfg, enc, routed)
    conditions = {k: _by(items, v.astype(float)) for k, v in ok.items()}
    held, held_by = _held(items, ok, lp)
    errors, cause = _error_analysis(model, tok, root, items, ok["fetched"], routed, seed)
    out = {
        "run": str(run_dir),
        "items": len(items),
        "per_bucket": per_bucket,
        "seed": seed,
        "conditions": conditions,
        "held": held,
        "held_by": dict(Counter(h for h in held_by if h is not None)),
        "errors": errors,
    }
    rows = _item_rows(items, routed, cause, held_by, ok, lp)
    atomic_write_text(run_dir / "separation" / "attribution_items.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(run_dir / "separation" / "attribution.json", out)  # last: its presence means both are complete
    return out


def format_attribution(r: dict[str, Any]) -> str:
    c = r["conditions"]
    lines = [
        f"attribution: {r['items']} items; Avg-SK (direct scoring) "
        + ", ".join(f"{k} {v['sk']:.3f}" for k, v in c.items())
    ]
    for k, v in r["held"].items():
        if isinstance(v, dict):
            lines.append(
                f"  {k}: loses {v['lost']} of the right items ({v['lost_share_of_right']:.1%}), "
                f"mean gold log-lik drop {v['mean_lp_drop']:.3f}"
            )
    lines.append(
        f"  right with memory and with memory off (anchor knows): {r['held']['anchor_share_of_right']:.1%}; "
        f"survive every single-level ablation but not memory off: {r['held']['redundant_share_of_right']:.1%}"
    )
    lines.append("  held by (facts right with memory): " + ", ".join(f"{k} {v}" for k, v in r["held_by"].items()))
    e = r["errors"]
    for k, v in e["by_kind"].items():
        lines.append(f"errors {k:<9} " + ", ".join(f"{c} {n}" for c, n in v.items()))
    lr, ln = e["leaves_right"], e["leaves_not_stored"]
    lines.append(
        f"leaves  right items: purity {lr['mean_purity']:.3f}, {lr['mean_entities']:.1f} entities; not-stored "
        f"items: purity {ln['mean_purity']:.3f}, {ln['mean_entities']:.1f} entities"
    )
    lines.append(
        "accuracy by leaf purity (routed to the main leaf): "
        + ", ".join(
            f"[{t['purity_range'][0]:.2f}, {t['purity_range'][1]:.2f}] "
            + (f"{t['accuracy']:.3f}" if t["accuracy"] is not None else "-")
            + f" ({t['items']})"
            for t in e["accuracy_by_purity"]
        )
    )
    lines.append(
        "accuracy by entities sharing the leaf: "
        + ", ".join(
            f"{t['entities'][0]}-{t['entities'][1] if t['entities'][1] < 10**9 else 'more'} "
            + (f"{t['accuracy']:.3f}" if t["accuracy"] is not None else "-")
            + f" ({t['items']})"
            for t in e["accuracy_by_leaf_entities"]
        )
    )
    for x in e["examples"]:
        lines.append(f"  {x['cause']:<16} {x['prompt']!r} -> {x['output']!r} (gold {x['answer']!r})")
    return "\n".join(lines)
