"""Train-step cost of whole experiments side by side (CPU): for "equal wall-clock" comparisons between runs whose
recorded training times come from a shared, differently loaded machine.

  .venv/bin/python benchmarks/bench_steps.py experiments/101_qs_anchor.yaml experiments/102_qs_memory.yaml \\
      experiments/105_qs_pkm.yaml [--rounds 30] [--threads 1] [--vocab 2048]

Each experiment's model and optimiser are built as `hmem train` builds them (its batch size, sequence length and
memory), fed random tokens and random tree paths, and timed for a full step (forward, backward, clip, optimiser
step). All models live in one process and the configurations are interleaved in a shuffled order each round, so
machine noise hits all alike; the report is the median process CPU time per step (and wall medians) and the ratio
to the first experiment. Writes benchmarks/results/steps.json atomically and prints a table.
"""

from __future__ import annotations

import argparse
import json
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
from hmem_lit.utils import atomic_write_text  # noqa: E402


class Job:
    def __init__(self, path: str, vocab: int, seed: int = 0):
        self.name = Path(path).stem
        self.cfg = load_config(path, [])
        torch.manual_seed(seed)
        self.model = MemoryLM(self.cfg, vocab).train()
        self.opt = build_optimizer(self.model, self.cfg, total_steps=10_000)["optimizer"]
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab, self.shape = vocab, (self.cfg.train.batch_size, self.cfg.data.seq_len)
        self.b, self.depth = self.cfg.retriever.branching, self.cfg.retriever.depth
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def step(self, record: bool = True) -> None:
        x = torch.randint(self.vocab, self.shape, generator=self.gen)
        y = torch.randint(self.vocab, self.shape, generator=self.gen)
        node, cols = torch.zeros(self.shape[0], dtype=torch.long), []
        for _ in range(self.depth):  # a random path per sequence: node ids of each level
            node = node * self.b + torch.randint(self.b, (self.shape[0],), generator=self.gen)
            cols.append(node)
        w0, t0 = time.perf_counter(), time.process_time()
        lm_loss(self.model(x, paths=torch.stack(cols, 1)), y).backward()
        clip_gradients(self.model, self.cfg)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if record:
            self.cpu.append(time.process_time() - t0)
            self.wall.append(time.perf_counter() - w0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="+")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=2048, help="the prepared tokenizer's size (quickstart: 2048)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "steps.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    jobs = [Job(p, a.vocab) for p in a.experiments]
    for j in jobs:
        for _ in range(a.warmup):
            j.step(record=False)
    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(a.rounds):
        for j in rng.sample(jobs, len(jobs)):
            j.step()
    base = statistics.median(jobs[0].cpu)
    rows = []
    for j in jobs:
        counts = j.model.param_counts()
        med = statistics.median(j.cpu)
        rows.append(
            {
                "experiment": j.name,
                "params": counts,
                "step_cpu_ms": round(med * 1e3, 2),
                "step_wall_ms": round(statistics.median(j.wall) * 1e3, 2),
                "ratio_to_first": round(med / base, 3),
            }
        )
        print(f"{j.name:24s} cpu {med * 1e3:8.1f} ms  wall {rows[-1]['step_wall_ms']:8.1f} ms  x{med / base:.3f}")
    out = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "threads": a.threads,
        "rounds": a.rounds,
        "timing_wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(a.out), json.dumps(out, indent=1) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
