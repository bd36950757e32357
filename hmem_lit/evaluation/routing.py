"""Which text each harness request routes, and turning those texts into memory paths for a memory mode.

The harness hands the model (context, continuation) pairs, not task types, so the route text is chosen from the
shape of the requests (../shared/PAPERS.md A6 says what the paper routes):

1. A document that carries a `route_text` field (every shipped `hmem_*` probe and cloze task) routes that field:
   the question / prompt, without few-shot examples or answer options.
2. `loglikelihood` requests are grouped by (task, document): the text all of a document's requests share is
   routed. For multiple choice every choice has the same context, so the context (the question) is routed; for
   Winograd-style partial evaluation (WinoGrande) the contexts differ per option and the continuation after the
   blank is the shared part, so that is routed. A lone request (LAMBADA-style LM tasks) routes its context.
   When neither side is shared, the longest common prefix of the contexts is routed.
3. `loglikelihood_rolling` routes the full document (perplexity), the same path for every window.
4. `generate_until` routes the prompt (the fact probes: "The atomic number of Carbon is").

`Retrieval` maps route texts to paths for a memory mode, cached per unique text, and times the embedding +
routing separately from the model:
- fetched: the router's path (greedy descent, as in training);
- blocked: per request, the best-matching node at `block_level` is blocked (with its whole subtree, i.e. 1/16 of
  the bank at level 1) and the path descends from the next-nearest node at that level instead;
- random: a seeded hash of the text picks the path (the control for "does routing matter"; the same prompt always
  gets the same blocks, a paraphrase other ones);
- generic / none: no routing (the model uses the generic block, or no memory).
`ToyRouter` routes the toy corpus exactly as `hmem_lit.data.toy.toy_packed` assigns training paths.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.retriever.base import Retriever

MODES = ("fetched", "generic", "none", "blocked", "random")


# ------------------------------------------------------------------------------------------- route texts


def _common_prefix(texts: Sequence[str]) -> str:
    return os.path.commonprefix(list(texts))


def route_texts(requests: Sequence[Any]) -> list[str]:
    """One route text per harness `Instance` (rules in the module docstring)."""
    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, req in enumerate(requests):
        doc = req.doc if isinstance(getattr(req, "doc", None), dict) else {}
        if doc.get("route_text"):
            out[i] = str(doc["route_text"])
        elif req.request_type == "loglikelihood":
            key = (req.task_name, req.doc_id) if req.doc_id is not None else ("", i)
            groups.setdefault(key, []).append(i)
        else:  # rolling: the whole document; generation: the prompt
            out[i] = str(req.args[0])
    for idx in groups.values():
        ctxs = [requests[i].args[0] for i in idx]
        conts = [requests[i].args[1] for i in idx]
        if len(set(ctxs)) == 1:
            text = ctxs[0]
        elif len(set(conts)) == 1:  # Winograd-style: options differ in the context, the rest is shared
            text = conts[0]
        else:
            text = _common_prefix(ctxs)
        for i in idx:
            out[i] = text.strip() or requests[i].args[0]
    return [t if t is not None else "" for t in out]


# ------------------------------------------------------------------------------------------- toy router


class ToyRouter(Retriever):
    """Routes toy text by its first "<topic> <entity>" mention, mirroring `toy_packed`'s path assignment; text
    without one gets a seeded hash path (like the random router)."""

    type = "toy"

    def __init__(self, branching: int, depth: int, seed: int = 0):
        from hmem_lit.data.toy import _TOPICS

        super().__init__(branching, depth, seed)
        self.topics = {t: i for i, t in enumerate(_TOPICS)}
        self.pattern = re.compile(r"\b(" + "|".join(_TOPICS) + r") (\d+)\b")

    def path_of(self, topic: int, ent: int) -> list[int]:
        path, node = [], 0
        for lvl in range(self.depth):  # level 1 from the topic, deeper levels from the entity (as toy_packed)
            child = topic % self.branching if lvl == 0 else (ent // self.branching ** (lvl - 1)) % self.branching
            node = node * self.branching + child
            path.append(node)
        return path

    def route(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.depth), np.int64)
        for i, t in enumerate(texts):
            m = self.pattern.search(t)
            out[i] = self.path_of(self.topics[m.group(1)], int(m.group(2))) if m else self._hash_paths([t])[0]
        return out


def load_run_router(cfg: Any, data_dir: Path | None = None) -> Retriever:
    """The router a run's data was prepared with (toy: ToyRouter); `data_dir`: the run's (runs.Run.data_dir)."""
    from hmem_lit.config import ConfigError

    if cfg.data.source == "toy":
        return ToyRouter(cfg.retriever.branching, cfg.retriever.depth, cfg.retriever.seed)
    from hmem_lit.evaluation.resources import resolve_data_dir
    from hmem_lit.retriever import load_router

    try:
        return load_router(data_dir if data_dir is not None else resolve_data_dir(cfg), cfg)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"retriever tree: {e}") from None


# ------------------------------------------------------------------------------------------- retrieval


class Retrieval:
    """Route texts -> (N, depth) paths for `mode`, cached per unique text; `seconds` accumulates routing time."""

    def __init__(self, router: Retriever | None, mode: str = "fetched", block_level: int = 1):
        if mode not in MODES:
            raise ValueError(f"memory mode {mode!r}: allowed {', '.join(MODES)}")
        if mode in ("fetched", "blocked", "random") and router is None:
            raise ValueError(f"memory mode {mode} needs a router")
        if mode == "blocked" and router is not None and not 1 <= block_level <= router.depth:
            raise ValueError(f"block_level={block_level}: must be in 1..{router.depth} (the tree's levels)")
        self.router, self.mode, self.block_level = router, mode, block_level
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.calls = 0

    @property
    def needs_paths(self) -> bool:
        return self.mode in ("fetched", "blocked", "random")

    def _route(self, texts: list[str]) -> np.ndarray:
        r = self.router
        assert r is not None  # the modes that route are built with a router (checked in __init__)
        if self.mode == "fetched":
            return r.route(texts)
        if self.mode == "random":  # a control: a hash of the text picks the leaf (same text, same path)
            return Retriever(r.branching, r.depth, r.seed + 1)._hash_paths(texts)
        ranked = r.route_ranked(texts, self.block_level)  # (N, K) level-L candidates, best first
        return r.route_from(texts, self.block_level, ranked[:, 1])  # descend from the next-nearest node

    def paths(self, texts: Sequence[str]) -> np.ndarray | None:
        """-> (N, depth) int64 paths (None when the mode routes nothing)."""
        if not self.needs_paths:
            return None
        assert self.router is not None  # the modes that route are built with a router (checked in __init__)
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            t0 = time.perf_counter()
            got = np.asarray(self._route(new), np.int64)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            self.cache.update(zip(new, got))
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.router.depth), np.int64)


# ------------------------------------------------------------------------------------------- diagnostics


def routing_report(
    samples: dict[str, list[dict]],
    routing_log: dict,
    keys: dict[str, dict],
    field: str,
    sk: dict[str, tuple[str, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Per probe and bucket: the share of prompts routed to their key's main leaf (`keys`: tree/keys.json), the
    accuracy, and the accuracy when routed right vs wrong -> (detail for results.json, flat
    `route/<probe>/bucket<k>` headline; modes that route nothing get accuracy only).

    A sample counts when its document's `field` (data.key_field, e.g. `entity`) names a key with training
    documents. The shipped probe tasks (`sk`: task -> (probe, variant)) count in the training phrasing only (the
    other variants' hits are in the item records); any other task (a user's own, `hmem eval --include-path`) is
    its own group. Buckets come from the document's `bucket` field when it has one, else from the key's
    training-document bucket."""
    from hmem_lit.retriever.diagnostics import hit_rates

    sk = sk or {}
    recs = []
    for task, rows in samples.items():
        probe, variant = sk.get(task, (task, "base"))
        if variant != "base":
            continue
        for s in rows:
            doc = s.get("doc") or {}
            key = doc.get(field)
            info = routing_log.get((task, s.get("doc_id")), {})
            if key is None or str(key) not in keys:
                continue
            k = keys[str(key)]
            b = doc.get("bucket")
            bucket = int(b) if isinstance(b, int) and b >= 0 else k["bucket"]
            correct = next((float(s[n]) for n in ("acc", "exact_match") if isinstance(s.get(n), (int, float))), None)
            path = info.get("path")  # None: this mode routes nothing (generic, none, a run without memory)
            recs.append(
                {
                    "group": probe,
                    "bucket": bucket,
                    "correct": correct,
                    "hit": None if path is None else list(path) == k["main_path"],
                }
            )
    detail = hit_rates(recs)
    flat = {
        f"route/{g}/bucket{b}": v["hit_rate"]
        for g, bs in detail.items()
        for b, v in bs.items()
        if v["hit_rate"] is not None
    }
    return detail, flat
