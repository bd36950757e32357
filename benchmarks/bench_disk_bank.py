"""A bank larger than the RAM its process may use (memory.storage.kind=disk) -> benchmarks/results/disk_bank.json.

Trains the tiny anchor on the toy corpus with an FFN bank on a 16-way, 3-level tree (levels [0, 0, R]: 4,096
blocks), three ways, with `hmem train` in child processes:
  ram   the bank in RAM, uninterrupted, no memory cap (the reference);
  disk  memory.storage.kind=disk inside a memory cgroup capped at --cap-mib (all of the process's RAM, page cache
        included), SIGKILLed after its 2nd checkpoint (HMEM_KILL_AT=ckpt_committed@1) and rerun under the same
        cap to completion.
The bank's trained state (tables + two Adam moments, 12 bytes a parameter; 6 with --dtype bfloat16, which writes
disk_bank_bf16.json) is sized at --ratio x the cap. The JSON
records each process's peak RSS and the cgroup's peak usage, wall and training seconds, and whether the disk run's
final weights equal the RAM run's bit for bit (compared tensor by tensor, in row blocks).

Needs a writable memory cgroup (v1 or v2; root in a container usually has one); without it, --no-cgroup runs
the disk side uncapped and records only peak RSS. Disk: about 2 x the bank state for checkpoints plus the scratch
files, freed at the end.

Usage: python benchmarks/bench_disk_bank.py [--cap-mib 768] [--ratio 10] [--steps 40] [--work DIR] [--no-cgroup]
       [--quick] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.utils import read_json, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "disk_bank.json"
BRANCHING, DEPTH, C_UNIT = 16, 3, 3 * 64 * 2  # tiny anchor: FFN unit = gate + up + down rows, 2 layers x d 64


class Cgroup:
    """A child memory cgroup of this process's own, with a hard limit (v1 memory.limit_in_bytes / v2 memory.max)."""

    def __init__(self, limit: int):
        own = Path("/proc/self/cgroup").read_text().splitlines()
        v1 = [line.split(":", 2)[2] for line in own if line.split(":")[1] == "memory"]
        if v1:
            self.v2, base = False, Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/")
        else:
            self.v2, base = True, Path("/sys/fs/cgroup") / own[0].split(":", 2)[2].lstrip("/")
        self.path = base / f"hmem-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / ("memory.max" if self.v2 else "memory.limit_in_bytes")).write_text(str(limit))

    def enter(self) -> None:  # preexec_fn of the child
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        f = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / f).read_text()) if (self.path / f).is_file() else -1

    def oom_kills(self) -> int:
        f = self.path / ("memory.events" if self.v2 else "memory.oom_control")
        for line in f.read_text().splitlines() if f.is_file() else []:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return -1

    def reset_peak(self) -> None:
        if not self.v2:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def overrides(out: Path, name: str, r: int, steps: int, storage: str, dtype: str = "float32") -> list[str]:
    return [
        f"memory.storage.dtype={dtype}",
        f"out_dir={out}",
        f"name={name}",
        "memory.type=ffn",
        f"memory.levels=[0,0,{r}]",
        f"retriever.branching={BRANCHING}",
        f"retriever.depth={DEPTH}",
        f"memory.storage.kind={storage}",
        "data.seq_len=128",
        "train.batch_size=8",
        f"train.max_tokens={steps * 8 * 128}",
        f"train.ckpt_every={max(1, steps // 2)}",
        f"train.val_every={max(1, steps // 4)}",
        "train.val_batches=2",
        "train.log_every=5",
        "train.progress=false",
        "train.threads=1",
    ]


def run(args: list[str], kill_at: str | None = None, cgroup: Cgroup | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HMEM_KILL_AT", None)
    if kill_at:
        env["HMEM_KILL_AT"] = kill_at
    if cgroup:
        cgroup.reset_peak()
    t0 = time.time()
    log = Path(args[0].split("=", 1)[1]) / f"{args[1].split('=', 1)[1]}-{int(t0)}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hmem_lit.cli", "train", str(ROOT / "experiments" / "000_debug.yaml"), *args],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            preexec_fn=cgroup.enter if cgroup else None,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (Popen.wait would lose it)
    rec = {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.time() - t0, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "tail": log.read_text().strip().splitlines()[-2:],
    }
    text = log.read_text()
    resumed = text.split("resuming from step ")[1].split(";")[0] if "resuming from step " in text else None
    rec["resumed_from_step"] = int(resumed) if resumed is not None else None
    if cgroup:
        rec["cgroup_peak_mib"] = round(cgroup.peak() / 2**20, 1)
        rec["cgroup_oom_kills"] = cgroup.oom_kills()  # cumulative for the cgroup: 0 = the cap never killed
    return rec


