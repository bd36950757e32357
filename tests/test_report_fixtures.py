"""Fixture run directories for the report tests: two real tiny trainings (an anchor and an FFN-memory run), then
copies whose final.json gets other memory configs, seeds and params written into it, plus an `eval` section.

ALL EVAL NUMBERS HERE ARE SYNTHETIC TEST DATA (smooth made-up functions of the config, shaped like the papers'
trends so the figures can be read); they test the report's plumbing, not the model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from hmem_lit import runs
from hmem_lit.config import load_config
from hmem_lit.train import train
from hmem_lit.utils import write_json

ROOT = Path(__file__).resolve().parent.parent
DEBUG_YAML = ROOT / "experiments" / "000_debug.yaml"
TYPE_EFF = {"ffn": 1.0, "lora": 0.6, "kv": 0.35}  # synthetic: FFN > LoRA > KV
PER_R = {"ffn": 384, "lora": 512, "kv": 256}  # fetched params per unit of r for the tiny anchor (l=2, d=64)


def _real(out: Path, name: str, *extra: str) -> Path:
    ov = [
        f"out_dir={out}",
        f"name={name}",
        "experiment=fx",
        "train.progress=false",
        "train.max_tokens=4000",
        "train.threads=1",
        "train.log_every=1",
        "train.val_every=1",
        "train.batch_size=8",
        "data.seq_len=64",
        "data.toy_docs=300",
        *extra,
    ]
    return train(load_config(DEBUG_YAML, ov))


def synth_eval(
    sk: float, seed: int = 0, ppl: float | None = None, buckets_lift: float = 0.0, drop: tuple[str, ...] = ()
) -> dict:
    """Synthetic evaluation numbers (test data): Avg-SK `sk`, CK barely moving, per-bucket accuracy rising with
    frequency, memory's lift largest on the rarest bucket."""
    noise = 0.01 * ((seed * 7919) % 5 - 2)
    base = [0.04, 0.10, 0.22, 0.42, 0.66]
    ev = {
        "hmem_sk": sk + noise,
        "hmem_ck": 0.45 + 0.1 * (sk - 0.3) + noise / 2,
        "wiki_ppl": ppl if ppl is not None else 17.0 - 20.0 * (sk - 0.3) + 3 * noise,
        "wiki_bpb": 1.1 - (sk - 0.3),
        "n_samples": 200,
        "eval_time_s": 3.0,
    }
    for probe, scale in (("atomic_number", 1.0), ("capital", 0.8)):
        accs = [min(1.0, scale * b + buckets_lift * (1.0 - 0.2 * k) + noise) for k, b in enumerate(base)]
        ev[probe] = sum(accs) / len(accs)
        for k, a in enumerate(accs):
            ev[f"{probe}/bucket{k}"] = max(0.0, a)
            if buckets_lift > 0:  # memory runs: the share of prompts routed to their entity's main leaf
                ev[f"route/{probe}/bucket{k}"] = 0.8 + 0.04 * k
    for k in drop:
        ev.pop(k, None)
    return ev


