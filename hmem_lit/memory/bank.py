"""The hierarchical memory bank: one block per tree node, one 2-D table per level, gathered per sequence.

Level l (1-based) of a `branching`-way tree has branching**l nodes; a node's id at level l is
parent_id * branching + child, so its level-1 ancestor is id // branching**(l-1) and every level-1 subtree owns a
contiguous range of rows at every level. `memory.levels = [r1, r2, ...]` gives r_l units per memory layer at
level l (0 = level absent); a level-l block holds s_l = c_unit * r_l numbers, c_unit set by the memory type
(FFN: 3 * layers * d_model). fetched = c_unit * sum(r_l); bank = c_unit * sum(branching**l * r_l).

Storage: level l is one Parameter `level{l}` of shape (branching**l [+1], s_l). The optional extra last row is
the level's share of the generic block (memory.generic). A fetch is one gather per level for the whole batch, with
a sparse COO gradient that touches only the fetched rows, which the row-wise optimiser (hmem_lit/optim.py) turns
into an O(fetch) update. Where the tables live, their number type and how rows reach the compute device (the
device of `paths`) is the bank's storage backend's business (hmem_lit/storage/, built from memory.storage).

`BankMemory` is the shared base of the bank-backed types (ffn, lora, kv). A block is laid out unit-major:
(layers, r_l, c_layer) where c_layer is the numbers one unit adds to one layer (FFN: a gate row, an up row and a
down column, 3 * d_model). Fetched levels concatenate along the unit axis, so a sequence sees one memory of
R = sum(r_l) units per layer.

Blocking (privacy experiment) is the caller's job: `choose_unblocked` picks, per sequence, the first of several
ranked candidate paths that avoids the blocked nodes, and that path is what `fetch` receives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hmem_lit.memory.base import MemoryType
from hmem_lit.storage import Backend, disk


def resolve_layers(spec: Any, n_layer: int) -> list[int]:
    """memory.layers -> sorted layer indices: all | early | middle | late (thirds of the depth) | explicit list."""
    if isinstance(spec, str):
        if spec == "all":
            return list(range(n_layer))
        idx = {"early": 0, "middle": 1, "late": 2}[spec]
        q, rem = divmod(n_layer, 3)  # torch.tensor_split's thirds (sizes differ by at most one), without a tensor:
        start = idx * q + min(idx, rem)  # this also runs on the meta device (parameter accounting)
        layers = list(range(start, start + q + (idx < rem)))
        if not layers:
            raise ValueError(f"memory.layers={spec}: {n_layer} layers have no {spec} third")
        return layers
    layers = sorted({int(i) for i in spec})
    if not layers or layers[-1] >= n_layer:
        raise ValueError(f"memory.layers={list(spec)}: need indices in [0, {n_layer})")
    return layers


class Bank(nn.Module):
    """Per-level block tables. `fetch` returns one (B, s_l) row tensor per used level, on the compute device."""

    def __init__(self, levels: Sequence[int], c_unit: int, branching: int, generic: bool, backend: Backend):
        super().__init__()
        if branching < 2:
            raise ValueError(f"branching must be >= 2, got {branching}")
        self.levels = [int(r) for r in levels]
        self.c_unit, self.branching, self.generic = int(c_unit), int(branching), generic
        self.backend = backend
        self.used = [(lvl, r) for lvl, r in enumerate(self.levels, start=1) if r > 0]  # (level, r_l)
        for lvl, r in self.used:
            rows = branching**lvl + int(generic)
            self.register_parameter(f"level{lvl}", backend.table(f"level{lvl}", (rows, self.c_unit * r)))

    def tables(self) -> list[tuple[int, int, nn.Parameter]]:
        """[(level, r_l, table)] for the used levels."""
        return [(lvl, r, getattr(self, f"level{lvl}")) for lvl, r in self.used]

    def n_nodes(self, level: int) -> int:
        return self.branching**level

    def fetched_params(self) -> int:
        return self.c_unit * sum(self.levels)

    def bank_params(self) -> int:
        return self.c_unit * sum(self.branching**lvl * r for lvl, r in enumerate(self.levels, start=1))

    def fetch(self, paths: Tensor | None, generic: Tensor | None = None) -> list[Tensor]:
        """paths (B, >= levels) node ids; generic (B,) bool -> [(B, s_l)] per used level, rows ordered like paths.

        Sequences with generic=True read the generic row (last row) of every level instead of their path.
        """
        if paths is None and generic is None:
            raise ValueError("fetch needs paths (B, depth) or a generic mask")
        if generic is not None and not self.generic:
            raise ValueError("generic memory requested but the bank was built with memory.generic=false")
        levels = zip(self.tables(), self._level_ids(paths, generic))
        return [self.backend.gather(lvl, table, ids) for (lvl, _, table), ids in levels]

    def stage(self, paths: Tensor | None, generic: Tensor | None, device: torch.device) -> None:
        """Hand the rows a later `fetch(paths, generic)` on `device` will read to the backend (call it after the
        optimiser step that precedes that fetch): the backend may start their copy now."""
        for (lvl, _, table), ids in zip(self.tables(), self._level_ids(paths, generic)):
            self.backend.stage(lvl, table, ids, device)

    def expect(self, paths: Tensor | None, generic: Tensor | None) -> None:
        """Tell the backend the next batch reads these rows (call it before the optimiser step): with write-back
        the coming update writes them first."""
        for (_, _, table), ids in zip(self.tables(), self._level_ids(paths, generic)):
            self.backend.expect(table, ids)

    def read_rows(self, level: int, ids: Tensor) -> Tensor:
        """A float32 CPU copy of level `level`'s rows `ids` as they are now, for statistics."""
        return self.backend.read(getattr(self, f"level{level}"), ids)

    def wait(self) -> None:
        """Return once every pending row update is written (the backend may write them on a worker)."""
        self.backend.wait()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a copied or unpickled bank: copied parameters lose their attributes, the backend marks them again
        super().__setstate__(state)
        for _, _, table in self.tables():
            self.backend.attach(table)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self.wait()  # a checkpoint holds the tables after the last step's update
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.wait()
        super()._load_from_state_dict(*args, **kwargs)

    def _level_ids(self, paths: Tensor | None, generic: Tensor | None) -> list[Tensor]:
        """The row each sequence reads at each used level: its path's node, or the generic row."""
        if paths is None and generic is None:
            raise ValueError("fetch needs paths (B, depth) or a generic mask")
        ref = paths if paths is not None else generic
        assert ref is not None  # one of them is given (checked above)
        device = ref.device
        out = []
        for lvl, _, _ in self.tables():
            gen_row = self.n_nodes(lvl)
            if paths is None:
                assert generic is not None
                ids = torch.full(generic.shape, gen_row, dtype=torch.long, device=device)
            else:
                ids = paths[:, lvl - 1].long()
                if generic is not None:
                    ids = torch.where(generic.to(device), torch.full_like(ids, gen_row), ids)
            out.append(ids)
        return out

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        # the backend decides what .to()/.cuda()/casts do to the tables (stay on the host, move, or follow fn)
        placed = self.backend.placement(fn)
        return self if placed is None else super()._apply(placed, recurse)


