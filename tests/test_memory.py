"""Memory invariants: the paper's accounting, zero-init == anchor for every registered type, gradients reach only
the fetched blocks, placement, the generic block, blocking, offload."""

from __future__ import annotations

import pytest
import torch

from hmem_lit.config import load_config
from hmem_lit.memory import MEMORY, import_all
from hmem_lit.memory.bank import choose_unblocked, resolve_layers
from hmem_lit.memory.generic import generic_mask
from hmem_lit.model import MemoryLM, info
from tests.memory_util import VOCAB, batch, make_cfg, make_model

import_all()
TYPES = MEMORY.names()
BANK_TYPES = [t for t in TYPES if t != "pkm"]


@pytest.mark.parametrize(
    "preset, levels, fetched, bank, fetched_str, bank_str",
    [
        ("openlm-160m", "[256,64,16,0]", 18_063_360, 4_624_220_160, "18.06M", "4.62B"),
        ("openlm-410m", "[512,128,32,0]", 49_545_216, 12_683_575_296, "49.5M", "12.68B"),
        ("openlm-1.4b", "[768,256,16,0]", 153_354_240, 21_139_292_160, "153.4M", "21.14B"),
    ],
)
def test_paper_accounting_on_meta(preset, levels, fetched, bank, fetched_str, bank_str):
    cfg = load_config(
        None,
        [
            f"anchor.preset={preset}",
            "memory.type=ffn",
            f"memory.levels={levels}",
            "retriever.depth=4",
            "train.mode=scratch",
        ],
    )
    with torch.device("meta"):
        m = MemoryLM(cfg)
    c = m.param_counts()
    assert (c["fetched"], c["bank"]) == (fetched, bank)
    for n, s, unit in ((fetched, fetched_str, 1e6), (bank, bank_str, 1e9)):  # the paper's rounded figures
        digits = len(s[:-1].split(".")[1])
        assert round(n / unit, digits) == float(s[:-1])
    table_numel = sum(p.numel() for p in m.memory.sparse_parameters())
    assert table_numel == bank  # storage holds exactly the bank (no generic row here)
    assert all(p.is_meta for p in m.parameters())


def test_lora_and_kv_accounting_formulas():
    d, h, dh, f, L = 32, 2, 8, 64, 3
    for target, per in (("qk", 2 * (d + h * dh)), ("vo", 2 * (d + h * dh)), ("ffn", 3 * (d + f))):
        m = make_model(make_cfg("lora", f"memory.lora.target={target}"))
        assert m.param_counts()["fetched"] == per * L * 6 and m.param_counts()["bank"] == per * L * (4 * 4 + 16 * 2)
    assert make_model(make_cfg("kv")).param_counts()["fetched"] == 2 * h * dh * L * 6


def test_lora_scaling_rslora_is_alpha_over_sqrt_rank():
    """memory.lora.scaling: alpha/r (LoRA, the default) or alpha/sqrt(r) (rsLoRA) at the fetched rank r = 4 + 2;
    with the same weights the rsLoRA patch is the LoRA patch times sqrt(r)."""
    lora = make_model(make_cfg("lora", "memory.lora.alpha=3"))
    rs = make_model(make_cfg("lora", "memory.lora.alpha=3", "memory.lora.scaling=alpha/sqrt(r)"))
    assert lora.memory.scale == 3.0 / 6 and rs.memory.scale == 3.0 / 6**0.5
    with torch.no_grad():
        for _, _, t in lora.memory.bank.tables():
            t.normal_(0, 0.5)  # B != 0, so the patch is not zero
    rs.load_state_dict(lora.state_dict())
    x, _, paths = batch()
    h = torch.randn(x.shape[0], x.shape[1], 32)
    a = lora.memory.fetch(paths).linear_delta(0, "q", h)
    b = rs.memory.fetch(paths).linear_delta(0, "q", h)
    assert a is not None and b is not None and a.abs().max() > 0
    torch.testing.assert_close(b, a * 6**0.5)


