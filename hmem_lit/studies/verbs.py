"""The side studies' `hmem` verbs: their argument parsers and functions. The study modules (torch, pandas) are
imported when a verb runs, so `hmem --help` stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Add = Callable[[str, str], argparse.ArgumentParser]  # (verb, one-line help) -> its parser


def cmd_edit(a: argparse.Namespace) -> int:
    from hmem_lit.studies.editing import format_edit, run_edit

    r = run_edit(
        a.run_dir, a.baseline, a.n, a.seed, a.steps, a.levels, threads=a.threads, replay=a.replay,
        memory_lr=a.memory_lr, dense_lr=a.dense_lr,
    )  # fmt: skip
    print(format_edit(r))
    return 0


def cmd_attribute(a: argparse.Namespace) -> int:
    from hmem_lit.studies.attribution import format_attribution, run_attribution

    print(format_attribution(run_attribution(a.run_dir, a.per_bucket, a.seed, threads=a.threads)))
    return 0


def cmd_ablations(a: argparse.Namespace) -> int:
    from hmem_lit.studies.ablations import build

    print(build(a.root, a.out, a.rows, merge=a.merge))
    return 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "edit": cmd_edit,
    "attribute": cmd_attribute,
    "ablations": cmd_ablations,
}


def add_parsers(add: Add) -> None:
    ed = add(
        "edit",
        "edit N people's birth city: retrain only their blocks (anchor frozen) vs a dense fine-tune; "
        "-> <run_dir>/separation/edit-*.json",
    )
    ed.add_argument("run_dir", help="a trained memory run")
    ed.add_argument("--baseline", default=None, help="an anchor-only run to edit by fine-tuning, for comparison")
    ed.add_argument("--n", type=int, default=100, help="people to edit (default 100)")
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument("--steps", type=int, default=80, help="optimiser steps over the edited rows (default 80)")
    ed.add_argument("--levels", choices=["all", "leaf"], default="all", help="bank levels the edit trains")
    ed.add_argument(
        "--replay", type=float, default=0.0, help="share of each batch from the edited leaves' other rows (default 0)"
    )
    ed.add_argument("--memory-lr", type=float, default=None, help="the edit's memory LR (default: the run's)")
    ed.add_argument("--dense-lr", type=float, default=None, help="the dense fine-tune's LR (default: the run's)")
    ed.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    at = add(
        "attribute",
        "which blocks hold which facts (one level ablated at a time) and why memory gets facts wrong; "
        "-> <run_dir>/separation/attribution.json",
    )
    at.add_argument("run_dir", help="a trained memory run")
    at.add_argument("--per-bucket", type=int, default=0, help="items per probe and bucket (0 = every item)")
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ab = add(
        "ablations",
        "the ablation sweeps (both corpora) as one page: tables, figures and the paper's shapes checked "
        "(docs/ablations.md)",
    )
    ab.add_argument("--root", default="runs/sweeps", help="the sweeps' runs (default runs/sweeps)")
    ab.add_argument("--out", default="docs/ablations", help="output directory (default docs/ablations)")
    ab.add_argument("--rows", default=None, help="rebuild the page from a committed rows.csv instead of the runs")
    ab.add_argument(
        "--merge",
        action="store_true",
        help="keep OUT's committed rows and verdicts of the sweeps and corpora the runs below --root do not cover",
    )
