"""`hmem quickstart`: the default experiment, the suite's proof that it works (../shared/PAPERS.md A7, Fig. 1, Table 1).

On the built-in corpus it prepares the data, trains (1) the anchor, (2) anchor + hierarchical FFN memory with the
generic-memory control, (3) a dense model with the runtime parameters of anchor + fetch, (4) a dense model of about
twice the anchor, all on one token budget, plus (5) the anchor given the memory run's wall-clock; evaluates them
through the lm-eval `hmem` model (fetched, generic and no memory for the memory run); and writes the report.

The runs are declared as data in experiments/10x_qs_*.yaml (one base, one file per run). Every stage is an
ordinary run directory or a cached preparation/evaluation, so an interrupted quickstart resumes where it stopped.
`--small` is a two-minute smoke version; `--scale K` multiplies the token budget and the synthetic world.
`--jobs N` (default 2) trains and evaluates N runs at a time, each in its own process with `train.threads` torch
threads (1 by default): on a 2-core machine two single-thread runs finish about twice as fast as one run after
another, a run's evaluation overlaps the others' training, and a busy machine does not collapse them the way
oversubscribed threads do. One progress bar follows all the runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hmem_lit import console, runs
from hmem_lit.analysis import record
from hmem_lit.analysis.stats import RULE
from hmem_lit.config import ConfigError, RunConfig, load_config
from hmem_lit.data.prepare import prepare
from hmem_lit.evaluation.runner import evaluate
from hmem_lit.resources import shipped_dir
from hmem_lit.sweeps.translate import counts

log = logging.getLogger("hmem_lit.quickstart")

EXPERIMENTS = shipped_dir("experiments")  # the checkout's experiments/, else the copy installed with the package

# run name -> experiment file. The anchor given the memory run's wall-clock is derived from 101 at run time.
RUNS = {
    "anchor": "101_qs_anchor.yaml",
    "memory": "102_qs_memory.yaml",
    "dense_runtime": "103_qs_dense_runtime.yaml",
    "dense_2x": "104_qs_dense_2x.yaml",
}
MEMORY_MODES = ("fetched", "generic", "none", "random")
# The anchor given the memory run's wall-clock trains WALLCLOCK_RATIO x the tokens. A fixed number keeps the
# command deterministic; it is the memory/anchor step-time ratio measured for these runs (experiments/LOG.md), and
# the report prints the ratio measured in the run beside it.
WALLCLOCK_RATIO = 1.25

# --small: a smoke version of the same pipeline (tiny data, tiny models, a few steps)
SMALL = [
    "data.wiki_docs=400",
    "data.synthetic_entities=200",
    "data.dir=data/quickstart_small",
    "anchor.preset=tiny",
    "train.max_tokens=60000",
    "data.seq_len=128",
    "experiment=quickstart_small",
    "eval.limit=40",
]


@dataclass
class Plan:
    small: bool
    scale: float
    overrides: list[str]

    def config(self, name: str, extra: Sequence[str] = (), seed: int = 0) -> RunConfig:
        """The run `name` (a key of RUNS, or a derived run of 101) at training seed `seed`: seed 0 keeps the plain
        name (so a one-seed quickstart's runs are the first seed of a --seeds N one), seed k the suffix _seed<k>."""
        named = [f"name={name}" if name not in RUNS else "", *extra]
        if seed:
            run = next((x.split("=", 1)[1] for x in reversed(named) if x.startswith("name=")), name)
            named += [f"train.seed={seed}", f"name={run}_seed{seed}"]
        ov = list(SMALL if self.small else []) + list(self.overrides) + [x for x in named if x]
        cfg = load_config(EXPERIMENTS / RUNS.get(name, RUNS["anchor"]), ov)
        if self.scale != 1.0:
            cfg = load_config(
                EXPERIMENTS / RUNS.get(name, RUNS["anchor"]),
                ov
                + [
                    f"train.max_tokens={int(cfg.train.max_tokens * self.scale)}",
                    f"data.synthetic_entities={int(cfg.data.synthetic_entities * self.scale)}",
                    f"data.dir={cfg.data.dir}_x{self.scale:g}",
                ],
            )
        return cfg


class Clock:
    """Stage headers with elapsed time and a running estimate of what is left."""

    def __init__(self, n_stages: int):
        self.t0, self.n, self.i = time.time(), n_stages, 0
        self.tok_rate: float | None = None  # anchor training tokens/s, measured on the first run

    def stage(self, what: str, eta_s: float | None = None) -> None:
        self.i += 1
        el = time.time() - self.t0
        eta = f", this stage ~{eta_s / 60:.1f} min" if eta_s else ""
        log.info(f"[quickstart {self.i}/{self.n}] {what}  (elapsed {el / 60:.1f} min{eta})")


def _train(cfg: RunConfig, eval_modes: tuple[str, ...] = ()) -> Path:
    """Train (or resume, or skip) one run, then evaluate it in each memory mode (cached: a no-op when done)."""
    from hmem_lit.train import train  # torch and Lightning: in the process that trains

    run_dir = train(cfg)
    for mode in eval_modes:
        evaluate(run_dir, tasks=list(cfg.eval.tasks), memory=mode, print_table=False, threads=cfg.train.threads)
    return run_dir


def _eval_modes(name: str) -> tuple[str, ...]:
    return MEMORY_MODES if name.split("_seed")[0] == "memory" else ("none",)


def _steps(cfg: RunConfig) -> int:
    return math.ceil(cfg.train.max_tokens / (cfg.train.batch_size * cfg.train.accumulate * cfg.data.seq_len))


def _last_step(run_dir: Path) -> int:
    if runs.is_complete(run_dir):
        return int(runs.read_final(run_dir)["steps"])
    return max((int(r["step"]) + 1 for r in runs.read_metrics(run_dir) if "step" in r), default=0)


def _cost(cfg: RunConfig) -> float:
    return float(cfg.train.max_tokens) * counts(cfg)["runtime"]


def die_with_parent() -> None:
    """Pool-worker initializer: the worker ends when the process that started it ends, however it ends (kill -9
    included). An orphaned worker would go on training into its run directory while a relaunched quickstart
    resumes the same run from its checkpoint (found: killing the quickstart left both workers running)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


def _worker_init() -> None:
    """A quickstart worker: ends with its parent, and talks only about problems (warnings, errors) unless the
    parent runs with -v: the parent's one progress bar and "done" lines say what the workers do."""
    console.setup(console.VERBOSE if console.verbosity() >= console.VERBOSE else console.QUIET)
    die_with_parent()


def train_parallel(cfgs: dict[str, RunConfig], jobs: int) -> dict[str, Path]:
    """Train and evaluate the runs `jobs` at a time in spawned processes (no per-run progress bars), so one run's
    evaluation overlaps the others' training; one bar follows the training steps of all of them by reading each
    run's metrics.jsonl. A failed run stops the others and re-raises."""
    import concurrent.futures as cf
    import dataclasses
    import multiprocessing as mp

    from tqdm.auto import tqdm

    quiet = {n: dataclasses.replace(c, train=dataclasses.replace(c.train, progress=False)) for n, c in cfgs.items()}
    total = {n: _steps(c) for n, c in cfgs.items()}
    done_steps = lambda: sum(min(total[n], _last_step(cfgs[n].run_dir)) for n in cfgs)  # noqa: E731
    dirs: dict[str, Path] = {}
    # initial = steps already done by an interrupted quickstart, so the rate and time left count new steps only
    with (
        cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool,
        tqdm(
            total=sum(total.values()),
            initial=done_steps(),
            desc=f"training {len(cfgs)} runs, {jobs} at a time",
            unit="step",
            disable=not console.progress(),
        ) as bar,
    ):
        # longest first (runtime parameters x tokens as the cost), so the last run to start is a short one
        order = sorted(quiet, key=lambda n: -_cost(quiet[n]))
        futs = {pool.submit(_train, quiet[n], _eval_modes(n)): n for n in order}
        pending = set(futs)
        while pending:
            done, pending = cf.wait(pending, timeout=5, return_when=cf.FIRST_COMPLETED)
            for f in done:
                try:
                    dirs[futs[f]] = f.result()
                except BaseException:
                    for p in pending:
                        p.cancel()
                    raise
                if console.progress():
                    tqdm.write(f"[quickstart] {futs[f]} done")
            bar.n = done_steps()
            bar.refresh()
    return {n: dirs[n] for n in cfgs}


def _eta(clock: Clock, cfg: RunConfig, anchor_params: int | None) -> float | None:
    if clock.tok_rate is None or not anchor_params or runs.is_complete(cfg.run_dir):
        return None
    c = counts(cfg)
    return cfg.train.max_tokens / clock.tok_rate * max(1.0, c["runtime"] / anchor_params)


def quickstart(
    small: bool = False,
    scale: float = 1.0,
    overrides: list[str] | tuple[str, ...] = (),
    jobs: int = 2,
    seeds: int = 1,
) -> Path:
    from hmem_lit.analysis.report import build_report  # pandas, matplotlib: not in the training workers

    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--scale: must be a finite number > 0, got {scale}")
    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    plan = Plan(small, scale, list(overrides))
    base = {name: plan.config(name) for name in RUNS}
    # the anchor at the memory run's wall-clock: more tokens by the configured step-time ratio (a fixed number,
    # so the command stays deterministic; the report shows the measured ratio beside it)
    ratio = WALLCLOCK_RATIO
    tokens = int(math.ceil(base["anchor"].train.max_tokens * ratio))
    wall = ["name=anchor_wallclock", f"train.max_tokens={tokens}"]
    cfgs: dict[str, RunConfig] = {}
    for seed in range(seeds):
        for name in RUNS:
            c = plan.config(name, seed=seed)
            cfgs[c.name] = c
    wall_cfgs = {(c := plan.config("anchor", wall, seed=seed)).name: c for seed in range(seeds)}
    clock = Clock(3 + (len(cfgs) + len(wall_cfgs) if jobs == 1 else 1))

    clock.stage(f"preparing the built-in corpus in {base['anchor'].data.dir}")
    prepare(base["anchor"])

    everything = {**cfgs, **wall_cfgs}
    if jobs > 1:
        clock.stage(
            f"training {len(everything)} runs ({', '.join(everything)}), {jobs} at a time; "
            f"the wall-clock anchor gets x{ratio:.2f} the tokens"
        )
        dirs = train_parallel(everything, jobs)
    else:
        dirs = {}
        anchor_params = None
        for name, cfg in everything.items():
            clock.stage(f"training {name}: {cfg.train.max_tokens:,} tokens", _eta(clock, cfg, anchor_params))
            dirs[name] = _train(cfg)
            if name == "anchor":
                clock.tok_rate = runs.throughput(dirs[name])
                anchor_params = runs.read_final(dirs[name])["params"]["runtime"]
    rate_anchor, rate_memory = runs.throughput(dirs["anchor"]), runs.throughput(dirs["memory"])
    # memory/anchor steady-state step time
    measured = rate_anchor / rate_memory if rate_anchor and rate_memory else float("nan")
    said = f"x{measured:.2f}" if math.isfinite(measured) else "not measured (too few logged steps)"
    log.info(f"[quickstart] wall-clock anchor: x{ratio:.2f} the tokens; measured memory/anchor step time {said}")
    for name in wall_cfgs:
        runs.update_final(dirs[name], wallclock={"ratio_configured": ratio, "ratio_measured": measured})

    clock.stage(
        "evaluating every run through the lm-eval `hmem` model" + (" (done beside training)" if jobs > 1 else "")
    )
    eval_log = logging.getLogger("hmem_lit.eval")
    level = eval_log.level
    if not log.isEnabledFor(logging.DEBUG):  # the workers evaluated already: "already evaluated" x8 is noise
        eval_log.setLevel(logging.WARNING)
    try:
        for name, d in dirs.items():
            for mode in _eval_modes(name):
                log.debug(f"[quickstart] eval {name} memory={mode}")
                evaluate(d, tasks=list(everything[name].eval.tasks), memory=mode, print_table=False)
    finally:
        eval_log.setLevel(level)

    clock.stage("writing the report")
    root = dirs["anchor"].parent
    out = build_report(str(root), out=root / "report")
    print(summary(out))
    log.info(f"[quickstart] done in {(time.time() - clock.t0) / 60:.1f} min")
    print(f"report: {out / 'report.html'}")
    return out


def summary(report: Path) -> str:
    """The headline in the terminal, from the report's record (comparisons.csv, analysis/compare.py): each arm's
    Avg-SK (training phrasing, rarest buckets, paraphrase, QA), hard MC and bits per byte with 95% CIs, and fetched
    memory minus the anchor, the 2x dense model and the leaf prior with the verdict (the report has every metric)."""
    rec = report / "comparisons.csv"
    if not rec.is_file():
        return "[quickstart] no item records to compare (evaluations missing)"
    keep = ["Avg-SK", "Avg-SK rare", "paraphrase", "QA", "MC hard", "val bpb"]
    diffs = record.render(rec, "diffs", keep).splitlines()
    wanted = ("− anchor |", "− dense_2x |", "− leaf prior |")
    diffs = diffs[:2] + [line for line in diffs[2:] if any(w in line for w in wanted)]
    return "\n".join(["", record.render(rec, "values", keep), "", *diffs, "", f"Rule: {RULE}."])
