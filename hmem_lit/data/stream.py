"""Corpus-scale helpers for `hmem data prepare`: chunked reading of corpus/docs.jsonl, seeded bounded samples,
the engine (`ordered_map`: chunks in this process, a pool of spawned workers or dask), chunked embedding into a
.npy and chunked tokenization into a flat file, both resumable chunk by chunk (data/resume.py).

Memory is bounded by `data.chunk_docs` and the sample sizes (`data.tokenizer_sample`, `retriever.fit_sample`),
never by the corpus: nothing here holds every document. Outputs do not depend on the chunk size or on
`data.workers` (chunks are processed independently, row by row, and written in corpus order).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit import faults


def iter_doc_chunks(root: Path, chunk: int, skip: int = 0) -> Iterator[tuple[int, list[dict]]]:
    """(index of the first document, documents) for consecutive chunks of corpus/docs.jsonl, after the first
    `skip` chunks (passed over unparsed: chunks a resumed stage already wrote)."""
    path = Path(root) / "corpus" / "docs.jsonl"
    start, buf = 0, []
    with open(path, encoding="utf-8") as f:
        for _ in range(skip * chunk):
            if not f.readline():
                return
            start += 1
        for lineno, line in enumerate(f, start + 1):
            try:
                buf.append(json.loads(line))
            except json.JSONDecodeError as e:  # a damaged shard must name itself
                raise ValueError(f"{path}:{lineno}: unreadable document ({e.msg}); rerun with --force") from None
            if len(buf) == chunk:
                yield start, buf
                start, buf = start + len(buf), []
    if buf:
        yield start, buf


def iter_docs(root: Path, chunk: int) -> Iterator[dict]:
    for _, docs in iter_doc_chunks(root, chunk):
        yield from docs


def sample_train(split: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    """Sorted indices of at most n training documents (all of them, in order, when n is 0 or covers them all)."""
    train = np.nonzero(split == 0)[0]
    if n <= 0 or n >= len(train):
        return train
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.choice(train, n, replace=False))


def texts_at(root: Path, idx: np.ndarray, chunk: int) -> Iterator[str]:
    """The texts of the documents at sorted indices idx, streamed."""
    idx = np.asarray(idx, np.int64)
    j = 0
    for start, docs in iter_doc_chunks(root, chunk):
        end = start + len(docs)
        while j < len(idx) and idx[j] < end:
            yield docs[int(idx[j]) - start]["text"]
            j += 1
        if j == len(idx):
            return


@dataclass(frozen=True)
class Engine:
    """Where chunks run: `local` (this process, or `workers` spawned processes) or `dask` (a dask.distributed
    cluster at `address`, e.g. tcp://scheduler:8786; empty: a LocalCluster of `workers` processes)."""

    workers: int = 1
    kind: str = "local"
    address: str = ""

    @classmethod
    def of(cls, cfg: Any) -> Engine:
        return cls(cfg.data.workers, cfg.data.engine, cfg.data.engine_address)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], engine: Engine) -> Iterator[Any]:
    """fn over items, results in the items' order (so outputs never depend on the engine or the worker count),
    with a bounded number of chunks in flight (bounded memory). Local workers are spawned, not forked: the parent
    may hold OpenMP (faiss, torch) threads."""
    if engine.kind == "dask":
        yield from _dask_map(fn, items, engine)
        return
    workers = engine.workers
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = _pool(workers)
    pending: list[Any] = []
    try:
        for it in items:
            pending.append(pool.submit(fn, it))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for fut in pending:  # the consumer stopped early (an error): drop what has not started
            fut.cancel()


