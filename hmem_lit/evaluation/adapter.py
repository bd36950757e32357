"""The lm-eval harness model `hmem`: a trained run directory (weights, tokenizer, retriever) as an `lm_eval` LM.

    lm = HmemLM("runs/exp/name", memory="fetched")            # or lm_eval's registry: model="hmem",
    lm_eval.simple_evaluate(model=lm, tasks=[...], ...)          #   model_args="run_dir=...,memory=blocked"

- Every request routes its own text to fetch memory (rules in `hmem_lit.evaluation.routing`), cached per text;
  each row of a batch carries its own path, so mixed tasks batch together. Memory modes: fetched (default),
  generic (the run's generic block; needs memory.generic=true), none (the bare anchor), blocked (the best-matching
  subtree at `block_level` is replaced by the next-nearest one), random (the bank's blocks on a path hashed from the
  text: the random-routing control). Anchor-only runs ignore the mode.
- `loglikelihood`: requests sorted by length (longest first) and batched with right padding (causal attention
  makes padding invisible to real tokens); results come back in the original order. `is_greedy` = every
  continuation token is the argmax.
- `loglikelihood_rolling`: lm-eval's rolling windows over `max_length` tokens (eval.max_length, default the run's
  training `data.seq_len`) with `rolling_context` tokens of context kept per window (eval.rolling_context, default
  max_length // 2); every token is scored exactly once. The first token is predicted from an EOT prefix.
- `generate_until`: greedy, batched with left padding, cut at the first stop string (`until`) or EOT, at most
  `max_gen_toks` (the request's, else eval.max_gen_tokens) new tokens.
- `rag=cluster|bm25|dense`, `rag_k`, `rag_join` (evaluation/rag.py): training documents retrieved for each request's
  route text are prepended to its context (`loglikelihood`, `generate_until`; perplexity is never given context);
  each request's context tokens, tokens read and forward FLOPs go to the routing log (samples.jsonl).

Conditioning and the EOT prefix: training packs documents with document-causal attention, so a document never
sees the previous one and starts at position 0. Evaluation feeds text the same way (no BOS). An empty context
gets an EOT prefix held in its own document (doc_ids), so the text after it still starts at position 0.
Note: training never supervises the EOT -> first-token prediction, so that one token is poorly predicted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from hmem_lit.anchor import Anchor, KVCache
from hmem_lit.config import ConfigError
from hmem_lit.evaluation.routing import MODES, Retrieval, load_run_router, route_texts
from hmem_lit.model import load_model
from hmem_lit.runs import Run, load_run_tokenizer

# (context tokens, continuation tokens, EOT-prefixed, leading context tokens in their own document (rag_join=separate))
Item = tuple[list[int], list[int], bool, int]


@register_model("hmem")
class HmemLM(LM):
    def __init__(
        self,
        run_dir: str | Path | Run | None = None,
        memory: str | None = "config",
        batch_size: int | str | None = None,
        max_length: int | None = None,
        max_gen_tokens: int | None = None,
        block_level: int | None = None,
        rolling_context: int | None = None,
        device: str | None = "cpu",
        threads: int = 0,
        rag: str | None = None,
        rag_k: int = 1,
        rag_join: str = "causal",
        pretrained: str | None = None,
        **_: Any,
    ):
        super().__init__()
        run_dir = run_dir or pretrained  # lm-eval's usual name for "the model" (its output folders are named by it)
        if not run_dir:
            raise ConfigError("model_args: give the run directory, run_dir=runs/<experiment>/<name>")
        from hmem_lit.utils import set_threads

        # lm-eval's command line passes device="cuda:0" unless --device is given: on a machine without CUDA, use the CPU
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"

        set_threads(int(threads))  # on a shared CPU, 1 thread can be several times faster than oversubscription

        self.run = run_dir if isinstance(run_dir, Run) else Run(run_dir)  # opened once: config, data, final
        self.run_dir = self.run.dir
        if not self.run.weights.is_file():
            raise ConfigError(f"run_dir={run_dir}: no trained run there (no model.safetensors); give a run directory")
        self.model, self.cfg = load_model(self.run, map_location=device)
        ev = self.cfg.eval
        # "config" = the run's eval.memory; None = "none" (lm-eval's arg parser turns memory=none into None)
        self.mode = ev.memory if memory == "config" else (memory or "none")
        if self.mode not in MODES:
            raise ConfigError(f"memory={self.mode!r}: allowed {', '.join(MODES)}")
        if self.model.memory is None:  # an anchor-only run: every mode is the anchor, filed as such (eval/none/)
            self.mode = "none"
        self.batch_size = int(batch_size) if batch_size not in (None, "auto") else ev.batch_size
        self.max_length = int(max_length or ev.max_length or self.cfg.data.seq_len)
        if self.max_length > self.cfg.anchor.max_seq_len:
            raise ConfigError(f"max_length={self.max_length} exceeds anchor.max_seq_len={self.cfg.anchor.max_seq_len}")
        self.max_gen_tokens = int(max_gen_tokens or ev.max_gen_tokens)
        self.rolling_context = int(rolling_context or ev.rolling_context or max(1, self.max_length // 2))
        if not 1 <= self.rolling_context <= self.max_length:
            raise ConfigError(f"rolling_context={self.rolling_context}: must be in 1..max_length={self.max_length}")
        self._device = torch.device(device)
        self.tok = load_run_tokenizer(self.cfg, self.run.data_dir)
        t0 = time.perf_counter()
        self.model_mode, router = self._resolve_mode()
        self.router_load_seconds = time.perf_counter() - t0  # loading the tree and embedder (not per request)
        level = int(block_level or ev.block_level)
        self.retrieval = Retrieval(router, self.mode if router is not None else "none", level)  # pkm: no routing
        self.rag, self.rag_join = self._load_rag(rag, int(rag_k), rag_join, router)
        self.model_seconds = 0.0
        self.kv_cache = True  # greedy decoding reuses keys and values (native anchors); False: recompute each step
        self.routing_log: dict[tuple[Any, Any], dict[str, Any]] = {}  # (task, doc_id) -> route text and path

    def _resolve_mode(self) -> tuple[str, Any]:
        """-> (memory_mode for MemoryLM.forward, router or None), checking the run supports the mode."""
        mem, mcfg = self.model.memory, self.cfg.memory
        if mem is None or self.mode == "none":
            return "none", None
        routed = bool(getattr(mem, "routed", False))  # bank-backed types fetch by path; pkm is token-level
        if self.mode == "generic":
            if not mcfg.generic:
                raise ConfigError(f"{self.run_dir}: memory=generic needs a run trained with memory.generic=true")
            return "generic", None
        if not routed:
            if self.mode in ("blocked", "random"):
                raise ConfigError(f"memory={self.mode} needs a bank-backed memory type, not memory.type={mcfg.type}")
            return "fetched", None
        return "fetched", load_run_router(self.cfg, self.run.data_dir)

    def _load_rag(self, kind: str | None, k: int, join: str, router: Any) -> tuple[Any, str]:
        from hmem_lit.evaluation.rag import RagContext, check_rag, dense_params

        kind = None if kind in (None, "", "none") else kind
        check_rag(kind, k, join)
        a = self.cfg.anchor
        dims = (
            (a.n_layer, a.n_head * a.head_dim)
            if all(isinstance(v, int) for v in (a.n_layer, a.n_head, a.head_dim))
            else None
        )
        self._flops_dims = dims if dims is not None and isinstance(a.vocab_size, int) else None  # hf: not counted
        self._dense = dense_params(self.model, self.model_mode != "none") if self._flops_dims else 0
        return (RagContext.load(self.cfg, kind, k, router) if kind else None), join

    def _contexts(self, requests: Sequence[Any], reserve: Sequence[int]) -> list[list[int]]:
        """Per request: the RAG context tokens (evaluation/rag.py), at most max_length - reserve[i] of them."""
        if self.rag is None or self.rag_join == "inline":
            return [[] for _ in requests]
        from hmem_lit.evaluation.rag import context_tokens

        texts = route_texts(requests)
        out = []
        for req, res, ids in zip(requests, reserve, self.rag.documents(texts)):
            toks = context_tokens([self.tok.encode(self.rag.texts[i]) for i in ids], self.eot_id, self.max_length - res)
            self._log(req, rag_docs=ids, rag_tokens=len(toks))
            out.append(toks)
        return out

    def _inline(self, requests: Sequence[Any], reserve: Sequence[int]) -> list[str]:
        """rag_join=inline: per request the retrieved documents' text to put before its own (evaluation/rag.py)."""
        from hmem_lit.evaluation.rag import inline_text

        if self.rag is None or self.rag_join != "inline":
            return ["" for _ in requests]
        out = []
        for req, res, ids in zip(requests, reserve, self.rag.documents(route_texts(requests))):
            budget = self.max_length - res - 2  # slack: the joint tokenization of context + prompt may differ by one
            text = inline_text([self.rag.texts[i] for i in ids], self.tok.encode, budget)
            toks = self.tok.encode(text) if text else []
            if len(toks) > budget:  # one document longer than the room: its last tokens
                text = self.tok.decode(toks[-budget:]) if budget > 0 else ""
            self._log(req, rag_docs=ids, rag_tokens=len(self.tok.encode(text)) if text else 0)
            out.append(text + " " if text else "")
        return out

    def _log(self, req: Any, **fields: Any) -> None:
        self.routing_log.setdefault((req.task_name, req.doc_id), {}).update(fields)

    def _count(self, req: Any, n_fed: int) -> None:
        """Tokens read and forward FLOPs of a request (evaluation/rag.py: query_flops), summed over its calls."""
        from hmem_lit.evaluation.rag import query_flops

        rec = self.routing_log.setdefault((req.task_name, req.doc_id), {})
        rec["tokens_read"] = rec.get("tokens_read", 0) + n_fed
        if self._flops_dims is not None:
            rec["flops"] = rec.get("flops", 0.0) + query_flops(n_fed, self._dense, *self._flops_dims)

    # ------------------------------------------------------------------------------------------ plumbing

    @property
    def eot_id(self) -> int:
        return int(self.tok.eot_id)

    @property
    def retrieval_seconds(self) -> float:
        return self.retrieval.seconds

    def _paths(self, requests: Sequence[Any]) -> np.ndarray | None:
        texts = route_texts(requests)
        paths = self.retrieval.paths(texts)
        for i, (req, text) in enumerate(zip(requests, texts)):
            rec = self.routing_log.setdefault((req.task_name, req.doc_id), {})
            if "route_text" not in rec:
                rec.update(route_text=text, path=None if paths is None else paths[i].tolist())
        return paths

    @torch.inference_mode()
    def _forward(
        self,
        ids: torch.Tensor,
        doc_ids: torch.Tensor | None,
        paths: np.ndarray | None,
        keep: int = 0,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits of the batch; keep > 0: of its last `keep` positions only (the output head is most of the cost of
        a tiny anchor, and scoring needs only the continuation's positions)."""
        t0 = time.perf_counter()
        p = None if paths is None else torch.as_tensor(paths, dtype=torch.long, device=self._device)
        logits = self.model(
            ids.to(self._device),
            doc_ids=None if doc_ids is None else doc_ids.to(self._device),
            paths=p,
            memory_mode=self.model_mode,
            logits_to_keep=keep,
            cache=cache,
        )
        self.model_seconds += time.perf_counter() - t0
        return logits

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's convention: trailing context spaces move to the continuation; split the joint encoding."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context) if context else []
        return ctx, whole[len(ctx) :]

    # ------------------------------------------------------------------------------------------ scoring

    def score_tokens(self, items: Sequence[Item], paths: np.ndarray | None) -> list[tuple[float, bool]]:
        """(context, continuation, prefixed, separate) token items -> (sum log p(continuation), is_greedy), batched
        by length. The input is the last max_length tokens of [EOT if prefixed] + context + continuation[:-1]; its
        first `separate` context tokens (kept ones) form their own document, the EOT prefix another."""
        out: list[tuple[float, bool]] = [(0.0, True)] * len(items)
        rows = []
        for i, (ctx, cont, pre, sep) in enumerate(items):
            if len(cont) > self.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length={self.max_length}")
            if cont:
                full = ([self.eot_id] if pre else []) + list(ctx) + list(cont)
                keep = full[-(self.max_length + 1) :]
                cut = len(full) - len(keep)
                n_pre = int(pre and cut == 0)
                n_sep = max(0, sep - max(0, cut - int(pre)))  # separate tokens left after the cut
                rows.append((i, keep[:-1], len(cont), n_pre, n_sep))
        rows.sort(key=lambda r: -len(r[1]))
        pad = int(self.tok.pad_id)
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b : b + self.batch_size]
            T = len(batch[0][1])
            ids = torch.full((len(batch), T), pad, dtype=torch.long)
            doc = torch.full((len(batch), T), 2, dtype=torch.long)
            for r, (_, inp, _, n_pre, n_sep) in enumerate(batch):
                ids[r, : len(inp)] = torch.tensor(inp)
                doc[r, :n_pre] = 0  # the EOT prefix is its own document
                doc[r, n_pre : n_pre + n_sep] = 1  # so is a separate RAG context
            needs_doc = any(r[3] or r[4] for r in batch)
            bpaths = None if paths is None else paths[[r[0] for r in batch]]
            start = min(len(inp) - n for _, inp, n, _, _ in batch)  # the first position any row scores
            logits = self._forward(ids, doc if needs_doc else None, bpaths, keep=T - start)  # positions start..T-1
            for r, (i, inp, n, _, _) in enumerate(batch):
                L = len(inp) - start
                logp = torch.log_softmax(logits[r, L - n : L].float(), dim=-1)  # (n, V) predicts the continuation
                tgt = torch.tensor(items[i][1], device=logp.device)
                out[i] = (float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all()))
        return out

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        paths = self._paths(requests)
        pairs = [self._encode_pair(*req.args[:2]) for req in requests]
        if self.rag_join == "inline":  # the documents' text joins the context's text: re-encode the pairs
            pre = self._inline(requests, [len(c) + len(x) for c, x in pairs])
            pairs = [self._encode_pair(t + req.args[0], req.args[1]) for t, req in zip(pre, requests)]
        rag = self._contexts(requests, [len(c) + len(x) for c, x in pairs])
        items: list[Item] = []
        for req, (ctx, cont), extra in zip(requests, pairs, rag):
            sep = len(extra) if self.rag_join == "separate" else 0
            # an empty context is conditioned on the EOT prefix (a causal RAG context ends with EOT: it is the prefix)
            items.append((extra + ctx, cont, not ctx and not (extra and not sep), sep))
            self._count(req, min(len(items[-1][0]) + items[-1][2] + len(cont) - 1, self.max_length))
        return self.score_tokens(items, paths)

    def rolling_windows(self, text: str) -> list[Item]:
        """lm-eval's rolling windows of one text as items; window 0 is conditioned on the EOT prefix."""
        tokens = self.tok.encode(text)
        wins = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(tokens, self.eot_id, self.max_length, self.rolling_context)
        ]
        return [([] if j == 0 else ctx, cont, j == 0, 0) for j, (ctx, cont) in enumerate(wins)]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        req_paths = self._paths(requests)
        items, owner = [], []
        for k, req in enumerate(requests):
            for it in self.rolling_windows(req.args[0]):
                items.append(it)
                owner.append(k)
                self._count(req, min(len(it[0]) + it[2] + len(it[1]) - 1, self.max_length))
        paths = None if req_paths is None else req_paths[owner]
        scores = self.score_tokens(items, paths)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, scores):
            totals[k] += lp
        return totals

    # ------------------------------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        paths = self._paths(requests)
        prompts = [self.tok.encode(req.args[0]) for req in requests]
        kwargs = [dict(req.args[1]) if len(req.args) > 1 and req.args[1] else {} for req in requests]
        new = [int(kw.get("max_gen_toks") or self.max_gen_tokens) for kw in kwargs]
        if self.rag_join == "inline":
            pre = self._inline(requests, [len(p) + n for p, n in zip(prompts, new)])
            prompts = [self.tok.encode(t + req.args[0]) if t else p for t, req, p in zip(pre, requests, prompts)]
        rag = self._contexts(requests, [len(p) + n for p, n in zip(prompts, new)])
        seps = [len(x) if self.rag_join == "separate" else 0 for x in rag]
        prompts = [x + p for x, p in zip(rag, prompts)]
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        out = [""] * len(requests)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            texts, gens = self.greedy(
                [prompts[i] for i in idx],
                [kwargs[i] for i in idx],
                None if paths is None else paths[idx],
                [seps[i] for i in idx],
            )
            for i, t, g in zip(idx, texts, gens):
                out[i] = t
                # a KV cache reads the prompt once and every generated token but the last
                self._count(requests[i], min(int(not prompts[i]) + len(prompts[i]) + max(g - 1, 0), self.max_length))
        return out

    def greedy(
        self,
        prompts: list[list[int]],
        kwargs: list[dict[str, Any]],
        paths: np.ndarray | None,
        seps: Sequence[int] | None = None,
    ) -> tuple[list[str], list[int]]:
        """Greedy decoding of one batch; finished rows leave the batch -> (texts, tokens generated). Rows are
        left-padded; doc_ids put pads, an EOT prefix (empty prompt), the first `seps[i]` prompt tokens (a separate
        RAG context) and the text in separate documents so the text starts at position 0. A native anchor keeps a
        KV cache: after the first pass each step feeds one token per row (the same numbers as feeding the whole
        sequence again, to rounding; checked in tests/test_eval_speed.py) until a row outgrows max_length, from
        where every step feeds the last max_length tokens again."""
        seps = list(seps) if seps is not None else [0] * len(prompts)
        until = []
        for kw in kwargs:
            u = kw.get("until") or []
            until.append([u] if isinstance(u, str) else list(u))
        max_new = [int(kw.get("max_gen_toks") or self.max_gen_tokens) for kw in kwargs]
        gen: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        active = [i for i in range(len(prompts)) if max_new[i] > 0]
        pad = int(self.tok.pad_id)
        cache: KVCache | None = None
        rows: list[int] = []  # the requests the cache's rows hold, in order
        cacheable = self.kv_cache and isinstance(self.model.anchor, Anchor)
        while active:
            longest = max(int(not prompts[i]) + len(prompts[i]) + len(gen[i]) for i in active)
            bpaths = None if paths is None else paths[active]
            if cache is not None and longest <= self.max_length:  # one new token per row on the cached ones
                if rows != active:
                    cache.select(torch.tensor([rows.index(i) for i in active], device=self._device))
                    rows = list(active)
                ids = torch.tensor([[gen[i][-1]] for i in active], dtype=torch.long)
                nxt = self._forward(ids, None, bpaths, keep=1, cache=cache)[:, -1].argmax(-1).tolist()
                active = self._advance(active, nxt, gen, texts, until, max_new)
                continue
            seqs = [
                (([self.eot_id] if not prompts[i] else []) + prompts[i] + gen[i])[-self.max_length :] for i in active
            ]
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), pad, dtype=torch.long)
            doc = torch.zeros((len(seqs), T), dtype=torch.long)
            for r, (i, s) in enumerate(zip(active, seqs)):
                ids[r, T - len(s) :] = torch.tensor(s)
                doc[r, T - len(s) :] = 2
                if not prompts[i] and len(s) == len(gen[i]) + 1:
                    doc[r, T - len(s)] = 1  # the EOT prefix
                n_sep = max(0, seps[i] - (len(prompts[i]) + len(gen[i]) - len(s)))  # separate tokens kept
                doc[r, T - len(s) : T - len(s) + n_sep] = 3
            needs_doc = bool((doc != 2).any())
            cache = KVCache() if cacheable and longest <= self.max_length else None  # uncut: later steps can reuse
            rows = list(active)
            logits = self._forward(ids, doc if needs_doc else None, bpaths, keep=1, cache=cache)
            active = self._advance(active, logits[:, -1].argmax(-1).tolist(), gen, texts, until, max_new)
        return texts, [len(g) for g in gen]

    def _advance(
        self,
        active: list[int],
        nxt: list[int],
        gen: list[list[int]],
        texts: list[str],
        until: list[list[str]],
        max_new: list[int],
    ) -> list[int]:
        """Append each row's next token; -> the rows still generating (no EOT, stop string or length cap yet)."""
        still = []
        for i, t in zip(active, nxt):
            if t == self.eot_id:
                continue
            gen[i].append(int(t))
            texts[i] = self.tok.decode(gen[i])
            cut = [texts[i].find(s) for s in until[i] if s and s in texts[i]]
            if cut:
                texts[i] = texts[i][: min(cut)]
            elif len(gen[i]) < max_new[i]:
                still.append(i)
        return still
