"""The training run's Lightning callbacks and its metrics logger: metrics.jsonl (JsonlLogger), the progress bar,
streaming checkpoint IO, the atomic last.ckpt (AtomicCheckpoint) and the divergence stop (FiniteLoss).

train.py puts them on its Trainer; launch/jobs.py finds the run's AtomicCheckpoint to save at a Slurm requeue.
Lightning keys a callback's checkpointed state by its class name, so a checkpoint written before these classes
moved here resumes unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from hmem_lit import faults, runs
from hmem_lit.utils import dumps


class JsonlLogger(Logger):
    """Appends one JSON record per logging call to metrics.jsonl (flushed, so a killed run keeps its curve)."""

    def __init__(self, run_dir: Path, tokens_per_step: int):
        super().__init__()
        self.path, self.tokens_per_step = run_dir / runs.METRICS, tokens_per_step
        # the final validation's record is labelled with the global step itself: Lightning's logging step there
        # depends on whether this process trained or only resumed a finished fit
        self.step_override: int | None = None

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        step = self.step_override if self.step_override is not None else step
        tokens = metrics.get("tokens", int(step or 0) * self.tokens_per_step)
        rec = {"step": int(step or 0), "tokens": int(tokens), "time": round(time.time(), 3)}
        rec.update({k: float(v) for k, v in metrics.items() if k not in ("epoch", "tokens")})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps(rec, indent=None) + "\n")
            f.flush()
        faults.point("metrics_record")


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without the meaningless `v_num` field."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class StreamingCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO that never holds a checkpoint in RAM: saving streams torch.save into the file (Lightning's
    serialises into a BytesIO first, then copies it: twice the checkpoint in RAM); with `mmap` (storage.mapped)
    loading is memory-mapped too (weights_only), so tensors are read from the file as they are copied into the
    model and the optimiser. AtomicCheckpoint makes the write atomic (temp file + rename)."""

    def __init__(self, mmap: bool = False):
        self.mmap = mmap

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = True) -> dict:
        if not self.mmap:
            return super().load_checkpoint(path, map_location, weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _write_error(e: BaseException, path: Path) -> BaseException:
    """torch's zip writer reports a full disk as "unexpected pos" / "file write failed" (a RuntimeError): say what
    it is, as the OSError it was, so the command prints one line naming the path (cli.main)."""
    import errno
    import shutil as sh

    if isinstance(e, OSError) or not isinstance(e, RuntimeError):
        return e
    msg = str(e)
    if "unexpected pos" in msg or "write failed" in msg or "No space" in msg:
        free = sh.disk_usage(path.parent).free if path.parent.exists() else 0
        if free < 64 << 20 or "No space" in msg:
            return OSError(errno.ENOSPC, "No space left on device", str(path))
        return OSError(errno.EIO, f"writing failed ({msg.splitlines()[0]})", str(path))
    return e


class AtomicCheckpoint(Callback):
    """Saves checkpoints/last.ckpt every `every` optimiser steps, atomically (temp file + rename). Its state in the
    checkpoint is the training wall time so far, so a resumed run's train_time_s counts every segment (a killed
    segment up to its last checkpoint).

    The state is saved where Lightning expects it (the end of step k's batch) but committed (renamed into place)
    only once step k's metrics records and validation have been written, at the next batch's start or at the end
    of training: a kill in between leaves the previous checkpoint, so a resumed run re-logs every record it lacks
    and metrics.jsonl ends equal to an uninterrupted run's."""

    def __init__(self, run_dir: Path, every: int):
        self.run_dir, self.path, self.every = run_dir, run_dir / runs.LAST_CKPT, every
        self.tmp = self.path.with_name(".last.ckpt.tmp")
        self.before = 0.0  # seconds trained by earlier segments
        self.t_start: float | None = None  # this segment's start
        self.pending = False

    def on_train_start(self, *args: Any) -> None:
        self.t_start = time.time()

    def train_time(self) -> float:
        return self.before + (time.time() - self.t_start if self.t_start is not None else 0.0)

    def state_dict(self) -> dict[str, float]:
        return {"train_time_s": self.train_time()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before = float(state.get("train_time_s", 0.0))

    def save(self, trainer: L.Trainer, commit: bool = True) -> None:
        try:
            trainer.save_checkpoint(self.tmp, weights_only=False)  # full state: optimiser, schedule, loops
        except BaseException as e:
            self.tmp.unlink(missing_ok=True)  # never a partial checkpoint left behind
            raise _write_error(e, self.tmp) from None
        faults.point("ckpt_written")
        self.pending = True
        if commit:
            self.commit(trainer)

    def commit(self, trainer: L.Trainer) -> None:
        if self.pending and trainer.is_global_zero:
            runs.commit_checkpoint(self.tmp, self.run_dir)
            faults.point("ckpt_committed")
        self.pending = False

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.commit(trainer)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.commit(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != getattr(self, "_last", -1):
            self._last = step
            self.save(trainer, commit=False)


class FiniteLoss(Callback):
    """Stops a run whose training loss turns NaN or infinite (checked on logging steps: one host sync each)."""

    def __init__(self, every: int):
        self.every = every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and trainer.global_step % self.every == 0 and not torch.isfinite(loss).all():
            raise runs.RunError(
                f"train/loss is {float(loss)} at step {trainer.global_step}: training diverged; "
                "lower optim.lr / optim.memory_lr or check the data (the run stays resumable from "
                "its last checkpoint)"
            )
