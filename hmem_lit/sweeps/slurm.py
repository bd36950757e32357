"""Sweeps on Slurm: `hmem sweep NAME --launcher slurm --workers N` creates the study and queues its grid here, on
the login node (once), then submits a job array of N `SweepWorkerJob`s through `hmem_lit.launch` (submitit);
each runs the ordinary worker loop (`runner.worker`) against the shared storage.

A worker reclaims, when it starts, the trials an earlier allocation of its job left RUNNING (a requeue); a worker
whose job ended otherwise (scancel, time limit, node failure) has its trial reclaimed by the other workers before
they ask for the next one (`runner.recover_interrupted(slurm_only=True)`: job states from squeue / sacct).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hmem_lit.errors import ConfigError
from hmem_lit.launch import cluster, jobs, options, submit
from hmem_lit.sweeps import runner
from hmem_lit.sweeps.spec import load_sweep


class SweepWorkerJob(jobs.Job):
    """One sweep worker (one task of the job array): reclaim the trials an earlier allocation of this job left
    RUNNING, train the baselines (worker 0), then the ordinary ask-run-tell loop on the shared study."""

    def __init__(self, spec: Any, index: int, threads: int):
        self.spec, self.index, self.threads = spec, index, threads

    def __call__(self) -> int:
        jobs.install_requeue_handler()
        job = cluster.current_job()
        study = runner.open_study(self.spec)
        reclaim_own(study, self.spec, job, f"slurm job {job} started again (restart {cluster.restart_count()})")

        def body() -> int:
            if self.index == 0:
                runner.ensure_baselines(self.spec, study, self.threads)
            runner.worker(self.spec, self.index, self.threads)
            return 0

        try:
            return jobs.run_reporting(body)
        except jobs.Requeue as e:
            reclaim_own(study, self.spec, job, f"slurm job {job} requeued at its time limit")
            print(f"[hmem] {e}; requeueing job {job}", flush=True)
            jobs.requeue_now()
            return 0  # not reached


def reclaim_own(study: Any, spec: Any, job: str | None, reason: str) -> list[int]:
    """Trials this Slurm job left RUNNING (an earlier allocation, or this one before a requeue): mark them
    interrupted and re-queue their params, so this or another worker resumes them from their checkpoints."""
    from optuna.trial import TrialState

    if job is None:
        return []
    out = []
    with runner.file_lock(spec.sweep_dir / "ask.lock"):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("slurm_job") == job:
                runner.mark_interrupted(study, t.number, reason, list(spec.space))
                out.append(t.number)
    return out


def submit_sweep(a: argparse.Namespace, target: str, rest: list[str]) -> int:
    """`hmem sweep NAME --launcher slurm --workers N`: checks (flags, cluster, sweep) before anything is created,
    the study and its grid here, then one job array of N workers."""
    spec = load_sweep(target, rest)  # checked before the cluster is asked anything
    opts = options.from_args(a, spec.slurm, where=f"{spec.path}: slurm")
    if opts.nodes != 1:
        raise ConfigError(f"--nodes: each sweep worker is one task on one node, got {opts.nodes}")
    if a.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {a.workers}")
    cluster.check_ready(opts.partition)
    spec, threads = runner.prepare_sweep(target, rest, a.workers, cpus_per_worker=opts.cpus_per_task or 1)
    log_dir = Path(opts.log_dir or spec.sweep_dir / "slurm")
    fns = [SweepWorkerJob(spec, i, threads) for i in range(a.workers)]
    record = spec.sweep_dir / submit.SWEEP_JOBS
    array = submit.submit_array(opts, log_dir, f"hmem-sweep-{spec.name}", fns, f"sweep {spec.name} workers", record)
    print(f"[hmem] trials and job states: hmem sweep status {target}", flush=True)
    if not opts.wait:
        return 0
    code = submit.wait_for(array)
    print(runner.summary(runner.open_study(spec), spec))
    return code
