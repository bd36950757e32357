"""Evaluation speed (CPU): harness log-likelihood requests/s batched vs one at a time, and the share of
evaluation time spent on retrieval (prompt embedding + tree routing).

  .venv/bin/python -m benchmarks.bench_eval --quick     # ~1 minute on 2 cores
  .venv/bin/python -m benchmarks.bench_eval [--run-dir RUN]

Without --run-dir it prepares a small built-in corpus (TF-IDF embedder, 16 x 16 tree) in a temporary directory
and trains a small FFN-memory run on it for a few seconds: the numbers are about the evaluation machinery, not the
model's quality. (0) Greedy generation of the probes with the KV cache vs recomputing every step (same texts
required), interleaved over rounds. (1) The same multiple-choice requests (probe prompt + " " + choice) are scored with
batch_size=32 and batch_size=1, interleaved over rounds, routes cached beforehand so only the model path is timed;
the report is the median and the ratio. (2) `evaluate()` on hmem_sk + hmem_ck + hmem_wiki_ppl in fetched mode:
retrieval seconds / evaluation seconds, plus routing throughput split into embedding and tree descent. One torch
thread (the CPU is shared): compare ratios, not absolute times. Writes benchmarks/results/eval.json atomically.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hmem_lit.utils import read_json, write_json  # noqa: E402

DATA = [
    "data.source=builtin",
    "data.wiki_docs=600",
    "data.synthetic_entities=200",
    "data.vocab_size=1024",
    "retriever.depth=2",
]
RUN = [
    "anchor.preset=small",
    "memory.type=ffn",
    "memory.levels=[16,16]",
    "train.max_tokens=40000",
    "train.progress=false",
    "train.threads=1",
    "train.val_every=0",
    "train.ckpt_every=0",
    "name=bench_eval",
]


def build_run(tmp: Path, embedder: str) -> Path:
    from hmem_lit.config import load_config
    from hmem_lit.data.prepare import prepare
    from hmem_lit.train import train

    cfg = load_config(
        ROOT / "experiments" / "000_debug.yaml",
        [*DATA, f"retriever.embedder={embedder}", *RUN, f"data.dir={tmp / embedder}", f"out_dir={tmp / embedder}"],
    )
    prepare(cfg, progress=False, verbose=False)
    return train(cfg)


def mc_requests(data_dir: Path, n: int) -> list:
    from lm_eval.api.instance import Instance

    from hmem_lit.evaluation.tasklib import read_jsonl

    reqs = []
    for probe in ("element_symbol", "country_region", "synthetic_employer"):
        path = data_dir / "questions" / f"{probe}.mc.jsonl"  # the multiple-choice variant (its own file)
        for j, it in enumerate(read_jsonl(path) if path.is_file() else []):
            for c in it.get("choices", []):
                reqs.append(Instance("loglikelihood", it, (it["prompt"], " " + c), len(reqs), (probe, j, 1)))
    return reqs[:n]


def bench_loglikelihood(run_dir: Path, data_dir: Path, n: int, rounds: int) -> dict:
    from hmem_lit.evaluation.adapter import HmemLM

    lm = HmemLM(run_dir, memory="fetched", threads=1)
    reqs = mc_requests(data_dir, n)
    lm.loglikelihood(reqs[:8])
    lm._paths(reqs)  # warm the route cache: time the model path only
    times: dict[int, list[float]] = {32: [], 1: []}
    for _ in range(rounds):
        for bs in (32, 1):
            lm.batch_size = bs
            t0 = time.perf_counter()
            lm.loglikelihood(reqs)
            times[bs].append(time.perf_counter() - t0)
    med = {bs: statistics.median(t) for bs, t in times.items()}
    return {
        "requests": len(reqs),
        "rounds": rounds,
        "batched_32_req_per_s": round(len(reqs) / med[32], 1),
        "one_at_a_time_req_per_s": round(len(reqs) / med[1], 1),
        "speedup_batched": round(med[1] / med[32], 2),
    }


def gen_requests(data_dir: Path, n: int) -> list:
    """The generation probes (prompt, stop at a newline) as the evaluation sends them."""
    from lm_eval.api.instance import Instance

    from hmem_lit.evaluation.tasklib import read_jsonl

    reqs = []
    for path in sorted((data_dir / "questions").glob("*.jsonl")):
        for j, it in enumerate(read_jsonl(path)):
            if "choices" not in it and it.get("prompt"):
                reqs.append(
                    Instance("generate_until", it, (it["prompt"], {"until": ["\n"]}), len(reqs), (path.stem, j, 1))
                )
    step = max(1, len(reqs) // n)  # spread over the probes
    return reqs[::step][:n]


def bench_generation(run_dir: Path, data_dir: Path, n: int, rounds: int) -> dict:
    """Greedy generation with the KV cache (one new token per row per step) vs recomputing the whole sequence
    every step, interleaved over rounds; the texts must be the same."""
    from hmem_lit.evaluation.adapter import HmemLM

    lm = HmemLM(run_dir, memory="fetched", threads=1)
    reqs = gen_requests(data_dir, n)
    lm._paths(reqs)  # warm the route cache: time the model path only
    times: dict[bool, list[float]] = {True: [], False: []}
    texts: dict[bool, list[str]] = {}
    for _ in range(rounds):
        for cached in (True, False):
            lm.kv_cache = cached
            t0 = time.perf_counter()
            texts[cached] = lm.generate_until(reqs)
            times[cached].append(time.perf_counter() - t0)
    med = {c: statistics.median(t) for c, t in times.items()}
    return {
        "requests": len(reqs),
        "rounds": rounds,
        "cached_req_per_s": round(len(reqs) / med[True], 1),
        "recompute_req_per_s": round(len(reqs) / med[False], 1),
        "speedup_kv_cache": round(med[False] / med[True], 2),
        "same_texts": texts[True] == texts[False],
    }


def bench_retrieval_share(run_dir: Path, limit: int | None) -> dict:
    from hmem_lit.evaluation.routing import load_run_router
    from hmem_lit.evaluation.runner import evaluate
    from hmem_lit.runs import Run

    head = evaluate(
        run_dir,
        tasks=["hmem_sk", "hmem_ck", "hmem_wiki_ppl"],
        memory="fetched",
        limit=limit,
        force=True,
        threads=1,
        print_table=False,
    )
    res = read_json(run_dir / "eval" / "fetched" / "results.json")
    texts = sorted({s for s in _routed_texts(run_dir)})
    run = Run.open(run_dir)
    router = load_run_router(run.config, run.data_dir)
    t0 = time.perf_counter()
    router.embed(texts)
    t1 = time.perf_counter()
    router.route(texts)  # the run's router end to end (bm25: the vote; centroid: embedding + descent)
    t2 = time.perf_counter()
    return {
        "samples": head["n_samples"],
        "eval_s": head["eval_time_s"],
        "retrieval_s": head["retrieval_time_s"],
        "model_s": round(res["timing"]["model_s"], 3),
        "routed_texts": res["timing"]["routed_texts"],
        "retrieval_share": round(head["retrieval_time_s"] / head["eval_time_s"], 4),
        "embed_texts_per_s": round(len(texts) / (t1 - t0), 1),
        "route_texts_per_s": round(len(texts) / max(t2 - t1, 1e-9), 1),
    }


def cold_retrieval_share(run_dir: Path, limit: int | None) -> dict:
    """The same evaluation through `hmem eval` in a fresh process: routing then also pays lazy imports/loading."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "hmem_lit.cli",
        "eval",
        str(run_dir),
        "--tasks",
        "hmem_sk",
        "hmem_ck",
        "hmem_wiki_ppl",
        "--force",
        "--threads",
        "1",
    ] + (["--limit", str(limit)] if limit else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # here: a run's data dir is relative to it
    head = read_json(run_dir / "final.json")["eval"]["fetched"]
    return {
        "eval_s": head["eval_time_s"],
        "retrieval_s": head["retrieval_time_s"],
        "retrieval_share": round(head["retrieval_time_s"] / head["eval_time_s"], 4),
    }


def _routed_texts(run_dir: Path) -> list[str]:
    import json

    with open(run_dir / "eval" / "fetched" / "samples.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["route_text"] for line in f]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="an existing run on prepared data (default: build one)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--embedders", nargs="+", default=None, help="default: tfidf minilm (--quick: tfidf)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval.json"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    embedders = a.embedders or (["tfidf"] if a.quick else ["tfidf", "minilm"])
    if a.run_dir:
        embedders = ["given"]
    limit = 40 if a.quick else None
    out: dict = {"quick": a.quick, "torch_threads": 1, "retrieval": {}}
    out["config"] = {"run_dir": str(Path(a.run_dir).resolve())} if a.run_dir else DATA + RUN
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        for emb in embedders:
            t0 = time.perf_counter()
            run_dir = Path(a.run_dir) if a.run_dir else build_run(Path(tmp), emb)
            from hmem_lit.runs import Run

            out.setdefault("setup_s", {})[emb] = round(time.perf_counter() - t0, 1)
            if "loglikelihood" not in out:
                data_dir = Run.open(run_dir).data_dir
                out["loglikelihood"] = ll = bench_loglikelihood(
                    run_dir, data_dir, n=256 if a.quick else 1024, rounds=3 if a.quick else 5
                )
                print(
                    f"loglikelihood: {ll['batched_32_req_per_s']} req/s batched (32) vs "
                    f"{ll['one_at_a_time_req_per_s']} req/s one at a time -> {ll['speedup_batched']}x"
                )
            if "generation" not in out:
                data_dir = Run.open(run_dir).data_dir
                out["generation"] = gen = bench_generation(
                    run_dir, data_dir, n=256 if a.quick else 1024, rounds=3 if a.quick else 5
                )
                print(
                    f"generation: {gen['cached_req_per_s']} req/s with the KV cache vs "
                    f"{gen['recompute_req_per_s']} recomputing -> {gen['speedup_kv_cache']}x, "
                    f"same texts: {gen['same_texts']}"
                )
            share = bench_retrieval_share(run_dir, limit)
            share["cold_process"] = cold = cold_retrieval_share(run_dir, limit)
            out["retrieval"][emb] = share
            print(
                f"retrieval [{emb}]: {share['retrieval_s']:.2f}s of {share['eval_s']:.2f}s evaluation "
                f"({100 * share['retrieval_share']:.1f}%), {share['routed_texts']} unique texts; embedding "
                f"{share['embed_texts_per_s']} texts/s, routing {share['route_texts_per_s']} texts/s; "
                f"fresh `hmem eval` process: {cold['retrieval_s']:.2f}s of {cold['eval_s']:.2f}s "
                f"({100 * cold['retrieval_share']:.1f}%)"
            )
    write_json(a.out, out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
