"""The config sections owned by one implementation each, beside the run's sections in config.py: product-key
memory (memory.pkm), LoRA (memory.lora), the bank's storage backend (memory.storage, hmem_lit/storage/) and the tree
retriever (retriever.tree, retriever/tree.py). Each validates itself in `__post_init__` with one-line errors naming
the key; config.py nests them and re-exports them (hmem_lit.config.PKMConfig, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hmem_lit.errors import check as _check
from hmem_lit.errors import one_of as _one_of
from hmem_lit.fields import RUN_ID, check_ranges, declared, ranged
from hmem_lit.registry import TREE_REFINERS, TREE_ROUTERS  # filled on first lookup


@dataclass
class PKMConfig:
    """Product-key memory layer (Memory Layers at Scale)."""

    EFFECTS = RUN_ID  # what a field affects unless it says (fields.py)

    n_keys: int = ranged(32, 1, 2**16)  # sqrt(N): half-keys per product half; N = n_keys**2 value rows
    heads: int = ranged(4, 1, 1024)  # query heads (all read one shared value table)
    topk: int = ranged(8, 1, 2**16)  # rows read per head and token
    k_dim: int = ranged(64, 2, 2**16)  # full query/key dim; each half-key has k_dim // 2
    v_dim: int | None = ranged(None, 1, 2**16)  # None = d_model
    layers: Any = "auto"  # auto (3 equally spaced) | list of layer indices
    mode: str = "replace"  # replace the FFN at those layers, or add to it
    gated: bool = True  # Memory+ SiLU gating
    qk_norm: bool = True  # RMS-normalise queries and keys (the paper adds it for stability)
    # scores of RMS-normalised q and keys are multiplied by this (None = 1, unscaled: a sharp softmax, ~2.7 of the
    # rows read carry the weight at the paper's sizes); 1/sqrt(k_dim/2) gives dot-product attention's scale
    qk_norm_scale: float | None = ranged(None, 0, 1e6, lo_open=True)

    def __post_init__(self) -> None:
        check_ranges(self, "memory.pkm.")  # the ranges declared beside the fields
        _check(self.k_dim % 2 == 0, "memory.pkm.k_dim", "must be even (two product halves)")
        _check(self.topk <= self.n_keys, "memory.pkm.topk", f"must be <= n_keys ({self.n_keys})")
        _one_of(self.mode, ("replace", "add"), "memory.pkm.mode")


@dataclass
class LoRAConfig:
    """LoRA-memories' patches (memory/lora.py): which linears they patch and how they are scaled."""

    EFFECTS = RUN_ID

    target: str = "qk"  # qk | vo | ffn
    alpha: float = ranged(2.0, 0, 1e6, lo_open=True)  # the patch is scaled by alpha / r (the paper: alpha = 2)
    # r is the fetched rank, sum(memory.levels): alpha/r (LoRA) | alpha/sqrt(r) (rsLoRA: the update's scale does
    # not shrink as the rank grows)
    scaling: str = "alpha/r"

    def __post_init__(self) -> None:
        check_ranges(self, "memory.lora.")
        _one_of(self.target, ("qk", "vo", "ffn"), "memory.lora.target")
        _one_of(self.scaling, ("alpha/r", "alpha/sqrt(r)"), "memory.lora.scaling")


