"""Memory cost benchmark (CPU): train-step overhead over the anchor, step time vs bank size, peak RSS vs bank size.

  .venv/bin/python benchmarks/bench_memory.py --quick      # ~1-2 minutes on 2 cores
  .venv/bin/python benchmarks/bench_memory.py              # more timed rounds

(1) step time (forward + backward + clip + optimiser step) of anchor + memory at a ~10% fetch over the anchor
alone, for ffn, lora, kv and pkm; (2) step time as the bank grows 1x -> 16x -> 64x at a fixed fetch (bank types:
one level with branching 4 / 16 / 32, i.e. 16 / 256 / 1,024 blocks; pkm: n_keys 32 / 128 / 256, i.e. 1K / 16K /
64K value rows); (3) peak RSS of a fresh process per bank size; (4) ffn vs anchor with the same tokens per step
in 4x longer sequences. Every timed model lives in one process and the
configurations are interleaved round by round in a shuffled order, so machine noise hits all alike; the report is
the median per configuration and ratios of process CPU time (absolute times on a shared CPU mean little; CPU
time, unlike wall time, does not count the waits while other jobs hold the cores; wall medians are kept too). Writes
benchmarks/results/memory.json atomically and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hmem_lit.anchor import lm_loss  # noqa: E402
from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.model import MemoryLM  # noqa: E402
from hmem_lit.optim import build_optimizer, clip_gradients  # noqa: E402

VOCAB = 4096
ANCHOR = ["anchor.preset=small"]  # 4 layers, d 128, 4 x 32 heads, d_ff 384
# units per layer giving ~10% of the anchor's parameters as fetched memory (see the printed fetch %)
UNITS = {"ffn": 90, "lora": 67, "kv": 135}
SCALES = {1: 4, 16: 16, 64: 32}  # bank scale -> branching of the single (level-2) memory level
PKM_KEYS = {1: 32, 16: 128, 64: 256}


def overrides(mtype: str, scale: int) -> list[str]:
    if mtype == "none":
        return [*ANCHOR, "memory.type=none"]
    if mtype == "pkm":
        return [
            *ANCHOR,
            "memory.type=pkm",
            "train.mode=scratch",
            "memory.pkm.mode=add",
            "memory.pkm.topk=16",
            f"memory.pkm.n_keys={PKM_KEYS[scale]}",
            "memory.pkm.k_dim=64",
            "memory.pkm.heads=4",
        ]
    return [
        *ANCHOR,
        f"memory.type={mtype}",
        "train.mode=scratch",
        f"memory.levels=[0,{UNITS[mtype]}]",
        "retriever.depth=2",
        f"retriever.branching={SCALES[scale]}",
    ]


class Job:
    """One model + optimiser + a stream of random batches; `step()` returns its wall time."""

    def __init__(self, mtype: str, scale: int, batch: int, seq: int, seed: int = 0, extra: Sequence[str] = ()):
        self.cfg = load_config(None, [*overrides(mtype, scale), *extra])
        torch.manual_seed(seed)
        self.model = MemoryLM(self.cfg, VOCAB).train()
        self.opt = build_optimizer(self.model, self.cfg, total_steps=10_000)["optimizer"]
        self.b = self.cfg.retriever.branching
        self.gen = torch.Generator().manual_seed(seed)
        self.shape = (batch, seq)
        self.times: list[float] = []
        self.opt_times: list[float] = []
        self.wall: list[float] = []

    def step(self, record: bool = True) -> None:
        x = torch.randint(VOCAB, self.shape, generator=self.gen)
        y = torch.randint(VOCAB, self.shape, generator=self.gen)
        p1 = torch.randint(self.b, (self.shape[0],), generator=self.gen)
        paths = torch.stack([p1, p1 * self.b + torch.randint(self.b, (self.shape[0],), generator=self.gen)], 1)
        w0, t0 = time.perf_counter(), time.process_time()
        lm_loss(self.model(x, paths=paths), y).backward()
        clip_gradients(self.model, self.cfg)
        t1 = time.process_time()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t2, w2 = time.process_time(), time.perf_counter()
        if record:
            self.times.append(t2 - t0)
            self.opt_times.append(t2 - t1)
            self.wall.append(w2 - w0)


def rss_child(mtype: str, scale: int, batch: int, seq: int) -> None:
    """Run in a fresh process: build, take 3 steps, print the peak RSS (MB) and the parameter counts as JSON."""
    job = Job(mtype, scale, batch, seq)
    for _ in range(3):
        job.step()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), **job.model.param_counts()}))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork +
    exec)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def parse_args(description: str, out: str, child: tuple[str, str]) -> argparse.Namespace:
    """The options bench_memory and its siblings share (bench_lowp), with the threads set."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="fewer timed rounds (for a shared 2-core machine)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / out))
    ap.add_argument("--rss-child", nargs=2, metavar=child, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    return a


def time_interleaved(jobs: dict, quick: bool) -> int:
    """Warm every job up, then time them round by round in a shuffled order (machine noise hits all alike);
    -> the number of timed rounds."""
    rounds, warmup = (8, 2) if quick else (25, 3)
    for job in jobs.values():
        for _ in range(warmup):
            job.step(record=False)
    order = list(jobs)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            jobs[key].step()
    return rounds


def header(a: argparse.Namespace, rounds: int, t_start: float) -> dict:
    """The leading entries of a results JSON: the command, versions and timing settings."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": a.threads,
        "batch": [a.batch, a.seq],
        "rounds": rounds,
        "timing_wall_s": round(time.time() - t_start, 1),
    }


def main() -> None:
    a = parse_args(__doc__.splitlines()[0], "memory.json", ("TYPE", "SCALE"))
    if a.rss_child:
        return rss_child(a.rss_child[0], int(a.rss_child[1]), a.batch, a.seq)

    types = ["ffn", "lora", "kv", "pkm"]
    jobs = {("none", 1): Job("none", 1, a.batch, a.seq)}
    for t in types:
        for s in SCALES:
            jobs[(t, s)] = Job(t, s, a.batch, a.seq)
    # the same tokens per step as fewer, longer sequences: per-sequence costs (each sequence updates its own
    # fetched blocks) are amortised over more tokens, as at the paper's 2,048-token sequences
    long_b, long_t = max(1, a.batch // 4), a.seq * 4
    jobs[("none", "long")] = Job("none", 1, long_b, long_t)
    jobs[("ffn", "long")] = Job("ffn", 1, long_b, long_t)
    t_start = time.time()
    rounds = time_interleaved(jobs, a.quick)
    med = {k: statistics.median(j.times) for k, j in jobs.items()}
    med_opt = {k: statistics.median(j.opt_times) for k, j in jobs.items()}
    med_wall = {k: statistics.median(j.wall) for k, j in jobs.items()}
    anchor = jobs[("none", 1)].model.param_counts()["anchor"]

    results: dict = {
        **header(a, rounds, t_start),
        "anchor_params": anchor,
        "anchor_step_ms": round(1e3 * med[("none", 1)], 2),
        "anchor_wall_ms": round(1e3 * med_wall[("none", 1)], 2),
        "anchor_opt_step_ms": round(1e3 * med_opt[("none", 1)], 3),
        "types": {},
    }
    for t in types:
        rows = []
        for s in SCALES:
            c = jobs[(t, s)].model.param_counts()
            rows.append(
                {
                    "scale": s,
                    "bank_params": c["bank"],
                    "fetched_params": c["fetched"],
                    "fetch_pct": round(100 * c["fetched"] / anchor, 1),
                    "step_ms": round(1e3 * med[(t, s)], 2),
                    "opt_step_ms": round(1e3 * med_opt[(t, s)], 3),
                    "wall_ms": round(1e3 * med_wall[(t, s)], 2),
                    "wall_ratio_vs_anchor": round(med_wall[(t, s)] / med_wall[("none", 1)], 3),
                    "ratio_vs_anchor": round(med[(t, s)] / med[("none", 1)], 3),
                    "ratio_vs_1x": round(med[(t, s)] / med[(t, 1)], 3),
                }
            )
        results["types"][t] = rows

    rss = []
    for t, s in [("none", 1)] + [(t, s) for t in ("ffn", "pkm") for s in SCALES]:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rss-child",
                t,
                str(s),
                "--batch",
                str(a.batch),
                "--seq",
                str(a.seq),
                "--threads",
                str(a.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rss.append(
            {
                "type": t,
                "scale": s,
                "bank_params": r["bank"],
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "params_plus_adam_mb": round(12 * (r["anchor"] + r["bank"]) / 2**20, 1),
            }
        )
    results["peak_rss"] = rss
    results["long_sequences"] = {
        "batch": [long_b, long_t],
        "anchor_ms": round(1e3 * med[("none", "long")], 2),
        "ffn_ms": round(1e3 * med[("ffn", "long")], 2),
        "ffn_ratio_vs_anchor": round(med[("ffn", "long")] / med[("none", "long")], 3),
    }

    from hmem_lit.utils import write_json

    write_json(a.out, results)
    print(
        f"anchor: {anchor:,} params, {results['anchor_step_ms']} CPU ms/step of which optimiser "
        f"{results['anchor_opt_step_ms']} ms ({a.batch}x{a.seq} tokens, "
        f"{a.threads} thread(s), median of {rounds} interleaved rounds)"
    )
    print(
        f"{'type':5} {'scale':>5} {'bank':>12} {'fetch%':>7} {'step ms':>8} {'opt ms':>7} {'x anchor':>8} {'x 1x':>6}"
    )
    for t, rows in results["types"].items():
        for r in rows:
            print(
                f"{t:5} {r['scale']:>4}x {r['bank_params']:>12,} {r['fetch_pct']:>7} {r['step_ms']:>8} "
                f"{r['opt_step_ms']:>7} {r['ratio_vs_anchor']:>8} {r['ratio_vs_1x']:>6}"
            )
    print(f"{'type':5} {'scale':>5} {'bank':>12} {'peak RSS MB':>12} {'params+Adam MB':>15}")
    for r in rss:
        print(
            f"{r['type']:5} {r['scale']:>4}x {r['bank_params']:>12,} {r['peak_rss_mb']:>12} "
            f"{r['params_plus_adam_mb']:>15}"
        )
    ls = results["long_sequences"]
    print(
        f"ffn 1x at {long_b}x{long_t} tokens: {ls['ffn_ms']} vs anchor {ls['anchor_ms']} CPU ms/step "
        f"= {ls['ffn_ratio_vs_anchor']}x"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