def test_info_prints_counts():
    cfg = load_config(
        None,
        [
            "anchor.preset=openlm-160m",
            "memory.type=ffn",
            "memory.levels=[256,64,16,0]",
            "retriever.depth=4",
            "train.mode=scratch",
        ],
    )
    text = info(cfg)
    assert "163,510,016" in text and "18,063,360" in text and "4,624,220,160" in text


@pytest.mark.parametrize("mtype", TYPES)
def test_zero_init_equals_anchor(mtype):
    m = make_model(make_cfg(mtype)).eval()
    x, _, paths = batch()
    doc_ids = torch.tensor([[0] * 5 + [1] * 7] * 4)
    with torch.no_grad():
        for d in (None, doc_ids):
            bare = m.anchor(x, doc_ids=d)
            assert torch.equal(m(x, doc_ids=d, paths=paths), bare)
            assert torch.equal(m(x, doc_ids=d, paths=paths, memory_mode="none"), bare)


@pytest.mark.parametrize("mtype", TYPES)
def test_memory_changes_output_once_trained(mtype):
    """The hooks are live: perturbing every memory parameter changes the logits."""
    m = make_model(make_cfg(mtype)).eval()
    x, _, paths = batch()
    with torch.no_grad():
        before = m(x, paths=paths)
        for p in m.memory.parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(m(x, paths=paths), before)


@pytest.mark.parametrize("mtype", TYPES)
def test_sparse_gradients_touch_only_fetched_rows(mtype):
    m = make_model(make_cfg(mtype))
    x, y, paths = batch(n=3)
    torch.nn.functional.cross_entropy(m(x, paths=paths).flatten(0, 1), y.flatten()).backward()
    for p in m.memory.sparse_parameters():
        assert p.grad is not None and p.grad.is_sparse
    if mtype in BANK_TYPES:
        for lvl, _, table in m.memory.bank.tables():
            rows = table.grad.coalesce().indices()[0]
            assert set(rows.tolist()) == set(paths[:, lvl - 1].tolist())
            assert table.grad.coalesce().values().abs().sum() > 0


def test_batched_fetch_equals_per_sequence():
    """One batched fetch gives each sequence exactly what it gets alone."""
    for mtype in BANK_TYPES:
        m = make_model(make_cfg(mtype)).eval()
        with torch.no_grad():
            for p in m.memory.parameters():
                p.add_(0.05 * torch.randn_like(p))
            x, _, paths = batch(n=4)
            full = m(x, paths=paths)
            for i in range(4):
                torch.testing.assert_close(m(x[i : i + 1], paths=paths[i : i + 1]), full[i : i + 1])


def test_placement_thirds_and_explicit():
    assert resolve_layers("all", 6) == [0, 1, 2, 3, 4, 5]
    assert [resolve_layers(s, 7) for s in ("early", "middle", "late")] == [[0, 1, 2], [3, 4], [5, 6]]
    assert resolve_layers([4, 1], 6) == [1, 4]
    m = make_model(make_cfg("ffn", "memory.layers=late"))
    assert m.memory.layers == [2] and m.param_counts()["fetched"] == 3 * 32 * 6
    with pytest.raises(ValueError):
        resolve_layers([9], 6)


def test_memory_only_acts_at_its_layers():
    m = make_model(make_cfg("ffn", "memory.layers=[1]")).eval()
    hooks = m.memory.fetch(batch()[2])
    x = torch.randn(4, 5, 32)
    assert hooks.ffn_extra(0, x) is None and hooks.ffn_extra(2, x) is None and hooks.ffn_extra(1, x) is not None


def test_generic_mask_is_deterministic_and_calibrated():
    idx = torch.arange(34_000)
    m = generic_mask(idx, 1 / 17, seed=3)
    assert torch.equal(m, generic_mask(idx, 1 / 17, seed=3))
    assert not torch.equal(m, generic_mask(idx, 1 / 17, seed=4))
    assert abs(m.float().mean().item() - 1 / 17) < 0.005
    assert torch.equal(generic_mask(idx[100:200], 1 / 17, 3), m[100:200])  # per sample, not per batch
    assert not generic_mask(idx, 0.0).any()


