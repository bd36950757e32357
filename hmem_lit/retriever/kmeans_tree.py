"""The hierarchical k-means tree (../shared/PAPERS.md A4): built top-down on faiss, balanced, saved as arrays,
routed greedily.

Node ids: level l (0-based here; "level l+1" in the paper) has branching**(l+1) nodes; the children of node p at
level l are p*branching + c at level l+1. A path is one node id per level.

Building, per node with its assigned documents X (L2-normalised):
- n >= branching: faiss spherical k-means (k-means++ init, explicit seed, niter, max_points_per_centroid sample),
  assignment to the nearest centroid, then the paper's balancing rule: while a child holds more than
  `balance` of the node's documents (never below an even share, ceil(n / branching)), the union of its documents
  and those of the currently smallest child is shuffled and split in half between the two. Afterwards each
  child's centroid is re-estimated as the normalised mean of its documents (`recenter`), so that greedy routing
  of new text goes where the balanced training documents actually are.
- 0 < n < branching: one child per document (centroid = the document); the remaining children are marked
  invalid and are never routed to.
- n == 0 (an empty node, reachable only by routing new text): child 0 copies the node's centroid, the others are
  invalid, so descent is always defined.
Training documents keep the balanced assignment as their path; new text is routed by greedy descent (nearest
valid child at every level). `stats` reports how often the two agree on the training documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmem_lit.utils import atomic_write


@dataclass
class KMeansTree:
    branching: int
    depth: int
    centroids: list[np.ndarray]  # level l: (branching**(l+1), d) float32
    valid: list[np.ndarray]  # level l: (branching**(l+1),) bool
    stats: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.centroids[0].shape[1])

    # ---------------------------------------------------------------------------------------------- routing
    def _child_dist(self, x: np.ndarray, level: int, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, d), parents (N,) node ids at level-1 (zeros for level 0) -> candidates (N, k), sq. distances (N, k)."""
        k = self.branching
        cand = parents[:, None] * k + np.arange(k)[None, :]  # (N, k)
        C, ok = self.centroids[level], self.valid[level]
        sq = self._sqnorm(level)
        out = np.empty(cand.shape, np.float32)
        step = 2048
        for i in range(0, len(x), step):
            c = cand[i : i + step]
            g = C[c]  # (n, k, d)
            xx = x[i : i + step]
            out[i : i + step] = (xx * xx).sum(1, keepdims=True) + sq[c] - 2.0 * np.einsum("nd,nkd->nk", xx, g)
        out[~ok[cand]] = np.inf
        return cand, out

    def _sqnorm(self, level: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_sq", {})
        if level not in cache:
            cache[level] = (self.centroids[level] ** 2).sum(1)
        return cache[level]

    def descend(self, x: np.ndarray, start: np.ndarray | None = None, start_level: int = 0) -> np.ndarray:
        """Greedy descent. With `start` (N,) node ids at 0-based `start_level`, the path is forced through them."""
        x = np.ascontiguousarray(x, np.float32)
        n, k = len(x), self.branching
        paths = np.zeros((n, self.depth), np.int64)
        node = np.zeros(n, np.int64)
        first = 0
        if start is not None:
            node = np.asarray(start, np.int64)
            for lvl in range(start_level, -1, -1):  # ancestors of the forced node
                paths[:, lvl] = node // k ** (start_level - lvl)
            first = start_level + 1
        for lvl in range(first, self.depth):
            cand, d = self._child_dist(x, lvl, node if lvl > 0 else np.zeros(n, np.int64))
            node = cand[np.arange(n), d.argmin(1)]
            paths[:, lvl] = node
        return paths

    def route(self, x: np.ndarray) -> np.ndarray:
        """(N, d) normalised embeddings -> (N, depth) node ids."""
        return self.descend(x)

    def rank(self, x: np.ndarray, level: int) -> np.ndarray:
        """Candidates at 0-based `level` under the greedy parent, nearest first -> (N, branching); invalid last."""
        x = np.ascontiguousarray(x, np.float32)
        n = len(x)
        parents = self.descend(x)[:, level - 1] if level > 0 else np.zeros(n, np.int64)
        cand, d = self._child_dist(x, level, parents)
        order = np.argsort(d, axis=1, kind="stable")
        return np.take_along_axis(cand, order, 1)

    # ------------------------------------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> None:
        arrays = {f"centroids_{i}": c for i, c in enumerate(self.centroids)}
        arrays.update({f"valid_{i}": v for i, v in enumerate(self.valid)})
        arrays["shape"] = np.array([self.branching, self.depth], np.int64)
        # numpy's stub types savez's **kwds as if they could bind allow_pickle: bool; these are array names
        atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), **arrays))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> KMeansTree:
        with np.load(path, allow_pickle=False) as z:
            b, depth = (int(v) for v in z["shape"])
            return cls(b, depth, [z[f"centroids_{i}"] for i in range(depth)], [z[f"valid_{i}"] for i in range(depth)])


