"""A Hugging Face causal LM as the anchor: post-hoc memory on open-weight models (../shared/PAPERS.md A6).

`HFAnchor` wraps a transformers `*ForCausalLM` (Llama, Qwen2, Gemma3 text; any model with the same layout:
`model.layers[i].self_attn.{q,k,v,o}_proj`, `.mlp.{gate,up,down}_proj`) behind the `Anchor` interface:
`forward(idx, doc_ids=None, hooks=None) -> logits` and a resolved `AnchorConfig` in `.cfg` (n_layer, d_model,
n_head, n_kv_head, head_dim, d_ff, vocab_size: what the memory types read). `anchor.preset=hf` selects it:
`anchor.hf_path` loads a local directory (config.json + safetensors, `local_files_only=True`: never the hub);
`anchor.hf_family` builds a random-weight model of that family from the anchor's size keys.

The hook points of `MemoryHooks` are implemented with PyTorch forward (pre-)hooks on the HF submodules, attached
only for the duration of a forward with a hooks object; with `hooks=None` the HF model runs untouched:
  - `linear_delta(layer, name, x)`: forward hook on q/k/v/o/gate/up/down_proj, output += delta(input);
  - `ffn_extra(layer, x)` / `skip_ffn(layer)`: forward hook on the layer's `mlp`, output (+)= extra(mlp input);
    in Gemma3 this is the FFN output before `post_feedforward_layernorm`, as the layer's own FFN;
  - `attn_kv(layer)`: the queries are captured after q_proj (and q_norm where the model has one, as the
    built-in anchor's qk-norm), before RoPE; a forward pre-hook on o_proj adds the memory attention output
    (no mask, no positions, 1/sqrt(head_dim) scale) to o_proj's input, exactly where the built-in anchor adds it.
Zero-initialised memory adds exact zeros, so logits equal the bare HF model's bit for bit.

Document-causal masking for packed rows: `doc_ids` become position_ids restarting at 0 in every document, and
the model is called with `attention_mask=None, use_cache=False`. transformers (masking_utils,
`find_packed_sequence_indices`) then treats each position restart as a new sequence and builds a document-causal
mask itself for sdpa and eager, including Gemma3's sliding-window layers (a hand-made 4-D mask would be used
as-is by every layer and lose the sliding window). RoPE positions restart per document, as in the built-in anchor.

Tied input/output embeddings are one tensor under two names; `state_dict` keeps only the first name (safetensors
refuses shared tensors) and `load_state_dict` fills the alias back in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmem_lit.anchor import MemoryHooks
from hmem_lit.config import HF_ACTS, AnchorConfig, ConfigError

LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def size_kwargs(acfg: AnchorConfig) -> dict[str, Any]:
    """The anchor's sizes as transformers config keyword arguments (shared by family_config and hf_export)."""
    return dict(
        vocab_size=acfg.vocab_size,
        hidden_size=acfg.d_model,
        intermediate_size=acfg.d_ff,
        num_hidden_layers=acfg.n_layer,
        num_attention_heads=acfg.n_head,
        num_key_value_heads=acfg.n_kv_head or acfg.n_head,
        head_dim=acfg.head_dim,
        max_position_embeddings=acfg.max_seq_len,
        rms_norm_eps=acfg.norm_eps,
        initializer_range=acfg.init_std,
        tie_word_embeddings=acfg.tie_embeddings,
    )


