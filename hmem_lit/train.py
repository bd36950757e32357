"""`hmem train`: one run directory, trained through Lightning, resumable, complete when final.json exists.

Relaunching a complete run does nothing (unless forced); relaunching an incomplete one resumes from
checkpoints/last.ckpt exactly (the data order is a function of the step, the checkpoint holds the optimiser and
schedule). A checkpoint whose config differs from the requested one, or that cannot be read, is an error, never a
silent restart.

    train(cfg) = plan(cfg)            every check that reads only the config; sizes, world, precision -> Plan
                 + data and model     built after seeding, checked (splits, vocabulary, train.mode)
                 + fit(cfg, plan, ..) the Trainer (callbacks.py), run under the run directory's lock
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from hmem_lit import faults, runs, storage
from hmem_lit.callbacks import AtomicCheckpoint, FiniteLoss, JsonlLogger, ProgressBar, StreamingCheckpointIO
from hmem_lit.checks import preflight
from hmem_lit.config import ConfigError, RunConfig, renamed, save_config, to_dict
from hmem_lit.evaluation.inloop import InLoopProbes
from hmem_lit.telemetry import MemoryTelemetry
from hmem_lit.utils import read_json, seed_everything, set_threads, write_json

log = logging.getLogger("hmem_lit.train")


def _precision(cfg: RunConfig) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16-mixed" if torch.cuda.is_available() and cfg.train.accelerator != "cpu" else "32-true"


def _world_size(cfg: RunConfig) -> int:
    """Processes on all train.num_nodes nodes (the token budget is split over them); per node, train.devices: an
    int, a list of ids, or -1 / "auto" = every device of the accelerator (all GPUs on a GPU machine; one on CPU)."""
    return cfg.train.num_nodes * _devices_per_node(cfg)


def _devices_per_node(cfg: RunConfig) -> int:
    d = cfg.train.devices
    if isinstance(d, int) and d > 0:
        return d
    if isinstance(d, list):
        return len(d)
    from lightning.pytorch.accelerators import CUDAAccelerator

    if _on_cuda(cfg):
        return max(1, int(CUDAAccelerator.auto_device_count()))
    return 1  # CPU: "auto" is one process (-1 is refused by Lightning with a one-line error)


def _on_cuda(cfg: RunConfig) -> bool:
    """Whether the run trains on CUDA devices (train.accelerator gpu / cuda, or auto on a machine with CUDA)."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    acc = cfg.train.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and CUDAAccelerator.is_available())


def _check_cuda_settings(cfg: RunConfig) -> None:
    """Settings that only fail on CUDA, refused before any work: the storage backend's (storage.check_device);
    anchor.attention=flex with heads narrower than FlexAttention's CUDA kernel supports."""
    from hmem_lit.anchor import FLEX_MIN_HEAD_DIM

    a = cfg.anchor
    if a.attention == "flex" and a.preset != "hf" and a.head_dim < FLEX_MIN_HEAD_DIM and _on_cuda(cfg):
        raise ConfigError(
            f"anchor.attention=flex: FlexAttention's CUDA kernel needs anchor.head_dim >= {FLEX_MIN_HEAD_DIM} "
            f"(got {a.head_dim}); set anchor.attention=auto (sdpa for such heads) or a larger anchor.head_dim"
        )
    storage.check_device(cfg.memory.storage, _on_cuda(cfg))


