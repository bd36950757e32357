"""The sweeps' Lightning callback (its own module, so `hmem sweep status` and `plan` never import Lightning)."""

from __future__ import annotations

import time
from typing import Any

import optuna
from lightning.pytorch.callbacks import Callback


class StepPruningCallback(Callback):
    """Reports (trainer.global_step, monitor) to the trial after every validation during fit; prunes when told.

    The stock optuna_integration callback reports the epoch, which never advances in step-based LM training.
    Also writes a heartbeat user attribute every `heartbeat_s` seconds (stale RUNNING trials are reclaimed)."""

    def __init__(self, trial: optuna.Trial, monitor: str = "val/loss", prune: bool = True, heartbeat_s: float = 30.0):
        self.trial, self.monitor, self.prune, self.heartbeat_s = trial, monitor, prune, heartbeat_s
        self.reported: list[tuple[int, float]] = []
        self._beat = time.time()

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if time.time() - self._beat > self.heartbeat_s:
            self._beat = time.time()
            self.trial.set_user_attr("heartbeat", self._beat)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        step, value = int(trainer.global_step), float(value)
        if self.reported and step <= self.reported[-1][0]:
            return
        self.reported.append((step, value))
        self.trial.report(value, step)
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.monitor}={value:.4f})")
