"""Routing by the nearest training documents: a BM25 index over the training documents, the vote router, and the
neighbour refinement of the clustering.

Why: a k-means centroid averages many documents, so a short prompt ("The atomic number of Osmium is") lands near
the template words it shares with them, not near the rare name that identifies it. A lexical index finds the few
training documents that share the prompt's rare words; their tree paths vote (LOG 2026-12-01 "retrieval").

- `BM25Index`: Okapi BM25 weights (k1, b) of the training documents as a sparse (N, V) matrix over the terms
  that occur in at most `max_df` of the documents (lower-case words, English stop words dropped). Terms in more
  documents are template words: they carry no identity, and dropping them keeps every lookup cheap (a query
  only touches the short posting lists of rare terms). Saved as plain arrays + JSON, never pickled.
- `vote_paths`: the top-k documents' paths vote level by level (scores summed per node; the best node, then the
  best child of it among the voters, ...). Text with no indexed term falls back to the centroid descent.
- `refine_leaves` (`retriever.tree.refine=bm25`): label propagation on the training documents' k-nearest-neighbour
  graph: a document moves to the leaf its neighbours vote for, `iters` rounds (half of the documents, seeded, per
  round), a leaf taking at most `cap` times the mean leaf size. Documents that share rare words (an entity's
  documents) end in one leaf, and the tree still mirrors the clustering: a leaf's documents define its block and its
  centroid is re-estimated.
Cost: the graph is one sparse product per chunk of documents; its queries skip terms in more than
`retriever.tree.graph_max_postings` documents, which keeps it linear in the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.utils import atomic_write, atomic_write_text

_TOKEN_PATTERN = r"(?u)\b\w+\b"  # single characters too: element symbols and codes are identities


class BM25Index:
    """BM25 over training documents; `topk(texts, k)` -> (doc ids (n, k), scores (n, k)), -1 / 0 where none."""

    def __init__(self, vocab: list[str], weights: Any, k1: float = 1.2, b: float = 0.75, max_df: float = 0.1):
        self.vocab, self.W, self.k1, self.b, self.max_df = vocab, weights.tocsr(), k1, b, max_df  # W (N, V)
        self._WT = None
        self._counter: Any = None  # sklearn CountVectorizer over self.vocab, built on first use
        self.fit_queries: Any = None  # set by fit: query_matrix of the fitted documents (not saved)

    @property
    def n_docs(self) -> int:
        return int(self.W.shape[0])

    @classmethod
    def fit(cls, texts: Sequence[str], k1: float = 1.2, b: float = 0.75, max_df: float = 0.1) -> BM25Index:
        import scipy.sparse as sp
        from sklearn.feature_extraction.text import CountVectorizer

        cv = CountVectorizer(lowercase=True, token_pattern=_TOKEN_PATTERN, stop_words="english", dtype=np.float32)
        try:
            C = cv.fit_transform(texts).tocsr()  # (N, V) term counts
        except ValueError:  # no terms at all (empty or stop-word-only corpus)
            return cls([], sp.csr_matrix((len(texts), 0), dtype=np.float32), k1, b, max_df)
        n = C.shape[0]
        df = np.bincount(C.indices, minlength=C.shape[1])
        dl = np.asarray(C.sum(1)).ravel()  # document lengths over all terms (BM25's length normalisation)
        keep = np.nonzero(df <= max(1.0, max_df * n))[0]
        vocab = [w for w, _ in sorted(cv.vocabulary_.items(), key=lambda kv: kv[1])]
        C = C[:, keep].tocoo()
        idf = np.log1p((n - df[keep] + 0.5) / (df[keep] + 0.5)).astype(np.float32)
        sat = C.data * (k1 + 1) / (C.data + k1 * (1 - b + b * dl[C.row] / max(dl.mean(), 1e-9)))
        W = sp.csr_matrix(((sat * idf[C.col]).astype(np.float32), (C.row, C.col)), shape=(n, len(keep)))
        out = cls([vocab[i] for i in keep], W, k1, b, max_df)
        # the fitted documents' query matrix (what query_matrix(texts) gives: the same terms, present = 1), so
        # knn_graph need not tokenize them again
        Q = sp.csr_matrix((np.ones(len(C.data), np.float32), (C.row, C.col)), shape=(n, len(keep)))
        out.fit_queries = Q
        return out

    def query_matrix(self, texts: Sequence[str]) -> Any:
        """Binary (n, V) term-presence matrix of texts over the index vocabulary."""
        from sklearn.feature_extraction.text import CountVectorizer

        if self._counter is None:
            self._counter = CountVectorizer(
                lowercase=True,
                token_pattern=_TOKEN_PATTERN,
                stop_words="english",
                vocabulary={w: i for i, w in enumerate(self.vocab)},
                dtype=np.float32,
            )
        if not self.vocab:
            import scipy.sparse as sp

            return sp.csr_matrix((len(texts), 0), dtype=np.float32)
        q = self._counter.transform(list(texts)).tocsr()
        q.data[:] = 1.0
        return q

    def topk(
        self,
        texts: Sequence[str],
        k: int,
        exclude: np.ndarray | None = None,
        chunk: int = 64,
        terms: np.ndarray | None = None,
        queries: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k documents per text by BM25 (ties: lower doc id). `exclude` (n,) doc ids are skipped (a document
        querying the index it is in); `terms` (V,) bool, if given, keeps only those query terms; `queries`: the
        texts' query_matrix, if already known (then texts is not read)."""
        n = len(texts) if queries is None else queries.shape[0]
        ids = np.full((n, k), -1, np.int64)
        scores = np.zeros((n, k), np.float32)
        if self._WT is None:
            self._WT = self.W.T.tocsr()  # (V, N)
        for i in range(0, n, chunk):
            q = self.query_matrix(texts[i : i + chunk]) if queries is None else queries[i : i + chunk]
            if terms is not None:
                q.data *= terms[q.indices]
                q.eliminate_zeros()
            S = (q @ self._WT).tocsr()  # (c, N) sparse scores
            for r in range(S.shape[0]):
                lo, hi = S.indptr[r], S.indptr[r + 1]
                cols, vals = S.indices[lo:hi], S.data[lo:hi]
                if exclude is not None:
                    m = cols != exclude[i + r]
                    cols, vals = cols[m], vals[m]
                if len(cols) == 0:
                    continue
                if len(cols) > 4 * k:  # keep the candidates scoring at least the k-th best (ties included)
                    m = vals >= np.partition(vals, len(vals) - k)[len(vals) - k]
                    cols, vals = cols[m], vals[m]
                order = np.lexsort((cols, -vals))[:k]  # highest score first, then lowest id (deterministic)
                ids[i + r, : len(order)], scores[i + r, : len(order)] = cols[order], vals[order]
        return ids, scores

    def save(self, d: str | Path) -> None:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        W = self.W
        atomic_write(
            d / "bm25.npz",
            lambda tmp: np.savez(
                open(tmp, "wb"), data=W.data, indices=W.indices, indptr=W.indptr, shape=np.array(W.shape, np.int64)
            ),
        )
        atomic_write_text(
            d / "bm25.json",
            json.dumps({"k1": self.k1, "b": self.b, "max_df": self.max_df, "vocab": self.vocab}, ensure_ascii=False),
        )

    @classmethod
    def load(cls, d: str | Path) -> BM25Index:
        import scipy.sparse as sp

        d = Path(d)
        meta = json.loads((d / "bm25.json").read_text(encoding="utf-8"))
        with np.load(d / "bm25.npz", allow_pickle=False) as z:
            W = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(v) for v in z["shape"]))
        return cls(meta["vocab"], W, meta["k1"], meta["b"], meta["max_df"])


