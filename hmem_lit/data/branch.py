"""The tokenizer branch of `hmem data prepare`, run beside the embedding and tree stages when data.workers > 1.

The stage graph has two branches after the corpus: tokenizer -> tokenization of the corpus, and embeddings ->
tree; packing joins them. With one worker they run one after the other. With several, a driver thread trains the
BPE in a worker process and then tokenizes the corpus in chunks on the shared pool (data/stream.py
`ordered_map`), while the main thread runs the embedding and tree stages: their sequential parts (the tf-idf and
BM25 fits, k-means, the refinement) leave a core idle that the branch fills. The driver writes every file (the
workers only compute), so a killed driver leaves nothing being written behind it; the token chunks are a
resumable log (data/resume.py) that the packing stage then reads. Outputs equal the sequential order's byte for
byte: the same functions run on the same inputs.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def tokens_key(manifest: dict, chunk: int) -> str:
    """What the tokenized corpus depends on: the corpus and the tokenizer (their output hashes) and the chunking."""
    st = manifest.get("stages", {})
    return f"tokens-{st.get('corpus', {}).get('out')}-{st.get('tokenizer', {}).get('out')}-{chunk}"


def train_job(job: tuple[str, np.ndarray, int, int]) -> str:
    """In a worker: train the BPE on the documents at idx -> the tokenizer's JSON (the driver writes it)."""
    from hmem_lit.data import stream
    from hmem_lit.data.tokenizer import train_bpe

    root, idx, chunk, vocab_size = job
    tok = train_bpe(stream.texts_at(Path(root), idx, chunk), vocab_size, length=len(idx))
    return tok.tok.to_str()


def can_branch(cfg: Any) -> bool:
    return cfg.data.engine == "local" and cfg.data.workers > 1 and not cfg.data.tokenizer


class TokenizerBranch:
    """Start: `TokenizerBranch(stage_fn, cfg, root, ctx)`; `result()` -> (tokenizer stage info, its seconds, the
    tokenization's chunk counts and seconds). stage_fn: prepare's tokenizer stage, called with engine=..."""

    def __init__(self, stage_fn: Any, cfg: Any, root: Path, ctx: dict):
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="hmem-tokenizer")
        self._fut = self._ex.submit(self._run, stage_fn, cfg, root, {**ctx, "manifest": copy.deepcopy(ctx["manifest"])})

    @staticmethod
    def _run(stage_fn: Any, cfg: Any, root: Path, ctx: dict) -> tuple[dict, float, dict, float]:
        from hmem_lit.data import stream

        engine = stream.Engine.of(cfg)
        t0 = time.perf_counter()
        info = stage_fn(cfg, root, {**ctx, "progress": False}, engine=engine)
        dt = time.perf_counter() - t0
        ctx["manifest"].setdefault("stages", {})["tokenizer"] = {"out": info["out"]}
        n_docs = len(np.load(root / "corpus" / "split.npy"))
        t1 = time.perf_counter()
        _, chunks = stream.tokenize_corpus(
            root / "tokenizer.json",
            root,
            root / "packed" / "doc_tokens.bin",
            cfg.data.chunk_docs,
            n_docs,
            engine,
            tokens_key(ctx["manifest"], cfg.data.chunk_docs),
        )
        return info, dt, chunks, time.perf_counter() - t1

    def result(self) -> tuple[dict, float, dict, float]:
        try:
            return self._fut.result()
        finally:
            self._ex.shutdown()


def prefit_job(job: tuple[str, np.ndarray, int, Any]) -> Any:
    """In a worker: the retriever's prefit function of the texts at idx (the tree stage's fit sample)."""
    from hmem_lit.data import stream

    root, idx, chunk, fn = job
    return fn(list(stream.texts_at(Path(root), idx, chunk)))


def start_prefit(cfg: Any, root: Path) -> Any:
    """With data.workers > 1: run the retriever's prefit (retriever/base.py; the tree's BM25 index) on the fit
    sample in a worker while the embedding stage runs (it needs only the corpus and the fit sample) -> a Future,
    or None (one worker, or nothing to prefit)."""
    if not can_branch(cfg):
        return None
    from hmem_lit.retriever.base import retriever_class

    fn = retriever_class(cfg.retriever.type).prefit(cfg)
    if fn is None:
        return None
    from hmem_lit.data import stream
    from hmem_lit.data.tree_stage import fit_sample

    fit = fit_sample(cfg, np.load(root / "corpus" / "split.npy"))
    return stream._pool(cfg.data.workers).submit(prefit_job, (str(root), fit, cfg.data.chunk_docs, fn))


def _warm(_: int) -> int:
    """A first job for each worker: the imports the stages' chunks need, while the driver reads the corpus."""
    import scipy.sparse  # noqa: F401
    import sklearn.feature_extraction.text  # noqa: F401
    import tokenizers  # noqa: F401

    import hmem_lit.data.stream  # noqa: F401
    import hmem_lit.retriever.bm25  # noqa: F401
    import hmem_lit.retriever.embedders  # noqa: F401

    return 0


def warm_pool(cfg: Any) -> None:
    """Spawn the local workers now (data.workers > 1) so their start-up overlaps the corpus stage."""
    if cfg.data.engine == "local" and cfg.data.workers > 1:
        from hmem_lit.data import stream

        pool = stream._pool(cfg.data.workers)
        for i in range(cfg.data.workers):
            pool.submit(_warm, i)
