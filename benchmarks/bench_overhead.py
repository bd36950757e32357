"""Cost of the training-time instrumentation on the quickstart's memory run -> benchmarks/results/overhead.json.

Trains `experiments/102_qs_memory.yaml` (the quickstart's memory run) for --tokens tokens in four variants, in an
interleaved order repeated --reps times on the same machine: bare (train.telemetry=false), telemetry (the default),
telemetry + in-loop probes at the cadence the README shows (train.probe_every=100), and telemetry + csv +
tensorboard loggers. Reports each variant's median train_time_s and its ratio to bare (the target: the defaults
slow the quickstart by at most 3%). The machine is shared: read the ratios, not the seconds.

Usage: .venv/bin/python benchmarks/bench_overhead.py [--tokens 600000] [--reps 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.runs import read_final  # noqa: E402
from hmem_lit.train import train  # noqa: E402
from hmem_lit.utils import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "bare": ["train.telemetry=false"],
    "telemetry (default)": [],
    "telemetry + probes every 100": ["train.probe_every=100"],
    "telemetry + csv + tensorboard": ["train.loggers=[jsonl,csv,tensorboard]"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="hmem_overhead_"))
    data = work / "data"
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for rep in range(a.reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            out = work / "runs"
            cfg = load_config(
                ROOT / "experiments" / "102_qs_memory.yaml",
                [
                    f"data.dir={data}",
                    f"out_dir={out}",
                    f"name=v{list(VARIANTS).index(name)}_r{rep}",
                    f"train.max_tokens={a.tokens}",
                    "train.progress=false",
                    "train.val_every=0",
                    "train.ckpt_every=0",
                    *VARIANTS[name],
                ],
            )
            run_dir = train(cfg)
            times[name].append(float(read_final(run_dir)["train_time_s"]))
            shutil.rmtree(run_dir, ignore_errors=True)
    bare = statistics.median(times["bare"])
    res = {
        "tokens": a.tokens,
        "reps": a.reps,
        "machine": platform.processor() or platform.machine(),
        "train_time_s": times,
        "ratio_to_bare": {k: statistics.median(v) / bare for k, v in times.items()},
    }
    write_json(a.out, res)
    print(json.dumps(res["ratio_to_bare"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
