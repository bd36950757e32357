"""Prefetch (hmem_lit/storage/prefetch.py): staged rows of an offloaded bank stand for the plain gather exactly
(values, sparse gradient), are used only for the same ids at the same table version, and a prefetching run
trains bit for bit like one without, with a hit for every micro-batch after the first."""

from __future__ import annotations

import pytest
import torch

from hmem_lit import runs
from hmem_lit.config import ConfigError, load_config
from hmem_lit.optim import build_optimizer

from .conftest import DEBUG_YAML, assert_same_run, train_each
from .memory_util import VOCAB, cuda_offload_run, make_cfg, make_model, random_paths

PF = ["memory.storage.offload=true", "memory.storage.prefetch=true", "memory.generic=true"]


def _step(model, cfg, x, paths, generic, opt=None):
    from hmem_lit.anchor import lm_loss

    loss = lm_loss(model(x[:, :-1], paths=paths, generic=generic), x[:, 1:])
    loss.backward()
    grads = {n: p.grad.coalesce() for n, p in model.named_parameters() if ".bank." in n}
    if opt is not None:
        opt.step()
        opt.zero_grad()
    return float(loss.detach()), grads


def test_staged_rows_equal_the_gather_in_values_and_sparse_gradient():
    cfg_pf, cfg_plain = make_cfg("ffn", *PF), make_cfg("ffn", "memory.storage.offload=true", "memory.generic=true")
    a, b = make_model(cfg_pf), make_model(cfg_plain)
    bank = a.memory.bank
    assert bank.backend.prefetch is not None and b.memory.bank.backend.prefetch is None
    g = torch.Generator().manual_seed(0)
    x, paths = torch.randint(0, VOCAB, (5, 13), generator=g), random_paths(5, 4, gen=g)
    generic = torch.tensor([False, True, False, False, True])
    bank.stage(paths, generic, torch.device("cpu"))
    assert set(bank.backend.prefetch.staged) == {1, 2}
    la, ga = _step(a, cfg_pf, x, paths, generic)
    lb, gb = _step(b, cfg_plain, x, paths, generic)
    assert bank.backend.prefetch.hits == 2 and bank.backend.prefetch.misses == 0 and not bank.backend.prefetch.staged
    assert la == lb
    for k in ga:  # the same coalesced sparse gradient of the host table
        assert torch.equal(ga[k].indices(), gb[k].indices()) and torch.equal(ga[k].values(), gb[k].values())


def test_staged_rows_are_used_only_for_the_same_ids_at_the_same_version():
    cfg = make_cfg("ffn", *PF)
    model = make_model(cfg)
    bank, opt = model.memory.bank, build_optimizer(model, cfg, total_steps=4)["optimizer"]
    pf = bank.backend.prefetch
    g = torch.Generator().manual_seed(1)
    x, paths = torch.randint(0, VOCAB, (4, 11), generator=g), random_paths(4, 4, level1=[0, 1], gen=g)
    other = random_paths(4, 4, level1=[2, 3], gen=g)
    bank.stage(paths, None, torch.device("cpu"))
    _step(model, cfg, x, other, None)  # other ids: the plain gather; the staged rows are kept
    assert (pf.hits, pf.misses, set(pf.staged)) == (0, 2, {1, 2})
    model.zero_grad()
    _step(model, cfg, x, paths, None)  # the same ids, no update since staging: used
    assert (pf.hits, pf.misses, set(pf.staged)) == (2, 2, set())
    model.zero_grad()
    bank.stage(paths, None, torch.device("cpu"))
    _step(model, cfg, x, other, None, opt)  # an optimiser step updates the tables: the staged copies are stale
    _step(model, cfg, x, paths, None)
    # the `other` fetch missed (2), then the stale copies: dropped, plain gather (2)
    assert (pf.hits, pf.misses, set(pf.staged)) == (2, 6, set())


def test_prefetch_needs_a_bank_on_the_host():
    with pytest.raises(ConfigError, match="memory.storage.prefetch"):
        load_config(DEBUG_YAML, ["memory.type=ffn", "memory.levels=[4]", "memory.storage.prefetch=true"])
    load_config(
        DEBUG_YAML, ["memory.type=ffn", "memory.levels=[4]", "memory.storage.prefetch=true", "memory.storage.kind=disk"]
    )


def test_prefetching_run_equals_the_plain_run(tmp_path):
    """hmem train with memory.storage.offload + prefetch (gradient accumulation 2, generic block on) gives the plain
    offloaded run's weights and metrics bit for bit; every micro-batch after the first read staged rows."""
    extra = {
        "memory.type": "ffn",
        "memory.levels": "[4,2]",
        "memory.generic": "true",
        "memory.storage.offload": "true",
        "retriever.depth": 2,
        "retriever.branching": 4,
        "train.accumulate": 2,
        "train.max_tokens": 16_384,
    }
    dirs = train_each(tmp_path, "memory.storage.prefetch", ["false", "true"], **extra)
    assert_same_run(dirs["false"], dirs["true"])
    final = runs.read_final(dirs["true"])
    micro = final["steps"] * 2
    assert final["throughput"]["prefetch_hits"] == (micro - 1) * 2  # 2 bank levels, all but the first micro-batch
    assert "prefetch_hits" not in runs.read_final(dirs["false"])["throughput"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_side_stream_prefetch_equals_the_plain_offload(dtype):
    """On CUDA the staged rows go through pinned memory and a side stream: losses and host tables after 6 steps are
    bit for bit those of the plain offloaded bank, and steps 2-6 read staged rows (5 steps x 2 levels)."""
    plain, pf = (
        cuda_offload_run(f"memory.storage.dtype={dtype}"),
        cuda_offload_run("memory.storage.prefetch=true", f"memory.storage.dtype={dtype}"),
    )
    assert plain[0] == pf[0]
    assert all(torch.equal(a, b) for a, b in zip(plain[1], pf[1]))
    assert pf[2] == 10
