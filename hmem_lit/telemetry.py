"""Memory telemetry during training: is the bank used, and is it collapsing?

For a routed memory (a bank fetched by tree path), `MemoryTelemetry` counts, per bank level, how often each block
has been fetched by a training sequence so far (generic-block sequences excluded), and logs every `log_every`
steps into metrics.jsonl:
  mem/l{l}_coverage     share of the level's blocks fetched at least once so far (an unused bank stays low)
  mem/l{l}_top_share    the most fetched block's share of the level's fetches (a collapsed routing goes to 1)
  mem/l{l}_update_rms   RMS change of the rows this step fetched, over the optimiser step (rows that learn)
(under data parallelism: rank 0's sequences).
For a token-level memory (pkm): `mem/pkm_rows_coverage` (value rows read at least once so far), `mem/pkm_rows_step`
(share of the rows one step reads), `mem/pkm_top1_weight` / `mem/pkm_topk_weight` (mean softmax weight of the best
row and of a top-k row: a collapsed lookup puts ~1 on the best; the counts go to level "0" of the file below).
At the end it writes `memory_telemetry.json` (atomically): per level the fetch count of every block, which
`hmem report` draws as a histogram (figure kind `telemetry`). The counts are part of the checkpoint (callback
state), so a resumed run's telemetry equals an uninterrupted one's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from hmem_lit.memory.generic import generic_mask
from hmem_lit.utils import write_json

FILE = "memory_telemetry.json"


class MemoryTelemetry(Callback):
    def __init__(self, run_dir: Path, log_every: int):
        self.run_dir, self.log_every = Path(run_dir), int(log_every)
        self.counts: dict[int, torch.Tensor] = {}
        self._before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ids: dict[int, torch.Tensor] = {}

    @staticmethod
    def _bank(pl_module: Any) -> Any:
        mem = pl_module.model.memory
        return mem.bank if mem is not None and getattr(mem, "routed", False) else None

    def _level_ids(self, pl_module: Any, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        cfg = pl_module.cfg
        # the loader's host copy of this batch's paths (HmemLitModule keeps it before the transfer): reading the
        # device copy back would be a host sync at every step on a GPU
        host = getattr(pl_module, "host_batch", None) or {}
        if not all(k in host and host[k].shape == batch[k].shape for k in ("paths", "seq_idx")):
            host = batch
        keep = torch.ones(host["paths"].shape[0], dtype=torch.bool)
        if cfg.memory.generic:
            keep = ~generic_mask(host["seq_idx"].cpu(), cfg.memory.generic_prob, cfg.train.seed)
        paths = host["paths"].cpu()[keep]
        return {lvl: paths[:, lvl - 1].long() for lvl, _ in self._bank(pl_module).used}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        pkm = self._pkm(pl_module)
        if pkm is not None:
            pkm.collect_stats = True

    def _pkm(self, pl_module: Any) -> Any:
        mem = pl_module.model.memory
        return mem if mem is not None and hasattr(mem, "step_stats") else None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        pkm = self._pkm(pl_module)
        if pkm is not None:
            pkm.step_stats.clear()
        bank = self._bank(pl_module)
        if bank is None:
            return
        self._before = {}
        for lvl, ids in self._level_ids(pl_module, batch).items():
            n = bank.n_nodes(lvl)
            c = self.counts.setdefault(lvl, torch.zeros(n, dtype=torch.long))
            c += torch.bincount(ids, minlength=n)[:n]
            if len(ids) and self._measure(trainer):  # the rows this step fetches, before its update
                uniq = ids.unique()
                self._before[lvl] = (uniq, bank.read_rows(lvl, uniq))

    @staticmethod
    def _measure(trainer: Any) -> bool:
        """Whether to read the rows for mem/l*_update_rms at this step: only on the steps whose record Lightning
        writes (the logger connector's own test; the values of the other steps are never written). Reading the
        fetched rows is a device-to-host copy of them twice a step on a GPU (~1.8 GB at the 160M bench's fetch),
        and with memory.storage.async_update it waits for the whole update."""
        return bool(getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        pkm = self._pkm(pl_module)
        if pkm is not None and pkm.step_stats:  # token-level memory: value rows read and the softmax's sharpness
            n = int(pkm.values.shape[0])
            hit = self.counts.setdefault(0, torch.zeros(n, dtype=torch.long))  # "level 0": the value table
            for uniq, _, _ in pkm.step_stats:
                hit[uniq.cpu()] += 1
            pl_module.log_dict(
                {
                    "mem/pkm_rows_coverage": float((hit > 0).float().mean()),
                    "mem/pkm_rows_step": float(sum(len(u) for u, _, _ in pkm.step_stats) / len(pkm.step_stats)) / n,
                    "mem/pkm_top1_weight": float(torch.stack([t for _, t, _ in pkm.step_stats]).mean()),
                    "mem/pkm_topk_weight": float(torch.stack([k for _, _, k in pkm.step_stats]).mean()),
                },
                on_step=True,
                on_epoch=False,
            )
            return
        bank = self._bank(pl_module)
        if bank is None or not self.counts:
            return
        metrics: dict[str, float] = {}
        for lvl, c in self.counts.items():
            total = int(c.sum())
            metrics[f"mem/l{lvl}_coverage"] = float((c > 0).float().mean())
            metrics[f"mem/l{lvl}_top_share"] = float(c.max()) / total if total else 0.0
            if lvl in self._before:
                uniq, old = self._before[lvl]
                metrics[f"mem/l{lvl}_update_rms"] = float((bank.read_rows(lvl, uniq) - old).pow(2).mean().sqrt())
        # logged every step; Lightning writes them at log_every like train/loss
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        bank = self._bank(pl_module)
        if (bank is None and self._pkm(pl_module) is None) or not trainer.is_global_zero:
            return
        write_json(
            self.run_dir / FILE,
            {
                "levels": {
                    str(lvl): {
                        "n_blocks": int(c.numel()),
                        "fetch_counts": c.tolist(),
                        "coverage": float((c > 0).float().mean()),
                    }
                    for lvl, c in self.counts.items()
                },
                "steps": int(trainer.global_step),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {str(k): v.clone() for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = {int(k): v.clone() for k, v in state.get("counts", {}).items()}
