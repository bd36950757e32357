"""Throughput and MFU: the FLOPs formula against a hand count, the peak table, and both metrics in a run."""

from __future__ import annotations

import pytest
import torch

from hmem_lit import runs
from hmem_lit.config import ConfigError, load_config
from hmem_lit.model import MemoryLM, load_model
from hmem_lit.throughput import PEAK_FLOPS, anchor_matmul_params, flops_per_token, model_flops_per_token, peak_flops
from hmem_lit.train import train


def test_flops_per_token_hand_count():
    # 2 layers, d=8, 2 heads x 4 = width 8, d_ff=10, vocab 11, seq 5
    a = load_config(
        None, [f"anchor.{k}={v}" for k, v in dict(n_layer=2, d_model=8, n_head=2, head_dim=4, d_ff=10).items()]
    ).anchor
    a.vocab_size = 11
    # per layer: q,k,v: 3 * 8*8 = 192; o: 8*8 = 64; gate, up, down: 3 * 8*10 = 240 -> 496; x 2 = 992; head 8*11 = 88
    assert anchor_matmul_params(a) == 1080
    # 6 * 1080 = 6480; attention 12 * 2 layers * 5 tokens * width 8 = 960
    assert flops_per_token(a, 5) == 7440
    assert flops_per_token(a, 5, fetched=100) == 7440 + 600
    assert flops_per_token(a, 5, fetched=100, unused=240) == 7440 + 600 - 1440
    a.tie_embeddings = False  # an untied head is the same matmul
    assert anchor_matmul_params(a) == 1080


def test_model_flops_count_the_fetched_memory_not_the_bank():
    cfg = load_config(None, ["anchor.vocab_size=97", "memory.type=ffn", "memory.levels=[2,1]"])
    m = MemoryLM(cfg, 97)
    c = m.param_counts()
    assert c["bank"] > c["fetched"] > 0
    assert model_flops_per_token(m, 64) == flops_per_token(m.cfg.anchor, 64, c["fetched"])
    # every matmul weight of the tiny anchor (embedding and norms excluded) is in the count
    a = m.anchor
    assert (
        anchor_matmul_params(m.cfg.anchor)
        == sum(p.numel() for n, p in a.named_parameters() if p.dim() == 2 and "tok_emb" not in n)
        + a.tok_emb.weight.numel()
    )


def test_peak_table():
    assert dict(PEAK_FLOPS)["H100"] == dict(PEAK_FLOPS)["H200"] == 989e12 and dict(PEAK_FLOPS)["A100"] == 312e12
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", 2.5) == 2.5e12
    with pytest.raises(ConfigError, match=r"train.peak_tflops: must be in \(0, "):
        load_config(None, ["train.peak_tflops=0"])


def test_run_logs_tokens_per_s_and_mfu(tiny_cfg):
    run_dir = train(tiny_cfg(name="speed", **{"train.peak_tflops": 0.5, "train.log_every": 5}))
    recs = [r for r in runs.read_metrics(run_dir) if "train/loss" in r]
    with_rate = [r for r in recs if "train/tokens_per_s" in r]
    assert len(with_rate) >= len(recs) - 2 and all(r["train/tokens_per_s"] > 0 for r in with_rate)
    final = runs.read_final(run_dir)
    th = final["throughput"]
    m, cfg = load_model(run_dir)
    assert th["flops_per_token"] == model_flops_per_token(m, cfg.data.seq_len) and th["peak_flops"] == 0.5e12
    for r in with_rate:  # mfu = tokens/s per device x FLOPs per token / peak, exactly as logged
        assert r["train/mfu"] == pytest.approx(r["train/tokens_per_s"] * th["flops_per_token"] / 0.5e12, rel=1e-6)
    # windows end at steps 5, 10, ..., 40 (the first starts after step 1)
    assert th["windows"] == 40 // 5 and th["mfu"] == pytest.approx(th["tokens_per_s"] * th["flops_per_token"] / 0.5e12)
    assert torch.isfinite(torch.tensor(th["tokens_per_s"]))
