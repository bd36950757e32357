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

    docs = [{"title": str(d.get("title", "")), "text": d["text"]} for d in read_jsonl(path) if d.get("text")]
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
