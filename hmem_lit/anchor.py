"""The anchor: an OpenLM-style decoder-only transformer in one readable file.

Pre-norm blocks (RMSNorm or weight-only LayerNorm), RoPE (base 100,000 by default), SwiGLU FFN, optional qk-norm
over the full attention width, tied or separate embeddings, attention through `scaled_dot_product_attention`, and
document-causal masking for packed sequences (tokens attend only within their own document; RoPE positions
restart at each document).

Document-causal attention has two implementations (`anchor.attention`): `sdpa`, the reference, builds a dense
(B, 1, T, T) boolean mask for `scaled_dot_product_attention` (O(T^2) memory, and a masked SDPA cannot use the
flash kernels); `flex` builds a FlexAttention `BlockMask` from the document ids (O(T^2 / 128^2) blocks; fully
masked blocks are skipped) and runs `flex_attention`, compiled on CUDA. `auto` picks flex on CUDA (heads >= 16
wide) and sdpa elsewhere, so CPU numbers stay the reference's. Without doc_ids both use causal SDPA (flash-eligible).

Memory plugs in through explicit hook points, never by subclassing or patching this file (which imports nothing
from memory/). A `MemoryHooks` object, built per batch from the fetched memory blocks, may provide:
  - `linear_delta(layer, name, x)`: a low-rank delta added to the output of linear `name` in q, k, v, o, gate,
    up, down (LoRA memories);
  - `attn_kv(layer)`: extra (keys, values) of shape (B, H, M, head_dim) attended by a separate, position-free,
    unmasked attention whose output is added to the attention output (KV memories);
  - `ffn_extra(layer, x)`: an output added to the FFN output, e.g. extra SwiGLU hidden units (FFN memories, PKM);
  - `skip_ffn(layer)`: True where a memory layer replaces the FFN (PKM replace mode).
With `hooks=None` none of this runs: the bare anchor pays one `is None` test per hook site.

Greedy decoding can keep a `KVCache`: the first call with an empty cache is the ordinary forward (same code, same
numbers) and records each layer's rotated keys and values; later calls feed one new token per row, which attends to
the cached keys of its own document at the next position (evaluation/adapter.py: greedy).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from hmem_lit.config import AnchorConfig

FLEX_MIN_HEAD_DIM = 16  # torch inductor's flex_attention lowering refuses smaller head dims on CUDA
_COMPILED: dict[str, Any] = {}  # compiled flex_attention / create_block_mask, built on first CUDA use


def _flex_fns(device: torch.device) -> tuple[Any, Any]:
    """(flex_attention, create_block_mask): compiled on CUDA (eager flex is an unfused O(T^2) reference), eager else."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        # inside a torch.compile trace (train.compile) dynamo compiles flex itself; filling _COMPILED there
        # would also add a guard on it and recompile the whole anchor on the next step
        return flex_attention, create_block_mask
    if not _COMPILED:
        _COMPILED["attn"] = torch.compile(flex_attention, dynamic=False)
        _COMPILED["mask"] = torch.compile(create_block_mask)
    return _COMPILED["attn"], _COMPILED["mask"]