@dataclass
class StorageConfig:
    """memory.storage: where a bank's tables and their Adam moments live and how rows move between them and the
    compute device. Read only by the storage backends (hmem_lit/storage/); none of these changes a number except
    dtype and rounding."""

    EFFECTS = ()  # where and when rows move, not what they hold: the same numbers bit for bit, unless a field says

    # ram | disk (memory-mapped scratch files, for a bank larger than host RAM; the numbers are bit for bit the
    # same: storage/disk.py)
    kind: str = "ram"
    dir: str = ""  # disk: the directory of the scratch files (empty: the run's experiment directory, runs/<exp>/)
    # keep the bank on the CPU; only fetched blocks move to the accelerator
    offload: bool = declared(False, effects=RUN_ID)
    # the number type of the bank's tables and their Adam moments: float32 | bfloat16 (half the bytes: 6 per
    # parameter instead of 12). bfloat16 rows are updated in float32 and rounded back: the moments to nearest, the
    # tables by `rounding` (stochastic: unbiased, so updates smaller than bf16's spacing still add up, with a
    # per-step seed, so a resumed run is exact; nearest: plain rounding, for comparison). storage/lowp.py
    dtype: str = declared("float32", effects=RUN_ID)
    rounding: str = declared("stochastic", effects=RUN_ID)
    # with the bank on the host (offload=true or kind=disk): after each optimiser step, stage the next batch's rows
    # on the compute device (pinned memory, a side CUDA stream) so its fetch does not wait for the gather and copy;
    # the numbers are bit for bit the same (storage/prefetch.py)
    prefetch: bool = False
    # with the bank on the host (offload, disk, or a run on the CPU): the row-wise optimiser step runs on a worker
    # thread while training goes on; a read waits only for the rows it needs. Bit for bit the same numbers
    # (storage/writeback.py)
    async_update: bool = False

    @property
    def on_host(self) -> bool:
        """The tables stay in host memory whatever device the model is moved to (offloaded or on disk)."""
        return self.offload or self.kind == "disk"

    def __post_init__(self) -> None:
        _one_of(self.kind, ("ram", "disk"), "memory.storage.kind")
        _one_of(self.dtype, ("float32", "bfloat16"), "memory.storage.dtype")
        _one_of(self.rounding, ("stochastic", "nearest"), "memory.storage.rounding")

    def check(self) -> None:
        """The settings that depend on each other (after MemoryConfig has reset them for a run without a bank)."""
        _check(
            self.rounding == "stochastic" or self.dtype == "bfloat16",
            "memory.storage.rounding",
            "rounds bfloat16 tables only: set memory.storage.dtype=bfloat16, or drop memory.storage.rounding",
        )
        _check(
            not self.prefetch or self.on_host,
            "memory.storage.prefetch",
            "stages rows of a bank on the host: set memory.storage.offload=true (or memory.storage.kind=disk), "
            "or memory.storage.prefetch=false",
        )

    def refuse(self, what: str) -> None:
        """A memory without a bank (pkm): every setting but `dir` must keep its default."""
        defaults = (("offload", False), ("kind", "ram"), ("prefetch", False), ("async_update", False))
        for key, default in (*defaults, ("dtype", "float32")):
            _check(
                getattr(self, key) == default,
                f"memory.storage.{key}",
                f"applies to a bank's tables (ffn, lora, kv), not {what}; "
                f"set memory.storage.{key}={str(default).lower()}",
            )


@dataclass
class TreeConfig:
    """retriever.tree: the `tree` retriever's own settings (retriever/tree.py): the balanced k-means tree, the
    router that finds new text's path in it and the refinement of its clusters (retriever/bm25.py; LOG 2026-12-01
    "retrieval"). Read only by the tree retriever (and, for its BM25 index, the RAG baseline: evaluation/rag.py)."""

    EFFECTS = ("tree", *RUN_ID)  # the tree stage of `hmem data prepare`

    # training documents' paths: assigned (balanced k-means clusters, paper) | routed (greedy descent = prompt routing)
    train_paths: str = "assigned"
    # a cluster holding more than this share of its parent's points is split (paper)
    balance: float = ranged(0.094, 0, 1, lo_open=True)
    niter: int = ranged(20, 1, 10_000)  # k-means iterations per node
    max_points_per_centroid: int = ranged(256, 1, 10**9)  # k-means training sample per node (faiss semantics)
    recenter: bool = True  # after balancing, re-estimate each centroid from its documents (routing follows data)
    router: str = "bm25"  # bm25 (vote of the k BM25-nearest training documents' paths) | centroid (greedy descent)
    refine: str = "bm25"  # bm25 (label propagation on the training documents' BM25 neighbour graph) | none
    # voters per routed text, and neighbours per training document in the refinement graph
    knn_k: int = ranged(10, 1, 10_000)
    # index terms in at most this share of the training documents (template words out)
    bm25_max_df: float = ranged(0.1, 0, 1, lo_open=True)
    refine_iters: int = ranged(6, 0, 1000)  # label-propagation rounds (each offers a move to half of the documents)
    # a refined leaf holds at most this x the mean leaf size (<= 0: no limit)
    refine_cap: float = ranged(3.0, None, 1e6)
    # refinement graph queries skip terms in more documents (cost linear in corpus)
    graph_max_postings: int = ranged(2048, 1, 10**9)
    # how training documents outside retriever.fit_sample are routed: centroid (greedy descent of their embedding,
    # ~0.1 ms a document) | router (retriever.tree.router, like held-out text: bm25 costs ~4 ms a document on 2 cores)
    route_unsampled: str = "centroid"

    def __post_init__(self) -> None:
        check_ranges(self, "retriever.tree.")  # the ranges declared beside the fields
        _one_of(self.train_paths, ("assigned", "routed"), "retriever.tree.train_paths")
        _one_of(self.router, TREE_ROUTERS.known(), "retriever.tree.router")  # the registries are the source of truth
        _one_of(self.refine, TREE_REFINERS.known(), "retriever.tree.refine")
        _one_of(self.route_unsampled, ("centroid", "router"), "retriever.tree.route_unsampled")
