"""Scaling-out benchmark: data-parallel step time, bank communication per step, host- vs device-resident bank.

  .venv/bin/python -m benchmarks.bench_scale --quick      # ~2-3 minutes on 2 cores
  .venv/bin/python -m benchmarks.bench_scale

(1) step time (forward + backward + bank sync + clip + optimiser step) of anchor + FFN memory at one global batch:
1 process (1 and 2 threads) vs 2 gloo processes (1 thread each), using the mechanism `train.strategy=ddp` uses
(DDP for the dense weights with the bank tables ignored, hmem_lit/sync.py for the tables);
(2) bytes the bank sync moves per step and rank, counted inside `sync_sparse_grads`, against the bank's size and
the ~2(w-1)/w x bank bytes a dense ring all-reduce would move, for banks of 1x / 16x / 64x blocks at a fixed fetch (ffn:
one level of 16 / 256 / 1,024 blocks; pkm: 1K / 16K / 64K value rows);
(3) peak memory with `memory.storage.offload=true` (bank on the host) vs a device-resident bank: on CUDA the peak
allocated device memory; on a CPU-only machine both banks live in host RAM, so only peak RSS is measured and the
CUDA measurement is recorded as "not run: no GPU". Writes benchmarks/results/scale.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 4096
ANCHOR = ["anchor.preset=small"]  # 4 layers, d 128 (as bench_memory)
FFN_UNITS = 90  # ~10% of the anchor fetched
BRANCHING = {1: 4, 16: 16, 64: 32}  # bank scale -> branching of the single level-2 memory level
PKM_KEYS = {1: 32, 16: 128, 64: 256}


def overrides(mtype: str, scale: int, offload: bool = False) -> list[str]:
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
        f"memory.levels=[0,{FFN_UNITS}]",
        "retriever.depth=2",
        f"retriever.branching={BRANCHING[scale]}",
        f"memory.storage.offload={str(offload).lower()}",
    ]


def _batch(step: int, global_batch: int, seq: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)  # the same global batch whatever the world size
    x = torch.randint(VOCAB, (global_batch, seq), generator=g)
    y = torch.randint(VOCAB, (global_batch, seq), generator=g)
    p1 = torch.randint(b, (global_batch,), generator=g)
    return x, y, torch.stack([p1, p1 * b + torch.randint(b, (global_batch,), generator=g)], 1)


def worker(rank: int, world: int, spec: dict, init_file: str, out_file: str) -> None:
    """One rank: `steps` timed training steps on its slice of every global batch; rank 0 writes the result."""
    import torch.distributed as dist

    from hmem_lit.anchor import lm_loss
    from hmem_lit.config import load_config
    from hmem_lit.distributed import ignore_sparse_tables
    from hmem_lit.model import MemoryLM
    from hmem_lit.optim import build_optimizer, clip_gradients
    from hmem_lit.sync import SyncStats, sync_sparse_grads

    torch.set_num_threads(spec["threads"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = load_config(None, overrides(spec["mtype"], spec["scale"]))
    torch.manual_seed(0)
    model = MemoryLM(cfg, VOCAB).train()
    opt = build_optimizer(model, cfg, total_steps=10_000)["optimizer"]
    tables = ignore_sparse_tables(model)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    b, gb, per = cfg.retriever.branching, spec["global_batch"], spec["global_batch"] // world
    walls, syncs, stats = [], [], SyncStats()
    for step in range(spec["warmup"] + spec["steps"]):
        x, y, paths = (t[rank * per : (rank + 1) * per] for t in _batch(step, gb, spec["seq"], b))
        t0 = time.perf_counter()
        lm_loss(net(x, paths=paths), y).backward()  # random tokens: every target counts, equal per rank
        t1 = time.perf_counter()
        if world > 1:
            stats = sync_sparse_grads(tables)
        t2 = time.perf_counter()
        clip_gradients(model, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= spec["warmup"]:
            walls.append(t3 - t0)
            syncs.append(t2 - t1)
    if rank == 0:
        c = model.param_counts()
        table_bytes = sum(p.numel() * p.element_size() for p in tables)
        res = {
            "step_ms": round(1e3 * statistics.median(walls), 2),
            "sync_ms": round(1e3 * statistics.median(syncs), 3),
            "bank_params": c["bank"],
            "fetched_params": c["fetched"],
            "table_bytes": table_bytes,
            "sync_bytes": stats.bytes,
            "sync_rows": stats.rows,
            "sync_dense_tables": stats.dense_tables,
            "dense_ring_allreduce_bytes": int(2 * (world - 1) / world * table_bytes),
        }
        Path(out_file).write_text(json.dumps(res))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, **spec) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "res.json")
        if world == 1:
            worker(0, 1, spec, "", out)
        else:
            mp.spawn(worker, args=(world, spec, os.path.join(d, "init"), out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def memory_child(offload: bool, device: str, steps: int) -> None:
    """Fresh process: a few training steps of a 64x ffn bank on `device`; prints peak memory as JSON."""
    from hmem_lit.anchor import lm_loss
    from hmem_lit.config import load_config
    from hmem_lit.model import MemoryLM
    from hmem_lit.optim import build_optimizer, clip_gradients

    torch.set_num_threads(1)
    cfg = load_config(None, overrides("ffn", 64, offload))
    torch.manual_seed(0)
    model = MemoryLM(cfg, VOCAB).train().to(device)
    opt = build_optimizer(model, cfg, total_steps=10_000)["optimizer"]
    b = cfg.retriever.branching
    for step in range(steps):
        x, y, paths = (t.to(device) for t in _batch(step, 8, 128, b))
        lm_loss(model(x, paths=paths), y).backward()
        clip_gradients(model, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
    res = {"bank_device": str(model.memory.bank.level2.device), "bank_params": model.param_counts()["bank"]}
    if device == "cuda":
        torch.cuda.synchronize()
        res["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    res["peak_rss_mb"] = round(hwm_kb / 1024, 1)
    print(json.dumps(res))


def _child(offload: bool, device: str, steps: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--memory-child", str(int(offload)), device, str(steps)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps (for a shared 2-core machine)")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        return memory_child(bool(int(a.memory_child[0])), a.memory_child[1], int(a.memory_child[2]))
    steps, warmup = (6, 2) if a.quick else (20, 3)
    base = dict(global_batch=a.global_batch, seq=a.seq, steps=steps, warmup=warmup)
    t_start = time.time()

    # (1) 1 vs 2 processes at one global batch (ffn, 1x bank)
    step_time = {
        "1 proc x 1 thread": run(1, mtype="ffn", scale=1, threads=1, **base),
        "1 proc x 2 threads": run(1, mtype="ffn", scale=1, threads=2, **base),
        "2 proc x 1 thread (ddp, gloo)": run(2, mtype="ffn", scale=1, threads=1, **base),
    }
    # (2) bank communication per step vs bank size, fixed fetch
    comm = []
    for mtype in ("ffn", "pkm"):
        for scale in (1, 16, 64):
            r = run(2, mtype=mtype, scale=scale, threads=1, **base)
            comm.append(
                {
                    "type": mtype,
                    "scale": scale,
                    **{
                        k: r[k]
                        for k in (
                            "bank_params",
                            "fetched_params",
                            "table_bytes",
                            "sync_bytes",
                            "sync_rows",
                            "sync_dense_tables",
                            "dense_ring_allreduce_bytes",
                            "sync_ms",
                            "step_ms",
                        )
                    },
                    "sync_over_table": round(r["sync_bytes"] / r["table_bytes"], 4),
                }
            )
    # (3) host- vs device-resident bank
    mem_steps = 2 if a.quick else 5
    memory: dict = {
        "cpu_rss": {
            "device_resident": _child(False, "cpu", mem_steps),
            "offload": _child(True, "cpu", mem_steps),
            "note": "on CPU both banks are in host RAM: equal RSS is the expected result",
        }
    }
    if torch.cuda.is_available():
        memory["cuda"] = {
            "device_resident": _child(False, "cuda", mem_steps),
            "offload": _child(True, "cuda", mem_steps),
        }
    else:
        memory["cuda"] = "not run: no GPU"

    results = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.bench_scale", *sys.argv[1:]]),
        "torch": torch.__version__,
        "world": 2,
        "global_batch": [a.global_batch, a.seq],
        "steps": steps,
        "wall_s": round(time.time() - t_start, 1),
        "bytes_formula": "per rank and step: 8*world*tables + sum over tables of min(world * max_rank_rows * "
        "(row_bytes + 8), dense ring all-reduce 2*(world-1)/world * (table_bytes + rows))",
        "step_time": step_time,
        "bank_comm": comm,
        "memory": memory,
    }
    from hmem_lit.utils import write_json

    write_json(a.out, results)
    for k, v in step_time.items():
        print(f"{k:32s} {v['step_ms']:8.1f} ms/step (bank sync {v['sync_ms']:.2f} ms)")
    for c in comm:
        print(
            f"{c['type']:4s} {c['scale']:3d}x bank {c['table_bytes'] / 2**20:8.2f} MB: sync gathers "
            f"{c['sync_bytes'] / 2**10:8.1f} KB/step ({c['sync_rows']} rows, {c['sync_dense_tables']} dense), "
            "dense all-reduce "
            f"{c['dense_ring_allreduce_bytes'] / 2**20:.2f} MB"
        )
    print(f"memory: {json.dumps(memory)}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
