"""Anchor invariants: shapes, causality, document-causal masking, hooks that cost nothing when absent."""

from __future__ import annotations

import torch

from hmem_lit.anchor import Anchor, MemoryHooks, doc_positions_and_mask
from hmem_lit.config import load_config


def _anchor(**kw):
    ov = [f"anchor.{k}={v}" for k, v in kw.items()]
    torch.manual_seed(0)
    return Anchor(load_config(None, ["anchor.vocab_size=97", *ov]).anchor).eval()


def test_shapes_and_tied_embeddings():
    m = _anchor()
    x = torch.randint(0, 97, (3, 11))
    assert m(x).shape == (3, 11, 97)
    assert m.lm_head is None
    m2 = _anchor(tie_embeddings=False, norm="layernorm", qk_norm=False)
    assert m2(x).shape == (3, 11, 97) and m2.lm_head is not None


def test_causal_future_tokens_do_not_change_past_logits():
    m = _anchor()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-3)


def test_document_masking_equals_separate_documents():
    """A packed sequence of two documents gives each document the logits it gets alone (positions restart)."""
    m = _anchor()
    d1, d2 = torch.randint(0, 97, (1, 7)), torch.randint(0, 97, (1, 5))
    packed = torch.cat([d1, d2], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 5])
    with torch.no_grad():
        out = m(packed, doc_ids=doc_ids)
        assert torch.allclose(out[:, :7], m(d1), atol=1e-5)
        assert torch.allclose(out[:, 7:], m(d2), atol=1e-5)


def test_doc_positions_and_mask():
    pos, mask = doc_positions_and_mask(torch.tensor([[0, 0, 0, 1, 1, 2]]))
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert mask.shape == (1, 1, 6, 6)
    assert not mask[0, 0, 3, 2] and mask[0, 0, 4, 3] and not mask[0, 0, 3, 4]


def test_noop_hooks_equal_bare_anchor():
    m = _anchor()
    x = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(m(x), m(x, hooks=MemoryHooks()))


def test_hook_sites_are_called():
    """Each hook kind reaches the anchor: a non-zero delta/extra changes the output."""

    class Probe(MemoryHooks):
        has_delta = has_kv = has_ffn = True

        def __init__(self):
            self.seen = set()

        def linear_delta(self, layer, name, x):
            self.seen.add(name)
            return None

        def attn_kv(self, layer):
            self.seen.add("kv")
            k = torch.randn(2, 4, 3, 16)
            return k, torch.ones_like(k)

        def ffn_extra(self, layer, x):
            self.seen.add("ffn")
            return torch.zeros_like(x)

    m = _anchor()
    x = torch.randint(0, 97, (2, 10))
    p = Probe()
    with torch.no_grad():
        out = m(x, hooks=p)
    assert p.seen == {"q", "k", "v", "o", "gate", "up", "down", "kv", "ffn"}
    assert not torch.allclose(out, m(x))  # the memory values of ones moved the output