class BankMemory(MemoryType):
    """Shared base of bank-backed memory types: placement, the bank, accounting, the batched gather."""

    routed = True

    def __init__(self, mcfg: Any, n_layer: int, branching: int, c_layer: int):
        super().__init__()
        self.layers = resolve_layers(mcfg.layers, n_layer)
        self.slot = {layer: i for i, layer in enumerate(self.layers)}  # anchor layer -> position in the block
        self.c_layer = c_layer
        self.bank = Bank(mcfg.levels, c_layer * len(self.layers), branching, mcfg.generic, Backend(mcfg.storage))

    def unit_views(self) -> Iterator[Tensor]:
        """Each level's table viewed as (rows, layers, r_l, c_layer), for in-place initialisation, in blocks of
        rows of at most disk.CHUNK_BYTES of float32 (a table up to that size is one block): initialisers'
        temporaries stay bounded for a table of any size (a disk-backed one larger than RAM), and RAM and disk
        tables, built with the same blocks, get the same numbers. A low-precision table's block is a float32 copy,
        rounded to nearest into the table when the caller asks for the next block: the same numbers as a float32
        table's init, rounded."""
        if self.bank.backend.preloaded:
            return  # tables mapped with their trained values (evaluating a disk-backed run): nothing to init
        for _, r, t in self.bank.tables():
            step = disk.rows_per_block(tuple(t.shape), 4)  # float32 blocks, whatever the table's dtype
            for i in range(0, t.shape[0], step):
                block = t[i : i + step]
                work = block if block.dtype == torch.float32 else torch.zeros(block.shape)
                yield work.view(block.shape[0], len(self.layers), r, self.c_layer)
                if work is not block:
                    with torch.no_grad():
                        block.copy_(work)

    def gather(self, paths: Tensor | None, generic: Tensor | None) -> Tensor:
        """-> (B, layers, R, c_layer): the fetched blocks of every used level, concatenated along units."""
        rows = self.bank.fetch(paths, generic)
        parts = [x.view(x.shape[0], len(self.layers), r, self.c_layer) for x, (_, r) in zip(rows, self.bank.used)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def fetched_params(self) -> int:
        return self.bank.fetched_params()

    def bank_params(self) -> int:
        return self.bank.bank_params()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.bank.parameters())


def choose_unblocked(candidates: Tensor, level: int, blocked: Tensor) -> Tensor:
    """Blocking for evaluation: per sequence, the first ranked candidate path whose level-`level` node is unblocked.

    candidates (B, K, depth) long, best first (e.g. the routing's next-nearest nodes); blocked (n,) long node ids
    at `level`. -> (B, depth), ready for `fetch`. Raises if some sequence has no unblocked candidate.
    """
    ok = ~torch.isin(candidates[:, :, level - 1], blocked.to(candidates.device))  # (B, K)
    if not bool(ok.any(dim=1).all()):
        raise ValueError("every candidate path of some sequence is blocked; supply more candidates")
    first = ok.to(torch.int8).argmax(dim=1)  # first True per row
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), first]
