"""Same-cluster packing (../shared/PAPERS.md A5): documents of one leaf are packed into rows of seq_len + 1 tokens.

Every document ends with EOT. Within a leaf, documents that fit in a row are never split: they are placed by
first-fit decreasing (longest first, into the first row with room), so short fact documents keep their subject
and their answer in the same row and little padding is wasted. A document longer than a row fills whole rows
(without EOT) and its remainder is packed like a short document; each such continuation row starts mid-document.
Rows are padded with PAD at the end, carry their leaf's path, and are stored grouped by leaf (the sampler
shuffles globally). `doc_ptr`/`doc_ids` (CSR) record which documents each row holds.

The plan needs only the documents' lengths (`plan_leaf`: first fit found in O(log rows) by a max segment tree
over the rows' free space, so a leaf costs O(n log n)); `pack_split` then copies the tokens from a flat token file
into a memory-mapped output chunk by chunk, so packing a corpus never holds its tokens in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmem_lit import faults
from hmem_lit.utils import atomic_write


@dataclass
class Packed:
    tokens: np.ndarray  # (R, width) int32
    paths: np.ndarray  # (R, depth) int64
    doc_ptr: np.ndarray  # (R + 1,) int64: row r holds doc_ids[doc_ptr[r]:doc_ptr[r+1]]
    doc_ids: np.ndarray  # int64 document indices (global corpus ids)
    n_tokens: int  # document tokens incl. EOT (not padding)


def plan_leaf(lengths: np.ndarray, width: int, rng: np.random.Generator) -> list[list[tuple[int, int, int]]]:
    """lengths (n,) of one leaf's documents (EOT included) -> rows in their final order, each a list of pieces
    (document position in `lengths`, start offset, length) in their order in the row."""
    doc, start, plen = [], [], []
    for i, n in enumerate(np.asarray(lengths, np.int64).tolist()):
        s = 0
        while n - s > width:  # long document: whole rows first
            doc.append(i)
            start.append(s)
            plen.append(width)
            s += width
        doc.append(i)
        start.append(s)
        plen.append(n - s)
    lens = np.asarray(plen, np.int64)
    order = np.lexsort((rng.random(len(lens)), -lens))  # longest first, ties in seeded random order
    # first fit: the leftmost row with free >= L. Every piece may open a row, so len(lens) rows suffice; an unused
    # row has free == width, so "the leftmost row with room" is an open row or else the next new one.
    size = 1
    while size < max(1, len(lens)):
        size *= 2
    tree = [width] * (2 * size)
    content: list[list[int]] = []
    for j in order.tolist():
        L = plen[j]
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= L else 2 * node + 1
        r = node - size
        if r == len(content):
            content.append([])
        content[r].append(j)
        tree[node] -= L
        node //= 2
        while node:
            m = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == m:
                break
            tree[node] = m
            node //= 2
    rows = []
    for r in rng.permutation(len(content)):  # row order within the leaf, and document order within a row
        rows.append(
            [(doc[content[r][k]], start[content[r][k]], plen[content[r][k]]) for k in rng.permutation(len(content[r]))]
        )
    return rows


def plan_leaf_stream(
    lengths: np.ndarray, width: int, rng: np.random.Generator, whole: int = 0
) -> list[list[tuple[int, int, int]]]:
    """`data.packing=stream`: the leaf's documents in seeded random order, concatenated and cut into rows, so a
    document may continue in the next row of its leaf (attention stays within a document: EOT-delimited masks).
    A document of at most `whole` tokens is never cut: it starts a new row when it does not fit in the current
    one (short fact documents keep subject and answer together). Only the leaf's last row, and the gaps left
    before such documents, are padded."""
    rows: list[list[tuple[int, int, int]]] = [[]]
    used = 0
    for i in rng.permutation(len(lengths)).tolist():
        n = int(lengths[i])
        if used and n <= whole and n > width - used:
            rows.append([])
            used = 0
        s = 0
        while s < n:
            if used == width:
                rows.append([])
                used = 0
            take = min(n - s, width - used)
            rows[-1].append((i, s, take))
            used += take
            s += take
    return [r for r in rows if r]


def plan(
    lengths: np.ndarray, paths: np.ndarray, width: int, seed: int, mode: str = "ffd", whole: int = 0
) -> dict[str, np.ndarray]:
    """Plan a split: lengths (n,) and paths (n, depth) of its documents -> the pieces in output order:
    row, doc (position in the split), start, length, with row_paths (R, depth); leaves in ascending id order.
    mode: ffd (documents that fit a row are never split) | stream (plan_leaf_stream)."""
    rng = np.random.default_rng(seed)
    paths = np.asarray(paths, np.int64)
    leaves = paths[:, -1] if len(paths) else np.zeros(0, np.int64)
    order = np.argsort(leaves, kind="stable")
    bounds = np.flatnonzero(np.diff(leaves[order])) + 1 if len(order) else np.zeros(0, np.int64)
    firsts: list[int] = []  # per row: a member of its leaf (the row's path is that document's)
    parts: list[np.ndarray] = []  # per leaf: (pieces, 4) row, doc, start, length (numpy: bounded memory)
    n_rows = 0
    for members in np.split(order, bounds) if len(order) else []:
        rows = (
            plan_leaf(lengths[members], width, rng)
            if mode == "ffd"
            else plan_leaf_stream(lengths[members], width, rng, whole)
        )
        flat_rows = [(n_rows + r, d, s, n) for r, row in enumerate(rows) for d, s, n in row]
        a = np.asarray(flat_rows, np.int64).reshape(-1, 4)
        a[:, 1] = members[a[:, 1]]
        parts.append(a)
        firsts.extend([int(members[0])] * len(rows))
        n_rows += len(rows)
    depth = paths.shape[1] if paths.ndim == 2 else 1
    cols = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
    out = {k: np.ascontiguousarray(cols[:, j]) for j, k in enumerate(("row", "doc", "start", "len"))}
    out["row_paths"] = paths[np.asarray(firsts, np.int64)] if firsts else np.zeros((0, depth), np.int64)
    return out


def block_rows(width: int) -> int:
    return max(1, (1 << 22) // width)  # rows per block: ~4M tokens


def _gather(flat: np.ndarray, src: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of flat[src[i] : src[i] + lens[i]] for all i (vectorised)."""
    total = int(lens.sum())
    ends = np.cumsum(lens)
    idx = np.arange(total, dtype=np.int64) - np.repeat(ends - lens - src, lens)
    return flat[idx]


