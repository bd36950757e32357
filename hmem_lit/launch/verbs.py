"""`--launcher slurm` of each verb: check everything on the login node (the flags, the cluster, the config), then
submit the job that runs the same work on the allocation.

    hmem train EXP --launcher slurm --nodes N --gpus-per-node G   one job, N x G ranks (N x train.devices on CPU)
    hmem sweep NAME --launcher slurm --workers N                  a job array of N workers on the shared study
    hmem eval RUN --launcher slurm                                one job running `hmem eval RUN ...`
    hmem data prepare EXP --launcher slurm --cpus-per-task C     one job running `hmem data prepare EXP ...`

Bad input is one ConfigError line, before anything is created: the order is flags, cluster, config, submission.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hmem_lit.errors import ConfigError
from hmem_lit.launch import cluster, jobs, options, submit

SWEEP_JOBS = "slurm_jobs.jsonl"  # in a sweep's _sweep/ directory: its worker arrays (hmem sweep status reads it)


def train(a: argparse.Namespace, experiment: str | None) -> int:
    """`hmem train EXP --launcher slurm`: one job of --nodes x (--gpus-per-node, or train.devices on CPU) tasks;
    Lightning's SLURMEnvironment reads the ranks; the job requeues itself at its time limit and resumes."""
    from hmem_lit import runs
    from hmem_lit.checks import preflight
    from hmem_lit.config import load_config

    opts = options.from_args(a)
    overrides = [*a.overrides, f"train.num_nodes={opts.nodes}"]
    if opts.gpus_per_node:
        overrides += [f"train.devices={opts.gpus_per_node}", "train.accelerator=gpu"]
    cfg = load_config(experiment, overrides)
    preflight(cfg)
    tasks = opts.gpus_per_node or _cpu_tasks(cfg.train.devices)
    if not a.force and runs.is_complete(cfg.run_dir):
        print(f"[hmem] {cfg.run_dir} is complete (final.json exists); pass --force to retrain. Nothing submitted.")
        return 0
    cluster.check_ready(opts.partition)
    log_dir = Path(opts.log_dir or Path(cfg.out_dir) / "slurm" / "train")
    job = jobs.TrainJob(experiment, overrides, force=a.force)
    return submit.submit_one(opts, log_dir, f"hmem-train-{cfg.name}", job, f"train {cfg.run_dir}", tasks)


def _cpu_tasks(devices: Any) -> int:
    """Tasks per node of a CPU job: train.devices processes (an int, a list of ids; auto / -1 = one)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list):
        return max(1, len(devices))
    return 1


def cli_job(a: argparse.Namespace, verb: str, out_dir: Path, what: str) -> int:
    """`hmem eval ... --launcher slurm`, `hmem data prepare ... --launcher slurm`: the same command on one task."""
    opts = options.from_args(a)
    if opts.nodes != 1:
        raise ConfigError(f"--nodes: hmem {verb} runs on one node, got {opts.nodes}")
    cluster.check_ready(opts.partition)
    argv = options.strip_launcher_args(list(a.argv))
    log_dir = Path(opts.log_dir or out_dir / "slurm" / verb)
    return submit.submit_one(opts, log_dir, f"hmem-{verb}", jobs.CliJob(argv), what)


def evaluate(a: argparse.Namespace) -> int:
    """The run must be complete, or be trained by a job this one depends on (--sbatch dependency=afterok:<id>)."""
    from hmem_lit import runs

    run_dir = Path(a.run_dir)
    later = any(x.startswith("dependency=") for x in a.sbatch or [])
    if not later and not runs.is_complete(run_dir):
        raise ConfigError(
            f"{run_dir}: not a complete run (no final.json); train it first, or submit after its training job "
            "with --sbatch dependency=afterok:<job id>"
        )
    return cli_job(a, "eval", run_dir.parent.parent, f"eval {run_dir}")


def prepare(a: argparse.Namespace, experiment: str | None) -> int:
    from hmem_lit.checks import preflight
    from hmem_lit.config import load_config

    cfg = load_config(experiment, a.overrides)
    if cfg.data.source == "toy":
        raise ConfigError(
            "data.source=toy is generated in memory: nothing to prepare (set data.source=builtin or files)"
        )
    preflight(cfg, training=False)
    return cli_job(a, "data", Path(cfg.out_dir), f"data prepare {cfg.data.dir}")


def sweep(a: argparse.Namespace, target: str, rest: list[str]) -> int:
    """`hmem sweep NAME --launcher slurm --workers N`: the study is created and its grid queued here (once), then
    a job array of N workers runs the ordinary worker loop against the shared storage."""
    from hmem_lit.sweeps import runner
    from hmem_lit.sweeps.spec import load_sweep

    spec = load_sweep(target, rest)  # checked before the cluster is asked anything
    opts = options.from_args(a, spec.slurm, where=f"{spec.path}: slurm")
    if opts.nodes != 1:
        raise ConfigError(f"--nodes: each sweep worker is one task on one node, got {opts.nodes}")
    if a.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {a.workers}")
    cluster.check_ready(opts.partition)
    spec, threads = runner.prepare_sweep(target, rest, a.workers, cpus_per_worker=opts.cpus_per_task or 1)
    log_dir = Path(opts.log_dir or spec.sweep_dir / "slurm")
    fns = [jobs.SweepWorkerJob(spec, i, threads) for i in range(a.workers)]
    what = f"sweep {spec.name} workers"
    array = submit.submit_array(opts, log_dir, f"hmem-sweep-{spec.name}", fns, what, spec.sweep_dir / SWEEP_JOBS)
    print(f"[hmem] trials and job states: hmem sweep status {target}", flush=True)
    if not opts.wait:
        return 0
    code = submit.wait_for(array)
    print(runner.summary(runner.open_study(spec), spec))
    return code


def sweep_jobs(spec: Any, trials: list[Any]) -> tuple[dict[int, str], list[str]]:
    """For `hmem sweep status`: trial number -> "<job> <state>" for trials a Slurm worker ran, and one line per
    submitted worker array with each worker's state. Both empty for a sweep that never ran on Slurm."""
    by_trial = {t.number: str(t.user_attrs["slurm_job"]) for t in trials if t.user_attrs.get("slurm_job")}
    arrays = [r for r in submit.recorded_jobs(spec.sweep_dir / SWEEP_JOBS) if r.get("jobs")]
    ids = set(by_trial.values()) | {j for r in arrays for j in r["jobs"]}
    states = cluster.job_states(ids) if ids else {}
    lines = [
        f"slurm workers {r['jobs'][0].split('_')[0]}: " + ", ".join(f"{j} {states.get(j, '?')}" for j in r["jobs"])
        for r in arrays
    ]
    return {n: f"{j} {states.get(j, '?')}" for n, j in by_trial.items()}, lines
