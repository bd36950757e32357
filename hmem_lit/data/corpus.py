"""Corpus assembly: the built-in long-tail corpus and bring-your-own files, written as `corpus/docs.jsonl`.

Each line of docs.jsonl is one document: {"text", "kind", ...metadata} (kind: wiki | element | country |
synthetic | file; fact documents carry "entity"; wiki documents "title" and "topic"; file documents "source" =
file:line and their own JSONL fields). The split (0 = train, 1 = validation) is stored beside it in split.npy.

Built-in corpora (deterministic for data.seed), registered in CORPORA (a plug-in may add one: `entities` and
`documents` as below); `data.corpus=facts` (default):
1. `data.wiki_docs` Wikipedia lead summaries; `data.val_fraction` of them (at least one) are held out.
2. Fact documents for the 118 elements and the countries with a capital, their number per entity tied to the
   entity's mention count in the Wikipedia training text (facts.py).
3. `data.synthetic_entities` invented people with Zipf-distributed document counts.
`data.corpus=airports` (airports.py) replaces 2-3 with real airports in record-style documents.
Held-out documents are only Wikipedia summaries (fact documents are all training data: the probes ask about them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.data import airports, facts, mentions, sources
from hmem_lit.registry import CORPORA


def _n_val(n: int, frac: float) -> int:
    return 0 if n < 2 else min(n - 1, max(1, int(round(n * frac))))


def builtin_documents(data_cfg: Any, progress: bool = False) -> tuple[list[dict], np.ndarray, list[dict], dict]:
    """-> (docs, split (N,) int8, probed entities, info)."""
    seed = data_cfg.seed
    rng = np.random.default_rng([seed, 1])
    wiki = sources.read_wiki() if data_cfg.wiki_docs > 0 else []
    if data_cfg.wiki_docs < len(wiki):
        keep = np.sort(rng.choice(len(wiki), data_cfg.wiki_docs, replace=False))
        wiki = [wiki[i] for i in keep]
    val_mask = np.zeros(len(wiki), bool)
    val_mask[rng.permutation(len(wiki))[: _n_val(len(wiki), data_cfg.val_fraction)]] = True
    wiki_train = [w for w, v in zip(wiki, val_mask) if not v]

    corpus = CORPORA.get(data_cfg.corpus)
    entities = corpus.entities(data_cfg, wiki_train)

    docs: list[dict] = [
        {"text": w["text"], "kind": "wiki", "title": w["title"], "topic": w["topic"]} for w in wiki_train
    ]
    it: Any = enumerate(entities)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(entities), desc="fact documents", leave=False)
    for i, e in it:
        erng = np.random.default_rng([seed, 2, i])
        texts = corpus.documents(e, erng)
        docs.extend({"text": t, "kind": e["kind"], "entity": e["name"]} for t in texts)
    n_train = len(docs)
    docs.extend(
        {"text": w["text"], "kind": "wiki", "title": w["title"], "topic": w["topic"]}
        for w, v in zip(wiki, val_mask)
        if v
    )
    split = np.zeros(len(docs), np.int8)
    split[n_train:] = 1
    if not val_mask.any() and len(docs) >= 2:  # no Wikipedia text: hold out a fraction of everything
        split[rng.permutation(len(docs))[: _n_val(len(docs), data_cfg.val_fraction)]] = 1
    kinds = sorted({e["kind"] for e in entities})
    info = {
        "corpus": data_cfg.corpus,
        "wiki_docs": len(wiki),
        "wiki_val": int(val_mask.sum()),
        "entities": {k: sum(e["kind"] == k for e in entities) for k in kinds},
    }
    return docs, split, entities, info


@CORPORA.register("airports")
class Airports:
    about = "real airports (airportsdata) in record-style documents (data.airports of them)"

    @staticmethod
    def entities(data_cfg: Any, wiki_train: list[dict]) -> list[dict]:
        texts = [w["text"] for w in wiki_train]
        d = data_cfg
        return airports.airport_entities(d.airports, d.seed, d.fact_repeats_max, d.zipf_a, d.fact_repeats_min, texts)

    @staticmethod
    def documents(e: dict, rng: np.random.Generator) -> list[str]:
        return [airports.airport_doc(e, rng) for _ in range(e["repeats"])]


@CORPORA.register("facts")
class Facts:
    about = "elements, countries (documents by Wikipedia mention rank) and synthetic people"

    @staticmethod
    def entities(data_cfg: Any, wiki_train: list[dict]) -> list[dict]:
        return _facts_entities(data_cfg, wiki_train)

    @staticmethod
    def documents(e: dict, rng: np.random.Generator) -> list[str]:
        return facts.write_docs(e, rng)


def _facts_entities(data_cfg: Any, wiki_train: list[dict]) -> list[dict]:
    """The `facts` corpus's entities: elements and countries (documents by Wikipedia mention rank), synthetic people."""
    seed = data_cfg.seed
    real = facts.element_entities(sources.read_elements()) + facts.country_entities(sources.read_countries())
    wiki_counts = mentions.MentionCounter(real).add_all(w["text"] for w in wiki_train)
    for kind in ("element", "country"):
        idx = [i for i, e in enumerate(real) if e["kind"] == kind]
        reps = facts.repeats_by_rank(
            [wiki_counts[i] for i in idx],
            [real[i]["name"] for i in idx],
            data_cfg.fact_repeats_max,
            data_cfg.zipf_a,
            data_cfg.fact_repeats_min,
        )
        for i, r in zip(idx, reps):
            real[i]["repeats"], real[i]["wiki_mentions"] = r, wiki_counts[i]
    reserved = {w for e in real for n in [e["name"], *e["aliases"]] for w in mentions.words(n)}
    synth = facts.synthetic_entities(
        data_cfg.synthetic_entities,
        seed,
        data_cfg.fact_repeats_max,
        data_cfg.zipf_a,
        reserved,
        data_cfg.fact_repeats_min,
    )
    return real + synth


def file_documents(data_cfg: Any, skipped: sources.SkipCounter) -> Iterator[tuple[dict, int]]:
    """Stream (doc, split) from data.files; a document's "split" field (train/val/validation) is honoured."""
    rng = np.random.default_rng([data_cfg.seed, 3])
    for doc in sources.read_files(list(data_cfg.files), skipped):
        s = str(doc.get("split", "")).lower()
        u = rng.random()  # drawn for every document, so the split does not depend on other documents' fields
        yield (
            doc,
            (
                1
                if s in ("val", "validation", "valid", "test")
                else 0
                if s == "train"
                else int(u < data_cfg.val_fraction)
            ),
        )


def write_corpus(out_dir: Path, docs: Iterator[tuple[dict, int]]) -> tuple[int, np.ndarray]:
    """Stream docs into out_dir/docs.jsonl (atomically) -> (count, split)."""
    from hmem_lit.utils import atomic_write

    splits: list[int] = []

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for d, s in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
                splits.append(s)

    atomic_write(out_dir / "docs.jsonl", _w)
    split = np.asarray(splits, np.int8)
    if len(split) >= 2 and not split.any():  # guarantee a non-empty validation split
        split[-1] = 1
    if len(split) >= 2 and split.all():
        split[0] = 0
    return len(split), split


def read_docs(corpus_dir: Path) -> list[dict]:
    with open(corpus_dir / "docs.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
