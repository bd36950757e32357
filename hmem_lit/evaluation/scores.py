"""Per-item scores of one evaluation, and the headline numbers computed from them.

`hmem eval` writes one line per scored item to `eval/<mode>/items.jsonl` (`item_records`): the SK probes' items
(probe, variant, bucket, dev/test split, right or wrong, the leaf prior's verdict, graded recall), the CK items
and the validation documents' log-likelihood and bytes. Paired statistics between two evaluations
(analysis/stats.py) join these lines on `key`, so the headline numbers and their confidence intervals come from the
same records. Headline keys (`headline_from_items`), accuracies as fractions, **test entities only** unless
prefixed `dev/`:

    hmem_sk                     Avg-SK: the mean over probes of generation exact match in the training phrasing
    hmem_sk_para / _qa / _mc    the same over the paraphrases, the question-answer form, hard-negative multiple choice
    <probe>, <probe>/bucket<k>  one probe (training phrasing), and by frequency bucket (0 = rarest)
    para/<probe>[/bucket<k>]    ... and qa/..., mc/...: the other variants
    rank/<probe>/bucket<k>      graded recall: mean rank of the gold value among all values (1 = top)
    abserr/<probe>/bucket<k>    graded recall: mean |top-ranked value - gold|
    prior/hmem_sk, prior/hmem_sk_mc, prior/<probe>   the leaf prior (no model) on the same items
    dev/hmem_sk                 Avg-SK on the dev entities (what defaults are chosen on)
    val_bpb                     bits per byte over the validation split (every document of heldout/val.jsonl)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

# 2: generation Avg-SK on test entities with paraphrase / QA / hard-negative MC variants (1: Avg-SK mixed
# generation and multiple choice with random distractors, over all entities)
METRIC_VERSION = 2
ITEMS = "items.jsonl"  # per evaluation directory, written before results.json
SK_VARIANTS = ("base", "para", "qa", "mc")  # the variants averaged into an Avg-SK each ("rank" is graded apart)
VARIANT_KEY = {"base": "hmem_sk", "para": "hmem_sk_para", "qa": "hmem_sk_qa", "mc": "hmem_sk_mc"}
LN2 = math.log(2.0)


def _metric(s: dict[str, Any], name: str) -> float | None:
    v = s.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def item_records(samples: dict[str, list[dict]], routing_log: dict, ts: Any) -> list[dict[str, Any]]:
    """lm-eval samples of the suite's own tasks (`ts`: the TaskSet) -> one record per item. `key` identifies the
    item across evaluations of the same data (task, entity, prompt)."""
    out = []
    for task, rows in samples.items():
        sk, ppl = ts.sk.get(task), task in ts.ppl
        if sk is None and not ppl and task not in ts.ck:
            continue  # a user's own task (user_headline) or a paper task
        for s in rows:
            doc = s.get("doc") or {}
            info = routing_log.get((task, s.get("doc_id")), {})
            ent = str(doc.get("entity", doc.get("title", "")))
            r: dict[str, Any] = {"task": task, "key": f"{task}|{ent}|{doc.get('prompt', '')}"[:400], "entity": ent}
            if info.get("path") is not None:
                r["path"] = list(info["path"])
            if ppl:
                ll, nbytes = (s.get("bits_per_byte") or [None, None])[:2]
                if ll is None or not nbytes:
                    continue
                r.update(kind=str(doc.get("kind", "")), ll=float(ll), bytes=int(nbytes))
            else:
                r["acc"] = _metric(s, "acc")
            if sk is not None:
                r.update(probe=sk[0], variant=sk[1], bucket=int(doc.get("bucket", -1)), split=doc.get("split") or "")
                r["phrasing"] = int(doc.get("phrasing") or 0)
                if int(doc.get("prior_ok", -1)) >= 0:
                    r["prior_ok"] = float(doc["prior_ok"])
                for m in ("rank", "abs_err"):
                    if _metric(s, m) is not None:
                        r[m] = _metric(s, m)
            out.append(r)
    return out


def _mean(xs: Iterable[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return float(np.mean(got)) if got else None


def sk_records(recs: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """The SK items of one split ("" items, from data without a split, count as test)."""
    return [r for r in recs if "probe" in r and (r.get("split") or "test") == split]


def group_mean(recs: list[dict[str, Any]], variant: str, field: str = "acc") -> float | None:
    """Avg-SK style: the mean over probes of each probe's mean `field` in `variant`."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r["variant"] == variant and r.get(field) is not None:
            by[r["probe"]].append(r[field])
    return _mean(_mean(v) for v in by.values()) if by else None


