"""What `hmem sweep plan` and `hmem sweep status` print: the grid translated on the meta device, and the trial
table of a study; plus how list/dict parameters are stored in Optuna (JSON strings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hmem_lit.launch.submit import SWEEP_JOBS, job_view
from hmem_lit.sweeps.protocol import PROTOCOLS, frozen_anchor
from hmem_lit.sweeps.spec import SweepSpec, load_sweep
from hmem_lit.sweeps.translate import Infeasible, translate


def encode_param(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def decode_param(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v


def plan(target: str | Path, cli: list[str] | tuple[str, ...] = ()) -> str:
    """`hmem sweep plan <sweep>`: every grid point (or the fixed part of an optuna space) translated on the meta
    device: n_layer, levels, anchor / fetched / bank params, or why it is infeasible. Trains nothing."""
    spec = load_sweep(target, cli)
    points = spec.grid() if spec.mode == "grid" else [{}]
    lines = [
        f"sweep {spec.name}: {spec.mode}, {len(points) if spec.mode == 'grid' else spec.n_trials} trials, "
        f"base {spec.base}, runs in {spec.runs_dir}",
        f"protocol: {spec.protocol}: {PROTOCOLS[spec.protocol]}",
    ]
    anchors: set[str] = set()
    for p in points:
        label = ", ".join(f"{k}={_short(v)}" for k, v in p.items()) or "(fixed params)"
        try:
            cfg, info = translate(spec, p)
            anchor = frozen_anchor(spec, cfg)
            if anchor is not None:
                anchors.add(anchor.name)
            lines.append(
                f"  {label}: n_layer={info['n_layer']} levels={info['levels']} "
                f"anchor={info['realised_anchor']:,} fetched={info['realised_fetched']:,} "
                f"bank={info['realised_bank']:,}"
                + (f" mode=frozen on {anchor.name}" if anchor is not None else f" mode={cfg.train.mode}")
            )
        except Infeasible as e:
            lines.append(f"  {label}: INFEASIBLE: {e}")
    if anchors:
        lines.append(
            f"frozen anchors: {len(anchors)} ({', '.join(sorted(anchors))}), each trained once in "
            f"{spec.runs_dir.parent / '_baselines'} before the first trial that needs it"
            + (
                "; each evaluated (the trials' gains are over their own anchor)"
                if spec.needs_eval and spec.baselines
                else ""
            )
        )
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, dict):  # a value of the cases axis
        return " ".join(f"{k}={_short(x)}" for k, x in v.items())
    return str(v)


def summary(study: optuna.Study, spec: SweepSpec) -> str:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    keys = list(spec.space)
    jobs, job_lines = job_view(spec.sweep_dir / SWEEP_JOBS, trials)  # Slurm job + state per trial, worker arrays
    head = ["#", "state", spec.metric, *keys, "levels", "run", *(["slurm job"] if jobs else []), "note"]
    rows = []
    for t in trials:
        ua = t.user_attrs
        note = (
            ua.get("infeasible")
            or ua.get("error")
            or ua.get("interrupted")
            or ua.get("pruned")
            or ("surplus" if ua.get("surplus") else "")
            or (f"retry of #{ua['retry_of']}" if "retry_of" in ua else "")
        )
        rows.append(
            [
                str(t.number),
                t.state.name,
                _short(t.value) if t.value is not None else "-",
                *[_short(decode_param(t.params[k])) if k in t.params else "-" for k in keys],
                _short(ua.get("levels", "-")),
                ua.get("name", "-"),
                *([jobs.get(t.number, "-")] if jobs else []),
                str(note)[:70],
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    lines = [
        f"sweep {spec.name} ({spec.mode}, {spec.direction} {spec.metric}) storage={spec.storage_url}",
        f"trials: {len(trials)} (" + ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) + ")",
        *job_lines,
        fmt(head),
        fmt(["-" * w for w in widths]),
        *map(fmt, rows),
    ]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        params = ", ".join(f"{k}={_short(decode_param(v))}" for k, v in best.params.items())
        lines.append(
            f"best: trial {best.number} {spec.metric}={best.value:.5g} ({params}) "
            f"run={best.user_attrs.get('run_dir', '-')}"
        )
    return "\n".join(lines)
