"""Routers: text (or a record) -> one tree node id per level. The retriever half that runs at evaluation time.

`load_router(data_dir, cfg)` returns the router the data was prepared with:
- `tree`: embed with the saved embedder, then greedy descent through the saved k-means tree (kmeans_tree.py).
- `random`: a seeded hash of the text picks a leaf (the same text always gets the same path): routing carries
  no information, a control for "does routing matter".
- `oracle`: a seeded hash of a metadata field (`retriever.oracle_field`, e.g. `entity` or `kind`) picks the leaf,
  so every document and prompt with the same value shares a path: perfect routing by construction. Plain text has
  no metadata, so `route(texts)` falls back to hashing the text; use `route_records` with the question items.

Levels in this API are 1-based like the paper and `eval.block_level` (level 1 = the 16 top clusters = path
column 0). For blocking: `ranked = r.route_ranked(texts, L)`; `ranked[:, 0]` is the best-matching level-L node
(the subtree to block) and `r.route_from(texts, L, ranked[:, 1])` is the path through the next-nearest one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.registry import RETRIEVERS as _RETRIEVERS
from hmem_lit.registry import TREE_REFINERS as _TREE_REFINERS
from hmem_lit.registry import TREE_ROUTERS as _TREE_ROUTERS
from hmem_lit.retriever.kmeans_tree import KMeansTree
from hmem_lit.utils import read_json

RETRIEVERS = _RETRIEVERS


def _hash(seed: int, value: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{value}".encode(), digest_size=8).digest(), "little")


def leaf_to_path(leaves: np.ndarray, branching: int, depth: int) -> np.ndarray:
    """Leaf ids at the last level -> (N, depth) ancestor ids (level l id = leaf // branching**(depth-1-l))."""
    leaves = np.asarray(leaves, np.int64)
    return np.stack([leaves // branching ** (depth - 1 - lvl) for lvl in range(depth)], 1).reshape(-1, depth)


class Router:
    """Base: subclasses implement `_leaves(values)` (hash routers) or override the routing methods (tree)."""

    type = "base"

    def __init__(self, branching: int, depth: int, seed: int = 0):
        self.branching, self.depth, self.seed = branching, depth, seed

    # hash routers ------------------------------------------------------------------------------------------
    def _hash_paths(self, values: Sequence[str]) -> np.ndarray:
        n_leaves = self.branching**self.depth
        leaves = np.array([_hash(self.seed, v) % n_leaves for v in values], np.int64)
        return leaf_to_path(leaves, self.branching, self.depth)

    def route(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> (N, depth) int64 node ids."""
        return self._hash_paths(list(texts))

    def route_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Question items / documents -> paths; routes `route_text` (or `text`) for text-based routers."""
        return self.route([r.get("route_text", r.get("text", "")) for r in records])

    def route_ranked(self, texts: Sequence[str], level: int) -> np.ndarray:
        """(N, branching) level-`level` (1-based) candidates under the routed parent, best first."""
        self._check_level(level)
        best = self.route(texts)[:, level - 1]
        parent = best // self.branching
        out = np.empty((len(best), self.branching), np.int64)
        for i, (b, p) in enumerate(zip(best, parent)):
            rest = [p * self.branching + c for c in range(self.branching) if p * self.branching + c != b]
            rng = np.random.default_rng([self.seed, int(b)])
            out[i] = [b] + [rest[j] for j in rng.permutation(len(rest))]
        return out

    def route_from(self, texts: Sequence[str], level: int, nodes: np.ndarray) -> np.ndarray:
        """Paths forced through `nodes` at `level` (1-based); below it, this router's own choice."""
        self._check_level(level)
        nodes = np.asarray(nodes, np.int64)
        paths = self.route(texts).copy()
        for lvl in range(level - 1, -1, -1):
            paths[:, lvl] = nodes // self.branching ** (level - 1 - lvl)
        for lvl in range(level, self.depth):  # keep the routed child index below the forced node
            child = paths[:, lvl] % self.branching
            paths[:, lvl] = paths[:, lvl - 1] * self.branching + child
        return paths

    def route_embeddings(self, emb: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"the {self.type} router does not route embeddings")

    def valid(self, level: int, nodes: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(nodes), bool)  # hash routers use every node

    def _check_level(self, level: int) -> None:
        if not 1 <= level <= self.depth:
            raise ValueError(f"level must be in 1..{self.depth} (1-based), got {level}")


@RETRIEVERS.register("random")
class RandomRouter(Router):
    type = "random"


@RETRIEVERS.register("oracle")
class OracleRouter(Router):
    type = "oracle"

    def __init__(self, branching: int, depth: int, seed: int = 0, field: str = "kind"):
        super().__init__(branching, depth, seed)
        self.field = field

    def key(self, record: dict[str, Any]) -> str:
        v = record.get(self.field)
        if v is None:  # documents without the field: fall back to the text (a random-like path)
            return "text:" + str(record.get("route_text", record.get("text", "")))
        return f"{self.field}:{v}"

    def route_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        return self._hash_paths([self.key(r) for r in records])


@RETRIEVERS.register("tree")
class TreeRouter(Router):
    type = "tree"

    def __init__(self, tree: KMeansTree, embedder: Any, seed: int = 0):
        super().__init__(tree.branching, tree.depth, seed)
        self.tree, self.embedder = tree, embedder

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


# How a tree routes new text (`retriever.router`): registered here so config validation, `hmem list` and the
# tests read one list. Each entry is a short description.
TREE_ROUTERS = _TREE_ROUTERS
TREE_ROUTERS.register("centroid")("greedy descent to the nearest centroid at every level (the paper)")
TREE_ROUTERS.register("bm25")("vote of the BM25-nearest training documents' paths (retriever/bm25.py)")
# How the k-means clusters are refined (`retriever.refine`, data/tree_stage.py)
TREE_REFINERS = _TREE_REFINERS
TREE_REFINERS.register("bm25")("label propagation on the training documents' BM25 neighbour graph (retriever/bm25.py)")
TREE_REFINERS.register("none")("the k-means clusters as built")


class BM25Router(TreeRouter):
    """Routes text by the paths of its `k` BM25-nearest training documents (hierarchical vote, bm25.vote_paths);
    text sharing no indexed term with any training document falls back to the centroid descent."""

    type = "tree"

    def __init__(self, tree: KMeansTree, embedder: Any, index: Any, doc_paths: np.ndarray, k: int = 10, seed: int = 0):
        super().__init__(tree, embedder, seed)
        self.index, self.doc_paths, self.k = index, np.asarray(doc_paths, np.int64), k

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
        raise NotImplementedError("retriever.router=bm25 routes text, not embeddings")

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


def load_router(data_dir: str | Path, cfg: Any = None) -> Router:
    """The router saved with prepared data (`<data_dir>/tree/router.json`). `cfg` (a RunConfig), if given, must
    agree with it on the retriever type, branching and depth: a mismatch means the data was prepared for a
    different configuration, and routing prompts differently from the training data would be silently wrong."""
    d = Path(data_dir)
    meta_path = d / "tree" / "router.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} missing: run `hmem data prepare` for this configuration first")
    meta = read_json(meta_path)
    if cfg is not None:
        r = cfg.retriever
        want = {"type": r.type, "branching": r.branching, "depth": r.depth}
        if r.type == "tree":
            want.update(embedder=r.embedder, router=r.router)
        got = {k: meta.get(k, "centroid" if k == "router" else None) for k in want}
        if got != want:
            raise ValueError(
                f"{d}: prepared with retriever {got}, but the config asks for {want}; "
                "re-run `hmem data prepare` with this config"
            )
    kind = meta["type"]
    if kind == "tree":
        from hmem_lit.retriever.embedders import load_embedder

        tree = KMeansTree.load(d / "tree" / "tree.npz")
        emb = load_embedder(d / meta["embedder_dir"])
        if meta.get("router", "centroid") == "bm25":
            from hmem_lit.retriever.bm25 import BM25Index

            idx_paths = np.load(d / "tree" / "index_paths.npy", allow_pickle=False)
            return BM25Router(
                tree, emb, BM25Index.load(d / "tree" / "bm25"), idx_paths, int(meta["knn_k"]), seed=meta.get("seed", 0)
            )
        return TreeRouter(tree, emb, seed=meta.get("seed", 0))
    if kind == "oracle":
        return OracleRouter(meta["branching"], meta["depth"], meta.get("seed", 0), meta.get("oracle_field", "kind"))
    return RETRIEVERS.get(kind)(meta["branching"], meta["depth"], meta.get("seed", 0))