def bits_per_byte(recs: list[dict[str, Any]]) -> float | None:
    docs = [r for r in recs if "ll" in r]
    nbytes = sum(r["bytes"] for r in docs)
    return -sum(r["ll"] for r in docs) / LN2 / nbytes if nbytes else None


def headline_from_items(recs: list[dict[str, Any]]) -> dict[str, float]:
    """The headline keys of the module docstring from item records."""
    out: dict[str, float | None] = {}
    test = sk_records(recs)
    for variant in SK_VARIANTS:
        out[VARIANT_KEY[variant]] = group_mean(test, variant)
        by: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in test:
            if r["variant"] == variant:
                by[(r["probe"], -1)].append(r)
                by[(r["probe"], r["bucket"])].append(r)
        pre = "" if variant == "base" else f"{variant}/"
        for (probe, b), rs in by.items():
            out[f"{pre}{probe}" + (f"/bucket{b}" if b >= 0 else "")] = _mean(r["acc"] for r in rs)
            if b < 0 and variant == "base":
                out[f"prior/{probe}"] = _mean(r.get("prior_ok") for r in rs)
    for r_key, field in (("rank", "rank"), ("abserr", "abs_err")):
        by_b: dict[str, list[float]] = defaultdict(list)
        for r in test:
            if r["variant"] == "rank" and r.get(field) is not None:
                by_b[f"{r_key}/{r['probe']}/bucket{r['bucket']}"].append(r[field])
        out.update({k: _mean(v) for k, v in by_b.items()})
    out["prior/hmem_sk"] = group_mean(test, "base", "prior_ok")
    out["prior/hmem_sk_mc"] = group_mean(test, "mc", "prior_ok")
    out["dev/hmem_sk"] = group_mean(sk_records(recs, "dev"), "base")
    out["val_bpb"] = bits_per_byte([r for r in recs if r["task"] == "hmem_val_bpb"])
    return {k: v for k, v in out.items() if v is not None}


def write_items(path: Any, recs: list[dict[str, Any]]) -> None:
    from hmem_lit.utils import atomic_write_text, dumps

    atomic_write_text(path, "".join(dumps(r, indent=None) + "\n" for r in recs))


def read_items(path: Any) -> list[dict[str, Any]]:
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def user_prior(samples: dict[str, list[dict]], routing_log: dict, tasks: list[str]) -> dict[str, float]:
    """The leaf prior of a user's own tasks (no model): for each item, the gold answer given most often by the
    *other* items of the task routed to the same leaf (generation: right when it equals the item's gold answer after
    the same normalisation; multiple choice: the choice whose text is that most frequent gold, chance when none of
    the choices is one) -> {`prior/<task>`: accuracy}. Modes that route nothing have no prior."""
    from collections import Counter

    from hmem_lit.evaluation.tasklib import _norm

    out = {}
    for task in tasks:
        rows: list[tuple[tuple, str, list[str] | None]] = []
        for s in samples.get(task, []):
            path = routing_log.get((task, s.get("doc_id")), {}).get("path")
            args, target = s.get("arguments") or [], s.get("target")
            if path is None:
                continue
            if isinstance(target, int) and len(args) > 1:  # multiple choice: (context, " choice") per option
                texts = [_norm(str(a[1])) for a in args]
                rows.append((tuple(path), texts[target], texts))
            else:
                rows.append((tuple(path), _norm(str(target)), None))
        if not rows:
            continue
        by_leaf: dict[tuple, Counter] = defaultdict(Counter)
        for leaf, gold, _ in rows:
            by_leaf[leaf][gold] += 1
        scores = []
        for leaf, gold, cands in rows:
            others = by_leaf[leaf].copy()
            others[gold] -= 1
            if cands is None:
                best = min((a for a in others if others[a] > 0), key=lambda a: (-others[a], a), default=None)
                scores.append(float(best == gold))
            else:
                counts = [others.get(c, 0) for c in cands]
                top = max(counts)
                scores.append(
                    1.0 / len(cands) if top == 0 else float(counts[cands.index(gold)] == top) / counts.count(top)
                )
        out[f"prior/{task}"] = float(np.mean(scores))
    return out
