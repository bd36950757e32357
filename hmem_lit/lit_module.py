"""The LightningModule: a thin system around `MemoryLM` (steps, metrics, optimiser groups, schedules).

Logged names are stable because sweeps and analysis key on them: `train/loss`, `train/lr`, `val/loss`,
`val/ppl`, `tokens`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torchmetrics

from hmem_lit.anchor import lm_loss
from hmem_lit.config import RunConfig, to_dict
from hmem_lit.memory.generic import generic_mask
from hmem_lit.model import MemoryLM
from hmem_lit.optim import build_optimizer, clip_gradients


class HmemLitModule(L.LightningModule):
    def __init__(self, cfg: RunConfig, vocab_size: int, total_steps: int, tokens_per_step: int):
        super().__init__()
        self.cfg, self.total_steps, self.tokens_per_step = cfg, total_steps, tokens_per_step
        # plain dicts only: the checkpoint must load with torch.load(weights_only=True)
        self.save_hyperparameters({"config": to_dict(cfg), "vocab_size": vocab_size, "total_steps": total_steps})
        self.model = MemoryLM(cfg, vocab_size)
        # FSDP (use_orig_params) shows parameters as 1-D shards by the time optimisers are built: keep the shapes
        self._param_ndim = {n: p.dim() for n, p in self.model.named_parameters()}
        self.val_loss = torchmetrics.MeanMetric()  # token-weighted mean NLL; val/ppl = exp of it (no second pass)
        self._window = 0  # micro-batches since the last optimiser step (which batch is next: _batch_paths)
        self.host_batch: dict[str, torch.Tensor] = {}  # this training batch's paths / seq_idx before the transfer

    def forward(self, batch: dict[str, torch.Tensor], memory_mode: str = "fetched") -> torch.Tensor:
        generic = None
        if self.training and self.model.memory is not None and self.cfg.memory.generic:
            generic = generic_mask(batch["seq_idx"], self.cfg.memory.generic_prob, self.cfg.train.seed)
        return self.model(
            batch["input_ids"], doc_ids=batch["doc_ids"], paths=batch["paths"], memory_mode=memory_mode, generic=generic
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self(batch), batch["targets"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # data parallel averages the ranks' gradients; a rank's sequences hold a varying number of predicted
            # tokens, so weight each rank by its share: the step then equals one process on the global batch
            n = (batch["targets"] != -100).sum()
            total = n.clone()
            dist.all_reduce(total)
            return loss * (n * dist.get_world_size() / total.clamp(min=1))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stage_next_batch()
        if self.trainer.global_step % self.cfg.train.log_every == 0:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
            self.log("tokens", float(self.trainer.global_step * self.tokens_per_step), on_step=True, on_epoch=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # the host copies of the routing inputs, for host-side bookkeeping (telemetry) without a device sync
        if isinstance(batch, dict) and self.trainer.training:
            self.host_batch = {k: batch[k] for k in ("paths", "seq_idx") if k in batch}
        return batch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._window += 1

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self._window = 0  # this window's optimiser step: the next batch starts a new one
        bank = self._bank_wanting("expect")  # the coming update may write the next batch's rows first
        nxt = self._batch_paths(self.trainer.global_step + 1) if bank is not None else None
        if bank is not None and nxt is not None:
            bank.expect(*nxt)

    def on_train_end(self) -> None:
        bank = getattr(self.model.memory, "bank", None)
        if bank is not None:
            bank.wait()  # the final tables are written before anyone reads them

    def _stage_next_batch(self) -> None:
        """After the optimiser step the bank rows are final: the storage backend may stage the next batch's rows
        on the device now."""
        bank = self._bank_wanting("stage")
        nxt = self._batch_paths(self.trainer.global_step) if bank is not None else None
        if bank is not None and nxt is not None:
            bank.stage(*nxt, self.device)

    def _bank_wanting(self, hook: str) -> Any:
        """The bank, when its storage backend wants the next batch's paths at `hook` (stage | expect), else None."""
        bank = getattr(self.model.memory, "bank", None)
        return bank if bank is not None and hook in bank.backend.lookahead else None

    def _batch_paths(self, global_step: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(paths, generic mask) of the micro-batch after `global_step` optimiser steps and the micro-batches since
        the last one, or None (no such batch, or no deterministic sampler to ask). The sampler is deterministic:
        that micro-batch is number global_step * accumulate + (micro-batches since the step); its paths come from
        the datamodule without loading its tokens."""
        dm: Any = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_batch_ids"):
            return None
        nxt = dm.train_batch_ids(global_step * self.cfg.train.accumulate + self._window)
        if nxt is None:
            return None
        generic = None
        if self.cfg.memory.generic:
            generic = generic_mask(nxt["seq_idx"], self.cfg.memory.generic_prob, self.cfg.train.seed)
        return nxt["paths"], generic

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        n = (batch["targets"] != -100).sum()
        self.val_loss.update(lm_loss(logits, batch["targets"]), weight=n)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # MeanMetric syncs across ranks itself
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), sync_dist=True)  # the same token-weighted mean NLL, exponentiated
        self.log("tokens", float(self.trainer.global_step * self.tokens_per_step))
        self.val_loss.reset()

    def configure_optimizers(self) -> Any:
        # anchor AdamW + memory groups with their own LR/schedule/decay; bank rows updated row-wise (O(fetch))
        return build_optimizer(self.model, self.cfg, self.total_steps, self._param_ndim)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        sync = getattr(self.trainer.strategy, "sync_sparse_gradients", None)
        if sync is not None and self.trainer.world_size > 1:
            sync()  # bank / PKM value gradients: all ranks' fetched rows, averaged (hmem_lit/distributed.py)
        sharded = getattr(self.trainer.strategy, "sharded_norm_reducer", None)  # FSDP: norms of gradient shards
        # anchor and memory clipped separately (optim.*grad_clip)
        norms = clip_gradients(self.model, self.cfg, sharded() if sharded is not None else None)
        # this step's norm, on exactly the steps whose record is written (Lightning writes step k's record when
        # (k + 1) % log_every == 0): a stale value from an earlier step would differ after a resume
        if (self.trainer.global_step + 1) % self.cfg.train.log_every == 0:
            self.log("train/grad_norm", norms["grad_norm"], on_step=True, on_epoch=False)
            if self.model.memory is not None:
                self.log("train/memory_grad_norm", norms["memory_grad_norm"], on_step=True, on_epoch=False)
