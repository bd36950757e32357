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

# spec and translate are light (torch waits inside translate's functions) and imported here: `translate` names
# both a submodule and its function, and importing the submodule later would rebind the name to the module
from hmem_lit.sweeps.spec import PAPER_PARAMS, SweepSpec, load_sweep, trial_name
from hmem_lit.sweeps.translate import Infeasible, counts, solve_levels, translate, unit_params

_WHERE = {  # the names that need optuna (runner) or Lightning (pruning): imported on first use
    "StepPruningCallback": "pruning",
    "objective_value": "runner",
    "open_study": "runner",
    "plan": "runner",
    "run_sweep": "runner",
    "status": "runner",
    "summary": "runner",
}
__all__ = [
    "PAPER_PARAMS",
    "Infeasible",
    "StepPruningCallback",
    "SweepSpec",
    "counts",
    "load_sweep",
    "objective_value",
    "open_study",
    "plan",
    "run_sweep",
    "solve_levels",
    "status",
    "summary",
    "translate",
    "trial_name",
    "unit_params",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hmem_lit.sweeps' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hmem_lit.sweeps.{_WHERE[name]}"), name)
