"""The `tree` retriever: a hierarchical k-means tree over document embeddings (kmeans_tree.py), with a router for
new text (`retriever.tree.router`: centroid descent, or a vote of BM25 neighbours: bm25.py) and an optional
label-propagation refinement of the clusters on the BM25 neighbour graph (`retriever.tree.refine`).

Fit (`hmem data prepare`'s tree stage, on the `FitData` of base.py): the k-means tree (and, with
retriever.tree.router/refine=bm25, the BM25 index and the neighbour refinement) is fitted on the training documents of
a seeded sample of at most `retriever.fit_sample` (all of them when the corpus is smaller: then the result equals
fitting on the whole corpus). Sampled training documents keep their (balanced, refined) cluster assignment as
their path (`train_paths=assigned`, the paper); held-out documents are routed like new text, chunk by chunk, by
the configured router, and training documents outside the sample by their embedding's greedy descent
(`retriever.tree.route_unsampled=centroid`, the k-means assignment rule; ~40x cheaper than a BM25 vote) or by the
router (`route_unsampled=router`). Saves tree/tree.npz (+ tree/bm25/, tree/index_paths.npy with router=bm25).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hmem_lit.registry import RETRIEVERS, TREE_REFINERS, TREE_ROUTERS
from hmem_lit.retriever.base import FitData, Fitted, Retriever, leaf_to_path
from hmem_lit.retriever.kmeans_tree import KMeansTree
from hmem_lit.utils import atomic_write

# How a tree routes new text (`retriever.tree.router`): registered here so config validation, `hmem list` and the
# tests read one list. Each entry is a short description.
TREE_ROUTERS.register("centroid")("greedy descent to the nearest centroid at every level (the paper)")
TREE_ROUTERS.register("bm25")("vote of the BM25-nearest training documents' paths (retriever/bm25.py)")
# How the k-means clusters are refined (`retriever.tree.refine`)
TREE_REFINERS.register("bm25")("label propagation on the training documents' BM25 neighbour graph (retriever/bm25.py)")
TREE_REFINERS.register("none")("the k-means clusters as built")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), arr))


@RETRIEVERS.register("tree")
class TreeRouter(Retriever):
    """Embed with the saved embedder, then greedy descent through the k-means tree. `embedder`: an Embedder, or
    the directory of a saved one (loaded on first use)."""

    type = "tree"
    needs_embeddings: ClassVar[bool] = True
    meta_defaults: ClassVar[dict[str, Any]] = {"router": "centroid"}  # prepared before the router setting existed
    router = "centroid"

    def __init__(
        self, tree: KMeansTree, embedder: Any, seed: int = 0, *, embedder_name: str = "", embedder_dir: str = ""
    ):
        super().__init__(tree.branching, tree.depth, seed)
        self.tree, self._embedder = tree, embedder
        self.embedder_name, self.embedder_dir = embedder_name, embedder_dir  # router.json's record

    @property
    def embedder(self) -> Any:
        if isinstance(self._embedder, (str, Path)):
            from hmem_lit.retriever.embedders import load_embedder

            self._embedder = load_embedder(self._embedder)
        return self._embedder

    # the contract --------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: FitData) -> Fitted:
        from hmem_lit.retriever.kmeans_tree import build_tree

        r, split, fit = data.cfg.retriever, data.split, data.sample
        assert data.embeddings is not None  # needs_embeddings: the embeddings stage ran
        x_fit = data.embedding_rows(fit)
        bm25 = r.tree.router == "bm25" or r.tree.refine == "bm25"
        tree, assign = build_tree(
            x_fit,
            r.branching,
            r.depth,
            r.tree.balance,
            r.tree.niter,
            r.tree.max_points_per_centroid,
            r.seed,
            r.tree.recenter,
            progress=data.progress,
            agreement=not bm25,  # _bm25_fit sets it for the refined assignment
        )
        stats = dict(tree.stats)
        stats["fit_docs"] = int(len(fit))
        edir = data.root / data.embeddings
        names = {"embedder_name": r.embedder, "embedder_dir": data.embeddings}
        rt: TreeRouter = TreeRouter(tree, edir, r.seed, **names)
        if bm25:
            fit_paths, index = _bm25_fit(data, tree, x_fit, assign, stats)
            if index is not None:
                rt = BM25Router(tree, edir, index, fit_paths, r.tree.knn_k, r.seed, **names)
        else:
            fit_paths = assign if r.tree.train_paths == "assigned" else tree.route(x_fit)
        del x_fit
        paths = np.zeros((len(split), r.depth), np.int64)
        paths[fit] = fit_paths
        rest = np.ones(len(split), bool)  # routed by the configured router: held-out (+ unsampled) documents
        rest[fit] = False
        by_centroid = np.zeros(len(split), bool)
        if rt.router == "bm25" and r.tree.route_unsampled == "centroid":
            by_centroid = rest & (split == 0)
            rest &= ~by_centroid
        meta = rt.save(data.out)  # before routing: worker processes load the router from tree/
        t0 = time.perf_counter()
        _route_rest(data, by_centroid, paths, tree, None)
        _route_rest(data, rest, paths, tree, rt if rt.router == "bm25" else None)
        stats["route_rest_s"] = round(time.perf_counter() - t0, 3)
        stats["routed_docs"] = {"router": int(rest.sum()), "centroid": int(by_centroid.sum())}
        return Fitted(rt, paths, stats, meta)

    def save(self, out: Path) -> dict[str, Any]:
        self.tree.save(out / "tree.npz")
        return {"embedder": self.embedder_name, "embedder_dir": self.embedder_dir, "router": self.router}

    @classmethod
    def load(cls, out: Path, meta: dict[str, Any], data_dir: Path) -> Retriever:
        from hmem_lit.retriever.embedders import load_embedder

        tree, edir = KMeansTree.load(out / "tree.npz"), load_embedder(data_dir / meta["embedder_dir"])
        names = {"embedder_name": meta.get("embedder", ""), "embedder_dir": meta["embedder_dir"]}
        if meta["router"] == "bm25":
            from hmem_lit.retriever.bm25 import BM25Index

            idx_paths = np.load(out / "index_paths.npy", allow_pickle=False)
            index = BM25Index.load(out / "bm25")
            return BM25Router(tree, edir, index, idx_paths, int(meta["knn_k"]), meta.get("seed", 0), **names)
        return TreeRouter(tree, edir, meta.get("seed", 0), **names)

    @classmethod
    def prefit(cls, cfg: Any) -> Callable[[list[str]], Any] | None:
        """The BM25 index of the fit sample, when the router or the refinement uses one."""
        import functools

        from hmem_lit.retriever.bm25 import BM25Index

        r = cfg.retriever
        bm25 = r.tree.router == "bm25" or r.tree.refine == "bm25"
        return functools.partial(BM25Index.fit, max_df=r.tree.bm25_max_df) if bm25 else None

    @classmethod
    def expects(cls, cfg: Any) -> dict[str, Any]:
        return {"embedder": cfg.retriever.embedder, "router": cfg.retriever.tree.router}

    # routing -------------------------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    def route(self, texts: Sequence[str]) -> np.ndarray:
        return self.tree.route(self.embed(texts))

    def route_embeddings(self, emb: np.ndarray) -> np.ndarray:
        return self.tree.route(emb)

    def route_ranked(self, texts: Sequence[str], level: int) -> np.ndarray:
        self._check_level(level)
        return self.tree.rank(self.embed(texts), level - 1)

    def valid(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """Whether level-`level` (1-based) nodes exist in the tree (a node with fewer documents than children
        leaves some children unused; route_ranked sorts those last)."""
        self._check_level(level)
        return self.tree.valid[level - 1][np.asarray(nodes, np.int64)]

    def route_from(self, texts: Sequence[str], level: int, nodes: np.ndarray) -> np.ndarray:
        self._check_level(level)
        return self.tree.descend(self.embed(texts), np.asarray(nodes, np.int64), level - 1)


class BM25Router(TreeRouter):
    """Routes text by the paths of its `k` BM25-nearest training documents (hierarchical vote, bm25.vote_paths);
    text sharing no indexed term with any training document falls back to the centroid descent."""

    router = "bm25"

    def __init__(
        self,
        tree: KMeansTree,
        embedder: Any,
        index: Any,
        doc_paths: np.ndarray,
        k: int = 10,
        seed: int = 0,
        **names: Any,
    ):
        super().__init__(tree, embedder, seed, **names)
        self.index, self.doc_paths, self.k = index, np.asarray(doc_paths, np.int64), k

    def save(self, out: Path) -> dict[str, Any]:
        meta = super().save(out)
        self.index.save(out / "bm25")
        _save_npy(out / "index_paths.npy", self.doc_paths.astype(np.int64))
        return {**meta, "knn_k": self.k}

    def _descend_votes(
        self,
        texts: Sequence[str],
        start: np.ndarray | None = None,
        start_level: int = -1,
        voters: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        from hmem_lit.retriever.bm25 import vote_paths

        ids, sc = voters if voters is not None else self.index.topk(list(texts), self.k)
        paths, voted = vote_paths(ids, sc, self.doc_paths, self.branching, start, start_level)
        miss = np.nonzero(~voted)[0]
        if len(miss):  # no indexed term in common with any training document (under `start`): centroids decide
            x = self.embed([texts[int(i)] for i in miss])
            paths[miss] = (
                self.tree.descend(x)
                if start is None
                else self.tree.descend(x, np.asarray(start, np.int64)[miss], start_level)
            )
        return paths

    def route(self, texts: Sequence[str]) -> np.ndarray:
        return self._descend_votes(list(texts))

    def route_embeddings(self, emb: np.ndarray) -> np.ndarray:
        raise NotImplementedError("retriever.tree.router=bm25 routes text, not embeddings")

    def route_from(self, texts: Sequence[str], level: int, nodes: np.ndarray) -> np.ndarray:
        self._check_level(level)
        return self._descend_votes(list(texts), np.asarray(nodes, np.int64), level - 1)

    def route_ranked(self, texts: Sequence[str], level: int) -> np.ndarray:
        """Level-`level` candidates under the routed parent: by summed vote of the voters there, then by centroid
        distance (invalid nodes last)."""
        self._check_level(level)
        texts = list(texts)
        lvl = level - 1
        ids, sc = self.index.topk(texts, self.k)  # one lookup serves the route and the ranking
        paths = self._descend_votes(texts, voters=(ids, sc))
        parents = paths[:, lvl - 1] if lvl > 0 else np.zeros(len(texts), np.int64)
        cand, dist = self.tree._child_dist(self.embed(texts), lvl, parents)  # (N, K)
        alive = (ids >= 0) & (sc > 0)
        if lvl > 0:  # only voters under the routed parent
            alive &= self.doc_paths[np.maximum(ids, 0), lvl - 1] == parents[:, None]
        node = self.doc_paths[np.maximum(ids, 0), lvl]  # (N, k)
        votes = ((node[:, None, :] == cand[:, :, None]) * np.where(alive, sc, 0.0)[:, None, :]).sum(2)  # (N, K)
        order = np.array([np.lexsort((d, -v)) for d, v in zip(dist, votes)], np.int64).reshape(cand.shape)
        return np.take_along_axis(cand, order, 1)


# fitting: the BM25 parts, and routing the documents outside the fit sample in chunks ---------------------------

_ROUTER: dict[str, Any] = {}
_GRAPH: dict[str, Any] = {}


def _knn_chunk(job: tuple[str, int, Any, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The neighbours of the fitted documents start.. (their query rows) in the index saved at gdir (one load per
    process)."""
    from hmem_lit.retriever.bm25 import BM25Index

    gdir, start, queries, k, max_postings = job
    if gdir not in _GRAPH:
        _GRAPH.clear()
        index = BM25Index.load(gdir)
        df = np.bincount(index.W.indices, minlength=index.W.shape[1])
        _GRAPH[gdir] = index, (df <= max_postings).astype(np.float32)
    index, terms = _GRAPH[gdir]
    n = queries.shape[0]
    return index.topk([], k, exclude=np.arange(start, start + n), terms=terms, queries=queries)