def family_config(acfg: AnchorConfig, **overrides: Any):
    """The transformers config of a random-weight `acfg.hf_family` model sized by the anchor keys."""
    import transformers

    common = size_kwargs(acfg)
    rope = {"rope_type": "default", "rope_theta": acfg.rope_base}
    fam = acfg.hf_family
    cfg: transformers.PreTrainedConfig
    if fam == "llama":
        cfg = transformers.LlamaConfig(**common, rope_parameters=rope)
    elif fam == "qwen2":
        cfg = transformers.Qwen2Config(**common, rope_parameters=rope)
    elif fam == "gemma3":
        # as Gemma-3-270M: 512-token sliding windows with every 6th layer global, and Gemma's own two RoPE bases
        # (10k local, 1M global; anchor.rope_base is not used); query scale 1/sqrt(head_dim)
        cfg = transformers.Gemma3TextConfig(**common, query_pre_attn_scalar=acfg.head_dim, sliding_window=512)
    else:
        raise ConfigError(f"anchor.hf_family: got {fam!r}; allowed: llama, qwen2, gemma3")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def load_hf_model(acfg: AnchorConfig, hf_config: Any = None) -> nn.Module:
    """The wrapped model: from `acfg.hf_path` (local files only) or a random `acfg.hf_family` model (or
    `hf_config`). On the meta device (parameter accounting) only the architecture is built."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(attn_implementation=acfg.hf_attn)
    if hf_config is None and acfg.hf_path is not None:
        if torch.get_default_device().type == "meta":
            hf_config = AutoConfig.from_pretrained(acfg.hf_path, local_files_only=True)
        else:
            try:
                return AutoModelForCausalLM.from_pretrained(
                    acfg.hf_path, local_files_only=True, dtype=torch.float32, trust_remote_code=False, **kw
                )
            except (OSError, ValueError, KeyError) as e:
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise ConfigError(f"anchor.hf_path: cannot load {acfg.hf_path} ({first})") from None
    if hf_config is None:
        hf_config = family_config(acfg)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, **kw)


def doc_positions(doc_ids: Tensor) -> Tensor:
    """(B, T) document ids -> (B, T) positions restarting at 0 in every document."""
    ar = torch.arange(doc_ids.shape[1], device=doc_ids.device)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return ar - torch.where(start, ar, torch.zeros_like(ar)).cummax(dim=1).values


class HFAnchor(nn.Module):
    def __init__(self, acfg: AnchorConfig, hf_config: Any = None):
        super().__init__()
        # a transformers *ForCausalLM: its config and submodules are read by attribute name (typed Any)
        hf: Any = load_hf_model(acfg, hf_config)
        self.hf: Any = hf
        c = hf.config
        for name, path in LINEARS.items():
            if not isinstance(self.layers[0].get_submodule(path), nn.Linear):
                raise ConfigError(
                    f"anchor.hf_path: {type(self.hf).__name__} has no nn.Linear {path} in its layers "
                    f"(for {name}); supported: the Llama / Qwen2 / Gemma3 decoder layout"
                )
        vocab = int(hf.get_input_embeddings().weight.shape[0])
        if acfg.vocab_size is not None and acfg.vocab_size > vocab:
            raise ConfigError(
                f"anchor.hf_path: the model's vocabulary ({vocab}) is smaller than the tokenizer's "
                f"({acfg.vocab_size}); use the model's own tokenizer (data.tokenizer=<dir>/tokenizer.json)"
            )
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        act = getattr(c, "hidden_activation", None) or getattr(c, "hidden_act", "silu")
        if act not in HF_ACTS:
            raise ConfigError(f"anchor.hf_path: FFN activation {act!r} not supported ({', '.join(HF_ACTS)})")
        # the sizes the memory types read, from the model itself
        self.cfg = dataclasses.replace(
            acfg,
            vocab_size=vocab,
            n_layer=c.num_hidden_layers,
            d_model=c.hidden_size,
            n_head=c.num_attention_heads,
            n_kv_head=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            head_dim=head_dim,
            d_ff=c.intermediate_size,
            ffn_act=HF_ACTS[act],
        )
        # tied tensors: alias name -> first name (state_dict keeps the first)
        first: dict[int, str] = {}
        self._aliases: dict[str, str] = {}
        for name, p in self.hf.named_parameters(remove_duplicate=False):
            if id(p) in first:
                self._aliases[f"hf.{name}"] = first[id(p)]
            else:
                first[id(p)] = f"hf.{name}"
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_fill_aliases)

    @property
    def layers(self) -> nn.ModuleList:  # the decoder layers (a property: not registered twice in state_dict)
        return self.hf.model.layers

    def forward(
        self, idx: Tensor, doc_ids: Tensor | None = None, hooks: MemoryHooks | None = None, logits_to_keep: int = 0
    ) -> Tensor:
        """idx: (B, T) token ids -> logits (B, T, vocab). doc_ids (B, T) enables document-causal attention;
        logits_to_keep > 0: the last that many positions only (transformers' argument)."""
        pos = None if doc_ids is None else doc_positions(doc_ids)
        handles = [] if hooks is None else self._attach(hooks)
        try:
            out = self.hf(
                input_ids=idx,
                position_ids=pos,
                attention_mask=None,
                use_cache=False,
                return_dict=True,
                logits_to_keep=max(0, int(logits_to_keep)),
            )
        finally:
            for h in handles:
                h.remove()
        return out.logits

    def _attach(self, hooks: MemoryHooks) -> list[Any]:
        return attach_hooks(self.layers, hooks, self.cfg.n_head, self.cfg.head_dim)


def attach_hooks(layers: Any, hooks: MemoryHooks, n_head: int, head_dim: int) -> list[Any]:
    """Register the memory's hook points on a transformers model's decoder layers (rules in the module
    docstring); -> the handles (remove them to detach). Also used by the export loader (hf_export.py)."""
    handles = []
    layer: Any  # an HF decoder layer (self_attn, mlp)
    for i, layer in enumerate(layers):
        if hooks.has_delta:
            for name, path in LINEARS.items():
                handles.append(layer.get_submodule(path).register_forward_hook(_delta_hook(hooks, i, name)))
        if hooks.has_kv and hooks.attn_kv(i) is not None:
            attn = layer.self_attn
            q_norm = getattr(attn, "q_norm", None)  # Gemma3 / Qwen3: per-head qk-norm before RoPE; OLMoE: full
            q_site = attn.q_proj if q_norm is None else q_norm  # hooked after the LoRA hooks: sees q + delta
            box: dict[str, Tensor] = {}
            handles.append(q_site.register_forward_hook(_capture_q(box, n_head, head_dim)))
            handles.append(attn.o_proj.register_forward_pre_hook(_kv_hook(hooks, i, box)))
        if hooks.has_ffn:
            handles.append(layer.mlp.register_forward_hook(_ffn_hook(hooks, i)))
    return handles


def _delta_hook(hooks: MemoryHooks, layer: int, name: str):
    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        d = hooks.linear_delta(layer, name, args[0])
        return None if d is None else out + d

    return hook


def _capture_q(box: dict[str, Tensor], n_head: int, head_dim: int):
    def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
        if out.dim() == 3:  # q_proj or a full-width q_norm (OLMoE): (B, T, H*hd) -> (B, H, T, hd)
            B, T, _ = out.shape
            out = out.view(B, T, n_head, head_dim).transpose(1, 2)
        box["q"] = out  # a per-head q_norm (Gemma3) is already (B, H, T, hd)

    return hook


def _kv_hook(hooks: MemoryHooks, layer: int, box: dict[str, Tensor]):
    def hook(module: nn.Module, args: tuple) -> tuple | None:
        kv = hooks.attn_kv(layer)
        if kv is None:
            return None
        q, y = box.pop("q"), args[0]  # (B, H, T, hd), (B, T, H*hd)
        m = F.scaled_dot_product_attention(q, kv[0].to(q.dtype), kv[1].to(q.dtype))  # no mask, no positions
        return (y + m.transpose(1, 2).reshape(y.shape), *args[1:])

    return hook


def _ffn_hook(hooks: MemoryHooks, layer: int):
    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        if hooks.skip_ffn(layer):  # a memory layer replacing the FFN (pkm replace mode)
            out = torch.zeros_like(out)
        extra = hooks.ffn_extra(layer, args[0])
        return out if extra is None else out + extra

    return hook


def _drop_aliases(module: HFAnchor, state: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    for alias in module._aliases:
        state.pop(prefix + alias, None)


def _fill_aliases(module: HFAnchor, state: dict[str, Tensor], prefix: str, *args: Any) -> None:
    for alias, first in module._aliases.items():
        if prefix + alias not in state and prefix + first in state:
            state[prefix + alias] = state[prefix + first]
