"""The generic-memory control's per-sequence choice: deterministic in (sample index, seed), so resumes replay it.

A training sequence uses the generic block instead of its fetched blocks when hash(seq_idx, seed) / 2**32 < prob
(paper: prob = 1/17). The hash is a 32-bit integer mixer done in int64 arithmetic without overflow (all products
stay below 2**59), so it gives the same mask on every device.
"""

from __future__ import annotations

from torch import Tensor

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**27: (x < 2**32) * _MUL never overflows int64


def _mix32(x: Tensor) -> Tensor:
    for _ in range(2):
        x = (((x >> 16) ^ x) * _MUL) & _M32
    return (x >> 16) ^ x


def generic_mask(seq_idx: Tensor, prob: float, seed: int = 0) -> Tensor:
    """seq_idx (B,) long global sample indices -> (B,) bool: True = use the generic block."""
    x = seq_idx.long()
    x = (x ^ (x >> 32)) & _M32  # fold indices beyond 2**32 in
    h = _mix32(_mix32(x) ^ (int(seed) & _M32))
    return h.double() / 2.0**32 < prob
