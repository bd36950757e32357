"""Against a real Slurm (`-m slurm`; CI starts a single-node cluster on localhost with .ci/local_slurm.sh): a
2-worker sweep as a job array that completes every trial; a training job stopped by its time-limit signal,
requeued and finished with weights and metrics bit-identical to an uninterrupted run; `scancel` of a worker
mid-trial, then that trial resumed and finished by the other worker; bad input against the live controller.

Without a controller the module starts one when it can (root, the packages installed) and stops it after;
otherwise it skips, saying why. The squeue / sacct lines each test saw are printed (`pytest -s`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmem_lit.config import ConfigError
from hmem_lit.launch import cluster

from .conftest import DEBUG_YAML, ROOT, tiny_overrides

pytestmark = pytest.mark.slurm
HMEM = str(Path(sys.executable).parent / "hmem")
SCRIPT = ROOT / ".ci" / "local_slurm.sh"


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("submitit", reason="--launcher slurm needs submitit: pip install -e '.[slurm]'")
    try:
        cluster.check_ready(None)
        yield
        return
    except ConfigError as e:
        why = str(e)
    if os.geteuid() != 0 or shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        pytest.skip(
            f"no Slurm cluster here ({why}) and this machine cannot start one: as root, "
            "`.ci/local_slurm.sh install start` installs and starts a single-node cluster"
        )
    r = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        pytest.skip(f"the local Slurm daemons did not start: {(r.stderr or r.stdout).strip()[-400:]}")
    try:
        yield
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def show(*cmd: str) -> list[str]:
    """Run a Slurm command, print its lines (the evidence a CI log keeps), return them."""
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    for ln in lines:
        print(f"[{' '.join(cmd[:1])}] {ln}", flush=True)
    return lines


def hmem_bg(log: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([HMEM, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=cwd, env=env)


def job_id(log: Path, timeout: float = 60) -> str:
    import re

    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"submitted Slurm job (?:array )?(\d+)", log.read_text())
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no job submitted: {log.read_text()[-2000:]}")


class Watch:
    """squeue lines of one job, each distinct line printed once (so the log shows every state it went through)."""

    def __init__(self, job: str):
        self.job, self.seen = job, list[str]()

    @staticmethod
    def _key(line: str) -> str:
        f = line.split()  # id, name, state, and for a pending job why it waits
        return " ".join([*f[:3], f[-1] if f[2] == "PENDING" else ""])

    def poll(self) -> None:
        r = subprocess.run(
            ["squeue", "-h", "-r", "-j", self.job, "-o", "%i %j %T %M %l %R"], capture_output=True, text=True
        )
        for ln in r.stdout.splitlines():
            if self._key(ln) not in {self._key(s) for s in self.seen}:
                self.seen.append(ln.strip())
                print(f"[squeue] {ln.strip()}", flush=True)


def wait_proc(proc: subprocess.Popen, watch: Watch, timeout: float, log: Path) -> int:
    deadline = time.time() + timeout
    while proc.poll() is None:
        assert time.time() < deadline, f"timed out; log:\n{log.read_text()[-3000:]}"
        watch.poll()
        time.sleep(0.5)
    return proc.returncode


def job_output(folder: Path, stem: str) -> str:
    """A job's stdout then stderr (submitit's <stem>_log.out / _log.err): the suite's status lines, "resuming from
    step" among them, go through logging to stderr."""
    return "".join(
        (folder / f"{stem}_log.{ext}").read_text() for ext in ("out", "err") if (folder / f"{stem}_log.{ext}").is_file()
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------


def test_bad_input_against_the_live_controller(slurm, tmp_path, capsys):
    from .test_bad_input import assert_one_line, created, run_cli

    out = tmp_path / "out"
    out.mkdir()
    base = ["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), "--launcher", "slurm"]
    rc, err = run_cli([*base, "--partition", "nosuch"], capsys)
    assert_one_line(rc, err, "--partition nosuch: no such partition on this cluster (partitions: ")
    with capsys.disabled():
        print(f"[bad input] {err}")
    rc, err = run_cli([*base, "--nodes", "0"], capsys)
    assert_one_line(rc, err, "--nodes: must be a whole number of nodes >= 1, got 0")
    with capsys.disabled():
        print(f"[bad input] {err}")
    assert created(out) == []


def test_sweep_job_array_completes_every_trial(slurm, tmp_path):
    from optuna.trial import TrialState

    from hmem_lit import sweeps

    from .test_sweeps import write_sweep

    path = write_sweep(tmp_path, mode="grid", overrides={"train.max_tokens": 8000}, space={"train.seed": [0, 1, 2, 3]})
    log = tmp_path / "sweep.log"
    t0 = time.time()
    proc = hmem_bg(
        log, "sweep", str(path), "--launcher", "slurm", "--workers", "2", "--time", "15", "--wait", cwd=tmp_path
    )
    array = job_id(log)
    watch = Watch(array)
    assert wait_proc(proc, watch, 600, log) == 0, log.read_text()[-3000:]
    print(f"[timing] 2-worker sweep, 4 trials, submit to summary: {time.time() - t0:.1f} s")
    spec = sweeps.load_sweep(path)
    ts = sweeps.open_study(spec).get_trials(deepcopy=False)
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 4
    assert {t.user_attrs["slurm_job"] for t in ts} <= {f"{array}_0", f"{array}_1"}
    assert len({t.user_attrs["name"] for t in ts}) == 4 and len(list(spec.runs_dir.glob("*/final.json"))) == 4
    assert any("RUNNING" in s for s in watch.seen)
    lines = show("sacct", "-j", array, "-X", "-o", "JobID,JobName%24,State,Elapsed,ExitCode")
    assert sum("COMPLETED" in ln for ln in lines) == 2
    status = subprocess.run([HMEM, "sweep", "status", str(path)], capture_output=True, text=True, cwd=tmp_path).stdout
    print(status)
    assert f"slurm workers {array}: {array}_0 COMPLETED, {array}_1 COMPLETED" in status
    assert "slurm job" in status and f"{array}_" in status


def test_train_requeued_at_time_limit_resumes_bit_identical(slurm, tmp_path):
    """The job starts with a 10-minute limit; once it trains, the test lowers the limit (scontrol update) so that
    it falls mid-run on any machine: Slurm sends the time-limit signal (USR2, --signal-delay 110 s before the
    end), the job checkpoints at the next step and requeues itself; after the requeue the limit goes back to 10
    minutes and the next allocation resumes and finishes. Reference: the same run, uninterrupted, in parallel."""
    from hmem_lit import runs

    extra = {"train.max_tokens": 1_600_000, "train.batch_size": 16, "data.seq_len": 128, "data.toy_docs": 600}
    extra.update({"train.ckpt_every": 0, "train.val_every": 50, "train.log_every": 5})
    ov = tiny_overrides(tmp_path / "runs", **extra)
    log, ref_log = tmp_path / "slurm.log", tmp_path / "ref.log"
    t0 = time.time()
    flags = ["--launcher", "slurm", "--time", "10", "--signal-delay", "110", "--wait"]
    proc = hmem_bg(log, "train", str(DEBUG_YAML), *ov, "name=requeued", *flags, cwd=tmp_path)
    ref = hmem_bg(ref_log, "train", str(DEBUG_YAML), *ov, "name=uninterrupted", cwd=tmp_path)
    job = job_id(log)
    watch = Watch(job)
    run_dir, ref_dir = tmp_path / "runs" / "000_debug" / "requeued", tmp_path / "runs" / "000_debug" / "uninterrupted"
    lowered = restored = False
    deadline = time.time() + 900
    while proc.poll() is None:
        assert time.time() < deadline, log.read_text()[-3000:]
        watch.poll()
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        if not lowered and any(m["step"] >= 5 for m in runs.read_metrics(run_dir)):
            run_s = _seconds(info.split("RunTime=")[1].split()[0])
            limit = -(-(run_s + 45) // 60)  # 45-105 s left: the signal at the next check, the end at least 15 s on
            subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limit}"], check=True)
            print(f"[test] job {job} ran {run_s} s: TimeLimit lowered to {limit} min", flush=True)
            lowered = True
        if lowered and not restored and "Restarts=0" not in info and "JobState=PENDING" in info:
            subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)
            print(f"[test] job {job} requeued: TimeLimit back to 10 min", flush=True)
            restored = True
        assert not (runs.is_complete(run_dir) and not restored), "the run finished before its time limit: lengthen it"
        time.sleep(0.5)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert ref.wait(timeout=900) == 0, ref_log.read_text()[-3000:]
    print(f"[timing] requeued training job, submit to finish: {time.time() - t0:.1f} s")
    job_log = job_output(tmp_path / "runs" / "slurm" / "train", f"{job}_0")
    assert "SIGUSR2: checkpoint at the next step, then requeue" in job_log
    steps = [
        int(ln.split("resuming from step ")[1].split(";")[0])
        for ln in job_log.splitlines()
        if "resuming from step" in ln
    ]
    total = runs.read_final(ref_dir)["steps"]
    assert steps and 0 < steps[0] < total, job_log[-3000:]
    print(f"[test] resumed from step(s) {steps} of {total}")
    lines = show("sacct", "-j", job, "-D", "-X", "-o", "JobID,JobName%20,State,Elapsed,ExitCode")
    assert any("REQUEUED" in ln for ln in lines) and "COMPLETED" in lines[-1]
    a, b = sha256(run_dir / runs.WEIGHTS), sha256(ref_dir / runs.WEIGHTS)
    print(f"[test] model.safetensors sha256: requeued {a}, uninterrupted {b}")
    assert a == b

    def records(d: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in runs.TIMING_KEYS} for m in runs.read_metrics(d)]

    assert records(run_dir) == records(ref_dir) and len(records(ref_dir)) > 100
    fa, fb = runs.read_final(run_dir), runs.read_final(ref_dir)
    assert fa["metrics"] == fb["metrics"] and fa["steps"] == fb["steps"] == total
    print(
        f"[test] metrics.jsonl: {len(records(ref_dir))} records equal; final metrics equal: {json.dumps(fa['metrics'])}"
    )


