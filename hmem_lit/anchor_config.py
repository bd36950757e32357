"""The anchor's configuration: `AnchorConfig`, the named presets (the papers' exact sizes) and the checks of an
`anchor.preset=hf` anchor (sizes read from a local config.json). Re-exported by hmem_lit.config."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hmem_lit.errors import ConfigError
from hmem_lit.errors import check as _check
from hmem_lit.errors import one_of as _one_of
from hmem_lit.fields import RUN_ID, check_ranges, declared, ranged

# --------------------------------------------------------------------------------------------------------------
# anchor


@dataclass
class AnchorConfig:
    EFFECTS = RUN_ID  # what a field affects unless it says (fields.py)

    preset: str = "tiny"  # named preset (see PRESETS); its values apply before explicit keys
    vocab_size: int | None = ranged(None, 2, 2**21)  # None = taken from the data's tokenizer at train time
    n_layer: int = ranged(2, 1, 1024)  # transformer blocks
    d_model: int = ranged(64, 1, 65536)  # residual width
    n_head: int = ranged(4, 1, 4096)  # attention heads
    head_dim: int = ranged(
        16, 2, 4096
    )  # attention width = n_head * head_dim (may differ from d_model, as in openlm-160m)
    d_ff: int = ranged(192, 1, 2**20)  # SwiGLU inner width
    norm: str = "rmsnorm"  # rmsnorm | layernorm (both weight-only)
    norm_eps: float = ranged(1e-5, 0, 1, lo_open=True)  # epsilon of the norms
    qk_norm: bool = True  # weight-only norm over the full attention width of q and k
    tie_embeddings: bool = True  # the output head shares the token embedding
    rope_base: float = ranged(100_000.0, 1, 1e12, lo_open=True)  # RoPE base (OpenLM: 100,000)
    max_seq_len: int = ranged(2048, 1, 2**22)  # longest sequence the RoPE tables cover
    init_std: float = ranged(0.02, 0, 10, lo_open=True)  # std of the normal weight init
    # document-causal attention (anchor.py): sdpa (dense (B,1,T,T) mask, the reference) | flex (FlexAttention block
    # mask; no backward on CPU) | auto (flex on CUDA if head_dim >= 16, sdpa elsewhere). Built-in anchor only;
    # preset=hf: auto. An implementation of the same attention (equal within float tolerance)
    attention: str = declared("auto", effects=())
    # preset=hf: a Hugging Face causal LM as the anchor (hmem_lit.hf_anchor). Either hf_path, a local directory
    # (config.json + safetensors; read with local_files_only, never from the hub) whose sizes replace the keys
    # above, or hf_family, a random-weight model of that family built from the keys above (tests, tiny runs)
    hf_path: str | None = None
    hf_family: str | None = None  # llama | qwen2 | gemma3 (Gemma3ForCausalLM, text only)
    hf_attn: str = "sdpa"  # transformers attn_implementation: sdpa | eager
    n_kv_head: int | None = ranged(
        None, 1, 4096
    )  # key/value heads (grouped-query attention); None = n_head. Only preset=hf
    ffn_act: str = "silu"  # the gated FFN's activation (silu | gelu_tanh); set from the model for preset=hf

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AnchorConfig:
        """The preset's sizes with `overrides` on top (what load_config does for anchor.preset in a YAML)."""
        _one_of(name, [*PRESETS, HF_PRESET], "anchor.preset")
        return cls(**{**PRESETS.get(name, {}), "preset": name, **overrides})

    def __post_init__(self) -> None:
        _one_of(self.preset, [*PRESETS, HF_PRESET], "anchor.preset")
        preset = PRESETS.get(self.preset, {}) if self.preset != "tiny" else {}  # tiny: the defaults' own preset
        defaults = {f.name: f.default for f in fields(self)}
        if (
            preset
            and all(getattr(self, k) == defaults[k] != v for k, v in preset.items() if v != defaults[k])
            and any(v != defaults[k] for k, v in preset.items())
        ):  # AnchorConfig(preset="small") built in Python: presets expand in load_config / from_preset only
            raise ConfigError(
                f"anchor.preset={self.preset}: AnchorConfig(preset=...) does not expand a preset (every size is still "
                f"the default); use AnchorConfig.from_preset({self.preset!r}, ...) or load_config"
            )
        if self.preset == HF_PRESET:
            _resolve_hf(self)
        else:
            for k in ("hf_path", "hf_family"):
                _check(getattr(self, k) is None, f"anchor.{k}", f"needs anchor.preset={HF_PRESET}")
            _check(
                self.n_kv_head in (None, self.n_head),
                "anchor.n_kv_head",
                f"the built-in anchor has no grouped-query attention (only anchor.preset={HF_PRESET})",
            )
            _check(
                self.ffn_act == "silu",
                "anchor.ffn_act",
                f"the built-in anchor's FFN is SwiGLU (silu), got {self.ffn_act!r}",
            )
        _one_of(self.attention, ("auto", "sdpa", "flex"), "anchor.attention")
        _check(
            self.attention == "auto" or self.preset != HF_PRESET,
            "anchor.attention",
            f"applies to the built-in anchor only; preset={HF_PRESET} uses anchor.hf_attn",
        )
        check_ranges(self, "anchor.")  # the ranges declared beside the fields (after an hf model's sizes)
        _check(self.head_dim % 2 == 0, "anchor.head_dim", f"must be even for RoPE, got {self.head_dim}")
        _one_of(self.norm, ("rmsnorm", "layernorm"), "anchor.norm")
        _check(self.rope_base > 1, "anchor.rope_base", "must be > 1")  # (1 itself would make RoPE constant)


