"""Probes that test recall (data/questions.py): held-out phrasings, hard negatives from the routed leaf, the leaf
prior, the dev/test split and the validation documents, on a small prepared built-in corpus and on hand-made toys."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from hmem_lit.data import airports, facts, questions
from hmem_lit.retriever import load_router


def _read(path):
    return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]


def _training_texts(d):
    docs = _read(d / "corpus" / "docs.jsonl")
    split = np.load(d / "corpus" / "split.npy")
    return [doc for doc, s in zip(docs, split) if s == 0]


def test_held_out_prefixes_occur_in_no_training_document(prepared):
    _, d = prepared
    blob = "\n".join(doc["text"] for doc in _training_texts(d))
    checked = 0
    for f in sorted((d / "questions").glob("*.para.jsonl")) + sorted((d / "questions").glob("*.qa.jsonl")):
        for it in _read(f):
            assert it["prompt"] not in blob, (f.name, it["prompt"])
            checked += 1
    assert checked > 500
    # and the training phrasing is a real prefix of the corpus' sentences (what the base variant measures)
    base = _read(d / "questions" / "atomic_number.jsonl")
    assert sum(it["prompt"] in blob for it in base) > len(base) // 2


def test_paraphrase_frames_are_absent_from_every_training_template():
    """Each paraphrase and QA frame (the text around {name}) appears in no sentence template of either built-in
    corpus, so no entity's training document can contain the held-out prompt whatever name it carries."""
    templates = [
        t
        for group in (facts._EL_NUMBER, facts._EL_SYMBOL, facts._CO_CAPITAL, facts._CO_REGION, facts._SY_CITY,
                      facts._SY_YEAR, facts._SY_EMP, facts._SY_OTHER, airports._CODE, airports._CITY,
                      airports._COUNTRY, *facts._EL_OTHER.values(), *facts._CO_OTHER.values(),
                      *airports._OTHER.values())
        for t in group
    ]  # fmt: skip
    for name, spec in questions.PROBES.items():
        for frame in (*spec.para, f"Q: {spec.qa} A:"):
            pieces = [p.strip() for p in frame.split("{name}") if len(p.strip()) > 3]
            for t in templates:
                assert frame not in t and not all(p in t for p in pieces), (name, frame, t)
        assert any(spec.train.split("{name}")[-1].strip() in t for t in templates), name  # base = a training frame


def test_hard_negatives_come_from_the_routed_leaf(prepared):
    cfg, d = prepared
    router = load_router(d, cfg)
    train = _training_texts(d)
    paths = np.load(d / "tree" / "doc_paths.npy")[np.load(d / "corpus" / "split.npy") == 0]
    leaf_entities: dict[int, set] = {}
    for doc, p in zip(train, paths):
        if doc.get("entity"):
            leaf_entities.setdefault(int(p[-1]), set()).add(doc["entity"])
    ents = {e["name"]: e for e in _read_entities(d)}
    n_leaf = 0
    for probe in ("atomic_number", "synthetic_employer", "capital"):
        spec = questions.PROBES[probe]
        items = _read(d / "questions" / f"{probe}.mc.jsonl")
        leaves = router.route([it["prompt"] for it in items])[:, -1]
        for it, leaf in zip(items, leaves):
            assert len(it["choices"]) == 4 and it["choices"][it["label"]] == it["answer"]
            if it["negatives"] != "leaf":
                continue
            n_leaf += 1
            in_leaf = {
                spec.answer(ents[e]["attrs"])
                for e in leaf_entities[int(leaf)]
                if e != it["entity"] and e in ents and ents[e]["kind"] == spec.kind
            }
            distractors = [c for i, c in enumerate(it["choices"]) if i != it["label"]]
            assert set(distractors) <= in_leaf, (probe, it["entity"])
    assert n_leaf > 100  # most items get their distractors from their own leaf


def _read_entities(d):
    return [e for e in json.loads((d / "corpus" / "entities.json").read_text()) if "attrs" in e]


def _toy_leaves():
    """Two leaves under one parent (branching 2, depth 2: leaves 0..3): leaf 0 holds A (2 docs, answer x), B (3
    docs, answer y) and C (1 doc, answer y); leaf 1 holds D (answer z); leaf 2 holds E (answer w)."""
    docs = [("A", 0), ("A", 0), ("B", 0), ("B", 0), ("B", 0), ("C", 0), ("D", 1), ("E", 2), (None, 0)]
    leaves = questions.Leaves([e for e, _ in docs], np.array([leaf for _, leaf in docs]), branching=2, depth=2)
    return leaves, {"A": "x", "B": "y", "C": "y", "D": "z", "E": "w"}


