"""Prefetch of an offloaded bank's rows (memory.storage.prefetch=true with offload=true or kind=disk).

Without it, a step's fetch gathers the batch's rows from the host tables and copies them to the accelerator from
pageable memory at the start of the forward, while the accelerator waits. With it, right after optimiser step k
(when the rows are final) the training loop hands the next batch's paths to `Bank.stage`: the rows are gathered
on the host into pinned memory and copied to the device on a side CUDA stream, overlapping the rest of step k's
work (logging, checkpoint checks, the next batch's transfer) and the start of step k+1. Step k+1's fetch then
waits on that copy's event instead of copying.

Staged rows are used only when they are exactly what the fetch would read: the same row ids, and no optimiser
update of the table since they were gathered (each row-wise step bumps the table's version). Anything else (a
validation batch, a probe, a resumed run's first step, gradient accumulation) falls back to the plain gather, so
the numbers are bit for bit those without prefetch. The gradient goes back as the plain gather's does: a sparse
COO gradient of the host table with one row per sequence, copied to the host in backward.

On the CPU the same code runs without pinning or streams (the gather simply happens earlier), so the CPU tests
prove the equality; the overlap itself needs CUDA (benchmarks/bench_gpu.py, variant memory-160m-offload-prefetch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

_VERSION = "_hmem_version"  # set on a bank table: how many row-wise optimiser steps have updated it


def bump(table: Tensor) -> None:
    """Record an update of `table` (the row-wise optimiser calls this): staged copies of its rows are stale."""
    setattr(table, _VERSION, getattr(table, _VERSION, 0) + 1)


def version(table: Tensor) -> int:
    return getattr(table, _VERSION, 0)


class _StagedRows(torch.autograd.Function):
    """rows (B, s) already on the device, standing for table[ids]: the gradient w.r.t. the table is the sparse
    COO gradient F.embedding(ids, table, sparse=True) gives (one row per sequence, uncoalesced), on the host."""

    @staticmethod
    def forward(ctx: Any, table: Tensor, rows: Tensor, ids: Tensor) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.shape, ctx.host = table.shape, table.device
        return rows.view_as(rows)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (ids,) = ctx.saved_tensors
        values = grad.to(ctx.host)
        g = torch.sparse_coo_tensor(ids.unsqueeze(0), values, ctx.shape, check_invariants=False)
        return g, None, None


@dataclass
class _Staged:
    ids: Tensor  # (B,) row ids, host
    ids_device: Tensor  # the same on the compute device (compared with the fetch's ids there)
    rows: Tensor  # (B, s) on the compute device (or the host rows themselves on the CPU)
    version: int
    event: Any = None  # torch.cuda.Event recorded after the side-stream copy
    host: Tensor | None = None  # the pinned host rows, kept alive until the copy is done


@dataclass
class RowPrefetch:
    """Staged rows per bank level, and how often a fetch used them (hits) or fell back (misses)."""

    staged: dict[int, _Staged] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    _stream: Any = None

    def stage(self, level: int, table: Tensor, ids: Tensor, device: torch.device) -> None:
        """Gather table[ids] now (the rows after the last update) and start their copy to `device`."""
        host_ids = ids.detach().to(table.device)
        if device.type != "cuda":
            rows = table.detach().index_select(0, host_ids)
            self.staged[level] = _Staged(host_ids, ids.detach().to(device), rows.to(device), version(table))
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        # gathered straight into pinned memory (torch's caching host allocator recycles the block once the copy
        # that reads it has finished)
        pinned = torch.empty((len(host_ids), *table.shape[1:]), dtype=table.dtype, pin_memory=True)
        torch.index_select(table.detach(), 0, host_ids, out=pinned)
        ids_device = ids.detach().to(device, non_blocking=True)
        with torch.cuda.stream(self._stream):
            dev_rows = pinned.to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        self.staged[level] = _Staged(host_ids, ids_device, dev_rows, version(table), event, pinned)

    def take(self, level: int, table: Tensor, ids: Tensor) -> Tensor | None:
        """The staged rows for a fetch of table[ids] on ids.device, as an autograd node, or None (not staged for
        exactly these ids at the table's current version: the caller gathers as usual)."""
        s = self.staged.get(level)
        if s is None:
            return None
        if (
            s.version != version(table)
            or s.rows.device != ids.device
            or s.ids_device.shape != ids.shape
            or not torch.equal(s.ids_device, ids)
        ):
            self.misses += 1
            if s.version != version(table):
                del self.staged[level]  # stale for good
            return None
        del self.staged[level]
        if s.event is not None:  # the side-stream copy must land before the compute stream reads the rows
            torch.cuda.current_stream(ids.device).wait_event(s.event)
            s.rows.record_stream(torch.cuda.current_stream(ids.device))
        self.hits += 1
        return _StagedRows.apply(table, s.rows, s.ids)

    def clear(self) -> None:
        self.staged.clear()
