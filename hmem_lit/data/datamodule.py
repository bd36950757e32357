"""The LightningDataModule: packed sequences with their cluster paths, in a deterministic, resumable order.

A split is a `PackedSplit`: token rows (N, seq_len + 1), possibly a read-only memmap, and paths (N, depth).
The training order is a pure function of (seed, optimizer step): sample k of the stream is permutation
floor(k / N) of the split, position k mod N. The sampler starts at the trainer's current global step when it is
iterated, so a resumed run sees exactly the batches an uninterrupted run would, and each rank takes its own slice
of every global batch (DDP without Lightning's distributed sampler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hmem_lit.config import RunConfig
from hmem_lit.data.split import PackedSplit  # noqa: F401 (re-exported)


class PackedDataset(Dataset):
    def __init__(self, split: PackedSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        return np.asarray(self.split.tokens[i], dtype=np.int64), np.asarray(self.split.paths[i]), i


def make_collate(eot_id: int, pad_id: int) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
    def collate(items: list[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(np.stack([it[0] for it in items]))  # (B, T + 1)
        inp, tgt = rows[:, :-1].clone(), rows[:, 1:].clone()
        is_eot = inp == eot_id
        # an EOT closes its document: its next token belongs to another document and is not predicted
        tgt[is_eot | (inp == pad_id) | (tgt == pad_id)] = -100
        doc_ids = torch.cumsum(is_eot.long(), dim=1) - is_eot.long()  # EOT belongs to the document it ends
        doc_ids = torch.where(inp == pad_id, doc_ids.max(dim=1, keepdim=True).values + 1, doc_ids)
        return {
            "input_ids": inp,
            "targets": tgt,
            "doc_ids": doc_ids,
            "paths": torch.from_numpy(np.stack([it[1] for it in items])).long(),
            "seq_idx": torch.tensor([it[2] for it in items], dtype=torch.long),
        }

    return collate


class StepBatchSampler(Sampler[list[int]]):
    """Yields micro-batches of indices from the seeded infinite stream, starting at `start_step()`."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        accumulate: int,
        total_steps: int,
        seed: int,
        start_step: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world: int = 1,
        keep: np.ndarray | None = None,
    ):
        self.n, self.bs, self.acc, self.total, self.seed = n, batch_size, accumulate, total_steps, seed
        self.start_step, self.rank, self.world = start_step, rank, world
        self.keep = keep  # optional subset of row indices (e.g. one level-1 subtree)
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            pool = np.arange(self.n) if self.keep is None else self.keep
            rng = np.random.default_rng([self.seed, epoch])
            self._perm_cache = {epoch: pool[rng.permutation(len(pool))]}
        return self._perm_cache[epoch]

    def _sample(self, k: int) -> int:
        m = self.n if self.keep is None else len(self.keep)
        return int(self._perm(k // m)[k % m])

    def batch_at(self, micro: int) -> list[int]:
        gb = self.bs * self.world
        first = micro * gb + self.rank * self.bs
        return [self._sample(k) for k in range(first, first + self.bs)]

    def __iter__(self) -> Iterator[list[int]]:
        for micro in range(self.start_step() * self.acc, self.total * self.acc):
            yield self.batch_at(micro)

    def __len__(self) -> int:
        return max(0, (self.total - self.start_step()) * self.acc)


def load_splits(cfg: RunConfig) -> tuple[PackedSplit, PackedSplit, Any]:
    """-> (train, val, tokenizer) for cfg.data.source."""
    if cfg.data.source == "toy":
        from hmem_lit.data.toy import toy_packed

        rows, paths, tok = toy_packed(
            cfg.data.toy_docs, cfg.data.seq_len, cfg.data.seed, cfg.retriever.branching, cfg.retriever.depth
        )
        rng = np.random.default_rng(cfg.data.seed)
        order = rng.permutation(len(rows))
        n_val = max(1, int(len(rows) * max(cfg.data.val_fraction, 0.05)))
        val, train = order[:n_val], order[n_val:]
        return (
            PackedSplit(rows[train], paths[train], tok.eot_id, tok.pad_id),
            PackedSplit(rows[val], paths[val], tok.eot_id, tok.pad_id),
            tok,
        )
    from hmem_lit.data.prepared import load_prepared  # built-in and bring-your-own corpora

    return load_prepared(cfg)


class HmemDataModule(L.LightningDataModule):
    def __init__(self, cfg: RunConfig, total_steps: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.total_steps = total_steps
        self.train_split, self.val_split, self.tokenizer = load_splits(cfg)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def tokens_per_step(self, world: int = 1) -> int:
        t = self.cfg.train
        return t.batch_size * t.accumulate * world * self.cfg.data.seq_len

    def _start_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def train_batch_ids(self, micro: int) -> dict[str, torch.Tensor] | None:
        """The paths and sample indices of training micro-batch `micro` (this rank's), without loading its tokens:
        the sampler is deterministic, so a later batch is known in advance (storage prefetch). None past the end."""
        sampler = getattr(self, "train_sampler", None)
        if sampler is None or micro >= sampler.total * sampler.acc:
            return None
        idx = sampler.batch_at(micro)
        paths = np.stack([np.asarray(self.train_split.paths[i]) for i in idx])
        return {"paths": torch.from_numpy(paths).long(), "seq_idx": torch.tensor(idx, dtype=torch.long)}

    def train_dataloader(self) -> DataLoader:
        t = self.cfg.train
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        keep = None
        if t.subtree is not None:
            keep = np.nonzero(np.asarray(self.train_split.paths[:, 0]) == t.subtree)[0]
            if len(keep) == 0:
                raise ValueError(f"train.subtree={t.subtree}: no training sequences under that level-1 node")
        self.train_sampler = sampler = StepBatchSampler(
            len(self.train_split),
            t.batch_size,
            t.accumulate,
            self.total_steps or 0,
            seed=t.seed,
            start_step=self._start_step,
            rank=rank,
            world=world,
            keep=keep,
        )
        return DataLoader(
            PackedDataset(self.train_split),
            batch_sampler=sampler,
            collate_fn=make_collate(self.train_split.eot_id, self.train_split.pad_id),
            num_workers=self.cfg.data.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        n = min(len(self.val_split), self.cfg.train.batch_size * max(1, self.cfg.train.val_batches))
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        idx = list(range(rank, n, world))
        subset = torch.utils.data.Subset(PackedDataset(self.val_split), idx)
        return DataLoader(
            subset,
            batch_size=self.cfg.train.batch_size,
            shuffle=False,
            collate_fn=make_collate(self.val_split.eot_id, self.val_split.pad_id),
        )
