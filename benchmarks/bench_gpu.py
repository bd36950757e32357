"""GPU training speed at the paper's scale -> benchmarks/results/gpu.json (issue 21): tokens/s, MFU, memory/anchor
step time, device memory with the bank on the device vs offloaded, the offload overhead.

  python benchmarks/bench_gpu.py                 # CUDA: the variants below, a few minutes on an H100/H200
  python benchmarks/bench_gpu.py --smoke         # CPU: a tiny anchor, every code path, seconds (CI / no GPU)
  python benchmarks/bench_gpu.py --variants anchor-160m,memory-160m --batch 16

Variants (sequence 2048, bf16 autocast, `anchor.attention=flex` with packed documents, `torch.compile` of the
anchor unless --no-compile, random tokens and random tree paths; no data preparation):
  anchor-160m          the openlm-160m anchor alone
  memory-160m          + FFN memory, levels (256, 64, 16, 0) over a --branching-way tree (~11% fetched)
  memory-160m-offload  the same with memory.storage.offload=true (bank tables and their Adam moments in host RAM)
  memory-160m-offload-prefetch  offloaded, with memory.storage.prefetch=true (the next batch's rows copied on a side
                       stream after each optimiser step)
  memory-160m-offload-async  offloaded and prefetched, with memory.storage.async_update=true (the host's row-wise
                       update on a worker thread, the next batch's rows written first)
  memory-160m-disk     memory.storage.kind=disk (tables and moments in memory-mapped files; --storage-dir), prefetched
  memory-160m-bf16     (optional) the device-resident bank stored in bfloat16 (memory.storage.dtype)
  anchor-410m          the openlm-410m anchor (--batch-410m sequences)
  anchor-160m-sdpa     (optional) the dense-mask sdpa reference attention, for the flex speed-up
Each variant: --warmup steps (compilation), then --steps timed steps (forward, backward, clipping, optimiser step;
CUDA synchronised around the timed block); the offload and disk variants, whose steps are mostly host work,
--host-warmup and --host-steps. A variant that fails (out of memory, a compile error) is recorded and the rest run.
MFU uses hmem_lit/throughput.py (FLOPs per token of anchor + fetched memory, the device's dense bf16 peak).
Results are written after every variant (atomically), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hmem_lit.anchor import lm_loss  # noqa: E402
from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.model import MemoryLM  # noqa: E402
from hmem_lit.optim import build_optimizer, clip_gradients  # noqa: E402
from hmem_lit.throughput import model_flops_per_token, peak_flops  # noqa: E402
from hmem_lit.utils import write_json  # noqa: E402

VOCAB = 50_432  # the paper's GPT-NeoX-sized vocabulary
MEMORY = ["memory.type=ffn", "memory.levels=[256,64,16,0]", "retriever.depth=4", "train.mode=scratch"]
VARIANTS: dict[str, list[str]] = {
    "anchor-160m": ["anchor.preset=openlm-160m"],
    "memory-160m": ["anchor.preset=openlm-160m", *MEMORY],
    "memory-160m-offload": ["anchor.preset=openlm-160m", *MEMORY, "memory.storage.offload=true"],
    "memory-160m-offload-prefetch": [
        "anchor.preset=openlm-160m",
        *MEMORY,
        "memory.storage.offload=true",
        "memory.storage.prefetch=true",
    ],
    "memory-160m-offload-async": [
        "anchor.preset=openlm-160m",
        *MEMORY,
        "memory.storage.offload=true",
        "memory.storage.prefetch=true",
        "memory.storage.async_update=true",
    ],
    "memory-160m-disk": [
        "anchor.preset=openlm-160m",
        *MEMORY,
        "memory.storage.kind=disk",
        "memory.storage.prefetch=true",
    ],
    "memory-160m-bf16": ["anchor.preset=openlm-160m", *MEMORY, "memory.storage.dtype=bfloat16"],
    "anchor-410m": ["anchor.preset=openlm-410m"],
    "anchor-160m-sdpa": ["anchor.preset=openlm-160m", "anchor.attention=sdpa"],
}
# the targets first (MFU 160M / 410M, memory/anchor, offload/device), so a run cut short keeps them
DEFAULT = ",".join(
    [
        "anchor-160m",
        "memory-160m",
        "anchor-410m",
        "memory-160m-offload",
        "memory-160m-offload-async",
        "memory-160m-offload-prefetch",
        "memory-160m-disk",
    ]
)
HOST_BANK = ("offload", "disk")  # variants whose bank lives on the host: each step is host work, fewer steps


def batches(cfg: Any, b: int, t: int, vocab: int, device: torch.device, seed: int = 0):
    """Endless random batches: tokens, targets, packed document ids (mean length 512), tree paths on the device,
    and the host copy of the paths (what a loader gives the prefetch: staging needs no device-to-host copy). On
    CUDA the copies start from pinned memory without blocking, as Lightning's loader with pin_memory does."""
    g = torch.Generator().manual_seed(seed)
    br, depth = cfg.retriever.branching, cfg.retriever.depth
    while True:
        x = torch.randint(vocab, (b, t), generator=g)
        y = torch.randint(vocab, (b, t), generator=g)
        starts = torch.rand(b, t, generator=g) < 1 / 512
        starts[:, 0] = False
        doc = starts.long().cumsum(1)
        node = torch.randint(br, (b,), generator=g)
        paths = [node]
        for _ in range(depth - 1):
            node = node * br + torch.randint(br, (b,), generator=g)
            paths.append(node)
        host = torch.stack(paths, 1)
        if device.type == "cuda":
            x, y, doc, p = (v.pin_memory().to(device, non_blocking=True) for v in (x, y, doc, host))
        else:
            p = host
        yield x, y, doc, p, host


