"""`--launcher slurm` without a cluster: options and their one-line errors, the sbatch script submitit writes
(through a fake `sbatch` on PATH), job states read from fake squeue / sacct, a cancelled worker's trial reclaimed,
`hmem sweep status` with job ids, and the step-boundary requeue in-process (save, commit, resume: bit-identical).
The same paths against a real Slurm: tests/test_slurm.py (-m slurm)."""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import yaml

from hmem_lit.cli import main
from hmem_lit.config import ConfigError, load_config
from hmem_lit.launch import cluster, jobs, options

from .conftest import DEBUG_YAML, assert_same_run, tiny_overrides
from .test_bad_input import assert_one_line, created, run_cli

pytest.importorskip("submitit")

SCONTROL = """#!/bin/bash
case "$1" in
  ping) echo "Slurmctld(primary) at fakehost is ${FAKE_CTLD:-UP}" ;;
  show) echo "JobId=$4 JobState=${FAKE_SHOW:-COMPLETED} Restarts=0" ;;
  *) exit 0 ;;
esac
"""
SBATCH = """#!/bin/bash
cp "${@: -1}" "$FAKE_DIR/last.sbatch"
echo "Submitted batch job 4242"
"""


def fake_slurm(tmp_path: Path, monkeypatch, squeue: str = "", sacct: str = "") -> Path:
    """Slurm's client commands as scripts on PATH: a controller that is UP, partitions debug and gpu, sbatch that
    keeps the script it got, squeue / sacct printing the given lines."""
    bin_dir, fake = tmp_path / "bin", tmp_path / "fake"
    bin_dir.mkdir()
    fake.mkdir()
    scripts = {
        "scontrol": SCONTROL,
        "sinfo": "#!/bin/bash\nprintf 'debug\\ngpu\\n'\n",
        "sbatch": SBATCH,
        "srun": "#!/bin/bash\nexit 0\n",
        "squeue": f"#!/bin/bash\nprintf '{squeue}'\n",
        "sacct": f"#!/bin/bash\nprintf '{sacct}'\n",
    }
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(fake))
    return fake


# ---------------------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    "value,minutes",
    [(90, 90), ("90", 90), ("1:30", 2), ("4:00:00", 240), ("1-00:00:00", 1440), ("2-12", 3600), ("0:59", 1)],
)
def test_time_forms(value, minutes):
    assert options.parse_time(value) == minutes


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--nodes", "0"], "--nodes: must be a whole number of nodes >= 1, got 0"),
        (["--time", "soon"], "--time: got 'soon'"),
        (["--gpus-per-node", "-1"], "--gpus-per-node"),
        (["--cpus-per-task", "0"], "--cpus-per-task"),
        (["--mem", "lots"], "--mem: got 'lots'"),
        (["--sbatch", "Bad Key=1"], "--sbatch Bad Key: not an sbatch option name"),
        (["--time", "1", "--signal-delay", "90"], "--signal-delay: 90 s is not shorter than --time (1 min)"),
    ],
)
def test_bad_slurm_flags_are_one_line_and_create_nothing(tmp_path, capsys, monkeypatch, flags, needle):
    fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), "--launcher", "slurm", *flags], capsys)
    assert_one_line(rc, err, needle)
    assert created(out) == []


def test_slurm_config_file_flags_win_and_unknown_keys_refused(tmp_path, monkeypatch):
    import argparse

    p = argparse.ArgumentParser()
    options.add_args(p, nodes=True, workers=True)
    f = tmp_path / "slurm.yaml"
    f.write_text(yaml.safe_dump({"partition": "gpu", "time": "2:00:00", "sbatch": {"constraint": "a100"}}))
    o = options.from_args(p.parse_args(["--slurm-config", str(f), "--partition", "debug", "--sbatch", "qos=low"]))
    assert (o.partition, o.time, o.sbatch) == ("debug", 120, {"constraint": "a100", "qos": "low"})
    monkeypatch.setenv(options.ENV_CONFIG, str(f))
    assert options.from_args(p.parse_args([])).partition == "gpu"  # $HMEM_SLURM_CONFIG
    f.write_text("partiton: gpu\n")
    with pytest.raises(ConfigError, match="unknown key 'partiton'; allowed: partition"):
        options.from_args(p.parse_args([]))


