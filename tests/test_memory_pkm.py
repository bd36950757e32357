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
