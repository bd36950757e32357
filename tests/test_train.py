"""Training through Lightning: run directories, determinism, exact kill-and-resume, clear resume errors, DDP."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hmem_lit import runs
from hmem_lit.config import ConfigError, load_config
from hmem_lit.model import load_model
from hmem_lit.train import Plan, plan, train
from hmem_lit.utils import read_json

from .conftest import DEBUG_YAML, ROOT, kill_after_checkpoint, tiny_overrides


def _losses(run_dir):
    return [(r["step"], r["train/loss"]) for r in runs.read_metrics(run_dir) if "train/loss" in r]


def _same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / runs.WEIGHTS)), load_file(str(b / runs.WEIGHTS))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_directory_is_complete_and_self_describing(tiny_cfg):
    run_dir = train(tiny_cfg(name="a"))
    for f in (runs.CONFIG, runs.MANIFEST, runs.METRICS, runs.FINAL, runs.WEIGHTS, runs.LAST_CKPT):
        assert (run_dir / f).is_file(), f
    final = runs.read_final(run_dir)
    assert final["status"] == "complete" and final["steps"] == 40  # ceil(20000 / (8 * 64)) steps
    assert plan(tiny_cfg(name="a")) is None  # complete: nothing to do (--force plans it again)
    assert plan(tiny_cfg(name="a"), force=True) == Plan(run_dir, 1, 8 * 64, 40, "32-true", False)
    assert final["tokens"] == 40 * 8 * 64
    assert final["metrics"]["val/loss"] < 5.0 and final["params"]["anchor"] > 0
    man = read_json(run_dir / runs.MANIFEST)
    assert {"git_sha", "git_dirty", "packages", "device", "seed"} <= set(man)
    losses = [loss for _, loss in _losses(run_dir)]
    assert losses[-1] < losses[0]  # it learns
    # the final weights load back (safetensors) into a model with the resolved config
    model, cfg = load_model(run_dir)
    assert cfg.anchor.vocab_size == 258 and model.param_counts() == final["params"]
    # relaunching a complete run is a no-op
    mtime = (run_dir / runs.FINAL).stat().st_mtime
    train(tiny_cfg(name="a"))
    assert (run_dir / runs.FINAL).stat().st_mtime == mtime


def test_same_seed_same_losses(tiny_cfg):
    a = train(tiny_cfg(name="s1", **{"train.max_tokens": 8000}))
    b = train(tiny_cfg(name="s2", **{"train.max_tokens": 8000}))
    c = train(tiny_cfg(name="s3", **{"train.max_tokens": 8000, "train.seed": 1}))
    assert _losses(a) == _losses(b) and len(_losses(a)) > 5
    assert _losses(a) != _losses(c)
    assert _same_weights(a, b)


def test_kill_and_resume_is_bit_identical(tmp_path):
    """A run SIGKILLed mid-way and relaunched ends with the same weights and loss curve as an uninterrupted one."""
    ov = tiny_overrides(tmp_path / "runs", **{"train.max_tokens": 60_000, "train.ckpt_every": 10})
    ref = train(load_config(DEBUG_YAML, [*ov, "name=ref"]))
    cmd = [sys.executable, "-m", "hmem_lit.cli", "train", str(DEBUG_YAML), *ov, "name=killed"]
    run_dir = tmp_path / "runs" / "000_debug" / "killed"
    ckpt_step = kill_after_checkpoint(cmd, run_dir, min_step=25, timeout=180)
    assert 0 < ckpt_step < 117
    state = torch.load(run_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)["callbacks"]
    before = next(v["train_time_s"] for k, v in state.items() if "AtomicCheckpoint" in k)
    assert before > 0
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from step {ckpt_step}" in r.stderr  # a status line: logging, on stderr
    assert _same_weights(ref, run_dir)
    assert _losses(ref) == _losses(run_dir)
    # train_time_s counts the killed segment (up to its checkpoint) as well as the resumed one
    assert runs.read_final(run_dir)["train_time_s"] > before


def test_corrupt_checkpoint_is_an_error_not_a_restart(tiny_cfg):
    cfg = tiny_cfg(name="c")
    run_dir = train(cfg)
    (run_dir / runs.FINAL).unlink()  # make it incomplete
    (run_dir / runs.LAST_CKPT).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        train(cfg)


def test_changed_config_is_an_error(tiny_cfg):
    train(tiny_cfg(name="m"))
    with pytest.raises(ConfigError, match="different config"):
        train(tiny_cfg(name="m", **{"optim.lr": 0.01}))


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    ov = tiny_overrides(tmp_path / "runs", **{"train.max_tokens": 16_000})
    cmd = [
        sys.executable,
        "-m",
        "hmem_lit.cli",
        "train",
        str(DEBUG_YAML),
        *ov,
        "name=ddp",
        "train.strategy=ddp",
        "train.devices=2",
        "train.accelerator=cpu",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    final = runs.read_final(tmp_path / "runs" / "000_debug" / "ddp")
    assert final["steps"] == 16 and final["tokens"] == 16 * 2 * 8 * 64  # two ranks share each step
    assert "2 proc" in read_json(tmp_path / "runs" / "000_debug" / "ddp" / runs.MANIFEST)["device"]


def test_non_finite_loss_stops_the_run_not_complete(tiny_cfg):
    """Issue 19 case 7: a diverging run stops with RunError instead of ending 'complete' with val/loss=nan."""
    from hmem_lit.config import RunError

    cfg = tiny_cfg(name="nan", **{"optim.lr": 100, "optim.grad_clip": 0, "optim.warmup": 0, "train.max_tokens": 4000})
    with pytest.raises(RunError, match="diverged|not marked complete"):
        train(cfg)
    assert not runs.is_complete(cfg.run_dir) and not (cfg.run_dir / runs.WEIGHTS).exists()


def test_plan_settles_the_run_from_its_config_and_writes_nothing(tiny_cfg):
    """plan: sizes from the config (tokens per step = batch x accumulate x world x seq_len, steps to max_tokens);
    it runs every config-only check, so a bad setting fails there with nothing created."""
    cfg = tiny_cfg(name="p", **{"train.accumulate": 2, "train.max_tokens": 5000})
    assert plan(cfg) == Plan(cfg.run_dir, 1, 8 * 2 * 64, 5, "32-true", False)  # ceil(5000 / 1024)
    pkm = tiny_cfg(name="k", **{"memory.type": "pkm", "memory.pkm.mode": "replace"})
    assert plan(pkm).unused_params  # the replaced FFNs get no gradient: DDP must look for unused parameters
    bogus = tiny_cfg(name="s", **{"train.strategy": "bogus"})  # loads: Lightning's own check (a probe Trainer)
    with pytest.raises(ConfigError, match="train.strategy.*bogus"):
        plan(bogus)
    assert not cfg.run_dir.parent.exists()  # no run directory, not even runs/<experiment>/


def test_world_size_counts_every_device_for_auto_and_minus_one(monkeypatch):
    """train.devices=-1 / auto on a machine with 4 GPUs splits the token budget over 4 processes (it counted 1)."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    from hmem_lit.train import _world_size

    base = ROOT / "experiments" / "000_debug.yaml"
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(CUDAAccelerator, "auto_device_count", staticmethod(lambda: 4))
    for dev in ("auto", -1):
        assert _world_size(load_config(base, [f"train.devices={dev}"])) == 4
    assert _world_size(load_config(base, ["train.devices=2"])) == 2
    assert _world_size(load_config(base, ["train.devices=[0,2,3]"])) == 3
    assert _world_size(load_config(base, ["train.devices=auto", "train.accelerator=cpu"])) == 1
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    assert _world_size(load_config(base, ["train.devices=auto"])) == 1


def test_val_ppl_is_exp_of_the_token_weighted_val_loss(tmp_path):
    """val/ppl is exp(val/loss) at every validation (one pass over the logits; it was a second Perplexity metric)."""
    import json
    import math

    run_dir = train(load_config(DEBUG_YAML, tiny_overrides(tmp_path, **{"train.max_tokens": 6000})))
    vals = [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]
    vals = [r for r in vals if "val/loss" in r]
    assert vals and all(math.isclose(r["val/ppl"], math.exp(r["val/loss"]), rel_tol=1e-5) for r in vals)
