"""Asking the Slurm cluster through its own commands: is it there (`scontrol ping`), which partitions it has
(`sinfo`), what state a job is in (`squeue` for live jobs, then `sacct`, then `scontrol show job`), and which job
this process runs in (the SLURM_* environment). No submitit import here: `hmem sweep status` and the sweep
workers' recovery use it on machines without the extra.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

from hmem_lit.errors import ConfigError

# job states in which the job (or its next incarnation) may still run its trial: not to be reclaimed
ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "COMPLETING",  # its processes are ending; the next look sees the final state
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
}
TIMEOUT_S = 30
PING_TIMEOUT_S = 15  # scontrol retries an unreadable slurm.conf for a minute


def _run(cmd: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_ready(partition: str | None) -> None:
    """Refuse with one line, before anything is created: no submitit, no Slurm commands, no controller answering,
    or a partition the cluster does not have."""
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError(
            "--launcher slurm: needs the submitit package: pip install 'hmem_lit[slurm]' (or use --launcher local)"
        )
    missing = [c for c in ("sbatch", "srun", "squeue", "scontrol", "sinfo") if shutil.which(c) is None]
    if missing:
        raise ConfigError(
            f"--launcher slurm: the Slurm commands {', '.join(missing)} are not on PATH; run on a login node of "
            "the cluster (or use --launcher local)"
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # scontrol would retry reading it for a minute
        raise ConfigError(f"--launcher slurm: SLURM_CONF={conf} is not a file; point it at the cluster's slurm.conf")
    r = _run(["scontrol", "ping"], timeout=PING_TIMEOUT_S)
    said = "no answer" if r else f"no answer in {PING_TIMEOUT_S} s"
    lines = [" ".join(ln.split()) for ln in ((r.stdout + "\n" + r.stderr) if r else said).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("*")] or [said]  # not its banner of stars
    if not any(" is UP" in ln for ln in lines):  # a primary or a backup controller answers
        said = "; ".join(ln for ln in lines if "Slurmctld" in ln) or lines[0]
        raise ConfigError(
            f"--launcher slurm: no Slurm controller answers (scontrol ping: {said[:160]}); check SLURM_CONF / "
            "slurm.conf and that slurmctld runs, or use --launcher local"
        )
    if partition is not None:
        names = partitions()
        if names is not None and partition not in names:
            raise ConfigError(
                f"--partition {partition}: no such partition on this cluster (partitions: "
                f"{', '.join(names) or 'none'}); pick one of them or leave --partition out for the default"
            )


def partitions() -> list[str] | None:
    r = _run(["sinfo", "-a", "-h", "-o", "%R"])  # -a: hidden partitions too
    if r is None or r.returncode != 0:
        return None
    return sorted({line.strip() for line in r.stdout.splitlines() if line.strip()})


def current_job() -> str | None:
    """This process's job id as squeue/sacct print it: <array job>_<task> in a job array, else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def restart_count() -> int:
    """How many times Slurm has requeued this job (0 in its first allocation)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _first_word(state: str) -> str:
    return state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"


def job_states(ids: list[str] | set[str]) -> dict[str, str]:
    """job id (123 or 123_4) -> its state (RUNNING, PENDING, COMPLETED, CANCELLED, TIMEOUT, ...; GONE when no
    command knows it any more). Ids whose state could not be read (the controller did not answer) are left out,
    so a caller never takes a live job for a dead one."""
    ids = {str(i) for i in ids if i}
    if not ids or shutil.which("squeue") is None:
        return {}
    r = _run(["squeue", "-h", "-r", "-j", ",".join(sorted(ids)), "-o", "%i|%T"])
    if r is None or (r.returncode != 0 and "Invalid job id" not in r.stderr + r.stdout):
        return {}  # no answer: unknown, not dead
    out: dict[str, str] = {}
    for line in r.stdout.splitlines() if r.returncode == 0 else []:  # "Invalid job id": squeue knows none of them
        jid, _, state = line.strip().partition("|")
        if jid in ids:
            out[jid] = _first_word(state)
    rest = sorted(ids - set(out))
    if rest:
        out.update(_finished_states(rest))
    return out


def _finished_states(ids: list[str]) -> dict[str, str]:
    """States of jobs squeue no longer lists: sacct (needs accounting), else scontrol (jobs younger than
    MinJobAge), else GONE."""
    out: dict[str, str] = {}
    r = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)]) if shutil.which("sacct") else None
    accounting = r is not None and r.returncode == 0
    if accounting:
        assert r is not None
        for line in r.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in ids:
                out[jid] = _first_word(state)
    for jid in ids:
        if jid in out:
            continue
        s = _run(["scontrol", "show", "job", "-o", jid])
        m = re.search(r"JobState=(\S+)", s.stdout) if s is not None and s.returncode == 0 else None
        if m:
            out[jid] = _first_word(m.group(1))
        elif accounting or (s is not None and "Invalid job id" in (s.stderr + s.stdout)):
            out[jid] = "GONE"
    return out
