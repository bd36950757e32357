"""Sweeps: schema validation, paper-language translation (meta device, paper scale), grid / Optuna sweeps end to
end on tiny toy configs, restart after a real SIGKILL, two workers on one study, pruning by step, PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hmem_lit.config import ConfigError
from tests.conftest import ROOT

pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from hmem_lit import sweeps  # noqa: E402
from hmem_lit.sweeps import runner  # noqa: E402
from hmem_lit.sweeps.spec import SWEEPS_DIR  # noqa: E402

HMEM = str(Path(sys.executable).parent / "hmem")
TINY = {
    "train.max_tokens": 4000,
    "train.progress": False,
    "data.seq_len": 64,
    "data.toy_docs": 200,
    "train.threads": 1,
    "train.batch_size": 8,
    "train.val_every": 2,
    "train.ckpt_every": 2,
    "train.log_every": 1,
}


def write_sweep(tmp_path: Path, name: str = "t", **spec) -> Path:
    """A sweep YAML on the debug experiment with tiny toy overrides writing under tmp_path/runs. The machinery
    tests co-train (protocol: cotrain, one run per trial); the frozen protocol has its own tests below."""
    ov = {**TINY, "out_dir": str(tmp_path / "runs"), **spec.pop("overrides", {})}
    body = {"name": name, "base": "000_debug", "overrides": ov, "protocol": "cotrain", **spec}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def trials(path: Path, *cli: str):
    spec = sweeps.load_sweep(path, list(cli))
    return sweeps.open_study(spec).get_trials(deepcopy=False), spec


# ---------------------------------------------------------------------------------------------------------------
# schema


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_validate(path):
    """Every shipped sweep and each of its profiles loads, and its grid translates (meta device) with at most a
    few points recorded as infeasible, never another error."""
    profiles = [None, *(yaml.safe_load(path.read_text()).get("profiles") or {})]
    assert len(profiles) >= 2, f"{path.name}: no GPU profile"
    header = path.read_text().splitlines()[:3]
    assert any("Question" in h for h in header) and any("Command" in h for h in header)
    for prof in profiles:
        spec = sweeps.load_sweep(path, [f"profile={prof}"] if prof else [])
        ok, bad = 0, set()
        for point in spec.grid():
            try:
                sweeps.translate(spec, point)
                ok += 1
            except sweeps.Infeasible:  # counted once over seeds: a point is infeasible at every seed
                bad.add(tuple(sorted((k, str(v)) for k, v in point.items() if k != "train.seed")))
        assert ok >= 2 and len(bad) <= 1, f"{path.name} profile={prof}: {ok} feasible, {len(bad)} infeasible"


@pytest.mark.parametrize(
    "patch,msg",
    [
        ({"mode": "random"}, "mode: got 'random'; allowed: optuna, grid"),
        ({"objective": {"metric": "val/loss", "direction": "up"}}, "objective.direction"),
        ({"bogus": 1}, "bogus: unknown sweep key"),
        ({"space": {"train.sed": [0, 1]}}, "space.train.sed: unknown config key; did you mean train.seed"),
        ({"space": {"depth": [1, 2]}}, "space.depth: unknown parameter"),
        ({"space": {"train.seed": 3}}, "grid mode needs a non-empty list"),
        ({"mode": "optuna", "n_trials": None}, "n_trials: optuna mode needs n_trials"),
        (
            {
                "objective": {"metric": "eval.fetched.hmem_sk", "direction": "maximize"},
                "mode": "optuna",
                "n_trials": 2,
                "pruner": {"type": "median"},
            },
            "pruner.type: pruning reports val/loss",
        ),
        ({"pruner": {"type": "median", "warmup": 3}}, "pruner.warmup: not an option of the median pruner"),
        ({"space": {"bank_depth": [0, 2]}}, "bank_depth: must be an integer in 1..4"),
        ({"objective": "eval.fetched"}, "objective.metric: eval metrics are eval.<memory>.<name>"),
        ({"profile": "tpu"}, "profile: got 'tpu'"),
        ({"protocol": "a3"}, "protocol: got 'a3'; allowed: frozen"),
    ],
)
def test_schema_errors_are_one_line(tmp_path, patch, msg):
    body = {"mode": "grid", "space": {"train.seed": [0, 1]}, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    path = write_sweep(tmp_path, **body)
    with pytest.raises(ConfigError) as e:
        sweeps.load_sweep(path)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_cli_overrides_and_profiles(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="optuna",
        n_trials=3,
        space={"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
        profiles={"big": {"n_trials": 9, "overrides": {"train.max_tokens": 99}}},
    )
    spec = sweeps.load_sweep(path, ["n_trials=5", "sampler.seed=7", "train.max_tokens=123", "space.train.seed=[0, 1]"])
    assert spec.n_trials == 5 and spec.seed == 7 and "train.max_tokens=123" in spec.overrides
    assert set(spec.space) == {"optim.lr", "train.seed"}
    spec = sweeps.load_sweep(path, ["profile=big"])
    assert spec.n_trials == 9 and spec.overrides == ["train.max_tokens=99"]  # a profile replaces the overrides


# ---------------------------------------------------------------------------------------------------------------
# translation


def _meta_counts(cfg):
    from hmem_lit.model import MemoryLM

    with torch.device("meta"):
        return MemoryLM(cfg, cfg.anchor.vocab_size).param_counts()


def test_ratio_at_fixed_budget_table8_meta(tmp_path):
    """Table 8 at paper scale: a 410M budget, bank ~6.34B: anchors of 12/17/19/21/22/24 layers, and anchor +
    fetched within the stated tolerance of the budget, counted independently on the meta device."""
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"anchor.preset": "openlm-410m", "retriever.depth": 3},
        translate={"tolerance": 0.01},
        fixed={"bank_depth": 3, "bank": "6.34B"},
        space={"fetch_ratio": [0.59, 0.28, 0.18, 0.10, 0.065, 0.0]},
    )
    spec = sweeps.load_sweep(path)
    budget = 411_665_408
    layers = []
    for point in spec.grid():
        cfg, info = sweeps.translate(spec, point)
        c = _meta_counts(cfg)
        assert abs(c["anchor"] + c["fetched"] - budget) <= 0.01 * budget, (point, c)
        assert c["bank"] == 0 or abs(c["bank"] - 6.34e9) <= 0.01 * 6.34e9
        assert info["realised_runtime"] == c["runtime"]
        layers.append(cfg.anchor.n_layer)
    assert layers == [12, 17, 19, 21, 22, 24]


def test_fetched_and_bank_recover_table7(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"anchor.preset": "openlm-160m", "retriever.depth": 3, "memory.type": "ffn"},
        fixed={"bank": "4.62B", "bank_depth": 3},
        space={"fetched": ["8.5M", "18.1M", "47.1M"]},
    )
    spec = sweeps.load_sweep(path)
    got = [sweeps.translate(spec, p)[0].memory.levels for p in spec.grid()]
    assert got == [[98, 42, 18], [257, 64, 16], [768, 96, 12]]  # the paper's (98,42,18), (256,64,16), (768,96,12)


def test_paper_params_translate_and_reject(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"memory.type": "kv", "retriever.depth": 2},
        space={"level": [2], "fetched": [2560, 10, 1200]},
    )
    spec = sweeps.load_sweep(path)
    cfg, info = sweeps.translate(spec, {"level": 2, "fetched": 2560})
    c0 = 2 * 2 * 4 * 16  # KV: 2 l h d_h
    assert cfg.memory.type == "kv" and cfg.memory.levels == [0, 2560 // c0] and info["realised_fetched"] == 2560
    with pytest.raises(sweeps.Infeasible, match="rounds to zero"):
        sweeps.translate(spec, {"level": 2, "fetched": 10})
    with pytest.raises(sweeps.Infeasible, match="fetched: realised"):
        sweeps.translate(spec, {"level": 2, "fetched": 1200})  # 4.69 units of 256 -> 5 = 1280: 6.7% > 5%
    with pytest.raises(sweeps.Infeasible, match="outside"):
        sweeps.translate(spec, {"bank_depth": 2, "fetched": 2560, "bank": 2560 * 1000})
    with pytest.raises(sweeps.Infeasible, match="memory.levels"):  # raw keys that the config rejects
        sweeps.translate(spec, {"memory.levels": [1, 2, 3]})


# ---------------------------------------------------------------------------------------------------------------
# sweeps end to end (in process)


def test_grid_sweep_runs_skips_complete_and_records_infeasible(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"retriever.depth": 1},
        fixed={"level": 1},
        space={"memory.type": ["ffn", "kv"], "fetched": [1536, 10]},
    )
    sweeps.run_sweep(path)
    ts, spec = trials(path)
    states = sorted(t.state.name for t in ts)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert all("rounds to zero" in t.user_attrs["infeasible"] for t in ts if t.state == TrialState.PRUNED)
    names = {t.user_attrs["name"] for t in ts}
    assert len(names) == 4
    for t in ts:
        if t.state == TrialState.COMPLETE:
            run_dir = Path(t.user_attrs["run_dir"])
            assert run_dir.parent == spec.runs_dir and (run_dir / "final.json").is_file()
            assert t.value == pytest.approx(sweeps.objective_value(spec, run_dir))
    mtime = {t.number: Path(t.user_attrs.get("run_dir", tmp_path)).stat().st_mtime for t in ts}
    sweeps.run_sweep(path)  # everything done: nothing queued, nothing retrained
    ts2, _ = trials(path)
    assert (
        len(ts2) == 4 and {t.number: Path(t.user_attrs.get("run_dir", tmp_path)).stat().st_mtime for t in ts2} == mtime
    )
    from hmem_lit.cli import main

    assert main(["sweep", "status", str(path)]) == 0


def test_failed_trial_is_recorded_and_sweep_goes_on(tmp_path, capsys):
    path = write_sweep(tmp_path, mode="grid", space={"anchor.vocab_size": [300, None]})
    sweeps.run_sweep(path)
    ts, _ = trials(path)
    by = {t.params["anchor.vocab_size"]: t for t in ts}
    assert by[300].state == TrialState.FAIL and "does not match the tokenizer" in by[300].user_attrs["error"]
    assert by[None].state == TrialState.COMPLETE
    assert "FAIL" in capsys.readouterr().out


def test_optuna_sweep_prunes_by_step_and_caps_total(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="optuna",
        n_trials=3,
        sampler={"type": "random", "seed": 1},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        space={"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
    )
    sweeps.run_sweep(path)
    ts, _ = trials(path)
    assert len(ts) == 3 and not any("infeasible" in t.user_attrs for t in ts)
    for t in ts:
        steps = list(t.intermediate_values)
        assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[0] >= 2, steps
        assert t.state != TrialState.COMPLETE or steps == [2, 4, 6, 8]
    assert any(t.state == TrialState.COMPLETE for t in ts)
    sweeps.run_sweep(path)  # the cap is a total: a relaunch adds nothing
    assert len(trials(path)[0]) == 3
    sweeps.run_sweep(path, ["n_trials=4"])
    assert len(trials(path)[0]) == 4


def test_eval_objective_runs_evaluation_only_when_needed(tmp_path, monkeypatch):
    from hmem_lit import runs

    calls = []

    def fake_eval(spec, run_dir, threads=0):
        calls.append(run_dir)
        seed = runs.read_final(run_dir)["config"]["train"]["seed"]
        runs.update_final(run_dir, eval={"fetched": {"hmem_sk": 0.1 * (seed + 1), "atomic_number/bucket0": 0.5}})

    monkeypatch.setattr(runner, "evaluate_run", fake_eval)
    path = write_sweep(tmp_path, mode="grid", space={"train.seed": [0, 1]})
    sweeps.run_sweep(path)
    assert calls == []  # val/loss objective: no evaluation
    sweeps.run_sweep(path, ["objective.metric=eval.fetched.hmem_sk", "objective.direction=maximize", "name=t_eval"])
    ts, spec = trials(path, "name=t_eval")
    assert len(calls) == 2 and sorted(t.value for t in ts) == pytest.approx([0.1, 0.2])
    assert spec.runs_dir.name == "t_eval"


def test_ratio_sweep_tiny_end_to_end(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"anchor.n_layer": 4, "retriever.depth": 1},
        translate={"tolerance": 0.05},
        fixed={"bank_depth": 1},
        space={"fetch_ratio": [0.0, 0.5]},
    )
    sweeps.run_sweep(path)
    ts, _ = trials(path)
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 2
    from hmem_lit import runs

    budget = ts[0].user_attrs["budget"]
    for t in ts:
        p = runs.read_final(t.user_attrs["run_dir"])["params"]
        assert abs(p["runtime"] - budget) <= 0.05 * budget
    assert runs.read_final(ts[1].user_attrs["run_dir"])["config"]["anchor"]["n_layer"] < 4


def test_interrupted_trial_detected_and_requeued(tmp_path):
    path = write_sweep(tmp_path, mode="grid", space={"train.seed": [0]})
    spec = sweeps.load_sweep(path)
    study = sweeps.open_study(spec, create=True)
    runner.enqueue_grid(study, spec)
    t = study.ask()
    runner.suggest(t, spec)
    t.set_user_attr("host", runner.HOST)
    t.set_user_attr("pid", 2**22 + 12345)  # no such process
    assert runner.recover_interrupted(study, spec) == [t.number]
    ts = study.get_trials(deepcopy=False)
    assert ts[0].state == TrialState.FAIL and "is gone" in ts[0].user_attrs["interrupted"]
    assert ts[1].state == TrialState.WAITING and runner.params_of(ts[1]) == {"train.seed": 0}
    assert ts[1].user_attrs["retry_of"] == 0
    sweeps.run_sweep(path)
    ts, _ = trials(path)
    assert [x.state for x in ts] == [TrialState.FAIL, TrialState.COMPLETE]


# ---------------------------------------------------------------------------------------------------------------
# processes: SIGKILL + restart, two workers


def _sweep_proc(path: Path, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [HMEM, "sweep", str(path), *args],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )


def test_sigkill_mid_trial_then_restart_resumes(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"train.max_tokens": 16000, "train.val_every": 8},
        space={"train.seed": [0, 1, 2]},
    )
    spec = sweeps.load_sweep(path)
    proc = _sweep_proc(path, log=tmp_path / "first.log")
    deadline, victim = time.time() + 240, None
    while time.time() < deadline and victim is None and proc.poll() is None:
        done = list(spec.runs_dir.glob("*/final.json"))
        for ck in spec.runs_dir.glob("*/checkpoints/last.ckpt"):
            if done and not (ck.parent.parent / "final.json").exists():
                victim = ck.parent.parent
        time.sleep(0.05)
    assert victim is not None, (tmp_path / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ts, _ = trials(path)
    assert [t.state for t in ts].count(TrialState.RUNNING) == 1
    second = _sweep_proc(path, log=tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    ts, _ = trials(path)
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len({t.user_attrs["name"] for t in complete}) == 3
    assert len(ts) == 4 and sum(bool(t.user_attrs.get("interrupted")) for t in ts) == 1
    assert f"{victim}: resuming from step" in (tmp_path / "second.log").read_text()
    assert len(list(spec.runs_dir.glob("*/final.json"))) == 3


def test_two_workers_share_one_study(tmp_path):
    path = write_sweep(tmp_path, mode="grid", overrides={"train.threads": 0}, space={"train.seed": [0, 1, 2, 3]})
    sweeps.run_sweep(path, workers=2)
    ts, spec = trials(path)
    assert len(ts) == 4 and all(t.state == TrialState.COMPLETE for t in ts)
    assert len({t.user_attrs["name"] for t in ts}) == 4 and len(list(spec.runs_dir.glob("*/final.json"))) == 4
    assert {t.user_attrs["pid"] for t in ts} - {os.getpid()}  # ran in the worker processes
    cfg = yaml.safe_load((Path(ts[0].user_attrs["run_dir"]) / "config.yaml").read_text())
    assert cfg["train"]["threads"] == max(1, (os.cpu_count() or 1) // 2)  # each worker's own thread budget


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.slow
def test_postgresql_study(tmp_path):
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver: pip install psycopg2-binary")
    import tempfile

    pre: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
        if not shutil.which("runuser") or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a 'postgres' user to start the server")
        pre = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="hmem-pg-"))  # outside pytest's 0700 tmp tree: the server user must enter
    os.chmod(root, 0o777)
    data, sock = root / "pg", root / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    subprocess.run([*pre, initdb, "-D", str(data), "-U", "hmem", "--auth=trust"], check=True, capture_output=True)
    port = 54329
    subprocess.run(
        [
            *pre,
            pg_ctl,
            "-D",
            str(data),
            "-w",
            "-l",
            str(root / "pg.log"),
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=''",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*pre, "createdb", "-h", str(sock), "-p", str(port), "-U", "hmem", "optuna"],
            check=True,
            capture_output=True,
        )
        url = f"postgresql://hmem@/optuna?host={sock}&port={port}"
        path = write_sweep(tmp_path, mode="grid", storage=url, space={"train.seed": [0, 1]})
        sweeps.run_sweep(path, workers=2)
        ts, _ = trials(path)
        assert sorted(t.state.name for t in ts) == ["COMPLETE", "COMPLETE"]
        assert "postgresql://" in sweeps.status(str(path))
    finally:
        subprocess.run([*pre, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_cli_sweep_parses_workers_anywhere(monkeypatch):
    from hmem_lit.cli import main

    got = []
    monkeypatch.setattr(sweeps, "run_sweep", lambda target, rest, workers=1: got.append((target, rest, workers)))
    assert main(["sweep", "fetch_ratio", "--workers", "3", "n_trials=2"]) == 0
    assert main(["sweep", "--workers", "2", "fetch_ratio", "train.seed=1"]) == 0
    assert got == [("fetch_ratio", ["n_trials=2"], 3), ("fetch_ratio", ["train.seed=1"], 2)]
    assert main(["sweep", "fetch_ratio", "--force"]) == 2


# ---------------------------------------------------------------------------------------------------------------
# issue 19 case 18: every shipped sweep starts with two workers


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_resolve_worker_threads_without_a_trial(path):
    """The worker thread budget is read before any trial's params exist: overrides that set memory.type (sized
    by the space) must not fail there (they did, after the grid had been queued)."""
    assert runner._base_threads(sweeps.load_sweep(path)) >= 0


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_run_with_two_workers(tmp_path, path):
    cli = ["train.max_tokens=512", "train.progress=false", f"out_dir={tmp_path / 'runs'}"]
    if sweeps.load_sweep(path).mode == "optuna":
        cli.append("n_trials=2")
    r = subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", "sweep", str(path), "--workers", "2", *cli],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ts, _ = trials(path, *cli)
    assert ts and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts), [t.user_attrs for t in ts]
    assert any(t.state == TrialState.COMPLETE for t in ts)


# ---------------------------------------------------------------------------------------------------------------
# issue 20: baselines, per-level LR multipliers, placement accounting


def test_baselines_trained_once_shared_and_reported(tmp_path, monkeypatch):
    """A sweep's baselines are anchor-only runs (memory.* overrides dropped), shared by sweeps whose other
    overrides agree, trained and evaluated once, and listed with the trials for `hmem report`."""
    from hmem_lit import runs
    from hmem_lit.analysis.sweep import load_study, resolve, trial_run_dirs

    evals = []

    def fake_eval(spec, run_dir, threads=0):
        evals.append(Path(run_dir).name)
        runs.update_final(run_dir, eval={"fetched": {"hmem_sk": 0.5}})

    monkeypatch.setattr(runner, "evaluate_run", fake_eval)
    kw = dict(
        mode="grid",
        baselines=["000_debug"],
        objective={"metric": "eval.fetched.hmem_sk", "direction": "maximize"},
        overrides={"retriever.depth": 1, "memory.type": "ffn"},
        fixed={"level": 1},
    )
    a = write_sweep(tmp_path, name="a", space={"fetched": [1536]}, **kw)
    b = write_sweep(tmp_path, name="b", space={"fetched": [3072]}, **kw)
    sweeps.run_sweep(a)
    sweeps.run_sweep(b)
    (cfg,) = runner.baseline_configs(sweeps.load_sweep(a))
    assert cfg.memory.type == "none" and cfg.train.mode == "anchor" and cfg.retriever.depth == 1
    assert cfg.run_dir.parent == tmp_path / "runs" / "sweeps" / "_baselines"
    assert evals.count(cfg.run_dir.name) == 1, evals  # shared: sweep b found it complete and evaluated
    assert runs.read_final(cfg.run_dir)["params"]["fetched"] == 0
    other = runner.baseline_configs(sweeps.load_sweep(a, ["data.toy_docs=150"]))[0]
    assert other.run_dir != cfg.run_dir  # another corpus size: another baseline
    study, _ = load_study(resolve(str(b)))
    dirs = {p.resolve() for p in trial_run_dirs(study)}
    assert cfg.run_dir.resolve() in dirs and len(dirs) == 2


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def test_frozen_protocol_trains_one_anchor_per_seed_and_freezes_it(tmp_path):
    """protocol: frozen (the default): every memory trial trains on a trained anchor of its own shape and seed,
    trained once and shared (two memory types, one seed: one anchor), held frozen (the trial's anchor weights are
    the anchor run's, bit for bit, while its memory moved); `hmem sweep plan` says so before anything trains."""
    from hmem_lit import runs

    path = write_sweep(
        tmp_path,
        mode="grid",
        protocol="frozen",
        overrides={"retriever.depth": 1, "memory.type": "ffn"},
        fixed={"level": 1},
        space={"memory.type": ["ffn", "kv"], "fetched": [1536]},
    )
    text = sweeps.plan(path)
    assert "protocol: frozen" in text and "frozen anchors: 1 (anchor-" in text and text.count("mode=frozen on") == 2
    sweeps.run_sweep(path)
    ts, spec = trials(path)
    assert sorted(t.state.name for t in ts) == ["COMPLETE", "COMPLETE"]
    (anchor_dir,) = {Path(t.user_attrs["anchor"]) for t in ts}
    assert anchor_dir.parent == tmp_path / "runs" / "sweeps" / "_baselines" and runs.is_complete(anchor_dir)
    anchor_cfg = runs.load_run_config(anchor_dir)
    assert anchor_cfg.memory.type == "none" and anchor_cfg.train.mode == "anchor"
    anchor_w = _weights(anchor_dir)
    for t in ts:
        run_dir = Path(t.user_attrs["run_dir"])
        cfg = runs.load_run_config(run_dir)
        assert cfg.train.mode == "frozen" and Path(cfg.train.init_from) == anchor_dir
        w = _weights(run_dir)
        shared = [k for k in w if k in anchor_w]
        assert shared and all(torch.equal(w[k], anchor_w[k]) for k in shared), "the anchor moved: not frozen"
        assert any(k.startswith("memory.") and w[k].abs().sum() > 0 for k in w), "no memory trained"
    n_runs = len(list((tmp_path / "runs" / "sweeps" / "_baselines").glob("anchor-*")))
    sweeps.run_sweep(
        write_sweep(
            tmp_path,
            name="t2",
            mode="grid",
            protocol="frozen",
            overrides={"retriever.depth": 1, "memory.type": "ffn"},
            fixed={"level": 1},
            space={"fetched": [3072], "optim.memory_lr": [0.01]},
        )
    )
    assert len(list((tmp_path / "runs" / "sweeps" / "_baselines").glob("anchor-*"))) == n_runs, (
        "another sweep (another fetch and memory LR) on the same anchor trained a second one"
    )


def test_frozen_protocol_with_baselines_evaluates_every_seeds_anchor(tmp_path, monkeypatch):
    """A sweep with baselines compares each memory trial with its own seed's anchor: every frozen anchor is
    evaluated once (not only seed 0's, the baseline), and the plan says so."""
    from hmem_lit import runs
    from hmem_lit.sweeps import runner

    evals = []

    def fake_eval(spec, run_dir, threads=0):
        evals.append(Path(run_dir).name)
        runs.update_final(run_dir, eval={"fetched": {"hmem_sk": 0.5}})

    monkeypatch.setattr(runner, "evaluate_run", fake_eval)
    path = write_sweep(
        tmp_path,
        mode="grid",
        protocol="frozen",
        baselines=["000_debug"],
        objective={"metric": "eval.fetched.hmem_sk", "direction": "maximize"},
        overrides={"retriever.depth": 1, "memory.type": "ffn"},
        fixed={"level": 1},
        space={"fetched": [1536], "train.seed": [0, 1]},
    )
    assert "each evaluated" in sweeps.plan(path)
    sweeps.run_sweep(path)
    ts, _ = trials(path)
    anchors = {Path(t.user_attrs["anchor"]).name for t in ts}
    assert len(anchors) == 2 and all(evals.count(a) == 1 for a in anchors), (anchors, evals)
    sweeps.run_sweep(path)  # complete and evaluated: nothing again
    assert all(evals.count(a) == 1 for a in anchors), evals


def test_cotrain_protocol_trains_as_the_base_says(tmp_path):
    path = write_sweep(
        tmp_path,
        mode="grid",
        protocol="cotrain",
        overrides={"retriever.depth": 1, "memory.type": "ffn"},
        fixed={"level": 1},
        space={"fetched": [1536]},
    )
    assert "protocol: cotrain" in sweeps.plan(path) and "mode=scratch" in sweeps.plan(path)
    sweeps.run_sweep(path)
    (t,) = trials(path)[0]
    from hmem_lit import runs

    assert runs.load_run_config(Path(t.user_attrs["run_dir"])).train.mode == "scratch" and "anchor" not in t.user_attrs
    assert not (tmp_path / "runs" / "sweeps" / "_baselines").exists()


def test_baselines_bad_name_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="baselines: experiment file not found"):
        sweeps.load_sweep(write_sweep(tmp_path, mode="grid", baselines=["nope"], space={"train.seed": [0]}))


