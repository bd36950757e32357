"""Knowledge separation (issue 17): an edit moves only the bank rows on the edited paths (anchor and every other row
bit-identical), the edited corpus is the original recipe with only the answer changed, and the small exact
pieces of the attribution / error analysis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmem_lit.data import facts
from hmem_lit.studies.attribution import leaf_purity, sample_items
from hmem_lit.studies.direct import paired_diff
from hmem_lit.studies.editing import edit_train, edited_documents, identity_report, plan_edits
from tests.memory_util import VOCAB, make_cfg, make_model, random_paths
from tests.test_report_fixtures import synth_separation


def _rows(n: int = 6, t: int = 12, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return g.integers(2, VOCAB, size=(n, t + 1)).astype(np.int64)  # no EOT (0) / PAD (1): every token predicted


@pytest.mark.parametrize("levels", ["all", "leaf"])
def test_edit_leaves_anchor_and_untouched_rows_bit_identical(levels):
    cfg = make_cfg("ffn", "memory.generic=true", "optim.memory_weight_decay=0.1")
    model = make_model(cfg)
    with torch.no_grad():  # non-zero down projections, so gate/up rows get gradients too
        for _, _, t in model.memory.bank.tables():
            t.normal_(0, 0.02)
    paths = random_paths(6, 4, level1=[0, 1], gen=torch.Generator().manual_seed(1)).numpy()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = edit_train(model, cfg, _rows(), paths, steps=4, batch_size=3, lr=1e-2, levels=levels)
    assert len(losses) == 4 and all(np.isfinite(losses))
    rep = identity_report(before, model, paths)
    assert rep["anchor_identical"] and rep["other_identical"] and rep["all_untouched_identical"]
    after = model.state_dict()
    for lvl, _, t in model.memory.bank.tables():
        key = f"memory.bank.level{lvl}"
        on = torch.zeros(t.shape[0], dtype=torch.bool)
        on[torch.as_tensor(np.unique(paths[:, lvl - 1]))] = True
        assert torch.equal(after[key][~on], before[key][~on])  # the generic row (last) included
        assert rep["levels"][str(lvl)]["changed_off_paths"] == 0
        frozen = levels == "leaf" and lvl == 1
        assert rep["levels"][str(lvl)]["changed"] == (0 if frozen else int(on.sum()))
    for k in before:
        if k.startswith("anchor."):
            assert torch.equal(after[k], before[k])


def test_identity_report_sees_a_changed_row():
    cfg = make_cfg("ffn")
    model = make_model(cfg)
    paths = np.array([[0, 1], [0, 2]])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.memory.bank.level2[5] += 1.0  # off the paths (leaves 1 and 2)
        model.memory.bank.level2[1] += 1.0  # on them: allowed
    rep = identity_report(before, model, paths)
    assert rep["levels"]["2"]["changed"] == 2 and rep["levels"]["2"]["changed_off_paths"] == 1
    assert not rep["all_untouched_identical"] and rep["anchor_identical"]


def _world(n: int = 30, seed: int = 0):
    ents = facts.synthetic_entities(n, seed, 6, 1.1, set(), min_repeats=2)
    docs, split = [], []
    for i, e in enumerate(ents):
        for t in facts.write_docs(e, np.random.default_rng([seed, 2, i])):
            docs.append({"text": t, "kind": "synthetic", "entity": e["name"]})
            split.append(0)
    return ents, docs, np.array(split, np.int8)


def test_edited_documents_change_only_the_answer():
    ents, docs, split = _world()
    plan = plan_edits(ents, 5, seed=3)
    assert plan == plan_edits(ents, 5, seed=3)  # seeded
    assert len({p["entity"] for p in plan}) == 5
    cities = {e["attrs"]["city"] for e in ents}
    assert all(p["new"] != p["old"] and p["new"] in cities for p in plan)
    idx, texts = edited_documents(ents, docs, split, plan, data_seed=0)
    want = [j for p in plan for j, d in enumerate(docs) if d["entity"] == p["entity"]]
    assert idx == want and len(texts) == len(idx)
    old_of = {p["entity"]: (p["old"], p["new"]) for p in plan}
    attrs = {e["name"]: e["attrs"] for e in ents}
    for j, t in zip(idx, texts):
        name = docs[j]["entity"]
        old, new = old_of[name]
        if old not in (attrs[name]["city2"], attrs[name]["org_city"]):  # the old city appears only as the answer
            assert t == docs[j]["text"].replace(old, new)
        assert new in t
    docs[idx[0]] = {**docs[idx[0]], "text": docs[idx[0]]["text"] + " x"}
    with pytest.raises(ValueError, match="differ"):
        edited_documents(ents, docs, split, plan, data_seed=0)


def test_paired_diff_exact():
    r = paired_diff(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 1]))
    assert (r["n"], r["before"], r["after"], r["diff"], r["lost"], r["gained"]) == (4, 0.5, 0.75, 0.25, 1, 2)
    assert r["ci95"][0] <= 0.25 <= r["ci95"][1]


def test_leaf_purity_and_sampling_exact():
    docs = [
        {"kind": "wiki"},
        {"kind": "synthetic", "entity": "A"},
        {"kind": "synthetic", "entity": "B"},
        {"kind": "element", "entity": "C"},
        {"kind": "element", "entity": "C"},
        {"kind": "wiki"},  # held out: not counted
    ]
    paths = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [0, 1], [0, 1]])
    pur = leaf_purity(docs, np.array([0, 0, 0, 0, 0, 1]), paths)
    assert pur[0] == {"docs": 4, "kind": "synthetic", "purity": 0.5, "entities": 3}
    assert pur[1] == {"docs": 1, "kind": "element", "purity": 1.0, "entities": 1}
    items = [{"probe": p, "bucket": b} for p in ("a", "b") for b in (0, 1) for _ in range(5)]
    picked = sample_items(items, 2, seed=0)
    assert len(picked) == 8 and picked == sample_items(items, 2, seed=0)
    assert sample_items(items, 0, 0) is items


def test_separation_figures_draw_from_the_run_folder(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from hmem_lit.analysis.figures import Skip
    from hmem_lit.registry import FIGURES

    row = {"run": "m", "kind": "memory", "path": str(tmp_path), "label": "ffn", "eval_mode": "fetched"}
    df = pd.DataFrame([row, {**row, "run": "a", "kind": "anchor", "path": str(tmp_path / "a")}])
    for kind in ("editing", "attribution", "errors"):
        with pytest.raises(Skip):
            FIGURES.get(kind)(df, {})
    synth_separation(tmp_path)
    drawn = FIGURES.get("editing")(df, {})
    assert drawn.runs == ["m"]
    assert any("anchor bit-identical True, untouched rows bit-identical True" in n for n in drawn.notes)
    att = FIGURES.get("attribution")(df, {})
    assert att.runs == ["m"] and any("held by (facts right with memory): level1 2, anchor 1" in n for n in att.notes)
    notes = FIGURES.get("errors")(df, {}).notes
    assert any("'Q' -> 'B', gold 'A'" in n for n in notes)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["edit", "RUN", "--steps", "0"], "--steps: must be >= 1"),
        (["edit", "RUN", "--replay", "1.5"], "--replay: the share"),
        (["edit", "RUN", "--dense-lr", "0"], "--dense-lr: must be > 0"),
        (["attribute", "RUN", "--per-bucket", "-1"], "--per-bucket: must be >= 0"),
    ],
)
def test_bad_separation_arguments_exit_2_with_one_line(args, msg, capsys):
    from hmem_lit.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_holder_classes_exact():
    from hmem_lit.studies.attribution import holder

    assert holder(False, {"minus_l1": True, "minus_l2": True}, False) is None
    assert holder(True, {"minus_l1": False, "minus_l2": False}, True) == "anchor"
    assert holder(True, {"minus_l1": True, "minus_l2": False}, False) == "level2"
    assert holder(True, {"minus_l1": False, "minus_l2": False}, False) == "all of level1+level2"
    assert holder(True, {"minus_l1": True, "minus_l2": True}, False) == "redundant"


@pytest.mark.slow
def test_edit_and_attribute_end_to_end_on_a_small_builtin_corpus(tmp_path):
    """Prepare a small facts corpus, train a tiny anchor and a tiny memory run, then `hmem edit` and `hmem attribute`:
    the result files exist, the bit-identity check passes, and the error causes add up to the wrong answers."""
    import json

    from hmem_lit.config import load_config
    from hmem_lit.studies.attribution import run_attribution
    from hmem_lit.studies.editing import run_edit
    from hmem_lit.train import train
    from tests.test_data import SMALL

    common = [*SMALL, f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}", "anchor.preset=tiny"]
    common += ["train.max_tokens=20000", "train.batch_size=8", "train.progress=false", "train.threads=1"]
    common += ["train.val_every=0", "train.ckpt_every=0", "experiment=sep"]
    anchor = train(load_config(None, [*common, "name=anchor"]))
    mem = train(
        load_config(
            None, [*common, "name=memory", "memory.type=ffn", "memory.levels=[4,4]", "train.mode=scratch",
                   "memory.generic=true"],
        )
    )  # fmt: skip
    r = run_edit(mem, anchor, n=5, seed=0, steps=3, levels="leaf", replay=0.5, threads=1)
    f = mem / "separation" / f"{r['tag']}.json"
    assert f.is_file() and json.loads(f.read_text())["n"] == 5
    ident = r["memory"]["identity"]
    assert ident["anchor_identical"] and ident["all_untouched_identical"]
    assert ident["levels"]["1"]["changed"] == 0 and ident["levels"]["2"]["changed_off_paths"] == 0
    assert r["memory"]["locality_other_leaves"]["diff"] == 0.0 and "dense" in r
    assert r["items"]["edit"] == 5
    a = run_attribution(mem, per_bucket=2, seed=0, threads=1)
    rows = [json.loads(x) for x in (mem / "separation" / "attribution_items.jsonl").read_text().splitlines()]
    assert len(rows) == a["items"]
    wrong = sum(not x["right/fetched"] for x in rows)
    assert sum(v["routed_elsewhere"] + v["not_stored"] for v in a["errors"]["by_kind"].values()) == wrong
    assert sum(a["held_by"].values()) == a["items"] - wrong
