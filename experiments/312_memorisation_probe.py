"""Question: can each memory type store facts on its own on a frozen anchor, and at what learning rate? (issue 31,
          "fair memory types": LoRA and KV had run at the FFN's rates)
Command:  python experiments/312_memorisation_probe.py [--out docs/results/memorisation_probe.csv]   (~1-3 min CPU)
Result:   docs/results/memorisation_probe.csv and experiments/LOG.md 2026-12-07 "fair memory types"; the passing
          settings are tests/test_memorisation.py's.

The setting of tests/test_memorisation.py (its fixture and facts, imported from there): a tiny anchor (3 layers,
d 32, vocabulary 50) trained on a deterministic language and then frozen; 8 facts [entity, relation, random value,
5 filler tokens], each routed to its own leaf of a 4 x 4 tree; memory trained alone on them. Per type, target,
rate and step count: the value token's cross-entropy and top-1 accuracy given entity and relation, on the facts'
own leaves and on other leaves (a routed bank should know a fact only on its leaf).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hmem_lit.anchor import lm_loss  # noqa: E402
from hmem_lit.model import prepare_model_for_mode  # noqa: E402
from hmem_lit.utils import atomic_write_text  # noqa: E402
from tests import test_memorisation as tm  # noqa: E402
from tests.memory_util import build_optimizer, clip_gradients, make_cfg, make_model  # noqa: E402

GRID = [  # (type, extra keys, rates, steps)
    ("ffn", (), (1e-2, 3e-2), (60,)),
    ("lora", ("memory.lora.target=qk",), (1e-2, 3e-2, 1e-1, 3e-1), (60, 200)),
    ("lora", ("memory.lora.target=vo",), (1e-2, 3e-2), (60,)),
    ("lora", ("memory.lora.target=ffn",), (1e-2, 3e-2), (60,)),
    ("lora", ("memory.lora.target=vo", "memory.lora.scaling=alpha/sqrt(r)"), (1e-2, 3e-2), (60,)),
    ("kv", (), (1e-2, 3e-2, 1e-1, 3e-1), (60, 200)),
    ("pkm", (), (1e-2, 3e-2, 1e-1), (60, 200)),
]


def run(state, mtype: str, extra: tuple[str, ...], lr: float, steps: int) -> dict[str, object]:
    cfg = make_cfg(
        mtype,
        "train.mode=frozen",
        "train.init_from=anchor",
        f"optim.memory_lr={lr}",
        f"optim.memory_min_lr={lr}",
        "optim.memory_weight_decay=0",
        *extra,
    )
    model = prepare_model_for_mode(make_model(cfg, seed=1), cfg, load_anchor_state=lambda _: state)
    docs, paths = tm._facts()
    l0, a0 = tm._value(model, docs, paths)
    opt = build_optimizer(model, cfg, total_steps=steps)["optimizer"]
    model.train()
    for _ in range(steps):
        lm_loss(model(docs[:, :-1], paths=paths), docs[:, 1:]).backward()
        clip_gradients(model, cfg)
        opt.step()
        opt.zero_grad()
    l1, a1 = tm._value(model, docs, paths)
    l2, a2 = tm._value(model, docs, paths.roll(1, 0))
    return {
        "type": mtype,
        "options": " ".join(extra),
        "lr": lr,
        "steps": steps,
        "anchor_value_loss": round(l0, 3),
        "anchor_value_acc": a0,
        "value_loss": round(l1, 3),
        "value_acc": a1,
        "other_leaf_value_loss": round(l2, 3),
        "other_leaf_value_acc": a2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs/results/memorisation_probe.csv"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    state = tm.anchor_state.__wrapped__()  # the pytest fixture's function
    rows = []
    for mtype, extra, rates, steps_list in GRID:
        for lr in rates:
            for steps in steps_list:
                rows.append(run(state, mtype, extra, lr, steps))
                print(rows[-1], flush=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(a.out), buf.getvalue())
    print(f"{len(rows)} rows -> {a.out}")


if __name__ == "__main__":
    main()