def test_slurm_flags_without_the_slurm_launcher_are_refused(tmp_path, capsys):
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs"), "--partition", "gpu"], capsys)
    assert_one_line(rc, err, "--partition: an option of --launcher slurm")
    rc, err = run_cli(["sweep", "fetch_ratio", "--wait"], capsys)
    assert_one_line(rc, err, "--wait: an option of --launcher slurm")


def test_strip_launcher_args_keeps_the_verbs_own():
    argv = ["eval", "runs/x/y", "--launcher", "slurm", "--time=30", "--tasks", "hmem_sk", "--wait", "--threads", "2"]
    assert options.strip_launcher_args(argv) == ["eval", "runs/x/y", "--tasks", "hmem_sk", "--threads", "2"]


# ---------------------------------------------------------------------------------------------------------------
# the cluster: unreachable, no submitit, unknown partition (one line, exit 2, nothing created)


def test_no_slurm_commands_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / scontrol anywhere
    out = tmp_path / "out"
    out.mkdir()
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), "--launcher", "slurm"], capsys)
    assert_one_line(rc, err, "--launcher slurm: the Slurm commands", "not on PATH")
    assert created(out) == []


def test_controller_down_is_one_line(tmp_path, capsys, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_CTLD", "DOWN")
    out = tmp_path / "out"
    out.mkdir()
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), "--launcher", "slurm"], capsys)
    assert_one_line(rc, err, "--launcher slurm: no Slurm controller answers", "is DOWN", "--launcher local")
    assert created(out) == []


def test_missing_slurm_conf_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nope.conf"))
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs"), "--launcher", "slurm"], capsys)
    assert_one_line(rc, err, "SLURM_CONF=", "is not a file")


def test_without_submitit_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "submitit" else real(n, *a))
    out = tmp_path / "out"
    out.mkdir()
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), "--launcher", "slurm"], capsys)
    assert_one_line(rc, err, "needs the submitit package: pip install 'hmem_lit[slurm]'")
    assert created(out) == []


def test_unknown_partition_is_one_line(tmp_path, capsys, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), "--launcher", "slurm", "--partition", "a100"]
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, "--partition a100: no such partition on this cluster (partitions: debug, gpu)")
    assert created(out) == []


# ---------------------------------------------------------------------------------------------------------------
# what is submitted


def test_train_job_script(tmp_path, capsys, monkeypatch):
    fake = fake_slurm(tmp_path, monkeypatch)
    flags = ["--launcher", "slurm", "--partition", "gpu", "--time", "4:00:00", "--nodes", "2", "--gpus-per-node", "8"]
    flags += ["--cpus-per-task", "12", "--account", "lm", "--sbatch", "constraint=a100", "--signal-delay", "300"]
    flags += ["--sbatch", "exclusive"]
    assert main(["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs"), *flags]) == 0
    out = capsys.readouterr().out
    assert "submitted Slurm job 4242" in out and "2 node(s) x 8 task(s)" in out
    script = (fake / "last.sbatch").read_text()
    for line in (
        "--partition=gpu",
        "--time=240",
        "--nodes=2",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=12",
        "--account=lm",
        "--constraint=a100",
        "--exclusive",
        "--signal=USR2@300",
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert f"{sys.executable} -u -m submitit.core._submit" in script
    import pickle

    (pkl,) = (tmp_path / "runs" / "slurm" / "train").glob("*_submitted.pkl")
    job = pickle.loads(pkl.read_bytes()).function
    assert isinstance(job, jobs.TrainJob)
    assert job.overrides[-3:] == ["train.num_nodes=2", "train.devices=8", "train.accelerator=gpu"]


def test_complete_run_is_not_submitted(tmp_path, capsys, monkeypatch):
    from hmem_lit.train import train

    fake = fake_slurm(tmp_path, monkeypatch)
    train(load_config(DEBUG_YAML, tiny_overrides(tmp_path / "runs", **{"train.max_tokens": 2000})))
    capsys.readouterr()
    argv = ["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs", **{"train.max_tokens": 2000})]
    assert main([*argv, "--launcher", "slurm"]) == 0
    assert "is complete" in capsys.readouterr().out and not (fake / "last.sbatch").exists()


