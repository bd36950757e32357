"""Training throughput: Lightning (`hmem train`'s module and trainer) vs a plain PyTorch loop, same model and data.

Both paths use the same MemoryLM, data stream, optimiser, schedule and gradient clipping. Timing is the wall time
between the ends of optimiser step `warmup` and step `warmup + steps`, so per-step framework work (hooks, logging,
progress bar, data loading) is included. Variants are interleaved over several repeats and the median is kept,
because these machines are shared and noisy: compare the ratio, not the absolute numbers.

    python -m benchmarks.bench_train [--quick] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from hmem_lit.config import load_config
from hmem_lit.utils import write_json

ROOT = Path(__file__).resolve().parent.parent


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.t.append(time.perf_counter())


def _cfg(preset: str, steps: int, tmp: str, bs: int, seq: int):
    return load_config(
        ROOT / "experiments" / "000_debug.yaml",
        [
            f"anchor.preset={preset}",
            f"out_dir={tmp}",
            "train.progress=true",
            "train.val_every=0",
            "train.ckpt_every=0",
            f"train.batch_size={bs}",
            f"data.seq_len={seq}",
            f"train.max_tokens={steps * bs * seq}",
            "data.toy_docs=2000",
            "train.log_every=10",
            "name=bench",
        ],
    )


def lightning_run(cfg, warmup: int) -> float:
    """Seconds per optimiser step through the real training path (hmem_lit.train.train)."""
    from hmem_lit.train import train

    timer = StepTimer()
    train(cfg, force=True, extra_callbacks=[timer])
    t = timer.t
    return (t[-1] - t[warmup]) / (len(t) - 1 - warmup)


def plain_run(cfg, warmup: int) -> float:
    """The same work in a hand-written loop: forward, loss, backward, clip, step, schedule."""
    import math

    from hmem_lit.anchor import lm_loss
    from hmem_lit.data.datamodule import HmemDataModule
    from hmem_lit.lit_module import HmemLitModule
    from hmem_lit.optim import clip_gradients
    from hmem_lit.utils import seed_everything

    seed_everything(cfg.train.seed)
    tps = cfg.train.batch_size * cfg.data.seq_len
    total = math.ceil(cfg.train.max_tokens / tps)
    dm = HmemDataModule(cfg, total)
    dm.trainer = None
    module = HmemLitModule(cfg, dm.vocab_size, total, tps)
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    model = module.model.train()
    t = []
    for batch in dm.train_dataloader():
        logits = model(batch["input_ids"], doc_ids=batch["doc_ids"], paths=batch["paths"])
        loss = lm_loss(logits, batch["targets"])
        loss.backward()
        clip_gradients(model, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        _ = loss.item()  # Lightning reads the loss every step for the progress bar / logging
        t.append(time.perf_counter())
    return (t[-1] - t[warmup]) / (len(t) - 1 - warmup)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    a = ap.parse_args()
    repeats, steps, warmup = (2, 40, 5) if a.quick else (5, 80, 10)
    torch.set_num_threads(torch.get_num_threads())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset, bs, seq in (("tiny", 16, 128), ("small", 16, 128)):
            cfg = _cfg(preset, steps, tmp, bs, seq)
            lit, plain = [], []
            for _ in range(repeats):  # interleave to share the machine's noise
                plain.append(plain_run(cfg, warmup))
                lit.append(lightning_run(cfg, warmup))
            ml, mp = statistics.median(lit), statistics.median(plain)
            results[preset] = {
                "tokens_per_step": bs * seq,
                "lightning_s_per_step": ml,
                "plain_s_per_step": mp,
                "lightning_tokens_per_s": bs * seq / ml,
                "plain_tokens_per_s": bs * seq / mp,
                "overhead_ratio": ml / mp,
                "repeats": repeats,
                "steps": steps,
                "all_lightning": lit,
                "all_plain": plain,
            }
    out = {
        "benchmark": "train_throughput",
        "threads": torch.get_num_threads(),
        "note": "ratio = Lightning s/step over plain-loop s/step, medians of interleaved repeats; shared 2-core CPU",
        "results": results,
    }
    write_json(a.out, out)
    print(f"{'anchor':8s} {'plain tok/s':>12s} {'lightning tok/s':>16s} {'overhead':>9s}")
    for k, r in results.items():
        print(f"{k:8s} {r['plain_tokens_per_s']:12.0f} {r['lightning_tokens_per_s']:16.0f} {r['overhead_ratio']:9.3f}")


if __name__ == "__main__":
    main()
