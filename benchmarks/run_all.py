"""`make bench` / `hmem bench`: run every benchmarks/bench_*.py, then merge their JSON into one file and a table.

Each script writes benchmarks/results/<name>.json; this writes benchmarks/results/all.json with all of them plus
the machine they ran on. `--quick` passes --quick to each script.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from hmem_lit.utils import read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs (noisier)")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names, e.g. train memory")
    a = ap.parse_args(argv)
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if a.only is not None:
        known = [s.stem.removeprefix("bench_") for s in scripts]
        unknown = [n for n in a.only if n not in known]
        if unknown or not a.only:
            what = f"unknown benchmark {unknown[0]!r}" if unknown else "--only names no benchmark"
            print(f"bench: {what}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in a.only]
    merged: dict = {"machine": machine(), "quick": a.quick, "results": {}}
    for s in scripts:
        name = s.stem.removeprefix("bench_")
        out = RESULTS / f"{name}.json"
        cmd = [sys.executable, "-m", f"benchmarks.{s.stem}", "--out", str(out)] + (["--quick"] if a.quick else [])
        print(f"[bench] {' '.join(cmd[2:])}", flush=True)
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT)
        merged["results"][name] = (
            read_json(out) if r.returncode == 0 and out.is_file() else {"error": f"exit {r.returncode}"}
        )
        merged["results"][name]["wall_s"] = round(time.time() - t0, 1)
    write_json(RESULTS / "all.json", merged)
    print(f"[bench] wrote {RESULTS / 'all.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
