"""`hmem generate RUN "prompt" ...`: greedy continuations from a trained run, with memory routed exactly as in
evaluation (each prompt is its own route text; evaluation/routing.py), through the lm-eval `hmem` model's own
decoding (evaluation/adapter.py `HmemLM.generate_until`), so what you read here is what `hmem eval` scores.

    generate("runs/quickstart/memory", ["The capital of Norway is"], memory="fetched") ->
        [{"prompt": ..., "text": " Oslo", "memory": "fetched", "path": [3, 41]}]

Memory modes: fetched (the blocks on the prompt's path), generic (the run's generic block), none (the anchor
alone), random (blocks on a path hashed from the prompt: the routing control). An anchor-only run has one mode.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hmem_lit.errors import ConfigError


def read_prompts(prompts: list[str] | None, file: str | None) -> list[str]:
    """Prompts from the command line and/or a file (one per line, blank lines skipped; '-' = stdin)."""
    out = list(prompts or [])
    if file:
        if file == "-":
            text = sys.stdin.read()
        else:
            p = Path(file)
            if not p.is_file():
                raise ConfigError(f"--file {file}: no such file (one prompt per line)")
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"--file {file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        out += [line.rstrip("\n") for line in text.splitlines() if line.strip()]
    if not out:
        raise ConfigError("hmem generate: give at least one prompt (arguments, or --file FILE with one per line)")
    return out


def generate(
    run_dir: str | Path,
    prompts: list[str],
    memory: str | None = None,
    max_new_tokens: int = 32,
    until: list[str] | None = None,
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Greedy continuation of every prompt (batched like evaluation); -> one record per prompt."""
    from hmem_lit.evaluation.runner import _check_mode
    from hmem_lit.runs import Run

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be >= 1, got {max_new_tokens}")
    run = Run.open(run_dir)  # complete run, weights present: one line otherwise
    cfg = run.config
    _check_mode(run.dir, cfg, memory, None)
    from hmem_lit.console import quiet_libraries
    from hmem_lit.evaluation.adapter import HmemLM

    quiet_libraries()
    lm = HmemLM(run, memory=memory or "config", threads=threads)
    stops = ["\n"] if until is None else [u.encode().decode("unicode_escape") for u in until]
    requests = [
        SimpleNamespace(
            args=(p, {"until": stops, "max_gen_toks": max_new_tokens}),
            doc={"route_text": p},  # a prompt routes itself, as a generation probe's prompt does in evaluation
            request_type="generate_until",
            task_name="generate",
            doc_id=i,
        )
        for i, p in enumerate(prompts)
    ]
    texts = lm.generate_until(requests)  # duck-typed lm-eval Instances (args, doc, task_name, doc_id)
    mode = lm.mode if cfg.memory.type != "none" else "none"  # an anchor-only run has no memory to route
    return [
        {"prompt": p, "text": t, "memory": mode, "path": lm.routing_log.get(("generate", i), {}).get("path")}
        for i, (p, t) in enumerate(zip(prompts, texts))
    ]
