"""The memory-augmented LM: anchor + (optional) memory type over a hierarchical bank; modes and accounting.

The model only sees (tokens, doc_ids, paths): routing happens in the data pipeline and in evaluation. Training
modes (train.mode, ../shared/PAPERS.md A5 / Table 1) are applied after construction by `prepare_model_for_mode`; `info`
prints the anchor / fetched / bank parameter counts of a config without allocating anything (meta device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hmem_lit import storage
from hmem_lit.anchor import Anchor, count_params
from hmem_lit.config import RunConfig

if TYPE_CHECKING:
    from hmem_lit.memory.base import MemoryType
    from hmem_lit.runs import Run


class MemoryLM(nn.Module):
    def __init__(self, cfg: RunConfig, vocab_size: int | None = None):
        super().__init__()
        acfg = cfg.anchor
        if vocab_size is not None:
            acfg = dataclasses.replace(acfg, vocab_size=vocab_size)
        if acfg.preset == "hf":  # a Hugging Face causal LM (post-hoc memory); it resolves its own sizes
            from hmem_lit.hf_anchor import HFAnchor

            self.anchor: nn.Module = HFAnchor(acfg)
            acfg = self.anchor.cfg
        else:
            self.anchor = Anchor(acfg)
        self.cfg = dataclasses.replace(cfg, anchor=acfg)
        self.memory: MemoryType | None = None
        self.subtree: int | None = None  # set by prepare_model_for_mode for split (per-subtree) memory jobs
        if cfg.memory.type != "none":
            from hmem_lit.memory import MEMORY

            self.memory = MEMORY.get(cfg.memory.type)(cfg.memory, acfg, cfg.retriever.branching)

    def forward(
        self,
        input_ids: Tensor,
        doc_ids: Tensor | None = None,
        paths: Tensor | None = None,
        memory_mode: str = "fetched",
        generic: Tensor | None = None,
        logits_to_keep: int = 0,
        cache: Any = None,
    ) -> Tensor:
        """-> logits (B, T, vocab), or of the last `logits_to_keep` positions. memory_mode: fetched | generic | none.

        fetched: each sequence reads the blocks on its path (paths (B, depth)); generic (B,) bool, if given,
        switches chosen sequences to the generic block. For blocking, pass paths already substituted with
        `hmem_lit.memory.bank.choose_unblocked`. cache: an `anchor.KVCache` for greedy decoding (native anchors).
        """
        hooks = None
        if self.memory is not None and memory_mode != "none":
            if memory_mode == "generic":
                generic = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            elif self.subtree is not None and self.training:
                assert paths is not None  # a subtree job trains a routed memory: fetched mode reads paths
                if bool((paths[:, 0] != self.subtree).any()):
                    raise ValueError(f"train.subtree={self.subtree}: a batch holds paths from other level-1 subtrees")
            hooks = self.memory.fetch(paths, generic=generic)
        kw = {} if cache is None else {"cache": cache}  # hf anchors take no cache (the adapter never passes one)
        return self.anchor(input_ids, doc_ids=doc_ids, hooks=hooks, logits_to_keep=logits_to_keep, **kw)

    def param_counts(self) -> dict[str, int]:
        anchor = count_params(self.anchor)
        if self.memory is None:
            return {"anchor": anchor, "fetched": 0, "bank": 0, "runtime": anchor}
        fetched = int(self.memory.fetched_params())
        unused = int(self.memory.unused_anchor_params(self.anchor))  # pkm replace: the replaced FFNs
        out = {
            "anchor": anchor - unused,
            "fetched": fetched,
            "bank": int(self.memory.bank_params()),
            "runtime": anchor - unused + fetched,
        }
        return {**out, "anchor_unused": unused} if unused else out


def load_run_state(run_dir: str | Path) -> dict[str, Tensor]:
    """The final weights of a run directory (`model.safetensors`, keys as in `MemoryLM.state_dict()`)."""
    from safetensors.torch import load_file

    from hmem_lit.runs import check_weights

    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no final weights (is {run_dir} a finished run directory?)")
    return load_file(str(check_weights(path)))


def prepare_model_for_mode(
    model: MemoryLM, cfg: RunConfig, load_anchor_state: Callable[[str], dict[str, Tensor]] = load_run_state
) -> MemoryLM:
    """Apply train.mode: frozen / cotrain load the anchor from train.init_from (an hf anchor without init_from
    keeps the model's own weights; frozen also freezes it);
    anchor / scratch train everything from the fresh init. train.subtree restricts a frozen-anchor memory job to
    one level-1 subtree (checked on every training batch)."""
    mode = cfg.train.mode
    # an hf anchor holds its trained weights already; train.init_from, if given, replaces them with a run's
    if mode in ("frozen", "cotrain") and (cfg.train.init_from or cfg.anchor.preset != "hf"):
        assert cfg.train.init_from is not None  # RunConfig requires it for frozen / cotrain with a built-in anchor
        state = load_anchor_state(cfg.train.init_from)
        anchor_state = {k[len("anchor.") :]: v for k, v in state.items() if k.startswith("anchor.")}
        if not anchor_state:
            raise ValueError(f"train.init_from={cfg.train.init_from}: its weights hold no 'anchor.*' tensors")
        try:
            model.anchor.load_state_dict(anchor_state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise ValueError(
                f"train.init_from={cfg.train.init_from}: anchor does not match anchor.* ({first})"
            ) from None
    if mode == "frozen":
        model.anchor.requires_grad_(False)
    if cfg.train.subtree is not None:
        k, b = cfg.train.subtree, cfg.retriever.branching
        if mode != "frozen" or not getattr(model.memory, "routed", False) or cfg.memory.generic:
            raise ValueError(
                "train.subtree needs train.mode=frozen, a bank-backed memory type (ffn, lora, kv) and "
                "memory.generic=false: every other parameter must stay identical across the jobs"
            )
        if not 0 <= k < b:
            raise ValueError(f"train.subtree={k}: must be in [0, {b}) (retriever.branching)")
        model.subtree = k
    return model


def _fmt(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n:,} ({n / div:.2f}{unit})"
    return f"{n:,}"


def info(cfg: RunConfig) -> str:
    """Anchor / fetched / bank parameter counts (and the bank's levels) of a config, built on the meta device."""
    from hmem_lit.data.toy import ByteTokenizer

    vocab = cfg.anchor.vocab_size or (ByteTokenizer.vocab_size if cfg.data.source == "toy" else cfg.data.vocab_size)
    with torch.device("meta"):
        model = MemoryLM(cfg, vocab)
    c = model.param_counts()
    lines = [f"anchor  {cfg.anchor.preset}: {_fmt(c['anchor'])} (vocab {vocab})", f"memory  {cfg.memory.type}"]
    if model.memory is not None:
        lines += [
            f"fetched {_fmt(c['fetched'])}  = {100 * c['fetched'] / c['anchor']:.1f}% of the anchor",
            f"bank    {_fmt(c['bank'])}",
        ]
        if c["bank"] >= 10**8:  # where a big bank's training state fits is the next question
            lines.append(f"        {storage.training_state(cfg.memory.storage, c['bank'])}")
        memory: Any = model.memory  # a bank-backed type has .bank and .layers (the anchor layers it serves)
        bank = getattr(memory, "bank", None)
        if bank is not None:
            lines.append(
                f"levels  {list(bank.levels)} over a {bank.branching}-way tree, "
                f"{len(memory.layers)} memory layers, c0 = {bank.c_unit:,} per unit"
            )
            for lvl, r, _ in bank.tables():
                lines.append(
                    f"  level {lvl}: {bank.n_nodes(lvl):>7,} blocks x {bank.c_unit * r:>12,} = "
                    f"{_fmt(bank.n_nodes(lvl) * bank.c_unit * r)}"
                )
    return "\n".join(lines)


def load_model(run_dir: str | Path | Run, map_location: str = "cpu"):
    """-> (MemoryLM with the run's final weights, RunConfig) of a run directory or an opened runs.Run. Weights come
    from safetensors (no code runs)."""
    from safetensors import safe_open

    from hmem_lit.config import ConfigError
    from hmem_lit.runs import WEIGHTS, Run, check_weights

    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    run_dir, weights = run.dir, run.weights
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no {WEIGHTS}; train it to completion first (hmem train ...)")
    check_weights(weights)
    cfg = run.config  # final.json's, else config.yaml
    with safe_open(str(weights), framework="pt") as f:  # the vocabulary from the embedding's shape (built-in | hf)
        names = [k for k in ("anchor.tok_emb.weight", "anchor.hf.model.embed_tokens.weight") if k in f.keys()]
        vocab = f.get_slice(names[0]).get_shape()[0] if names else cfg.anchor.vocab_size
    # the storage backend reads the file (a disk-backed bank's tables mapped from it, scratch files by the run's)
    model = storage.load_weights(
        cfg.memory.storage, weights, lambda: MemoryLM(cfg, vocab), run_dir.parent, map_location
    )
    assert isinstance(model, MemoryLM)
    return model.eval(), model.cfg
