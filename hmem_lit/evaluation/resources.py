"""What evaluation needs from a run besides its weights: the thread setting.

`resolve_data_dir(cfg)` and `load_run_tokenizer(cfg)` live in hmem_lit/runs.py (a `Run` opens them once: its
`data_dir` and `tokenizer()`); they are imported here for evaluation's callers that have only a config.
"""

from __future__ import annotations

from hmem_lit.config import ConfigError
from hmem_lit.runs import load_run_tokenizer, resolve_data_dir  # noqa: F401 (where evaluation's callers find them)


def check_threads(threads: int) -> None:
    if threads < 0:
        raise ConfigError(f"--threads: must be >= 0 (0 = torch default), got {threads}")