# Named anchors. The paper's three (../shared/PAPERS.md A2) count exactly 163,510,016 / 411,665,408 / 1,439,893,504.
_OPENLM = dict(vocab_size=50_432, norm="layernorm", qk_norm=True, rope_base=100_000.0, max_seq_len=2048)
PRESETS: dict[str, dict[str, Any]] = {
    # CPU presets (vocab from the tokenizer)
    "tiny": dict(n_layer=2, d_model=64, n_head=4, head_dim=16, d_ff=192, max_seq_len=512),
    "small": dict(n_layer=4, d_model=128, n_head=4, head_dim=32, d_ff=384, max_seq_len=512),
    "medium": dict(n_layer=6, d_model=192, n_head=6, head_dim=32, d_ff=512, max_seq_len=512),
    "base": dict(n_layer=8, d_model=256, n_head=8, head_dim=32, d_ff=704, max_seq_len=1024),
    # the paper's anchors
    "openlm-160m": dict(_OPENLM, n_layer=35, d_model=512, n_head=12, head_dim=32, d_ff=2048, tie_embeddings=True),
    "openlm-410m": dict(_OPENLM, n_layer=24, d_model=1024, n_head=16, head_dim=64, d_ff=2816, tie_embeddings=False),
    "openlm-1.4b": dict(_OPENLM, n_layer=24, d_model=2048, n_head=16, head_dim=128, d_ff=5632, tie_embeddings=False),
}
# Table 8's fixed-budget anchors: d=1024, 16 heads, 12..24 layers.
for _L in (12, 17, 19, 21, 22, 24):
    PRESETS[f"openlm-d1024-l{_L}"] = dict(PRESETS["openlm-410m"], n_layer=_L)

# anchor.preset=hf is not a size preset: the sizes come from the model (hf_path) or the explicit keys (hf_family)
HF_PRESET = "hf"
HF_FAMILIES = ("llama", "qwen2", "gemma3")
# config.json keys -> AnchorConfig fields (the same names in Llama, Qwen2 and Gemma3 text configs)
HF_ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}  # transformers hidden_act -> anchor.ffn_act
_HF_KEYS = {
    "num_hidden_layers": "n_layer",
    "hidden_size": "d_model",
    "num_attention_heads": "n_head",
    "num_key_value_heads": "n_kv_head",
    "head_dim": "head_dim",
    "intermediate_size": "d_ff",
    "max_position_embeddings": "max_seq_len",
    "tie_word_embeddings": "tie_embeddings",
}


def _resolve_hf(a: AnchorConfig) -> None:
    """Check an hf anchor's keys; with hf_path, take the sizes from its config.json (no transformers import)."""
    _check(
        (a.hf_path is None) != (a.hf_family is None),
        "anchor.hf_path",
        f"anchor.preset={HF_PRESET} needs exactly one of anchor.hf_path (a local model directory) or anchor.hf_family",
    )
    _one_of(a.hf_attn, ("sdpa", "eager"), "anchor.hf_attn")
    if a.hf_family is not None:
        _one_of(a.hf_family, HF_FAMILIES, "anchor.hf_family")
    else:
        import json

        assert a.hf_path is not None  # exactly one of hf_path / hf_family (checked above)
        cfile = Path(a.hf_path).expanduser() / "config.json"
        _check(cfile.is_file(), "anchor.hf_path", f"{cfile} not found (a local directory saved with save_pretrained)")
        try:
            hf = json.loads(cfile.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"anchor.hf_path: {cfile} is not readable JSON ({type(e).__name__})") from None
        _check(
            "text_config" not in hf,
            "anchor.hf_path",
            f"{cfile} is a multimodal model ({hf.get('model_type')}); use a text-only causal LM checkpoint",
        )
        missing = [
            k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size") if k not in hf
        ]
        _check(
            not missing, "anchor.hf_path", f"{cfile} lacks {', '.join(missing)}: not a decoder-only causal LM config"
        )
        hf.setdefault("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
        for key, name in _HF_KEYS.items():
            if hf.get(key) is not None:
                setattr(a, name, hf[key])
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
        _check(
            act in HF_ACTS, "anchor.hf_path", f"{cfile}: FFN activation {act!r} not supported ({', '.join(HF_ACTS)})"
        )
        a.ffn_act = HF_ACTS[act]
    _one_of(a.ffn_act, tuple(HF_ACTS.values()), "anchor.ffn_act")
    kv = a.n_kv_head or a.n_head
    _check(kv > 0 and a.n_head % kv == 0, "anchor.n_kv_head", f"must divide anchor.n_head={a.n_head}, got {kv}")
    if a.hf_family == "qwen2":
        _check(
            a.n_head * a.head_dim == a.d_model,
            "anchor.head_dim",
            f"qwen2 needs n_head * head_dim == d_model ({a.n_head} * {a.head_dim} != {a.d_model})",
        )


def anchor_params(acfg: AnchorConfig) -> int:
    """The built-in anchor's parameter count by arithmetic (no torch: `hmem list` stays fast); equal to
    `count_params(Anchor(acfg))` for every preset (tests/test_cli_fast.py)."""
    d, width, v = acfg.d_model, acfg.n_head * acfg.head_dim, int(acfg.vocab_size or 0)
    block = 2 * d + 4 * d * width + 3 * d * acfg.d_ff + (2 * width if acfg.qk_norm else 0)
    return v * d + acfg.n_layer * block + d + (0 if acfg.tie_embeddings else v * d)