def _knn_graph_on(
    data: FitData, index: Any, texts: Callable[[], list[str]], gdir: Path, k: int, max_postings: int
) -> tuple[np.ndarray, np.ndarray]:
    """bm25.knn_graph in chunks of rows on the engine (the index saved to gdir for the workers). Every row's
    neighbours depend on that row and the index only, so the result equals knn_graph's exactly."""
    index.save(gdir)
    step = max(64, min(data.cfg.data.chunk_docs, 4096) // 64 * 64)  # whole 64-query blocks, as topk batches them
    Q = index.fit_queries if index.fit_queries is not None else index.query_matrix(texts())
    jobs = ((str(gdir), a, Q[a : a + step], k, max_postings) for a in range(0, Q.shape[0], step))
    parts = list(data.map(_knn_chunk, jobs))
    if not parts:
        return np.full((0, k), -1, np.int64), np.zeros((0, k), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _route_chunk(job: tuple[str, str, int, list[str]]) -> np.ndarray:
    """BM25-route texts with the router saved in tree/ (loaded once per worker process)."""
    from hmem_lit.retriever.bm25 import BM25Index

    tdir, edir, k, texts = job
    if tdir not in _ROUTER:
        _ROUTER.clear()
        t = Path(tdir)
        idx_paths = np.load(t / "index_paths.npy", allow_pickle=False)
        _ROUTER[tdir] = BM25Router(KMeansTree.load(t / "tree.npz"), edir, BM25Index.load(t / "bm25"), idx_paths, k)
    return _ROUTER[tdir].route(texts)


def _route_rest(data: FitData, rest: np.ndarray, paths: np.ndarray, tree: KMeansTree, router: Any) -> None:
    """Route the documents flagged in `rest` chunk by chunk: by text (bm25 router; on the engine) or by
    embedding (centroids: router None)."""
    if not rest.any():
        return
    if router is None:
        for a, x in data.embedding_chunks():
            idx = np.nonzero(rest[a : a + len(x)])[0]
            if len(idx):
                paths[idx + a] = tree.route(np.ascontiguousarray(x[idx]))
        return
    tdir = str(data.out)
    if data.in_process:  # in this process: the router in memory
        _ROUTER.clear()
        _ROUTER[tdir] = router
    edir = str(data.root / str(data.embeddings))
    pending: list[np.ndarray] = []

    def jobs():
        for start, docs in data.doc_chunks():
            idx = np.nonzero(rest[start : start + len(docs)])[0]
            if len(idx):
                pending.append(idx + start)
                yield tdir, edir, router.k, [docs[i]["text"] for i in idx]

    for routed in data.map(_route_chunk, jobs()):
        paths[pending.pop(0)] = routed
    _ROUTER.clear()


def _bm25_fit(
    data: FitData, tree: KMeansTree, x: np.ndarray, assign: np.ndarray, stats: dict
) -> tuple[np.ndarray, Any]:
    """The BM25 parts of the fit on the sample: index its documents, refine the clusters on their neighbour graph
    (refine=bm25) -> (the sample's final paths, the BM25 index for router=bm25, else None)."""
    from hmem_lit.retriever.bm25 import BM25Index, knn_graph, refine_leaves, vote_paths
    from hmem_lit.retriever.kmeans_tree import cluster_stats, recenter_tree

    t = data.cfg.retriever.tree
    t0 = time.perf_counter()
    texts = lambda: list(data.texts(data.sample))  # noqa: E731 (read only when needed: not with a prefit index)
    fitting = data.prefit  # fitted in a worker beside the embedding stage (data/branch.py)
    index = fitting.result() if fitting is not None else BM25Index.fit(texts(), max_df=t.bm25_max_df)
    if data.in_process:
        nbr, w = knn_graph(index, [] if index.fit_queries is not None else texts(), t.knn_k, t.graph_max_postings)
    else:
        nbr, w = _knn_graph_on(data, index, texts, data.out / "bm25", t.knn_k, t.graph_max_postings)
        if t.router != "bm25":
            import shutil

            shutil.rmtree(data.out / "bm25")  # saved for the workers only: an output with router=bm25
    stats["bm25"] = {"terms": len(index.vocab), "index_s": round(time.perf_counter() - t0, 3)}
    if t.refine == "bm25" and t.refine_iters > 0:
        leaves = refine_leaves(assign[:, -1], nbr, w, t.refine_iters, t.refine_cap, stats["bm25"])
        assign = leaf_to_path(leaves, tree.branching, tree.depth)
        recenter_tree(tree, x, assign)
        stats.update(cluster_stats(assign, tree.branching, tree.depth))
    # the path a prompt with each training document's text would take: bm25, the vote of its neighbours (itself
    # excluded); centroid, greedy descent
    if t.router == "bm25":
        voted_paths, voted = vote_paths(nbr, w, assign, tree.branching)
        routed = np.where(voted[:, None], voted_paths, assign)
    else:
        routed = tree.route(x)
    stats["route_agreement"] = float((routed[:, -1] == assign[:, -1]).mean()) if len(x) else 1.0
    if t.train_paths == "routed":
        assign = routed
    stats["bm25"]["total_s"] = round(time.perf_counter() - t0, 3)
    return assign, index if t.router == "bm25" else None
