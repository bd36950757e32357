"""Submitting through submitit: one executor per submission, built from `SlurmOptions`; one job (train, eval,
data prepare) or one job array (sweep workers); a line in `<log_dir>/jobs.jsonl` per submission; and, with
`--wait`, polling the jobs' states until they end.

Logs: submitit's folder, `<log_dir>/<job id>_<task>_log.out` (stdout and stderr together), one per task; the
pickled job and its result sit beside them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hmem_lit.errors import ConfigError
from hmem_lit.launch import cluster
from hmem_lit.launch.options import SlurmOptions

POLL_S = 5.0
SWEEP_JOBS = "slurm_jobs.jsonl"  # in a sweep's _sweep/ directory: its worker arrays (hmem sweep status reads it)


def executor(opts: SlurmOptions, log_dir: Path, name: str, tasks_per_node: int = 1) -> Any:
    """A submitit SlurmExecutor for these options (the python running now runs the job: a shared filesystem)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=str(log_dir), max_num_timeout=opts.max_requeues)
    params: dict[str, Any] = {
        "job_name": name,
        "time": opts.time,
        "nodes": opts.nodes,
        "ntasks_per_node": tasks_per_node,
        "signal_delay_s": opts.signal_delay_s,
        "stderr_to_stdout": True,
        "additional_parameters": {"requeue": True, **opts.sbatch},
    }
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    optional = {
        "partition": opts.partition,
        "cpus_per_task": opts.cpus_per_task,
        "mem": opts.mem,
        "account": opts.account,
        "qos": opts.qos,
        "array_parallelism": opts.array_parallelism,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if opts.setup:
        params["setup"] = list(opts.setup)
    ex.update_parameters(**params)
    return ex


def submit_one(opts: SlurmOptions, log_dir: Path, name: str, fn: Any, what: str, tasks_per_node: int = 1) -> int:
    """Submit `fn` as one job; print its id and where its log goes; with --wait, wait and return 0 / 1."""
    job = _submit(lambda ex: ex.submit(fn), opts, log_dir, name, tasks_per_node)
    _record(log_dir / "jobs.jsonl", what, [job.job_id], opts)
    print(
        f"[hmem] submitted Slurm job {job.job_id} ({what}): {opts.nodes} node(s) x {tasks_per_node} task(s), "
        f"partition {opts.partition or '(default)'}, time {opts.time} min\n"
        f"[hmem] log: {log_dir}/{job.job_id}_0_log.out; follow with: squeue -j {job.job_id}; sacct -j {job.job_id}",
        flush=True,
    )
    return wait_for([job]) if opts.wait else 0


def submit_array(
    opts: SlurmOptions, log_dir: Path, name: str, fns: list[Any], what: str, record: Path | None = None
) -> list[Any]:
    """Submit `fns` as one job array (task i runs fns[i]); -> submitit's jobs (ids <array>_<i>). The submission
    is recorded in <log_dir>/jobs.jsonl and in `record`."""
    jobs = _submit(lambda ex: _batch(ex, fns), opts, log_dir, name, 1)
    ids = [j.job_id for j in jobs]
    for path in {log_dir / "jobs.jsonl", *([record] if record else [])}:
        _record(path, what, ids, opts)
    array = ids[0].split("_")[0]
    print(
        f"[hmem] submitted Slurm job array {array} ({what}): {len(ids)} task(s), partition "
        f"{opts.partition or '(default)'}, time {opts.time} min\n"
        f"[hmem] logs: {log_dir}/{array}_<task>_0_log.out; follow with: squeue -j {array}; sacct -j {array}",
        flush=True,
    )
    return jobs


def _batch(ex: Any, fns: list[Any]) -> list[Any]:
    jobs = []
    with ex.batch():  # one sbatch --array for all of them
        for fn in fns:
            jobs.append(ex.submit(fn))
    return jobs


def _submit(how: Any, opts: SlurmOptions, log_dir: Path, name: str, tasks_per_node: int) -> Any:
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        return how(executor(opts, log_dir, name, tasks_per_node))
    except Exception as e:  # noqa: BLE001 - sbatch refused the job: say why in one line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        why = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
        raise ConfigError(f"--launcher slurm: sbatch refused the job: {why[:300]}") from None


def _record(path: Path, what: str, ids: list[str], opts: SlurmOptions) -> None:
    rec = {"jobs": ids, "what": what, "submitted": round(time.time(), 3), "argv": sys.argv, "options": vars(opts)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def recorded_jobs(path: Path) -> list[dict[str, Any]]:
    """The submissions recorded in a jobs.jsonl (oldest first; unreadable lines skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def wait_for(jobs: list[Any], poll_s: float = POLL_S) -> int:
    """Poll Slurm until every job has ended, printing each state change. -> 0 if every job completed and its
    command returned 0 (submitit's result file), else 1 (or the command's own status, e.g. 2 for bad input)."""
    ids = [j.job_id for j in jobs]
    last: dict[str, str] = {}
    while True:
        states = cluster.job_states(ids)
        for jid in ids:
            if jid in states and states[jid] != last.get(jid):
                print(f"[hmem] job {jid}: {states[jid]}", flush=True)
        last.update(states)
        if all(jid in states and states[jid] not in cluster.ALIVE for jid in ids):
            break
        time.sleep(poll_s)
    codes = [_exit_status(j, last[j.job_id]) for j in jobs]
    return next((c for c in codes if c != 0), 0)


def _exit_status(job: Any, state: str) -> int:
    if not job.paths.result_pickle.exists():
        return 0 if state == "COMPLETED" else 1
    from submitit.core.utils import pickle_load

    try:  # task 0's result file: ("success", the command's exit status) or ("error", its traceback)
        outcome, result = pickle_load(job.paths.result_pickle)
    except Exception:  # noqa: BLE001 - unreadable: say it did not complete
        return 1
    if outcome != "success":
        return 1
    return int(result) if isinstance(result, int) else 0


def job_view(record: Path, trials: list[Any]) -> tuple[dict[int, str], list[str]]:
    """For `hmem sweep status`: trial number -> "<job> <state>" for trials a Slurm worker ran (user attribute
    slurm_job), and one line per worker array recorded in `record`. Both empty for a sweep never run on Slurm."""
    by_trial = {t.number: str(t.user_attrs["slurm_job"]) for t in trials if t.user_attrs.get("slurm_job")}
    arrays = [r for r in recorded_jobs(record) if r.get("jobs")]
    ids = set(by_trial.values()) | {j for r in arrays for j in r["jobs"]}
    states = cluster.job_states(ids) if ids else {}
    lines = [
        f"slurm workers {r['jobs'][0].split('_')[0]}: " + ", ".join(f"{j} {states.get(j, '?')}" for j in r["jobs"])
        for r in arrays
    ]
    return {n: f"{j} {states.get(j, '?')}" for n, j in by_trial.items()}, lines
