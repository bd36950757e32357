"""The tree stage of `hmem data prepare`: fit the router on a bounded sample, then route every document in chunks.

The k-means tree (and, with retriever.router/refine=bm25, the BM25 index and the neighbour refinement) is fitted on
the training documents of a seeded sample of at most `retriever.fit_sample` (all of them when the corpus is
smaller: then the result equals fitting on the whole corpus). Sampled training documents keep their (balanced,
refined) cluster assignment as their path (`train_paths=assigned`, the paper); held-out documents are routed like
new text, chunk by chunk, by the configured router, and training documents outside the sample by their embedding's
greedy descent (`retriever.route_unsampled=centroid`, the k-means assignment rule; ~40x cheaper than a BM25 vote)
or by the router (`route_unsampled=router`).
Writes tree/tree.npz, router.json, doc_paths.npy, stats.json (+ tree/bm25/, index_paths.npy; keys.json).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.config import ConfigError
from hmem_lit.data import stream
from hmem_lit.retriever.diagnostics import concentration, key_table
from hmem_lit.utils import atomic_write, write_json

FIT_SALT = 43  # the embedder and the tree share one sample (seeded by retriever.seed)


def fit_sample(cfg: Any, split: np.ndarray) -> np.ndarray:
    return stream.sample_train(split, cfg.retriever.fit_sample, cfg.retriever.seed, FIT_SALT)


def key_field(cfg: Any) -> str | None:
    """The documents' key field for routing diagnostics: data.key_field, else "entity" for builtin corpora."""
    return cfg.data.key_field or ("entity" if cfg.data.source == "builtin" else None)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), arr))


def doc_keys(root: Path, field: str, cfg: Any) -> list[Any]:
    """Every document's key (None: background text), streamed. With an explicit data.key_field, a document lacking
    the field is an error naming it (a typo in the field name must not silently report nothing)."""
    keys: list[Any] = []
    missing, first = 0, None
    for i, d in enumerate(stream.iter_docs(root, cfg.data.chunk_docs)):
        if field not in d:
            missing += 1
            first = first or d.get("source", f"document {i + 1}")
        v = d.get(field)
        keys.append(v if isinstance(v, (str, int)) else None)
    if cfg.data.key_field and missing:
        raise ConfigError(
            f"data.key_field={field!r}: {missing:,} of {len(keys):,} documents lack the field "
            f"(first: {first}); give every document the field (null for background text) or unset data.key_field"
        )
    return keys


def stage_tree(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.retriever.kmeans_tree import build_tree, cluster_stats
    from hmem_lit.retriever.routing import RETRIEVERS, OracleRouter

    r, chunk = cfg.retriever, cfg.data.chunk_docs
    split = np.load(root / "corpus" / "split.npy")
    tdir = root / "tree"
    tdir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"type": r.type, "branching": r.branching, "depth": r.depth, "seed": r.seed}
    if r.type == "tree":
        edir = ctx["manifest"]["stages"]["embeddings"]["info"]["dir"]
        emb_path = root / edir / "emb.npy"
        fit = fit_sample(cfg, split)
        x_fit = stream.load_rows(emb_path, fit)
        bm25 = r.router == "bm25" or r.refine == "bm25"
        tree, assign = build_tree(
            x_fit,
            r.branching,
            r.depth,
            r.balance,
            r.niter,
            r.max_points_per_centroid,
            r.seed,
            r.recenter,
            progress=ctx["progress"],
            agreement=not bm25,  # _bm25_fit sets it for the refined assignment
        )
        stats = dict(tree.stats)
        stats["fit_docs"] = int(len(fit))
        router = None
        if bm25:
            fit_paths, router = _bm25_fit(
                cfg, tree, x_fit, assign, lambda: list(stream.texts_at(root, fit, chunk)), root / edir, tdir, stats, ctx
            )
        else:
            fit_paths = assign if r.train_paths == "assigned" else tree.route(x_fit)
        del x_fit
        paths = np.zeros((len(split), r.depth), np.int64)
        paths[fit] = fit_paths
        rest = np.ones(len(split), bool)  # routed by the configured router: held-out (+ unsampled) documents
        rest[fit] = False
        by_centroid = np.zeros(len(split), bool)
        if router is not None and r.route_unsampled == "centroid":
            by_centroid = rest & (split == 0)
            rest &= ~by_centroid
        tree.save(tdir / "tree.npz")  # before routing: worker processes load the router from tree/
        t0 = time.perf_counter()
        _route_rest(root, emb_path, by_centroid, paths, tree, None, chunk, stream.Engine.of(cfg))
        _route_rest(root, emb_path, rest, paths, tree, router, chunk, stream.Engine.of(cfg), root / edir, r.knn_k)
        stats["route_rest_s"] = round(time.perf_counter() - t0, 3)
        stats["routed_docs"] = {"router": int(rest.sum()), "centroid": int(by_centroid.sum())}
        meta.update(embedder=r.embedder, embedder_dir=edir, router=r.router)
        if r.router == "bm25":
            meta["knn_k"] = r.knn_k
    else:
        docs = list(stream.iter_docs(root, chunk))  # oracle / random controls: small diagnostic corpora
        rt = (
            OracleRouter(r.branching, r.depth, r.seed, r.oracle_field)
            if r.type == "oracle"
            else RETRIEVERS.get(r.type)(r.branching, r.depth, r.seed)
        )
        paths = rt.route_records(docs)
        del docs
        stats = cluster_stats(paths[split == 0], r.branching, r.depth)
        if r.type == "oracle":
            meta["oracle_field"] = r.oracle_field
    field = key_field(cfg)
    if field:
        keys, train = doc_keys(root, field, cfg), np.nonzero(split == 0)[0]
        table = key_table([keys[i] for i in train], paths[train])
        write_json(tdir / "keys.json", table)
        stats["routing"] = {"key_field": field, **concentration(table)}
    _save_npy(tdir / "doc_paths.npy", paths.astype(np.int64))
    write_json(tdir / "stats.json", stats)
    write_json(tdir / "router.json", meta)
    return {"stats": stats, "out": ctx["file_hash"](tdir / "doc_paths.npy", tdir / "router.json")}