def run_variant(name: str, ov: list[str], a: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    b = a.batch_410m if "410m" in name else a.batch
    steps, warmup = (a.host_steps, a.host_warmup) if any(h in name for h in HOST_BANK) else (a.steps, a.warmup)
    if a.smoke:  # the tiny anchor; sdpa (torch has no FlexAttention backward on CPU)
        ov = [o for o in ov if not o.startswith(("anchor.preset", "anchor.attention"))]
        ov += ["anchor.preset=tiny", "anchor.attention=sdpa"]
    if a.storage_dir:
        ov = [*ov, f"memory.storage.dir={a.storage_dir}"]
    cfg = load_config(None, [*ov, f"retriever.branching={a.branching}", f"data.seq_len={a.seq}", *a.extra])
    vocab = 97 if a.smoke else VOCAB
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t_build = time.perf_counter()
    model = MemoryLM(cfg, vocab).to(device).train()
    opt = build_optimizer(model, cfg, total_steps=10_000)["optimizer"]
    build_s = time.perf_counter() - t_build
    if a.compile:
        model.anchor.compile(dynamic=False)
    data = batches(cfg, b, a.seq, vocab, device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    bank = getattr(model.memory, "bank", None)
    batch = [next(data)]  # the current batch; the next one is drawn after the step, to stage its rows

    def step() -> None:
        x, y, doc, paths, _ = batch[0]
        with amp:
            logits = model(x, doc_ids=doc, paths=paths if model.memory is not None else None)
        lm_loss(logits, y).backward()
        clip_gradients(model, cfg)
        batch[0] = next(data)
        if bank is not None:
            bank.expect(
                batch[0][4], None
            )  # memory.storage.async_update: the next rows are written first (else a no-op)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if bank is not None:
            bank.stage(batch[0][4], None, device)  # memory.storage.prefetch: the next rows, now final (else a no-op)

    def sync() -> None:
        if bank is not None:
            bank.wait()  # memory.storage.async_update: a timed block ends with its row updates written
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    counts = model.param_counts()
    tok_s = b * a.seq / step_s
    fpt = model_flops_per_token(model, a.seq)
    peak = peak_flops(device, a.peak_tflops)
    out = {
        "batch": [b, a.seq],
        "steps": steps,
        "attention": model.anchor.attention(device),
        "compiled": bool(a.compile),
        "params": counts,
        "offload": bool(bank.backend.on_host) if bank is not None else False,  # a disk bank is on the host too
        "storage": cfg.memory.storage.kind,
        "bank_dtype": cfg.memory.storage.dtype,
        "async_update": bool(cfg.memory.storage.async_update),
        "prefetch": {"hits": bank.backend.prefetch.hits, "misses": bank.backend.prefetch.misses}
        if bank is not None and bank.backend.prefetch is not None
        else None,
        "build_s": round(build_s, 2),
        "warmup_s": round(warm_s, 2),
        "step_ms": round(1e3 * step_s, 2),
        "tokens_per_s": round(tok_s, 1),
        "flops_per_token": fpt,
        "mfu": round(tok_s * fpt / peak, 4) if peak else None,
        "device_peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }
    return out  # the model and optimiser go with this frame (main collects before the next variant)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny anchor, 2 steps: check the code paths")
    ap.add_argument("--variants", default=DEFAULT, help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32, help="sequences per step (160m variants)")
    ap.add_argument("--batch-410m", type=int, default=16)
    ap.add_argument("--branching", type=int, default=8, help="tree branching: bank size (8: 771M bank at 160m)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--host-steps", type=int, default=5, help="timed steps of the offload / disk variants")
    ap.add_argument("--host-warmup", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--storage-dir", default="", help="memory.storage.dir of the disk variant (default: $TMPDIR)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device table (throughput.py)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu.json; smoke: gpu_smoke)")
    ap.add_argument("extra", nargs="*", help="more key=value config overrides for every variant")
    a = ap.parse_args(argv)
    if a.smoke:
        a.seq, a.batch, a.batch_410m, a.steps, a.warmup, a.branching = 64, 4, 2, 2, 1, 4
        a.host_steps, a.host_warmup = 2, 1
        a.compile = False  # eager: seconds, not minutes (tests/test_compile.py checks compiled == eager)
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; run with --smoke on a CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        print(f"bench_gpu: unknown variant {bad[0]!r}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    out_path = Path(a.out or ROOT / "benchmarks" / "results" / ("gpu_smoke.json" if a.smoke else "gpu.json"))
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else ["bench_gpu.py", *argv])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "peak_flops": peak_flops(device, a.peak_tflops),
        "variants": {},
    }
    for n in names:
        t0 = time.perf_counter()
        try:
            res["variants"][n] = run_variant(n, VARIANTS[n], a, device)
        except torch.OutOfMemoryError as e:  # the batch does not fit: say so and go on
            res["variants"][n] = {"error": f"out of memory: {_first_line(e)}"}
        except Exception as e:  # a compile or device error in one variant: record it, measure the others
            res["variants"][n] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
        gc.collect()  # after the except block: the exception (and the frames it holds) is gone
        if device.type == "cuda":
            torch.cuda.empty_cache()
        v = res["variants"][n]
        print(
            f"{n:22} {time.perf_counter() - t0:6.1f}s  " + ", ".join(f"{k}={v[k]}" for k in v if k != "params"),
            flush=True,
        )
        _ratios(res)
        write_json(out_path, res)
    print(f"wrote {out_path}")
    return 0


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:300]


def _ratios(res: dict[str, Any]) -> None:
    v = res["variants"]

    def ms(k: str) -> float | None:
        return v.get(k, {}).get("step_ms")

    r: dict[str, float] = {}
    if ms("memory-160m") and ms("anchor-160m"):
        r["memory_over_anchor_160m"] = round(ms("memory-160m") / ms("anchor-160m"), 3)  # target <= 1.15
    if ms("memory-160m-offload") and ms("memory-160m"):
        r["offload_over_device_160m"] = round(ms("memory-160m-offload") / ms("memory-160m"), 3)  # target <= 1.05
    for k in ("memory-160m-offload-prefetch", "memory-160m-offload-async", "memory-160m-disk", "memory-160m-bf16"):
        if ms(k) and ms("memory-160m"):
            r[k.replace("memory-160m-", "").replace("-", "_") + "_over_device_160m"] = round(
                ms(k) / ms("memory-160m"), 3
            )
    if ms("anchor-160m-sdpa") and ms("anchor-160m"):
        r["sdpa_over_flex_160m"] = round(ms("anchor-160m-sdpa") / ms("anchor-160m"), 3)
    res["ratios"] = r


if __name__ == "__main__":
    sys.exit(main())
