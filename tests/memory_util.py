"""Helpers shared by the memory tests: tiny configs, random batches, a hand-written training loop."""

from __future__ import annotations

import torch

from hmem_lit.anchor import lm_loss
from hmem_lit.config import RunConfig, load_config
from hmem_lit.model import MemoryLM
from hmem_lit.optim import build_optimizer, clip_gradients

VOCAB = 50
# per-type overrides a bank-less type needs for the shared tests (pkm: add mode, so zero-init holds)
TYPE_OVERRIDES = {"pkm": ["memory.pkm.mode=add", "memory.pkm.n_keys=8", "memory.pkm.topk=4", "memory.pkm.k_dim=16"]}


def make_cfg(mtype: str = "ffn", *extra: str, levels: str = "[4,2]", branching: int = 4) -> RunConfig:
    ov = [
        f"memory.type={mtype}",
        f"memory.levels={levels}",
        "retriever.depth=2",
        f"retriever.branching={branching}",
        "anchor.n_layer=3",
        "anchor.d_model=32",
        "anchor.n_head=2",
        "anchor.head_dim=8",
        "anchor.d_ff=64",
        "train.mode=scratch",
        "optim.warmup=0",
        *TYPE_OVERRIDES.get(mtype, []),
        *extra,
    ]
    return load_config(None, ov)


def make_model(cfg: RunConfig, seed: int = 0) -> MemoryLM:
    torch.manual_seed(seed)
    return MemoryLM(cfg, VOCAB)


def random_paths(n: int, branching: int, level1: list[int] | None = None, gen: torch.Generator | None = None):
    """(n, 2) valid paths; level-1 nodes drawn from `level1` if given."""
    choices = torch.tensor(level1 if level1 is not None else list(range(branching)))
    p1 = choices[torch.randint(len(choices), (n,), generator=gen)]
    return torch.stack([p1, p1 * branching + torch.randint(branching, (n,), generator=gen)], dim=1)


def batch(n: int = 4, t: int = 12, seed: int = 0, branching: int = 4, level1: list[int] | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(VOCAB, (n, t), generator=g)
    return x, torch.randint(VOCAB, (n, t), generator=g), random_paths(n, branching, level1, g)


def train(model: MemoryLM, cfg: RunConfig, batches: list, opt_sched=None):
    """Plain loop: forward, loss, backward, clip, step, schedule. -> (optimizer, scheduler)."""
    if opt_sched is None:
        o = build_optimizer(model, cfg, total_steps=20)
        opt_sched = (o["optimizer"], o["lr_scheduler"]["scheduler"])
    opt, sched = opt_sched
    model.train()
    for x, y, paths in batches:
        lm_loss(model(x, paths=paths), y).backward()
        clip_gradients(model, cfg)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return opt, sched


def train_random(cfg: RunConfig, steps: int, seed: int = 1, model=None, opt=None, start: int = 0):
    """Optimiser steps on seeded random batches (6 x 16 tokens; level-1 nodes 2 and 3 never fetched) -> (model,
    optimiser, losses). start: batches a resumed run has already seen (drawn, not trained on)."""
    model = make_model(cfg) if model is None else model
    opt = build_optimizer(model, cfg, total_steps=8)["optimizer"] if opt is None else opt
    g = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(start + steps):
        idx = torch.randint(0, VOCAB, (6, 17), generator=g)
        paths = random_paths(6, 4, level1=[0, 1], gen=g)
        if i < start:
            continue
        loss = lm_loss(model(idx[:, :-1], paths=paths), idx[:, 1:])
        loss.backward()
        clip_gradients(model, cfg)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return model, opt, losses


def cuda_offload_run(*extra: str) -> tuple[list[float], list[torch.Tensor], int]:
    """6 steps of an offloaded ffn bank with the anchor on CUDA (bf16 autocast), telling the bank the next batch
    before each step and staging it after (no-ops without async_update / prefetch) -> (losses,
    host tables, prefetch hits)."""
    cfg = make_cfg("ffn", "memory.storage.offload=true", *extra)
    model = make_model(cfg).cuda().train()
    opt = build_optimizer(model, cfg, total_steps=8)["optimizer"]
    bank, dev = model.memory.bank, torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, VOCAB, (6, 33), generator=g), random_paths(6, 4, gen=g)) for _ in range(7)]
    losses = []
    for i in range(6):
        x, paths = data[i][0].to(dev), data[i][1].to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(model(x[:, :-1], paths=paths), x[:, 1:])
        loss.backward()
        clip_gradients(model, cfg)
        bank.expect(data[i + 1][1], None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bank.stage(data[i + 1][1].to(dev), None, dev)
    bank.wait()
    assert all(t.device.type == "cpu" for _, _, t in bank.tables())
    hits = bank.backend.prefetch.hits if bank.backend.prefetch is not None else 0
    return losses, [t.detach().clone() for _, _, t in bank.tables()], hits
