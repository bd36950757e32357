"""Data preparation at corpus scale -> benchmarks/results/data_scale.json (written atomically).

Generates corpora of 100k and 1M documents (5M with --full) offline from the built-in Wikipedia summaries (each
document: 4 sentences drawn with a seeded RNG, ~170 tokens, like the issue's Wikipedia-sentence corpora), runs
`hmem data prepare` on each (data.source=files, tfidf, the default tree, vocab 2,048) in a fresh child process and
records per-stage seconds (from the manifest), documents/s and the child's peak RSS (wait4's ru_maxrss).

Usage: python benchmarks/bench_data_scale.py [--docs 100000 1000000] [--full] [--work DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.utils import atomic_write_text, read_json, write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "data_scale.json"
SETTINGS = ["retriever.embedder=tfidf", "retriever.depth=2", "data.vocab_size=2048"]


def sentences() -> list[str]:
    from hmem_lit.data.sources import read_wiki

    out: list[str] = []
    for w in read_wiki():
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", w["text"]) if len(s.split()) >= 4)
    return out


def generate(path: Path, n: int, seed: int = 0, per_doc: int = 4, chunk: int = 100_000) -> Path:
    """n JSONL documents of `per_doc` random sentences (deterministic for seed); reused when already complete."""
    if path.is_file() and path.with_suffix(".done").is_file():
        return path
    sents = np.array(sentences(), dtype=object)
    rng = np.random.default_rng([seed, n])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            pick = rng.integers(0, len(sents), size=(m, per_doc))
            f.write("".join(json.dumps({"text": " ".join(sents[row])}) + "\n" for row in pick))
    os.replace(tmp, path)
    atomic_write_text(path.with_suffix(".done"), str(n))
    return path


def run_prepare(corpus: Path, data_dir: Path, extra: list[str]) -> dict:
    """One `hmem data prepare` in a child process -> wall seconds, peak RSS, per-stage seconds."""
    exp = Path(__file__).resolve().parents[1] / "experiments" / "100_quickstart.yaml"
    cmd = [sys.executable, "-P", "-m", "hmem_lit.cli", "data", "prepare", str(exp), "data.source=files"]
    cmd += [f"data.files=[{corpus}]", f"data.dir={data_dir}", *SETTINGS, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_sum = _sample_tree_rss(proc.pid)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"prepare failed ({status}):\n{out[-4000:]}")
    st = read_json(data_dir / "manifest.json")["stages"]
    n = st["corpus"]["info"]["documents"]
    stages = {s: v.get("time_s", 0.0) for s, v in st.items()}
    return {
        "documents": n,
        "wall_s": round(wall, 2),
        "docs_per_s": round(n / wall, 1),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),  # Linux: KiB; the largest single process (driver or worker)
        # the prepare and its workers together, sampled every 0.25 s (psutil; None without it)
        "peak_rss_all_processes_mb": round(peak_sum[0] / 2**20, 1) if peak_sum else None,
        "stage_s": stages,
        "stage_docs_per_s": {s: round(n / t, 1) for s, t in stages.items() if t > 0},
        "stage_peak_rss_mb": {s: v.get("peak_rss_mb") for s, v in st.items()},
        "tree": {k: v for k, v in st["tree"]["info"]["stats"].items() if not k.startswith("level")},
        "tokenize_s": st["packing"]["info"].get("tokenize_s"),
        "padding": st["packing"]["info"]["train"]["padding"],
        "settings": SETTINGS + extra,
    }


def _sample_tree_rss(pid: int) -> list[int]:
    """[max over time of the summed RSS of pid and its descendants], filled by a daemon thread until pid exits."""
    try:
        import psutil
    except ImportError:
        return []
    import threading

    peak = [0]

    def run() -> None:
        try:
            root = psutil.Process(pid)
            while root.status() != psutil.STATUS_ZOMBIE:
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
                time.sleep(0.25)
        except psutil.Error:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--full", action="store_true", help="add a 5M-document corpus")
    ap.add_argument("--work", default="/tmp/hmem_data_scale")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every prepare")
    ap.add_argument("--label", default="default")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    sizes = a.docs + ([5_000_000] if a.full else [])
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = read_json(Path(a.out)) if Path(a.out).is_file() else {}
    runs = results.setdefault("runs", {})
    for n in sizes:
        t0 = time.perf_counter()
        corpus = generate(work / f"corpus_{n}.jsonl", n)
        gen_s = time.perf_counter() - t0
        data_dir = work / f"data_{a.label}_{n}"
        subprocess.run(["rm", "-rf", str(data_dir)], check=True)
        load_before = [round(v, 2) for v in os.getloadavg()]  # 1, 5, 15 min (the machine is shared)
        r = run_prepare(corpus, data_dir, list(a.set))
        r.update(generate_s=round(gen_s, 1), load_before=load_before)
        r["load_after"] = [round(v, 2) for v in os.getloadavg()]
        runs[f"{a.label}/{n}"] = r
        print(json.dumps({f"{a.label}/{n}": r}), flush=True)
        results.update(machine=platform.platform(), cpus=os.cpu_count())
        write_json(Path(a.out), results)


if __name__ == "__main__":
    main()