_ROUTER: dict[str, Any] = {}
_GRAPH: dict[str, Any] = {}


def _knn_chunk(job: tuple[str, int, Any, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The neighbours of the fitted documents start.. (their query rows) in the index saved at gdir (one load per
    process)."""
    from hmem_lit.retriever.bm25 import BM25Index

    gdir, start, queries, k, max_postings = job
    if gdir not in _GRAPH:
        _GRAPH.clear()
        index = BM25Index.load(gdir)
        df = np.bincount(index.W.indices, minlength=index.W.shape[1])
        _GRAPH[gdir] = index, (df <= max_postings).astype(np.float32)
    index, terms = _GRAPH[gdir]
    n = queries.shape[0]
    return index.topk([], k, exclude=np.arange(start, start + n), terms=terms, queries=queries)


def _knn_graph_on(
    engine: stream.Engine, index: Any, texts: Callable[[], list[str]], gdir: Path, k: int, max_postings: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """bm25.knn_graph in chunks of rows on the engine (the index saved to gdir for the workers). Every row's
    neighbours depend on that row and the index only, so the result equals knn_graph's exactly."""
    index.save(gdir)
    step = max(64, min(chunk, 4096) // 64 * 64)  # whole 64-query blocks, as topk batches them
    Q = index.fit_queries if index.fit_queries is not None else index.query_matrix(texts())
    jobs = ((str(gdir), a, Q[a : a + step], k, max_postings) for a in range(0, Q.shape[0], step))
    parts = list(stream.ordered_map(_knn_chunk, jobs, engine))
    if not parts:
        return np.full((0, k), -1, np.int64), np.zeros((0, k), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _route_chunk(job: tuple[str, str, int, list[str]]) -> np.ndarray:
    """BM25-route texts with the router saved in tree/ (loaded once per worker process)."""
    from hmem_lit.retriever.bm25 import BM25Index
    from hmem_lit.retriever.embedders import load_embedder
    from hmem_lit.retriever.kmeans_tree import KMeansTree
    from hmem_lit.retriever.routing import BM25Router

    tdir, edir, k, texts = job
    if tdir not in _ROUTER:
        _ROUTER.clear()
        t = Path(tdir)
        idx_paths = np.load(t / "index_paths.npy", allow_pickle=False)
        _ROUTER[tdir] = BM25Router(
            KMeansTree.load(t / "tree.npz"), load_embedder(edir), BM25Index.load(t / "bm25"), idx_paths, k
        )
    return _ROUTER[tdir].route(texts)


def _route_rest(
    root: Path,
    emb_path: Path,
    rest: np.ndarray,
    paths: np.ndarray,
    tree: Any,
    router: Any,
    chunk: int,
    engine: stream.Engine,
    edir: Path | None = None,
    knn_k: int = 10,
) -> None:
    """Route the documents flagged in `rest` chunk by chunk: by text (bm25 router; on the engine) or by
    embedding (centroids)."""
    if not rest.any():
        return
    if router is None:
        for a, x in stream.iter_npy_rows(emb_path, chunk):
            idx = np.nonzero(rest[a : a + len(x)])[0]
            if len(idx):
                paths[idx + a] = tree.route(np.ascontiguousarray(x[idx]))
        return
    tdir = str(root / "tree")
    if engine.kind == "local" and engine.workers <= 1:  # in this process: the router in memory
        _ROUTER.clear()
        _ROUTER[tdir] = router

    def jobs():
        for start, docs in stream.iter_doc_chunks(root, chunk):
            idx = np.nonzero(rest[start : start + len(docs)])[0]
            if len(idx):
                yield idx + start, (tdir, str(edir), knn_k, [docs[i]["text"] for i in idx])

    pending: list[np.ndarray] = []

    def texts_jobs():
        for idx, job in jobs():
            pending.append(idx)
            yield job

    for routed in stream.ordered_map(_route_chunk, texts_jobs(), engine):
        paths[pending.pop(0)] = routed
    _ROUTER.clear()


def _bm25_fit(
    cfg: Any,
    tree: Any,
    x: np.ndarray,
    assign: np.ndarray,
    texts: Callable[[], list[str]],
    embedder_dir: Path,
    tdir: Path,
    stats: dict,
    ctx: dict,
) -> tuple[np.ndarray, Any]:
    """The BM25 parts of the tree stage (retriever/bm25.py) on the fitted sample: index its documents, refine the
    clusters on their neighbour graph (refine=bm25) -> (the sample's final paths, the BM25 router for the other
    documents or None for router=centroid). Writes tree/bm25/ and tree/index_paths.npy (the voters' paths)."""
    from hmem_lit.retriever.bm25 import BM25Index, knn_graph, refine_leaves, vote_paths
    from hmem_lit.retriever.embedders import load_embedder
    from hmem_lit.retriever.kmeans_tree import cluster_stats, recenter_tree
    from hmem_lit.retriever.routing import BM25Router, leaf_to_path

    r = cfg.retriever
    t0 = time.perf_counter()
    fitting = ctx.pop("bm25_index", None)  # fitted in a worker beside the embedding stage (data/branch.py)
    # texts(): the sample's texts, read only when needed (not when the index was fitted in a worker)
    index = fitting.result() if fitting is not None else BM25Index.fit(texts(), max_df=r.bm25_max_df)
    engine = stream.Engine.of(cfg)
    if engine.kind == "local" and engine.workers <= 1:
        nbr, w = knn_graph(index, [] if index.fit_queries is not None else texts(), r.knn_k, r.graph_max_postings)
    else:
        nbr, w = _knn_graph_on(engine, index, texts, tdir / "bm25", r.knn_k, r.graph_max_postings, cfg.data.chunk_docs)
        if r.router != "bm25":
            import shutil

            shutil.rmtree(tdir / "bm25")  # saved for the workers only: an output with router=bm25
    stats["bm25"] = {"terms": len(index.vocab), "index_s": round(time.perf_counter() - t0, 3)}
    if r.refine == "bm25" and r.refine_iters > 0:
        leaves = refine_leaves(assign[:, -1], nbr, w, r.refine_iters, r.refine_cap, stats["bm25"])
        assign = leaf_to_path(leaves, tree.branching, tree.depth)
        recenter_tree(tree, x, assign)
        stats.update(cluster_stats(assign, tree.branching, tree.depth))
    # the path a prompt with each training document's text would take: bm25, the vote of its neighbours (itself
    # excluded); centroid, greedy descent
    if r.router == "bm25":
        voted_paths, voted = vote_paths(nbr, w, assign, tree.branching)
        routed = np.where(voted[:, None], voted_paths, assign)
    else:
        routed = tree.route(x)
    stats["route_agreement"] = float((routed[:, -1] == assign[:, -1]).mean()) if len(x) else 1.0
    if r.train_paths == "routed":
        assign = routed
    router = None
    if r.router == "bm25":
        router = BM25Router(tree, load_embedder(embedder_dir), index, assign, r.knn_k)
        index.save(tdir / "bm25")
        _save_npy(tdir / "index_paths.npy", assign.astype(np.int64))
    stats["bm25"]["total_s"] = round(time.perf_counter() - t0, 3)
    return assign, router