def test_memory_lr_scale_follows_the_tree_level(tmp_path):
    """optim.memory_lr_scale is per tree level: a level-1 point keeps the first multiplier, a level-2 point both."""
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"retriever.depth": 2, "memory.type": "ffn", "optim.memory_lr_scale": [1.0, 2.5]},
        space={"level": [1, 2], "fetched": [1536]},
    )
    spec = sweeps.load_sweep(path)
    got = {p["level"]: sweeps.translate(spec, p)[0] for p in spec.grid()}
    assert got[1].memory.levels == [4] and got[1].optim.memory_lr_scale == [1.0]
    assert got[2].memory.levels == [0, 4] and got[2].optim.memory_lr_scale == [1.0, 2.5]


def test_placement_equal_fetch_on_meta_device(tmp_path):
    """early / middle / late / all at one fetched size: fewer memory layers get more units each (c0 = 3 l d), the
    fetched count is the same (the placement names resolve on the meta device: they used a tensor and crashed)."""
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"anchor.n_layer": 3, "retriever.depth": 1, "memory.type": "ffn"},
        fixed={"level": 1, "fetched": 1152},
        space={"memory.layers": ["early", "middle", "late", "all"]},
    )
    spec = sweeps.load_sweep(path)
    info = {p["memory.layers"]: sweeps.translate(spec, p)[1] for p in spec.grid()}
    assert {i["realised_fetched"] for i in info.values()} == {1152}
    assert info["early"]["levels"] == info["late"]["levels"] == [3 * info["all"]["levels"][0]]


