"""The retriever contract: what a class registered in `RETRIEVERS` (retriever.type) provides.

A retriever maps text (or a record, or an embedding) to one tree node id per level: a path, (N, depth) int64.
`hmem data prepare` fits it (data/tree_stage.py), training reads the document paths it wrote, and evaluation loads
it back (`load_router`) to route prompts. A retriever is one module (shipped: routing.py for the random and
oracle controls, tree.py for the k-means tree; or a plug-in named in $HMEM_PLUGINS) with a class that
subclasses `Retriever`, registered with `@RETRIEVERS.register("name")`, and implements:
  - `fit(data) -> Fitted` (classmethod): fit on the prepared corpus (`FitData`: documents, texts, embeddings,
    the fit sample, the chunk engine), write its state into `data.out` (with `save`) and return the fitted
    retriever with every document's path and its statistics (tree/stats.json). The default fits nothing and
    routes every document's record (the seeded controls).
  - `save(out) -> dict`: write the fitted state into `out` (the data directory's tree/) -> the fields router.json
    records beside type, branching, depth and seed.
  - `load(out, meta, data_dir)` (classmethod): the retriever saved in `out` (meta: router.json).
  - `route(texts)`, `route_records(records)`, `route_ranked`, `route_from`, `valid`, `route_embeddings`.

Capabilities are class attributes that data preparation reads instead of testing the type's name:
  - `needs_embeddings`: `hmem data prepare` runs the embeddings stage first (`data.embeddings` names its dir).
  - `meta_defaults`: router.json fields that directories prepared before a field existed lack, at the value
    they were prepared with.
  - `prefit(cfg)`: a picklable function of the fit sample's texts that may run in a worker beside the
    embedding stage (data.workers > 1); fit reads its result as `data.prefit` (a Future, or None).
  - `expects(cfg)`: router.json fields that must equal the config's for the saved retriever to serve a run.

Levels in this API are 1-based like the paper and `eval.block_level` (level 1 = the top clusters = path column 0).
For blocking: `ranked = r.route_ranked(texts, L)`; `ranked[:, 0]` is the best-matching level-L node (the subtree
to block) and `r.route_from(texts, L, ranked[:, 1])` is the path through the next-nearest one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from hmem_lit.registry import RETRIEVERS
from hmem_lit.utils import read_json


def _hash(seed: int, value: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{value}".encode(), digest_size=8).digest(), "little")


def leaf_to_path(leaves: np.ndarray, branching: int, depth: int) -> np.ndarray:
    """Leaf ids at the last level -> (N, depth) ancestor ids (level l id = leaf // branching**(depth-1-l))."""
    leaves = np.asarray(leaves, np.int64)
    return np.stack([leaves // branching ** (depth - 1 - lvl) for lvl in range(depth)], 1).reshape(-1, depth)


class FitData(Protocol):
    """The prepared corpus as `fit` sees it (data/tree_stage.py builds it; the retriever never reads data/)."""

    cfg: Any  # the RunConfig (retriever.* and data.chunk_docs)
    root: Path  # the data directory
    out: Path  # root / "tree": where the retriever saves itself
    split: np.ndarray  # (N,) per document: 0 = training, else held out
    sample: np.ndarray  # the training documents to fit on (a seeded sample of retriever.fit_sample)
    embeddings: str | None  # the embeddings stage's directory, relative to root (needs_embeddings)
    progress: bool
    prefit: Any  # the Future of prefit(cfg)'s result, or None

    def docs(self) -> Iterator[dict[str, Any]]: ...  # every document's record, in corpus order
    def doc_chunks(self) -> Iterator[tuple[int, list[dict[str, Any]]]]: ...  # (start, records) chunks
    def texts(self, idx: np.ndarray) -> Iterator[str]: ...  # the texts of documents idx (sorted)
    def embedding_rows(self, idx: np.ndarray) -> np.ndarray: ...  # (len(idx), dim) float32
    def embedding_chunks(self) -> Iterator[tuple[int, np.ndarray]]: ...  # (start, rows) chunks
    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]: ...  # on the chunk engine, ordered
    @property
    def in_process(self) -> bool: ...  # the engine is this process (local, one worker)


@dataclass
class Fitted:
    """What `fit` returns: the fitted retriever, every document's path (N, depth), its statistics
    (tree/stats.json) and what its `save` returned (router.json's own fields)."""

    retriever: Retriever
    paths: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Retriever:
    """Base: a seeded hash of each text picks its leaf. Subclasses override `_key` (what is hashed) or the
    routing methods (a fitted retriever); see the module docstring for the contract."""

    type = "base"
    needs_embeddings: ClassVar[bool] = False
    meta_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, branching: int, depth: int, seed: int = 0):
        self.branching, self.depth, self.seed = branching, depth, seed

    # the contract: fit / save / load ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, r: Any) -> Retriever:
        """The unfitted retriever of retriever config `r` (the default fit)."""
        return cls(r.branching, r.depth, r.seed)

    @classmethod
    def fit(cls, data: FitData) -> Fitted:
        """Fit on `data`, save into data.out -> Fitted. The default has nothing to fit: it routes every document's
        record (small diagnostic corpora: the records are all read at once)."""
        from hmem_lit.retriever.kmeans_tree import cluster_stats

        r = data.cfg.retriever
        rt = cls.from_config(r)
        paths = rt.route_records(list(data.docs()))
        stats = cluster_stats(paths[data.split == 0], r.branching, r.depth)
        return Fitted(rt, paths, stats, rt.save(data.out))

    def save(self, out: Path) -> dict[str, Any]:
        return {}

    @classmethod
    def load(cls, out: Path, meta: dict[str, Any], data_dir: Path) -> Retriever:
        return cls(meta["branching"], meta["depth"], meta.get("seed", 0))

    @classmethod
    def prefit(cls, cfg: Any) -> Callable[[list[str]], Any] | None:
        return None

    @classmethod
    def expects(cls, cfg: Any) -> dict[str, Any]:
        return {}

    # routing ---------------------------------------------------------------------------------------------------
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


def retriever_class(name: str) -> type[Retriever]:
    """The registered class of retriever.type `name` (every shipped retriever and plug-in imported first)."""
    return RETRIEVERS.get(name)


def load_router(data_dir: str | Path, cfg: Any = None) -> Retriever:
    """The retriever saved with prepared data (`<data_dir>/tree/router.json`). `cfg` (a RunConfig), if given, must
    agree with it on the retriever type, branching and depth (and what the type `expects`): a mismatch means the
    data was prepared for a different configuration, and routing prompts differently from the training data
    would be silently wrong."""
    d = Path(data_dir)
    meta_path = d / "tree" / "router.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} missing: run `hmem data prepare` for this configuration first")
    meta = read_json(meta_path)
    if cfg is not None:
        r = cfg.retriever
        want_cls = retriever_class(r.type)
        want = {"type": r.type, "branching": r.branching, "depth": r.depth, **want_cls.expects(cfg)}
        got = {k: meta.get(k, want_cls.meta_defaults.get(k)) for k in want}
        if got != want:
            raise ValueError(
                f"{d}: prepared with retriever {got}, but the config asks for {want}; "
                "re-run `hmem data prepare` with this config"
            )
    cls = retriever_class(meta["type"])
    return cls.load(d / "tree", {**cls.meta_defaults, **meta}, d)
