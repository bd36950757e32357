"""Question: under the paper's protocol, how do the training modes (A2 co-train from a trained anchor, A3 frozen
          trained anchor, A4 co-train from scratch) and hierarchy vs flat (A3 at equal fetch: (32,64) vs leaf only
          (0,96) vs top only (96,0)) compare at the quickstart's scale? (../shared/PAPERS.md A1-A4, Table 7, Fig. 3c/d)
Command:  hmem train experiments/102_qs_memory.yaml experiment=protocol name=a3 train.mode=frozen \
              train.init_from=runs/quickstart/anchor            (a2: train.mode=cotrain; a3_leaf / a3_top:
              memory.levels=[0,96] / [96,0]; anchor_8m: 101_qs_anchor.yaml train.max_tokens=8000000)
          hmem eval runs/protocol/<name> --memory fetched      (anchor_8m: --memory none)
          python experiments/311_protocol_pairs.py --runs runs --out docs/results/protocol_facts.csv
          airports: the same with data.corpus=airports data.dir=data/quickstart_airports
              experiment=protocol_airports train.init_from=runs/quickstart_airports/anchor, then
              python experiments/311_protocol_pairs.py --corpus airports --out docs/results/protocol_airports.csv
          --set capacity: the quickstart's models at 4M tokens against 16M (experiments/313_capacity_curves.py)
              -> docs/results/capacity_<corpus>.csv
          --set capacity also holds the ~1M-parameter anchor (anchor.preset=small, 1.12M) and its memory run at the
              quickstart's 4M tokens: `hmem train experiments/101_qs_anchor.yaml anchor.preset=small
              experiment=capacity name=anchor_small` (and 102_qs_memory.yaml, name=memory_small)
          --set memory_type [--corpus airports]: the trials of `hmem sweep sweeps/memory_type.yaml` (airports:
              data.corpus=airports data.dir=data/quickstart_airports name=memory_type_airports), with the seeds of
              studies named <sweep>_seeds* (seeds 3-4 of LoRA and KV: space.memory.type=[lora,kv]
              space.train.seed=[3,4] name=memory_type_seeds34)
          --set smollm2: SmolLM2-135M with post-hoc memory (experiments/314_smollm2_posthoc_cpu.yaml, run by
              CONFIG=experiments/314_smollm2_posthoc_cpu.yaml experiments/310_smollm2_posthoc.sh): the model alone,
              with its fetched memory, with BM25 RAG, and with both -> docs/results/smollm2_facts.csv
          --set memory_lr: every trial of `hmem sweep sweeps/memory_lr.yaml` (and its rsLoRA variant, name=
              memory_lr_rslora, the command in the sweep's header) -> docs/results/memory_lr_facts.csv
Result:   docs/results/protocol_facts.csv (a record: paired differences with 95% CIs and verdicts) and
          experiments/LOG.md 2026-12-07 "issue 31". A4 is the quickstart's memory run and A1 its anchor (same seed).

Each row is one paired difference (a - b) of one metric over the items both runs were evaluated on (test
entities; analysis/compare.diff_runs: a bootstrap over items stratified by probe, and over seeds when several), with
the verdict of analysis/stats.py, in the schema of `hmem report`'s comparisons.csv so docs can quote it through
analysis/record.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit.analysis import compare, stats  # noqa: E402
from hmem_lit.utils import atomic_write_text  # noqa: E402

# (label a, label b, runs of a, runs of b, mode of a, mode of b): runs relative to --runs, one seed each
PAIRS = [
    ("A3 frozen", "A4 scratch", "protocol/a3", "quickstart/memory"),
    ("A2 co-train", "A4 scratch", "protocol/a2", "quickstart/memory"),
    ("A3 frozen", "A2 co-train", "protocol/a3", "protocol/a2"),
    ("A3 (32,64)", "A3 leaf only (0,96)", "protocol/a3", "protocol/a3_leaf"),
    ("A3 (32,64)", "A3 top only (96,0)", "protocol/a3", "protocol/a3_top"),
    ("A3 leaf only (0,96)", "A3 top only (96,0)", "protocol/a3_leaf", "protocol/a3_top"),
    ("A3 frozen", "anchor 8M tokens", "protocol/a3", "protocol/anchor_8m"),
    ("A4 scratch", "anchor 8M tokens", "quickstart/memory", "protocol/anchor_8m"),
    ("A2 co-train", "anchor 8M tokens", "protocol/a2", "protocol/anchor_8m"),
]
# each arm's own value (one seed: a CI over items only)
ARMS = [
    ("A1 anchor 4M tokens", "quickstart/anchor"),
    ("anchor 8M tokens", "protocol/anchor_8m"),
    ("A4 scratch", "quickstart/memory"),
    ("A3 frozen", "protocol/a3"),
    ("A2 co-train", "protocol/a2"),
    ("A3 leaf only (0,96)", "protocol/a3_leaf"),
    ("A3 top only (96,0)", "protocol/a3_top"),
]
# --set capacity (issue 31 item 5, 313_capacity_curves.py): the quickstart's three models at 4M tokens (3 seeds)
# against the same models trained to 16M (one seed), full `hmem eval` numbers
CAPACITY_ARMS = [
    ("anchor 4M tokens", "quickstart/anchor"),
    ("anchor 16M tokens", "capacity/anchor_16m"),
    ("dense 2x 4M tokens", "quickstart/dense_2x"),
    ("dense 2x 16M tokens", "capacity/dense_2x_16m"),
    ("memory 4M tokens", "quickstart/memory"),
    ("memory 16M tokens", "capacity/memory_16m"),
]
CAPACITY_PAIRS = [
    ("memory 4M tokens", "anchor 16M tokens", "quickstart/memory", "capacity/anchor_16m"),
    ("memory 4M tokens", "dense 2x 16M tokens", "quickstart/memory", "capacity/dense_2x_16m"),
    ("memory 16M tokens", "anchor 16M tokens", "capacity/memory_16m", "capacity/anchor_16m"),
    ("memory 16M tokens", "dense 2x 16M tokens", "capacity/memory_16m", "capacity/dense_2x_16m"),
    ("anchor 16M tokens", "anchor 4M tokens", "capacity/anchor_16m", "quickstart/anchor"),
    ("dense 2x 16M tokens", "dense 2x 4M tokens", "capacity/dense_2x_16m", "quickstart/dense_2x"),
    ("memory 16M tokens", "memory 4M tokens", "capacity/memory_16m", "quickstart/memory"),
    ("memory 4M tokens", "anchor 1.1M 4M tokens", "quickstart/memory", "capacity/anchor_small"),
    ("memory 1.1M 4M tokens", "anchor 1.1M 4M tokens", "capacity/memory_small", "capacity/anchor_small"),
    ("anchor 1.1M 4M tokens", "dense 2x 4M tokens", "capacity/anchor_small", "quickstart/dense_2x"),
]
CAPACITY_ARMS += [
    ("anchor 1.1M 4M tokens", "capacity/anchor_small"),  # anchor.preset=small: 4 layers, d 128 (4.7x the tiny)
    ("memory 1.1M 4M tokens", "capacity/memory_small"),  # its quickstart memory run (A4), 147k fetched (13%)
]
# --set smollm2 (issue 31 item 6): one run, four evaluation modes (run@mode)
SMOL = "smollm2_cpu/memory"
RAG = "rag-bm25-k1-inline"
SMOL_ARMS = [
    ("SmolLM2 alone", f"{SMOL}@none"),
    ("SmolLM2 + memory", f"{SMOL}@fetched"),
    ("SmolLM2 + RAG", f"{SMOL}@none-{RAG}"),
    ("SmolLM2 + RAG + memory", f"{SMOL}@fetched-{RAG}"),
]
SMOL_PAIRS = [
    ("SmolLM2 + memory", "SmolLM2 alone", f"{SMOL}@fetched", f"{SMOL}@none"),
    ("SmolLM2 + RAG", "SmolLM2 alone", f"{SMOL}@none-{RAG}", f"{SMOL}@none"),
    ("SmolLM2 + memory", "SmolLM2 + RAG", f"{SMOL}@fetched", f"{SMOL}@none-{RAG}"),
    ("SmolLM2 + RAG + memory", "SmolLM2 + RAG", f"{SMOL}@fetched-{RAG}", f"{SMOL}@none-{RAG}"),
]
SETS = {
    "protocol": (ARMS, PAIRS),
    "capacity": (CAPACITY_ARMS, CAPACITY_PAIRS),
    "memory_lr": ([], []),
    "memory_type": ([], []),
    "smollm2": (SMOL_ARMS, SMOL_PAIRS),
}
RATE_SWEEPS = [
    ("memory_lr", ""),
    ("memory_lr_rslora", " rsLoRA"),
    ("memory_lr_kv", ""),
    ("memory_lr_kv1", ""),
]  # sweeps/memory_lr.yaml


def _rate_arms(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str, str, str]], dict[str, float]]:
    """--set memory_lr: every trial of the rate sweeps (one seed: CIs over items), the shared frozen anchor, and the
    pairs of each type's best rate on DEV entities (the sweep's objective) against the anchor and each other."""
    arms, dev, best = [], {}, {}
    trials, anchors = [], set()
    for sweep, tag in RATE_SWEEPS:
        for d in (root / "sweeps" / sweep).glob("type-*"):
            if not (d / "final.json").is_file():
                continue
            fin = json.loads((d / "final.json").read_text())
            anchors.add(Path(fin["config"]["train"]["init_from"]).name)  # the frozen anchor the trial trained on
            kind, lr = fin["config"]["memory"]["type"] + tag, float(fin["config"]["optim"]["memory_lr"])
            score = ((fin.get("eval") or {}).get("fetched") or {}).get("dev/hmem_sk")
            if score is not None:
                trials.append((kind, lr, f"sweeps/{sweep}/{d.name}", float(score)))
    for anchor in sorted(anchors):  # not every anchor in _baselines: other sweeps (corpora, seeds) share it
        arms.append(("anchor (frozen)", f"sweeps/_baselines/{anchor}"))
    for kind, lr, r, score in sorted(trials):
        label = f"{kind} lr {lr:g}"
        arms.append((label, r))
        dev[label] = 100 * score
        if kind not in best or score > best[kind][2]:
            best[kind] = (label, r, score)
    pairs = [(la, arms[0][0], ra, arms[0][1]) for la, ra, _ in best.values()] if arms else []
    kinds = list(best)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            pairs.append((best[a][0], best[b][0], best[a][1], best[b][1]))
    return arms, pairs, dev


CORPUS = "facts"  # --corpus
METRICS = ["Avg-SK", "Avg-SK rare", "paraphrase", "QA", "MC hard", "val bpb"]


def _type_arms(root: Path, sweep: str) -> tuple[list[tuple[str, Any]], list[tuple[str, str, Any, Any]]]:
    """--set memory_type: the trials of `hmem sweep sweeps/memory_type.yaml` (each type at its own rate), one arm per
    type with its seeds in seed order (paired with the other types' runs of the same seed), every pair of types."""
    by: dict[str, list[tuple[int, str]]] = {}
    anchors: dict[int, str] = {}  # seed -> the frozen anchor that seed's trials trained on
    dirs = [root / "sweeps" / sweep, *sorted((root / "sweeps").glob(f"{sweep}_seeds*"))]  # more seeds: own studies
    for d in (x for s in dirs for x in s.glob("fetched-*")):
        if not (d / "final.json").is_file() or not any((d / "eval").glob("*/results.json")):
            continue
        c = json.loads((d / "final.json").read_text())["config"]
        scaling = (c["memory"].get("lora") or {}).get("scaling", "alpha/r") if c["memory"]["type"] == "lora" else ""
        label = f"{c['memory']['type'].upper()}{' ' + scaling if scaling else ''} lr {c['optim']['memory_lr']:g}"
        by.setdefault(label, []).append((int(c["train"]["seed"]), f"sweeps/{d.parent.name}/{d.name}"))
        anchors[int(c["train"]["seed"])] = f"sweeps/_baselines/{Path(c['train']['init_from']).name}"
    arms = [(k, [r for _, r in sorted(v)]) for k, v in sorted(by.items())]
    pairs = [(a[0], b[0], a[1], b[1]) for i, a in enumerate(arms) for b in arms[i + 1 :]]
    # the anchor alone, once every seed's anchor is evaluated (`hmem eval <anchor> --memory none`)
    ev = [r for _, r in sorted(anchors.items())]
    if ev and all(any((root / r / "eval").glob("*/results.json")) for r in ev):
        pairs = [(a[0], "anchor (frozen)", a[1], ev) for a in arms] + pairs
        arms = [("anchor (frozen)", ev), *arms]
    return arms, pairs  # type: ignore[return-value]


def _seeds(root: Path, r: str | list[str]) -> list[Path]:
    """The complete, evaluated runs of one arm: <r> (seed 0), <r>_seed1, <r>_seed2, ... as `hmem quickstart --seeds`
    names them; or the list of runs r, in seed order. `<r>@<mode>` reads the runs in that evaluation mode."""
    if isinstance(r, list):
        return [root / x for x in r]
    r, _, mode = r.partition("@")
    out = []
    for name in [r, *(f"{r}_seed{k}" for k in range(1, 10))]:
        p = root / name
        if (p / "final.json").is_file() and any((p / "eval").glob("*/results.json")):  # evaluated to the end
            if not mode or (p / "eval" / mode / "results.json").is_file():
                out.append(p.with_name(f"{p.name}@{mode}") if mode else p)
    return out


def _mode(run: Path) -> str:
    """The evaluation mode an arm's run is read in: the `@mode` of its name, else fetched when it has it."""
    if "@" in run.name:
        return run.name.partition("@")[2]
    return "fetched" if (run / "eval" / "fetched").is_dir() else "none"


def _dir(run: Path) -> Path:
    """The run directory itself (without an `@mode`)."""
    return run.with_name(run.name.partition("@")[0])


def _provenance(run: Path) -> dict[str, str]:
    res = json.loads((_dir(run) / "eval" / _mode(run) / "results.json").read_text())
    man = json.loads((_dir(run) / "manifest.json").read_text())
    return {
        "train_commit": str(man.get("git_sha") or "")[:8],
        "eval_commit": str((res.get("code") or {}).get("git_sha") or "")[:8],
        "date": str(res.get("date", ""))[:10],
        "metric_version": str(res.get("metric_version", "")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="the runs directory holding quickstart/ and protocol/")
    ap.add_argument("--out", default=None, help="default: docs/results/<set>_<corpus>.csv")
    ap.add_argument("--set", default="protocol", choices=sorted(SETS), help="which arms and pairs (see above)")
    ap.add_argument("--corpus", default="facts", choices=["facts", "airports"])
    a = ap.parse_args()
    root = Path(a.runs)
    global CORPUS
    CORPUS = a.corpus
    suffix = "" if a.corpus == "facts" else f"_{a.corpus}"  # runs/quickstart_airports, runs/protocol_airports

    def at(r: Any) -> Any:
        if isinstance(r, list):
            return r
        head, _, tail = r.partition("/")
        return f"{head}{suffix}/{tail}"

    a.out = a.out or f"docs/results/{a.set}_{a.corpus}.csv"
    arms, pairs = SETS[a.set]
    dev: dict[str, float] = {}
    if a.set == "memory_lr":
        arms, pairs, dev = _rate_arms(root)
    if a.set == "memory_type":
        arms, pairs = _type_arms(root, f"memory_type{suffix}")
    metrics = [*METRICS, "Avg-CK"] if a.set == "smollm2" else METRICS
    rows = []
    for label, r in arms:
        ps = _seeds(root, at(r))
        if not ps:
            continue
        arm = _arm(label, ps)  # read once, not once per metric
        for metric in metrics if arm is not None else []:
            spec = next(m for m in compare.METRICS if m.name == metric)
            keys = compare._keys([arm], spec)
            if not keys:
                continue
            iv = stats.bootstrap(compare._matrix(arm, spec, keys), seed=3)
            rows.append(_row(label, "value", "", metric, iv, "", ps, spec.scale))
        if label in dev:  # the sweep's objective (dev entities; final.json holds no items for a CI)
            nan = float("nan")
            rows.append(_row(label, "value", "", "dev SK", stats.Interval(dev[label], nan, nan, 0, (1,)), "", ps, 1.0))
    for la, lb, ra, rb in pairs:
        pa, pb = _seeds(root, at(ra)), _seeds(root, at(rb))
        n = min(len(pa), len(pb))  # the seeds both arms have
        if n == 0:
            print(f"skip {la} - {lb}: no complete runs")
            continue
        for metric in metrics:
            iv = _diff(pa[:n], pb[:n], metric)
            if iv is None:
                continue
            spec = next(m for m in compare.METRICS if m.name == metric)
            rows.append(_row(la, "diff", lb, metric, iv, stats.verdict(iv, spec.better), pa[:n] + pb[:n], 1.0))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = list(rows[0]) if rows else ["corpus"]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=head, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())
    print(f"{len(rows)} rows -> {out}")


def _row(
    arm: str, what: str, against: str, metric: str, iv: stats.Interval, verdict: str, runs: list[Path], scale: float
) -> dict[str, object]:
    return {
        "corpus": CORPUS,
        "arm": arm,
        "what": what,
        "against": against,
        "metric": metric,
        "estimate": round(iv.estimate * scale, 4),
        "ci_lo": None if math.isnan(iv.lo) else round(iv.lo * scale, 4),
        "ci_hi": None if math.isnan(iv.hi) else round(iv.hi * scale, 4),
        "verdict": verdict,
        "n_items": iv.n_items,
        "seeds": " ".join(str(k) for k in range(len(runs) if what == "value" else len(runs) // 2)),
        "runs": " ".join(f"{p.parent.name}/{p.name}" for p in runs),
        "config_hash": "",
        **_provenance(runs[0]),
    }


def _arm(label: str, paths: list[Path]) -> compare.Arm | None:
    """One arm from its seeds' runs, each read in its own memory mode (memory runs fetched, an anchor none)."""
    items = [compare._load(_dir(p), _mode(p)) for p in paths]
    if any(x is None for x in items):
        return None
    return compare.Arm(label, _mode(paths[0]), [_dir(p) for p in paths], list(range(len(paths))), items)  # type: ignore[arg-type]


def _diff(pa: list[Path], pb: list[Path], metric: str) -> stats.Interval | None:
    """a - b, paired over the items both arms scored, seeds resampled (analysis/compare.diff_runs, with each arm
    read in its own memory mode)."""
    a, b = _arm("a", pa), _arm("b", pb)
    if a is None or b is None:
        return None
    spec = next(x for x in compare.METRICS if x.name == metric)
    keys = compare._keys([a, b], spec)
    if not keys:
        return None
    iv = stats.bootstrap_diff(compare._matrix(a, spec, keys), compare._matrix(b, spec, keys), seed=2)
    return stats.Interval(iv.estimate * spec.scale, iv.lo * spec.scale, iv.hi * spec.scale, iv.n_items, iv.n_seeds)


if __name__ == "__main__":
    main()
