"""Peak memory of `hmem data prepare` on a corpus holding one huge document -> benchmarks/results/big_document.json.

Issue 35, class 1: memory must be bounded by the piece (documents are cut at 100k characters, the tokenizer gets at
most 2M characters at a time), not by the document. Generates one JSONL line of `--mb` megabytes of seeded random
words, runs `hmem data prepare` (the debug experiment, vocab 1,024, a 4x2 tree) in a child process and records its
peak RSS (wait4's ru_maxrss) and each stage's peak from the manifest. `--code DIR` runs another checkout's code
(e.g. a worktree at 8c46e6d for the "before" figure) on the same file; the result is keyed by `--label`.

Usage: python benchmarks/bench_big_document.py [--mb 55] [--code DIR --label before] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hmem_lit.utils import read_json, write_json  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "big_document.json"
SETTINGS = ["data.vocab_size=1024", "retriever.branching=4", "retriever.depth=2"]


def generate(path: Path, mb: int, seed: int = 0) -> Path:
    """One JSON line whose text is `mb` MB of words like `eta776` (deterministic for seed); reused when complete."""
    if path.is_file() and path.stat().st_size >= mb * 10**6:
        return path
    rng = np.random.default_rng([seed, mb])
    stems = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "eta", "theta", "iota", "kappa", "lambda", "mu"])
    parts: list[str] = []
    size = 0
    while size < mb * 10**6:
        words = np.char.add(stems[rng.integers(0, len(stems), 100_000)], rng.integers(0, 1000, 100_000).astype(str))
        chunk = " ".join(words.tolist())
        parts.append(chunk)
        size += len(chunk) + 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"text": " ".join(parts)}) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run(corpus: Path, data_dir: Path, code: Path) -> dict:
    cmd = [sys.executable, "-P", "-c", "import sys; from hmem_lit.cli import main; sys.exit(main(sys.argv[1:]))"]
    cmd += ["data", "prepare", str(code / "experiments" / "000_debug.yaml"), "data.source=files"]
    cmd += [f"data.files=[{corpus}]", f"data.dir={data_dir}", *SETTINGS]
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, ru = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"prepare failed ({status}):\n{out[-4000:]}")
    stages = read_json(data_dir / "manifest.json")["stages"]
    git = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "code": git.stdout.strip() or str(code),
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),  # Linux: KiB
        "stage_peak_rss_mb": {s: v.get("peak_rss_mb") for s, v in stages.items()},
        "documents": stages["corpus"]["info"].get("documents"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=55)
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose hmem_lit runs (default: this one)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--work", default="/tmp/hmem_big_document")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = generate(work / f"one_{a.mb}mb.jsonl", a.mb)
    data_dir = work / f"data_{a.label}"
    if data_dir.exists():
        sys.exit(f"{data_dir} exists; remove it or pass another --label / --work")
    res = run(corpus, data_dir, Path(a.code).resolve())
    results = read_json(Path(a.out)) if Path(a.out).is_file() else {}
    results.setdefault("runs", {})[a.label] = {"mb": a.mb, "document_chars": corpus.stat().st_size, **res}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%F")}
    results["settings"] = SETTINGS
    write_json(Path(a.out), results)
    print(json.dumps(results["runs"][a.label], indent=1))


if __name__ == "__main__":
    main()
