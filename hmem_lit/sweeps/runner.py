"""Running sweeps: one Optuna study in persistent storage, trials = ordinary run directories.

- Storage: `JournalStorage(JournalFileBackend(<out_dir>/sweeps/<name>/study.journal))` by default, or any
  database URL (sqlite:///..., postgresql://user@host/db) so workers on several machines share one study.
- Restart safety: a trial left RUNNING by a killed process (same host and dead pid, or no heartbeat for
  stale_after_s) is marked FAIL with user_attrs["interrupted"] and its params are re-enqueued; the re-run finds its
  run directory and resumes from the checkpoint (a complete one is a no-op). Trials counted toward n_trials exclude
  interrupted ones, so nothing is lost or duplicated.
- Grid mode enqueues every point not yet COMPLETE / PRUNED / queued; FAILed points are retried by the next launch.
- Workers: N processes share the study; asking is serialised by a file lock, each runs with its own thread budget.
- Pruning: `StepPruningCallback` reports (trainer.global_step, val/loss) at every validation during fit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal, cast

import optuna
from optuna.trial import TrialState

from hmem_lit import console, runs
from hmem_lit.config import ConfigError, load_config
from hmem_lit.launch import cluster
from hmem_lit.sweeps import protocol
from hmem_lit.sweeps.protocol import baseline_configs, frozen_anchor  # noqa: F401 (re-exported)
from hmem_lit.sweeps.spec import SKELETON, SweepSpec, expand, load_sweep, trial_name
from hmem_lit.sweeps.translate import Infeasible, translate
from hmem_lit.sweeps.views import decode_param, encode_param, plan, summary  # noqa: F401 (plan: re-exported)
from hmem_lit.utils import write_json

HOST = socket.gethostname()

log = logging.getLogger("hmem_lit.sweeps")


# ---------------------------------------------------------------------------------------------------------------
# storage, study


def job_callbacks() -> list[Any]:
    """A Slurm job's callbacks for a trial's training (launch/jobs.py; it imports Lightning, so only when training)."""
    from hmem_lit.launch import jobs

    return jobs.job_callbacks()


def check_requeue() -> None:
    """Between trials: a Slurm worker signalled at its time limit requeues (launch/jobs.py)."""
    from hmem_lit.launch import jobs

    jobs.check_requeue()


def make_storage(spec: SweepSpec, create: bool = True) -> Any:
    if not create and not (spec.storage and "://" in spec.storage) and not Path(spec.storage_url).is_file():
        raise ConfigError(f"{spec.name}: no study at {spec.storage_url} yet; run `hmem sweep {spec.path}` first")
    if spec.storage and "://" in spec.storage:
        if spec.storage.startswith("sqlite:///"):
            Path(spec.storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(_driver(spec.storage), engine_kwargs={"pool_pre_ping": True})
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(spec.storage_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _driver(url: str) -> str:
    """postgresql:// means psycopg (v3) to SQLAlchemy 2.1; fall back to psycopg2 when only that is installed."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg") is None:
            if importlib.util.find_spec("psycopg2") is None:
                raise ConfigError(
                    "storage: a PostgreSQL URL needs a driver: pip install 'psycopg[binary]' or psycopg2-binary"
                )
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    kw = dict(spec.sampler_kwargs)
    try:
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **kw)
        if spec.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, **kw)
        return optuna.samplers.RandomSampler(seed=seed, **kw)
    except TypeError as e:
        raise ConfigError(f"sampler: {e}") from None


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    cls = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    }[spec.pruner]
    try:
        return cls(**spec.pruner_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pruner: {e}") from None


def open_study(spec: SweepSpec, create: bool = False, seed_offset: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(spec, create)
    if create:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            direction=cast(Literal["minimize", "maximize"], spec.direction),  # load_sweep checks it is one of them
            load_if_exists=True,
        )
        if not study.metric_names:  # optuna-dashboard labels the objective with it (else "Objective 0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([spec.metric])
        if study.direction.name.lower() != spec.direction:
            raise ConfigError(
                f"objective.direction: the stored study {spec.name!r} is "
                f"{study.direction.name.lower()}; use another name= or storage="
            )
        if spec.mode == "grid":
            _check_same_grid(study, spec)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    except KeyError:
        raise ConfigError(
            f"{spec.name}: no study in {spec.storage_url} yet; run `hmem sweep {spec.path}` first"
        ) from None
    study.sampler = make_sampler(spec, spec.seed + 1009 * seed_offset + len(study.get_trials(deepcopy=False)))
    return study


def _check_same_grid(study: optuna.Study, spec: SweepSpec) -> None:
    """Optuna cannot add, drop or reorder the choices of a stored categorical param, so a grid axis changed since the
    study was created is refused in one line here, instead of failing every new trial."""
    for t in study.get_trials(deepcopy=False):
        for k, dist in t.distributions.items():
            if k not in spec.space or not isinstance(dist, optuna.distributions.CategoricalDistribution):
                continue
            want = [encode_param(v) for v in spec.space[k]]
            if list(dist.choices) != want:
                raise ConfigError(
                    f"space.{k}: the study {spec.name!r} in {spec.storage_url} was created with "
                    f"{[decode_param(c) for c in dist.choices]}, this sweep asks for {spec.space[k]}; a stored grid "
                    f"axis cannot change: run it as a new study with name=<new name> (trials are run directories, "
                    f"so `hmem report` can read both)"
                )
        if t.distributions:
            return


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------
# params


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    out = {}
    for k, dom in spec.space.items():
        if spec.mode == "grid":
            out[k] = decode_param(trial.suggest_categorical(k, [encode_param(v) for v in dom]))
        elif dom["type"] == "categorical":
            out[k] = decode_param(trial.suggest_categorical(k, [encode_param(v) for v in dom["choices"]]))
        elif dom["type"] == "int":
            out[k] = trial.suggest_int(
                k, int(dom["low"]), int(dom["high"]), step=int(dom.get("step") or 1), log=bool(dom.get("log"))
            )
        else:
            out[k] = trial.suggest_float(k, dom["low"], dom["high"], step=dom.get("step"), log=bool(dom.get("log")))
    return expand(out)


def _counted(t: optuna.trial.FrozenTrial) -> bool:
    return not t.user_attrs.get("interrupted") and not t.user_attrs.get("surplus")


# ---------------------------------------------------------------------------------------------------------------
# pruning + heartbeat


# ---------------------------------------------------------------------------------------------------------------
# one trial


def evaluate_run(spec: SweepSpec, run_dir: Path, threads: int = 0) -> None:
    try:
        from hmem_lit.evaluation import evaluate
    except ImportError as e:
        raise ConfigError(f"evaluate: hmem_lit.evaluation is not available ({e})") from None
    evaluate(
        run_dir,
        tasks=spec.eval_tasks,
        memory=spec.eval_memory or "fetched",
        limit=spec.eval_limit,
        threads=threads,
        print_table=False,
    )


def objective_value(spec: SweepSpec, run_dir: str | Path) -> float:
    """The objective read from final.json: metrics[m], eval[memory][m], or a dotted path into final.json."""
    final = runs.read_final(run_dir)
    m = spec.metric
    if m.startswith("eval."):
        _, mode, name = m.split(".", 2)
        got = runs.eval_section(final, mode)
        if name not in got:
            raise KeyError(
                f"objective.metric {m!r}: not in final.json eval.{mode} (has: {', '.join(sorted(got)) or 'nothing'})"
            )
        return float(got[name])
    if m in final.get("metrics", {}):
        return float(final["metrics"][m])
    node: Any = final
    for part in m.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(
                f"objective.metric {m!r}: not in final.json metrics (has: {', '.join(final.get('metrics', {}))})"
            )
        node = node[part]
    return float(node)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, list)) or v is None else str(v)) for k, v in d.items()}