def test_sweep_workers_are_one_job_array(tmp_path, capsys, monkeypatch):
    from .test_sweeps import write_sweep

    fake = fake_slurm(tmp_path, monkeypatch)
    path = write_sweep(tmp_path, mode="grid", space={"train.seed": [0, 1, 2]}, slurm={"partition": "debug"})
    assert main(["sweep", str(path), "--launcher", "slurm", "--workers", "3", "--array-parallelism", "2"]) == 0
    script = (fake / "last.sbatch").read_text()
    assert "#SBATCH --array=0-2%2\n" in script and "#SBATCH --partition=debug\n" in script
    assert "submitted Slurm job array 4242" in capsys.readouterr().out
    from hmem_lit import sweeps

    spec = sweeps.load_sweep(path)
    assert len(sweeps.open_study(spec).get_trials()) == 3  # the grid was queued on the login node, once
    rec = yaml.safe_load((spec.sweep_dir / "slurm_jobs.jsonl").read_text().splitlines()[0])
    assert rec["jobs"] == ["4242_0", "4242_1", "4242_2"]


# ---------------------------------------------------------------------------------------------------------------
# job states, a cancelled worker's trial, status


def test_job_states_from_squeue_then_sacct(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, squeue="12_1|RUNNING\\n13|PENDING\\n", sacct="12_0|CANCELLED by 0\\n")
    assert cluster.job_states(["12_0", "12_1", "13"]) == {"12_0": "CANCELLED", "12_1": "RUNNING", "13": "PENDING"}


