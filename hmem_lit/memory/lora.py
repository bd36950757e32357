"""LoRA-memories: per-sequence low-rank patches W + (alpha / R) B A on a group of the anchor's linears.

Options in memory.lora (config.LoRAConfig). `target` picks the group: qk (query + key), vo (value + output) or ffn
(gate, up, down). One rank unit of one linear is a row of A (d_in numbers) and a column of B (d_out numbers); the
fetched levels concatenate into one patch of rank R = sum(r_l), scaled by alpha / R (`scaling: alpha/r`, LoRA) or
alpha / sqrt(R) (`alpha/sqrt(r)`, rsLoRA, Kalajdzievski 2023). A is Kaiming-uniform (a = sqrt(5), i.e.
U(+-1/sqrt(d_in)), as in LoRA), B is zero, so the model equals the anchor at step 0.
Accounting per layer and unit: QK/VO 2 * (d + h * d_h); FFN 3 * (d + d_f) (with grouped-query attention,
k and v are n_kv_head * d_h wide: QK/VO 2d + (h + h_kv) * d_h).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hmem_lit.anchor import MemoryHooks
from hmem_lit.config import AnchorConfig, LoRAConfig, MemoryConfig
from hmem_lit.memory import MEMORY
from hmem_lit.memory.bank import BankMemory


def lora_scale(opts: LoRAConfig, rank: int) -> float:
    """The patch's multiplier: alpha / r (LoRA) or alpha / sqrt(r) (rsLoRA) at fetched rank r."""
    return opts.alpha / (math.sqrt(rank) if opts.scaling == "alpha/sqrt(r)" else rank)


def lora_shapes(target: str, acfg: AnchorConfig) -> dict[str, tuple[int, int]]:
    """Hook name -> (d_in, d_out) of each patched linear."""
    d, w, f = acfg.d_model, acfg.n_head * acfg.head_dim, acfg.d_ff
    kv = (acfg.n_kv_head or acfg.n_head) * acfg.head_dim  # k / v width (smaller under grouped-query attention)
    return {
        "qk": {"q": (d, w), "k": (d, kv)},
        "vo": {"v": (d, kv), "o": (w, d)},
        "ffn": {"gate": (d, f), "up": (d, f), "down": (f, d)},
    }[target]


class LoRAHooks(MemoryHooks):
    has_delta = True

    def __init__(self, units: Tensor, slot: dict[int, int], cols: dict[str, tuple[int, int, int]], scale: float):
        self.units = units.unbind(1)  # per layer (B, R, c); unbind (not indexing): its backward is one stack
        self.slot, self.cols, self.scale = slot, cols, scale

    def linear_delta(self, layer: int, name: str, x: Tensor) -> Tensor | None:
        s, c = self.slot.get(layer), self.cols.get(name)
        if s is None or c is None:
            return None
        off, d_in, d_out = c
        w = self.units[s].to(x.dtype)  # (B, R, c)
        a, b = w[..., off : off + d_in], w[..., off + d_in : off + d_in + d_out]  # (B, R, d_in), (B, R, d_out)
        return ((x @ a.transpose(1, 2)) @ b) * self.scale  # (B, T, R) -> (B, T, d_out)


@MEMORY.register("lora")
class LoRAMemory(BankMemory):
    config_key, options = "lora", LoRAConfig  # memory.lora.*

    def __init__(self, mcfg: MemoryConfig, acfg: AnchorConfig, branching: int):
        shapes = lora_shapes(mcfg.lora.target, acfg)
        cols: dict[str, tuple[int, int, int]] = {}  # name -> (column offset, d_in, d_out) within a unit
        off = 0
        for name, (d_in, d_out) in shapes.items():
            cols[name] = (off, d_in, d_out)
            off += d_in + d_out
        super().__init__(mcfg, acfg.n_layer, branching, c_layer=off)
        self.cols = cols
        self.scale = lora_scale(mcfg.lora, sum(mcfg.levels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for v in self.unit_views():  # (rows, layers, r, c)
                for off, d_in, d_out in self.cols.values():
                    bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on A of shape (r, d_in)
                    v[..., off : off + d_in].uniform_(-bound, bound)
                    v[..., off + d_in : off + d_in + d_out].zero_()  # B = 0

    def fetch(self, paths: Tensor | None, generic: Tensor | None = None) -> LoRAHooks:
        return LoRAHooks(self.gather(paths, generic), self.slot, self.cols, self.scale)