def run_trial(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec, threads: int = 0) -> TrialState:
    """Translate, train, evaluate, tell. Never raises except on KeyboardInterrupt (recorded as interrupted)."""
    from hmem_lit.train import train

    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("heartbeat", time.time())
    if cluster.current_job():  # a Slurm worker: `hmem sweep status` shows the job, a dead job's trial is reclaimed
        trial.set_user_attr("slurm_job", cluster.current_job())
    try:
        params = suggest(trial, spec)
        name = trial_name(params)
        trial.set_user_attr("name", name)
        extra = [f"name={name}"] + ([f"train.threads={threads}"] if threads else [])
        try:
            cfg, info = translate(spec, params, extra)
        except Infeasible as e:
            trial.set_user_attr("infeasible", str(e))
            return _tell(study, trial, TrialState.PRUNED, note=f"infeasible: {e}")
        anchor = frozen_anchor(spec, cfg)
        if anchor is not None:  # the frozen protocol: the shared anchor first (trained once), then the memory on it
            trial.set_user_attr("anchor", str(anchor.run_dir))
            # with baselines, every seed's anchor is evaluated too: the page's gains are memory - its own anchor
            _ensure_run(spec, anchor, threads, evaluate=spec.needs_eval and bool(spec.baselines))
            cfg = protocol.freeze_on(cfg, anchor)
        trial.set_user_attr("run_dir", str(cfg.run_dir))
        for k, v in _jsonable(info).items():
            trial.set_user_attr(k, v)
        from hmem_lit.sweeps.pruning import StepPruningCallback

        cb = StepPruningCallback(trial, prune=spec.pruner != "none", heartbeat_s=spec.heartbeat_s)
        with file_lock(spec.sweep_dir / "locks" / f"{name}.lock"):  # same params in two workers: one trains
            run_dir = train(cfg, extra_callbacks=[cb, *job_callbacks()])
            if spec.needs_eval:
                trial.set_user_attr("heartbeat", time.time())
                evaluate_run(spec, run_dir, threads)
        value = objective_value(spec, run_dir)
        if math.isnan(value):
            trial.set_user_attr("error", f"objective {spec.metric} is NaN")
            return _tell(study, trial, TrialState.FAIL, note="NaN objective")
        return _tell(study, trial, TrialState.COMPLETE, value=value)
    except optuna.TrialPruned as e:
        trial.set_user_attr("pruned", str(e))
        return _tell(study, trial, TrialState.PRUNED, note=str(e))
    except KeyboardInterrupt:
        mark_interrupted(study, trial.number, "KeyboardInterrupt", list(spec.space))
        raise
    except Exception as e:  # noqa: BLE001 - any failure is recorded and the sweep goes on
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:1000]
        trial.set_user_attr("error", msg)
        return _tell(study, trial, TrialState.FAIL, note=msg)


