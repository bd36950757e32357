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

from hmem_lit.registry import Registry
from hmem_lit.retriever.kmeans_tree import KMeansTree
from hmem_lit.utils import read_json

RETRIEVERS = Registry("retriever")


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
            want["embedder"] = r.embedder
        got = {k: meta.get(k) for k in want}
        if got != want:
            raise ValueError(f"{d}: prepared with retriever {got}, but the config asks for {want}; "
                             "re-run `hmem data prepare` with this config")
    kind = meta["type"]
    if kind == "tree":
        from hmem_lit.retriever.embedders import load_embedder

        tree = KMeansTree.load(d / "tree" / "tree.npz")
        return TreeRouter(tree, load_embedder(d / meta["embedder_dir"]), seed=meta.get("seed", 0))
    if kind == "oracle":
        return OracleRouter(meta["branching"], meta["depth"], meta.get("seed", 0), meta.get("oracle_field", "kind"))
    return RETRIEVERS.get(kind)(meta["branching"], meta["depth"], meta.get("seed", 0))
