"""A packed split: the rows of one split and their tree paths (what preparation writes and training reads)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PackedSplit:
    tokens: np.ndarray  # (N, seq_len + 1) int
    paths: np.ndarray  # (N, depth) int64, node id per tree level
    eot_id: int
    pad_id: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])
