"""Can each memory type store facts on its own? (issue 31, "fair memory types")

On a trained tiny anchor held frozen, every registered memory type (and PKM) is trained on 8 "facts"
(entity, relation, random value) that the anchor cannot know: it predicts its own learnt successor of the relation
token instead, with a loss of ~15 nats on the value. Memory alone must bring the value's loss well below the
anchor's and rank the value first; a routed bank must keep it in the routed blocks (the same prompts on other
leaves do not know it); the anchor's weights never move.

Each type runs at a learning rate it can memorise with, found on this probe (LOG 2026-12-07, "fair memory
types"): FFN and LoRA at 3e-2 in 60 steps, KV at 3e-1 in 60 (at the FFN's rate KV's value loss falls from 15.4 only
to 10.1 in 60 steps: its slot keys start near-uniform and need ~10x the step), PKM at 3e-2 in 200 (a token-level
memory keys on the relation token's hidden state, which the frozen anchor barely separates by entity: 4/8 in 60
steps). So "KV is no better than the anchor" at the FFN's rates says more about its learning rate than about what
it can store. LoRA on query+key (the default target)
is not tested here: re-weighting attention cannot produce a value that is absent from the context (on this probe
it reached 2/8 even at 200 steps and 3e-1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmem_lit.anchor import lm_loss
from hmem_lit.model import prepare_model_for_mode
from tests.memory_util import VOCAB, build_optimizer, clip_gradients, make_cfg, make_model

N_FACTS = 8


@pytest.fixture(scope="module")
def anchor_state() -> dict[str, torch.Tensor]:
    """A tiny anchor trained on a deterministic language (x_{t+1} = 3 x_t + 1 mod V): a sharp, confident model."""
    torch.manual_seed(0)
    cfg = make_cfg("none", "optim.lr=3e-2", "optim.min_lr=3e-2", "optim.weight_decay=0", levels="[]")
    model = make_model(cfg, seed=0)
    opt = build_optimizer(model, cfg, total_steps=150)["optimizer"]
    g = torch.Generator().manual_seed(123)
    for _ in range(150):
        x0 = torch.randint(VOCAB, (8, 1), generator=g)
        x = [x0]
        for _ in range(8):
            x.append((x[-1] * 3 + 1) % VOCAB)
        seq = torch.cat(x, 1)
        lm_loss(model(seq[:, :-1], paths=None), seq[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return {f"anchor.{k}": v.detach().clone() for k, v in model.anchor.state_dict().items()}


def _facts() -> tuple[torch.Tensor, torch.Tensor]:
    """8 documents [entity_i, relation, value_i, 5 filler tokens] and their leaves (distinct, 4 x 4 tree)."""
    g = torch.Generator().manual_seed(7)
    n = N_FACTS
    docs = torch.cat(
        [
            torch.arange(n)[:, None],
            torch.full((n, 1), 8),
            torch.randint(10, VOCAB, (n, 1), generator=g),
            torch.randint(10, VOCAB, (n, 5), generator=g),
        ],
        1,
    )
    i = torch.arange(n)
    return docs, torch.stack([i % 4, i % 4 * 4 + i // 4], 1)


def _value(model, docs, paths) -> tuple[float, float]:
    """(cross-entropy of the value token, share of facts whose value ranks first) given entity and relation."""
    model.eval()
    with torch.no_grad():
        logits = model(docs[:, :2], paths=paths)[:, 1]
    return float(F.cross_entropy(logits, docs[:, 2])), float((logits.argmax(-1) == docs[:, 2]).float().mean())


@pytest.mark.parametrize(
    "mtype,lr,steps,extra",
    [
        ("ffn", 3e-2, 60, ()),
        ("lora", 3e-2, 60, ("memory.lora.target=ffn",)),
        ("lora", 3e-2, 100, ("memory.lora.target=vo",)),
        ("kv", 3e-1, 100, ()),
        ("pkm", 3e-2, 200, ()),
    ],
    ids=["ffn", "lora-ffn", "lora-vo", "kv", "pkm"],
)
def test_memory_alone_learns_facts_the_frozen_anchor_cannot(anchor_state, mtype, lr, steps, extra):
    cfg = make_cfg(
        mtype,
        "train.mode=frozen",
        "train.init_from=anchor",  # the state comes from the fixture, through the real loader's code path
        f"optim.memory_lr={lr}",
        f"optim.memory_min_lr={lr}",
        "optim.memory_weight_decay=0",
        *extra,
    )
    model = prepare_model_for_mode(make_model(cfg, seed=1), cfg, load_anchor_state=lambda _: anchor_state)
    docs, paths = _facts()
    before, before_acc = _value(model, docs, paths)
    assert before > 5.0 and before_acc <= 2 / N_FACTS, "the anchor should not know the facts"
    opt = build_optimizer(model, cfg, total_steps=steps)["optimizer"]
    model.train()
    for _ in range(steps):
        lm_loss(model(docs[:, :-1], paths=paths), docs[:, 1:]).backward()
        clip_gradients(model, cfg)
        opt.step()
        opt.zero_grad()
    after, acc = _value(model, docs, paths)
    assert after < 0.1 * before and acc >= 7 / N_FACTS, f"{mtype}: value loss {before:.2f} -> {after:.2f}, acc {acc}"
    state = model.anchor.state_dict()
    assert all(torch.equal(state[k[len("anchor.") :]], v) for k, v in anchor_state.items()), "the anchor moved"
    if getattr(model.memory, "routed", False):  # a bank: the facts live in their own leaves' blocks
        elsewhere, acc_elsewhere = _value(model, docs, paths.roll(1, 0))
        assert acc_elsewhere <= 2 / N_FACTS and elsewhere > 0.5 * before, (mtype, elsewhere, acc_elsewhere)
