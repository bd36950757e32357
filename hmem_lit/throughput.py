"""Training throughput and model FLOPs utilisation (MFU): `train/tokens_per_s` and `train/mfu` in every run.

FLOPs per trained token (forward + backward, the PaLM / torchtitan convention):

    6 * (N_matmul + N_fetched) + 12 * n_layer * T * (n_head * head_dim)

N_matmul counts the anchor's matmul weights (per layer q, k, v, o: 4 * d_model * width, less with grouped
key/values; SwiGLU: 3 * d_model * d_ff; the output projection d_model * vocab, tied or not); the embedding lookup
and norm weights are excluded (no matmul). N_fetched is the memory's per-token parameters (`fetched_params()`: the
blocks one sequence reads for ffn / lora / kv, the projections, keys and top-k value rows for pkm); the bank's
unfetched rows cost nothing. The attention term counts QK^T and AV over the full sequence T = data.seq_len (no
discount for the causal or document mask, as in the published MFU figures this is compared with). A frozen anchor
(train.mode=frozen) still counts 6 N: MFU measures the model's arithmetic, not a mode's savings.

MFU = (tokens/s per device) * FLOPs per token / the device's peak. `PEAK_FLOPS` holds dense bf16 tensor-core
peaks (no sparsity), matched against torch.cuda.get_device_name(); `train.peak_tflops` overrides it (e.g. for
a CPU, where MFU is otherwise not logged, or a device missing from the table). The rate is measured over each
window of `train.log_every` optimiser steps (synchronising CUDA at the window's ends only), so it includes data
loading, the optimiser and checkpointing but not validation; the first window of a segment starts after its first
step (compilation, warm-up).
Both values are timings: a resumed run's differ from an uninterrupted one's (runs.TIMING_KEYS).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from hmem_lit.config import AnchorConfig

# dense bf16 tensor-core peak FLOP/s per device, first match of the name (more specific names first)
PEAK_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
]


def peak_flops(device: torch.device | str, override_tflops: float | None = None) -> float | None:
    """The device's dense bf16 peak in FLOP/s: `override_tflops` * 1e12 if given, the table's entry for a CUDA
    device, else None (no MFU)."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def anchor_matmul_params(cfg: AnchorConfig) -> int:
    """The anchor's weights used in matmuls per token (embedding lookup and norms excluded, output head included)."""
    assert cfg.vocab_size is not None, "anchor.vocab_size must be resolved"
    width, kv_width = cfg.n_head * cfg.head_dim, (cfg.n_kv_head or cfg.n_head) * cfg.head_dim  # GQA: preset=hf
    per_layer = 2 * cfg.d_model * (width + kv_width) + 3 * cfg.d_model * cfg.d_ff
    return cfg.n_layer * per_layer + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: AnchorConfig, seq_len: int, fetched: int = 0, unused: int = 0) -> int:
    """Training FLOPs per token (module docstring): 6 (N_matmul - unused + fetched) + 12 L T width.

    `unused`: anchor matmul weights a memory replaces (pkm replace mode's FFNs), `fetched`: memory per token."""
    attn = 12 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_dim
    return 6 * (anchor_matmul_params(cfg) - unused + fetched) + attn


def model_flops_per_token(model: Any, seq_len: int) -> int:
    """flops_per_token of a MemoryLM (its anchor config and memory's fetched / replaced parameters)."""
    counts = model.param_counts()
    return flops_per_token(model.cfg.anchor, seq_len, counts["fetched"], counts.get("anchor_unused", 0))


class Throughput(Callback):
    """Logs `train/tokens_per_s` (all devices) and `train/mfu` (per device, when the peak is known) every step,
    each measured over the last completed window of `every` optimiser steps; keeps the segment's window rates for
    final.json (`summary`)."""

    def __init__(self, every: int, tokens_per_step: int, flops_per_token: int, world: int, peak_tflops: float | None):
        self.every, self.tps, self.fpt, self.world = int(every), int(tokens_per_step), int(flops_per_token), world
        self.peak_tflops = peak_tflops
        self.peak: float | None = None
        self.mark: tuple[int, float] | None = None  # (global step, time) at the current window's start
        self.rate: float | None = None
        self.rates: list[float] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.peak = peak_flops(pl_module.device, self.peak_tflops)
        self.mark, self.rate = None, None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_start = self._now(pl_module.device) if self.mark is not None else None  # inside fit

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        start = getattr(self, "_val_start", None)
        if start is not None and self.mark is not None:  # validation pauses do not count as training time
            self.mark = (self.mark[0], self.mark[1] + self._now(pl_module.device) - start)

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per window: the queued kernels count in this window
        return time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.mark is None:
            self.mark = (step, self._now(pl_module.device))  # after the segment's first step: warm-up excluded
        elif step % self.every == 0 and step > self.mark[0]:
            now = self._now(pl_module.device)
            self.rate = (step - self.mark[0]) * self.tps / max(now - self.mark[1], 1e-9)
            self.rates.append(self.rate)
            self.mark = (step, now)
        if self.rate is None:
            return
        pl_module.log("train/tokens_per_s", self.rate, on_step=True, on_epoch=False)
        mfu = self.mfu(self.rate)
        if mfu is not None:
            pl_module.log("train/mfu", mfu, on_step=True, on_epoch=False)

    def mfu(self, rate: float) -> float | None:
        return rate / self.world * self.fpt / self.peak if self.peak else None

    def summary(self) -> dict[str, Any]:
        """For final.json: the median window rate of this segment, its MFU, the FLOPs per token and the peak."""
        med = sorted(self.rates)[len(self.rates) // 2] if self.rates else None
        return {
            "tokens_per_s": med,
            "mfu": self.mfu(med) if med is not None else None,
            "flops_per_token": self.fpt,
            "peak_flops": self.peak,
            "windows": len(self.rates),
        }
