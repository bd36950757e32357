"""Knowledge editing (issue 17, knowledge separation): change N entities' answers in the corpus, retrain only the
memory blocks on their documents' paths with the anchor frozen, and measure what changed.

    hmem edit RUN [--baseline ANCHOR_RUN] [--n 100] [--seed 0] [--steps 80] [--levels all|leaf]

The edit (`plan_edits`): N synthetic people (seeded) get a new birth city, drawn from the other people's cities.
Their fact documents are regenerated from the corpus's own recipe (facts.write_docs with the entity's seeded
generator: the same templates and sentence order, only the city differs; the original documents are regenerated
first and must equal the corpus's, byte for byte) and keep the tree paths of the original preparation, so the
edit goes to the blocks the facts lived in. They are packed like training data (same-leaf rows).

The memory edit (`edit_train`): from the trained memory run's final weights, anchor frozen, the row-wise AdamW
(hmem_lit/optim.py) at the run's memory LR, `steps` steps over the edited rows only (fetched mode, no generic
block). `--levels leaf` trains only the deepest level's rows. `identity_report` then checks, by comparing every
tensor, that the anchor and every bank row off the edited paths are bit-identical.

The dense comparison: the anchor-only run fine-tuned (every parameter, AdamW at its own LR) on the same rows for
the same steps.

Measured per model (`run_edit`), on the probes scored directly (studies/direct.py): edit success (the new city,
`synthetic_city` of the edited people), the old city's retention, the edited people's other facts, locality (every
item of the unedited entities, before vs after, with a bootstrap 95% interval and the flips; memory: also split by
whether the item's routed leaf is on an edited path) and held-out loss. Written to
`<RUN>/separation/edit-n<N>-s<seed>-<levels>.json` (atomically); the report's `editing` figure kind draws it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmem_lit.anchor import lm_loss
from hmem_lit.config import ConfigError
from hmem_lit.data import facts
from hmem_lit.data.datamodule import make_collate
from hmem_lit.data.packing import pack
from hmem_lit.data.tokenizer import load_tokenizer
from hmem_lit.evaluation.resources import check_threads
from hmem_lit.evaluation.routing import load_run_router
from hmem_lit.model import load_model
from hmem_lit.optim import build_optimizer, clip_gradients
from hmem_lit.runs import resolve_data_dir
from hmem_lit.studies import direct
from hmem_lit.utils import read_json, set_threads, write_json

EDIT_PROBE = "synthetic_city"  # the probe whose answer the edit changes


# ------------------------------------------------------------------------------------------------ the edit


def plan_edits(entities: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """N synthetic people (seeded) and a new birth city for each: [{index, entity, old, new}] (index: position in
    corpus/entities.json, which is also the entity's document generator's seed)."""
    synth = [i for i, e in enumerate(entities) if e["kind"] == "synthetic"]
    if not 1 <= n <= len(synth):
        raise ConfigError(f"--n: must be in 1..{len(synth)} (the corpus's synthetic people), got {n}")
    rng = np.random.default_rng([seed, 23])
    cities = sorted({entities[i]["attrs"]["city"] for i in synth})
    if len(cities) < 2:
        raise ConfigError("the corpus has fewer than two birth cities: nothing to edit to")
    out = []
    for i in sorted(int(synth[k]) for k in rng.choice(len(synth), n, replace=False)):
        old = entities[i]["attrs"]["city"]
        new = old
        while new == old:
            new = cities[int(rng.integers(len(cities)))]
        out.append({"index": i, "entity": entities[i]["name"], "old": old, "new": new})
    return out


def edited_documents(
    entities: list[dict[str, Any]], docs: list[dict], split: np.ndarray, plan: list[dict[str, Any]], data_seed: int
) -> tuple[list[int], list[str]]:
    """-> (corpus indices of the edited training documents, their new texts). Raises ValueError when the corpus's
    documents cannot be regenerated exactly (a corpus built by another version of facts.py)."""
    by_entity: dict[str, list[int]] = {}
    for j, (d, s) in enumerate(zip(docs, split)):
        if s == 0 and d.get("entity"):
            by_entity.setdefault(d["entity"], []).append(j)
    idx: list[int] = []
    texts: list[str] = []
    for ed in plan:
        ent = entities[ed["index"]]
        own = by_entity.get(ent["name"], [])
        orig = facts.write_docs(ent, np.random.default_rng([data_seed, 2, ed["index"]]))
        if orig != [docs[j]["text"] for j in own]:
            raise ValueError(f"{ent['name']}: its corpus documents differ from facts.write_docs' (another version?)")
        new_ent = copy.deepcopy(ent)
        new_ent["attrs"]["city"] = ed["new"]
        idx += own
        texts += facts.write_docs(new_ent, np.random.default_rng([data_seed, 2, ed["index"]]))
    return idx, texts


def edit_rows(tok: Any, texts: list[str], idx: list[int], paths: np.ndarray, seq_len: int, seed: int) -> Any:
    """The edited documents packed like training data (data/packing.py) -> Packed (tokens, paths, ...)."""
    ids = [np.asarray(t, np.int32) for t in tok.encode_batch(texts)]
    return pack(ids, np.asarray(idx), paths[np.asarray(idx)], seq_len, tok.eot_id, tok.pad_id, seed=seed)


# ------------------------------------------------------------------------------------------------ training


def edit_train(
    model: Any,
    cfg: Any,
    tokens: np.ndarray,
    paths: np.ndarray | None,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    levels: str = "all",
    eot_id: int = 0,
    pad_id: int = 1,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    replay_frac: float = 0.0,
) -> list[float]:
    """Train `model` in place on `tokens` (R, seq_len + 1) for `steps` steps -> the losses. paths given: a memory
    edit (anchor frozen, bank rows only; levels=leaf: only the deepest level), the row-wise AdamW at a constant
    memory LR `lr`; paths None: a dense fine-tune of every parameter at a constant LR `lr`. replay (tokens,
    paths): other rows that fill round(batch_size * replay_frac) of every batch (the edited leaves' unedited
    training rows: the block keeps rehearsing what else it holds)."""
    memory = paths is not None
    if memory:
        model.anchor.requires_grad_(False)
        for p in model.memory.parameters():
            p.requires_grad_(True)
        if levels == "leaf":
            tables = model.memory.bank.tables()
            for _lvl, _, t in tables[:-1]:
                t.requires_grad_(False)
        o = dataclasses.replace(cfg.optim, memory_lr=lr, memory_min_lr=lr, warmup=0)
    else:
        model.requires_grad_(True)
        o = dataclasses.replace(cfg.optim, lr=lr, min_lr=lr, warmup=0)
    ecfg = dataclasses.replace(cfg, optim=o)
    opt = build_optimizer(model, ecfg, steps)
    optimizer, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    collate = make_collate(eot_id, pad_id)
    rng = np.random.default_rng([seed, 29])
    n_rep = int(round(batch_size * replay_frac)) if replay is not None and len(replay[0]) else 0
    order: list[int] = []
    rep_order: list[int] = []
    losses = []
    model.train()
    torch.manual_seed(seed)
    for _ in range(steps):
        while len(order) < batch_size - n_rep:
            order += rng.permutation(len(tokens)).tolist()
        while len(rep_order) < n_rep:
            rep_order += rng.permutation(len(replay[0])).tolist()  # type: ignore[index]  # n_rep > 0: replay set
        take, order = order[: batch_size - n_rep], order[batch_size - n_rep :]
        rows = [(np.asarray(tokens[i], np.int64), paths[i] if paths is not None else np.zeros(1), i) for i in take]
        if n_rep:
            assert replay is not None
            rows += [
                (np.asarray(replay[0][i], np.int64), replay[1][i] if memory else np.zeros(1), i)
                for i in rep_order[:n_rep]
            ]
            rep_order = rep_order[n_rep:]
        b = collate(rows)
        logits = model(
            b["input_ids"], doc_ids=b["doc_ids"], paths=b["paths"] if memory else None,
            memory_mode="fetched" if memory else "none",
        )  # fmt: skip
        loss = lm_loss(logits, b["targets"])
        loss.backward()
        clip_gradients(model, ecfg)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if memory:
        model.memory.bank.wait()  # write-back (memory.storage.async_update): the edit's last row updates are written
    model.eval()
    return losses


def identity_report(before: dict[str, torch.Tensor], model: Any, edit_paths: np.ndarray) -> dict[str, Any]:
    """Compare every tensor with its value before the edit: the anchor (and any memory tensor outside the bank)
    must be bit-identical, and so must every bank row that is not on an edited path; -> the counts per level."""
    after = model.state_dict()
    bank = {f"memory.bank.level{lvl}": (lvl, t) for lvl, _, t in model.memory.bank.tables()}
    others = [k for k in before if k not in bank]
    out: dict[str, Any] = {
        "anchor_identical": all(torch.equal(before[k], after[k]) for k in others if k.startswith("anchor.")),
        "other_identical": all(torch.equal(before[k], after[k]) for k in others),
        "levels": {},
    }
    ok = out["other_identical"]
    for key, (lvl, _) in bank.items():
        b, a = before[key], after[key]
        changed = (b != a).any(dim=1)
        allowed = torch.zeros(b.shape[0], dtype=torch.bool)
        allowed[torch.as_tensor(np.unique(edit_paths[:, lvl - 1]), dtype=torch.long)] = True
        rep = {
            "rows": int(b.shape[0]),
            "on_edited_paths": int(allowed.sum()),
            "changed": int(changed.sum()),
            "changed_off_paths": int((changed & ~allowed).sum()),
            "off_paths_identical": bool(torch.equal(b[~allowed], a[~allowed])),
        }
        ok = ok and rep["off_paths_identical"]
        out["levels"][str(lvl)] = rep
    out["all_untouched_identical"] = bool(ok)
    return out


@torch.no_grad()
def val_loss(model: Any, tokens: np.ndarray, paths: np.ndarray | None, eot_id: int, pad_id: int) -> float:
    """Token-weighted mean next-token loss on held-out rows (memory: fetched along the rows' paths)."""
    collate = make_collate(eot_id, pad_id)
    total, n = 0.0, 0
    model.eval()
    for s in range(0, len(tokens), 16):
        b = collate([(np.asarray(tokens[i], np.int64), paths[i] if paths is not None else np.zeros(1), i)
                     for i in range(s, min(s + 16, len(tokens)))])  # fmt: skip
        logits = model(
            b["input_ids"], doc_ids=b["doc_ids"], paths=b["paths"] if paths is not None else None,
            memory_mode="fetched" if paths is not None else "none",
        )  # fmt: skip
        t = b["targets"]
        m = t != -100
        lp = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), t.flatten(), reduction="none", ignore_index=-100
        )
        total += float(lp.sum())
        n += int(m.sum())
    return total / max(1, n)