# ------------------------------------------------------------------------------------------------ voting


def vote_paths(
    ids: np.ndarray,
    scores: np.ndarray,
    doc_paths: np.ndarray,
    branching: int,
    start: np.ndarray | None = None,
    start_level: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical vote. ids/scores (n, k) from `topk`, doc_paths (N, depth) -> (paths (n, depth), voted (n,) bool).

    At each level the voters' scores are summed per node among the children of the node chosen above; the best
    sum wins (ties: the lower node id). With `start` (n,) node ids at 0-based `start_level`, the path is forced
    through them and only voters under them count. Rows without any voter are returned as -1 with voted False."""
    n, k = ids.shape
    depth = doc_paths.shape[1]
    out = np.full((n, depth), -1, np.int64)
    alive = (ids >= 0) & (scores > 0)  # voters still under the chosen node
    if start is not None:
        start = np.asarray(start, np.int64)
        alive &= doc_paths[np.maximum(ids, 0), start_level] == start[:, None]
        for lvl in range(start_level, -1, -1):  # ancestors of the forced node
            out[:, lvl] = start // branching ** (start_level - lvl)
    voted = np.asarray(alive.any(1))  # (n,) bool (asarray: the stub's any() may be a scalar)
    for lvl in range(start_level + 1, depth):
        node = np.where(alive, doc_paths[np.maximum(ids, 0), lvl], -1)  # (n, k)
        best = _argmax_group_sum(node, np.where(alive, scores, 0.0), alive)
        out[:, lvl] = best
        alive &= node == best[:, None]
    out[~voted] = -1
    return out, voted


def _argmax_group_sum(keys: np.ndarray, w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row: the key with the largest summed weight among masked entries (ties: the smaller key); -1 if none."""
    n, k = keys.shape
    rows = np.repeat(np.arange(n), k)[mask.ravel()]
    kk, ww = keys.ravel()[mask.ravel()], w.ravel()[mask.ravel()]
    out = np.full(n, -1, np.int64)
    if len(rows) == 0:
        return out
    # (row, key) pairs as one int64 code: 1-D unique sorts them in the same (row, key) order as unique(axis=0)
    # over the stacked pairs, several times faster
    span = int(kk.max()) + 1
    codes, inv = np.unique(rows * span + kk, return_inverse=True)
    uniq = np.stack([codes // span, codes % span], 1)  # (g, 2) sorted (row, key)
    sums = np.bincount(inv.ravel(), weights=ww, minlength=len(uniq))
    order = np.lexsort((uniq[:, 1], -sums, uniq[:, 0]))  # per row: largest sum, then smallest key
    first = np.ones(len(order), bool)
    first[1:] = uniq[order[1:], 0] != uniq[order[:-1], 0]
    out[uniq[order[first], 0]] = uniq[order[first], 1]
    return out


# ------------------------------------------------------------------------------------------------ refinement


def knn_graph(
    index: BM25Index, texts: Sequence[str], k: int, max_postings: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """The training documents' k nearest other training documents (each document queries the index it is in;
    `texts` are the index's documents, in order; not read when the index kept its fit's query matrix).

    The queries use only terms in at most `max_postings` documents: a query term costs its posting list, so this
    bounds the graph at max_postings x the index's size, linear in the corpus (all terms take part while
    max_df x documents <= max_postings; in the built-in corpora, ~18-20k documents at max_df 0.1, they all do)."""
    df = np.bincount(index.W.indices, minlength=index.W.shape[1])
    q = index.fit_queries  # (texts may then be empty: they are the index's own documents)
    n = q.shape[0] if q is not None else len(texts)
    return index.topk(texts, k, exclude=np.arange(n), terms=(df <= max_postings).astype(np.float32), queries=q)


def refine_leaves(
    leaves: np.ndarray,
    nbr: np.ndarray,
    w: np.ndarray,
    iters: int = 3,
    cap: float = 3.0,
    stats: dict | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Label propagation of leaf ids on the neighbour graph (nbr, w: (N, k), -1 / 0 where none).

    A round offers a move to a seeded random half of the documents (all of them moving at once makes two halves
    of a group swap leaves forever); each moves if its neighbours' votes for another leaf outweigh the votes for
    its own. A leaf never grows past `cap` x the mean non-empty leaf size (cap <= 0: no limit): moves into a full
    leaf are taken in order of vote margin until it is full. Deterministic for `seed`."""
    leaves = np.asarray(leaves, np.int64).copy()
    n = len(leaves)
    limit = cap * n / max(1, len(np.unique(leaves))) if cap > 0 else np.inf
    ok = (nbr >= 0) & (w > 0)
    rng = np.random.default_rng([seed, 31])
    moved_per_round = []
    for _ in range(iters):
        cand = np.where(ok, leaves[np.maximum(nbr, 0)], -1)  # (N, k) neighbours' leaves
        best = _argmax_group_sum(cand, w, ok)
        own = np.where(ok & (cand == leaves[:, None]), w, 0.0).sum(1)
        gain = np.where(best >= 0, np.where(ok & (cand == best[:, None]), w, 0.0).sum(1) - own, 0.0)
        move = (best >= 0) & (best != leaves) & (gain > 0) & (rng.random(n) < 0.5)
        new = leaves.copy()
        if np.isfinite(limit):
            sizes = np.bincount(leaves, minlength=int(leaves.max()) + 1).astype(np.int64)
            idx = np.nonzero(move)[0]
            for i in idx[np.lexsort((idx, -gain[idx]))]:  # strongest moves first
                t = best[i]
                if sizes[t] + 1 <= limit:
                    sizes[t] += 1
                    sizes[leaves[i]] -= 1
                    new[i] = t
        else:
            new[move] = best[move]
        moved = int((new != leaves).sum())
        moved_per_round.append(moved)
        leaves = new
    if stats is not None:
        stats["refine_moved_per_round"] = moved_per_round
    return leaves
