"""Functions the task YAMLs call (`!function hmem_lit.evaluation.tasklib.<name>`): dataset loaders and scoring.

Loaders read the question files in the data helper's format (`<data_dir>/questions/<probe>.jsonl`, see
hmem_lit/data/questions.py) or held-out documents, from absolute paths written into the generated task YAMLs, and
return a `datasets.DatasetDict` built in memory (no hub, no HF cache). Scoring of generation tasks reports `acc`
so that generation and multiple-choice tasks average together in the `hmem_sk` / `hmem_ck` groups.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

_INT = re.compile(r"-?\d+")
_PUNCT = str.maketrans("", "", string.punctuation)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean(item: dict[str, Any]) -> dict[str, Any]:
    """Keep the fields the templates use, with types Arrow can hold (no mixed None / int columns)."""
    out = {
        "entity": str(item.get("entity", "")),
        "prompt": item["prompt"],
        "answer": str(item["answer"]),
        "route_text": item.get("route_text") or item["prompt"],
        "bucket": -1 if item.get("bucket") is None else int(item["bucket"]),
        "mention_count": -1 if item.get("mention_count") is None else int(item["mention_count"]),
    }
    if "choices" in item:
        out["choices"], out["label"] = [str(c) for c in item["choices"]], int(item["label"])
    # the probe's bookkeeping (data/questions.py), for the per-item scores (evaluation/scores.py)
    for k in ("probe", "variant", "split", "negatives", "prior"):
        out[k] = "" if item.get(k) is None else str(item[k])
    out["phrasing"] = int(item.get("phrasing") or 0)
    out["prior_ok"] = -1 if item.get("prior_ok") is None else int(bool(item["prior_ok"]))
    return out


def load_items(path: str, bucket: int | None = None, **_: Any):
    """A question file (optionally one frequency bucket of it) -> DatasetDict({"test": ...})."""
    import datasets

    items = [_clean(it) for it in read_jsonl(path)]
    if bucket is not None:
        items = [it for it in items if it["bucket"] == int(bucket)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})


def load_documents(path: str, **_: Any):
    """Held-out documents ({"title", "text"} per line) -> DatasetDict({"test": ...}) for perplexity."""
    import datasets

    docs = [
        {"title": str(d.get("title", "")), "kind": str(d.get("kind", "")), "text": d["text"]}
        for d in read_jsonl(path)
        if d.get("text")
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _norm(s: str) -> str:
    return " ".join(s.lower().translate(_PUNCT).split())


def is_correct(generation: str, answer: str) -> bool:
    """Integer answers: the first integer in the generation equals it (the paper's atomic-number rule).
    Text answers: the normalised generation starts with the normalised answer at a word boundary
    ("Paris, the largest city" is right for "Paris"; "Parisian" is not)."""
    answer = answer.strip()
    if _INT.fullmatch(answer):
        m = _INT.search(generation)
        return m is not None and int(m.group(0)) == int(answer)
    g, a = _norm(generation), _norm(answer)
    return bool(a) and (g == a or g.startswith(a + " "))


def score_generation(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": float(is_correct(results[0], doc["answer"]))}


def score_rank(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    """Graded recall: every candidate value scored -> acc (top = gold), the gold's rank (1 = top; ties count
    against it) and |top candidate - gold| for numeric values."""
    lls = [float(r[0]) for r in results]
    gold = int(doc["label"])
    top = max(range(len(lls)), key=lambda i: lls[i])
    rank = 1 + sum(1 for i, v in enumerate(lls) if i != gold and v >= lls[gold])
    try:
        err = abs(float(doc["choices"][top]) - float(doc["choices"][gold]))
    except ValueError:  # not numbers: only the rank is graded
        err = float(top != gold)
    return {"acc": float(top == gold), "rank": float(rank), "abs_err": err}
