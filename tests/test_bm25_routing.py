"""Routing by the nearest training documents (retriever/bm25.py) and the routing diagnostics
(retriever/diagnostics.py): hand-computed cases, brute-force equality, and a corpus where entities must route home."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmem_lit.config import ConfigError, load_config
from hmem_lit.retriever import load_router
from hmem_lit.retriever.bm25 import BM25Index, _argmax_group_sum, knn_graph, refine_leaves, vote_paths
from hmem_lit.retriever.diagnostics import concentration, hit_rates, key_table
from hmem_lit.retriever.tree import TREE_ROUTERS, BM25Router, TreeRouter

DOCS = [
    "zorblax is a moon of quintar",
    "the moon quintar has zorblax",
    "vexmor orbits the red star",
    "the red star is called vexmor",
    "a moon and a star and a planet",
    "planet planet moon",
]


def _brute_bm25(docs: list[str], query: str, index: BM25Index) -> np.ndarray:
    """Okapi BM25 written out term by term over the index vocabulary (the terms it keeps)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    toks = [[w for w in d.lower().split() if w not in ENGLISH_STOP_WORDS] for d in docs]
    n, avg = len(docs), np.mean([len(t) for t in toks])
    q = {w for w in query.lower().split() if w in set(index.vocab)}
    out = np.zeros(n)
    for i, t in enumerate(toks):
        for w in q:
            df = sum(w in tt for tt in toks)
            tf = t.count(w)
            idf = math.log1p((n - df + 0.5) / (df + 0.5))
            out[i] += idf * tf * (index.k1 + 1) / (tf + index.k1 * (1 - index.b + index.b * len(t) / avg))
    return out


def test_bm25_scores_equal_the_formula_and_topk_is_ordered(tmp_path):
    idx = BM25Index.fit(DOCS, max_df=1.0)
    for q in ("zorblax moon", "red star vexmor", "planet"):
        want = _brute_bm25(DOCS, q, idx)
        ids, sc = idx.topk([q], k=len(DOCS))
        got = np.zeros(len(DOCS))
        got[ids[0][ids[0] >= 0]] = sc[0][ids[0] >= 0]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert (np.diff(sc[0]) <= 1e-7).all()  # best first
    idx.save(tmp_path)
    again = BM25Index.load(tmp_path)
    assert again.vocab == idx.vocab and (again.W != idx.W).nnz == 0
    np.testing.assert_array_equal(again.topk(["zorblax"], 3)[0], idx.topk(["zorblax"], 3)[0])


def test_max_df_drops_template_words_and_exclude_skips_self():
    idx = BM25Index.fit(DOCS, max_df=0.34)  # terms in at most 2 of 6 documents
    assert "moon" not in idx.vocab and "zorblax" in idx.vocab  # moon is in 4 documents
    ids, sc = idx.topk(["moon"], 3)  # nothing indexed in common: no voter
    assert (ids == -1).all() and (sc == 0).all()
    nbr, _ = knn_graph(idx, DOCS, 2)
    assert all(i not in row for i, row in enumerate(nbr))
    assert nbr[0][0] == 1 and nbr[2][0] == 3  # the other document with the same rare name
    # graph queries skip terms with longer posting lists: at 1, only a document's own terms remain -> no neighbour
    assert (knn_graph(idx, DOCS, 2, max_postings=1)[0] == -1).all()
    np.testing.assert_array_equal(knn_graph(idx, DOCS, 2, max_postings=2)[0], nbr)  # every indexed term: df <= 2


def test_the_fits_query_matrix_is_the_texts_query_matrix_and_gives_the_same_graph():
    # knn_graph reuses the fit's term matrix instead of tokenizing the documents again: it must be the same matrix
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)] + ["the", "and", "Zorblax", "moon"]
    docs = [" ".join(rng.choice(words, int(rng.integers(1, 12)))) for _ in range(300)] + ["", "the and"]
    idx = BM25Index.fit(docs, max_df=0.2)
    q, ref = idx.fit_queries, idx.query_matrix(docs)
    for a in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(q, a), getattr(ref, a))
    assert q.dtype == ref.dtype and q.shape == ref.shape
    nbr, w = knn_graph(idx, [], 5, max_postings=40)  # texts not needed: the fit's queries
    idx.fit_queries = None
    nbr2, w2 = knn_graph(idx, docs, 5, max_postings=40)
    np.testing.assert_array_equal(nbr, nbr2)
    np.testing.assert_array_equal(w, w2)


