"""Reading a prepared data directory (the other side of data/prepare.py): the tokenizer and the packed train / val
shards, checked on load so a damaged file is one line naming it before any run directory exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.data.prepare import prepare, stale_stages
from hmem_lit.errors import ConfigError


def load_prepared(cfg: Any) -> tuple[Any, Any, Any]:
    """-> (train PackedSplit, val PackedSplit, tokenizer); prepares (cached) stages that are missing first."""
    from hmem_lit.data.split import PackedSplit
    from hmem_lit.data.tokenizer import load_tokenizer

    root = Path(cfg.data.dir)
    if stale_stages(cfg):
        prepare(cfg)
    fix = "the prepared data is damaged; rerun `hmem data prepare <experiment> --force`"
    try:
        tok = load_tokenizer(root)
    except Exception as e:  # noqa: BLE001 - a truncated or edited tokenizer.json: tokenizers' own parse error
        raise ConfigError(f"{root / 'tokenizer.json'}: unreadable ({str(e).splitlines()[0][:80]}); {fix}") from None
    out = []
    for name in ("train", "val"):
        tpath, ppath = root / "packed" / f"{name}_tokens.npy", root / "packed" / f"{name}_paths.npy"
        try:
            tokens = np.load(tpath, mmap_mode="r")
            paths = np.load(ppath)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{root / 'packed'}: a {name} shard is unreadable ({e}); {fix}") from None
        _check_packed(tpath, ppath, tokens, paths, int(tok.vocab_size), cfg, fix)
        out.append(PackedSplit(tokens, paths, tok.eot_id, tok.pad_id))
    return out[0], out[1], tok


def _check_packed(tpath: Path, ppath: Path, tokens: Any, paths: Any, vocab: int, cfg: Any, fix: str) -> None:
    """What a damaged shard would turn into a traceback deep in training: the shape, token ids within the
    vocabulary, and tree node ids within each level (one pass over the memory-mapped tokens)."""
    b, depth = cfg.retriever.branching, cfg.retriever.depth
    if tokens.ndim != 2 or tokens.shape[1] != cfg.data.seq_len + 1 or len(paths) != len(tokens):
        raise ConfigError(f"{tpath}: shape {tokens.shape} does not fit data.seq_len={cfg.data.seq_len}; {fix}")
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ConfigError(f"{tpath}: token ids outside the vocabulary of {vocab}; {fix}")
    if paths.ndim != 2 or paths.shape[1] != depth:
        raise ConfigError(f"{ppath}: shape {paths.shape} does not fit retriever.depth={depth}; {fix}")
    for lvl in range(depth):
        col = paths[:, lvl]
        if len(col) and (int(col.min()) < 0 or int(col.max()) >= b ** (lvl + 1)):
            raise ConfigError(f"{ppath}: level-{lvl + 1} node ids outside the tree ({b ** (lvl + 1)} nodes); {fix}")
