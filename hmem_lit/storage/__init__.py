"""The bank's storage seam: where its tables live and how their rows reach the compute device.

A `Backend` is built from the one config section `memory.storage` (config.StorageConfig), the only reader of it.
The bank (memory/bank.py) asks its backend for a new table, the rows of a fetch, a copy of rows for statistics
and the placement of its tables under `.to()`; the LightningModule hands it the next batch's paths when it asks
for them (`lookahead`). What it holds, each part off unless its setting is on:
  - the store: RAM (kind=ram, the default) or memory-mapped scratch files (kind=disk: disk.py);
  - placement: with offload (or on disk) the tables stay in host memory whatever device the model goes to;
  - the dtype policy: float32 or bfloat16 tables and moments, the latter rounded stochastically or to nearest
    after a float32 row update (lowp.py);
  - prefetch: the next batch's rows staged on the compute device after each optimiser step (prefetch.py);
  - write-back: the row-wise optimiser's updates written by a worker thread (writeback.py).
Every part except the dtype gives the numbers of a plain RAM bank bit for bit. The row-wise optimiser
(hmem_lit/optim.py) knows none of them: it hands each table's update to the table's backend (`of`, `update_rows`),
which reads the rows in float32, runs the update inline or on its worker, and writes them back in the table's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmem_lit.storage import disk, lowp, prefetch, writeback

_ATTR = "_hmem_backend"  # set on a bank table: the Backend that made it
# update(x, m, v, sel): AdamW on rows (values, two moments: float32 (k, *row) tensors or lists of per-row views,
# updated in place) that are the update's rows where the bool mask `sel` is set (None: all of them)
RowUpdate = Callable[[Any, Any, Any, "Tensor | None"], None]


class Backend:
    """A bank's storage, built from memory.storage (see the module docstring); no section: the plain one (RAM, the
    tensor's own dtype, nothing staged or deferred), which serves any other row-wise tensor (pkm's values)."""

    def __init__(self, scfg: Any = None):
        if scfg is None:
            scfg = SimpleNamespace(kind="ram", dtype="float32", rounding="stochastic", offload=False)
            scfg.prefetch = scfg.async_update = False
        self.dtype = lowp.dtype_of(scfg.dtype)
        self.rounding = scfg.rounding  # of a bfloat16 table's rows after their float32 update (lowp.py)
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
        """(Re-)mark `table` as this backend's: the optimiser hands its row updates here (`of`)."""
        setattr(table, _ATTR, self)

    def zeros_like(self, table: Tensor) -> Tensor:
        """A zero tensor like `table` where its rows live (an optimiser moment: in a disk-backed table's store)."""
        return disk.zeros_like(table)

    def adopt(self, table: Tensor, t: Tensor) -> Tensor:
        """t (a loaded moment of `table`, perhaps a view of a memory-mapped checkpoint) where table's rows live:
        copied into a disk-backed table's store a block of rows at a time, else t itself."""
        store = disk.store_of(table)
        if store is None:
            return t
        out = store.zeros(table.shape, t.dtype)
        disk.copy_rows(out, t)
        return out

    def update_rows(
        self,
        table: Tensor,
        moments: tuple[Tensor, Tensor],
        rows: Tensor,
        update: RowUpdate,
        views: bool,
        seed: tuple[int, int, int],
    ) -> None:
        """Run `update` (RowUpdate) on rows `rows` of `table` and of its two moment tensors, inline or (write-back,
        a table on the host) on the worker, which writes the rows the next batch reads first. A float32 table's
        rows come as per-row views where `views` is asked for (in place: big rows), else gathered and written
        back; a bfloat16 table's gathered in float32 and written back rounded (the moments to nearest), with
        stochastic rounding's bits seeded by `seed` (lowp.generator's (seed, step, index))."""
        prefetch.bump(table)  # rows staged before this update (prefetch) are stale now
        gen = None
        if table.dtype == torch.bfloat16 and self.rounding == "stochastic":
            gen = lowp.generator(table.device, *seed)
        if self.writeback is None or table.device.type != "cpu":
            for _ in self._rows(table, moments, rows, update, views, gen, None):
                pass
            return
        self.writeback.submit(table, rows, lambda hot: self._rows(table, moments, rows, update, views, gen, hot))

    def _rows(
        self,
        table: Tensor,
        moments: tuple[Tensor, Tensor],
        rows: Tensor,
        update: RowUpdate,
        views: bool,
        gen: torch.Generator | None,
        hot: Tensor | None,
    ) -> Iterator[None]:
        """update_rows' work as a generator that yields once: the rows where `hot` (a bool mask over rows) is set
        before the yield, the others after (hot None: all after). Rows are independent and the rounding bits are
        drawn for all rows at once, so the split gives the numbers of one pass."""
        bits = None
        if gen is not None:  # bfloat16, stochastic rounding: the bits of every updated number, in row order
            bits = lowp.random_bits((len(rows), *table.shape[1:]), gen, table.device)
        if hot is None:
            yield
            self._write(table, moments, rows, None, update, views, bits)
            return
        for i, sel in enumerate((hot, ~hot)):
            if i == 1:
                yield
            if bool(sel.any()):
                self._write(table, moments, rows[sel], sel, update, views, None if bits is None else bits[sel])

    def _write(
        self,
        table: Tensor,
        moments: tuple[Tensor, Tensor],
        rows: Tensor,
        sel: Tensor | None,
        update: RowUpdate,
        views: bool,
        bits: Tensor | None,
    ) -> None:
        m_all, v_all = moments
        if table.dtype == torch.bfloat16:  # updated in float32, rounded back (lowp.py)
            x, m, v = (t.index_select(0, rows).float() for t in (table, m_all, v_all))
            update(x, m, v, sel)
            table.index_copy_(0, rows, lowp.round_to(x, table.dtype, self.rounding, None, bits))
            m_all.index_copy_(0, rows, m.to(m_all.dtype))
            v_all.index_copy_(0, rows, v.to(v_all.dtype))
            return
        if views:  # in place, one view per row
            r = rows.tolist()
            update([table[i] for i in r], [m_all[i] for i in r], [v_all[i] for i in r], sel)
            return
        x, m, v = (t.index_select(0, rows) for t in (table, m_all, v_all))
        update(x, m, v, sel)
        table.index_copy_(0, rows, x)
        m_all.index_copy_(0, rows, m)
        v_all.index_copy_(0, rows, v)

    def launch(self) -> None:
        """Start the row updates handed over since the last launch (write-back; else they are done already)."""
        if self.writeback is not None:
            self.writeback.launch()

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


_PLAIN = Backend()


def of(table: Tensor) -> Backend:
    """The backend of a bank table, or the plain one for any other tensor."""
    return getattr(table, _ATTR, None) or _PLAIN


def backends(params: Iterable[Tensor]) -> list[Backend]:
    """The distinct backends of `params` (bank tables' own, and the plain one for the rest)."""
    out: dict[int, Backend] = {}
    for p in params:
        b = of(p)
        out.setdefault(id(b), b)
    return list(out.values())


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