def test_group_argmax_by_codes_equals_the_pairwise_unique():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 9, (200, 7))
    w = rng.random((200, 7)).round(1)  # ties on purpose
    mask = rng.random((200, 7)) < 0.7
    rows = np.repeat(np.arange(200), 7)[mask.ravel()]
    kk, ww = keys.ravel()[mask.ravel()], w.ravel()[mask.ravel()]
    uniq, inv = np.unique(np.stack([rows, kk], 1), axis=0, return_inverse=True)  # the former implementation
    sums = np.bincount(inv.ravel(), weights=ww, minlength=len(uniq))
    order = np.lexsort((uniq[:, 1], -sums, uniq[:, 0]))
    first = np.ones(len(order), bool)
    first[1:] = uniq[order[1:], 0] != uniq[order[:-1], 0]
    want = np.full(200, -1, np.int64)
    want[uniq[order[first], 0]] = uniq[order[first], 1]
    np.testing.assert_array_equal(_argmax_group_sum(keys, w, mask), want)


def test_group_argmax_and_hierarchical_vote_by_hand():
    keys = np.array([[3, 1, 3, -1], [2, 2, 5, 5]])
    w = np.array([[1.0, 1.5, 1.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    mask = keys >= 0
    np.testing.assert_array_equal(_argmax_group_sum(keys, w, mask), [3, 2])  # 2.0 beats 1.5; tie -> smaller key
    # depth 2, branching 2: doc paths (level1, level2)
    doc_paths = np.array([[0, 0], [0, 1], [1, 2], [1, 3], [1, 3]])
    ids = np.array([[0, 2, 3, 4], [1, -1, -1, -1], [-1, -1, -1, -1]])
    sc = np.array([[5.0, 2.0, 2.0, 2.0], [1.0, 0, 0, 0], [0, 0, 0, 0]])
    paths, voted = vote_paths(ids, sc, doc_paths, 2)
    # row 0: level 1: node 1 has 6.0 > node 0's 5.0; level 2 among node 1's voters: leaf 3 (4.0) beats leaf 2
    np.testing.assert_array_equal(paths[0], [1, 3])
    np.testing.assert_array_equal(paths[1], [0, 1])
    assert voted.tolist() == [True, True, False] and (paths[2] == -1).all()


def test_refinement_gathers_documents_that_share_rare_words():
    # entity e's 4 documents start in 4 different leaves; their graph neighbours are each other
    n = 12
    leaves = np.array([0, 1, 2, 3, 0, 0, 1, 1, 2, 2, 3, 3])
    nbr = np.full((n, 3), -1)
    w = np.zeros((n, 3))
    for i in range(4):
        nbr[i] = [j for j in range(4) if j != i]
        w[i] = [1.0, 0.9, 0.8]
    out = refine_leaves(leaves, nbr, w, iters=12, cap=0)
    assert len(set(out[:4].tolist())) == 1  # one leaf now
    np.testing.assert_array_equal(out[4:], leaves[4:])  # documents without neighbours stay
    np.testing.assert_array_equal(out, refine_leaves(leaves, nbr, w, iters=12, cap=0))  # deterministic
    capped = refine_leaves(leaves, nbr, w, iters=12, cap=1.0)  # mean leaf size 3: no leaf may exceed it
    assert np.bincount(capped).max() <= 3


def test_diagnostics_against_a_hand_computed_case():
    keys = ["a", "a", "a", None, "b", "b", "c"]
    paths = np.array([[0, 1], [0, 1], [1, 2], [1, 3], [1, 3], [0, 0], [1, 2]])
    t = key_table(keys, paths, n_buckets=2)
    assert t["a"] == {"docs": 3, "main_path": [0, 1], "share": 2 / 3, "bucket": 1}  # ranks c, b, a -> 0, 0, 1
    assert t["b"]["docs"] == 2 and t["b"]["share"] == 0.5 and t["b"]["main_path"] == [1, 3]  # tie: first seen
    assert t["c"] == {"docs": 1, "main_path": [1, 2], "share": 1.0, "bucket": 0}
    assert [t[k]["bucket"] for k in "abc"] == [1, 0, 0]
    c = concentration(t)
    assert c["keys"] == 3 and c["mean_share"] == round((2 / 3 + 0.5 + 1.0) / 3, 4)
    assert c["buckets"]["0"] == {"keys": 2, "docs_min": 1, "docs_max": 2, "mean_share": 0.75}
    assert c["buckets"]["1"] == {"keys": 1, "docs_min": 3, "docs_max": 3, "mean_share": round(2 / 3, 4)}
    h = hit_rates(
        [
            {"group": "p", "bucket": 0, "hit": True, "correct": 1.0},
            {"group": "p", "bucket": 0, "hit": False, "correct": 0.0},
            {"group": "p", "bucket": 0, "hit": True, "correct": 0.0},
            {"group": "p", "bucket": 1, "hit": False, "correct": None},
            {"group": "q", "bucket": 0, "hit": None, "correct": 1.0},
        ]
    )  # not routed (no memory)
    assert h["p"]["0"] == {
        "prompts": 3,
        "hit_rate": 0.6667,
        "acc": 0.3333,
        "acc_routed_right": 0.5,
        "acc_routed_wrong": 0.0,
    }
    assert h["p"]["1"] == {
        "prompts": 1,
        "hit_rate": 0.0,
        "acc": None,
        "acc_routed_right": None,
        "acc_routed_wrong": None,
    }
    assert h["q"]["0"] == {
        "prompts": 1,
        "hit_rate": None,
        "acc": 1.0,
        "acc_routed_right": None,
        "acc_routed_wrong": None,
    }


# ---------------------------------------------------------------------------------------------- on a corpus


def _entity_corpus(path: Path, n_entities: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    """Invented entities with shared template words and 2..6 documents each, plus background text without a
    key. -> (entity, prompt) pairs."""
    rng = np.random.default_rng(seed)
    syl = ["ka", "lo", "mi", "zu", "re", "ta", "no", "vi", "sh", "qu", "bor", "den"]
    names = sorted(
        {
            "".join(rng.choice(syl, 3)).capitalize() + " " + "".join(rng.choice(syl, 2)).capitalize()
            for _ in range(n_entities * 2)
        }
    )[:n_entities]
    tmpl = [
        "{n} was born in {c}.",
        "The home town of {n} is {c}.",
        "{n} works as a {j}.",
        "People know {n} as a {j}.",
        "{n} lives near the river in {c}.",
        "Born in {c}, {n} became a {j}.",
    ]
    rows, prompts = [], []
    for i, n in enumerate(names):
        c, j = f"City{i % 7}", ["pilot", "baker", "judge"][i % 3]
        for _ in range(2 + i % 5):
            k = rng.choice(len(tmpl), 2, replace=False)
            rows.append({"text": " ".join(tmpl[x].format(n=n, c=c, j=j) for x in k), "entity": n})
        prompts.append((n, f"{n} was born in"))
    for i in range(60):
        rows.append(
            {"text": f"Background note {i} about weather, rivers, towns and the market on day {i}.", "entity": None}
        )
    order = rng.permutation(len(rows))
    with open(path, "w", encoding="utf-8") as f:
        for i in order:
            f.write(json.dumps(rows[i]) + "\n")
    return prompts


def _files_cfg(tmp_path: Path, f: Path, *extra: str):
    return load_config(
        None,
        [
            "data.source=files",
            f"data.files=[{f}]",
            f"data.dir={tmp_path / 'data'}",
            "data.vocab_size=512",
            "data.seq_len=64",
            "retriever.branching=4",
            "retriever.depth=2",
            "retriever.embed_dim=64",
            "data.key_field=entity",
            *extra,
        ],
    )


def test_each_router_is_registered_swappable_and_bm25_routes_entities_home(tmp_path):
    from hmem_lit.data.prepare import prepare
    from hmem_lit.utils import read_json

    f = tmp_path / "corpus.jsonl"
    prompts = _entity_corpus(f)
    assert set(TREE_ROUTERS.names()) >= {"centroid", "bm25"}
    got = {}
    for router in TREE_ROUTERS.names():
        cfg = _files_cfg(tmp_path, f, f"retriever.tree.router={router}")
        root = prepare(cfg, progress=False, verbose=False)
        r = load_router(root, cfg)
        assert type(r) is {"centroid": TreeRouter, "bm25": BM25Router}[router]
        keys = read_json(root / "tree" / "keys.json")
        routed = r.route([p for _, p in prompts])
        got[router] = np.mean([list(map(int, p)) == keys[e]["main_path"] for (e, _), p in zip(prompts, routed)])
        st = read_json(root / "stats.json")["routing"]
        assert st["key_field"] == "entity" and st["keys"] == len(prompts)
        if router == "bm25":
            assert st["mean_share"] >= 0.9  # refinement gathered each entity's documents
            # held-out documents were routed by the router itself at preparation
            split, paths = np.load(root / "corpus" / "split.npy"), np.load(root / "tree" / "doc_paths.npy")
            docs = [json.loads(x) for x in open(root / "corpus" / "docs.jsonl")]
            held = np.nonzero(split == 1)[0]
            np.testing.assert_array_equal(r.route([docs[i]["text"] for i in held]), paths[held])
    assert got["bm25"] >= 0.9 and got["bm25"] >= got["centroid"]
    # a config asking for the other router than the data was prepared with is refused
    with pytest.raises(ValueError, match="router"):
        load_router(
            root, _files_cfg(tmp_path, f, f"retriever.tree.router={'bm25' if router == 'centroid' else 'centroid'}")
        )


def test_bm25_router_blocking_ranks_and_forces_paths(tmp_path):
    from hmem_lit.data.prepare import prepare

    f = tmp_path / "corpus.jsonl"
    prompts = _entity_corpus(f, n_entities=20)
    cfg = _files_cfg(tmp_path, f)
    r = load_router(prepare(cfg, progress=False, verbose=False), cfg)
    texts = [p for _, p in prompts] + ["nothing in common with the corpus"]
    paths = r.route(texts)
    for level in (1, 2):
        ranked = r.route_ranked(texts, level)
        assert (ranked[:, 0] == paths[:, level - 1]).all()  # best candidate = the routed node
        assert all(len(set(row)) == r.branching for row in ranked.tolist())
        forced = r.route_from(texts, level, ranked[:, 1])
        assert (forced[:, level - 1] == ranked[:, 1]).all()
        for lvl in range(1, r.depth):  # a path is a path: each node is a child of the one above
            assert (forced[:, lvl] // r.branching == forced[:, lvl - 1]).all()


def test_bad_retriever_and_key_field_input_is_one_line_exit_2(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text(
        '{"text": "zorblax orbits quintar", "entity": "x"}\n{"text": "vexmor shines red"}\n'
        '{"text": "planets drift slowly", "entity": "y"}\n'
    )
    with pytest.raises(ConfigError, match="retriever.tree.router"):
        load_config(None, ["retriever.tree.router=bm26"])
    cmd = [
        sys.executable,
        "-m",
        "hmem_lit.cli",
        "data",
        "prepare",
        "data.source=files",
        f"data.files=[{f}]",
        f"data.dir={tmp_path / 'd'}",
        "data.key_field=entity",
        "data.vocab_size=300",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and "data.key_field='entity'" in err[-1] and "1 of 3" in err[-1]
    p = subprocess.run([*cmd[:-2], "retriever.tree.router=bm26"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "retriever.tree.router" in p.stderr and "Traceback" not in p.stderr


def test_routing_sensitivity_figure_from_benchmark_json(tmp_path):
    from hmem_lit.analysis.routing_figs import routing_sensitivity

    grid = [
        {
            "embedder": "tfidf",
            "router": r,
            "refine": f,
            "branching": b,
            "depth": 2,
            "balance": bal,
            "min_hit_rate": 0.5,
            "concentration": {"mean_share": 0.9},
        }
        for r in ("centroid", "bm25")
        for f in ("none", "bm25")
        for b in (4, 8)
        for bal in (0.094, 1.0)
    ]
    files = routing_sensitivity({"corpora": {"a": {"grid": grid}, "b": {"grid": grid[:4]}}}, tmp_path / "sens")
    assert [p.suffix for p in files] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in files)