def _seconds(runtime: str) -> int:
    """scontrol's RunTime ([D-]HH:MM:SS) in seconds."""
    days, _, hms = runtime.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def test_scancel_worker_mid_trial_then_another_worker_finishes_it(slurm, tmp_path):
    from optuna.trial import TrialState

    from hmem_lit import sweeps

    from .test_sweeps import write_sweep

    ov = {"train.max_tokens": 40000, "train.ckpt_every": 4, "train.val_every": 20}
    path = write_sweep(tmp_path, mode="grid", overrides=ov, space={"train.seed": [0, 1, 2]})
    spec = sweeps.load_sweep(path)
    log = tmp_path / "sweep.log"
    t0 = time.time()
    proc = hmem_bg(
        log, "sweep", str(path), "--launcher", "slurm", "--workers", "2", "--time", "15", "--wait", cwd=tmp_path
    )
    array = job_id(log)
    watch, victim = Watch(array), None
    deadline = time.time() + 600
    while victim is None:
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        watch.poll()
        running = {
            t.user_attrs.get("slurm_job"): t
            for t in sweeps.open_study(spec).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        }
        t = running.get(f"{array}_0")
        if (
            t is not None
            and f"{array}_1" in running
            and (Path(t.user_attrs.get("run_dir", "/nonexistent")) / "checkpoints" / "last.ckpt").is_file()
        ):
            victim = t
        time.sleep(0.3)
    subprocess.run(["scancel", f"{array}_0"], check=True)
    print(f"[test] scancel {array}_0 while it trained trial {victim.number} ({victim.user_attrs['name']})", flush=True)
    assert wait_proc(proc, watch, 600, log) == 1  # --wait: not every job completed
    print(f"[timing] 2-worker sweep with a cancelled worker, submit to summary: {time.time() - t0:.1f} s")
    show("sacct", "-j", array, "-X", "-o", "JobID,JobName%24,State,Elapsed,ExitCode")
    ts = sweeps.open_study(spec).get_trials(deepcopy=False)
    assert ts[victim.number].state == TrialState.FAIL
    assert ts[victim.number].user_attrs["interrupted"] == f"slurm job {array}_0 CANCELLED"
    retry = [t for t in ts if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["slurm_job"] == f"{array}_1"
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and len({t.user_attrs["name"] for t in done}) == 3
    other = job_output(spec.sweep_dir / "slurm", f"{array}_1_0")
    assert f"{victim.user_attrs['run_dir']}: resuming from step" in other
    status = subprocess.run([HMEM, "sweep", "status", str(path)], capture_output=True, text=True, cwd=tmp_path).stdout
    print(status)
    assert f"slurm job {array}_0 CANCELLED" in status  # the cancelled worker's trial, in the note column


def test_ddp_job_preempted_by_signal_requeues_and_resumes_bit_identical(slurm, tmp_path):
    """Two DDP ranks in one job (Lightning's SLURMEnvironment reads SLURM_PROCID / SLURM_NTASKS): the job gets the
    requeue signal (`scancel --signal=USR2`, as a preemption would send it) mid-run; the ranks agree on one step,
    checkpoint, requeue; the next allocation resumes. Reference: the same DDP run started locally (Lightning's own
    launcher), uninterrupted."""
    from hmem_lit import runs

    extra = {"train.max_tokens": 160_000, "train.ckpt_every": 0, "train.val_every": 20, "train.log_every": 2}
    extra.update({"train.strategy": "ddp", "train.devices": 2, "train.accelerator": "cpu"})
    ov = tiny_overrides(tmp_path / "runs", **extra)
    log, ref_log = tmp_path / "slurm.log", tmp_path / "ref.log"
    t0 = time.time()
    proc = hmem_bg(log, "train", str(DEBUG_YAML), *ov, "name=ddp_slurm", "--launcher", "slurm", "--wait", cwd=tmp_path)
    ref = hmem_bg(ref_log, "train", str(DEBUG_YAML), *ov, "name=ddp_local", cwd=tmp_path)
    job = job_id(log)
    watch, signalled = Watch(job), False
    run_dir, ref_dir = tmp_path / "runs" / "000_debug" / "ddp_slurm", tmp_path / "runs" / "000_debug" / "ddp_local"
    deadline = time.time() + 900
    while proc.poll() is None:
        assert time.time() < deadline, log.read_text()[-3000:]
        watch.poll()
        if not signalled and any(m["step"] >= 10 for m in runs.read_metrics(run_dir)):
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
            print(f"[test] scancel --signal=USR2 {job}", flush=True)
            signalled = True
        assert not (runs.is_complete(run_dir) and not signalled), "the run finished before the signal"
        time.sleep(0.3)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert ref.wait(timeout=900) == 0, ref_log.read_text()[-3000:]
    print(f"[timing] 2-rank DDP job, signalled and requeued, submit to finish: {time.time() - t0:.1f} s")
    job_log = job_output(tmp_path / "runs" / "slurm" / "train", f"{job}_0")
    assert "checkpoint at step" in job_log and "resuming from step" in job_log, job_log[-3000:]
    # two ranks: the run's manifest says so (Lightning's own "Starting with 2 processes" is quiet below -v)
    assert "2 proc" in json.loads((run_dir / runs.MANIFEST).read_text())["device"]
    show("sacct", "-j", job, "-D", "-X", "-o", "JobID,JobName%20,State,AllocCPUS,Elapsed,ExitCode")
    a, b = sha256(run_dir / runs.WEIGHTS), sha256(ref_dir / runs.WEIGHTS)
    print(f"[test] DDP model.safetensors sha256: requeued {a}, uninterrupted {b}")
    assert a == b

    def records(d: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in runs.TIMING_KEYS} for m in runs.read_metrics(d)]

    assert records(run_dir) == records(ref_dir)
    assert runs.read_final(run_dir)["metrics"] == runs.read_final(ref_dir)["metrics"]
