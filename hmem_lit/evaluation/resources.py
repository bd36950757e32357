"""What evaluation needs from a run besides its weights: the thread setting and the facts corpus's data directory.

`resolve_data_dir(cfg)` and `load_run_tokenizer(cfg)` live in hmem_lit/runs.py (a `Run` opens them once: its
`data_dir` and `tokenizer()`); they are imported here for evaluation's callers that have only a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmem_lit.config import ConfigError
from hmem_lit.runs import load_run_tokenizer, resolve_data_dir  # noqa: F401 (where evaluation's callers find them)


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
