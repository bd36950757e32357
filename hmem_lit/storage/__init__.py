"""The bank's storage seam: where its tables live and how their rows reach the compute device.

A `Backend` is built from the one config section `memory.storage` (config.StorageConfig), the only reader of it.
The bank (memory/bank.py) asks its backend for a new table, the rows of a fetch, a copy of rows for statistics
and the placement of its tables under `.to()`; the LightningModule hands it the next batch's paths when it asks
for them (`lookahead`). What it holds, each part off unless its setting is on:
  - the store: RAM (kind=ram, the default) or memory-mapped scratch files (kind=disk: disk.py);
  - placement: with offload (or on disk) the tables stay in host memory whatever device the model goes to;
  - the dtype policy: float32 or bfloat16 tables and moments, the latter rounded stochastically or to nearest
    after a float32 row update (lowp.py; the rounding itself runs in the optimiser, hmem_lit/optim.py);
  - prefetch: the next batch's rows staged on the compute device after each optimiser step (prefetch.py);
  - write-back: the row-wise optimiser's updates written by a worker thread (writeback.py).
Every part except the dtype gives the numbers of a plain RAM bank bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmem_lit.storage import disk, lowp, prefetch, writeback


class Backend:
    """A bank's storage, built from memory.storage (see the module docstring)."""

    def __init__(self, scfg: Any):
        self.dtype = lowp.dtype_of(scfg.dtype)
        self.store = disk.store_for(scfg)  # None: tables in RAM
        self.on_host = bool(scfg.offload) or self.store is not None  # a disk-backed table lives on the host
        self.prefetch = prefetch.RowPrefetch() if scfg.prefetch and self.on_host else None
        self.writeback = writeback.WriteBack() if scfg.async_update else None
        # the LightningModule's next-batch hooks this backend wants: "stage" (after the optimiser step, prefetch)
        # and "expect" (before it: the rows the write-back writes first)
        hooks = (("stage", self.prefetch is not None), ("expect", self.writeback is not None))
        self.lookahead = frozenset(name for name, wanted in hooks if wanted)

    @property
    def preloaded(self) -> bool:
        """Tables arrive with their trained values (a disk-backed run's weights, mapped): nothing to initialise."""
        return self.store is not None and self.store.preloaded

    def table(self, name: str, shape: tuple[int, int]) -> nn.Parameter:
        """A new table `name` (level1, ...) of `shape`, uninitialised (RAM) or zero-filled (disk)."""
        if self.store is None:
            t = nn.Parameter(torch.empty(shape, dtype=self.dtype))
        else:
            t = nn.Parameter(self.store.table(name, shape, self.dtype))
            disk.attach(t, self.store)  # the optimiser allocates its moments in the same store
        self.attach(t)
        return t

    def attach(self, table: Tensor) -> None:
        """(Re-)mark `table` for the optimiser: its row updates go to this backend's write-back worker."""
        if self.writeback is not None:
            writeback.attach(table, self.writeback)

    def gather(self, level: int, table: Tensor, ids: Tensor) -> Tensor:
        """table[ids] on ids.device as an autograd node whose gradient is sparse (only these rows): (B, s)."""
        if self.writeback is not None:
            self.writeback.wait_rows(table, ids)  # the last step's update of these rows is written
        rows = self.prefetch.take(level, table, ids) if self.prefetch is not None else None
        if rows is None:
            rows = F.embedding(ids.to(table.device), table, sparse=True)  # (B, s)
            # rows travel in the table's dtype; the hooks compute in the activations' dtype (a bfloat16
            # table's gradient arrives as bfloat16, the optimiser's update is float32: lowp.py)
            rows = rows.to(ids.device, non_blocking=True)
        return rows

    def stage(self, level: int, table: Tensor, ids: Tensor, device: torch.device) -> None:
        """Prefetch: gather table[ids] now and start their copy to `device` (else nothing)."""
        if self.prefetch is None:
            return
        if self.writeback is not None:
            self.writeback.wait_rows(table, ids)
        self.prefetch.stage(level, table, ids, device)

    def expect(self, table: Tensor, ids: Tensor) -> None:
        """Write-back: the next batch reads table[ids], so the coming update writes them first (else nothing)."""
        if self.writeback is not None:
            self.writeback.expect(table, ids)

    def read(self, table: Tensor, ids: Tensor) -> Tensor:
        """A float32 CPU copy of table[ids] as it is now (once the pending updates of those rows are written)."""
        if self.writeback is not None:
            self.writeback.wait_rows(table, ids)
        return table.detach()[ids.to(table.device)].float().cpu()

    def wait(self) -> None:
        """Return once every pending row update is written."""
        if self.writeback is not None:
            self.writeback.wait()

    def placement(self, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor] | None:
        """What a module-wide `fn` (`.to()`, `.cuda()`, a precision cast) does to the tables: None (they stay on
        the host, offloaded or on disk), a move that keeps a bfloat16 table's dtype, or `fn` itself."""
        if self.on_host:
            return None
        if self.dtype != torch.float32:  # bfloat16 is how the bank is stored: moves, never casts
            return lambda t: t.to(fn(t.new_empty(0)).device)
        return fn

    def counters(self) -> dict[str, Any]:
        """This process's prefetch hits / misses and write-back updates / waits, for final.json's throughput."""
        out: dict[str, Any] = {}
        if self.prefetch is not None:  # fetches served from staged rows / fallen back to the gather
            out.update(prefetch_hits=self.prefetch.hits, prefetch_misses=self.prefetch.misses)
        if self.writeback is not None:  # table updates run on the worker / reads that waited for one
            wb = self.writeback
            out.update(async_updates=wb.updates, async_waits=wb.waits, async_wait_s=round(wb.wait_s, 3))
        return out


