"""`hmem export RUN --format hf --out DIR`: a trained run as a directory `transformers` loads with a standard
architecture, plus its memory bank, router and tokenizer; `hmem_lit.hf_export.load(DIR)` gives the HF model back
with the memory attached through the same hooks as post-hoc memory (hf_anchor.py).

Which architecture matches the built-in anchor exactly (pre-norm RMSNorm, SwiGLU, RoPE on rotated halves, tied or
untied output, no biases):
  - qk_norm=false: LlamaForCausalLM (weights map one to one);
  - qk_norm=true (the default: a weight-only RMSNorm over the *full* attention width of q and k, OpenLM style):
    OlmoeForCausalLM with one expert, which is the only standard decoder with full-width q/k RMSNorm and pre-norm
    blocks (Qwen3 and Gemma3 normalise per head, OLMo2/3 put the norms after the sublayers). With one expert the
    router's softmax is exactly 1, so the layer is the dense SwiGLU (gate_up_proj = [w_gate; w_up]).
LayerNorm anchors (anchor.norm=layernorm) have no exact standard counterpart and are refused with one line.

DIR holds config.json + generation_config.json + model.safetensors (the HF model), tokenizer files (built-in /
files corpora; end-of-text as EOS and the run's pad token, left padding for batched generation), README.md (a
model card: what the files are, how to attach the memory, and that plain `generate` / `pipeline` run the anchor
alone), and, for a memory run, hmem_memory.safetensors + hmem.json (the run's config and the memory's keys) +
router/ (the tree the prompts are routed with). `load(DIR)` -> HFMemoryModel: `.hf` (the transformers model), `.memory`,
`.route(texts)` (paths), and `with m.fetched(paths): m.hf(...)` / `m.hf.generate(...)` runs the HF model with the
blocks on those paths. Nothing executes code from DIR: configs are JSON, weights are safetensors.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hmem_lit.config import ConfigError, from_dict

if TYPE_CHECKING:
    from hmem_lit.runs import Run

MEMORY_WEIGHTS, META = "hmem_memory.safetensors", "hmem.json"


def hf_config(acfg: Any, **extra: Any) -> Any:
    """The transformers config matching the built-in anchor `acfg` exactly (see the module docstring)."""
    import transformers

    if acfg.norm != "rmsnorm":
        raise ConfigError(
            f"anchor.norm={acfg.norm}: no standard transformers architecture has weight-only LayerNorm blocks; "
            "export supports rmsnorm anchors"
        )
    from hmem_lit.hf_anchor import size_kwargs

    common = {
        **size_kwargs(acfg),
        "rope_parameters": {"rope_type": "default", "rope_theta": acfg.rope_base},
        "attention_bias": False,
        "hidden_act": "silu",
        **extra,
    }
    if not acfg.qk_norm:
        return transformers.LlamaConfig(**common, mlp_bias=False)
    if acfg.n_head * acfg.head_dim != acfg.d_model:
        raise ConfigError(
            f"anchor.head_dim: OLMoE's full-width qk-norm needs n_head * head_dim == d_model "
            f"({acfg.n_head} * {acfg.head_dim} != {acfg.d_model}); this anchor has no exact standard counterpart"
        )
    return transformers.OlmoeConfig(
        **common,
        num_experts=1,
        num_experts_per_tok=1,
        norm_topk_prob=False,
        router_aux_loss_coef=0.0,
        output_router_logits=False,
        clip_qkv=None,
    )


def hf_state(anchor_state: dict[str, Tensor], acfg: Any) -> dict[str, Tensor]:
    """Built-in anchor weights (keys as in Anchor.state_dict()) -> the HF model's keys."""
    s = {k.removeprefix("anchor."): v for k, v in anchor_state.items()}
    out = {"model.embed_tokens.weight": s["tok_emb.weight"], "model.norm.weight": s["norm.weight"]}
    if not acfg.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"]
    for i in range(acfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = s[b + "attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = s[b + "ffn_norm.weight"]
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            out[f"{h}self_attn.{theirs}.weight"] = s[f"{b}attn.{ours}.weight"]
        gate, up, down = (s[f"{b}ffn.{n}.weight"] for n in ("w_gate", "w_up", "w_down"))
        if acfg.qk_norm:
            out[h + "self_attn.q_norm.weight"] = s[b + "attn.q_norm.weight"]
            out[h + "self_attn.k_norm.weight"] = s[b + "attn.k_norm.weight"]
            out[h + "mlp.gate.weight"] = torch.zeros(1, acfg.d_model, dtype=gate.dtype)
            out[h + "mlp.experts.gate_up_proj"] = torch.cat([gate, up], dim=0)[None]
            out[h + "mlp.experts.down_proj"] = down[None]
        else:
            out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"], out[h + "mlp.down_proj.weight"] = (
                gate,
                up,
                down,
            )
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def export(run_dir: str | Path, out: str | Path, fmt: str = "hf") -> Path:
    """Write the HF directory for a complete run (see the module docstring). Refuses a non-empty `out`."""
    from safetensors.torch import load_file, save_file

    from hmem_lit import runs

    if fmt != "hf":
        raise ConfigError(f"--format: got {fmt!r}; allowed: hf")
    run, out = runs.Run(run_dir), Path(out)
    run_dir = run.dir
    if not runs.is_complete(run_dir):
        raise ConfigError(f"{run_dir}: not a complete run (no final.json); train it first")
    runs.check_out_dir(out)
    final, cfg = run.final, run.config
    if cfg.anchor.preset == "hf":
        raise ConfigError(
            f"{run_dir}: its anchor is already a Hugging Face model ({cfg.anchor.hf_path}); export "
            "the memory by copying the run, the anchor is the original directory"
        )
    if cfg.memory.type == "lora" and cfg.anchor.qk_norm:
        raise ConfigError(
            "memory.type=lora: the OLMoE export has no per-projection FFN linears to add LoRA "
            "deltas to; export FFN or KV memory runs (or a qk_norm=false anchor)"
        )
    state = load_file(str(runs.check_weights(run.weights)))
    acfg = cfg.anchor
    hcfg = hf_config(acfg, **_special_ids(run))  # generate() stops at the run's end-of-text
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))  # new: never a user's
    try:
        hcfg.save_pretrained(str(tmp))
        import transformers

        transformers.GenerationConfig(**_special_ids(run)).save_pretrained(str(tmp))
        save_file(
            hf_state({k: v for k, v in state.items() if k.startswith("anchor.")}, acfg),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        _tokenizer(run, tmp)
        meta: dict[str, Any] = {"hmem_lit_config": final["config"], "source_run": str(run_dir)}
        meta["params"] = final["params"]
        if cfg.memory.type != "none":
            bank = {k: v.contiguous() for k, v in state.items() if k.startswith("memory.")}
            save_file(bank, str(tmp / MEMORY_WEIGHTS))
            _router(run, tmp / "router")
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        from hmem_lit.hf_card import model_card

        card = model_card(cfg, final, run_dir, type(hcfg).__name__, (tmp / "tokenizer.json").is_file())
        (tmp / "README.md").write_text(card)
        if out.is_dir():
            out.rmdir()  # check_out_dir left only an empty one
        tmp.rename(out)  # complete or absent: the directory appears in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory, never a user's
        raise
    return out


def _special_ids(run: Run) -> dict[str, Any]:
    """The run's own end-of-text and pad ids in the HF config (so `generate` stops at a document's end), not the
    architecture's defaults (Llama's 1/2, OLMoE's NeoX 50279/1). Documents carry no BOS: bos_token_id is None."""
    if run.config.data.source == "toy":
        from hmem_lit.data.toy import ByteTokenizer

        eot, pad = ByteTokenizer.eot_id, ByteTokenizer.pad_id
    else:
        from hmem_lit.data.tokenizer import load_tokenizer

        d = run.data_dir
        if not (d / "tokenizer.json").is_file():
            raise ConfigError(
                f"{d / 'tokenizer.json'} missing: the export ships the run's tokenizer; prepare the run's data "
                "(hmem data prepare <its experiment>) first"
            )
        tok = load_tokenizer(d)
        eot, pad = tok.eot_id, tok.pad_id
    return {"bos_token_id": None, "eos_token_id": int(eot), "pad_token_id": int(pad)}


def _tokenizer(run: Run, out: Path) -> None:
    if run.config.data.source == "toy":
        return  # the toy corpus is bytes (ids 0..255 + specials): no tokenizer file to ship
    d = run.data_dir
    if (d / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        from hmem_lit.data.tokenizer import load_tokenizer

        ours = load_tokenizer(d)  # its end-of-text and pad tokens, by id (a user's tokenizer names them its way)
        PreTrainedTokenizerFast(
            tokenizer_file=str(d / "tokenizer.json"),
            eos_token=ours.tok.id_to_token(ours.eot_id),
            pad_token=ours.tok.id_to_token(ours.pad_id),
            padding_side="left",  # batched generation: a decoder-only model continues from the right edge
            clean_up_tokenization_spaces=False,
        ).save_pretrained(str(out))


def _router(run: Run, out: Path) -> None:
    if run.config.data.source == "toy":
        return  # toy paths are hashed from the document, not read from a tree
    root = run.data_dir
    tree = root / "tree"
    if tree.is_dir():
        shutil.copytree(tree, out / "tree")
        meta = json.loads((tree / "router.json").read_text()) if (tree / "router.json").is_file() else {}
        emb = meta.get("embedder_dir")
        if emb and (root / emb).is_dir():  # the embedder the centroids need (not the corpus' embedding matrix)
            shutil.copytree(root / emb, out / emb, ignore=shutil.ignore_patterns("emb.npy"))


class HFMemoryModel(nn.Module):
    """A transformers model from an export directory with the run's memory attached by hooks (hf_anchor.py)."""

    def __init__(self, hf: nn.Module, memory: nn.Module | None, cfg: Any, directory: Path):
        super().__init__()
        self.hf, self.memory, self.cfg, self.directory = hf, memory, cfg, directory

    @contextlib.contextmanager
    def fetched(self, paths: Tensor):
        """Inside the block, every forward (and generate) of `.hf` reads the memory blocks on `paths` (B, depth)."""
        from hmem_lit.hf_anchor import attach_hooks

        if self.memory is None:
            yield self.hf
            return
        hf: Any = self.hf  # a transformers *ForCausalLM (its decoder layers are read by attribute name)
        mem: Any = self.memory  # a MemoryType
        handles = attach_hooks(hf.model.layers, mem.fetch(paths), self.cfg.anchor.n_head, self.cfg.anchor.head_dim)
        try:
            yield self.hf
        finally:
            for h in handles:
                h.remove()

    def route(self, texts: list[str]) -> Tensor:
        """Paths (B, depth) for texts, with the run's own router (exported in router/)."""
        from hmem_lit.retriever import load_router

        router = load_router(self.directory / "router", self.cfg)
        return torch.as_tensor(router.route(list(texts)), dtype=torch.long)


def load(directory: str | Path) -> HFMemoryModel:
    """An export directory -> HFMemoryModel (the HF model in eval mode; memory weights from safetensors)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    d = Path(directory)
    if not (d / META).is_file():
        raise ConfigError(f"{d}: not an hmem export (no {META}); write one with `hmem export RUN --out {d}`")
    meta = json.loads((d / META).read_text())
    cfg = from_dict(meta["hmem_lit_config"])
    hf = AutoModelForCausalLM.from_pretrained(
        str(d), local_files_only=True, dtype=torch.float32, trust_remote_code=False
    ).eval()
    memory = None
    if cfg.memory.type != "none":
        from hmem_lit.registry import MEMORY

        memory = MEMORY.get(cfg.memory.type)(cfg.memory, cfg.anchor, cfg.retriever.branching)
        memory.load_state_dict({k.removeprefix("memory."): v for k, v in load_file(str(d / MEMORY_WEIGHTS)).items()})
        memory.eval()
    return HFMemoryModel(hf, memory, cfg, d)