# -------------------------------------------------------------------------------------------------- building


def _kmeans(x: np.ndarray, k: int, niter: int, mppc: int, seed: int) -> np.ndarray:
    import faiss

    # one OpenMP thread: a 16-way k-means on a few thousand points takes milliseconds, while spinning OpenMP
    # barriers on a shared 2-core machine made each call ~30x slower when another process held a core
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return _kmeans_inner(x, k, niter, mppc, seed)
    finally:
        faiss.omp_set_num_threads(threads)


def _kmeans_inner(x: np.ndarray, k: int, niter: int, mppc: int, seed: int) -> np.ndarray:
    import faiss

    kw = dict(
        niter=niter, seed=seed, spherical=True, max_points_per_centroid=mppc, min_points_per_centroid=1, verbose=False
    )
    if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):  # faiss >= 1.14
        kw["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        km = faiss.Kmeans(x.shape[1], k, **kw)
        km.train(x)
    else:  # older faiss: our own k-means++ seeding on faiss's sample size, passed as initial centroids
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(len(x), min(len(x), mppc * k), replace=False)]
        km = faiss.Kmeans(x.shape[1], k, **kw)
        km.train(x, init_centroids=_kmeanspp(sample, k, rng))
    return np.ascontiguousarray(km.centroids, np.float32)


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    c = [x[rng.integers(len(x))]]
    d = ((x - c[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d / d.sum() if d.sum() > 0 else None
        c.append(x[rng.choice(len(x), p=p)])
        d = np.minimum(d, ((x - c[-1]) ** 2).sum(1))
    return np.stack(c).astype(np.float32)


def nearest(x: np.ndarray, c: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    d = (x * x).sum(1, keepdims=True) + (c * c).sum(1)[None] - 2.0 * x @ c.T
    if ok is not None:
        d[:, ~ok] = np.inf
    return d.argmin(1)


def balance_assignments(assign: np.ndarray, k: int, balance: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The paper's rule: a child over `balance` of the parent's points is merged with the smallest, split at random."""
    assign = assign.copy()
    n = len(assign)
    cap = max(balance * n, math.ceil(n / k))
    splits = 0
    for _ in range(8 * k * k):
        counts = np.bincount(assign, minlength=k)
        big, small = int(counts.argmax()), int(counts.argmin())
        if counts[big] <= cap or big == small:
            break
        pool = np.nonzero((assign == big) | (assign == small))[0]
        pool = pool[rng.permutation(len(pool))]
        assign[pool[: (len(pool) + 1) // 2]] = big
        assign[pool[(len(pool) + 1) // 2 :]] = small
        splits += 1
    return assign, splits


def build_tree(
    x: np.ndarray,
    branching: int = 16,
    depth: int = 2,
    balance: float = 0.094,
    niter: int = 20,
    max_points_per_centroid: int = 256,
    seed: int = 0,
    recenter: bool = True,
    progress: bool = False,
    agreement: bool = True,
) -> tuple[KMeansTree, np.ndarray]:
    """x (N, d) L2-normalised -> (tree, assignments (N, depth) node ids of each training document).
    agreement=False skips stats["route_agreement"] (a greedy descent of every point: callers that refine the
    assignment compute it afresh)."""
    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    k = branching
    rng = np.random.default_rng(seed)
    assign = np.zeros((n, depth), np.int64)
    centroids, valid = [], []
    parent_of = np.zeros(n, np.int64)  # node id at the previous level (virtual root = 0)
    parent_centroid = {0: l2n(x.mean(0)) if n else np.zeros(d, np.float32)}
    total_splits = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(k**lvl for lvl in range(depth)), desc="k-means tree", leave=False)
    for lvl in range(depth):
        n_nodes = k ** (lvl + 1)
        C = np.zeros((n_nodes, d), np.float32)
        ok = np.zeros(n_nodes, bool)
        order = np.argsort(parent_of, kind="stable")
        bounds = np.searchsorted(parent_of[order], np.arange(k**lvl + 1))
        next_centroid = {}
        for p in range(k**lvl):
            idx = order[bounds[p] : bounds[p + 1]]
            base = p * k
            if len(idx) == 0:
                C[base] = parent_centroid.get(p, np.zeros(d, np.float32))
                ok[base] = True
            elif len(idx) < k:
                C[base : base + len(idx)] = x[idx]
                ok[base : base + len(idx)] = True
                assign[idx, lvl] = base + nearest(x[idx], C[base : base + k], ok[base : base + k])
            else:
                c = _kmeans(x[idx], k, niter, max_points_per_centroid, seed + p + 7919 * lvl)
                a = nearest(x[idx], c)
                a, s = balance_assignments(a, k, balance, rng)
                total_splits += s
                if recenter:
                    for j in np.unique(a):
                        c[j] = l2n(x[idx[a == j]].mean(0))
                C[base : base + k] = c
                ok[base : base + k] = True
                assign[idx, lvl] = base + a
            for j in range(base, base + k):
                if ok[j]:
                    next_centroid[j] = C[j]
            if bar is not None:
                bar.update(1)
        centroids.append(C)
        valid.append(ok)
        parent_of = assign[:, lvl]
        parent_centroid = next_centroid
    if bar is not None:
        bar.close()
    tree = KMeansTree(k, depth, centroids, valid)
    tree.stats = cluster_stats(assign, k, depth)
    tree.stats["balance_splits"] = total_splits
    if agreement:
        tree.stats["route_agreement"] = float((tree.route(x)[:, -1] == assign[:, -1]).mean()) if n else 1.0
    return tree, assign


def l2n(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def cluster_stats(paths: np.ndarray, branching: int, depth: int) -> dict:
    """Documents per node at each level: non-empty nodes, min/median/max size, largest share of its parent."""
    out = {}
    for lvl in range(depth):
        counts = np.bincount(paths[:, lvl], minlength=branching ** (lvl + 1)) if len(paths) else np.zeros(1)
        nz = counts[counts > 0]
        parent = counts.reshape(-1, branching)  # (parents, k)
        tot = parent.sum(1)
        big = tot >= branching  # parents that were clustered (a node with fewer docs than children is exempt)
        share = parent.max(1)[big] / tot[big] if big.any() else np.zeros(1)
        out[f"level{lvl + 1}"] = {
            "nodes": int(len(counts)),
            "non_empty": int(len(nz)),
            "min": int(nz.min()) if len(nz) else 0,
            "median": float(np.median(nz)) if len(nz) else 0.0,
            "max": int(nz.max()) if len(nz) else 0,
            "max_share_of_parent": float(share.max()),
        }
    return out


def recenter_tree(tree: KMeansTree, x: np.ndarray, assign: np.ndarray) -> None:
    """Re-estimate every node's centroid as the normalised mean of the documents now assigned to it (after a
    refinement moved documents between leaves), so centroid routing and blocking follow the final clusters.
    Nodes left without documents keep their centroid; validity is unchanged."""
    for lvl in range(tree.depth):
        C = tree.centroids[lvl]
        ids = assign[:, lvl]
        sums = np.zeros_like(C)
        np.add.at(sums, ids, x)
        has = np.bincount(ids, minlength=len(C)) > 0
        norms = np.linalg.norm(sums[has], axis=1, keepdims=True)
        C[has] = sums[has] / np.maximum(norms, 1e-12)
    tree.__dict__.pop("_sq", None)
