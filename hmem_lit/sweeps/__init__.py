"""Sweeps: Optuna and grid studies over the paper's axes (bank depth, fetched size, bank size, fetched-to-anchor
ratio at a fixed runtime budget) and any raw config key. Each trial is an ordinary run directory.

    hmem sweep sweeps/<name>.yaml [--workers N] [key=value ...]
    hmem sweep status <name> [key=value ...]
    hmem sweep plan <name> [key=value ...]      # translate every grid point on the meta device, train nothing

Schema: `hmem_lit.sweeps.spec`; translation: `hmem_lit.sweeps.translate`; running: `hmem_lit.sweeps.runner`;
plan and status tables: `hmem_lit.sweeps.views`; the pruning callback: `hmem_lit.sweeps.pruning`. The names below
are imported on first use, so `hmem sweep status` loads neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "StepPruningCallback": "pruning",
    "objective_value": "runner",
    "open_study": "runner",
    "plan": "runner",
    "run_sweep": "runner",
    "status": "runner",
    "summary": "runner",
    "PAPER_PARAMS": "spec",
    "SweepSpec": "spec",
    "load_sweep": "spec",
    "trial_name": "spec",
    "Infeasible": "translate",
    "counts": "translate",
    "solve_levels": "translate",
    "translate": "translate",
    "unit_params": "translate",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hmem_lit.sweeps' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hmem_lit.sweeps.{_WHERE[name]}"), name)