def fake(
    src: Path,
    name: str,
    *,
    mem_type: str = "none",
    levels: list[int] | None = None,
    mode: str = "anchor",
    seed: int = 0,
    anchor: int | None = None,
    fetched: int = 0,
    bank: int = 0,
    eval: dict | None = None,
    generic: bool = False,
    n_layer: int | None = None,
) -> Path:
    """Copy of run `src` whose final.json describes another config (synthetic variety for the report tests)."""
    dst = src.parent / name
    shutil.copytree(src, dst)
    final = runs.read_final(dst)
    final.pop("eval", None)  # update_final merges sections: start this copy's evaluation from nothing
    write_json(dst / runs.FINAL, final)
    cfg = final["config"]
    pa = anchor or final["params"]["anchor"]
    mem = {**cfg["memory"], "type": mem_type, "levels": levels or [], "generic": generic}
    tr = {**cfg["train"], "mode": mode, "seed": seed}
    an = {
        **cfg["anchor"],
        **({"n_layer": n_layer} if n_layer else {}),
        **({"d_model": anchor // 2000} if anchor else {}),
    }
    runs.update_final(
        dst,
        name=name,
        params={"anchor": pa, "fetched": fetched, "bank": bank, "runtime": pa + fetched},
        config={"name": name, "memory": mem, "train": tr, "anchor": an},
    )
    if eval:
        runs.update_final(dst, eval=eval)
    # synthetic: shift the copied loss curve a little per run so training-curve figures show distinct lines
    f = 1.0 + 0.04 * (sum(map(ord, name)) % 9 - 4) / 4
    recs = [{k: (v * f if k.endswith("loss") else v) for k, v in r.items()} for r in runs.read_metrics(dst)]
    (dst / runs.METRICS).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return dst


def synth_separation(run: Path) -> None:
    """Minimal `hmem edit` / `hmem attribute` results in a memory run's separation/ folder (the figure kinds
    editing, attribution, errors read them)."""
    diff = {"n": 10, "before": 0.5, "after": 0.4, "diff": -0.1, "ci95": [-0.2, 0.0], "lost": 2, "gained": 1}
    side = {
        "edit_success": {"before": 0.0, "after": 0.9},
        "old_answer": {**diff, "before": 0.3, "after": 0.0},
        "locality": diff,
        "val_loss": {"before": 4.0, "after": 4.1},
    }
    ident = {
        "anchor_identical": True,
        "all_untouched_identical": True,
        "levels": {"1": {"changed": 3, "changed_off_paths": 0}},
    }
    write_json(
        run / "separation" / "edit-n5-s0-leaf-t8.json",
        {"tag": "edit-n5-s0-leaf-t8", "n": 5, "edited_documents": 20, "steps": 8,
         "memory": {**side, "identity": ident}, "dense": side},
    )  # fmt: skip
    cond = {"fetched": {"p": 0.6, "p/bucket0": 0.5, "p/bucket1": 0.7, "sk": 0.6}}
    cond["minus_l1"] = {"p": 0.5, "p/bucket0": 0.4, "p/bucket1": 0.6, "sk": 0.5}
    cond["none"] = {"p": 0.2, "p/bucket0": 0.1, "p/bucket1": 0.3, "sk": 0.2}
    bins = [{"purity_range": [0.5, 0.8], "items": 3, "accuracy": 0.5}]
    ents = [{"entities": [1, 3], "items": 3, "accuracy": None}]
    leaves = {"items": 3, "mean_purity": 0.9, "mean_entities": 4.0, "mean_docs": 9.0}
    example = {"cause": "not_stored", "probe": "p", "bucket": 0, "prompt": "Q", "answer": "A", "output": "B",
               "routed_leaf": 3, "main_leaf": 3, "leaf_kind": "synthetic", "leaf_purity": 1.0}  # fmt: skip
    write_json(
        run / "separation" / "attribution.json",
        {
            "items": 6,
            "conditions": cond,
            "held": {"minus_l1": {"lost_share_of_right": 0.25, "lost": 1}, "anchor_share_of_right": 0.1},
            "held_by": {"level1": 2, "anchor": 1},
            "errors": {
                "by_kind": {"synthetic": {"right": 3, "routed_elsewhere": 1, "not_stored": 2}},
                "accuracy_by_purity": bins,
                "accuracy_by_leaf_entities": ents,
                "leaves_right": leaves,
                "leaves_not_stored": leaves,
                "examples": [example],
            },
        },
    )


def build(out: Path) -> dict:
    """Fixture runs under out/fx/; returns what the tests expect to find."""
    a0 = _real(out, "anchor_s0")
    m0 = _real(
        out,
        "ffn_real",
        "memory.type=ffn",
        "memory.levels=[4,2]",
        "train.mode=scratch",
        "memory.generic=true",
        "train.probe_every=2",  # in-loop probes (real), for the inloop_probes figure; telemetry is on by default
    )
    pa = runs.read_final(a0)["params"]["anchor"]
    cost = {"flops_per_query": 5.0e6, "tokens_per_query": 40.0}  # synthetic: the rag figure's points
    rag = {"flops_per_query": 1.2e7, "tokens_per_query": 90.0, "rag_tokens": 50.0}
    runs.update_final(a0, eval={"none": {**synth_eval(0.30), **cost}, "none-rag-bm25-k1": {**synth_eval(0.33), **rag}})
    runs.update_final(
        m0,
        eval={
            "fetched": {**synth_eval(0.34, buckets_lift=0.1), **cost, "flops_per_query": 6.0e6},
            "fetched-rag-bm25-k1": {**synth_eval(0.37, buckets_lift=0.1), **rag, "flops_per_query": 1.3e7},
            "fetched-rag-bm25-k1-sep": {**synth_eval(0.34), **rag},  # the control: not a point
            "generic": synth_eval(0.31),
            "none": synth_eval(0.27),  # memory off: the leak figure
            "blocked": synth_eval(0.29),  # blocking curve
        },
    )
    synth_separation(m0)  # editing, attribution, errors figures
    made = {
        "anchor_s1": fake(a0, "anchor_s1", seed=1, eval={"none": synth_eval(0.30, seed=1)}),
        "pkm_h2h": fake(
            a0, "pkm_h2h", mem_type="pkm", mode="scratch", fetched=6000, bank=100000, eval={"fetched": synth_eval(0.31)}
        ),
        "dense2x": fake(
            a0, "dense2x", anchor=2 * pa, n_layer=4, eval={"none": {**synth_eval(0.36, buckets_lift=0.06)}}
        ),
    }
    # Fig. 3a/b: memory types x fetched size, level 1, frozen anchor; FFN r=16 over two seeds + generic control
    for t in ("ffn", "lora", "kv"):
        for r in (4, 16, 64):
            f = PER_R[t] * r
            sk = 0.30 + 0.035 * TYPE_EFF[t] * math.log2(1 + r)
            for seed in (0, 1) if (t, r) == ("ffn", 16) else (0,):
                ev = {"fetched": synth_eval(sk, seed, buckets_lift=(sk - 0.3) * 1.5)}
                if (t, r) == ("ffn", 16):
                    ev["generic"] = synth_eval(0.30 + (sk - 0.30) * 0.3, seed)
                if (t, r) == ("lora", 64):  # a run missing metrics
                    ev = {"fetched": synth_eval(sk, drop=("wiki_ppl", "hmem_ck"))}
                if (t, r) == ("kv", 64):  # complete but never evaluated
                    ev = None
                made[f"{t}_r{r}_s{seed}"] = fake(
                    a0,
                    f"{t}_r{r}_s{seed}",
                    mem_type=t,
                    levels=[r],
                    mode="frozen",
                    seed=seed,
                    fetched=f,
                    bank=16 * f,
                    eval=ev,
                )
    # Fig. 3c/d: deeper single levels (gain over the anchor)
    for lvl, rs in ((2, (4, 16)), (3, (1, 4))):
        for r in rs:
            lv = [0] * lvl
            lv[-1] = r
            sk = 0.30 + 0.04 * lvl * math.log2(1 + r)
            made[f"ffn_l{lvl}_r{r}"] = fake(
                a0,
                f"ffn_l{lvl}_r{r}",
                mem_type="ffn",
                levels=lv,
                mode="frozen",
                fetched=384 * r,
                bank=384 * 16**lvl * r,
                eval={"fetched": synth_eval(sk, buckets_lift=(sk - 0.3))},
            )
    # Fig. 4a / Table 7: equal banks, different fetch
    for r1, r2 in ((32, 0), (16, 1), (0, 2), (128, 0), (64, 4), (0, 8)):
        bank, f = 384 * (16 * r1 + 256 * r2), 384 * (r1 + r2)
        sk = 0.30 + 0.02 * math.log2(bank / 384) + 0.01 * math.log2(1 + f / 384)
        made[f"ffn_{r1}_{r2}"] = fake(
            a0,
            f"ffn_{r1}_{r2}",
            mem_type="ffn",
            levels=[r1, r2],
            mode="frozen",
            fetched=f,
            bank=bank,
            eval={"fetched": synth_eval(sk)},
        )
    # Fig. 4b / Table 8: fixed runtime budget B; anchors shrink as the fetch grows; their anchor-only runs too
    budget = int(1.5 * pa)
    made["dense_budget"] = fake(a0, "dense_budget", anchor=budget, n_layer=3, eval={"none": synth_eval(0.33, ppl=14.0)})
    for ratio in (0.06, 0.1, 0.18, 0.3, 0.6):
        a = int(budget / (1 + ratio))
        f = budget - a
        ppl_mem = 13.0 + 8 * (math.log10(ratio) + 1) ** 2  # synthetic U shape, best near 1:10
        ppl_alone = 14.0 + 10 * (budget - a) / budget
        made[f"ratio_{ratio}"] = fake(
            a0,
            f"ratio_{ratio}",
            mem_type="ffn",
            levels=[f // 384],
            mode="cotrain",
            anchor=a,
            fetched=f,
            bank=16 * f,
            eval={"fetched": synth_eval(0.33, ppl=ppl_mem)},
        )
        made[f"ratio_{ratio}_alone"] = fake(
            a0, f"ratio_{ratio}_alone", anchor=a, eval={"none": synth_eval(0.32, ppl=ppl_alone)}
        )
    crashed = fake(a0, "crashed", mem_type="ffn", levels=[8], mode="frozen", fetched=3072, bank=16 * 3072)
    (crashed / runs.FINAL).unlink()
    return {"root": out, "anchor": a0, "memory": m0, "made": made, "incomplete": crashed, "pa": pa, "budget": budget}
