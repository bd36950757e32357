"""Optimiser invariants: unfetched rows stay bit-identical, row-wise AdamW == dense AdamW on the rows it updates,
exact resume from a weights_only state_dict, groups / schedules / clipping, a frozen anchor stays frozen."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from hmem_lit.memory import MEMORY, import_all
from hmem_lit.model import prepare_model_for_mode
from hmem_lit.optim import RowwiseAdamW, WarmupCosine, build_optimizer, clip_gradients
from tests.memory_util import batch, make_cfg, make_model, train

import_all()


@pytest.mark.parametrize("mtype", MEMORY.names())
@pytest.mark.parametrize("view_rows_from", [1, 10**9])  # in-place row views / gather-scatter
def test_unfetched_rows_bit_identical_after_steps(mtype, view_rows_from, monkeypatch):
    """Several AdamW steps with weight decay: rows never fetched do not move at all; fetched rows do."""
    monkeypatch.setattr(RowwiseAdamW, "view_rows_from", view_rows_from)
    cfg = make_cfg(mtype, "optim.memory_weight_decay=0.1", "optim.weight_decay=0.1", "memory.pkm.n_keys=32")
    model = make_model(cfg)
    batches = [
        batch(n=3 if mtype != "pkm" else 1, t=12 if mtype != "pkm" else 4, seed=s, level1=[0, 1]) for s in range(4)
    ]  # bank types: only level-1 subtrees 0 and 1; pkm: few tokens
    before = {id(p): p.detach().clone() for p in model.memory.sparse_parameters()}
    fetched = {id(p): set() for p in model.memory.sparse_parameters()}
    o = build_optimizer(model, cfg, total_steps=10)
    for x, y, paths in batches:
        F.cross_entropy(model(x, paths=paths).flatten(0, 1), y.flatten()).backward()
        for p in model.memory.sparse_parameters():
            fetched[id(p)] |= set(p.grad.coalesce().indices()[0].tolist())
        o["optimizer"].step()
        o["optimizer"].zero_grad()
    if mtype != "pkm":  # the rows with gradients are exactly the rows on the paths
        for lvl, _, t in model.memory.bank.tables():
            assert fetched[id(t)] == set(torch.cat([b[2][:, lvl - 1] for b in batches]).tolist())
    for p in model.memory.sparse_parameters():
        touched = torch.zeros(p.shape[0], dtype=torch.bool)
        touched[list(fetched[id(p)])] = True
        assert 0 < touched.sum() < p.shape[0]
        assert torch.equal(p[~touched], before[id(p)][~touched])  # bit-identical
        assert not torch.equal(p[touched], before[id(p)][touched])


@pytest.mark.parametrize("view_rows_from", [1, 10**9])  # in-place row views / gather-scatter
def test_rowwise_equals_dense_adamw_on_rows_it_updates(view_rows_from, monkeypatch):
    """A row's trajectory equals dense AdamW run only over the steps that fetched it (per-row bias correction)."""
    monkeypatch.setattr(RowwiseAdamW, "view_rows_from", view_rows_from)
    torch.manual_seed(0)
    init = torch.randn(6, 5)
    w = torch.nn.Parameter(init.clone())
    opt = RowwiseAdamW([dict(params=[w], sparse=True)], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1)
    ref = {r: torch.nn.Parameter(init[r].clone()) for r in range(6)}
    ref_opt = {r: torch.optim.AdamW([ref[r]], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1) for r in range(6)}
    schedule = [[0, 1, 1, 2], [0, 3], [1], [0, 2, 2, 2], [5, 0]]  # row 4 never fetched
    for step, ids in enumerate(schedule):
        target = torch.randn(len(ids), 5, generator=torch.Generator().manual_seed(step))
        ((F.embedding(torch.tensor(ids), w, sparse=True) - target) ** 2).sum().backward()
        opt.step()
        opt.zero_grad()
        for r in set(ids):  # dense reference: the summed gradient of that row, only on its steps
            rows = [i for i, x in enumerate(ids) if x == r]
            ((ref[r][None] - target[rows]) ** 2).sum().backward()
            ref_opt[r].step()
            ref_opt[r].zero_grad()
    for r in range(6):
        torch.testing.assert_close(w[r], ref[r], rtol=1e-6, atol=1e-7)
    assert torch.equal(w[4], init[4])
    assert opt.state[w]["step"].tolist() == [4, 2, 2, 1, 0, 1]


