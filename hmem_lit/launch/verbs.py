"""`--launcher slurm` of each verb: check everything on the login node (the flags, the cluster, the config), then
submit the job that runs the same work on the allocation.

    hmem train EXP --launcher slurm --nodes N --gpus-per-node G   one job, N x G ranks (N x train.devices on CPU)
    hmem sweep NAME --launcher slurm --workers N                  a job array of N workers (hmem_lit.sweeps.slurm)
    hmem eval RUN --launcher slurm                                one job running `hmem eval RUN ...`
    hmem data prepare EXP --launcher slurm --cpus-per-task C     one job running `hmem data prepare EXP ...`

Bad input is one ConfigError line, before anything is created: the order is flags, cluster, config, submission.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmem_lit import runs
from hmem_lit.checks import preflight
from hmem_lit.config import load_config
from hmem_lit.errors import ConfigError
from hmem_lit.launch import cluster, jobs, options, submit


def train(a: argparse.Namespace, experiment: str | None) -> int:
    """`hmem train EXP --launcher slurm`: one job of --nodes x (--gpus-per-node, or train.devices on CPU) tasks;
    Lightning's SLURMEnvironment reads the ranks; the job requeues itself at its time limit and resumes."""
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


def cli_job(a: argparse.Namespace, entry: Callable[[list[str]], int], verb: str, out_dir: Path, what: str) -> int:
    """`hmem eval ... --launcher slurm`, `hmem data prepare ... --launcher slurm`: the same command on one task,
    run there by `entry` (the CLI's main)."""
    opts = options.from_args(a)
    if opts.nodes != 1:
        raise ConfigError(f"--nodes: hmem {verb} runs on one node, got {opts.nodes}")
    cluster.check_ready(opts.partition)
    argv = options.strip_launcher_args(list(a.argv))
    log_dir = Path(opts.log_dir or out_dir / "slurm" / verb)
    return submit.submit_one(opts, log_dir, f"hmem-{verb}", jobs.CliJob(entry, argv), what)


def evaluate(a: argparse.Namespace, entry: Callable[[list[str]], int]) -> int:
    """The run must be complete, or be trained by a job this one depends on (--sbatch dependency=afterok:<id>)."""
    run_dir = Path(a.run_dir)
    later = any(x.startswith("dependency=") for x in a.sbatch or [])
    if not later and not runs.is_complete(run_dir):
        raise ConfigError(
            f"{run_dir}: not a complete run (no final.json); train it first, or submit after its training job "
            "with --sbatch dependency=afterok:<job id>"
        )
    return cli_job(a, entry, "eval", run_dir.parent.parent, f"eval {run_dir}")


def prepare(a: argparse.Namespace, entry: Callable[[list[str]], int], experiment: str | None) -> int:
    cfg = load_config(experiment, a.overrides)
    if cfg.data.source == "toy":
        raise ConfigError(
            "data.source=toy is generated in memory: nothing to prepare (set data.source=builtin or files)"
        )
    preflight(cfg, training=False)
    return cli_job(a, entry, "data", Path(cfg.out_dir), f"data prepare {cfg.data.dir}")