_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOL_LOCK = threading.Lock()  # the tokenizer branch (data/branch.py) submits from a second thread


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool of spawned workers per preparation, shared by its stages (spawning costs the imports, ~2 s a
    worker here); `close_pools` ends it."""
    with _POOL_LOCK:
        if workers not in _POOLS:
            import multiprocessing as mp

            while _POOLS:
                _POOLS.popitem()[1].shutdown(cancel_futures=True)
            _POOLS[workers] = ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),)
            )
        return _POOLS[workers]


def _exit_with_parent(parent: int) -> None:
    """In each worker: exit when the preparing process is gone (killed: a worker blocked on its job queue would
    otherwise wait forever, holding the parent's stdout and stderr open)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hmem-parent-watch").start()


def close_pools() -> None:
    with _POOL_LOCK:
        while _POOLS:
            _POOLS.popitem()[1].shutdown(cancel_futures=True)


def _dask_map(fn: Callable[[Any], Any], items: Iterable[Any], engine: Engine) -> Iterator[Any]:
    from collections import deque

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError("data.engine=dask needs dask.distributed: pip install 'hmem_lit[dask]'") from None
    cluster = None
    if engine.address:
        client = Client(engine.address)
    else:
        cluster = LocalCluster(
            n_workers=engine.workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        client = Client(cluster)
    try:
        slots = 2 * max(1, sum(client.nthreads().values()))
        pending: deque[Any] = deque()
        for it in items:
            pending.append(client.submit(fn, it, pure=False))
            if len(pending) >= slots:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


_EMBEDDER: dict[str, Any] = {}


def _embed_chunk(job: tuple[str, str, list[str]]) -> np.ndarray:
    from hmem_lit.retriever.embedders import load_embedder

    edir, device, texts = job
    if edir not in _EMBEDDER:  # one load per process
        _EMBEDDER.clear()
        _EMBEDDER[edir] = load_embedder(edir, device)
    return _EMBEDDER[edir].embed(texts)


def embed_corpus(
    edir: Path,
    root: Path,
    n_docs: int,
    dim: int,
    chunk: int,
    engine: Engine,
    dtype: str,
    embedder: Any = None,
    key: str = "",
    device: str = "cpu",
) -> dict:
    """Embed every document of the corpus in chunks into edir/emb.npy (N, dim), appended chunk by chunk and
    renamed into place when complete; a killed run's complete chunks are reused (data/resume.py, `key`: what
    the chunks depend on besides the chunk size). `embedder`: the fitted embedder (used in-process when
    workers == 1); device: where the chunks embed (retriever.device). -> {"chunks": computed, "reused": chunks
    taken from an interrupted run}."""
    from hmem_lit.data.resume import ChunkLog
    from hmem_lit.retriever.embedders import on_device

    if embedder is not None and engine.kind == "local" and engine.workers <= 1:
        _EMBEDDER.clear()
        _EMBEDDER[str(edir)] = on_device(embedder, device)
    log = ChunkLog([edir / "emb.npy"], f"{key}-{chunk}-{dtype}-{n_docs}x{dim}", [npy_header((n_docs, dim), dtype)])
    reused = log.open()
    pos, done = min(n_docs, reused * chunk), 0
    try:
        jobs = ((str(edir), device, [d["text"] for d in docs]) for _, docs in iter_doc_chunks(root, chunk, skip=reused))
        for x in ordered_map(_embed_chunk, jobs, engine):
            log.append(np.ascontiguousarray(x, np.dtype(dtype)).tobytes())
            pos += len(x)
            done += 1
            faults.point("prepare.embed_chunk")
        if pos != n_docs:
            raise RuntimeError(f"embedded {pos} documents, the corpus has {n_docs}")
        log.commit()
    finally:
        log.close()
    return {"chunks": done, "reused": reused}


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files a killed preparation left (atomic_write's `.<name>.<rand>.tmp`, the token
    file's `.tmp`); only called under the preparation lock, so no live writer owns them."""
    gone = []
    for p in Path(root).rglob("*.tmp"):
        if p.is_file():
            p.unlink()
            gone.append(p)
    return gone


def write_npy_header(f: Any, shape: tuple[int, ...], dtype: Any) -> None:
    """The .npy header np.save would write for an array of this shape and dtype (rows are then appended with
    f.write: plain writes, unlike a writable memmap, do not count the written pages in this process's RSS)."""
    f.write(npy_header(shape, dtype))


def npy_header(shape: tuple[int, ...], dtype: Any) -> bytes:
    import io

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        b, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return b.getvalue()


def iter_npy_rows(path: Path, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows as float32) of a 2-D .npy in chunks, read with plain file reads (bounded RSS)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-order 2-D array, got shape {shape}")
        row_bytes = int(shape[1]) * dtype.itemsize
        for start in range(0, int(shape[0]), chunk):
            m = min(chunk, int(shape[0]) - start)
            buf = f.read(m * row_bytes)
            if len(buf) != m * row_bytes:
                raise ValueError(f"{path}: truncated at row {start} (rerun `hmem data prepare --force`)")
            yield start, np.frombuffer(buf, dtype).reshape(m, shape[1]).astype(np.float32)


def load_rows(path: Path, idx: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    """Rows idx (sorted) of an embedding matrix as float32, read chunk by chunk."""
    idx = np.asarray(idx, np.int64)
    parts = []
    for start, x in iter_npy_rows(path, chunk):
        lo, hi = np.searchsorted(idx, [start, start + len(x)])
        if hi > lo:
            parts.append(x[idx[lo:hi] - start])
    dim = np.load(path, mmap_mode="r").shape[1]
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))


_TOKENIZER: dict[str, Any] = {}


def _tokenize_chunk(job: tuple[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """-> (the texts' tokens, each followed by EOT, as one int32 array; their lengths, EOT included)."""
    from hmem_lit.data.tokenizer import tokenizer_from_file

    path, texts = job
    if path not in _TOKENIZER:  # one load per process
        _TOKENIZER.clear()
        _TOKENIZER[path] = tokenizer_from_file(path)
    tok = _TOKENIZER[path]
    eot = np.array([tok.eot_id], np.int32)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    for batch in _by_chars(texts, TOKENIZE_CHARS):  # the tokenizer's per-token objects live for one batch only
        for t in tok.encode_batch(batch):
            parts += [np.asarray(t, np.int32), eot]
            lengths.append(len(t) + 1)
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return flat, np.asarray(lengths, np.int64)


TOKENIZE_CHARS = 2_000_000  # characters handed to the tokenizer at once (its per-token objects are ~100x the ids)


def _by_chars(texts: list[str], limit: int) -> Iterator[list[str]]:
    """Consecutive batches of texts holding at most `limit` characters (a longer text is a batch of its own)."""
    batch: list[str] = []
    n = 0
    for t in texts:
        if batch and n + len(t) > limit:
            yield batch
            batch, n = [], 0
        batch.append(t)
        n += len(t)
    if batch:
        yield batch


def tokenize_corpus(
    tok_path: Path, root: Path, out: Path, chunk: int, n_docs: int, engine: Engine, key: str = ""
) -> tuple[np.ndarray, dict]:
    """Every document's tokens followed by EOT, concatenated as int32 into the flat file `out` (chunks on the
    engine, written in corpus order; a killed run's complete chunks are reused) -> (lengths (N,) int64, EOT
    included, {"chunks": computed, "reused": reused}); document i starts at the cumulative sum of the lengths
    before it. The file stays a resumable log (`.out.partial`) until `discard_tokens(out)`."""
    from hmem_lit.data.resume import ChunkLog

    log = ChunkLog([out, out.with_name(out.name + ".lengths")], f"{key}-{chunk}-{n_docs}")
    reused = log.open()
    done = 0
    try:
        jobs = ((str(tok_path), [d["text"] for d in docs]) for _, docs in iter_doc_chunks(root, chunk, skip=reused))
        for flat, lengths in ordered_map(_tokenize_chunk, jobs, engine):
            log.append(flat.tobytes(), lengths.tobytes())
            done += 1
            faults.point("prepare.tokenize_chunk")
        log.commit(rename=False)
    finally:
        log.close()
        _TOKENIZER.clear()
    lengths = np.fromfile(log.partials[1], np.int64)
    if len(lengths) != n_docs:
        raise RuntimeError(f"tokenized {len(lengths)} documents, the corpus has {n_docs}")
    return lengths, {"chunks": done, "reused": reused}


def tokens_file(out: Path) -> Path:
    """Where tokenize_corpus's flat token file lies (read it as raw int32)."""
    from hmem_lit.data.resume import _partial

    return _partial(out)


def discard_tokens(out: Path) -> None:
    from hmem_lit.data.resume import ChunkLog

    ChunkLog([out, out.with_name(out.name + ".lengths")], "").discard()
