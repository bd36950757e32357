"""RAG baselines for the harness: training documents retrieved for each prompt and prepended to it.

    rag = RagContext.load(cfg, kind="bm25", k=2)       # HmemLM(run_dir, rag="bm25", rag_k=2) builds one
    rag.documents(["The atomic number of Osmium is"])   # -> [[doc ids, best last]]

Kinds (`hmem eval --rag KIND --rag-k K`; issue 17, the paper's Table 3 and the reviewers' stronger baseline):
- `cluster`: the paper's vanilla RAG. The prompt is routed by the run's own router to its deepest cluster (the leaf
  whose block memory fetches); the nearest training document in that leaf by the embedder's cosine similarity is the
  context (k > 1: the k nearest in the leaf). A leaf without training documents gives no context.
- `bm25`: the top-k training documents by Okapi BM25 over all training documents (`retriever/bm25.py`; the index
  the data's tree stage saved in `tree/bm25/`, else fitted here with the same settings).
- `dense`: the top-k training documents by cosine similarity of the run's embedder (the stored document embeddings).

The context is the retrieved documents' tokens, each followed by EOT (the separator of packed training rows), best
document last (next to the prompt), then the prompt. `join`:
- `causal` (default): one attention span: the prompt attends to the context. Training is document-causal, so the
  model has never attended across an EOT; this is the only way it can read retrieved text at all.
- `inline`: the documents' text joined by spaces and followed by the prompt's text, tokenized as ONE document (no
  EOT between): what document-causal training shows the model (several facts about an entity in one document).
- `separate`: the context in its own document (document-causal, positions from 0), as packed training rows hold
  documents: the prompt cannot attend to it, so every score equals the score without RAG (a control, tested) while
  the context's tokens are still paid for.
The context is cut from its far end (the weakest documents first) so the row fits `max_length` with the prompt
and, for generation, `max_gen_tokens` new tokens.

FLOPs per query (`query_flops`): the forward pass over every token the model reads once (context, prompt, and the
generated tokens but the last, as with a KV cache): per token 2 x (matmul weights used: the anchor's, as
hmem_lit/throughput.py counts them for MFU, plus the fetched memory) + 4 x n_layer x width x (tokens it attends
to). Multiple-choice queries pay every choice's pass. Retrieval itself (BM25 or embedding lookups) is not counted,
nor is memory's routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.config import ConfigError

KINDS = ("cluster", "bm25", "dense")
JOINS = ("causal", "separate", "inline")


def check_rag(kind: str | None, k: int, join: str) -> None:
    """One line naming the argument for bad RAG settings."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--rag {kind}: allowed {', '.join(KINDS)} (or omit it for no retrieval)")
    if k < 1:
        raise ConfigError(f"--rag-k: must be >= 1 retrieved document, got {k}")
    if join not in JOINS:
        raise ConfigError(f"--rag-join {join}: allowed {', '.join(JOINS)}")


def rag_name(kind: str, k: int, join: str) -> str:
    """The suffix of an evaluation directory / final.json section: `rag-bm25-k2` (`-sep` / `-inline` for those
    joins)."""
    return f"rag-{kind}-k{k}" + {"causal": "", "separate": "-sep", "inline": "-inline"}[join]