def _check_resume(run_dir: Path, cfg: RunConfig, config_only: bool = False) -> tuple[Path, int] | None:
    """-> (checkpoint to resume from, its global step), or None. Raises ConfigError on a mismatched, corrupt or
    damaged (checksum) checkpoint. Reads only; config_only: compare config.yaml, leave the checkpoint unread."""
    ckpt = run_dir / runs.LAST_CKPT
    saved_cfg = run_dir / runs.CONFIG
    if saved_cfg.is_file():
        old = to_dict(runs.load_run_config(run_dir))
        new = to_dict(cfg)
        diff = _diff(old, new)
        if diff:
            raise ConfigError(
                f"{run_dir}: holds a run with a different config ({', '.join(diff[:4])}); "
                "choose another name=... or pass --force to start it again"
            )
    if config_only or not ckpt.is_file():
        return None
    runs.verify_checkpoint(run_dir)
    try:
        # memory-mapped: only the config is read here (Lightning loads the tensors once, in fit)
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        assert "state_dict" in state and "hyper_parameters" in state
    except Exception as e:  # noqa: BLE001 - any failure to read means corrupt
        raise ConfigError(
            f"{ckpt}: corrupt or unreadable checkpoint ({type(e).__name__}); delete it to restart "
            "from scratch, or pass --force"
        ) from None
    if _diff(renamed(state["hyper_parameters"]["config"]), to_dict(cfg)):
        raise ConfigError(f"{ckpt}: checkpoint was trained with a different config; pass --force to restart")
    return ckpt, int(state.get("global_step", 0))


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Fields that differ and change what the run trains (declared "run" in effects.FIELD_EFFECTS; a field the
    declaration does not know, e.g. from a newer config, counts). A field newer than the saved config `a` (absent
    there) counts only when `b` sets it to something other than its default."""
    from hmem_lit.effects import FIELD_EFFECTS, field_value

    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif k not in a and not isinstance(vb, dict) and vb == field_value(RunConfig(), f"{prefix}{k}"):
            continue
        elif va != vb and "run" in FIELD_EFFECTS.get(f"{prefix}{k}", ("run",)):
            keys.append(f"{prefix}{k}")
    return keys


def _make_trainer(cfg: RunConfig, **kw: Any) -> L.Trainer:
    """L.Trainer with Lightning's own errors (accelerator, devices, strategy names) turned into one line."""
    t = cfg.train
    try:
        return L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, **kw)
    except Exception as e:  # noqa: BLE001 - ValueError, TypeError, MisconfigurationException from the connector
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        low = msg.lower()
        key = (
            "train.strategy"
            if "strategy" in low
            else "train.devices"
            if "devices" in low or "device" in low
            else "train.accelerator"
        )
        raise ConfigError(
            f"{key}: {msg} (train.accelerator={t.accelerator}, train.devices={t.devices}, "
            f"train.num_nodes={t.num_nodes}, train.strategy={t.strategy})"
        ) from None


