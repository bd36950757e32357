"""Evaluation through the lm-eval harness: the `hmem` harness model (adapter.py), per-request memory routing
(routing.py), task generation from the prepared question sets (taskgen.py, templates in tasks/), and the
`hmem eval` runner (runner.py).

Importing this package sets HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 unless already set, so a missing hub
dataset fails at once instead of waiting on the network.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def evaluate(*args, **kwargs):
    """See hmem_lit.evaluation.runner.evaluate."""
    from hmem_lit.evaluation.runner import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["evaluate"]
