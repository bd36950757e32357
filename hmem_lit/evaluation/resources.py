"""What evaluation needs from a run besides its weights: the tokenizer and the prepared data directory.

`load_run_tokenizer(cfg)`: the byte tokenizer for the toy source, else `<data.dir>/tokenizer.json`. A relative
`data.dir` is looked up from the working directory first, then, when the package runs from a source checkout, from
the checkout's root (runs are usually trained there). Missing pieces raise `ConfigError` with one line saying what
to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmem_lit.config import ConfigError
from hmem_lit.resources import checkout_root


def resolve_data_dir(cfg: Any) -> Path:
    d = Path(cfg.data.dir)
    root = checkout_root()
    if d.is_absolute() or d.exists() or root is None:
        return d
    alt = root / d
    return alt if alt.exists() else d


def facts_data_dir(run_dir: Path, cfg: Any, what: str) -> Path:
    """The data directory of a run trained on the built-in facts corpus (synthetic people, bucketed probes), for
    commands that need them (`what`: "editing", "attribution"); any other corpus is one ConfigError."""
    if cfg.data.source != "builtin":
        raise ConfigError(
            f"{run_dir}: {what} needs a run trained on the built-in facts corpus, and this one used "
            f"data.source={cfg.data.source}; train one with data.source=builtin"
        )
    return resolve_data_dir(cfg)


def check_threads(threads: int) -> None:
    if threads < 0:
        raise ConfigError(f"--threads: must be >= 0 (0 = torch default), got {threads}")


def load_run_tokenizer(cfg: Any):
    """The tokenizer the run was trained with (same interface as toy.ByteTokenizer)."""
    if cfg.data.source == "toy":
        from hmem_lit.data.toy import ByteTokenizer

        return ByteTokenizer()
    from hmem_lit.data.tokenizer import load_tokenizer

    root = resolve_data_dir(cfg)
    try:
        return load_tokenizer(root)
    except FileNotFoundError:
        raise ConfigError(
            f"{root / 'tokenizer.json'}: the run's tokenizer is missing; run "
            "`hmem data prepare <experiment>` with the run's config (data.dir)"
        ) from None
