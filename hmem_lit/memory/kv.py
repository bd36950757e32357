"""KV-memories: r learned key/value slots per memory layer per tree level.

Every head's queries attend to the fetched slots in a separate attention with no causal mask and no positions
(done by the anchor's `attn_kv` hook site); its output is added to the attention output. A unit of one layer is
one key and one value for every head (2 * h * d_h numbers); keys start truncated-normal, values zero, so the
model equals the anchor at step 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hmem_lit.anchor import MemoryHooks
from hmem_lit.config import AnchorConfig, MemoryConfig
from hmem_lit.memory import MEMORY
from hmem_lit.memory.bank import BankMemory


class KVHooks(MemoryHooks):
    has_kv = True

    def __init__(self, units: Tensor, slot: dict[int, int], n_head: int, head_dim: int):
        self.units = units.unbind(1)  # per layer (B, R, 2*h*hd); unbind (not indexing): its backward is one stack
        self.slot, self.h, self.hd = slot, n_head, head_dim

    def attn_kv(self, layer: int) -> tuple[Tensor, Tensor] | None:
        s = self.slot.get(layer)
        if s is None:
            return None
        w = self.units[s]  # (B, R, 2*h*hd)
        B, R, _ = w.shape
        k, v = w.view(B, R, 2, self.h, self.hd).permute(2, 0, 3, 1, 4)  # each (B, h, R, hd)
        return k, v


@MEMORY.register("kv")
class KVMemory(BankMemory):
    def __init__(self, mcfg: MemoryConfig, acfg: AnchorConfig, branching: int):
        super().__init__(mcfg, acfg.n_layer, branching, c_layer=2 * acfg.n_head * acfg.head_dim)
        self.h, self.hd, self.init_std = acfg.n_head, acfg.head_dim, mcfg.init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std, half = self.init_std, self.h * self.hd
        with torch.no_grad():
            for v in self.unit_views():  # (rows, layers, r, 2*h*hd)
                nn.init.trunc_normal_(v[..., :half], std=std, a=-3 * std, b=3 * std)  # keys
                v[..., half:].zero_()  # values: memory has no effect at step 0

    def fetch(self, paths: Tensor | None, generic: Tensor | None = None) -> KVHooks:
        return KVHooks(self.gather(paths, generic), self.slot, self.h, self.hd)
