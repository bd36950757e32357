"""Low-precision bank storage (memory.storage.dtype=bfloat16): the number type of a bank's tables and Adam moments,
and the rounding back to it after a float32 row-wise update.

A bfloat16 table and its two moments take 6 bytes per parameter instead of 12 (the paper's 4.6B bank: 26 GiB of
training state instead of 52). The row-wise optimiser (hmem_lit/optim.py) gathers the fetched rows, updates them in
float32 exactly as it updates a float32 table, and writes them back rounded:

- the moments to nearest: each step moves them by at least (1 - beta) of the new gradient's share, far more than
  bfloat16's relative spacing of 2**-8, so rounding them loses nothing that accumulates;
- the table rows by `memory.storage.rounding`. An AdamW step is about lr; once lr has decayed to a small fraction of a
  weight's bfloat16 spacing (|w| * 2**-8), round-to-nearest returns the old weight and training stalls.
  Stochastic rounding rounds up with probability equal to the remainder's share of the spacing, so the rounded
  weight is the float32 one in expectation and small steps add up (Gupta et al. 2015; Zamirai et al. 2020).

The random bits come from a generator seeded by (seed, the group's optimiser step, the table's position in its
group): the same on every data-parallel rank (replicated tables stay equal) and after a resume (the step count is
in the optimiser's checkpointed state), so a killed and resumed run is bit for bit the uninterrupted one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dtype_of(name: str) -> torch.dtype:
    """memory.storage.dtype -> the torch dtype of the bank's tables and moments."""
    return DTYPES[name]


def generator(device: torch.device, seed: int, step: int, index: int) -> torch.Generator:
    """The generator of one table's rounding bits at one optimiser step (deterministic, rank-independent)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step)) * 1_009 + int(index) & ((1 << 63) - 1))
    return g


def random_bits(shape: tuple[int, ...] | torch.Size, gen: torch.Generator, device: torch.device) -> Tensor:
    """16 random bits per element of a tensor of `shape` (int32 in [0, 2**16)): the draw stochastic rounding adds.

    Drawn as 64-bit words (the cheapest random fill), two elements a word, in row-major order: rounding rows
    [0, n) in two parts with this draw's rows (memory.storage.async_update, storage/writeback.py) gives the same bits as
    rounding them at once."""
    n = math.prod(shape)
    noise = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(generator=gen)
    return noise.view(torch.int32)[:n].bitwise_and_(0xFFFF).view(shape)


def stochastic_round_bf16(x: Tensor, gen: torch.Generator | None = None, bits: Tensor | None = None) -> Tensor:
    """float32 x -> bfloat16, rounding each element to one of its two bfloat16 neighbours with probability
    proportional to closeness (exactly representable values, infinities and torch's NaN are unchanged).

    bfloat16 is float32's upper 16 bits. Adding uniform random bits in [0, 2**16) to the lower 16 bits of the
    (sign-magnitude) bit pattern and truncating carries into the upper half with probability remainder / 2**16:
    away from zero for either sign. (A NaN whose payload sits only in the lower 16 bits, which torch never makes,
    could come out infinite; a value beyond bfloat16's largest finite one may round to infinity, as it should.)
    The bits come from `gen` (random_bits), or are given (`bits`, x's shape)."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_bf16 takes float32, got {x.dtype}")
    if bits is None:
        if gen is None:
            raise ValueError("stochastic_round_bf16 needs a generator or the random bits")
        bits = random_bits(x.shape, gen, x.device)
    out = x.contiguous().view(torch.int32).add(bits).bitwise_right_shift_(16)
    return out.to(torch.int16).view(torch.bfloat16)


def round_to(
    x: Tensor, dtype: torch.dtype, mode: str, gen: torch.Generator | None, bits: Tensor | None = None
) -> Tensor:
    """float32 x -> dtype: to nearest (torch's cast), or stochastically (bfloat16 only; needs `gen` or `bits`)."""
    if dtype == torch.float32:
        return x
    if mode == "stochastic":
        if dtype != torch.bfloat16 or (gen is None and bits is None):
            raise ValueError(f"stochastic rounding needs bfloat16 and a generator, got {dtype}")
        return stochastic_round_bf16(x, gen, bits)
    return x.to(dtype)
