"""Product-key memory: exact top-k against brute force, placement, replace vs add, sparse value updates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmem_lit.memory.pkm import pkm_layers, product_topk
from tests.memory_util import batch, make_cfg, make_model


@pytest.mark.parametrize("n_keys, k", [(4, 1), (8, 3), (16, 8), (16, 16)])
def test_product_topk_equals_brute_force(n_keys, k):
    torch.manual_seed(n_keys * 100 + k)
    scores = torch.randn(7, 3, 2, n_keys)  # (tokens, heads, halves, n_keys)
    best, idx = product_topk(scores, k)
    full = (scores[:, :, 0, :, None] + scores[:, :, 1, None, :]).flatten(-2)  # all n_keys**2 product keys
    ref_best, ref_idx = full.topk(k, dim=-1)
    assert torch.equal(idx, ref_idx) and torch.equal(best, ref_best)


def test_layer_lookup_equals_brute_force_over_all_keys():
    cfg = make_cfg("pkm", "memory.pkm.n_keys=8", "memory.pkm.topk=5", "memory.pkm.k_dim=8")
    mem = make_model(cfg).memory
    x = torch.randn(10, 32)
    for s in range(len(mem.layers)):
        best, idx = mem.lookup(s, x)  # (N, H, k)
        q = F.rms_norm(F.linear(x, mem.query[s]).view(10, mem.heads, 2, 4), (4,))
        keys = F.rms_norm(mem.keys[s], (4,))  # (H, 2, n_keys, 4)
        # every product key spelled out: key(i1, i2) = concat(k1[i1], k2[i2]); score = <q, key>
        prod = torch.cat([keys[:, 0, :, None].expand(-1, -1, 8, -1), keys[:, 1, None, :].expand(-1, 8, -1, -1)], -1)
        full = torch.einsum("nhd,hkd->nhk", q.flatten(-2), prod.flatten(1, 2))  # (N, H, 64)
        ref_best, ref_idx = full.topk(5, dim=-1)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(best, ref_best)


def test_auto_layers_are_equally_spaced():
    assert pkm_layers("auto", 24) == [4, 12, 20]  # the paper's placement
    assert pkm_layers("auto", 35) == [5, 17, 29]
    assert pkm_layers("auto", 2) == [0, 1]
    assert pkm_layers([3, 1], 4) == [1, 3]
    with pytest.raises(ValueError):
        pkm_layers([4], 4)


def test_replace_mode_skips_the_ffn_and_add_mode_keeps_it():
    x, _, paths = batch()
    for mode, skips in (("replace", True), ("add", False)):
        m = make_model(make_cfg("pkm", f"memory.pkm.mode={mode}", "memory.pkm.layers=[1]"))
        hooks = m.memory.fetch(paths)
        assert hooks.skip_ffn(1) is skips and not hooks.skip_ffn(0)
        if skips:  # replace mode: changing the FFN weights of layer 1 changes nothing
            with torch.no_grad():
                before = m(x, paths=paths)
                m.anchor.blocks[1].ffn.w_down.weight.add_(1.0)
                assert torch.equal(m(x, paths=paths), before)


def test_values_shared_across_layers_and_updated_sparsely():
    """Both memory layers read the one value table; its gradient holds exactly the rows their top-k selected."""
    m = make_model(make_cfg("pkm", "memory.pkm.mode=replace", "memory.pkm.layers=[0,2]", "memory.pkm.n_keys=16"))
    selected: dict[int, set[int]] = {0: set(), 1: set()}
    lookup = m.memory.lookup

    def recording_lookup(s, x):
        best, idx = lookup(s, x)
        selected[s] |= set(idx.flatten().tolist())
        return best, idx

    m.memory.lookup = recording_lookup
    x, y, paths = batch(n=2, t=5)
    F.cross_entropy(m(x, paths=paths).flatten(0, 1), y.flatten()).backward()
    g = m.memory.values.grad
    assert g.is_sparse and m.memory.sparse_parameters() == [m.memory.values]
    assert selected[0] and selected[1]
    assert set(g.coalesce().indices()[0].tolist()) == selected[0] | selected[1] != set(range(256))


def test_ungated_requires_model_width_values():
    with pytest.raises(ValueError, match="v_dim"):
        make_model(make_cfg("pkm", "memory.pkm.gated=false", "memory.pkm.v_dim=16"))
    m = make_model(make_cfg("pkm", "memory.pkm.gated=false"))
    x, _, paths = batch()
    assert torch.equal(m(x, paths=paths), m.anchor(x))  # add mode, ungated: zero values


# ---------------------------------------------------------------------------------------------------------------
# issue 17: the reference code's value-table LR and clip, the qk-norm temperature, counts in replace mode


def _pkm_cfg(*extra):
    from hmem_lit.config import load_config

    from .conftest import DEBUG_YAML

    return load_config(
        DEBUG_YAML,
        [
            "memory.type=pkm",
            "memory.pkm.n_keys=8",
            "memory.pkm.topk=4",
            "memory.pkm.k_dim=16",
            "anchor.vocab_size=300",
            *extra,
        ],
    )


def test_value_lr_multiplier_reaches_the_value_table_only():
    from hmem_lit.model import MemoryLM
    from hmem_lit.optim import param_groups

    base = {g["name"]: g for g in param_groups(MemoryLM(_pkm_cfg()), _pkm_cfg())}
    cfg = _pkm_cfg("optim.value_lr_scale=10")
    model = MemoryLM(cfg)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    values = [g for g in groups.values() if any(p is model.memory.values for p in g["params"])]
    assert len(values) == 1 and values[0]["params"] == [model.memory.values]
    assert values[0]["lr"] == pytest.approx(10 * cfg.optim.memory_lr)
    for name, g in groups.items():
        if g is not values[0]:
            assert g["lr"] == base[name]["lr"], name


def test_value_lr_scale_is_refused_for_banks():
    from hmem_lit.config import ConfigError, load_config

    from .conftest import DEBUG_YAML

    with pytest.raises(ConfigError, match="optim.value_lr_scale"):
        load_config(
            DEBUG_YAML, ["memory.type=ffn", "memory.levels=[4]", "retriever.depth=1", "optim.value_lr_scale=10"]
        )


def test_value_grad_clip_clips_the_values_alone():
    from hmem_lit.model import MemoryLM
    from hmem_lit.optim import clip_gradients

    cfg = _pkm_cfg("optim.value_grad_clip=1e-3", "optim.grad_clip=0")
    model = MemoryLM(cfg)
    x = torch.randint(0, 300, (2, 16))
    model(x).square().mean().backward()
    other = [p.grad.clone() for p in model.memory.parameters() if p is not model.memory.values and p.grad is not None]
    clip_gradients(model, cfg)
    v = model.memory.values.grad.coalesce()._values()
    assert v.norm() == pytest.approx(1e-3, rel=1e-3)  # clipped to its own threshold (clip: max / (norm + 1e-6))
    after = [p.grad for p in model.memory.parameters() if p is not model.memory.values and p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(other, after))  # the rest: untouched (grad_clip=0)


def test_qk_norm_scale_is_a_temperature():
    from hmem_lit.model import MemoryLM

    torch.manual_seed(0)
    a = MemoryLM(_pkm_cfg())
    b = MemoryLM(_pkm_cfg("memory.pkm.qk_norm_scale=0.25"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, a.memory.d)
    (sa, ia), (sb, ib) = a.memory.lookup(0, x), b.memory.lookup(0, x)
    assert torch.equal(ia, ib) and torch.allclose(sb, 0.25 * sa, atol=1e-6)  # same rows, softer weights


def test_replace_mode_counts_leave_the_replaced_ffns_out():
    from hmem_lit.anchor import count_params
    from hmem_lit.model import MemoryLM

    m = MemoryLM(_pkm_cfg("memory.pkm.mode=replace"))
    c = m.param_counts()
    ffn = sum(p.numel() for i in m.memory.layers for p in m.anchor.blocks[i].ffn.parameters())
    assert c["anchor_unused"] == ffn > 0 and c["anchor"] == count_params(m.anchor) - ffn
    assert c["runtime"] == c["anchor"] + c["fetched"]
    add = MemoryLM(_pkm_cfg("memory.pkm.mode=add")).param_counts()
    assert "anchor_unused" not in add and add["anchor"] == count_params(m.anchor)
