"""Every configuration dataclass (the anchor's and its named presets: anchor_config.py; the sections owned by one
implementation: config_sections.py), and loading: defaults < experiment YAML < key=value.

Configs hold strings, numbers and lists only (registry keys, never classes). `load_config` merges in struct mode
(a misspelled key fails with the nearest valid key), then builds the dataclasses so each `__post_init__`
validates its section; every failure is a `ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmem_lit.anchor_config import (  # noqa: F401 (re-exported: hmem_lit.config.AnchorConfig, PRESETS, ...)
    HF_ACTS,
    HF_FAMILIES,
    HF_PRESET,
    PRESETS,
    AnchorConfig,
)
from hmem_lit.config_sections import LoRAConfig, PKMConfig, StorageConfig, TreeConfig  # noqa: F401 (re-exported)
from hmem_lit.config_text import check_shapes, friendly, parse_overrides, read_yaml, rename, str_keys, valid_keys
from hmem_lit.errors import ConfigError, RunError  # noqa: E402,F401 (re-exported: hmem_lit.config.ConfigError)
from hmem_lit.errors import check as _check
from hmem_lit.errors import one_of as _one_of
from hmem_lit.fields import RUN_ID, check_ranges, declared, ranged
from hmem_lit.registry import CORPORA, EMBEDDERS, MEMORY, RETRIEVERS  # noqa: E402 (filled on first lookup)

RUN, EMBED = ("run",), ("embeddings", *RUN_ID)  # effects (fields.py)


def _routed_types() -> list[str]:
    """Memory types that fetch blocks by tree path (capability `routed`, memory/base.py)."""
    return [n for n in MEMORY.known() if MEMORY.capability(n, "routed", True)]  # MemoryType.routed: True


# --------------------------------------------------------------------------------------------------------------
# memory


@dataclass
class MemoryConfig:
    EFFECTS = RUN_ID

    type: str = "none"  # none | ffn | lora | kv | pkm (registry key)
    levels: list[int] = ranged([], 0, 2**24, each=True)  # r_l per tree level (r1, r2, ...); 0 = level absent
    layers: Any = "all"  # all | early | middle | late | list of layer indices
    init_std: float = ranged(
        0.02, 0, 10, lo_open=True
    )  # truncated-normal std of the non-zero parts (FFN gate/up, KV keys)
    generic: bool = False  # also train one context-independent "generic" block of the fetch size
    generic_prob: float = ranged(
        1.0 / 17.0, 0, 1, hi_open=True
    )  # probability a training sequence uses the generic block
    storage: StorageConfig = field(default_factory=StorageConfig)  # where the bank lives (hmem_lit/storage/)
    # each memory type's own options (MemoryType.config_key / options); a plug-in type's section is added by schema()
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    pkm: PKMConfig = field(default_factory=PKMConfig)

    def __post_init__(self) -> None:
        check_ranges(self, "memory.")  # the ranges declared beside the fields
        _one_of(self.type, ("none", *MEMORY.known()), "memory.type")  # the registry is the source of truth
        _check(len(self.levels) <= 4, "memory.levels", f"at most 4 levels, got {len(self.levels)}")
        if self.type != "none":
            MEMORY.get(self.type).check_config(self)  # the type's own checks (memory/base.py)
        if isinstance(self.layers, str):
            _one_of(self.layers, ("all", "early", "middle", "late"), "memory.layers")
        else:
            _check(
                all(isinstance(i, int) and i >= 0 for i in self.layers), "memory.layers", "must be layer indices >= 0"
            )
        if self.type == "none":  # no bank: its storage settings mean nothing, so an anchor run derived from a
            # memory config (a sweep's baseline: memory.type=none over a bf16 base) is the same run, same config id
            s = self.storage
            s.dtype, s.rounding, s.prefetch, s.async_update = "float32", "stochastic", False, False
        self.storage.check()


# --------------------------------------------------------------------------------------------------------------
# retriever, data


@dataclass
class RetrieverConfig:
    """What every retriever and the bank share (the tree's shape, the embedder, the fit sample, the seed); each
    retriever's own settings live in its section (retriever.tree)."""

    EFFECTS = ("tree", *RUN_ID)  # the tree stage of `hmem data prepare`, unless a field says

    type: str = "tree"  # tree (k-means tree routing) | random (seeded random paths) | oracle (metadata field)
    embedder: str = declared("tfidf", effects=EMBED)  # tfidf | minilm
    embed_dim: int = ranged(256, 1, 2**16, effects=EMBED)  # tfidf: projected dimensions (minilm is always 384)
    # random (+-1 JL projection: keeps rare names, routes facts better) | svd (LSA)
    tfidf_projection: str = declared("random", effects=EMBED)
    branching: int = ranged(16, 2, 4096)
    depth: int = ranged(2, 1, 4)  # tree levels built (the bank may use fewer)
    seed: int = ranged(0, 0, 2**32 - 1, effects=("embeddings", "tree", *RUN_ID))
    oracle_field: str = "kind"  # metadata field used by the oracle retriever
    # corpus scale: the embedder (tfidf), the k-means tree and the BM25 index/refinement are fitted on at most
    # `fit_sample` training documents (a seeded sample; 0 = all); every other document is then routed in chunks
    # like held-out text. `embed_dtype`: the stored document embeddings (float16 halves the disk of emb.npy).
    fit_sample: int = ranged(100_000, 0, 10**12, effects=("embeddings", "tree", *RUN_ID))
    embed_dtype: str = declared("float32", effects=EMBED)  # float32 | float16
    # where the embedding chunks of `hmem data prepare` run: cpu | cuda (embedders that declare gpu support:
    # minilm; on the local engine CUDA must be visible to the preparing process, on dask to the workers)
    # (a GPU's embeddings differ from the CPU's in float rounding)
    device: str = declared("cpu", effects=EMBED)
    tree: TreeConfig = field(default_factory=TreeConfig)  # the tree retriever's own settings (retriever/tree.py)

    def __post_init__(self) -> None:
        check_ranges(self, "retriever.")  # the ranges declared beside the fields
        _one_of(self.type, RETRIEVERS.known(), "retriever.type")  # the registries are the source of truth
        _one_of(self.embedder, EMBEDDERS.known(), "retriever.embedder")
        _one_of(self.tfidf_projection, ("random", "svd"), "retriever.tfidf_projection")
        _one_of(self.embed_dtype, ("float32", "float16"), "retriever.embed_dtype")
        _one_of(self.device, ("cpu", "cuda"), "retriever.device")
        _check(
            self.device == "cpu" or EMBEDDERS.get(self.embedder).gpu,
            "retriever.device",
            f"retriever.embedder={self.embedder} embeds on the CPU; set retriever.device=cpu or "
            f"retriever.embedder to one of {[n for n in EMBEDDERS.names() if EMBEDDERS.get(n).gpu]}",
        )


@dataclass
class DataConfig:
    EFFECTS = ("corpus", *RUN_ID)  # the corpus stage of `hmem data prepare` and every later one, unless it says

    source: str = "toy"  # toy (generated in memory, for tests) | builtin | files
    dir: str = declared("data/builtin", effects=())  # prepared data directory (tokenizer, tree, packed shards)
    files: list[str] = field(default_factory=list)  # source=files: JSONL ({"text": ...}) or .txt paths
    # an existing tokenizer JSON instead of training one
    tokenizer: str | None = declared(None, effects=("tokenizer", *RUN_ID))
    # BPE vocabulary trained on the corpus
    vocab_size: int = ranged(4096, 260, 2**21, effects=("tokenizer", *RUN_ID))
    seq_len: int = ranged(128, 8, 2**22, effects=("packing", *RUN_ID))  # packed sequence length (tokens)
    val_fraction: float = ranged(0.02, 0, 0.5, hi_open=True)  # share of documents held out for validation perplexity
    # corpus, synthetic world, split and packing seed (train.seed drives init and order)
    seed: int = ranged(0, 0, 2**32 - 1, effects=("corpus", "packing", "questions", *RUN_ID))
    num_workers: int = ranged(0, 0, 1024, effects=())  # DataLoader workers (0 = load in the main process)
    # corpus scale (data/stream.py): preparation reads documents in chunks of `chunk_docs` and trains the BPE on
    # at most `tokenizer_sample` training documents (a seeded sample; 0 = all), so its memory is bounded by these,
    # not by the corpus. `workers` processes embed chunks in parallel; neither changes any output.
    chunk_docs: int = ranged(16_384, 1, 10**9, effects=())
    tokenizer_sample: int = ranged(100_000, 0, 10**12, effects=("tokenizer", *RUN_ID))
    workers: int = ranged(1, 1, 4096, effects=())
    # where the embedding and routing chunks run (data/stream.py Engine): local (this machine, `workers`
    # processes) | dask (dask.distributed: the scheduler at `engine_address`, or a LocalCluster of `workers`
    # processes when empty). Outputs are byte-identical on every engine.
    engine: str = declared("local", effects=())
    engine_address: str = declared("", effects=())
    # packing (data/packing.py), both within one leaf (the paper's same-cluster packing): stream = the leaf's
    # documents concatenated and cut into rows (a document may continue in the next row; documents of at most
    # `pack_whole` tokens are never cut; the default since 2026-12-02: LOG "packing default"); ffd = first-fit
    # decreasing, a document that fits a row is never split (wastes 23% of tokens as padding on web-like text)
    packing: str = declared("stream", effects=("packing", *RUN_ID))
    pack_whole: int = ranged(32, 0, 2**22, effects=("packing", *RUN_ID))
    # the documents' key field (an entity name, an id): routing diagnostics (concentration of each key's training
    # documents in one leaf, prompts routed to it; retriever/diagnostics.py). null = "entity" for the builtin
    # corpora, none for files. When set, every file document must carry it (null for background text).
    key_field: str | None = declared(None, effects=("tree",))
    # builtin corpus knobs
    corpus: str = "facts"  # facts (elements, countries, synthetic people) | airports (airportsdata; data/airports.py)
    airports: int = ranged(1500, 1, 10**7)  # corpus=airports: airports drawn
    wiki_docs: int = ranged(10_033, 0, 10**9)  # Wikipedia summaries used (at most 10,033)
    synthetic_entities: int = ranged(2_000, 0, 10**9)  # invented entities in the synthetic world (0 = none)
    fact_repeats_max: int = ranged(32, 1, 10**6)  # most frequent entity's fact documents
    fact_repeats_min: int = ranged(1, 1, 10**6)  # the tail's fact documents (the Zipf law runs from min to max)
    zipf_a: float = ranged(1.1, 0, 100, lo_open=True)
    # toy corpus knobs
    toy_docs: int = ranged(400, 2, 10**8, effects=RUN_ID)  # generated in memory, never prepared

    def __post_init__(self) -> None:
        check_ranges(self, "data.")  # the ranges declared beside the fields
        _one_of(self.source, ("toy", "builtin", "files"), "data.source")
        _one_of(self.corpus, CORPORA.known(), "data.corpus")  # the registry is the source of truth
        if self.source == "files":
            _check(len(self.files) > 0, "data.files", "data.source=files needs at least one path")
        _one_of(self.packing, ("ffd", "stream"), "data.packing")
        _one_of(self.engine, ("local", "dask"), "data.engine")
        _check(
            1 <= self.fact_repeats_min <= self.fact_repeats_max,
            "data.fact_repeats_min",
            f"must be in [1, data.fact_repeats_max={self.fact_repeats_max}], got {self.fact_repeats_min}",
        )


# --------------------------------------------------------------------------------------------------------------
# optimisation, training, evaluation


@dataclass
class OptimConfig:
    EFFECTS = RUN_ID

    lr: float = ranged(3e-3, 0, 100, lo_open=True)  # anchor peak LR
    min_lr: float = ranged(3e-4, 0, 100)  # cosine floor
    warmup: float = ranged(0.05, 0, 10**12)  # fraction of total steps if < 1, else a number of steps
    weight_decay: float = ranged(0.05, 0, 100)  # anchor AdamW weight decay
    beta1: float = ranged(0.9, 0, 1, hi_open=True)  # AdamW betas (anchor and memory)
    beta2: float = ranged(0.95, 0, 1, hi_open=True)  # AdamW beta2 (anchor and memory)
    eps: float = ranged(1e-8, 0, 1, lo_open=True)  # AdamW epsilon (anchor and memory)
    grad_clip: float = ranged(1.0, 0, 1e9)  # anchor (dense) gradient-norm clip; 0 = off
    memory_lr: float = ranged(3e-3, 0, 100, lo_open=True)  # memory blocks' own peak LR (paper at scale: 1e-4)
    memory_min_lr: float = ranged(3e-4, 0, 100)  # memory LR at the end of its cosine
    memory_weight_decay: float = ranged(1e-3, 0, 100)  # the paper: 1e-3 helped memorisation
    memory_grad_clip: float = ranged(
        0.0, 0, 1e9
    )  # separate clip for memory gradients; 0 = they join the global clip (grad_clip)
    # per bank level (level 1 first): multipliers on memory_lr and memory_min_lr for the FFN/LoRA/KV block tables.
    # Deep levels are fetched by few documents, so their rows see few updates; [] = 1 for every level.
    memory_lr_scale: list[float] = ranged([], 0, 1e6, lo_open=True, each=True)
    # token-level memories (pkm): the value table's own LR multiplier on memory_lr and gradient clip (0 = it joins
    # the memory's clip); the reference PKM code trains the values at 10x the model's LR with their own clip
    value_lr_scale: float = ranged(1.0, 0, 1e6, lo_open=True)
    value_grad_clip: float = ranged(0.0, 0, 1e9)

    def __post_init__(self) -> None:
        check_ranges(self, "optim.")  # the ranges declared beside the fields
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", "must be in [0, optim.lr]")
        _check(0 <= self.memory_min_lr <= self.memory_lr, "optim.memory_min_lr", "must be in [0, optim.memory_lr]")
        _check(
            all(float(x) > 0 for x in self.memory_lr_scale),
            "optim.memory_lr_scale",
            f"multipliers must be > 0, got {self.memory_lr_scale}",
        )


TRACKERS = ("jsonl", "csv", "tensorboard", "wandb", "mlflow")  # train.loggers (hmem_lit/trackers.py)


@dataclass
class TrainConfig:
    EFFECTS = ()  # bookkeeping, unless a field says

    # anchor (A1) | frozen (A3: memory on a frozen anchor) | cotrain (A2) | scratch (A4); anchor and scratch are the
    # same thing (fresh init) and are named after memory.type on load
    mode: str = declared("anchor", effects=RUN_ID)
    init_from: str | None = declared(None, effects=RUN)  # run directory with a trained anchor (frozen, cotrain)
    max_tokens: int = ranged(200_000, 1, 10**16, effects=RUN_ID)  # token budget (sequences x seq_len x steps, all)
    batch_size: int = ranged(16, 1, 2**20, effects=RUN_ID)  # sequences per micro-batch per device
    accumulate: int = ranged(1, 1, 2**20, effects=RUN_ID)  # gradient accumulation micro-batches
    # auto (bf16-mixed on CUDA, 32-true on CPU) | 32-true | bf16-mixed | 16-mixed
    precision: str = declared("auto", effects=RUN_ID)
    # where and on how many devices: the steps a token budget takes
    accelerator: str = declared("auto", effects=RUN)
    devices: Any = declared(1, effects=RUN)
    # Lightning's num_nodes: train.devices processes on each (Slurm, torchrun)
    num_nodes: int = ranged(1, 1, 10**6, effects=RUN)
    strategy: str = declared("auto", effects=RUN)  # any Lightning strategy name: auto | ddp | ddp_spawn | fsdp ...
    val_every: int = ranged(50, 0, 10**12)  # steps between validations (0 = only at the end)
    val_batches: int = ranged(8, 1, 10**9)
    ckpt_every: int = ranged(50, 0, 10**12)  # steps between checkpoints (0 = only at the end)
    log_every: int = ranged(5, 1, 10**12)
    seed: int = ranged(0, 0, 2**32 - 1, effects=RUN)  # another seed of the same configuration
    threads: int = ranged(0, 0, 4096)  # torch intra-op threads (0 = torch default)
    progress: bool = True  # progress lines on the console while training
    # train only sequences under this level-1 subtree (split memory jobs)
    subtree: int | None = declared(None, effects=RUN_ID)
    # experiment trackers (trackers.py): jsonl is always written; add csv | tensorboard | wandb | mlflow
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    telemetry: bool = True  # memory runs: log the bank's use (telemetry.py)
    probe_every: int = ranged(0, 0, 10**12)  # in-loop fact probes every N steps (evaluation/inloop.py; 0 = off)
    probe_per_bucket: int = ranged(8, 1, 10**7)  # items per frequency bucket and probe in the in-loop subset
    # torch.compile the anchor (memory hooks included; the bank's gather stays eager): the same arithmetic, fused
    # (equal within float tolerance; tests/test_compile.py)
    compile: bool = False
    # peak FLOP/s per device in TFLOP/s for train/mfu (throughput.py); None = the device table (CUDA), no MFU on CPU
    peak_tflops: float | None = ranged(None, 0, 1e7, lo_open=True)

    def __post_init__(self) -> None:
        check_ranges(self, "train.")  # the ranges declared beside the fields
        _one_of(self.mode, ("anchor", "frozen", "cotrain", "scratch"), "train.mode")
        _one_of(self.precision, ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"), "train.precision")
        for n in self.loggers:
            _one_of(n, TRACKERS, "train.loggers")


NAME_MAX = 200  # bytes of a run's name or experiment (file names hold 255)
EVAL_TASKS = ("hmem_sk", "hmem_ck", "hmem_wiki_ppl", "hmem_val_bpb")


@dataclass
class EvalConfig:
    EFFECTS = ()  # evaluation settings: none changes a run

    tasks: list[str] = field(default_factory=lambda: list(EVAL_TASKS))  # lm-eval tasks and groups (generated per run)
    memory: str = "fetched"  # fetched | generic | none | blocked | random (random paths: the routing control)
    block_level: int = ranged(1, 1, 4)  # blocked mode: the tree level whose best-matching subtree is blocked
    limit: int | None = ranged(None, 1, 10**12)  # at most this many samples per task
    batch_size: int = ranged(32, 1, 2**20)  # requests per forward
    max_gen_tokens: int = ranged(16, 1, 2**16)  # generation length cap for probes without their own
    max_length: int | None = ranged(
        None, 2, 2**22
    )  # evaluation context window in tokens (None = data.seq_len, the trained one)
    rolling_context: int | None = ranged(
        None, 1, 2**22
    )  # perplexity: context tokens kept per rolling window (None = max_length // 2)

    def __post_init__(self) -> None:
        check_ranges(self, "eval.")  # the ranges declared beside the fields
        _one_of(self.memory, ("fetched", "generic", "none", "blocked", "random"), "eval.memory")


# --------------------------------------------------------------------------------------------------------------
# the root


@dataclass
class RunConfig:
    EFFECTS = ()

    experiment: str = "default"  # runs/<experiment>/<name>/
    name: str = "run"  # the run directory's name
    out_dir: str = "runs"  # where run directories go
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        for key, v in (("name", self.name), ("experiment", self.experiment)):  # one directory level each
            _check(
                bool(re.fullmatch(r"[\w.\-]+", v)) and v not in (".", ".."),
                key,
                f"use letters, digits, '._-' only (not . or ..), got {v!r}",
            )
            _check(  # a file name holds 255 bytes; the run's lock files add ".", ".final.lock" around it
                len(v.encode("utf-8")) <= NAME_MAX,
                key,
                f"at most {NAME_MAX} bytes (it names a directory and its lock files), got {len(v.encode('utf-8'))}",
            )
        used = len(self.memory.levels)
        scale = self.optim.memory_lr_scale
        routed_types = _routed_types()
        _check(
            (self.optim.value_lr_scale == 1.0 and self.optim.value_grad_clip == 0.0)
            or (self.memory.type != "none" and self.memory.type not in routed_types),
            "optim.value_lr_scale",
            "value_lr_scale / value_grad_clip apply to a token-level memory's value table (memory.type=pkm); "
            "a bank's levels take optim.memory_lr_scale",
        )
        _check(
            not scale or (len(scale) == used and self.memory.type in routed_types),
            "optim.memory_lr_scale",
            f"needs one multiplier per memory.levels entry ({used}) of a routed bank "
            f"({', '.join(routed_types)}), got {list(scale)} for "
            f"memory.type={self.memory.type}; use [] for none",
        )
        _check(
            used <= self.retriever.depth,
            "memory.levels",
            f"{used} levels but the tree has retriever.depth={self.retriever.depth}; add a level there or drop one",
        )
        # "anchor" and "scratch" both train everything from a fresh init; the name follows the memory type, so a
        # memory run launched with the default mode is recorded as the paper's A4 (co-training from scratch)
        if self.train.mode in ("anchor", "scratch"):
            self.train.mode = "anchor" if self.memory.type == "none" else "scratch"
        else:
            _check(self.memory.type != "none", "memory.type", f"train.mode={self.train.mode} needs a memory type")
            # an hf anchor arrives trained (its own weights); init_from may still point at a run to continue from
            _check(
                bool(self.train.init_from) or self.anchor.preset == HF_PRESET,
                "train.init_from",
                f"train.mode={self.train.mode} needs the anchor's run directory",
            )
        if self.train.subtree is not None:
            _check(
                self.train.mode == "frozen" and self.memory.type in routed_types and not self.memory.generic,
                "train.subtree",
                f"needs train.mode=frozen, a bank-backed memory.type ({', '.join(routed_types)}) and "
                "memory.generic=false (every other parameter must stay identical across the split jobs)",
            )
            _check(
                0 <= self.train.subtree < self.retriever.branching,
                "train.subtree",
                f"must be a level-1 node in [0, {self.retriever.branching}) (retriever.branching), "
                f"got {self.train.subtree}",
            )
        if isinstance(self.memory.layers, list):
            bad = [i for i in self.memory.layers if i >= self.anchor.n_layer]
            _check(not bad, "memory.layers", f"layer indices {bad} out of range for {self.anchor.n_layer} layers")
        _check(
            self.data.seq_len <= self.anchor.max_seq_len,
            "data.seq_len",
            f"{self.data.seq_len} exceeds anchor.max_seq_len={self.anchor.max_seq_len}",
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.experiment / self.name


# --------------------------------------------------------------------------------------------------------------
# loading

# Renamed keys, old -> new (dotted). A config that still writes the old key (a YAML, key=value, a stored run's
# config) works: the value moves to the new key with a one-line notice. One table for every rename.
RENAMED: dict[str, str] = {
    "memory.lora_target": "memory.lora.target",
    "memory.lora_alpha": "memory.lora.alpha",
    "memory.offload": "memory.storage.offload",
    "memory.storage_dir": "memory.storage.dir",
    "memory.dtype": "memory.storage.dtype",
    "memory.rounding": "memory.storage.rounding",
    "memory.prefetch": "memory.storage.prefetch",
    "memory.async_update": "memory.storage.async_update",
    "retriever.train_paths": "retriever.tree.train_paths",
    "retriever.balance": "retriever.tree.balance",
    "retriever.niter": "retriever.tree.niter",
    "retriever.max_points_per_centroid": "retriever.tree.max_points_per_centroid",
    "retriever.recenter": "retriever.tree.recenter",
    "retriever.router": "retriever.tree.router",
    "retriever.refine": "retriever.tree.refine",
    "retriever.knn_k": "retriever.tree.knn_k",
    "retriever.bm25_max_df": "retriever.tree.bm25_max_df",
    "retriever.refine_iters": "retriever.tree.refine_iters",
    "retriever.refine_cap": "retriever.tree.refine_cap",
    "retriever.graph_max_postings": "retriever.tree.graph_max_postings",
    "retriever.route_unsampled": "retriever.tree.route_unsampled",
}
# memory.storage was a string (ram | disk) before it named the section: such a value moves to memory.storage.kind
STORAGE_KIND = {"memory.storage": "memory.storage.kind"}
# retriever.tree.<key> -> the flat name it had (retriever.<key>): data preparation's stage keys and sweep trial names
# are computed under these names, so prepared directories and trial runs keep their keys and names
RETRIEVER_FLAT_NAME = {new: old for old, new in RENAMED.items() if new.startswith("retriever.tree.")}


def flat_retriever(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict (to_dict's) with its retriever section in the flat layout (retriever.tree's keys at the top of
    retriever, under their old names): for identities first computed in that layout (sweep baselines' hashes)."""
    ret = d.get("retriever")
    if not isinstance(ret, dict) or not isinstance(ret.get("tree"), dict):
        return d
    return {**d, "retriever": {**{k: v for k, v in ret.items() if k != "tree"}, **ret["tree"]}}


def renamed(tree: Any) -> Any:
    """`tree` (a plain dict or DictConfig) with every old key of RENAMED moved to its new key (config_text.rename)."""
    mem = tree.get("memory") if isinstance(tree, (dict, DictConfig)) else None
    if (
        isinstance(mem, (dict, DictConfig))
        and isinstance(mem.get("storage"), str)
        and mem["storage"] in ("ram", "disk")
    ):
        tree = rename(tree, STORAGE_KIND)  # first: the old keys below then land in the section
    return rename(tree, RENAMED)


def memory_schema() -> type[MemoryConfig]:
    """MemoryConfig, plus one section for each plug-in memory type that declares its own options
    (`config_key = "mine"; options = MyOptions`, a dataclass): memory.mine.<key> then loads from YAML and key=value
    like memory.pkm.<key>. Without plug-ins it is MemoryConfig itself and nothing is imported."""
    from hmem_lit.registry import load_plugins, plugins_configured

    if plugins_configured():
        load_plugins()
    have = {f.name for f in fields(MemoryConfig)}
    extra = []
    for cls in MEMORY.registered().values():  # shipped types' sections are MemoryConfig's own fields
        key, opts = getattr(cls, "config_key", None), getattr(cls, "options", None)
        if key and opts is not None and key not in have:
            have.add(key)
            extra.append((key, opts))
    return _extended(MemoryConfig, tuple(extra)) if extra else MemoryConfig


def schema() -> type[RunConfig]:
    """The root config class that loading builds: RunConfig, with memory_schema() as its memory section."""
    mem = memory_schema()
    return RunConfig if mem is MemoryConfig else _extended(RunConfig, (("memory", mem),))


@functools.cache  # one class per set of sections: configs built from it compare equal
def _extended(base: type, sections: tuple[tuple[str, type], ...]) -> Any:
    """A subclass of config dataclass `base` with one more section field per (name, dataclass)."""
    extra = [(name, cls, field(default_factory=cls)) for name, cls in sections]
    return make_dataclass(base.__name__, extra, bases=(base,), namespace={"__module__": __name__})


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """defaults < anchor preset < experiment YAML < `key=value` overrides, validated."""
    root: Any = schema()  # a class (hashable: str_keys caches by it)
    try:
        schema_node = OmegaConf.structured(root)
        OmegaConf.set_struct(schema_node, True)
        shape = OmegaConf.to_container(schema_node)
        explicit = renamed(read_yaml(path)) if path else OmegaConf.create({})
        check_shapes(OmegaConf.to_container(explicit), shape)
        cli = renamed(parse_overrides(overrides, str_keys(root)))
        check_shapes(OmegaConf.to_container(cli), shape)  # before merging: a list onto a section is a TypeError
        explicit = cast(DictConfig, OmegaConf.merge(explicit, cli))
        if path and "experiment" not in explicit:
            explicit.experiment = Path(path).stem
        # validate keys and types against the schema before expanding the preset
        merged = OmegaConf.merge(schema_node, explicit)
        preset = merged.anchor.preset
        if preset not in PRESETS and preset != HF_PRESET:
            raise ConfigError(f"anchor.preset: got {preset!r}; allowed: {', '.join([*PRESETS, HF_PRESET])}")
        merged = OmegaConf.merge(schema_node, {"anchor": PRESETS.get(preset, {})}, explicit)
        check_shapes(OmegaConf.to_container(merged), None)  # typed now: "inf" became a float
        return cast(RunConfig, OmegaConf.to_object(merged))  # runs every __post_init__
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else None
        raise (cause or friendly(e, valid_keys(root))) from None


def merged_value(path: str | Path | None, overrides: list[str] | tuple[str, ...], key: str) -> Any:
    """One key of defaults < experiment YAML < overrides, merged but not validated (no section's __post_init__
    runs, so no registry is imported): for commands that only need to find a run's files."""
    root: Any = schema()  # a class (hashable: str_keys caches by it)
    try:
        explicit = renamed(read_yaml(path)) if path else OmegaConf.create({})
        cli = renamed(parse_overrides(overrides, str_keys(root)))
        return OmegaConf.select(OmegaConf.merge(OmegaConf.structured(root), explicit, cli), key)
    except OmegaConfBaseException as e:
        raise friendly(e, valid_keys(root)) from None


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict (safe to store in checkpoints loaded with weights_only=True)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def from_dict(d: dict[str, Any]) -> RunConfig:
    """A stored config (a run's final.json, a checkpoint), validated; old keys are renamed (RENAMED)."""
    return cast(RunConfig, section_from_dict(schema(), renamed(d)))


def section_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """A config dataclass (its nested sections built too) from its plain dict, in struct mode, validated."""
    node = OmegaConf.structured(cls)
    OmegaConf.set_struct(node, True)
    try:
        return OmegaConf.to_object(OmegaConf.merge(node, d))
    except OmegaConfBaseException as e:
        raise friendly(e, valid_keys(cls)) from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from hmem_lit.utils import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