class RagContext:
    """Retrieves training documents (ids into the data's docs.jsonl) for prompt texts, cached per text."""

    def __init__(
        self,
        kind: str,
        k: int,
        texts: list[str],
        train_ids: np.ndarray,
        index: Any = None,
        router: Any = None,
        emb: np.ndarray | None = None,
        leaf_of: np.ndarray | None = None,
    ):
        self.kind, self.k, self.texts, self.train_ids = kind, int(k), texts, np.asarray(train_ids, np.int64)
        self.index, self.router, self.emb, self.leaf_of = index, router, emb, leaf_of
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def load(cls, cfg: Any, kind: str, k: int, router: Any = None) -> RagContext:
        """From the run's prepared data (`data.dir`): documents, split, and the kind's index."""
        from hmem_lit.data import corpus as corpus_mod
        from hmem_lit.evaluation.resources import resolve_data_dir
        from hmem_lit.utils import read_json

        if cfg.data.source == "toy":
            raise ConfigError("--rag: needs a prepared corpus (data.source=builtin or files), not data.source=toy")
        d = Path(resolve_data_dir(cfg))
        if not (d / "corpus" / "docs.jsonl").is_file():
            raise ConfigError(f"--rag: {d}/corpus/docs.jsonl missing; run `hmem data prepare` with the run's config")
        docs = corpus_mod.read_docs(d / "corpus")
        split = np.load(d / "corpus" / "split.npy", allow_pickle=False)
        train = np.nonzero(split == 0)[0]
        texts = [doc["text"] for doc in docs]
        if kind == "bm25":
            from hmem_lit.retriever.bm25 import BM25Index

            idx_dir = d / "tree" / "bm25"
            index = (
                BM25Index.load(idx_dir)
                if (idx_dir / "bm25.json").is_file()
                else BM25Index.fit([texts[i] for i in train], max_df=cfg.retriever.tree.bm25_max_df)
            )
            return cls(kind, k, texts, train, index=index)
        meta = read_json(d / "tree" / "router.json") if (d / "tree" / "router.json").is_file() else {}
        if "embedder_dir" not in meta:
            raise ConfigError(
                f"--rag {kind}: needs the embeddings of a retriever.type=tree data dir ({d}/tree/router.json names "
                "none); use --rag bm25"
            )
        emb = np.load(d / meta["embedder_dir"] / "emb.npy", mmap_mode="r", allow_pickle=False)
        if kind == "dense":
            from hmem_lit.retriever.embedders import load_embedder

            return cls(kind, k, texts, train, router=load_embedder(d / meta["embedder_dir"]), emb=emb)
        if router is None:
            from hmem_lit.evaluation.routing import load_run_router

            router = load_run_router(cfg)
        paths = np.load(d / "tree" / "doc_paths.npy", allow_pickle=False)
        return cls(kind, k, texts, train, router=router, emb=emb, leaf_of=paths[train, -1])

    def documents(self, queries: Sequence[str]) -> list[list[int]]:
        """Per query: up to k document ids, the best one LAST (nearest the prompt)."""
        new = sorted({q for q in queries if q not in self.cache})
        if new:
            for q, ids in zip(new, self._retrieve(new)):
                self.cache[q] = ids
        return [self.cache[q] for q in queries]

    def _retrieve(self, queries: list[str]) -> list[list[int]]:
        k = self.k
        if self.kind == "bm25":
            ids, scores = self.index.topk(queries, k)  # index rows = training documents in corpus order
            return [
                [int(self.train_ids[i]) for i, s in zip(r, sc) if i >= 0 and s > 0][::-1] for r, sc in zip(ids, scores)
            ]
        assert self.emb is not None  # cluster and dense are built with the stored embeddings (load)
        if self.kind == "dense":
            q = np.asarray(self.router.embed(queries), np.float32)
            x = np.asarray(self.emb[self.train_ids], np.float32)
            return [_best(x @ v, k, self.train_ids) for v in q]
        assert self.leaf_of is not None
        leaves = np.asarray(self.router.route(queries))[:, -1]  # cluster: nearest documents within the routed leaf
        q = np.asarray(self.router.embed(queries), np.float32)
        out = []
        for v, leaf in zip(q, leaves):
            members = self.train_ids[self.leaf_of == leaf]
            out.append(_best(np.asarray(self.emb[members], np.float32) @ v, k, members) if len(members) else [])
        return out


def _best(scores: np.ndarray, k: int, ids: np.ndarray) -> list[int]:
    """The k highest-scoring ids (ties: lower id first), returned best LAST."""
    order = np.lexsort((ids, -scores))[:k]
    return [int(ids[i]) for i in order][::-1]


def context_tokens(doc_tokens: list[list[int]], eot: int, budget: int) -> list[int]:
    """Documents (best last) -> tokens `doc EOT doc EOT ...`, cut from the far end to at most `budget` tokens."""
    flat = [t for toks in doc_tokens for t in (*toks, eot)]
    return flat[-budget:] if budget > 0 else []


def inline_text(texts: list[str], encode: Any, budget: int) -> str:
    """Documents' texts (best last) joined by spaces, the farthest dropped until the tokens fit `budget`; a single
    document still too long keeps its last `budget` tokens (decoded)."""
    texts = list(texts)
    while len(texts) > 1 and len(encode(" ".join(texts))) > budget:
        texts.pop(0)
    if not texts or budget <= 0:
        return ""
    return " ".join(texts)


def query_flops(n_fed: int, dense_params: int, n_layer: int, width: int) -> float:
    """Forward FLOPs of reading `n_fed` tokens in one causal span (module docstring): token t attends to t + 1."""
    attended = n_fed * (n_fed + 1) / 2
    return float(2 * dense_params * n_fed + 4 * n_layer * width * attended)


def dense_params(model: Any, memory_used: bool) -> int:
    """Weights each token's forward multiplies by: the anchor's matmul weights (throughput.anchor_matmul_params:
    embedding lookup and norms excluded, the output layer included) less those a memory replaces, plus the fetched
    memory when the mode uses it."""
    from hmem_lit.throughput import anchor_matmul_params

    counts = model.param_counts()
    used = int(counts["fetched"]) - int(counts.get("anchor_unused", 0)) if memory_used else 0
    return anchor_matmul_params(model.cfg.anchor) + used