class MemoryHooks:
    """No-op base for the per-batch hook object. Memory types override what they use and set the flags."""

    has_delta: bool = False  # linear_delta is used
    has_kv: bool = False  # attn_kv is used
    has_ffn: bool = False  # ffn_extra / skip_ffn are used

    def linear_delta(self, layer: int, name: str, x: Tensor) -> Tensor | None:
        return None

    def attn_kv(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return None

    def ffn_extra(self, layer: int, x: Tensor) -> Tensor | None:
        return None

    def skip_ffn(self, layer: int) -> bool:
        return False


class KVCache:
    """Per layer (keys after RoPE, values), each (B, H, S, hd), with each key's document id (None: one document per
    row, no padding) and each row's next position and document. `select(rows)` keeps rows (finished ones leave)."""

    def __init__(self) -> None:
        self.kv: list[tuple[Tensor, Tensor]] = []
        self.doc: Tensor | None = None  # (B, S) document ids of the keys
        self.next_pos = self.last_doc = torch.zeros(0, dtype=torch.long)  # (B,)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def select(self, rows: Tensor) -> None:
        self.kv = [(k[rows], v[rows]) for k, v in self.kv]
        self.doc = None if self.doc is None else self.doc[rows]
        self.next_pos, self.last_doc = self.next_pos[rows], self.last_doc[rows]

    def step_inputs(self, T: int) -> tuple[Tensor, Tensor | None]:
        """For T new tokens per row, all in the row's last document: (RoPE positions (B, T), the mask
        (B, 1, T, S + T) over cached and new keys; None when every key is the row's)."""
        B = self.next_pos.shape[0]
        pos = self.next_pos[:, None] + torch.arange(T, device=self.next_pos.device)
        if self.doc is None:
            return pos, None if T == 1 else _causal_tail(B, self.length, T, pos.device)
        keys = torch.cat([self.doc, self.last_doc[:, None].expand(B, T)], dim=1)
        mask = keys[:, None, :] == self.last_doc[:, None, None]  # (B, 1, S + T): the row's document
        return pos, mask[:, None] & _causal_tail(B, self.length, T, pos.device)

    def advance(self, B: int, T: int, doc_ids: Tensor | None, device: torch.device) -> None:
        """Book T tokens fed per row (after the layers appended their keys and values). The prompt pass sets each
        row's next position and document from its doc_ids (None: one document from position 0)."""
        if self.length:
            if self.doc is not None:
                self.doc = torch.cat([self.doc, self.last_doc[:, None].expand(B, T)], dim=1)
            self.next_pos = self.next_pos + T
        elif doc_ids is None:
            self.next_pos = torch.full((B,), T, dtype=torch.long, device=device)
            self.last_doc = torch.zeros(B, dtype=torch.long, device=device)
        else:
            self.doc, self.next_pos, self.last_doc = doc_ids, doc_positions(doc_ids)[:, -1] + 1, doc_ids[:, -1]
        self.length += T


def _causal_tail(B: int, S: int, T: int, device: torch.device) -> Tensor:
    """(B, 1, T, S + T): new token t sees every cached key and the new ones up to itself."""
    return torch.ones(T, S + T, dtype=torch.bool, device=device).tril(S).expand(B, 1, T, S + T)


class Norm(nn.Module):
    """Weight-only RMSNorm or LayerNorm (no bias), as in OpenLM."""

    def __init__(self, dim: int, kind: str, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.kind, self.eps = kind, eps

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)


def rope_tables(head_dim: int, max_len: int, base: float) -> tuple[Tensor, Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)  # (max_len, head_dim/2)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, H, T, hd); cos/sin: (T, hd/2) or (B, 1, T, hd/2). Rotate pairs (first half, second half).
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


def _plus(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


class Attention(nn.Module):
    def __init__(self, cfg: AnchorConfig, layer: int):
        super().__init__()
        width = cfg.n_head * cfg.head_dim
        self.layer, self.n_head, self.head_dim = layer, cfg.n_head, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, width, bias=False)
        self.wk = nn.Linear(cfg.d_model, width, bias=False)
        self.wv = nn.Linear(cfg.d_model, width, bias=False)
        self.wo = nn.Linear(width, cfg.d_model, bias=False)
        self.q_norm = Norm(width, cfg.norm, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = Norm(width, cfg.norm, cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | BlockMask | None,
        hooks: MemoryHooks | None,
        cache: KVCache | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        i = self.layer
        q, k, v = self.wq(x), self.wk(x), self.wv(x)  # (B, T, width)
        if hooks is not None and hooks.has_delta:
            q = _plus(q, hooks.linear_delta(i, "q", x))
            k = _plus(k, hooks.linear_delta(i, "k", x))
            v = _plus(v, hooks.linear_delta(i, "v", x))
        if self.q_norm is not None:
            assert self.k_norm is not None  # built together with q_norm (anchor.qk_norm)
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and len(cache):  # a decoding step: the new keys join the cached ones
            pk, pv = cache.kv[i]
            kr, v = torch.cat([pk, kr], dim=2), torch.cat([pv, v], dim=2)
            cache.kv[i] = (kr, v)
            assert not isinstance(mask, BlockMask)  # a step's mask is KVCache.step_inputs' boolean one
            y = F.scaled_dot_product_attention(qr, kr, v, attn_mask=mask)
        elif isinstance(mask, BlockMask):
            y = _flex_fns(x.device)[0](qr, kr, v, block_mask=mask)  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(qr, kr, v, attn_mask=mask, is_causal=mask is None)  # (B, H, T, hd)
        if cache is not None and len(cache) == 0:  # the first (prompt) pass records its keys and values
            cache.kv.append((kr, v))
        if hooks is not None and hooks.has_kv:
            kv = hooks.attn_kv(i)
            if kv is not None:  # memory keys/values: no causal mask, no positions
                y = y + F.scaled_dot_product_attention(q, kv[0].to(q.dtype), kv[1].to(q.dtype))
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        out = self.wo(y)
        if hooks is not None and hooks.has_delta:
            out = _plus(out, hooks.linear_delta(i, "o", y))
        return out


class SwiGLU(nn.Module):
    def __init__(self, cfg: AnchorConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.w_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor, hooks: MemoryHooks | None) -> Tensor:
        if hooks is None:
            return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
        i = self.layer
        if hooks.has_ffn and hooks.skip_ffn(i):
            out = torch.zeros_like(x)
        else:
            g, u = self.w_gate(x), self.w_up(x)
            if hooks.has_delta:
                g = _plus(g, hooks.linear_delta(i, "gate", x))
                u = _plus(u, hooks.linear_delta(i, "up", x))
            h = F.silu(g) * u
            out = self.w_down(h)
            if hooks.has_delta:
                out = _plus(out, hooks.linear_delta(i, "down", h))
        if hooks.has_ffn:
            out = _plus(out, hooks.ffn_extra(i, x))
        return out


class Block(nn.Module):
    def __init__(self, cfg: AnchorConfig, layer: int):
        super().__init__()
        self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.ffn = SwiGLU(cfg, layer)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | BlockMask | None,
        hooks: MemoryHooks | None,
        cache: KVCache | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, hooks, cache)
        return x + self.ffn(self.ffn_norm(x), hooks)


def doc_positions(doc_ids: Tensor) -> Tensor:
    """Per-document RoPE positions (B, T): 0 at each document's first token."""
    T = doc_ids.shape[1]
    ar = torch.arange(T, device=doc_ids.device)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(start, ar, torch.zeros_like(ar)).cummax(dim=1).values  # index where each token's doc starts
    return ar - first


def doc_block_mask(doc_ids: Tensor) -> BlockMask:
    """The document-causal mask as a FlexAttention BlockMask (shared by all heads and layers of one batch)."""
    B, T = doc_ids.shape

    def doc_causal(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (doc_ids[b, q] == doc_ids[b, kv]) & (q >= kv)

    return _flex_fns(doc_ids.device)[1](doc_causal, B, None, T, T, device=doc_ids.device)


def doc_positions_and_mask(doc_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-document RoPE positions (B, T) and the document-causal boolean mask (B, 1, T, T) (the sdpa reference)."""
    T = doc_ids.shape[1]
    pos = doc_positions(doc_ids)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal  # (B, T, T)
    return pos, mask[:, None]


class Anchor(nn.Module):
    rope_cos: Tensor  # buffers (register_buffer in __init__)
    rope_sin: Tensor

    def __init__(self, cfg: AnchorConfig):
        super().__init__()
        assert cfg.vocab_size is not None, "anchor.vocab_size must be resolved (from the tokenizer) before building"
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm weights stay at 1
            s = std / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("wo.weight", "w_down.weight")) else std
            nn.init.normal_(p, 0.0, s)

    def attention(self, device: torch.device) -> str:
        """The document-causal attention used on `device`: anchor.attention, with auto = flex on CUDA (head_dim
        >= FLEX_MIN_HEAD_DIM, what its CUDA kernel supports), else sdpa."""
        choice, cuda = self.cfg.attention, device.type == "cuda"
        if choice == "auto":
            return "flex" if cuda and self.cfg.head_dim >= FLEX_MIN_HEAD_DIM else "sdpa"
        if choice == "flex" and cuda and self.cfg.head_dim < FLEX_MIN_HEAD_DIM:
            raise ValueError(
                f"anchor.attention=flex: FlexAttention's CUDA kernel needs anchor.head_dim >= {FLEX_MIN_HEAD_DIM} "
                f"(got {self.cfg.head_dim}); set anchor.attention=auto or sdpa, or a larger head_dim"
            )
        return choice

    def forward(
        self,
        idx: Tensor,
        doc_ids: Tensor | None = None,
        hooks: MemoryHooks | None = None,
        logits_to_keep: int = 0,
        cache: KVCache | None = None,
    ) -> Tensor:
        """idx: (B, T) token ids -> logits (B, T, vocab). doc_ids (B, T) enables document-causal attention.
        logits_to_keep > 0: logits of the last that many positions only (B, k, vocab), as transformers' argument of
        that name: evaluation scores a few continuation tokens, and the output head is most of a tiny model.
        cache: empty, this forward is the ordinary one and fills it; filled, idx are the rows' next tokens (doc_ids
        is then ignored: they continue each row's last document; steps attend through sdpa)."""
        B, T = idx.shape
        n = T + (len(cache) if cache is not None else 0)
        if n > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {n} tokens exceeds anchor.max_seq_len={self.cfg.max_seq_len}")
        mask: Tensor | BlockMask | None = None
        if cache is not None and len(cache):
            pos, mask = cache.step_inputs(T)
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        elif doc_ids is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            if self.attention(idx.device) == "flex":
                pos, mask = doc_positions(doc_ids), doc_block_mask(doc_ids)
            else:
                pos, mask = doc_positions_and_mask(doc_ids)
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, hd/2)
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin, mask, hooks, cache)
        if cache is not None:
            cache.advance(B, T, doc_ids, idx.device)
        x = self.norm(x[:, -logits_to_keep:] if logits_to_keep > 0 else x)
        return F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy; targets of -100 are ignored (document boundaries, padding)."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
