"""Product-key memory layers (Lample et al. 2019; Memory+ of "Memory Layers at Scale", ../shared/PAPERS.md B1).

A token-level memory: it ignores tree paths. At each memory layer (memory.pkm.layers: "auto" = 3 equally spaced
layers, 4/12/20 of 24 as in the paper, or explicit indices) the normalised hidden state x gives one query per head
(own projection per layer); each query is split in two halves scored against two sets of n_keys half-keys (own
keys per layer). The top-k of each half combine into candidates (score s1 + s2, index i1 * n_keys + i2) whose
top-k is the exact top-k over all N = n_keys**2 product keys (of the k*k pairs only the ~k ln k that can win are
formed). Softmax (fp32) over those k scores weights the
selected rows of ONE value table shared by all memory layers, summed over heads (a weighted EmbeddingBag with a
sparse gradient, so the row-wise optimiser updates only the rows read). Memory+ gating: out = W2(y * silu(W1 x)).
Optional qk-norm: RMS-normalised query halves and half-keys (no learned scale).

mode=replace: the layer's FFN is skipped (`skip_ffn`) and this is its output; mode=add: added to the FFN output.
Init as in the paper (keys U(+-1/sqrt(k_dim)), values N(0, v_dim^-1/2), queries Xavier-uniform, W1/W2
N(0, d^-1/2), no biases), except in add mode, where the output starts at zero so the model equals the anchor at
step 0: W2 = 0 when gated (a dense d x d matrix that learns from step one, while values and keys keep their
random, symmetry-breaking init), values = 0 when not gated (there is no W2).
Accounting: bank = every PKM parameter; fetched = the dense PKM parameters + the value rows one token reads
(layers * heads * topk * v_dim).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmem_lit.anchor import MemoryHooks
from hmem_lit.config import AnchorConfig, MemoryConfig, PKMConfig
from hmem_lit.memory import MEMORY
from hmem_lit.memory.base import MemoryType


def pkm_layers(spec: Any, n_layer: int) -> list[int]:
    """ "auto" -> 3 equally spaced layers (floor((2i+1) * n_layer / 6)); else the explicit indices."""
    layers = sorted({(2 * i + 1) * n_layer // 6 for i in range(3)} if spec == "auto" else {int(i) for i in spec})
    if not layers or layers[0] < 0 or layers[-1] >= n_layer:
        raise ValueError(f"memory.pkm.layers={spec}: need indices in [0, {n_layer})")
    return layers


def product_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """scores (..., 2, n_keys) of the two query halves -> top-k (scores, product-key indices), each (..., k).

    The halves' top-k come sorted, so candidate (i, j) (0-based ranks) is beaten by the (i+1)(j+1) - 1 pairs
    (i' <= i, j' <= j) and can only be in the top-k if (i+1)(j+1) <= k: about k ln k candidates instead of k*k.
    """
    n_keys = scores.shape[-1]
    s1, i1 = scores[..., 0, :].topk(k, dim=-1)  # (..., k), sorted
    s2, i2 = scores[..., 1, :].topk(k, dim=-1)
    r = torch.arange(1, k + 1, device=scores.device)
    a, b = ((r[:, None] * r[None, :]) <= k).nonzero().unbind(1)  # the candidate rank pairs (C,)
    cand = s1[..., a] + s2[..., b]  # (..., C)
    best, pos = cand.topk(k, dim=-1)  # (..., k)
    return best, (i1[..., a] * n_keys + i2[..., b]).gather(-1, pos)


def distinct(idx: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """idx (...) in [0, n) -> (sorted distinct values (U,), positions of idx in them). Sort-free, O(n / 8 + idx)."""
    seen = torch.zeros(n, dtype=torch.bool, device=idx.device)
    seen[idx.flatten()] = True
    uniq = seen.nonzero().squeeze(1)
    slot = torch.empty(n, dtype=torch.long, device=idx.device)  # only entries at uniq are ever read
    slot[uniq] = torch.arange(uniq.numel(), device=idx.device)
    return uniq, slot[idx]


class PKMHooks(MemoryHooks):
    has_ffn = True

    def __init__(self, mem: PKMMemory):
        self.mem = mem

    def skip_ffn(self, layer: int) -> bool:
        return self.mem.replace and layer in self.mem.slot

    def ffn_extra(self, layer: int, x: Tensor) -> Tensor | None:
        s = self.mem.slot.get(layer)
        return None if s is None else self.mem.layer_forward(s, x)


@MEMORY.register("pkm")
class PKMMemory(MemoryType):
    routed = False  # token-level product-key lookup: reads no tree path
    config_key, options = "pkm", PKMConfig  # memory.pkm.*

    @classmethod
    def skips_anchor_params(cls, mcfg: MemoryConfig) -> bool:
        return mcfg.pkm.mode == "replace"  # the replaced FFNs get no gradient

    @classmethod
    def check_config(cls, mcfg: MemoryConfig) -> None:
        from hmem_lit.config import ConfigError

        if mcfg.generic:
            raise ConfigError(
                "memory.generic: applies to path-fetched memories, not to memory.type=pkm; set memory.generic=false"
            )
        mcfg.storage.refuse("pkm's values")  # its value table lives in RAM, float32, next to the model

    def __init__(self, mcfg: MemoryConfig, acfg: AnchorConfig, branching: int):
        super().__init__()
        p, d = mcfg.pkm, acfg.d_model
        self.v_dim = p.v_dim or d
        if not p.gated and self.v_dim != d:
            raise ValueError(f"memory.pkm.v_dim={self.v_dim}: without gating the values must have d_model={d}")
        if mcfg.generic:
            raise ValueError("memory.generic applies to path-fetched memories, not to pkm")
        self.layers = pkm_layers(p.layers, acfg.n_layer)
        self.slot = {layer: i for i, layer in enumerate(self.layers)}
        self.heads, self.topk, self.n_keys, self.k_dim = p.heads, p.topk, p.n_keys, p.k_dim
        self.gated, self.qk_norm, self.replace, self.d = p.gated, p.qk_norm, p.mode == "replace", d
        self.qk_scale = p.qk_norm_scale
        self.step_stats: list[tuple[Tensor, Tensor, Tensor]] = []  # per memory layer of the last training step
        self.collect_stats = False  # set by the telemetry callback
        n = len(self.layers)
        self.query = nn.Parameter(torch.empty(n, p.heads * p.k_dim, d))  # per-layer query projections
        self.keys = nn.Parameter(torch.empty(n, p.heads, 2, p.n_keys, p.k_dim // 2))  # per layer/head/half
        self.values = nn.Parameter(torch.empty(p.n_keys**2, self.v_dim))  # shared by all memory layers
        self.w1 = nn.Parameter(torch.empty(n, self.v_dim, d)) if p.gated else None
        self.w2 = nn.Parameter(torch.empty(n, d, self.v_dim)) if p.gated else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d, hk = self.d, self.heads * self.k_dim
        with torch.no_grad():
            self.query.uniform_(-math.sqrt(6 / (d + hk)), math.sqrt(6 / (d + hk)))  # Xavier-uniform
            self.keys.uniform_(-1 / math.sqrt(self.k_dim), 1 / math.sqrt(self.k_dim))
            self.values.normal_(0.0, self.v_dim**-0.5)
            if self.gated:
                assert self.w1 is not None and self.w2 is not None  # built when gated
                self.w1.normal_(0.0, d**-0.5)
                self.w2.normal_(0.0, d**-0.5)
            zero_out = None if self.replace else (self.w2 if self.gated else self.values)
            if zero_out is not None:
                zero_out.zero_()  # add mode: no effect at step 0 (see the module docstring)

    def lookup(self, s: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, d) -> product-key top-k (scores, indices), each (N, heads, topk), for memory layer slot s."""
        q = F.linear(x, self.query[s]).view(x.shape[0], self.heads, 2, self.k_dim // 2)  # (N, H, 2, k_dim/2)
        keys = self.keys[s].to(q.dtype)  # (H, 2, n_keys, k_dim/2)
        if self.qk_norm:
            q, keys = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(keys, (keys.shape[-1],))
        scores = torch.einsum("nhcd,hckd->nhck", q, keys)  # (N, H, 2, n_keys)
        if self.qk_norm and self.qk_scale is not None:
            scores = scores * self.qk_scale  # a softmax temperature (the top-k choice is unchanged)
        return product_topk(scores, self.topk)

    def layer_forward(self, s: int, x: Tensor) -> Tensor:
        B, T, d = x.shape
        xf = x.reshape(B * T, d)
        best, idx = self.lookup(s, xf)  # (N, H, k)
        w = best.float().softmax(dim=-1)  # softmax in fp32
        # Gather each distinct row once, then bag over the gathered rows: the value table's sparse gradient gets one
        # row per distinct index (U), not one per (token, head, k) selection, which would be far larger than U.
        uniq, inv = distinct(idx, self.values.shape[0])  # (U,), (N, H, k)
        if self.training and self.collect_stats:  # telemetry.py: rows this step read, top-1 / top-k weights
            self.step_stats.append((uniq.detach(), w[..., 0].mean().detach(), w.mean().detach()))
        rows = F.embedding(uniq, self.values, sparse=True)  # (U, v_dim)
        y = F.embedding_bag(inv.flatten(1), rows, per_sample_weights=w.flatten(1).to(rows.dtype), mode="sum").to(
            x.dtype
        )  # (N, v_dim), summed over heads and top-k
        if self.gated:
            assert self.w1 is not None and self.w2 is not None  # built when gated
            y = F.linear(y * F.silu(F.linear(xf, self.w1[s].to(x.dtype))), self.w2[s].to(x.dtype))
        return y.view(B, T, d)

    def unused_anchor_params(self, anchor: Any) -> int:
        if not self.replace:
            return 0
        layers = getattr(anchor, "blocks", None)
        ffns = (
            [layers[i].ffn for i in self.layers] if layers is not None else [anchor.layers[i].mlp for i in self.layers]
        )
        return sum(p.numel() for f in ffns for p in f.parameters())

    def fetch(self, paths: Tensor | None = None, generic: Tensor | None = None) -> PKMHooks:
        return PKMHooks(self)  # token-level: paths and generic are not used

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.values]

    def bank_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fetched_params(self) -> int:
        dense = self.bank_params() - self.values.numel()
        return dense + len(self.layers) * self.heads * self.topk * self.v_dim