def _tell(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None, note: str = ""
) -> TrialState:
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    shown = f"value={value:.5g}" if value is not None else note
    log.info(
        f"[sweep] {study.study_name} trial {trial.number} {state.name}: {shown} "
        f"({trial.user_attrs.get('name', '') if hasattr(trial, 'user_attrs') else ''})"
    )
    return state


def params_of(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's params; for a WAITING (enqueued) trial, the params it will be given."""
    return t.params or dict(t.system_attrs.get("fixed_params") or {})


def mark_interrupted(study: optuna.Study, number: int, reason: str, keys: list[str] | None = None) -> None:
    """FAIL a trial left RUNNING, tag it interrupted and re-enqueue its params (its run directory resumes).
    A trial killed before all its params (`keys`) were drawn is not re-enqueued: nothing of it ran."""
    ft = study.get_trials(deepcopy=False)[number]
    if ft.state != TrialState.RUNNING:
        return
    optuna.Trial(study, ft._trial_id).set_user_attr("interrupted", reason)
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    requeue = keys is None or set(keys) <= set(ft.params)
    if requeue:
        study.enqueue_trial(ft.params, user_attrs={"retry_of": number})
    log.info(f"[sweep] {study.study_name} trial {number} was interrupted ({reason}){'; re-queued' if requeue else ''}")


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def recover_interrupted(study: optuna.Study, spec: SweepSpec, slurm_only: bool = False) -> list[int]:
    """Mark RUNNING trials whose worker is gone as interrupted (and re-queue them): a dead pid on this host, a
    Slurm job that ended (cancelled, timed out, failed), or no heartbeat for stale_after_s. slurm_only: only the
    Slurm check (what a worker runs before each ask; the other two wait for the next launch)."""
    out = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    jobs = cluster.job_states({str(t.user_attrs["slurm_job"]) for t in running if t.user_attrs.get("slurm_job")})
    for t in running:
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else 0.0)
        job = t.user_attrs.get("slurm_job")
        if job in jobs and jobs[job] not in cluster.ALIVE:
            reason = f"slurm job {job} {jobs[job]}"
        elif slurm_only:
            continue
        elif t.user_attrs.get("host") == HOST and not _alive(t.user_attrs.get("pid")):
            reason = f"process {t.user_attrs.get('pid')} on {HOST} is gone"
        elif time.time() - beat > spec.stale_after_s:
            reason = f"no heartbeat for {time.time() - beat:.0f}s (stale_after_s={spec.stale_after_s:g})"
        else:
            continue
        mark_interrupted(study, t.number, reason, list(spec.space))
        out.append(t.number)
    return out


