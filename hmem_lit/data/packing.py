"""Same-cluster packing (../shared/PAPERS.md A5): documents of one leaf are packed into rows of seq_len + 1 tokens.

Every document ends with EOT. Within a leaf, documents that fit in a row are never split: they are placed by
first-fit decreasing (longest first, into the first row with room), so short fact documents keep their subject
and their answer in the same row and little padding is wasted. A document longer than a row fills whole rows
(without EOT) and its remainder is packed like a short document; each such continuation row starts mid-document.
Rows are padded with PAD at the end, carry their leaf's path, and are stored grouped by leaf (the sampler
shuffles globally). `doc_ptr`/`doc_ids` (CSR) record which documents each row holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Packed:
    tokens: np.ndarray  # (R, width) int32
    paths: np.ndarray  # (R, depth) int64
    doc_ptr: np.ndarray  # (R + 1,) int64: row r holds doc_ids[doc_ptr[r]:doc_ptr[r+1]]
    doc_ids: np.ndarray  # int64 document indices (global corpus ids)
    n_tokens: int  # document tokens incl. EOT (not padding)


def pack(
    doc_tokens: list[np.ndarray],
    doc_index: np.ndarray,
    paths: np.ndarray,
    seq_len: int,
    eot_id: int,
    pad_id: int,
    seed: int = 0,
) -> Packed:
    """doc_tokens[i] (without EOT) belongs to corpus document doc_index[i] with path paths[i]."""
    width = seq_len + 1
    rng = np.random.default_rng(seed)
    paths = np.asarray(paths, np.int64)
    leaves = paths[:, -1] if len(paths) else np.zeros(0, np.int64)
    rows: list[np.ndarray] = []
    row_paths: list[np.ndarray] = []
    row_docs: list[list[int]] = []
    n_tokens = 0
    for leaf in np.unique(leaves):
        members = np.nonzero(leaves == leaf)[0]
        pieces: list[tuple[np.ndarray, int]] = []  # (tokens, doc) pieces of at most `width` tokens
        for i in members:
            t = np.concatenate([np.asarray(doc_tokens[i], np.int32), np.array([eot_id], np.int32)])
            n_tokens += len(t)
            while len(t) > width:  # long document: whole rows first
                pieces.append((t[:width], int(doc_index[i])))
                t = t[width:]
            pieces.append((t, int(doc_index[i])))
        lengths = np.array([len(p[0]) for p in pieces])
        order = np.lexsort((rng.random(len(pieces)), -lengths))  # longest first, ties in seeded random order
        fill: list[int] = []  # used length of each open row of this leaf
        content: list[list[int]] = []
        free = np.zeros(0, np.int64)
        for j in order:
            L = int(lengths[j])
            fits = np.nonzero(free >= L)[0]
            if len(fits):
                r = int(fits[0])
            else:
                r = len(fill)
                fill.append(0)
                content.append([])
                free = np.append(free, width)
            content[r].append(int(j))
            fill[r] += L
            free[r] -= L
        path = paths[members[0]]
        for r in rng.permutation(len(content)):  # row order within the leaf, and document order within a row
            items = [content[r][k] for k in rng.permutation(len(content[r]))]
            row = np.full(width, pad_id, np.int32)
            pos = 0
            for j in items:
                t = pieces[j][0]
                row[pos : pos + len(t)] = t
                pos += len(t)
            rows.append(row)
            row_paths.append(path)
            row_docs.append(list(dict.fromkeys(pieces[j][1] for j in items)))
    ptr = np.zeros(len(rows) + 1, np.int64)
    ptr[1:] = np.cumsum([len(d) for d in row_docs])
    return Packed(
        tokens=np.stack(rows) if rows else np.zeros((0, width), np.int32),
        paths=np.stack(row_paths) if rows else np.zeros((0, paths.shape[1] if paths.ndim == 2 else 1), np.int64),
        doc_ptr=ptr,
        doc_ids=np.array([d for ds in row_docs for d in ds], np.int64),
        n_tokens=n_tokens,
    )
