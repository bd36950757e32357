"""In-loop fact probes (`train.probe_every=N`): every N optimiser steps, a fixed stratified subset of the fact probes
(`train.probe_per_bucket` items per frequency bucket and probe, seeded) is scored on the model being trained, so a
curve of long-tail accuracy sits next to the loss curve in metrics.jsonl (OLMo-core and nanochat do the same).

Scoring, one batched forward per chunk, no generation: a multiple-choice item is right when its gold choice has the
highest summed log-likelihood; a generation item is right when the greedy (argmax) token at every answer position,
teacher-forced, is the answer's token, i.e. greedy decoding would produce the answer. That is the harness's
exact match up to its stop rules, so the in-loop numbers track `hmem eval`'s closely but are not the same
measurement (the final numbers stay `hmem eval`'s). Prompts are routed with the run's own router, memory runs read
their fetched blocks. Logged: `probe/<probe>/bucket<k>`, `probe/<probe>`, and `probe/sk` (mean over probes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def _items(cfg: Any, per_bucket: int) -> dict[str, list[dict[str, Any]]]:
    if cfg.data.source == "toy":
        from hmem_lit.evaluation.toydata import toy_questions

        sets = toy_questions(cfg.data.toy_docs, cfg.data.seed)
    else:
        from hmem_lit.data.questions import read_probes
        from hmem_lit.evaluation.resources import resolve_data_dir

        sets = read_probes(resolve_data_dir(cfg) / "questions")  # the training phrasing
    rng = np.random.default_rng([cfg.train.seed, 17])
    out: dict[str, list[dict[str, Any]]] = {}
    for name, items in sets.items():
        if not items or items[0].get("bucket") is None:
            continue  # wiki_cloze and other probes without frequency buckets
        picked = []
        for b in sorted({it["bucket"] for it in items}):
            pool = [it for it in items if it["bucket"] == b]
            picked += [pool[i] for i in sorted(rng.permutation(len(pool))[:per_bucket])]
        out[name] = picked
    return out


class InLoopProbes(Callback):
    def __init__(self, cfg: Any, every: int, per_bucket: int, batch: int = 64):
        self.cfg, self.every, self.per_bucket, self.batch = cfg, int(every), int(per_bucket), int(batch)
        self.rows: list[tuple[str, int, int, list[int], list[list[int]], int, Any]] = []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from hmem_lit.evaluation.resources import load_run_tokenizer
        from hmem_lit.evaluation.routing import load_run_router

        sets = _items(self.cfg, self.per_bucket)
        if not sets:
            return
        tok = load_run_tokenizer(self.cfg)
        texts = [it.get("route_text") or it["prompt"] for items in sets.values() for it in items]
        paths = np.asarray(load_run_router(self.cfg).route(texts)) if pl_module.model.memory is not None else None
        k = 0
        for name, items in sets.items():
            for it in items:
                ctx = tok.encode(it["prompt"])
                cands = it.get("choices") or [it["answer"]]
                conts = []
                for c in cands:
                    full = tok.encode(f"{it['prompt']} {c}")
                    conts.append(full[len(ctx) :] if full[: len(ctx)] == ctx else tok.encode(f" {c}"))
                label = int(it.get("label", 0))
                self.rows.append(
                    (name, int(it["bucket"]), len(cands), ctx, conts, label, None if paths is None else paths[k])
                )
                k += 1

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if not self.rows or step == 0 or step % self.every != 0 or not trainer.is_global_zero:
            return
        if getattr(self, "_last", None) == step:  # gradient accumulation: once per optimiser step
            return
        self._last = step
        metrics = self.score(pl_module)
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)

    @torch.no_grad()
    def score(self, pl_module: Any) -> dict[str, float]:
        model = pl_module.model
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        seqs, owners = [], []  # one sequence per (item, candidate)
        for i, (_, _, _, ctx, conts, _, path) in enumerate(self.rows):
            for j, cont in enumerate(conts):
                seqs.append((ctx + cont, len(ctx), len(cont), path))
                owners.append((i, j))
        scores: dict[tuple[int, int], tuple[float, bool]] = {}
        for s in range(0, len(seqs), self.batch):
            chunk = seqs[s : s + self.batch]
            T = max(len(x[0]) for x in chunk)
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, (x, *_rest) in enumerate(chunk):
                ids[r, : len(x)] = torch.tensor(x)
            paths = None
            if chunk[0][3] is not None:
                paths = torch.as_tensor(np.stack([x[3] for x in chunk]), dtype=torch.long, device=device)
            logp = model(ids.to(device), paths=paths, memory_mode="fetched" if paths is not None else "none")
            logp = logp.float().log_softmax(-1).cpu()
            for r, (x, n_ctx, n_cont, _) in enumerate(chunk):
                pos = torch.arange(n_ctx - 1, n_ctx - 1 + n_cont)
                tgt = torch.tensor(x[n_ctx:])
                lp = logp[r, pos]
                scores[owners[s + r]] = (float(lp.gather(1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
        model.train(was)
        right: dict[str, dict[int, list[bool]]] = {}
        for i, (name, bucket, n_c, _, _, label, _) in enumerate(self.rows):
            if n_c > 1:
                ok = int(np.argmax([scores[(i, j)][0] for j in range(n_c)])) == label
            else:
                ok = scores[(i, 0)][1]
            right.setdefault(name, {}).setdefault(bucket, []).append(ok)
        out: dict[str, float] = {}
        for name, by in right.items():
            for b, oks in sorted(by.items()):
                out[f"probe/{name}/bucket{b}"] = float(np.mean(oks))
            out[f"probe/{name}"] = float(np.mean([o for oks in by.values() for o in oks]))
        out["probe/sk"] = float(np.mean([out[f"probe/{n}"] for n in right]))
        return out
