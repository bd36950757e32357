"""bfloat16 bank storage (memory.storage.dtype) vs float32 (CPU): train-step time, optimiser time, bank state bytes
and peak RSS, for the FFN memory of benchmarks/bench_memory.py (small anchor, ~10% fetch) at bank scales 1x / 16x /
64x (16 / 256 / 1,024 blocks).

  .venv/bin/python benchmarks/bench_lowp.py --quick      # ~2 minutes on 2 cores

Every timed model lives in one process and the variants are interleaved round by round in a shuffled order
(machine noise hits all alike); the report is the median CPU time per variant and its ratio to float32 at the same
scale. Bank state = the tables and both Adam moments, counted from the tensors. Peak RSS: a fresh process per
variant at the largest scale builds the model and takes 3 steps. Writes benchmarks/results/lowp.json atomically.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_memory import SCALES, Job, header, parse_args, peak_rss_mb, time_interleaved  # noqa: E402

VARIANTS = {
    "float32": [],
    "bfloat16": ["memory.storage.dtype=bfloat16"],
    "bfloat16_nearest": ["memory.storage.dtype=bfloat16", "memory.storage.rounding=nearest"],
}


def state_bytes(job: Job) -> int:
    """Bytes of the bank's tables and their Adam moments (after a step, so the moments exist)."""
    total = 0
    for _, _, t in job.model.memory.bank.tables():
        st = job.opt.state[t]
        total += sum(x.numel() * x.element_size() for x in (t, st["exp_avg"], st["exp_avg_sq"]))
    return total


def rss_child(variant: str, scale: int, batch: int, seq: int) -> None:
    job = Job("ffn", scale, batch, seq, extra=VARIANTS[variant])
    for _ in range(3):
        job.step()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "state_bytes": state_bytes(job), **job.model.param_counts()}))


def main() -> None:
    a = parse_args(__doc__.splitlines()[0], "lowp.json", ("VARIANT", "SCALE"))
    if a.rss_child:
        return rss_child(a.rss_child[0], int(a.rss_child[1]), a.batch, a.seq)

    jobs = {(v, s): Job("ffn", s, a.batch, a.seq, extra=ov) for v, ov in VARIANTS.items() for s in SCALES}
    t_start = time.time()
    rounds = time_interleaved(jobs, a.quick)
    med = {k: statistics.median(j.times) for k, j in jobs.items()}
    med_opt = {k: statistics.median(j.opt_times) for k, j in jobs.items()}
    rows = []
    for (v, s), job in jobs.items():
        ref = ("float32", s)
        rows.append(
            {
                "variant": v,
                "scale": s,
                "bank_params": job.model.param_counts()["bank"],
                "state_mb": round(state_bytes(job) / 2**20, 1),
                "step_ms": round(1e3 * med[(v, s)], 2),
                "opt_step_ms": round(1e3 * med_opt[(v, s)], 3),
                "step_ratio_vs_float32": round(med[(v, s)] / med[ref], 3),
                "opt_ratio_vs_float32": round(med_opt[(v, s)] / med_opt[ref], 3),
            }
        )
    big = max(SCALES)
    rss = []
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--rss-child", v, str(big), "--batch", str(a.batch), "--seq", str(a.seq)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        rss.append(
            {
                "variant": v,
                "scale": big,
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "state_mb": round(r["state_bytes"] / 2**20, 1),
            }
        )
    results = {
        **header(a, rounds, t_start),
        "steps": rows,
        "peak_rss": rss,
    }
    from hmem_lit.utils import write_json

    write_json(a.out, results)
    print(f"ffn memory, {a.batch}x{a.seq} tokens, {a.threads} thread(s), median of {rounds} interleaved rounds")
    print(
        f"{'variant':17} {'scale':>5} {'bank':>12} {'state MB':>9} {'step ms':>8} {'opt ms':>8} {'x fp32':>7} "
        f"{'opt x':>6}"
    )
    for r in rows:
        print(
            f"{r['variant']:17} {r['scale']:>4}x {r['bank_params']:>12,} {r['state_mb']:>9} {r['step_ms']:>8} "
            f"{r['opt_step_ms']:>8} {r['step_ratio_vs_float32']:>7} {r['opt_ratio_vs_float32']:>6}"
        )
    for r in rss:
        print(f"peak RSS {r['variant']:17} {r['scale']}x: {r['peak_rss_mb']} MB (bank state {r['state_mb']} MB)")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
