"""train.compile: the anchor with its memory hooks compiles as one graph (no graph breaks in the step's hot path)
and equals the eager anchor within float tolerance (outputs and every gradient, bank rows included)."""

from __future__ import annotations

import pytest
import torch

from hmem_lit.anchor import lm_loss
from hmem_lit.config import load_config
from hmem_lit.memory.base import memory_class

from .memory_util import make_cfg, make_model

TYPES = ["none", "ffn", "lora", "kv"]  # pkm: see test_pkm_breaks_only_at_its_row_lookup


def _inputs(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(50, (3, 24), generator=g)
    doc = torch.tensor([[0] * 10 + [1] * 14, [0] * 24, [0] * 20 + [1] * 4])  # packed, one document, padded
    paths = torch.tensor([[0, 1], [1, 6], [3, 15]])
    return idx, doc, paths


@pytest.mark.parametrize("mtype", TYPES)
def test_no_graph_breaks_in_the_anchor_with_hooks(mtype):
    cfg = make_cfg(mtype)
    m = make_model(cfg)
    idx, doc, paths = _inputs(cfg)
    hooks = None if m.memory is None else m.memory.fetch(paths)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(m.anchor)(idx, doc_ids=doc, hooks=hooks)
    assert ex.graph_break_count == 0, ex.break_reasons
    assert ex.graph_count == 1


def test_pkm_breaks_only_at_its_row_lookup():
    """pkm's value lookup has a data-dependent shape (the distinct rows its sparse gradient touches: nonzero), so
    dynamo splits the graph there and nowhere else."""
    cfg = make_cfg("pkm")
    m = make_model(cfg)
    idx, doc, _ = _inputs(cfg)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(m.anchor)(idx, doc_ids=doc, hooks=m.memory.fetch(None))
    assert ex.graph_break_count > 0
    for r in ex.break_reasons:
        assert r.user_stack[-1].filename.endswith("memory/pkm.py"), r


def _grads(m, cfg, idx, doc, paths):
    m.zero_grad(set_to_none=True)
    logits = m(idx, doc_ids=doc, paths=paths if m.memory is not None else None)
    lm_loss(logits, idx.roll(-1, dims=1)).backward()
    out = {}
    for n, p in m.named_parameters():
        if p.grad is not None:
            out[n] = p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
    return logits.detach(), out


def _check_equal(mtype: str, backend: str):
    cfg = make_cfg(mtype)
    m = make_model(cfg)
    idx, doc, paths = _inputs(cfg)
    ref_logits, ref = _grads(m, cfg, idx, doc, paths)
    torch._dynamo.reset()
    m.anchor.compile(backend=backend, dynamic=False)
    logits, got = _grads(m, cfg, idx, doc, paths)
    assert list(m.state_dict()) == [k for k in m.state_dict()]  # names unchanged: no _orig_mod. prefix
    assert not any("_orig_mod" in k for k in m.state_dict())
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert got.keys() == ref.keys()
    for n in ref:
        assert torch.allclose(got[n], ref[n], atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize(
    "mtype", ["ffn", "kv", pytest.param("none", marks=pytest.mark.slow), pytest.param("lora", marks=pytest.mark.slow)]
)
def test_compiled_equals_eager_aot(mtype):
    """AOT autograd's traced forward + backward graphs (no code generation: fast) equal eager."""
    _check_equal(mtype, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("mtype", ["none", "ffn"])
def test_compiled_equals_eager_inductor(mtype):
    """inductor's generated kernels (the train.compile default; ~80 s to compile here) equal eager."""
    _check_equal(mtype, "inductor")


def test_train_compile_key():
    assert load_config(None, ["train.compile=true"]).train.compile is True
    assert memory_class("ffn").routed  # the bank-backed types' gather runs outside the compiled anchor


@pytest.mark.slow
def test_train_compile_run_equals_eager_run(tiny_cfg):
    """A whole run with train.compile=true (inductor) logs the eager run's losses within tolerance."""
    from hmem_lit import runs
    from hmem_lit.train import train

    def losses(run_dir):
        return [r["train/loss"] for r in runs.read_metrics(run_dir) if "train/loss" in r]

    kw = {"train.max_tokens": 5_000, "memory.type": "ffn", "memory.levels": "[2,1]"}
    eager = train(tiny_cfg(name="eager", **kw))
    compiled = train(tiny_cfg(name="compiled", **{**kw, "train.compile": "true"}))
    a, b = losses(eager), losses(compiled)
    assert len(a) == len(b) > 5
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_flex_on_cuda_equals_eager_sdpa():
    """The GPU hot path (compiled anchor, flex attention, ffn hooks) against the eager dense-mask reference, fp32."""
    # head_dim 16: inductor's CUDA flex kernel refuses smaller heads (make_cfg's 8 is for CPU speed)
    cfg = make_cfg("ffn", "anchor.attention=sdpa", "anchor.head_dim=16")
    ref_m = make_model(cfg).cuda()
    m = make_model(make_cfg("ffn", "anchor.attention=flex", "anchor.head_dim=16")).cuda()
    idx, doc, paths = (t.cuda() for t in _inputs(cfg))
    ref_logits, ref = _grads(ref_m, cfg, idx, doc, paths)
    torch._dynamo.reset()
    m.anchor.compile(dynamic=False)
    logits, got = _grads(m, cfg, idx, doc, paths)
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    for n in ref:
        assert torch.allclose(got[n], ref[n], atol=1e-5, rtol=1e-3), n