def test_leaf_prior_on_a_hand_made_toy():
    leaves, answers = _toy_leaves()
    # A's leaf: the other entities' documents say y 4 times -> y (A's own documents do not count)
    assert questions.leaf_prior("A", 0, answers, leaves) == "y"
    # B's leaf without B: A says x twice, C says y once -> x
    assert questions.leaf_prior("B", 0, answers, leaves) == "x"
    # D is alone in leaf 1: widen to the parent (leaves 0, 1) -> y (4 documents: B 3 + C 1)
    assert questions.leaf_prior("D", 1, answers, leaves) == "y"
    # E is alone in leaf 2 and its parent (leaves 2, 3): widen to the pool -> y
    assert questions.leaf_prior("E", 2, answers, leaves) == "y"
    # multiple choice: the choice given most in the leaf by others; none of them there -> widen
    assert questions.prior_choice("A", 0, ["x", "z", "y", "w"], answers, leaves) == 2
    # D: neither choice in its leaf or parent from others; the pool has w once (E), z only from D itself -> w
    assert questions.prior_choice("D", 1, ["z", "w"], answers, leaves) == 1


def test_hard_negatives_widen_from_leaf_to_parent_to_pool():
    leaves, answers = _toy_leaves()
    rng = np.random.default_rng(0)
    neg, used = questions.hard_negatives("A", "x", 0, answers, leaves, rng, n=1)
    assert neg == ["y"] and used == "leaf"
    neg, used = questions.hard_negatives("A", "x", 0, answers, leaves, rng, n=2)
    assert sorted(neg) == ["y", "z"] and used == "parent"
    neg, used = questions.hard_negatives("A", "x", 0, answers, leaves, rng, n=3)
    assert sorted(neg) == ["w", "y", "z"] and used == "pool"


def test_dev_test_split_is_fixed_by_name_and_covers_both(prepared):
    _, d = prepared
    items = _read(d / "questions" / "synthetic_city.jsonl")
    assert all(it["split"] == questions.split_of(it["entity"]) for it in items)
    share = Counter(it["split"] for it in items)["dev"] / len(items)
    assert 0.15 < share < 0.45
    # every variant of an entity is in the same split
    para = _read(d / "questions" / "synthetic_city.para.jsonl")
    by = {it["entity"]: it["split"] for it in items}
    assert all(by[it["entity"]] == it["split"] for it in para) and {it["phrasing"] for it in para} == {1, 2}


def test_validation_split_holds_fresh_fact_documents_never_trained_on(prepared):
    _, d = prepared
    val = _read(d / "heldout" / "val.jsonl")
    train = {doc["text"] for doc in _training_texts(d)}
    kinds = Counter(v["kind"] for v in val)
    assert kinds["wiki"] >= 1 and 110 <= kinds["element"] <= 118 and 90 <= kinds["synthetic"] <= 100
    assert not any(v["text"] in train for v in val)


def test_rank_variant_lists_every_value_and_only_the_rarest_buckets(prepared):
    _, d = prepared
    items = _read(d / "questions" / "atomic_number.rank.jsonl")
    assert items and {it["bucket"] for it in items} <= set(questions.RANK_BUCKETS)
    assert all(it["choices"] == [str(z) for z in range(1, 119)] for it in items)


def test_user_task_leaf_prior_on_a_hand_made_toy():
    """A user's tasks: the gold answer most other items in the same leaf give (generation), the choice carrying it
    (multiple choice, chance when no choice is one)."""
    from hmem_lit.evaluation.scores import user_prior

    def gen(i, target):
        return {"doc_id": i, "target": target, "arguments": [("prompt", {"until": ["\n"]})]}

    samples = {"gen": [gen(0, "Paris"), gen(1, "Paris"), gen(2, "Rome"), gen(3, "Oslo")]}
    log = {("gen", 0): {"path": [0, 1]}, ("gen", 1): {"path": [0, 1]}, ("gen", 2): {"path": [0, 1]}}
    log[("gen", 3)] = {"path": [2, 9]}  # alone in its leaf: no other item, no prior
    # item 0: others Paris, Rome -> tie broken by text: Paris -> right; 1: same -> right; 2: Paris x2 -> wrong
    assert user_prior(samples, log, ["gen"]) == {"prior/gen": pytest.approx(2 / 4)}

    def mc(i, target):
        return {"doc_id": i, "target": target, "arguments": [("q", " red"), ("q", " blue"), ("q", " green")]}

    samples = {"mc": [mc(0, 0), mc(1, 0), mc(2, 1)]}
    log = {("mc", i): {"path": [5, 5]} for i in range(2)} | {("mc", 2): {"path": [6, 6]}}
    # item 0: other gold red -> right; item 1: same -> right; item 2: alone -> chance 1/3
    assert user_prior(samples, log, ["mc"]) == {"prior/mc": pytest.approx((1 + 1 + 1 / 3) / 3)}
    assert user_prior(samples, {}, ["mc"]) == {}  # a mode that routes nothing
