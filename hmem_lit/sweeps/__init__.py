"""Sweeps: Optuna and grid studies over the paper's axes (bank depth, fetched size, bank size, fetched-to-anchor
ratio at a fixed runtime budget) and any raw config key. Each trial is an ordinary run directory.

    hmem sweep sweeps/<name>.yaml [--workers N] [key=value ...]
    hmem sweep status <name> [key=value ...]
    hmem sweep plan <name> [key=value ...]      # translate every grid point on the meta device, train nothing

Schema: `hmem_lit.sweeps.spec`; translation: `hmem_lit.sweeps.translate`; running: `hmem_lit.sweeps.runner`;
plan and status tables: `hmem_lit.sweeps.views`.
"""

from hmem_lit.sweeps.runner import (
    StepPruningCallback,
    objective_value,
    open_study,
    plan,
    run_sweep,
    status,
    summary,
)
from hmem_lit.sweeps.spec import PAPER_PARAMS, SweepSpec, load_sweep, trial_name
from hmem_lit.sweeps.translate import Infeasible, counts, solve_levels, translate, unit_params

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