def _probe_trainer(cfg: RunConfig) -> None:
    from hmem_lit.distributed import resolve_strategy

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "GPU available: ..." lines come once, from the real Trainer
    try:
        _make_trainer(
            cfg,
            strategy=resolve_strategy(cfg.train.strategy, _world_size(cfg), False),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        quiet.setLevel(level)


@dataclass(frozen=True)
class Plan:
    """What a run will do, settled from its config before any work: `tokens_per_step` = batch_size x accumulate x
    world x seq_len tokens per optimiser step, `total_steps` of them to reach train.max_tokens."""

    run_dir: Path
    world: int  # processes on all nodes (the token budget is split over them)
    tokens_per_step: int
    total_steps: int
    precision: str
    unused_params: bool  # some trainable parameters get no gradient (pkm replace mode): DDP must look for them


def plan(cfg: RunConfig, force: bool = False) -> Plan | None:
    """Every check that reads only the config, in one place, before anything is written; -> the run's Plan, or
    None when the run is complete already (a no-op unless --force, even where its inputs are gone)."""
    from hmem_lit.memory.base import memory_class
    from hmem_lit.trackers import check_available

    run_dir = cfg.run_dir
    runs.claim_run_dir(run_dir)  # before any work: never a symlink, a file or a directory of the user's files
    if not force and run_dir.exists():
        _check_resume(run_dir, cfg, config_only=True)  # the checkpoint is read once, under the lock (fit)
        if _complete(run_dir):
            return None
    preflight(cfg)
    _probe_trainer(cfg)  # Lightning's accelerator / devices / strategy errors, before data is prepared
    _check_cuda_settings(cfg)
    check_available(cfg.train.loggers)  # a requested tracker's package, before data is prepared
    world = _world_size(cfg)
    tps = cfg.train.batch_size * cfg.train.accumulate * world * cfg.data.seq_len
    # a type that replaces anchor sublayers (pkm in replace mode) leaves their parameters without gradients
    pkm_replace = cfg.memory.type != "none" and memory_class(cfg.memory.type).skips_anchor_params(cfg.memory)
    return Plan(run_dir, world, tps, max(1, math.ceil(cfg.train.max_tokens / tps)), _precision(cfg), pkm_replace)


def _complete(run_dir: Path) -> bool:
    if not runs.is_complete(run_dir):
        return False
    runs.read_final(run_dir)  # a damaged final.json is one line naming it, not "complete"
    log.info("%s is complete (final.json exists); pass --force to retrain", run_dir)
    return True


def train(cfg: RunConfig, force: bool = False, extra_callbacks: list[Callback] | None = None) -> Path:
    """Train (or resume, or skip) the run `cfg` describes; returns its run directory.

    Order: every check that can fail on bad input runs before anything is written (plan, then the data's and the
    model's own); then fit locks the run directory (one trainer per run) and only then creates, resumes or
    (--force) wipes it."""
    from hmem_lit.console import quiet_libraries
    from hmem_lit.data.datamodule import HmemDataModule

    quiet_libraries()  # Lightning set its own loggers to INFO when it was imported
    p = plan(cfg, force)
    if p is None:
        return cfg.run_dir
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    dm = HmemDataModule(cfg, p.total_steps)
    _check_data(cfg, dm)
    return fit(cfg, p, _build_module(cfg, p, dm.vocab_size), dm, force, extra_callbacks)


def _check_data(cfg: RunConfig, dm: Any) -> None:
    """The corpus leaves training and validation sequences; the tokenizer's vocabulary is the config's."""
    where = "data.toy_docs" if cfg.data.source == "toy" else "data.files" if cfg.data.source == "files" else "data"
    if len(dm.train_split) == 0:
        raise ConfigError(f"{where}: the corpus leaves no training sequences; add documents")
    if len(dm.val_split) == 0:
        raise ConfigError(
            f"{where}: the split leaves no validation documents (val/loss would be NaN); add "
            f"documents or raise data.val_fraction (now {cfg.data.val_fraction})"
        )
    if cfg.anchor.vocab_size is not None and cfg.anchor.vocab_size != dm.vocab_size:
        raise ConfigError(
            f"anchor.vocab_size: {cfg.anchor.vocab_size} does not match the tokenizer's {dm.vocab_size}; "
            "leave it unset (null) to take it from the data"
        )


def _build_module(cfg: RunConfig, p: Plan, vocab_size: int) -> Any:
    """The LightningModule, its model prepared for train.mode / train.subtree and compiled when asked."""
    from hmem_lit.lit_module import HmemLitModule

    with storage.disk.scratch_dir(p.run_dir.parent):  # a disk-backed bank's scratch files (memory.storage.dir wins)
        module = HmemLitModule(cfg, vocab_size, p.total_steps, p.tokens_per_step)
    if cfg.train.mode in ("frozen", "cotrain") or cfg.train.subtree is not None:
        from hmem_lit.model import prepare_model_for_mode

        try:
            prepare_model_for_mode(module.model, cfg)
        except (FileNotFoundError, ValueError) as e:  # an init_from run of another shape, a subtree out of range
            raise ConfigError(f"train.init_from: {e}" if "subtree" not in str(e) else str(e)) from None

    if cfg.train.compile:
        # in place (nn.Module.compile): parameter names and checkpoints stay those of the eager module
        module.model.anchor.compile(dynamic=False)
    return module


@dataclass
class _Fit:
    """The Trainer of one fit and the callbacks / loggers fit reads back after training."""

    trainer: L.Trainer
    ckpt: AtomicCheckpoint
    jsonl: JsonlLogger
    speed: Any  # throughput.Throughput
    trackers: list[Logger]


def _build_trainer(cfg: RunConfig, p: Plan, module: Any, extra_callbacks: list[Callback] | None) -> _Fit:
    from hmem_lit import trackers
    from hmem_lit.console import progress

    # DDP / FSDP keep the memory's sparse tables out of their reducers and sync them row-wise (distributed.py)
    from hmem_lit.distributed import resolve_strategy, sparse_tables
    from hmem_lit.throughput import Throughput, model_flops_per_token

    run_dir, tps = p.run_dir, p.tokens_per_step
    strategy = resolve_strategy(cfg.train.strategy, p.world, bool(sparse_tables(module)), p.unused_params)
    ckpt = AtomicCheckpoint(run_dir, cfg.train.ckpt_every)
    speed = Throughput(
        cfg.train.log_every, tps, model_flops_per_token(module.model, cfg.data.seq_len), p.world, cfg.train.peak_tflops
    )
    jsonl = JsonlLogger(run_dir, tps)
    bars = cfg.train.progress and progress()  # none under `hmem -q`
    if not run_dir.exists():
        runs.mark_run_dir(run_dir)  # every check has passed; a tracker may write into it before fit's lock
    extra_loggers = trackers.build(
        [n for n in cfg.train.loggers if n != "jsonl"], run_dir, f"{cfg.experiment}/{cfg.name}"
    )
    trainer = _make_trainer(
        cfg,
        max_steps=p.total_steps,
        max_epochs=-1,
        strategy=strategy,
        precision=p.precision,
        accumulate_grad_batches=cfg.train.accumulate,
        logger=[jsonl, *extra_loggers],  # jsonl first: the source of truth (analysis reads it)
        log_every_n_steps=cfg.train.log_every,
        callbacks=[
            ckpt,
            FiniteLoss(cfg.train.log_every),
            speed,
            *(
                [MemoryTelemetry(run_dir, cfg.train.log_every)]
                if cfg.memory.type != "none" and cfg.train.telemetry
                else []
            ),
            *([InLoopProbes(cfg, cfg.train.probe_every, cfg.train.probe_per_bucket)] if cfg.train.probe_every else []),
            *(extra_callbacks or []),
            *([ProgressBar(refresh_rate=max(1, cfg.train.log_every))] if bars else []),
        ],
        enable_checkpointing=False,
        enable_progress_bar=bars,
        enable_model_summary=False,
        # val_every=0: no validation during training (the final one below still runs)
        val_check_interval=cfg.train.accumulate * (cfg.train.val_every or 10**9),
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.train.val_batches,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
        # checkpoints written without a copy in RAM; a disk-backed bank also resumes from a memory-mapped one
        plugins=[StreamingCheckpointIO(mmap=storage.mapped(cfg.memory.storage))],
    )
    return _Fit(trainer, ckpt, jsonl, speed, extra_loggers)


def fit(
    cfg: RunConfig, p: Plan, module: Any, dm: Any, force: bool = False, extra_callbacks: list[Callback] | None = None
) -> Path:
    """Build the Trainer and run it under the run directory's lock: create, resume or (force) wipe the run, fit,
    validate, and write the final checkpoint, weights and final.json (rank zero). -> the run directory."""
    f = _build_trainer(cfg, p, module, extra_callbacks)
    trainer, run_dir = f.trainer, p.run_dir
    with runs.run_lock(run_dir):
        runs.claim_run_dir(run_dir)  # again, under the lock: a symlink, a file, or a directory hmem did not create
        if force and run_dir.exists():
            shutil.rmtree(run_dir)  # only a run directory of ours gets here
        runs.mark_run_dir(run_dir)
        resume = _check_resume(run_dir, cfg) if run_dir.exists() else None  # again: under the lock
        if _complete(run_dir):
            return run_dir
        counts = _start(cfg, p, module, trainer, resume)
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume[0]) if resume else None, weights_only=True)
        train_time = f.ckpt.train_time()  # all segments of a resumed run
        if trainer.interrupted:
            raise KeyboardInterrupt
        f.jsonl.step_override = trainer.global_step
        val = trainer.validate(module, datamodule=dm, verbose=False)[0]
        bad = {k: v for k, v in val.items() if not math.isfinite(float(v))}
        if bad:
            raise runs.RunError(
                f"{run_dir}: final validation gave {', '.join(f'{k}={v}' for k, v in bad.items())}; "
                "the run is not marked complete (lower optim.lr or check the data)"
            )
        faults.point("validated")
        AtomicCheckpoint(run_dir, 0).save(trainer)  # the final state (all ranks: saving is collective)
        # full (unsharded) weights: collective under FSDP, whose module holds only shards outside forward
        state = {
            k[len("model.") :]: v
            for k, v in trainer.strategy.lightning_module_state_dict().items()
            if k.startswith("model.")
        }
        if trainer.is_global_zero:
            tps = p.tokens_per_step
            _finish(
                run_dir, cfg, module, trainer, val, train_time, p.total_steps, tps, state, counts, f.speed.summary()
            )
            if f.trackers:  # config went in at the start; final metrics, counts and the manifest now
                from hmem_lit import trackers

                final, manifest = runs.read_final(run_dir), read_json(run_dir / runs.MANIFEST)
                trackers.finish(f.trackers, final, manifest, int(trainer.global_step))
    return run_dir