# ------------------------------------------------------------------------------------------------ the experiment


def _groups(items: list[dict[str, Any]], plan: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    edited = {ed["entity"] for ed in plan}
    is_edit = np.array([it["probe"] == EDIT_PROBE and it["entity"] in edited for it in items])
    same = np.array([it["entity"] in edited and not e for it, e in zip(items, is_edit)])
    rest = np.array([it["entity"] not in edited for it in items])
    return {"edit": is_edit, "same_entity": same, "rest": rest}


def _measure(
    model: Any, items: list[dict], enc: list, enc_new: list, paths: np.ndarray | None, groups: dict[str, np.ndarray]
) -> dict[str, Any]:
    ok, lp = direct.score(model, enc, paths)
    e = groups["edit"]
    ok_new, lp_new = direct.score(model, [x for x, m in zip(enc_new, e) if m], None if paths is None else paths[e])
    return {"ok": ok, "lp": lp, "ok_new": ok_new, "lp_new": lp_new}


def _check_edit_args(steps: int, levels: str, memory_lr: float | None, dense_lr: float | None, replay: float) -> None:
    if steps < 1:
        raise ConfigError(f"--steps: must be >= 1, got {steps}")
    for name, v in (("--memory-lr", memory_lr), ("--dense-lr", dense_lr)):
        if v is not None and not v > 0:
            raise ConfigError(f"{name}: must be > 0, got {v} (omit it for the run's own LR)")
    if not 0 <= replay < 1:
        raise ConfigError(
            f"--replay: the share of each batch from the edited leaves' other rows, in [0, 1), got {replay}"
        )
    if levels not in ("all", "leaf"):
        raise ConfigError(f"--levels: all | leaf, got {levels!r}")


def _load_baseline(baseline: str | Path, run_dir: Path, cfg: Any, root: Path) -> tuple[Any, Any]:
    """The dense comparison's (model, cfg): an anchor-only run of the same data as run_dir, else ConfigError."""
    base = load_model(baseline)
    if base[1].memory.type != "none":
        raise ConfigError(f"--baseline {baseline}: must be an anchor-only run (memory.type=none)")
    if resolve_data_dir(base[1]).resolve() != root.resolve() or base[1].data.source != cfg.data.source:
        raise ConfigError(
            f"--baseline {baseline}: trained on other data ({resolve_data_dir(base[1])}, data.source="
            f"{base[1].data.source}) than {run_dir} ({root}); give an anchor run of the same data"
        )
    return base


@dataclasses.dataclass
class _EditData:
    """What both models are edited with and measured on (run_edit's plan phase)."""

    tok: Any
    plan: list[dict[str, Any]]
    idx: list[int]  # corpus indices of the edited training documents
    packed: Any  # the edited documents packed into rows (edit_rows)
    items: list[dict[str, Any]]  # the probe items, scored directly
    enc: list  # encoded with their answers
    enc_new: list  # encoded with the edited answers (new_answer)
    groups: dict[str, np.ndarray]  # _groups: edit / same_entity / rest
    routed: np.ndarray  # each item's routed path
    edited_leaves: set[int]
    on_path: np.ndarray  # the item's routed leaf is an edited leaf
    buckets: np.ndarray
    val_tok: np.ndarray
    val_paths: np.ndarray
    replay: tuple[np.ndarray, np.ndarray] | None  # (tokens, paths) of the edited leaves' other rows


def _replay_rows(root: Path, n_docs: int, idx: list[int], edited_leaves: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """The edited leaves' training rows that hold no edited document -> (tokens, paths)."""
    tr_paths = np.load(root / "packed" / "train_paths.npy")
    d = np.load(root / "packed" / "train_docs.npz")
    edited = np.zeros(n_docs, bool)
    edited[idx] = True
    holds = np.add.reduceat(edited[d["doc_ids"]].astype(int), d["doc_ptr"][:-1]) > 0
    keep = np.nonzero(np.isin(tr_paths[:, -1], list(edited_leaves)) & ~holds)[0]
    return np.load(root / "packed" / "train_tokens.npy", mmap_mode="r")[keep], tr_paths[keep]


def _edit_data(root: Path, cfg: Any, n: int, seed: int, val_rows: int, replay: float) -> _EditData:
    """Plan the edit, regenerate and pack the edited documents, encode and route the probe items."""
    entities = read_json(root / "corpus" / "entities.json")
    docs = [json.loads(x) for x in open(root / "corpus" / "docs.jsonl", encoding="utf-8")]
    split = np.load(root / "corpus" / "split.npy")
    doc_paths = np.load(root / "tree" / "doc_paths.npy")
    tok = load_tokenizer(root)
    plan = plan_edits(entities, n, seed)
    idx, texts = edited_documents(entities, docs, split, plan, cfg.data.seed)
    packed = edit_rows(tok, texts, idx, doc_paths, cfg.data.seq_len, seed)
    items = direct.probe_items(root)
    new_of = {ed["entity"]: ed["new"] for ed in plan}
    items_new = [{**it, "new_answer": new_of.get(it["entity"], it["answer"])} for it in items]
    enc = direct.encode(items, tok)
    enc_new = direct.encode(items_new, tok, answer_key="new_answer")
    groups = _groups(items, plan)
    routed = np.asarray(load_run_router(cfg).route([it.get("route_text") or it["prompt"] for it in items]))
    edited_leaves = set(packed.paths[:, -1].tolist())
    on_path = np.array([int(p[-1]) in edited_leaves for p in routed])
    val_tok = np.load(root / "packed" / "val_tokens.npy", mmap_mode="r")[:val_rows]
    val_paths = np.load(root / "packed" / "val_paths.npy")[:val_rows]
    rep = _replay_rows(root, len(docs), idx, edited_leaves) if replay > 0 else None
    buckets = np.array([it["bucket"] for it in items])
    return _EditData(
        tok=tok, plan=plan, idx=idx, packed=packed, items=items, enc=enc, enc_new=enc_new, groups=groups,
        routed=routed, edited_leaves=edited_leaves, on_path=on_path, buckets=buckets, val_tok=val_tok,
        val_paths=val_paths, replay=rep,
    )  # fmt: skip


def _effects(ed: _EditData, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Edit success, the old answer, the edited people's other facts and locality, before vs after."""
    e, rest, buckets = ed.groups["edit"], ed.groups["rest"], ed.buckets
    same = ed.groups["same_entity"]
    return {
        "edit_success": {"before": float(before["ok_new"].mean()), "after": float(after["ok_new"].mean())},
        "edit_success_by_bucket": {
            str(b): float(after["ok_new"][buckets[e] == b].mean()) for b in sorted(set(buckets[e].tolist()))
        },
        "old_answer": direct.paired_diff(before["ok"][e], after["ok"][e]),
        "same_entity_other": direct.paired_diff(before["ok"][same], after["ok"][same]),
        "locality": direct.paired_diff(before["ok"][rest], after["ok"][rest]),
        "locality_lp_mean_change": float((after["lp"][rest] - before["lp"][rest]).mean()),
    }


def _edit_and_measure(
    ed: _EditData,
    kind: str,
    m: Any,
    mpaths: np.ndarray | None,
    lr: float,
    src: Path,
    mcfg: Any,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    levels: str,
    replay: float,
) -> dict[str, Any]:
    """Measure model m, edit it in place (edit_train) and measure it again -> its part of the result. mpaths: the
    items' routed paths for the memory edit, None for the dense fine-tune."""
    tok, vp = ed.tok, ed.val_paths if mpaths is not None else None
    before = _measure(m, ed.items, ed.enc, ed.enc_new, mpaths, ed.groups)
    vl0 = val_loss(m, ed.val_tok, vp, tok.eot_id, tok.pad_id)
    state0 = {k: v.detach().clone() for k, v in m.state_dict().items()}
    t0 = time.perf_counter()
    losses = edit_train(
        m, mcfg, ed.packed.tokens, ed.packed.paths if mpaths is not None else None, steps, batch_size, lr, seed,
        levels, tok.eot_id, tok.pad_id, ed.replay, replay,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    after = _measure(m, ed.items, ed.enc, ed.enc_new, mpaths, ed.groups)
    res: dict[str, Any] = {
        "kind": kind,
        "run": str(src),
        "lr": lr,
        "levels": levels if mpaths is not None else "dense",
        "train_s": round(secs, 2),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        **_effects(ed, before, after),
        "val_loss": {"before": vl0, "after": val_loss(m, ed.val_tok, vp, tok.eot_id, tok.pad_id)},
    }
    if mpaths is not None:
        rest = ed.groups["rest"]
        for name, mask in (
            ("locality_edited_leaves", rest & ed.on_path),
            ("locality_other_leaves", rest & ~ed.on_path),
        ):
            res[name] = direct.paired_diff(before["ok"][mask], after["ok"][mask])
            res[name]["max_abs_lp_change"] = float(np.abs(after["lp"][mask] - before["lp"][mask]).max(initial=0.0))
        res["identity"] = identity_report(state0, m, ed.packed.paths)
    return res


def _edit_tag(
    n: int,
    seed: int,
    levels: str,
    replay: float,
    steps: int,
    memory_lr: float | None,
    dense_lr: float | None,
    baseline: str | Path | None,
) -> str:
    """The result's name: edit-n<N>-s<seed>-<levels>, then only the options that differ from the defaults."""
    tag = f"edit-n{n}-s{seed}-{levels}" + (f"-replay{replay:g}" if replay else "") + f"-t{steps}"
    tag += (f"-mlr{memory_lr:g}" if memory_lr else "") + (f"-dlr{dense_lr:g}" if dense_lr and baseline else "")
    return tag


def run_edit(
    run_dir: str | Path,
    baseline: str | Path | None = None,
    n: int = 100,
    seed: int = 0,
    steps: int = 80,
    levels: str = "all",
    batch_size: int | None = None,
    memory_lr: float | None = None,
    dense_lr: float | None = None,
    val_rows: int = 64,
    threads: int = 0,
    replay: float = 0.0,
) -> dict[str, Any]:
    """The whole experiment (module docstring) -> the result dict (also written under <run_dir>/separation/)."""
    _check_edit_args(steps, levels, memory_lr, dense_lr, replay)
    check_threads(threads)
    set_threads(threads)
    run_dir = Path(run_dir)
    model, cfg = load_model(run_dir)
    if cfg.memory.type == "none" or not getattr(model.memory, "routed", False):
        raise ConfigError(f"{run_dir}: editing needs a bank-backed memory run (memory.type ffn | lora | kv)")
    root = direct.facts_data_dir(run_dir, cfg, "editing")
    # checked before any work: an anchor-only run of the same data
    base = None if baseline is None else _load_baseline(baseline, run_dir, cfg, root)
    ed = _edit_data(root, cfg, n, seed, val_rows, replay)
    bs = batch_size or cfg.train.batch_size
    out: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "steps": steps,
        "batch_size": bs,
        "edited_documents": len(ed.idx),
        "edit_rows": int(len(ed.packed.tokens)),
        "replay": replay,
        "replay_rows": 0 if ed.replay is None else int(len(ed.replay[0])),
        "edited_leaves": len(ed.edited_leaves),
        "items": {k: int(v.sum()) for k, v in ed.groups.items()},
        "examples": ed.plan[:5],
    }
    train: dict[str, Any] = {"steps": steps, "batch_size": bs, "seed": seed, "levels": levels, "replay": replay}
    mlr = memory_lr or cfg.optim.memory_lr
    out["memory"] = _edit_and_measure(ed, "memory", model, ed.routed, mlr, run_dir, cfg, **train)
    if base is not None:
        bmodel, bcfg = base
        out["dense"] = _edit_and_measure(
            ed, "dense", bmodel, None, dense_lr or bcfg.optim.lr, Path(str(baseline)), bcfg, **train
        )
    out["tag"] = _edit_tag(n, seed, levels, replay, steps, memory_lr, dense_lr, baseline)
    write_json(run_dir / "separation" / f"{out['tag']}.json", out)
    return out


def format_edit(r: dict[str, Any]) -> str:
    lines = [
        f"edit: {r['n']} people's birth city, {r['edited_documents']} documents in {r['edit_rows']} rows "
        f"({r['edited_leaves']} leaves), {r['steps']} steps x {r['batch_size']}"
    ]
    for k in ("memory", "dense"):
        if k not in r:
            continue
        m = r[k]
        loc = m["locality"]
        lines.append(
            f"{k:<7} edit success {m['edit_success']['before']:.3f} -> {m['edit_success']['after']:.3f}; old answer "
            f"{m['old_answer']['before']:.3f} -> {m['old_answer']['after']:.3f}; locality {loc['before']:.3f} -> "
            f"{loc['after']:.3f} (diff {loc['diff']:+.4f}, 95% [{loc['ci95'][0]:+.4f}, {loc['ci95'][1]:+.4f}], "
            f"lost {loc['lost']}, gained {loc['gained']} of {loc['n']}); val loss {m['val_loss']['before']:.4f} -> "
            f"{m['val_loss']['after']:.4f}; {m['train_s']:.1f}s"
        )
        if "identity" in m:
            idr = m["identity"]
            lv = ", ".join(
                f"level {lvl}: {v['changed']} of {v['rows']} rows changed ({v['on_edited_paths']} on edited paths, "
                f"{v['changed_off_paths']} off them)"
                for lvl, v in idr["levels"].items()
            )
            lines.append(
                f"        anchor bit-identical {idr['anchor_identical']}; untouched rows bit-identical "
                f"{idr['all_untouched_identical']}; {lv}"
            )
    return "\n".join(lines)
