"""What each config field affects: the one declaration that data caching (prepare's stage keys), the resume check
(train._check_resume) and the run collector (analysis.collect.config_id) read. tests/test_config_effects.py fails
when a field is added to hmem_lit/config.py without an entry here, and checks every entry against the stage keys."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from hmem_lit.config import RunConfig

# (train._check_resume) and the run collector (analysis.collect.config_id) read. tests/test_config_effects.py
# fails when a field is added without an entry here, and checks every entry against prepare's stage keys.
#
# Tokens: a preparation stage (corpus, tokenizer, embeddings, tree, packing, questions: changing the field redoes
#   that stage and the ones downstream of it); "run": it changes what a run trains, so resuming a checkpoint with
#   another value is refused; "id": it is part of a run's configuration identity (runs that differ only in fields
#   without "id", e.g. the seed, are averaged as seeds of one configuration). No token: bookkeeping.

_ANCHOR = (
    "preset",
    "vocab_size",
    "n_layer",
    "d_model",
    "n_head",
    "head_dim",
    "d_ff",
    "norm",
    "norm_eps",
    "qk_norm",
    "tie_embeddings",
    "rope_base",
    "max_seq_len",
    "init_std",
    "hf_path",
    "hf_family",
    "hf_attn",
    "n_kv_head",
    "ffn_act",
)
_MEMORY = (
    "type",
    "levels",
    "layers",
    "init_std",
    "lora_target",
    "lora_alpha",
    "generic",
    "generic_prob",
    "offload",
    "pkm.n_keys",
    "pkm.heads",
    "pkm.topk",
    "pkm.k_dim",
    "pkm.v_dim",
    "pkm.layers",
    "pkm.mode",
    "pkm.gated",
    "pkm.qk_norm",
    "pkm.qk_norm_scale",
)
_OPTIM = (
    "value_lr_scale",
    "value_grad_clip",
    "lr",
    "min_lr",
    "warmup",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "memory_lr",
    "memory_min_lr",
    "memory_weight_decay",
    "memory_grad_clip",
    "memory_lr_scale",
)
_TREE = (
    "type",
    "branching",
    "depth",
    "balance",
    "niter",
    "max_points_per_centroid",
    "recenter",
    "train_paths",
    "oracle_field",
    "router",
    "refine",
    "knn_k",
    "bm25_max_df",
    "refine_iters",
    "refine_cap",
    "graph_max_postings",
)
RUN_ID = ("run", "id")
FIELD_EFFECTS: dict[str, tuple[str, ...]] = {
    "experiment": (),
    "name": (),
    "out_dir": (),
    **{f"anchor.{k}": RUN_ID for k in _ANCHOR},
    "anchor.attention": (),  # an implementation of the same attention (equal within float tolerance)
    **{f"memory.{k}": RUN_ID for k in _MEMORY},
    "memory.storage": (),  # where the bank lives (RAM or memory-mapped disk): the same numbers bit for bit
    "memory.storage_dir": (),
    "memory.dtype": RUN_ID,  # bfloat16 tables train to different numbers
    "memory.rounding": RUN_ID,
    "memory.prefetch": (),  # when the rows are copied, not which: the same numbers bit for bit
    "memory.async_update": (),  # when the rows are written, not what: the same numbers bit for bit
    **{f"optim.{k}": RUN_ID for k in _OPTIM},
    "retriever.embedder": ("embeddings", *RUN_ID),
    "retriever.embed_dim": ("embeddings", *RUN_ID),
    "retriever.tfidf_projection": ("embeddings", *RUN_ID),
    "retriever.seed": ("embeddings", "tree", *RUN_ID),
    "retriever.fit_sample": ("embeddings", "tree", *RUN_ID),
    "retriever.embed_dtype": ("embeddings", *RUN_ID),
    "retriever.device": ("embeddings", *RUN_ID),  # a GPU's embeddings differ from the CPU's in float rounding
    "retriever.route_unsampled": ("tree", *RUN_ID),
    **{f"retriever.{k}": ("tree", *RUN_ID) for k in _TREE},
    **{
        f"data.{k}": ("corpus", *RUN_ID)
        for k in (
            "source",
            "files",
            "val_fraction",
            "corpus",
            "airports",
            "wiki_docs",
            "synthetic_entities",
            "fact_repeats_max",
            "fact_repeats_min",
            "zipf_a",
        )
    },
    "data.seed": ("corpus", "packing", "questions", *RUN_ID),
    "data.tokenizer": ("tokenizer", *RUN_ID),
    "data.vocab_size": ("tokenizer", *RUN_ID),
    "data.seq_len": ("packing", *RUN_ID),
    "data.packing": ("packing", *RUN_ID),
    "data.pack_whole": ("packing", *RUN_ID),
    "data.key_field": ("tree",),  # routing diagnostics only
    "data.toy_docs": RUN_ID,  # the toy corpus is generated in memory, never prepared
    "data.dir": (),
    "data.num_workers": (),
    "data.chunk_docs": (),  # memory bound only: outputs are identical for any chunk size
    "data.workers": (),  # parallelism only: outputs are identical for any number of workers
    "data.engine": (),  # the same outputs on every engine
    "data.engine_address": (),
    "data.tokenizer_sample": ("tokenizer", *RUN_ID),
    **{f"train.{k}": RUN_ID for k in ("mode", "max_tokens", "batch_size", "accumulate", "precision", "subtree")},
    "train.seed": ("run",),
    "train.init_from": ("run",),  # another seed / start: the same configuration
    **{f"train.{k}": ("run",) for k in ("accelerator", "devices", "num_nodes", "strategy")},  # steps per budget
    **{
        f"train.{k}": ()
        for k in (
            "val_every",
            "val_batches",
            "ckpt_every",
            "log_every",
            "threads",
            "progress",
            "loggers",
            "telemetry",
            "probe_every",
            "probe_per_bucket",
            "peak_tflops",
            "compile",  # the same arithmetic, fused (equal within float tolerance; tests/test_compile.py)
        )
    },
    **{
        f"eval.{k}": ()
        for k in (
            "tasks",
            "memory",
            "block_level",
            "limit",
            "batch_size",
            "max_gen_tokens",
            "max_length",
            "rolling_context",
        )
    },
}


def fields_with(token: str) -> list[str]:
    """Config fields (dotted) whose declared effects include `token` (a stage name, "run" or "id")."""
    return [k for k, eff in FIELD_EFFECTS.items() if token in eff]


def field_value(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def leaf_fields(node: Any = None, prefix: str = "") -> list[str]:
    """Every leaf field of RunConfig, dotted (what FIELD_EFFECTS must declare)."""
    node = RunConfig() if node is None else node
    out = []
    for f in fields(node):
        v = getattr(node, f.name)
        out += leaf_fields(v, f"{prefix}{f.name}.") if is_dataclass(v) else [f"{prefix}{f.name}"]
    return out
