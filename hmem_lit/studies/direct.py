"""Direct fact scoring without the harness, for the knowledge-separation analyses (editing, attribution, errors).

The scoring rule is the in-loop probes' (evaluation/inloop.py), item by item: a multiple-choice item is right when
its gold choice has the highest summed log-likelihood; a generation item is right when the teacher-forced argmax
token at every answer position is the answer's token (greedy decoding would produce the answer). Every item also
gets the log-likelihood of its gold continuation, so a change to the model (an edit, an ablated block) can be
measured per item and not only as an accuracy.

    items = probe_items(data_dir)                      # every bucketed probe item, with its probe name
    enc = encode(items, tok)                           # token ids per item
    ok, gold_lp = score(model, enc, paths)             # paths (N, depth) or None (memory off)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmem_lit.config import ConfigError
from hmem_lit.data.questions import read_probes
from hmem_lit.runs import resolve_data_dir


@dataclass
class Encoded:
    ctx: list[int]  # prompt tokens
    conts: list[list[int]]  # one continuation per candidate (generation: the answer only)
    label: int  # index of the gold continuation


def facts_data_dir(run_dir: Path, cfg: Any, what: str) -> Path:
    """The data directory of a run trained on the built-in facts corpus (synthetic people, bucketed probes), for
    commands that need them (`what`: "editing", "attribution"); any other corpus is one ConfigError."""
    if cfg.data.source != "builtin":
        raise ConfigError(
            f"{run_dir}: {what} needs a run trained on the built-in facts corpus, and this one used "
            f"data.source={cfg.data.source}; train one with data.source=builtin"
        )
    return resolve_data_dir(cfg)


def probe_items(data_dir: str | Path) -> list[dict[str, Any]]:
    """Every item of the bucketed probes in the training phrasing under <data_dir>/questions (wiki_cloze has no
    buckets and is left out); each item gets "probe" (the file's name)."""
    return [{**r, "probe": p} for p, rows in read_probes(Path(data_dir) / "questions").items() for r in rows]


def encode_one(tok: Any, prompt: str, candidates: list[str], label: int = 0) -> Encoded:
    ctx = tok.encode(prompt)
    conts = []
    for c in candidates:
        full = tok.encode(f"{prompt} {c}")
        conts.append(full[len(ctx) :] if full[: len(ctx)] == ctx else tok.encode(f" {c}"))
    return Encoded(ctx, conts, int(label))


def encode(items: list[dict[str, Any]], tok: Any, answer_key: str = "answer") -> list[Encoded]:
    """Items -> token ids; `answer_key` names the gold field of generation items (an edit scores "new_answer")."""
    out = []
    for it in items:
        if it.get("choices"):
            out.append(encode_one(tok, it["prompt"], list(it["choices"]), int(it.get("label", 0))))
        else:
            out.append(encode_one(tok, it["prompt"], [str(it[answer_key])]))
    return out


@torch.no_grad()
def score(
    model: Any, enc: list[Encoded], paths: np.ndarray | None, batch: int = 64, memory_mode: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """-> (right (N,) bool, gold log-likelihood (N,) float). paths (N, depth): the blocks each item reads
    (memory_mode fetched); None: memory off."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    mode = memory_mode or ("fetched" if paths is not None else "none")
    seqs = [(i, j) for i, e in enumerate(enc) for j in range(len(e.conts))]
    lp_all: dict[tuple[int, int], tuple[float, bool]] = {}
    for s in range(0, len(seqs), batch):
        chunk = seqs[s : s + batch]
        full = [enc[i].ctx + enc[i].conts[j] for i, j in chunk]
        T = max(len(x) for x in full)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        for r, x in enumerate(full):
            ids[r, : len(x)] = torch.tensor(x)
        p = None
        if paths is not None and mode == "fetched":
            p = torch.as_tensor(np.stack([paths[i] for i, _ in chunk]), dtype=torch.long, device=device)
        logp = model(ids.to(device), paths=p, memory_mode=mode).float().log_softmax(-1).cpu()  # (B, T, V)
        for r, (i, j) in enumerate(chunk):
            n_ctx, cont = len(enc[i].ctx), enc[i].conts[j]
            pos = torch.arange(n_ctx - 1, n_ctx - 1 + len(cont))
            tgt = torch.tensor(cont)
            lp = logp[r, pos]
            lp_all[(i, j)] = (float(lp.gather(1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
    model.train(was)
    right = np.zeros(len(enc), bool)
    gold = np.zeros(len(enc), np.float64)
    for i, e in enumerate(enc):
        if len(e.conts) > 1:
            right[i] = int(np.argmax([lp_all[(i, j)][0] for j in range(len(e.conts))])) == e.label
        else:
            right[i] = lp_all[(i, 0)][1]
        gold[i] = lp_all[(i, e.label)][0]
    return right, gold


def paired_diff(before: np.ndarray, after: np.ndarray, iters: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy after - before over the same items, with a bootstrap 95% interval (items resampled) and the flips."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    n = len(before)
    if n == 0:
        return {"n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iters, n))
    d = (after[idx] - before[idx]).mean(1)
    return {
        "n": n,
        "before": float(before.mean()),
        "after": float(after.mean()),
        "diff": float((after - before).mean()),
        "ci95": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))],
        "lost": int(((before == 1) & (after == 0)).sum()),
        "gained": int(((before == 0) & (after == 1)).sum()),
    }
