"""Asynchronous row-wise updates (memory.storage.async_update=true) vs inline ones (CPU): wall time per training step.

  .venv/bin/python benchmarks/bench_writeback.py --quick      # ~3 minutes on 2 cores

With async_update the bank's row-wise optimiser step runs on a worker thread while the loop goes on with the next
batch; the next fetch waits only for the rows it reads (those are written first). On an accelerator the host
update would otherwise stall every step; on this CPU the worker can only use a core the training thread leaves
idle, so the runs use one torch thread (train.threads=1, as the quickstart does) on a machine with two or more.

Shapes (vocab 2,048, the quickstart's `tiny` anchor and FFN memory, branching 16, two levels):
- quickstart: levels [32,64], 16 x 256 tokens (the quickstart's memory run): the update is ~3% of the step;
- update_heavy: levels [256,512], 16 x 32 tokens: short sequences with a large fetch, so the host update is a
  large share of the step, as it is when the forward and backward run on an accelerator;
each in float32 and bfloat16 (stochastic rounding). A timed unit is a block of consecutive steps of one variant
ending with every update written (so a pending update is never hidden by another variant's block), blocks are
interleaved in a shuffled order round by round, and the report is the median wall time per step with the async
to inline ratio; every variant's final tables are checked bit-identical to its inline twin. Writes
benchmarks/results/writeback.json atomically.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hmem_lit.anchor import lm_loss  # noqa: E402
from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.model import MemoryLM  # noqa: E402
from hmem_lit.optim import build_optimizer, clip_gradients  # noqa: E402

VOCAB, BRANCHING, BLOCK = 2048, 16, 6  # steps per timed block
SHAPES = {"quickstart": ("[32,64]", 16, 256), "update_heavy": ("[256,512]", 16, 32)}
DTYPES = {"float32": [], "bfloat16": ["memory.storage.dtype=bfloat16"]}


class Run:
    """A model, its optimiser and a fixed stream of batches; `block()` trains BLOCK steps and returns the wall
    time per step (the block ends once every row update is written)."""

    def __init__(self, shape: str, dtype: str, async_update: bool, seed: int = 0):
        levels, self.batch, self.seq = SHAPES[shape]
        ov = ["anchor.preset=tiny", "memory.type=ffn", f"memory.levels={levels}", "retriever.depth=2"]
        ov += [f"retriever.branching={BRANCHING}", "train.mode=scratch", *DTYPES[dtype]]
        ov += [f"memory.storage.async_update={str(async_update).lower()}"]
        self.cfg = load_config(None, ov)
        torch.manual_seed(seed)
        self.model = MemoryLM(self.cfg, VOCAB).train()
        self.opt = build_optimizer(self.model, self.cfg, total_steps=10_000)["optimizer"]
        self.gen = torch.Generator().manual_seed(seed)
        self.next = self._batch()
        self.times: list[float] = []
        self.opt_ms: list[float] = []
        self.warmup = 0  # untimed blocks

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randint(VOCAB, (self.batch, self.seq + 1), generator=self.gen)
        p1 = torch.randint(BRANCHING, (self.batch,), generator=self.gen)
        p2 = p1 * BRANCHING + torch.randint(BRANCHING, (self.batch,), generator=self.gen)
        return x[:, :-1], x[:, 1:], torch.stack([p1, p2], 1)

    def block(self, record: bool = True) -> None:
        bank = self.model.memory.bank
        t0 = time.perf_counter()
        opt_s = 0.0
        for _ in range(BLOCK):
            x, y, paths = self.next
            self.next = self._batch()
            lm_loss(self.model(x, paths=paths), y).backward()
            clip_gradients(self.model, self.cfg)
            bank.expect(self.next[2], None)  # as the LightningModule does: the next batch's rows first
            t1 = time.perf_counter()
            self.opt.step()
            opt_s += time.perf_counter() - t1
            self.opt.zero_grad(set_to_none=True)
        bank.wait()
        if not record:
            self.warmup += 1
        else:
            self.times.append((time.perf_counter() - t0) / BLOCK)
            self.opt_ms.append(1e3 * opt_s / BLOCK)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed rounds (for a shared 2-core machine)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training thread")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "writeback.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.time()
    runs = {(s, d, m): Run(s, d, m) for s in SHAPES for d in DTYPES for m in (False, True)}
    rounds, warmup = (6, 1) if a.quick else (15, 2)
    for r in runs.values():
        for _ in range(warmup):
            r.block(record=False)
    order, rng = list(runs), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            runs[key].block()
    rows = []
    for s in SHAPES:
        for d in DTYPES:
            inline, asyn = runs[(s, d, False)], runs[(s, d, True)]
            ti, ta = statistics.median(inline.times), statistics.median(asyn.times)
            sa, sb = inline.model.state_dict(), asyn.model.state_dict()
            wb = asyn.model.memory.bank.backend.writeback
            rows.append(
                {
                    "shape": s,
                    "dtype": d,
                    "tokens_per_step": inline.batch * inline.seq,
                    "fetched_params": inline.model.param_counts()["fetched"],
                    "inline_step_ms": round(1e3 * ti, 2),
                    "inline_opt_ms": round(statistics.median(inline.opt_ms), 2),
                    "async_step_ms": round(1e3 * ta, 2),
                    "async_opt_call_ms": round(statistics.median(asyn.opt_ms), 2),
                    "async_vs_inline": round(ta / ti, 3),
                    "fetches_that_waited": round(wb.waits / max(1, wb.updates), 3),
                    "wait_ms_per_step": round(1e3 * wb.wait_s / (len(asyn.times) + asyn.warmup) / BLOCK, 2),
                    "bit_identical": all(torch.equal(sa[k], sb[k]) for k in sa),
                }
            )
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": a.threads,
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "rounds": rounds,
        "steps_per_block": BLOCK,
        "timing_wall_s": round(time.time() - t_start, 1),
        "rows": rows,
    }
    from hmem_lit.utils import write_json

    write_json(a.out, results)
    print(f"wall ms per step, median of {rounds} interleaved blocks of {BLOCK} steps, {a.threads} torch thread(s)")
    cols = [("shape", 13), ("dtype", 9), ("inline", 8), ("(opt)", 7), ("async", 8), ("(call)", 7), ("ratio", 6)]
    cols += [("waited", 6), ("wait ms", 7), ("equal", 6)]
    keys = ["shape", "dtype", "inline_step_ms", "inline_opt_ms", "async_step_ms", "async_opt_call_ms"]
    keys += ["async_vs_inline", "fetches_that_waited", "wait_ms_per_step", "bit_identical"]
    print(" ".join(f"{n:>{w}}" for n, w in cols))
    for r in rows:
        print(" ".join(f"{str(r[k]):>{w}}" for k, (_, w) in zip(keys, cols)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