def fill(
    p: dict[str, np.ndarray],
    flat: np.ndarray | Path,
    doc_start: np.ndarray,
    width: int,
    pad_id: int,
    skip: int = 0,
) -> Iterator[np.ndarray]:
    """The planned rows, in blocks of ~4M tokens (after the first `skip` blocks): tokens of piece i are
    flat[doc_start[doc] + start : + len]. `flat` may be the path of a raw int32 token file: it is then mapped
    afresh for each block, so the pages read are not held in this process's memory across blocks."""
    n_rows = len(p["row_paths"])
    row, lens = p["row"], p["len"]
    src = doc_start[p["doc"]] + p["start"]
    first = np.ones(len(row), bool)
    first[1:] = row[1:] != row[:-1]
    csum = np.cumsum(lens) - lens  # offset of each piece in the concatenation
    row_base = np.maximum.accumulate(np.where(first, csum, 0))
    pos = csum - row_base  # offset of each piece within its row
    step = block_rows(width)
    for r0 in range(skip * step, n_rows, step):
        r1 = min(n_rows, r0 + step)
        a, b = np.searchsorted(row, [r0, r1])
        block = np.full((r1 - r0, width), pad_id, np.int32)
        if b > a:
            tokens = np.memmap(flat, np.int32, "r") if isinstance(flat, Path) else flat
            vals = _gather(tokens, src[a:b], lens[a:b])
            del tokens
            dst = _gather(np.arange(block.size, dtype=np.int64), (row[a:b] - r0) * width + pos[a:b], lens[a:b])
            block.reshape(-1)[dst] = vals
        yield block


def pack(
    doc_tokens: list[np.ndarray],
    doc_index: np.ndarray,
    paths: np.ndarray,
    seq_len: int,
    eot_id: int,
    pad_id: int,
    seed: int = 0,
    mode: str = "ffd",
    whole: int = 0,
) -> Packed:
    """doc_tokens[i] (without EOT) belongs to corpus document doc_index[i] with path paths[i] (in memory)."""
    width = seq_len + 1
    parts = [np.concatenate([np.asarray(t, np.int32), np.array([eot_id], np.int32)]) for t in doc_tokens]
    lengths = np.array([len(t) for t in parts], np.int64)
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    p = plan(lengths, paths, width, seed, mode, whole)
    blocks = list(fill(p, flat, np.cumsum(lengths) - lengths, width, pad_id))
    tokens = np.concatenate(blocks) if blocks else np.zeros((0, width), np.int32)
    return Packed(tokens, p["row_paths"], _doc_ptr(p), np.asarray(doc_index, np.int64)[p["doc"]], int(lengths.sum()))


def _doc_ptr(p: dict[str, np.ndarray]) -> np.ndarray:
    # a row holds each document at most once (a document cut across rows has one piece in each)
    ptr = np.zeros(len(p["row_paths"]) + 1, np.int64)
    ptr[1:] = np.cumsum(np.bincount(p["row"], minlength=len(p["row_paths"])))
    return ptr


def pack_split(
    flat: np.ndarray | Path,
    doc_start: np.ndarray,
    lengths: np.ndarray,
    doc_index: np.ndarray,
    paths: np.ndarray,
    width: int,
    pad_id: int,
    seed: int,
    out_dir: Path,
    name: str,
    mode: str = "ffd",
    whole: int = 0,
    key: str = "",
) -> dict:
    """Pack the documents doc_index (global ids; lengths and paths per document of the split) whose tokens lie in
    `flat` at doc_start -> out_dir/{name}_tokens.npy (memmap-written), _paths.npy, _docs.npz; returns a summary."""
    from hmem_lit.data.resume import ChunkLog
    from hmem_lit.data.stream import npy_header

    p = plan(lengths, paths, width, seed, mode, whole)
    n_rows = len(p["row_paths"])
    # block by block with plain writes (a writable memmap would count in RSS), resumable per block
    log = ChunkLog([out_dir / f"{name}_tokens.npy"], f"{key}-{name}", [npy_header((n_rows, width), np.int32)])
    reused = log.open()
    done = 0
    try:
        for block in fill(p, flat, doc_start[doc_index], width, pad_id, skip=reused):
            log.append(block.tobytes())
            done += 1
            faults.point("prepare.pack_chunk")
        log.commit()
    finally:
        log.close()
    atomic_write(out_dir / f"{name}_paths.npy", lambda tmp: np.save(open(tmp, "wb"), p["row_paths"]))
    ptr, ids = _doc_ptr(p), np.asarray(doc_index, np.int64)[p["doc"]]
    atomic_write(out_dir / f"{name}_docs.npz", lambda tmp: np.savez(open(tmp, "wb"), doc_ptr=ptr, doc_ids=ids))
    n_tok = int(np.asarray(lengths, np.int64).sum())
    return {
        "rows": n_rows,
        "doc_tokens": n_tok,
        "padding": float(1 - n_tok / max(1, n_rows * width)),
        "blocks": done,
        "blocks_reused": reused,
    }