def _start(cfg: RunConfig, p: Plan, module: Any, trainer: L.Trainer, resume: tuple[Path, int] | None) -> dict:
    """Before fitting, under the lock: metrics.jsonl cut back to the checkpoint, config.yaml and the manifest
    written, the start logged (rank zero). -> the model's parameter counts (taken before FSDP shards it)."""
    run_dir = p.run_dir
    if trainer.is_global_zero:
        # resumed: drop what the killed segment logged after its checkpoint; fresh: drop a killed first try's
        runs.truncate_metrics(run_dir, resume[1] if resume else 0)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    counts = module.model.param_counts()  # before FSDP shards the module
    if trainer.is_global_zero:
        save_config(cfg, run_dir / runs.CONFIG)
        runs.write_manifest(run_dir, cfg, f"{trainer.strategy.root_device} ({p.precision}, {trainer.world_size} proc)")
        log.info(
            f"{run_dir}: {'resuming from step ' + str(resume[1]) if resume else 'new run'}; "
            f"{p.total_steps} steps x {p.tokens_per_step} tokens; params anchor={counts['anchor']:,} "
            f"fetched={counts['fetched']:,} bank={counts['bank']:,}"
        )
    return counts


def _finish(
    run_dir: Path,
    cfg: RunConfig,
    module: Any,
    trainer: L.Trainer,
    val: Mapping[str, float],
    train_time: float,
    total_steps: int,
    tps: int,
    state: dict[str, torch.Tensor],
    counts: dict[str, int],
    throughput: dict[str, Any],
) -> None:
    state = {k: v.detach().cpu() for k, v in state.items()}
    tmp = run_dir / ".model.safetensors.tmp"
    storage.save_weights(cfg.memory.storage, state, tmp)
    os.replace(tmp, run_dir / runs.WEIGHTS)
    faults.point("weights_written")
    bank = getattr(module.model.memory, "bank", None)
    if bank is not None:  # the storage backend's counters of this segment (Backend.counters)
        throughput = {**throughput, **bank.backend.counters()}
    final: dict[str, Any] = {
        "status": "complete",
        "experiment": cfg.experiment,
        "name": cfg.name,
        "steps": int(trainer.global_step),
        "tokens": int(trainer.global_step) * tps,
        "train_time_s": round(train_time, 2),
        "throughput": throughput,  # this segment's median window rate, MFU, FLOPs per token (throughput.py)
        "params": counts,
        "metrics": {k: float(v) for k, v in val.items()},
        "config": to_dict(module.model.cfg),
    }
    write_json(run_dir / runs.FINAL, final)
    log.info(
        f"done: {run_dir} val/loss={final['metrics'].get('val/loss', float('nan')):.4f} "
        f"in {train_time:.1f}s ({final['tokens']:,} tokens)"
    )
