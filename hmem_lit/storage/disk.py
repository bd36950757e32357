"""The disk backend's store: a bank's tables and their Adam moments in memory-mapped scratch files on local disk
(memory.storage.kind=disk; RAM is the default), for banks larger than host RAM (issue 21; the paper's 4.6B bank with
its moments is ~55 GB, its 21B bank ~250 GB).

A disk tensor is a float32 (or bfloat16: memory.storage.dtype) array in an unnamed temporary file
(`tempfile.TemporaryFile`: unlinked at creation, so the space returns to the filesystem when the process ends,
kill -9 included) mapped shared into the process; torch
reads and writes it like any CPU tensor, so every operation, the row-wise optimiser's included, gives bit for bit
the numbers it gives in RAM. The kernel's page cache holds the rows a run touches (the fetched rows) and writes
dirty pages back under memory pressure: a process whose memory is capped (a cgroup limit) trains a bank many
times its cap (benchmarks/bench_disk_bank.py).

The files are scratch, never state: everything a run keeps goes through its checkpoints (written from the
mappings, read back memory-mapped: train.StreamingCheckpointIO) and its final weights (written in row chunks:
write_safetensors). A table knows its store (`store_of`), so the optimiser allocates its moments there too
(`zeros_like`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_ATTR = "_hmem_store"  # set on a disk-backed parameter: the DiskStore its moments are allocated in
CHUNK_BYTES = 64 << 20  # streaming copies and writes move at most this much at a time


# torch dtype -> the numpy dtype of the same width it is mapped as (numpy has no bfloat16: its bits as uint16)
_MAP_AS = {torch.float32: np.float32, torch.bfloat16: np.uint16}


class DiskStore:
    """Allocates zero-filled float32 (or bfloat16) tensors backed by unnamed, memory-mapped files under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def zeros(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
        if dtype not in _MAP_AS:
            raise TypeError(f"a disk-backed tensor is float32 or bfloat16, not {dtype}")
        self.root.mkdir(parents=True, exist_ok=True)
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        np_dtype = np.dtype(_MAP_AS[dtype])
        with tempfile.TemporaryFile(dir=self.root, prefix=".hmem-bank-") as f:
            f.truncate(max(np_dtype.itemsize * n, 1))  # sparse: zero pages cost no disk until written
            arr = np.memmap(f, dtype=np_dtype, mode="r+", shape=(n,))  # the mapping keeps its own descriptor
        return torch.from_numpy(arr).view(dtype).view(shape)  # the tensor holds the memmap, the memmap the mapping

    def table(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A bank table `name` (level1, ...): a fresh zero-filled one (the memory type initialises it)."""
        return self.zeros(shape, dtype)

    preloaded = False  # tables come with their values (no initialisation)

    def __repr__(self) -> str:
        return f"DiskStore({str(self.root)!r})"


class MappedStore(DiskStore):
    """Serves bank tables mapped copy-on-write straight from a safetensors file (evaluating a disk-backed run: no
    copy of the bank is made, pages are read as rows are fetched; writes, if any, stay private to the process).
    Anything else it allocates (optimiser moments) is a scratch file under `root`, as DiskStore's."""

    preloaded = True

    def __init__(self, root: str | Path, tables: Mapping[str, Tensor]):
        super().__init__(root)
        self.tables = dict(tables)

    def table(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        t = self.tables.get(name)
        if t is None:  # not mappable in place (see map_safetensors): a scratch table the caller fills
            return self.zeros(shape, dtype)
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise RuntimeError(
                f"bank table {name}: the weights hold {list(t.shape)} {t.dtype}, the model needs {list(shape)} {dtype}"
            )
        return t


def attach(t: Tensor, store: DiskStore) -> Tensor:
    setattr(t, _ATTR, store)
    return t


def store_of(t: Tensor) -> DiskStore | None:
    return getattr(t, _ATTR, None)


def zeros_like(p: Tensor) -> Tensor:
    """torch.zeros_like, in p's disk store when p has one (the optimiser's moments of a disk-backed table)."""
    store = store_of(p)
    return store.zeros(p.shape, p.dtype) if store is not None else torch.zeros_like(p)


def chunk_rows(t: Tensor) -> int:
    """Rows of `t` per block of at most CHUNK_BYTES (at least one)."""
    return rows_per_block(tuple(t.shape), t.element_size())


def rows_per_block(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows of a tensor of `shape` per block of at most CHUNK_BYTES (at least one)."""
    return max(1, CHUNK_BYTES // max(1, math.prod(shape[1:]) * itemsize))


@torch.no_grad()
def copy_rows(dst: Tensor, src: Tensor) -> None:
    """dst.copy_(src) a block of rows at a time (both may be larger than RAM: pages are touched in bounded runs)."""
    if dst.dim() == 0 or dst.shape[0] == 0:
        dst.copy_(src)
        return
    step = chunk_rows(dst)
    for i in range(0, dst.shape[0], step):
        dst[i : i + step].copy_(src[i : i + step])


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
_DTYPES.update({torch.float64: "F64", torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16"})


@dataclass
class RowBlocks:
    """A tensor written by write_safetensors without existing whole: its shape, dtype, and a function yielding its
    rows in order as contiguous blocks (e.g. hmem merge assembling a bank a block at a time)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    blocks: Callable[[], Iterable[Tensor]]


def _pieces(t: Tensor) -> Iterator[memoryview]:
    t = t.detach().cpu()
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    u8 = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    for i in range(0, u8.numel(), CHUNK_BYTES):
        yield u8[i : i + CHUNK_BYTES].numpy().data  # a view of the rows: no copy


def write_safetensors(
    tensors: Mapping[str, Tensor | RowBlocks], path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """A safetensors file written tensor by tensor, in pieces of at most CHUNK_BYTES (safetensors.torch.save_file
    first copies every tensor into one in-RAM buffer). Readable by safetensors' own loaders; each tensor starts
    aligned to its element size. A RowBlocks value is written block by block as it is produced; its blocks must
    add up to its shape."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    # wider dtypes first, then by name: every tensor starts aligned to its element size (mappable in place)
    names = sorted(tensors, key=lambda k: (-torch.empty((), dtype=tensors[k].dtype).element_size(), k))
    offset, sizes = 0, {}
    for k in names:
        t = tensors[k]
        if t.dtype not in _DTYPES:
            raise TypeError(f"{k}: dtype {t.dtype} is not supported by write_safetensors")
        sizes[k] = math.prod(t.shape) * torch.empty((), dtype=t.dtype).element_size()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + sizes[k]]}
        offset += sizes[k]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k in names:
            t = tensors[k]
            written = 0
            for block in t.blocks() if isinstance(t, RowBlocks) else [t]:
                if block.dtype != t.dtype:
                    raise TypeError(f"{k}: a block of dtype {block.dtype}, the tensor is {t.dtype}")
                for piece in _pieces(block):
                    written += f.write(piece)
            if written != sizes[k]:
                raise ValueError(f"{k}: {written} bytes written, its shape {list(t.shape)} needs {sizes[k]}")
        f.flush()
        os.fsync(f.fileno())


_dirs: list[Path] = []  # scratch directories set by the caller (train: the run's experiment directory)


@contextmanager
def scratch_dir(path: str | Path) -> Iterator[None]:
    """Disk-backed banks built inside this block put their files under `path` (unless memory.storage.dir says)."""
    _dirs.append(Path(path))
    try:
        yield
    finally:
        _dirs.pop()


_mapped: list[dict[str, Tensor]] = []  # bank tables to serve mapped (load_model of a disk-backed run)


@contextmanager
def mapped_tables(tables: Mapping[str, Tensor]) -> Iterator[None]:
    """Disk-backed banks built inside this block take their tables (level1, ...) from `tables` and skip init."""
    _mapped.append(dict(tables))
    try:
        yield
    finally:
        _mapped.pop()


def store_for(scfg: Any) -> DiskStore | None:
    """The DiskStore a bank of storage config `scfg` (memory.storage) uses, or None (RAM; also on the meta device,
    where only shapes are built)."""
    if scfg.kind != "disk" or torch.empty(0).device.type == "meta":
        return None
    root = scfg.dir or (_dirs[-1] if _dirs else tempfile.gettempdir())
    return MappedStore(root, _mapped[-1]) if _mapped else DiskStore(root)


_NP = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32, "BF16": np.uint16}


def map_safetensors(path: str | Path, names: Iterable[str]) -> dict[str, Tensor]:
    """Tensors `names` of a safetensors file, memory-mapped copy-on-write (no read until a page is touched). Only
    dtypes numpy maps (F32, F16, F64, I64, I32, and BF16 as its bits) at offsets aligned to their element size;
    the rest are left out (the caller copies those)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for k in names:
        meta = header.get(k)
        if meta is None or meta["dtype"] not in _NP:
            continue
        start = 8 + n + meta["data_offsets"][0]
        dtype = np.dtype(_NP[meta["dtype"]])
        if start % dtype.itemsize or not math.prod(meta["shape"]):
            continue
        arr = np.memmap(path, dtype=dtype, mode="c", offset=start, shape=tuple(meta["shape"]))
        out[k] = torch.from_numpy(arr).view(torch.bfloat16) if meta["dtype"] == "BF16" else torch.from_numpy(arr)
    return out


@torch.no_grad()
def load_safetensors_into(module: torch.nn.Module, path: str | Path, skip: Iterable[str] = ()) -> None:
    """module.load_state_dict(strict) from a safetensors file, tensor by tensor and a block of rows at a time (a
    disk-backed bank is never read into RAM whole). The keys must match exactly; `skip`: keys already in place
    (tables mapped from this file)."""
    from safetensors import safe_open

    skipped = set(skip)
    target = module.state_dict()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(target) - keys), sorted(keys - set(target))
        if missing or unexpected:
            raise RuntimeError(
                f"{path}: keys differ from the model's (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        for k, dst in target.items():
            if k in skipped:
                continue
            sl = f.get_slice(k)
            if tuple(sl.get_shape()) != tuple(dst.shape):
                raise RuntimeError(f"{path}: {k} has shape {sl.get_shape()}, the model {list(dst.shape)}")
            if dst.dim() == 0 or dst.shape[0] == 0:
                dst.copy_(f.get_tensor(k))
                continue
            step = chunk_rows(dst)
            for i in range(0, dst.shape[0], step):
                dst[i : i + step].copy_(sl[i : i + step])