def enqueue_grid(study: optuna.Study, spec: SweepSpec) -> int:
    taken = {
        json.dumps(params_of(t), sort_keys=True)
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    }
    n = 0
    for point in spec.axes_grid():
        enc = {k: encode_param(v) for k, v in point.items()}
        if json.dumps(enc, sort_keys=True) not in taken:
            study.enqueue_trial(enc)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------
# baselines: runs the trials are compared with (an anchor alone), trained once and shared between sweeps


def _ensure_run(spec: SweepSpec, cfg: Any, threads: int, evaluate: bool) -> Path:
    """Train (and evaluate) one shared run unless it is complete; a lock per run, so two workers or two sweeps
    never train it twice."""
    from hmem_lit.train import train

    with file_lock(cfg.run_dir.parent / "locks" / f"{cfg.name}.lock"):
        done = runs.is_complete(cfg.run_dir) and (
            not evaluate or bool(runs.eval_section(runs.read_final(cfg.run_dir), spec.eval_memory or "fetched"))
        )
        if not done:
            log.info(f"[sweep] {spec.name}: shared run {cfg.run_dir}")
            train(cfg, extra_callbacks=job_callbacks())
            if evaluate:
                evaluate_run(spec, cfg.run_dir, threads)
    return Path(cfg.run_dir)


def ensure_baselines(spec: SweepSpec, study: optuna.Study, threads: int = 0) -> list[Path]:
    """Train and evaluate the baselines that are not complete yet, and name their run directories in the study's
    user attributes (`hmem report <sweep>` reads them)."""
    cfgs = baseline_configs(spec, [f"train.threads={threads}"] if threads else [])
    dirs = [str(_ensure_run(spec, cfg, threads, spec.needs_eval)) for cfg in cfgs]
    if dirs:
        study.set_user_attr("baselines", dirs)
    return [Path(d) for d in dirs]


# ---------------------------------------------------------------------------------------------------------------
# workers, the sweep