def test_cases_axis_varies_params_together(tmp_path):
    """space.cases: each memory type at its own learning rate (the fair memory-type comparison), crossed with the
    other axes; a trial is named as if each param were an axis of its own."""
    from hmem_lit import runs
    from hmem_lit.sweeps.spec import trial_name

    cases = [{"memory.type": "ffn", "optim.memory_lr": 0.003}, {"memory.type": "kv", "optim.memory_lr": 0.03}]
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"retriever.depth": 1},
        fixed={"level": 1, "fetched": 1536},
        space={"cases": cases, "train.seed": [0, 1]},
    )
    plan = sweeps.plan(path)
    assert "4 trials" in plan and "memory.type=kv, optim.memory_lr=0.03, train.seed=1" in plan
    sweeps.run_sweep(path)
    ts, spec = trials(path)
    assert sorted(t.state.name for t in ts) == ["COMPLETE"] * 4
    seen = set()
    for t in ts:
        cfg = runs.load_run_config(Path(t.user_attrs["run_dir"]))
        seen.add((cfg.memory.type, cfg.optim.memory_lr, cfg.train.seed))
        assert t.user_attrs["name"] == trial_name(
            {"memory.type": cfg.memory.type, "optim.memory_lr": cfg.optim.memory_lr, "train.seed": cfg.train.seed}
        )
    assert seen == {("ffn", 0.003, 0), ("ffn", 0.003, 1), ("kv", 0.03, 0), ("kv", 0.03, 1)}
    from hmem_lit.cli import main

    assert main(["sweep", "status", str(path)]) == 0


