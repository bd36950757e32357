"""Data-parallel synchronisation of sparse (row-wise) gradients: bank tables and PKM values.

DDP's reducer all-reduces dense buckets (and NCCL has no sparse all-reduce), which would cost O(bank) per step.
The distributed strategies (hmem_lit/distributed.py) therefore keep the sparse-gradient tables out of DDP / FSDP,
and once per optimiser step, before clipping, `sync_sparse_grads` does for each table:

  1. all_gather every rank's number of gradient rows (one small int64 tensor for all tables together);
  2. all_gather the row ids (padded with -1 to the largest count) and the gradient rows (padded with zeros);
  3. `merge_rows`: drop the padding, sum duplicate rows (a block fetched on several ranks), divide by the world
     size (DDP's mean convention), and set the result as the coalesced sparse gradient, on every rank.

Every rank then holds the same sparse gradient, so `RowwiseAdamW` applies the identical O(fetch) update everywhere
and rows fetched by no rank stay bit-identical. Only dense tensors are gathered, which works on gloo and NCCL.
Cost per step and table (what each rank receives): world * max_rank_rows * (row_bytes + 8), independent of the
bank size; a dense ring all-reduce moves ~2 * (world - 1) / world * table_bytes per rank. When the ranks' rows
cover so much of a table that the all-reduce is cheaper (small PKM value tables read by every token), that table
is all-reduced densely instead, with a 1-byte row mask, and its gradient stays sparse on the union of fetched rows
(the decision follows from the gathered counts, so all ranks agree). With offload (tables on the CPU) and NCCL,
the exchanged tensors travel through the current CUDA device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class SyncStats:
    """What one `sync_sparse_grads` call moved, per rank, and the size of the tables it synchronised."""

    rows: int = 0  # distinct rows with a gradient after the merge, all tables
    bytes: int = 0  # bytes this rank received: all_gathers (counts, ids, rows, padding) or ring all-reduces
    table_bytes: int = 0  # bytes of the synchronised tables (what a dense all-reduce would reduce)
    dense_tables: int = 0  # tables whose rows covered so much that the dense all-reduce was cheaper
    per_table: list[dict[str, int]] = field(default_factory=list)


def merge_rows(ids: list[Tensor], values: list[Tensor], shape: tuple[int, ...], world: int) -> Tensor:
    """Per-rank gradient rows -> their mean as one coalesced sparse COO tensor of `shape`.

    ids[k] (n_k,) long row ids of rank k (entries < 0 are padding and dropped), values[k] (n_k, *shape[1:]).
    Duplicate ids (within or across ranks) are summed; the sum is divided by `world`.
    """
    i, v = torch.cat(ids), torch.cat(values)
    keep = i >= 0
    if not bool(keep.all()):
        i, v = i[keep], v[keep]
    g = torch.sparse_coo_tensor(i.unsqueeze(0), v, shape, check_invariants=False).coalesce()
    return torch.sparse_coo_tensor(g._indices(), g._values() / world, shape, is_coalesced=True, check_invariants=False)


def _comm_device(t: Tensor, group: dist.ProcessGroup | None) -> torch.device:
    if dist.get_backend(group) == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _local_rows(p: Tensor) -> tuple[Tensor, Tensor]:
    """p's gradient as (row ids (n,), rows (n, *row_shape)); a missing gradient is zero rows."""
    if p.grad is None:
        return torch.empty(0, dtype=torch.long, device=p.device), p.new_empty((0, *p.shape[1:]))
    g = p.grad
    if not g.is_sparse:  # e.g. a table some caller fetched densely: send every row (correct, just not cheap)
        return torch.arange(p.shape[0], device=p.device), g
    g = g.coalesce()  # local duplicates summed first: fewer rows on the wire
    return g._indices()[0], g._values()


def _gather(
    p: Tensor, i: Tensor, v: Tensor, n_max: int, world: int, dev: torch.device, group: dist.ProcessGroup | None
) -> Tensor:
    """all_gather every rank's (padded) row ids and rows, then merge them: O(world * fetched rows)."""
    pad = n_max - i.numel()
    ids = torch.cat([i, i.new_full((pad,), -1)]).to(dev)
    vals = torch.cat([v, v.new_zeros((pad, *v.shape[1:]))]).to(dev)
    ids_all = [torch.empty_like(ids) for _ in range(world)]
    vals_all = [torch.empty_like(vals) for _ in range(world)]
    dist.all_gather(ids_all, ids, group=group)
    dist.all_gather(vals_all, vals, group=group)
    return merge_rows([x.to(p.device) for x in ids_all], [x.to(p.device) for x in vals_all], tuple(p.shape), world)


def _dense_allreduce(
    p: Tensor, i: Tensor, v: Tensor, world: int, dev: torch.device, group: dist.ProcessGroup | None
) -> Tensor:
    """All-reduce the gradient densely plus a row mask; the result stays sparse on the union of fetched rows."""
    dense = torch.zeros(p.shape, dtype=v.dtype, device=dev)
    dense.index_add_(0, i.to(dev), v.to(dev))
    mask = torch.zeros(p.shape[0], dtype=torch.uint8, device=dev)
    mask[i.to(dev)] = 1
    dist.all_reduce(dense, group=group)
    dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group)
    rows = mask.nonzero().squeeze(1)  # sorted: a valid coalesced index
    vals = (dense.index_select(0, rows) / world).to(p.device)
    return torch.sparse_coo_tensor(
        rows.to(p.device).unsqueeze(0), vals, tuple(p.shape), is_coalesced=True, check_invariants=False
    )


@torch.no_grad()
def sync_sparse_grads(params: Sequence[Tensor], group: dist.ProcessGroup | None = None) -> SyncStats:
    """Replace each param's (sparse) gradient by the mean over ranks of all ranks' gradients, on every rank.

    Collective: every rank must call it with the same params in the same order. A param with no gradient on any
    rank keeps grad None (as in a single process). With world size 1 it only coalesces.
    """
    stats = SyncStats()
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    if not params:
        return stats
    local = [_local_rows(p) for p in params]
    if world == 1:
        for p, (i, v) in zip(params, local):
            if p.grad is not None:
                p.grad = merge_rows([i], [v], tuple(p.shape), 1)
                stats.rows += i.numel()
        return stats
    dev = _comm_device(params[0], group)
    counts = torch.tensor([i.numel() for i, _ in local], dtype=torch.long, device=dev)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts, group=group)
    all_counts_t = torch.stack(all_counts)  # (world, tables)
    stats.bytes += all_counts_t.numel() * 8
    for t, (p, (i, v)) in enumerate(zip(params, local)):
        n_max = int(all_counts_t[:, t].max())
        row_bytes = p[0].numel() * p.element_size()
        table_bytes = p.numel() * p.element_size()
        stats.table_bytes += table_bytes
        if n_max == 0:
            continue  # nobody has a gradient for this table
        gather_bytes = world * n_max * (row_bytes + 8)
        ring_bytes = int(2 * (world - 1) / world * (table_bytes + p.shape[0]))  # table + a 1-byte row mask
        dense = ring_bytes < gather_bytes  # the ranks' rows cover most of the table (e.g. small PKM tables)
        if dense:
            g, sent = _dense_allreduce(p, i, v, world, dev, group), ring_bytes
        else:
            g, sent = _gather(p, i, v, n_max, world, dev, group), gather_bytes
        p.grad = g
        stats.bytes += sent
        stats.rows += g._nnz()
        stats.dense_tables += int(dense)
        stats.per_table.append({"rows": g._nnz(), "bytes": sent, "table_bytes": table_bytes, "dense": int(dense)})
    return stats
