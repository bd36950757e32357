"""Asynchronous row-wise updates of a bank on the host (memory.storage.async_update=true).

With the bank in host memory (memory.storage.offload=true or kind=disk, or a run on the CPU) the row-wise
optimiser step (hmem_lit/optim.py) is host work: read the fetched rows, their moments and gradients, write them back.
Done inline, it stalls the training loop: on an accelerator the next step's forward cannot be launched until the
host has finished, and the update is host memory traffic of several passes over the step's fetched rows, which at
a 10% fetch of a small anchor may take as long as the accelerator's whole step (an estimate: unmeasured, no GPU
has run it). With `async_update` the optimiser hands the step's table updates to one worker thread and returns;
the loop goes on with the next batch while the rows are written. (A bank on the GPU has no such host work: its
updates are kernels, already asynchronous; `hmem train` refuses async_update there.)

Exactness. Reads of a table wait for the pending updates that touch the rows they read, and for nothing else:
- `Bank.fetch(ids)` and `Bank.stage(ids)` (memory.storage.prefetch) wait for updates whose rows meet `ids`;
- the next optimiser step, `state_dict()` of the bank or the optimiser (checkpoints, final weights, merges) and
  the end of training wait for every pending update.
Rows are independent in AdamW (each has its own moments and step count), and a stochastically rounded bfloat16 row
takes the same random bits whichever order the rows are written in (lowp.random_bits), so a run with
async_update is bit for bit the run without it.

Order. Before the step the training loop tells the bank which rows the next batch reads (`Bank.expect`, from the
deterministic sampler). One job per optimiser step writes those rows of every table first (each table signals
when its share is done), then the rest of every table; the next fetch waits for the signals only, while the rest
(with many nodes per level, most of it: a batch of sequences meets few of the same deep nodes twice in a row)
overlaps the next step's forward and backward. Without an expectation (no datamodule; the later micro-batches of
a gradient-accumulation window, which come a whole micro-batch later) a read waits for the whole update.

`waits` / `wait_s` count the times and seconds the loop blocked on the worker (reads, the next step, checkpoints).
A failure in the worker is raised in the training loop at the next wait, with its own traceback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(eq=False)  # identity: pending updates are found by `is`, never by comparing tensors
class _Update:
    table: Tensor
    rows: Tensor  # (n,) host row ids the update writes
    hot: Tensor | None  # (k,) the rows written in the first phase (those the next batch reads), or None
    work: Iterator[None] | None  # the update, as a generator that yields once between its two phases
    first: threading.Event = field(default_factory=threading.Event)  # set when the `hot` rows are written
    future: Future[None] | None = None  # the job that runs it (shared by one optimiser step's updates)
    failed: bool = False  # set by the job, before `first`, when it raised


class WriteBack:
    """One worker thread applying row-wise table updates, and the waits that keep reads exact.

    An optimiser step `submit`s one update per table, then `launch`es them as one job: the first phase of every
    update (the rows the next batch reads), then the rest of every update, so the next fetch of any table waits
    only for the first phases. Only the training loop's thread calls these methods."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._queued: list[_Update] = []
        self._pending: list[_Update] = []
        self._expected: dict[int, Tensor] = {}  # id(table) -> host row ids the next batch reads
        self.updates = 0  # submitted so far
        self.waits = 0  # times the loop blocked on the worker (a read of pending rows, a step, a checkpoint)
        self.wait_s = 0.0  # seconds it spent blocked

    def expect(self, table: Tensor, ids: Tensor) -> None:
        """The next batch reads table[ids]: the next update of `table` writes those rows first."""
        self._expected[id(table)] = ids.detach().to(table.device).unique()

    def submit(self, table: Tensor, rows: Tensor, work: Callable[[Tensor | None], Iterator[None]]) -> None:
        """Queue `work(hot)`, a generator function: it writes the rows of `rows` where `hot` (a bool mask over
        `rows`) is set, yields once, then writes the rest; with hot None (no expected rows) it may write
        anything in either phase. It runs on the worker at the next `launch`."""
        expected = self._expected.pop(id(table), None)
        hot_mask = torch.isin(rows, expected) if expected is not None else None
        hot = rows[hot_mask] if hot_mask is not None else None
        self._queued.append(_Update(table, rows, hot, work(hot_mask)))
        self.updates += 1

    def launch(self) -> None:
        """Start the queued updates as one job on the worker: every first phase, then every second phase."""
        if not self._queued:
            return
        batch, self._queued = self._queued, []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hmem-writeback")

        def run() -> None:
            try:
                with torch.no_grad():  # grad mode is per thread: the worker's in-place writes are not recorded
                    for u in batch:
                        assert u.work is not None
                        next(u.work, None)
                        u.first.set()
                    for u in batch:
                        assert u.work is not None
                        next(u.work, None)
            except BaseException:
                for u in batch:
                    u.failed = True  # seen by a waiter on `first` before the future holds the exception
                raise
            finally:
                for u in batch:
                    u.work = None  # the generator holds the gradient and the rows: free them with the job
                    u.first.set()  # a waiter on a first phase never hangs on a failed job (it then re-raises)

        future = self._pool.submit(run)
        for u in batch:
            u.future = future
            self._pending.append(u)

    def wait_rows(self, table: Tensor, ids: Tensor) -> None:
        """Return once every pending update of `table` that writes a row of `ids` has written it."""
        self.launch()
        if not self._pending:
            return
        host_ids: Tensor | None = None
        for u in list(self._pending):
            if u.table is not table:
                continue
            assert u.future is not None  # pending updates have been launched
            if u.future.done():
                self._finish(u)
                continue
            if host_ids is None:
                host_ids = ids.detach().to(table.device)
            touched = host_ids[torch.isin(host_ids, u.rows)]
            if touched.numel() == 0:
                continue
            t0 = time.perf_counter()
            if u.hot is not None and bool(torch.isin(touched, u.hot).all()):
                blocked = not u.first.is_set()
                u.first.wait()
                if u.failed or u.future.done():
                    self._finish(u)  # raises a failure
            else:
                blocked = not u.future.done()
                self._finish(u)
            self._blocked(blocked, t0)

    def wait(self) -> None:
        """Return once every pending update is written (raises the first failure)."""
        self.launch()
        t0, blocked = time.perf_counter(), any(u.future is not None and not u.future.done() for u in self._pending)
        while self._pending:
            self._finish(self._pending[0])
        self._blocked(blocked, t0)

    def _blocked(self, blocked: bool, t0: float) -> None:
        if blocked:  # the loop waited for the worker: counted, and the time since t0 added
            self.waits += 1
            self.wait_s += time.perf_counter() - t0

    def _finish(self, u: _Update) -> None:
        """Wait for u's job; it and the other updates of that job leave the pending list (a failure once)."""
        job = u.future
        assert job is not None
        try:
            job.result()
        finally:
            self._pending = [v for v in self._pending if v.future is not job]

    # a copied or pickled bank gets a fresh, idle WriteBack (threads and pending work belong to this process)
    def __deepcopy__(self, memo: dict[int, Any]) -> WriteBack:
        self.wait()
        return WriteBack()

    def __getstate__(self) -> dict[str, Any]:
        self.wait()
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