@pytest.mark.parametrize(
    "space, msg",
    [
        ({"cases": [{"optim.memory_rate": 0.1}]}, "space.cases.optim.memory_rate: unknown config key"),
        ({"cases": ["ffn"]}, "expected a list of mappings of params"),
        ({"cases": [{"level": 9}]}, "level: must be an integer in 1..4"),
    ],
)
def test_cases_axis_errors_are_one_line(tmp_path, space, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        sweeps.load_sweep(write_sweep(tmp_path, mode="grid", space=space))


def test_a_changed_grid_axis_is_one_line_not_a_failed_trial(tmp_path):
    """optuna cannot change the choices of a stored categorical param: a grid extended after the fact (another
    learning rate) is refused before any trial, with the way out (a new name), and the study is left as it was."""
    path = write_sweep(
        tmp_path,
        mode="grid",
        overrides={"retriever.depth": 1, "train.max_tokens": 1000},
        space={"optim.memory_lr": [0.01]},
    )
    sweeps.run_sweep(path)
    with pytest.raises(
        ConfigError,
        match=r"space.optim.memory_lr: the study 't' .* was created with \[0.01\], "
        r"this sweep asks for \[0.01, 0.3\]; .* name=<new name>",
    ):
        sweeps.run_sweep(path, ["space.optim.memory_lr=[0.01,0.3]"])
    ts, _ = trials(path)
    assert [t.state.name for t in ts] == ["COMPLETE"]
    sweeps.run_sweep(path, ["space.optim.memory_lr=[0.01,0.3]", "name=t2"])  # the way out works
    ts2, _ = trials(path, "name=t2")
    assert sorted(t.state.name for t in ts2) == ["COMPLETE", "COMPLETE"]


def test_an_axis_on_a_case_param_selects_the_cases(tmp_path):
    """`space.memory.type=[lora]` on a sweep with cases keeps the LoRA case (with its own rate) and crosses it with the
    other axes; a value no case has drops the cases (the base's settings apply), as a plug-in type needs."""
    cases = [{"memory.type": "ffn", "optim.memory_lr": 0.01}, {"memory.type": "lora", "optim.memory_lr": 0.03}]
    path = write_sweep(tmp_path, mode="grid", fixed={"level": 1}, space={"cases": cases, "train.seed": [0]})
    spec = sweeps.load_sweep(path, ["space.memory.type=[lora]", "space.memory.lora.target=[vo,qk]"])
    assert spec.grid() == [
        {"optim.memory_lr": 0.03, "train.seed": 0, "memory.type": "lora", "memory.lora.target": t} for t in ("vo", "qk")
    ]
    spec = sweeps.load_sweep(path, ["space.memory.type=[kv]"])
    assert "cases" not in spec.space and spec.grid() == [{"train.seed": 0, "memory.type": "kv"}]
    spec = sweeps.load_sweep(path, ["fixed.optim.memory_lr=0.01"])
    assert spec.grid() == [{"memory.type": "ffn", "train.seed": 0}]


def test_an_axis_of_several_case_values_keeps_each_case_paired(tmp_path):
    """`space.memory.type=[lora,kv]` on three typed cases runs LoRA at LoRA's rate and KV at KV's, never crossed (a
    defect found running seeds 3-4 of the memory-type comparison: the axis was crossed with the stripped cases, which
    put LoRA at KV's rate); a case without the param runs once per axis value."""
    cases = [
        {"memory.type": "ffn", "optim.memory_lr": 0.01},
        {"memory.type": "lora", "optim.memory_lr": 0.03},
        {"memory.type": "kv", "optim.memory_lr": 0.3},
    ]
    path = write_sweep(tmp_path, mode="grid", fixed={"level": 1}, space={"cases": cases, "train.seed": [0]})
    spec = sweeps.load_sweep(path, ["space.memory.type=[lora,kv]", "space.train.seed=[3,4]"])
    pairs = sorted((p["memory.type"], p["optim.memory_lr"], p["train.seed"]) for p in spec.grid())
    assert pairs == [("kv", 0.3, 3), ("kv", 0.3, 4), ("lora", 0.03, 3), ("lora", 0.03, 4)]
    cases = [{"memory.type": "ffn", "optim.memory_lr": 0.01}, {"optim.memory_lr": 0.1}]
    path = write_sweep(tmp_path, mode="grid", fixed={"level": 1}, space={"cases": cases})
    spec = sweeps.load_sweep(path, ["space.memory.type=[ffn,kv]"])
    got = sorted((p["memory.type"], p["optim.memory_lr"]) for p in spec.grid())
    assert got == [("ffn", 0.01), ("ffn", 0.1), ("kv", 0.1)] and "memory.type" not in spec.space


@pytest.mark.parametrize("verb", ["status", "plan"])
def test_sweep_status_and_plan_answer_help(verb, capsys):
    from hmem_lit.cli import main

    assert main(["sweep", verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hmem sweep {verb} <sweep>") and "not found" not in out