def test_cancelled_worker_trial_is_reclaimed_and_shown(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from hmem_lit import sweeps
    from hmem_lit.sweeps import runner

    from .test_sweeps import write_sweep

    fake_slurm(tmp_path, monkeypatch, squeue="7_1|RUNNING\\n", sacct="7_0|CANCELLED by 0\\n")
    path = write_sweep(tmp_path, mode="grid", space={"train.seed": [0, 1]})
    spec = sweeps.load_sweep(path)
    study = sweeps.open_study(spec, create=True)
    runner.enqueue_grid(study, spec)
    for job in ("7_0", "7_1"):
        t = study.ask()
        runner.suggest(t, spec)
        t.set_user_attr("slurm_job", job)
        t.set_user_attr("host", "another-node")
    text = sweeps.status(str(path))
    assert "slurm job" in text and "7_0 CANCELLED" in text and "7_1 RUNNING" in text
    assert runner.recover_interrupted(study, spec, slurm_only=True) == [0]  # 7_1 still runs: left alone
    ts = study.get_trials(deepcopy=False)
    assert ts[0].state == TrialState.FAIL and ts[0].user_attrs["interrupted"] == "slurm job 7_0 CANCELLED"
    assert ts[2].state == TrialState.WAITING and ts[2].user_attrs["retry_of"] == 0
    assert "interrupted" not in ts[1].user_attrs


def test_unknown_state_never_reclaims(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    (tmp_path / "bin" / "squeue").write_text("#!/bin/bash\nexit 1\n")  # the controller did not answer
    assert cluster.job_states(["7_0"]) == {}


# ---------------------------------------------------------------------------------------------------------------
# requeue at a step boundary, in-process: the signal's checkpoint resumes bit-identically


class _SignalAt(jobs.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


def test_requeue_checkpoint_at_signal_resumes_bit_identical(tmp_path, monkeypatch):
    from hmem_lit import runs
    from hmem_lit.train import train

    ov = tiny_overrides(tmp_path / "runs", **{"train.max_tokens": 30_000, "train.ckpt_every": 0})
    ref = train(load_config(DEBUG_YAML, [*ov, "name=ref"]))
    cfg = load_config(DEBUG_YAML, [*ov, "name=req"])
    monkeypatch.setitem(jobs._STATE, "signum", signal.SIGUSR2)  # as install_requeue_handler leaves it in a job
    old = signal.signal(signal.SIGUSR2, lambda *a: jobs._STATE.__setitem__("requested", True))
    try:
        with pytest.raises(jobs.Requeue, match="checkpoint at step 13 committed"):
            train(cfg, extra_callbacks=[_SignalAt(13), *jobs.job_callbacks()])
    finally:
        signal.signal(signal.SIGUSR2, old)
        jobs._STATE["requested"] = False
    import torch

    assert torch.load(cfg.run_dir / runs.LAST_CKPT, weights_only=True)["global_step"] == 13
    assert 12 <= max(m["step"] for m in runs.read_metrics(cfg.run_dir)) <= 13 and not runs.is_complete(cfg.run_dir)
    monkeypatch.setitem(jobs._STATE, "signum", None)
    train(cfg)  # the next allocation: the ordinary resume
    assert_same_run(ref, cfg.run_dir)
    assert runs.read_final(ref)["metrics"] == runs.read_final(cfg.run_dir)["metrics"]


def _submitted(log_dir: Path):
    import pickle

    (pkl,) = log_dir.glob("*_submitted.pkl")
    return pickle.loads(pkl.read_bytes()).function


def test_eval_and_data_jobs_run_the_same_command(tmp_path, capsys, monkeypatch):
    fake = fake_slurm(tmp_path, monkeypatch)
    run = tmp_path / "runs" / "exp" / "r"
    argv = ["eval", str(run), "--tasks", "hmem_sk", "--limit", "3", "--launcher", "slurm", "--time", "30"]
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, "not a complete run (no final.json)", "--sbatch dependency=afterok:<job id>")
    assert main([*argv, "--sbatch", "dependency=afterok:17"]) == 0  # trained by job 17 first
    assert "#SBATCH --dependency=afterok:17\n" in (fake / "last.sbatch").read_text()
    job = _submitted(tmp_path / "runs" / "slurm" / "eval")
    assert isinstance(job, jobs.CliJob) and job.argv == ["eval", str(run), "--tasks", "hmem_sk", "--limit", "3"]
    rc, err = run_cli(["data", "prepare", str(DEBUG_YAML), "--launcher", "slurm"], capsys)
    assert_one_line(rc, err, "data.source=toy is generated in memory")
    out = tmp_path / "d"
    argv = ["data", "prepare", str(DEBUG_YAML), "data.source=builtin", f"out_dir={out}", "data.workers=4"]
    assert main([*argv, "--launcher", "slurm", "--cpus-per-task", "4"]) == 0
    assert "#SBATCH --cpus-per-task=4\n" in (fake / "last.sbatch").read_text()
    assert _submitted(out / "slurm" / "data").argv == argv


def test_sweep_worker_signalled_mid_trial_requeues_and_the_trial_resumes(tmp_path, monkeypatch, caplog):
    """A Slurm sweep worker (SLURM_JOB_ID set, fake squeue) signalled while training a trial: the trial's checkpoint
    is committed, the trial is marked interrupted and re-queued, the job asks submitit to requeue; the next
    allocation of the job resumes that trial from its checkpoint and finishes the grid."""
    from optuna.trial import TrialState

    from hmem_lit import sweeps
    from hmem_lit.sweeps import runner
    from hmem_lit.sweeps.slurm import SweepWorkerJob

    from .test_sweeps import write_sweep

    fake_slurm(tmp_path, monkeypatch, squeue="99|RUNNING\\n")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    path = write_sweep(tmp_path, mode="grid", overrides={"train.max_tokens": 8000}, space={"train.seed": [0, 1]})
    spec, threads = runner.prepare_sweep(path)
    monkeypatch.setattr(runner, "job_callbacks", lambda: [_SignalAt(5), *jobs.job_callbacks()])
    requeued = []
    monkeypatch.setattr(jobs, "requeue_now", lambda: requeued.append(True))
    old = signal.getsignal(signal.SIGUSR2)
    try:
        SweepWorkerJob(spec, 0, threads)()
    finally:
        signal.signal(signal.SIGUSR2, old)
        jobs._STATE.update(requested=False, signum=None)
    ts = sweeps.open_study(spec).get_trials(deepcopy=False)
    assert requeued and ts[0].state == TrialState.FAIL
    assert ts[0].user_attrs["interrupted"] == "slurm job 99 requeued at its time limit"
    assert [t.state for t in ts[1:]] == [TrialState.WAITING, TrialState.WAITING]  # seed 1, and seed 0 again
    run_dir = Path(ts[0].user_attrs["run_dir"])
    import torch

    from hmem_lit import runs

    assert torch.load(run_dir / runs.LAST_CKPT, weights_only=True)["global_step"] == 5
    monkeypatch.setattr(runner, "job_callbacks", jobs.job_callbacks)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="hmem_lit")  # whatever -q an earlier test's CLI call left behind
    try:
        assert SweepWorkerJob(spec, 0, threads)() == 0  # the requeued allocation
    finally:
        signal.signal(signal.SIGUSR2, old)
        jobs._STATE.update(requested=False, signum=None)
    assert f"{run_dir}: resuming from step 5" in caplog.text  # train's progress lines go through logging
    ts = sweeps.open_study(spec).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in ts) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert {t.user_attrs["name"] for t in ts if t.state == TrialState.COMPLETE} == {t.user_attrs["name"] for t in ts}