def same_weights(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        for k in fa.keys():
            sa, sb = fa.get_slice(k), fb.get_slice(k)
            shape = sa.get_shape()
            if shape != sb.get_shape():
                return False
            if not shape:
                if not fa.get_tensor(k).equal(fb.get_tensor(k)):
                    return False
                continue
            for i in range(0, shape[0], 256):
                if not sa[i : i + 256].equal(sb[i : i + 256]):
                    return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap-mib", type=int, default=768, help="memory cap of the disk run's process (MiB)")
    ap.add_argument("--ratio", type=float, default=10.0, help="bank state (tables + moments) / cap")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hmem_disk_bank"))
    ap.add_argument("--no-cgroup", action="store_true", help="run the disk side uncapped (peak RSS only)")
    ap.add_argument("--out", type=Path, default=None, help="default results/disk_bank.json (bf16: disk_bank_bf16)")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="memory.storage.dtype of both runs"
    )
    ap.add_argument("--quick", action="store_true", help="a bank of 2x the cap, 12 steps (make bench --quick)")
    a = ap.parse_args()
    if a.quick:
        a.ratio, a.steps = 2.0, 12
    if a.out is None:
        a.out = OUT if a.dtype == "float32" else OUT.with_name("disk_bank_bf16.json")
    cap = a.cap_mib * 2**20
    width = 3 * (4 if a.dtype == "float32" else 2)  # bytes a parameter: the table + 2 moments
    r = max(1, round(a.ratio * cap / (width * C_UNIT * BRANCHING**DEPTH)))
    bank = C_UNIT * BRANCHING**DEPTH * r
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    res: dict = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs",
        "bank_params": bank,
        "bank_dtype": a.dtype,
        "bank_state_gib": round(width * bank / 2**30, 2),
        "cap_mib": None if a.no_cgroup else a.cap_mib,
        "levels": [0, 0, r],
        "steps": a.steps,
    }
    print(f"bank {bank:,} parameters ({res['bank_state_gib']} GiB with moments), cap {a.cap_mib} MiB", flush=True)
    ram = run(overrides(a.work, "ram", r, a.steps, "ram", a.dtype))
    res["ram"] = {**ram, "train_time_s": read_json(a.work / "000_debug" / "ram" / "final.json")["train_time_s"]}
    shutil.rmtree(a.work / "000_debug" / "ram" / "checkpoints")  # keep the weights only
    print("ram", json.dumps(res["ram"]), flush=True)
    cg = None
    if not a.no_cgroup:
        try:
            cg = Cgroup(cap)
        except OSError as e:  # no writable memory cgroup here: the disk side runs uncapped (peak RSS only)
            res["cap_mib"], res["cgroup_error"] = None, f"{type(e).__name__}: {e}"
            print(f"no memory cgroup ({e}); running uncapped", flush=True)
    try:
        args = overrides(a.work, "disk", r, a.steps, "disk", a.dtype)
        killed = run(args, kill_at="ckpt_committed@1", cgroup=cg)
        resumed = run(args, cgroup=cg)
    finally:
        if cg:
            cg.close()
    disk_dir = a.work / "000_debug" / "disk"
    final = read_json(disk_dir / "final.json") if (disk_dir / "final.json").is_file() else {}
    res["disk"] = {"killed": killed, "resumed": resumed, "train_time_s": final.get("train_time_s")}
    res["disk_equals_ram"] = bool(final) and same_weights(
        a.work / "000_debug" / "ram" / "model.safetensors", disk_dir / "model.safetensors"
    )
    print("disk", json.dumps(res["disk"]), "equal:", res["disk_equals_ram"], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, res)
    shutil.rmtree(a.work, ignore_errors=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