def test_dense_groups_equal_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    mine = RowwiseAdamW([dict(params=[a], weight_decay=0.05)], lr=0.01)
    ref = torch.optim.AdamW([b], lr=0.01, betas=(0.9, 0.95), weight_decay=0.05, foreach=False)
    for s in range(5):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(s))
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mtype", ["ffn", "pkm"])
def test_state_dict_round_trip_continues_identically(mtype):
    cfg = make_cfg(mtype, "optim.warmup=2")
    batches = [batch(n=3, seed=s) for s in range(6)]
    model = make_model(cfg)
    opt, sched = train(model, cfg, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # only tensors / numbers / strings / containers inside

    resumed = make_model(cfg, seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    o = build_optimizer(resumed, cfg, total_steps=20)
    o["optimizer"].load_state_dict(ckpt["opt"])
    o["lr_scheduler"]["scheduler"].load_state_dict(ckpt["sched"])
    train(model, cfg, batches[3:], (opt, sched))
    train(resumed, cfg, batches[3:], (o["optimizer"], o["lr_scheduler"]["scheduler"]))
    for (k, p), q in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_groups_lrs_and_weight_decay():
    cfg = make_cfg("pkm", "optim.lr=0.01", "optim.memory_lr=0.002", "optim.memory_weight_decay=0.003")
    model = make_model(cfg)
    opt = build_optimizer(model, cfg, total_steps=10)["optimizer"]
    g = {grp["name"]: grp for grp in opt.param_groups}
    assert set(g) == {"anchor", "anchor_nowd", "memory", "memory_rows"}
    assert g["anchor"]["lr"] == 0.01 and g["memory"]["lr"] == g["memory_rows"]["lr"] == 0.002
    assert g["anchor_nowd"]["weight_decay"] == 0.0 and g["memory_rows"]["weight_decay"] == 0.003
    assert g["memory_rows"]["sparse"] and g["memory_rows"]["params"] == [model.memory.values]
    n = sum(len(grp["params"]) for grp in opt.param_groups)
    assert n == len(list(model.parameters()))  # every parameter exactly once (tied embedding once)


@pytest.mark.parametrize("mtype", ["ffn", "lora", "kv"])
def test_memory_lr_scale_per_bank_level(mtype):
    """optim.memory_lr_scale: one sparse group per level at memory_lr x its multiplier, cosine to the same floor
    ratio; a first Adam step moves a fetched row by ~lr per entry, so level-2 rows move 3x as far as level-1 rows."""
    cfg = make_cfg(
        mtype,
        "optim.memory_lr=1e-3",
        "optim.memory_min_lr=1e-4",
        "optim.memory_lr_scale=[1.0,3.0]",
        "optim.memory_weight_decay=0.0",
    )
    model = make_model(cfg)
    o = build_optimizer(model, cfg, total_steps=10)
    opt, sched = o["optimizer"], o["lr_scheduler"]["scheduler"]
    g = {grp["name"]: grp for grp in opt.param_groups}
    assert "memory_rows" not in g and g["memory_rows_l1"]["sparse"] and g["memory_rows_l2"]["sparse"]
    tables = {lvl: t for lvl, _, t in model.memory.bank.tables()}
    assert g["memory_rows_l1"]["params"] == [tables[1]] and g["memory_rows_l2"]["params"] == [tables[2]]
    assert g["memory_rows_l1"]["lr"] == pytest.approx(1e-3) and g["memory_rows_l2"]["lr"] == pytest.approx(3e-3)
    assert sum(len(grp["params"]) for grp in opt.param_groups) == len(list(model.parameters()))
    before = {lvl: t.detach().clone() for lvl, t in tables.items()}
    x, y, paths = batch(n=3)
    F.cross_entropy(model(x, paths=paths).flatten(0, 1), y.flatten()).backward()
    opt.step()
    moved = {lvl: (tables[lvl] - before[lvl]).abs() for lvl in tables}
    rows = {lvl: sorted(set(paths[:, lvl - 1].tolist())) for lvl in tables}
    step = {lvl: moved[lvl][rows[lvl]][moved[lvl][rows[lvl]] > 0].median().item() for lvl in tables}
    assert step[2] / step[1] == pytest.approx(3.0, rel=0.05)
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = {grp["name"]: grp["lr"] for grp in opt.param_groups}
    assert lrs["memory_rows_l1"] == pytest.approx(1e-4) and lrs["memory_rows_l2"] == pytest.approx(3e-4)


def test_memory_lr_scale_must_match_levels():
    from hmem_lit.config import ConfigError

    with pytest.raises(ConfigError, match="optim.memory_lr_scale"):
        make_cfg("ffn", "optim.memory_lr_scale=[1.0]")
    with pytest.raises(ConfigError, match="optim.memory_lr_scale"):
        make_cfg("pkm", "optim.memory_lr_scale=[1.0,2.0]")
    with pytest.raises(ConfigError, match="optim.memory_lr_scale"):
        make_cfg("ffn", "optim.memory_lr_scale=[1.0,0.0]")


def test_schedule_warmup_then_cosine_to_floor():
    f = WarmupCosine(total=100, warmup=0.1, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.1) and f(55) == pytest.approx(0.55)
    assert WarmupCosine(total=100, warmup=5, floor=0.0).warmup == 5


def test_memory_lr_schedule_uses_memory_floor():
    cfg = make_cfg("ffn", "optim.memory_lr=1e-3", "optim.memory_min_lr=1e-4", "optim.lr=1e-2", "optim.min_lr=0.0")
    o = build_optimizer(make_model(cfg), cfg, total_steps=10)
    opt, sched = o["optimizer"], o["lr_scheduler"]["scheduler"]
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = {grp["name"]: grp["lr"] for grp in opt.param_groups}
    assert lrs["memory_rows"] == pytest.approx(1e-4) and lrs["anchor"] == pytest.approx(0.0)


def test_clip_separately_and_jointly():
    x, y, paths = batch(n=3)
    for extra, joint in (
        (["optim.grad_clip=0.01", "optim.memory_grad_clip=0.001"], False),
        (["optim.grad_clip=0.01"], True),
    ):
        cfg = make_cfg("ffn", *extra)
        model = make_model(cfg)
        F.cross_entropy(model(x, paths=paths).flatten(0, 1), y.flatten()).backward()
        norms = clip_gradients(model, cfg)
        assert norms["grad_norm"] > 0.01 and norms["memory_grad_norm"] > 0
        after = clip_gradients(model, cfg)  # norms after the first clip
        if joint:
            assert torch.hypot(after["grad_norm"], after["memory_grad_norm"]) == pytest.approx(0.01, rel=1e-3)
        else:
            assert after["grad_norm"] == pytest.approx(0.01, rel=1e-3)
            assert after["memory_grad_norm"] == pytest.approx(0.001, rel=1e-3)


def test_frozen_anchor_stays_bit_identical():
    trained = make_model(make_cfg("ffn"), seed=7)  # stands in for a finished anchor run
    source = {f"anchor.{k}": v.clone() for k, v in trained.anchor.state_dict().items()}
    cfg = make_cfg("ffn", "train.mode=frozen", "train.init_from=runs/a1")
    model = prepare_model_for_mode(make_model(cfg), cfg, lambda run_dir: source)
    for k, v in model.anchor.state_dict().items():
        assert torch.equal(v, source[f"anchor.{k}"])
    assert not any(p.requires_grad for p in model.anchor.parameters())
    bank_before = [p.detach().clone() for p in model.memory.sparse_parameters()]
    opt, _ = train(model, cfg, [batch(n=3, seed=s) for s in range(3)])
    assert {g["name"] for g in opt.param_groups} == {"memory_rows"}
    for k, v in model.anchor.state_dict().items():
        assert torch.equal(v, source[f"anchor.{k}"]), k
    assert any(not torch.equal(a, b) for a, b in zip(model.memory.sparse_parameters(), bank_before))


def test_cotrain_loads_anchor_and_trains_it():
    source = {f"anchor.{k}": v.clone() for k, v in make_model(make_cfg("ffn"), seed=7).anchor.state_dict().items()}
    cfg = make_cfg("ffn", "train.mode=cotrain", "train.init_from=runs/a1")
    model = prepare_model_for_mode(make_model(cfg), cfg, lambda run_dir: source)
    assert torch.equal(model.anchor.tok_emb.weight, source["anchor.tok_emb.weight"])
    train(model, cfg, [batch(n=3)])
    assert not torch.equal(model.anchor.tok_emb.weight, source["anchor.tok_emb.weight"])
    with pytest.raises(ValueError, match="init_from"):
        bad = {k: v for k, v in source.items() if "norm" not in k}
        prepare_model_for_mode(make_model(cfg), cfg, lambda run_dir: bad)