def training_state(scfg: Any, bank_params: int) -> str:
    """One line for `hmem info`: the bytes of a bank of `bank_params` numbers with its two Adam moments."""
    bf16 = scfg.dtype == "bfloat16"
    hint = "" if bf16 else ", memory.storage.dtype=bfloat16 halves it"
    return (
        f"training state {3 * (2 if bf16 else 4) * bank_params / 2**30:,.1f} GiB ({scfg.dtype} table + 2 Adam "
        f"moments; memory.storage.kind=disk keeps it in memory-mapped files{hint})"
    )


# --------------------------------------------------------------------------------------------------------------
# a run's files: what memory.storage changes about writing and reading them


def mapped(scfg: Any) -> bool:
    """The bank may exceed RAM (kind=disk): checkpoints are read memory-mapped and weights written in row blocks."""
    return scfg.kind == "disk"


def save_weights(scfg: Any, state: dict[str, Tensor], path: Path) -> None:
    """A run's final weights as one safetensors file (a disk-backed bank's in row chunks from its mapped tables:
    safetensors' save_file first copies everything into RAM)."""
    if mapped(scfg):
        disk.write_safetensors(state, path)
        return
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def load_weights(
    scfg: Any, weights: Path, build: Callable[[], nn.Module], scratch: Path, map_location: str = "cpu"
) -> nn.Module:
    """The model `build()` makes, holding the weights file's values (its keys must match exactly). A disk-backed
    bank's tables are mapped from the file itself (no copy, no init; other scratch files under `scratch`), the
    rest is copied in a block of rows at a time; otherwise the file is read whole (onto `map_location`)."""
    if not mapped(scfg):
        from safetensors.torch import load_file

        state = load_file(str(weights), device=map_location)
        model = build()
        model.load_state_dict(state, strict=True)
        return model
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        bank_keys = [k for k in f.keys() if k.startswith("memory.bank.level")]
    tables = disk.map_safetensors(weights, bank_keys)
    with disk.scratch_dir(scratch), disk.mapped_tables({k.rsplit(".", 1)[1]: t for k, t in tables.items()}):
        model = build()
    disk.load_safetensors_into(model, weights, skip=tables)
    return model


def check_device(scfg: Any, on_cuda: bool) -> None:
    """Refuse, before any work, a setting that does nothing on this device: async_update moves host work off the
    loop, and a bank on the GPU has none (its row updates are kernels, already asynchronous)."""
    from hmem_lit.errors import ConfigError

    if scfg.async_update and not scfg.on_host and on_cuda:
        raise ConfigError(
            "memory.storage.async_update: this run keeps the bank on the GPU, where its row updates already run "
            "asynchronously; set memory.storage.offload=true (or memory.storage.kind=disk) to keep the bank on the "
            "host, or memory.storage.async_update=false"
        )
