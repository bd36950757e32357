"""Evaluation data for runs on the toy corpus, written in the data helper's format (hmem_lit/data/questions.py):
`questions/<probe>.jsonl`, `heldout/wiki_val.jsonl`, so the same task generation serves both sources.

Probes over the toy entities ("<topic> <number>", facts fixed by the pair as in hmem_lit.data.toy):
`toy_colour` (generation: "The colour of river 3 is" -> "red") and `toy_friend` (multiple choice among 4 values).
An entity's mention count is the number of training documents about it; 5 equal-size buckets by count (0 =
rarest). Held-out documents come from another seed; `wiki_cloze` is built from them with the data helper's rule.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.utils import atomic_write_text

N_BUCKETS = 5
HELDOUT_DOCS = 60


def _value(topic: int, ent: int, attr: int) -> str:
    from hmem_lit.data.toy import _VALUES

    return _VALUES[(topic * 7 + ent * 3 + attr * 5) % len(_VALUES)]


def bucket_of_rank(rank: int, n: int) -> int:
    """Equal-size buckets over entities sorted by mention count (rank 0 = rarest)."""
    return min(N_BUCKETS - 1, rank * N_BUCKETS // max(1, n))


def toy_questions(n_docs: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    from hmem_lit.data.questions import split_of
    from hmem_lit.data.toy import _ATTRS, _TOPICS, _VALUES, toy_documents

    counts = Counter((topic, ent) for _, topic, ent in toy_documents(n_docs, seed))
    ents = sorted(counts, key=lambda e: (counts[e], e))
    rng = np.random.default_rng([seed, 5])
    colour, friend = _ATTRS.index("colour"), _ATTRS.index("friend")
    out: dict[str, list[dict[str, Any]]] = {"toy_colour": [], "toy_friend": []}
    for rank, (topic, ent) in enumerate(ents):
        name = f"{_TOPICS[topic]} {ent}"
        base = {
            "entity": name,
            "kind": "toy",
            "split": split_of(name),
            "mention_count": counts[(topic, ent)],
            "bucket": bucket_of_rank(rank, len(ents)),
        }
        p = f"The colour of {name} is"
        out["toy_colour"].append({**base, "prompt": p, "answer": _value(topic, ent, colour), "route_text": p})
        ans = _value(topic, ent, friend)
        others = [v for v in _VALUES if v != ans]
        choices = [others[i] for i in rng.choice(len(others), 3, replace=False)] + [ans]
        choices = [choices[i] for i in rng.permutation(4)]
        p = f"The friend of {name} is"
        out["toy_friend"].append(
            {**base, "prompt": p, "answer": ans, "choices": choices, "label": choices.index(ans), "route_text": p}
        )
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_toy_data(cfg: Any, out: str | Path) -> Path:
    """Write the toy evaluation data for a run's config into `out` (deterministic); -> out."""
    from hmem_lit.data.questions import wiki_cloze
    from hmem_lit.data.toy import _TOPICS, toy_documents

    out = Path(out)
    for name, rows in toy_questions(cfg.data.toy_docs, cfg.data.seed).items():
        _write_jsonl(out / "questions" / f"{name}.jsonl", rows)
    held = [
        {"title": f"{_TOPICS[t]} {e}", "text": text}
        for text, t, e in toy_documents(HELDOUT_DOCS, cfg.data.seed + 1_000_003)
    ]
    _write_jsonl(out / "heldout" / "wiki_val.jsonl", held)
    _write_jsonl(out / "heldout" / "val.jsonl", held)  # the validation split (bits per byte) is the same text here
    _write_jsonl(out / "questions" / "wiki_cloze.jsonl", wiki_cloze(held))
    return out