def test_generic_block_replaces_fetched_blocks():
    m = make_model(make_cfg("ffn", "memory.generic=true"))
    with torch.no_grad():
        for p in m.memory.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y, paths = batch(n=4)
    mask = torch.tensor([True, False, True, False])
    out = m(x, paths=paths, generic=mask)
    other = batch(n=4, seed=9)[2]  # different paths: generic rows must not care
    out2 = m(x, paths=other, generic=mask)
    torch.testing.assert_close(out[mask], out2[mask])
    torch.testing.assert_close(m(x, paths=paths, memory_mode="generic")[mask], out[mask])
    torch.testing.assert_close(out[~mask], m(x, paths=paths)[~mask])
    torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()).backward()
    for lvl, _, table in m.memory.bank.tables():  # the generic row is the last row of every level
        rows = set(table.grad.coalesce().indices()[0].tolist())
        assert rows == {m.memory.bank.n_nodes(lvl)} | set(paths[~mask, lvl - 1].tolist())
    with pytest.raises(ValueError, match="generic"):
        make_model(make_cfg("ffn"))(x, paths=paths, memory_mode="generic")


def test_choose_unblocked_falls_back_to_next_candidate():
    cands = torch.tensor([[[3, 13], [1, 5]], [[2, 9], [3, 14]]])  # (B=2, K=2, depth=2), best first
    out = choose_unblocked(cands, level=1, blocked=torch.tensor([3]))
    assert out.tolist() == [[1, 5], [2, 9]]
    with pytest.raises(ValueError):
        choose_unblocked(cands, level=1, blocked=torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    "section,on_host,lookahead,placed",
    [
        ({}, False, set(), "fn"),
        ({"offload": True, "prefetch": True}, True, {"stage"}, None),
        ({"async_update": True}, False, {"expect"}, "fn"),
        ({"offload": True, "prefetch": True, "async_update": True}, True, {"stage", "expect"}, None),
        ({"dtype": "bfloat16"}, False, set(), "move"),
    ],
)
def test_the_backend_holds_exactly_the_parts_its_section_turns_on(section, on_host, lookahead, placed):
    """storage.Backend from memory.storage alone: host placement, the next-batch hooks it asks the LightningModule
    for, and what a module-wide .to() does to its tables (nothing, a move keeping a bf16 table's dtype, or fn)."""
    from hmem_lit.config import StorageConfig
    from hmem_lit.storage import Backend

    b = Backend(StorageConfig(**section))
    assert (b.on_host, set(b.lookahead), b.store, b.preloaded) == (on_host, lookahead, None, False)
    assert (b.prefetch is not None, b.writeback is not None) == ("stage" in lookahead, "expect" in lookahead)
    fn = b.placement(lambda t: t.double())
    t = b.table("level1", (3, 2))
    assert tuple(t.shape) == (3, 2) and t.dtype == b.dtype
    if placed is None:
        assert fn is None
    else:
        assert fn(t).dtype == (torch.float64 if placed == "fn" else torch.bfloat16)


def test_offload_keeps_bank_in_place():
    """With memory.storage.offload the bank ignores .to(): it stays fp32 on the CPU while the anchor converts."""
    m = make_model(make_cfg("ffn", "memory.storage.offload=true")).to(torch.float64)
    assert m.anchor.tok_emb.weight.dtype == torch.float64
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in m.memory.sparse_parameters())
    x, y, paths = batch()
    logits = m(x, paths=paths)
    assert logits.dtype == torch.float64
    logits.sum().backward()
    assert all(p.grad.is_sparse and p.grad.dtype == torch.float32 for p in m.memory.sparse_parameters())
    m2 = make_model(make_cfg("ffn")).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m2.memory.sparse_parameters())


def test_model_builds_with_vocab_from_config():
    m = make_model(make_cfg("kv"))
    assert m(batch()[0], paths=batch()[2]).shape == (4, 12, VOCAB)