def worker(spec: SweepSpec, index: int = 0, threads: int = 0) -> int:
    """Ask-run-tell until the grid is drained or n_trials trials are counted. -> trials this worker ran."""
    study = open_study(spec, seed_offset=index)
    lock, ran = spec.sweep_dir / "ask.lock", 0
    while True:
        check_requeue()  # a Slurm worker signalled at its time limit requeues between trials
        with file_lock(lock):
            recover_interrupted(study, spec, slurm_only=True)  # a cancelled Slurm worker's trial goes back
            trials = study.get_trials(deepcopy=False)
            waiting = [t.number for t in trials if t.state == TrialState.WAITING]
            counted = sum(_counted(t) for t in trials)
            if not waiting and (spec.mode == "grid" or counted >= spec.total_trials()):
                return ran
            trial = study.ask()
        if trial.number not in waiting:  # another machine raced us past the cap: give the slot back
            before = sum(_counted(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
            if spec.mode == "grid" or before >= spec.total_trials():
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                return ran
        run_trial(study, trial, spec, threads)
        ran += 1


def _worker_entry(spec: SweepSpec, index: int, threads: int) -> None:
    with contextlib.suppress(Exception):  # die with the parent (Linux): no orphan keeps training
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console.setup()  # the parent's -q / -v ($HMEM_VERBOSITY): trial lines go to stderr as in one process
    try:
        worker(spec, index, threads)
    except KeyboardInterrupt:
        sys.exit(130)


def _base_threads(spec: SweepSpec) -> int:
    """train.threads of the base config with the sweep's overrides. Those may be incomplete without a trial's
    params (memory.type=ffn whose levels the space sizes), so fall back to the anchor-only skeleton, as
    load_sweep's validation does."""
    try:
        return load_config(spec.base, spec.overrides).train.threads
    except ConfigError:
        return load_config(spec.base, spec.overrides + list(SKELETON)).train.threads


def prepare_sweep(
    path: str | Path, cli: list[str] | tuple[str, ...] = (), workers: int = 1, cpus_per_worker: int | None = None
) -> tuple[SweepSpec, int]:
    """Check the sweep, write sweep.json, create the study once, reclaim interrupted trials, queue the grid.
    -> (spec, torch threads per worker; 0 = the base config's own). cpus_per_worker: each worker's CPUs (a Slurm
    worker's allocation), else this machine's cores shared by `workers` processes."""
    spec = load_sweep(path, cli)
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if spec.needs_eval:
        try:
            import hmem_lit.evaluation  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"evaluate: the objective {spec.metric} needs hmem_lit.evaluation ({e})") from None
    threads = 0
    if (workers > 1 or cpus_per_worker) and _base_threads(spec) == 0:
        threads = cpus_per_worker or max(1, (os.cpu_count() or 1) // workers)
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        spec.sweep_dir / "sweep.json",
        {
            "path": spec.path,
            "cli": list(cli),
            "storage": spec.storage_url,
            "name": spec.name,
            "runs_dir": str(spec.runs_dir),
        },
    )
    with file_lock(spec.sweep_dir / "ask.lock"):
        study = open_study(spec, create=True)
        recover_interrupted(study, spec)
        if spec.mode == "grid":
            queued = enqueue_grid(study, spec)
            log.info(f"[sweep] {spec.name}: grid of {len(spec.grid())} points, {queued} queued")
    return spec, threads


def run_sweep(path: str | Path, cli: list[str] | tuple[str, ...] = (), workers: int = 1) -> optuna.Study:
    """`hmem sweep`: create/load the study, reclaim interrupted trials, queue the grid, run workers, summarise."""
    spec, threads = prepare_sweep(path, cli, workers)
    study = open_study(spec)
    ensure_baselines(spec, study, threads)
    if workers == 1:
        worker(spec, 0, threads)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_entry, args=(spec, i, threads), daemon=False) for i in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join(timeout=30)
            raise
    study = open_study(spec)
    text = summary(study, spec)
    print(text)
    (spec.sweep_dir / "summary.txt").write_text(text + "\n")
    return study


# ---------------------------------------------------------------------------------------------------------------
# status (the views: sweeps/views.py)


def status(target: str, cli: list[str] | tuple[str, ...] = ()) -> str:
    """`hmem sweep status <name>`: the trial table of a sweep's study."""
    spec = load_sweep(target, cli, validate=False)
    return summary(open_study(spec), spec)
