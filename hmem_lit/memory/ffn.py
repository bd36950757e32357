"""FFN-memories (the paper's winner): r extra SwiGLU hidden units per memory layer per tree level.

A fetched unit in a layer is one row of W_gate, one row of W_up and one column of W_down (3 * d_model numbers),
so the fetched memory is a second, per-sequence SwiGLU of R = sum(r_l) hidden units whose output is added to the
layer's FFN output: extra = down^T (silu(gate x) * (up x)). Gate/up start truncated-normal, down at zero, so the
model equals the anchor at step 0. Accounting: c0 = 3 * layers * d, fetched = c0 * sum(r_l).
The units use the anchor's own gate activation (anchor.ffn_act: SiLU; GELU-tanh on a Gemma hf anchor), so they are
exactly extra hidden units of the layer's FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmem_lit.anchor import MemoryHooks
from hmem_lit.config import AnchorConfig, MemoryConfig
from hmem_lit.memory import MEMORY
from hmem_lit.memory.bank import BankMemory

ACTS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class FFNHooks(MemoryHooks):
    has_ffn = True

    def __init__(self, units: Tensor, slot: dict[int, int], d: int, act=F.silu):
        self.units = units.unbind(1)  # per layer (B, R, 3d); unbind (not indexing): its backward is one stack
        self.slot, self.d, self.act = slot, d, act

    def ffn_extra(self, layer: int, x: Tensor) -> Tensor | None:
        s = self.slot.get(layer)
        if s is None:
            return None
        w = self.units[s].to(x.dtype)  # (B, R, 3d)
        gate, up, down = w.split(self.d, dim=-1)  # each (B, R, d)
        # batched matmuls with contiguous (B, T, R) outputs (einsum may pick a transposed layout: slow pointwise ops)
        h = self.act(x @ gate.transpose(1, 2)) * (x @ up.transpose(1, 2))  # (B, T, R)
        return h @ down  # (B, T, d)


@MEMORY.register("ffn")
class FFNMemory(BankMemory):
    def __init__(self, mcfg: MemoryConfig, acfg: AnchorConfig, branching: int):
        super().__init__(mcfg, acfg.n_layer, branching, c_layer=3 * acfg.d_model)
        self.d, self.init_std, self.act = acfg.d_model, mcfg.init_std, ACTS[acfg.ffn_act]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.init_std
        with torch.no_grad():
            for v in self.unit_views():  # (rows, layers, r, 3d)
                nn.init.trunc_normal_(v[..., : 2 * self.d], std=std, a=-3 * std, b=3 * std)  # gate, up
                v[..., 2 * self.d :].zero_()  # down: memory has no effect at step 0

    def fetch(self, paths: Tensor | None, generic: Tensor | None = None) -> FFNHooks:
        return FFNHooks(self.gather(paths, generic), self.slot, self.d, self.act)
