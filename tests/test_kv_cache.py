"""Greedy decoding's KV cache (anchor.KVCache) and logits_to_keep give the numbers of a full forward: for every
memory type, with left padding, an EOT-prefix document, a separate context document, rows leaving the batch and
several new tokens at once. Evaluation relies on it (evaluation/adapter.py: greedy, score_tokens)."""

from __future__ import annotations

import pytest
import torch

from hmem_lit.anchor import KVCache

from .memory_util import VOCAB, make_cfg, make_model, random_paths


def _model(mtype: str):
    model = make_model(make_cfg(mtype) if mtype != "none" else make_cfg("ffn", "memory.type=none")).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised memory outputs would make every memory type the anchor
        for n, p in model.named_parameters():
            if n.startswith("memory."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _full(model, ids, doc, paths, keep=1):
    with torch.no_grad():
        return model(ids, doc_ids=doc, paths=paths, logits_to_keep=keep)


@pytest.mark.parametrize("mtype", ["none", "ffn", "kv", "lora", "pkm"])
@pytest.mark.parametrize("padded", [True, False])
def test_cached_steps_equal_the_full_forward(mtype, padded):
    model = _model(mtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (3, 7), generator=g)
    # row 0: two pads (doc 0); row 1: an EOT prefix (doc 1); row 2: a separate 2-token context (doc 3); text = 2
    doc = torch.tensor([[0, 0] + [2] * 5, [1] + [2] * 6, [3, 3] + [2] * 5]) if padded else None
    paths = random_paths(3, 4, gen=g) if model.memory is not None else None
    cache = KVCache()
    with torch.no_grad():
        got = model(ids, doc_ids=doc, paths=paths, logits_to_keep=1, cache=cache)[:, -1]
    assert torch.equal(got, _full(model, ids, doc, paths)[:, -1])  # the first pass is the ordinary forward
    rows = torch.arange(3)
    for step in range(6):
        nxt = got.argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        doc = None if doc is None else torch.cat([doc, torch.full_like(doc[:, :1], 2)], dim=1)
        if step == 2:  # row 1 finishes: it leaves the batch and the cache
            keep = torch.tensor([0, 2])
            cache.select(keep)
            ids, rows = ids[keep], rows[keep]
            doc = None if doc is None else doc[keep]
        p = None if paths is None else paths[rows]
        with torch.no_grad():
            got = model(ids[:, -1:], paths=p, logits_to_keep=1, cache=cache)[:, -1]
        want = _full(model, ids, doc, p)[:, -1]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    # three new tokens in one call: each sees the cache and the new ones before it
    more = torch.randint(VOCAB, (len(rows), 3), generator=g)
    ids = torch.cat([ids, more], dim=1)
    doc = None if doc is None else torch.cat([doc, torch.full_like(more, 2)], dim=1)
    p = None if paths is None else paths[rows]
    with torch.no_grad():
        got = model(more, paths=p, logits_to_keep=3, cache=cache)
    torch.testing.assert_close(got, _full(model, ids, doc, p, keep=3), atol=1e-5, rtol=1e-5)
    assert len(cache) == ids.shape[1]


def test_logits_to_keep_is_the_tail_of_the_logits():
    model = _model("ffn")
    ids = torch.randint(VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    paths = random_paths(2, 4, gen=torch.Generator().manual_seed(3))
    whole = _full(model, ids, None, paths, keep=0)
    assert whole.shape == (2, 9, model.anchor.cfg.vocab_size)
    for k in (1, 4, 9):
        torch.testing.assert_close(_full(model, ids, None, paths, keep=k), whole[:, -k:], atol=1e-6, rtol=1e-6)


def test_the_cache_refuses_to_grow_past_max_seq_len():
    model = _model("none")
    n = model.anchor.cfg.max_seq_len
    cache = KVCache()
    with torch.no_grad():
        model(torch.zeros(1, n - 1, dtype=torch.long), cache=cache)
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)  # exactly max_seq_len: fine
        with pytest.raises(ValueError, match="exceeds anchor.max_seq_len"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
