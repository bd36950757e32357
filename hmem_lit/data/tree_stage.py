"""The tree stage of `hmem data prepare`: fit the configured retriever (`retriever.type`, any class registered in
RETRIEVERS: the contract is retriever/base.py) on the prepared corpus and record every document's path.

The stage hands the retriever a `Corpus` (base.FitData: documents, texts, embeddings, the fit sample of at most
`retriever.fit_sample` training documents, the chunk engine); the retriever fits, saves itself into tree/ and
returns the paths. The stage writes tree/doc_paths.npy, stats.json, router.json (type, branching, depth, seed and
the retriever's own fields) and, with a key field, the routing diagnostics (keys.json).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.config import ConfigError
from hmem_lit.data import stream
from hmem_lit.retriever.diagnostics import concentration, key_table
from hmem_lit.utils import atomic_write, write_json

FIT_SALT = 43  # the embedder and the tree share one sample (seeded by retriever.seed)


def fit_sample(cfg: Any, split: np.ndarray) -> np.ndarray:
    return stream.sample_train(split, cfg.retriever.fit_sample, cfg.retriever.seed, FIT_SALT)


def key_field(cfg: Any) -> str | None:
    """The documents' key field for routing diagnostics: data.key_field, else "entity" for builtin corpora."""
    return cfg.data.key_field or ("entity" if cfg.data.source == "builtin" else None)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), arr))


def doc_keys(root: Path, field: str, cfg: Any) -> list[Any]:
    """Every document's key (None: background text), streamed. With an explicit data.key_field, a document lacking
    the field is an error naming it (a typo in the field name must not silently report nothing)."""
    keys: list[Any] = []
    missing, first = 0, None
    for i, d in enumerate(stream.iter_docs(root, cfg.data.chunk_docs)):
        if field not in d:
            missing += 1
            first = first or d.get("source", f"document {i + 1}")
        v = d.get(field)
        keys.append(v if isinstance(v, (str, int)) else None)
    if cfg.data.key_field and missing:
        raise ConfigError(
            f"data.key_field={field!r}: {missing:,} of {len(keys):,} documents lack the field "
            f"(first: {first}); give every document the field (null for background text) or unset data.key_field"
        )
    return keys


@dataclass
class Corpus:
    """The prepared corpus as a retriever's fit reads it (retriever/base.py FitData), streamed in chunks."""

    cfg: Any
    root: Path
    out: Path
    split: np.ndarray
    sample: np.ndarray
    embeddings: str | None
    progress: bool
    prefit: Any

    def docs(self) -> Iterator[dict[str, Any]]:
        return stream.iter_docs(self.root, self.cfg.data.chunk_docs)

    def doc_chunks(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        return stream.iter_doc_chunks(self.root, self.cfg.data.chunk_docs)

    def texts(self, idx: np.ndarray) -> Iterator[str]:
        return stream.texts_at(self.root, idx, self.cfg.data.chunk_docs)

    def _emb(self) -> Path:
        if self.embeddings is None:
            raise ValueError(f"retriever.type={self.cfg.retriever.type} does not declare needs_embeddings")
        return self.root / self.embeddings / "emb.npy"

    def embedding_rows(self, idx: np.ndarray) -> np.ndarray:
        return stream.load_rows(self._emb(), idx)

    def embedding_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        return stream.iter_npy_rows(self._emb(), self.cfg.data.chunk_docs)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        return stream.ordered_map(fn, jobs, stream.Engine.of(self.cfg))

    @property
    def in_process(self) -> bool:
        engine = stream.Engine.of(self.cfg)
        return engine.kind == "local" and engine.workers <= 1


def stage_tree(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.retriever.base import retriever_class

    r = cfg.retriever
    cls = retriever_class(r.type)
    split = np.load(root / "corpus" / "split.npy")
    tdir = root / "tree"
    tdir.mkdir(parents=True, exist_ok=True)
    edir = ctx["manifest"]["stages"]["embeddings"]["info"]["dir"] if cls.needs_embeddings else None
    prefit = ctx.pop("prefit", None)  # started beside the embedding stage (data/branch.py)
    corpus = Corpus(cfg, root, tdir, split, fit_sample(cfg, split), edir, ctx["progress"], prefit)
    fitted = cls.fit(corpus)
    paths, stats = fitted.paths, fitted.stats
    meta: dict[str, Any] = {"type": r.type, "branching": r.branching, "depth": r.depth, "seed": r.seed, **fitted.meta}
    field = key_field(cfg)
    if field:
        keys, train = doc_keys(root, field, cfg), np.nonzero(split == 0)[0]
        table = key_table([keys[i] for i in train], paths[train])
        write_json(tdir / "keys.json", table)
        stats["routing"] = {"key_field": field, **concentration(table)}
    _save_npy(tdir / "doc_paths.npy", paths.astype(np.int64))
    write_json(tdir / "stats.json", stats)
    write_json(tdir / "router.json", meta)
    return {"stats": stats, "out": ctx["file_hash"](tdir / "doc_paths.npy", tdir / "router.json")}
