"""Document-causal attention without a dense mask: anchor.attention=flex equals the dense-mask sdpa reference.

FlexAttention has no backward on CPU in torch 2.13 (`_validate_device` refuses inputs that require grad); its eager
path is the unfused math implementation, whose backward works on CPU once that check is lifted, so the gradient
test lifts it (monkeypatch) to compare gradients here. The GPU variant runs the compiled kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as flex_mod

from hmem_lit.anchor import Anchor, doc_block_mask, doc_positions, doc_positions_and_mask
from hmem_lit.config import ConfigError, load_config

T = 40


def _doc_ids(kind: str) -> torch.Tensor:
    if kind == "packed":  # three documents, then two
        return torch.tensor([[0] * 9 + [1] * 20 + [2] * 11, [0] * 25 + [1] * 15])
    if kind == "one":  # one document per row
        return torch.zeros(2, T, dtype=torch.long)
    # padding: the collate gives PAD tokens one extra document id (max + 1) at the row's end
    return torch.tensor([[0] * 12 + [1] * 18 + [2] * 10, [0] * 33 + [1] * 7])


def _pair(device: str = "cpu") -> tuple[Anchor, Anchor]:
    out = []
    for attn in ("sdpa", "flex"):
        torch.manual_seed(0)
        cfg = load_config(None, ["anchor.vocab_size=97", "anchor.n_layer=2", f"anchor.attention={attn}"]).anchor
        out.append(Anchor(cfg).to(device))
    return out[0], out[1]


def test_block_mask_equals_dense_mask():
    for kind in ("packed", "one", "pad"):
        doc = _doc_ids(kind)
        dense = doc_positions_and_mask(doc)[1]  # (B, 1, T, T)
        bm = doc_block_mask(doc)
        b, q, kv = torch.meshgrid(torch.arange(2), torch.arange(T), torch.arange(T), indexing="ij")
        assert torch.equal(bm.mask_mod(b, 0, q, kv), dense[:, 0])
        assert torch.equal(doc_positions(doc), doc_positions_and_mask(doc)[0])


@pytest.mark.parametrize("kind", ["packed", "one", "pad"])
def test_flex_outputs_and_gradients_equal_sdpa(kind, monkeypatch):
    monkeypatch.setattr(flex_mod, "_validate_device", lambda *a: None)  # lift the CPU no-backward check (docstring)
    ref, flex = _pair()
    assert ref.attention(torch.device("cpu")) == "sdpa" and flex.attention(torch.device("cpu")) == "flex"
    torch.manual_seed(1)
    idx, doc = torch.randint(0, 97, (2, T)), _doc_ids(kind)
    outs, grads = [], []
    for m in (ref, flex):
        y = m(idx, doc_ids=doc)
        (y.float().pow(2).mean()).backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4), n


def test_auto_is_sdpa_on_cpu_and_flex_on_cuda():
    m = _pair()[0]
    m.cfg.attention = "auto"
    assert m.attention(torch.device("cpu")) == "sdpa"
    assert m.cfg.head_dim >= 16 and m.attention(torch.device("cuda")) == "flex"
    # heads under 16 wide: inductor's CUDA flex kernel refuses them, so auto keeps sdpa and flex is one line
    m.cfg.head_dim = 8
    assert m.attention(torch.device("cuda")) == "sdpa" and m.attention(torch.device("cpu")) == "sdpa"
    m.cfg.attention = "flex"
    assert m.attention(torch.device("cpu")) == "flex"
    with pytest.raises(ValueError, match=r"anchor.head_dim >= 16 \(got 8\); set anchor.attention=auto or sdpa"):
        m.attention(torch.device("cuda"))


def test_attention_key_validated():
    with pytest.raises(ConfigError, match=r"anchor.attention: got 'dense'; allowed: auto, sdpa, flex"):
        load_config(None, ["anchor.attention=dense"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["packed", "one", "pad"])
def test_flex_equals_sdpa_on_cuda(kind):
    ref, flex = _pair("cuda")
    idx, doc = torch.randint(0, 97, (2, T), device="cuda"), _doc_ids(kind).cuda()
    outs, grads = [], []
    for m in (ref, flex):
        y = m(idx, doc_ids=doc)  # fp32: the compiled flex kernel against SDPA with the dense mask
        y.pow(2).mean().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert (outs[0] - outs[1]).abs().max() < 1e-4
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-3), n
