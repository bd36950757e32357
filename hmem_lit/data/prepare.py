"""`hmem data prepare`: corpus -> tokenizer -> embeddings -> tree -> packing -> questions, cached per stage.

Every stage writes its outputs atomically into `data.dir` and records in `manifest.json` a key (a hash of the
config fields and upstream outputs it depends on: data/stages.py) and a hash of what it produced. A re-run skips
every stage whose key is unchanged and whose outputs exist, so a second `prepare` is a no-op and changing e.g.
`data.seq_len` redoes only the packing. A lock file serialises concurrent preparations of one directory (e.g.
several DDP ranks calling `prepared.load_prepared`). Stages stream the corpus in chunks with memory bounded by the chunk
and sample sizes (data/stream.py; the tree stage: data/tree_stage.py); a killed run leaves temporaries, which
the next run removes before redoing the unfinished stage, and chunk logs (data/resume.py: the embedding and
token chunks, the packing blocks), whose complete chunks it reuses. With data.workers > 1 the tokenizer branch
and the retriever's prefit (the tree's BM25 index) run beside the embedding and tree stages (data/branch.py).

Layout of `data.dir`:
    manifest.json, stats.json, ATTRIBUTION.txt (built-in corpus)
    corpus/docs.jsonl, corpus/split.npy, corpus/entities.json, corpus/info.json
    tokenizer.json
    embeddings/<embedder>-<key>/emb.npy (+ the fitted embedder: arrays and JSON)
    tree/tree.npz, tree/router.json, tree/doc_paths.npy (every document's path), tree/stats.json
    packed/{train,val}_tokens.npy (R, seq_len+1) int32, {train,val}_paths.npy (R, depth) int64,
    packed/{train,val}_docs.npz (doc_ptr, doc_ids: the documents in each row)
    questions/<probe>.jsonl, heldout/val.jsonl, heldout/wiki_val.jsonl, entity_counts.json (see questions.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit import faults
from hmem_lit.config import ConfigError
from hmem_lit.data import corpus as corpus_mod
from hmem_lit.data.branch import TokenizerBranch, can_branch, start_prefit, warm_pool
from hmem_lit.data.stages import (  # noqa: F401 (re-exported: stale_stages, other_settings, _stage_keys)
    DEPS,
    STAGES,
    _file_hash,
    _h,
    _needs_embeddings,
    _outputs,
    _read_manifest,
    _stage_keys,
    _stale,
    other_settings,
    stale_stages,
)
from hmem_lit.data.stats import corpus_stats, format_stats
from hmem_lit.data.tree_stage import key_field  # noqa: F401 (re-exported: evaluation reads it from here)
from hmem_lit.utils import atomic_write, atomic_write_text, read_json, write_json

log = logging.getLogger("hmem_lit.data")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), arr))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _say_other_settings(cfg: Any, root: Path, manifest: dict, say: Callable[[str], None]) -> None:
    diff = other_settings(cfg, manifest)
    if diff:
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(diff.items()))
        say(
            f"[prepare] {root} was prepared with other settings ({what}): redoing what they change. Runs trained "
            "on the old settings redo it in turn when resumed or evaluated (same bytes, more time); to keep both, "
            "give this config its own data.dir"
        )


@contextlib.contextmanager
def _lock(root: Path):
    made = [d for d in (root, *root.parents) if not d.exists()]  # the directories this call creates, deepest first
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        except ConfigError:  # bad input found in the data (a damaged file): the directories made for it go
            if made:
                shutil.rmtree(root, ignore_errors=True)
                for d in made[1:]:  # parents created on the way (data/ for data.dir=data/X), if still empty
                    with contextlib.suppress(OSError):
                        d.rmdir()
            raise
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pools_closed():
    """The stages share one pool of worker processes (data.workers > 1); it ends with the preparation."""
    from hmem_lit.data.stream import close_pools

    try:
        yield
    finally:
        close_pools()


# ------------------------------------------------------------------------------------------------ stages


def _stage_corpus(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.data import sources

    cdir = root / "corpus"
    cdir.mkdir(parents=True, exist_ok=True)
    skipped = sources.SkipCounter()
    if cfg.data.source == "builtin":
        docs, split, entities, info = corpus_mod.builtin_documents(cfg.data, ctx["progress"])
        n, split = corpus_mod.write_corpus(cdir, iter(zip(docs, split.tolist())))
        atomic_write_text(root / "ATTRIBUTION.txt", sources.ATTRIBUTION)
    elif cfg.data.source == "files":
        docs_in = corpus_mod.file_documents(cfg.data, skipped)
        if cfg.data.key_field:  # checked while the corpus streams: refused before anything downstream is written
            docs_in = _with_key(docs_in, cfg.data.key_field)
        n, split = corpus_mod.write_corpus(cdir, docs_in)
        entities, info = [], {}
    else:
        raise ValueError(f"data.source={cfg.data.source!r} is generated in memory and needs no preparation")
    if n == 0:
        why = skipped.summary() if skipped.total else "the files hold no text"
        raise ConfigError(
            f'data.files: no usable document ({why}); give JSONL lines with a string "text" field, or plain-text lines'
        )
    if skipped.total:  # one line for all of them, not one per line
        log.warning(skipped.summary())
    info.update(
        documents=n,
        train_docs=int((split == 0).sum()),
        val_docs=int((split == 1).sum()),
        skipped=skipped.total,
        skipped_by_reason=skipped.counts,
        skipped_examples=skipped.examples,
    )
    _save_npy(cdir / "split.npy", split)
    write_json(cdir / "entities.json", entities)
    write_json(cdir / "info.json", info)
    info["out"] = _file_hash(cdir / "docs.jsonl", cdir / "split.npy", cdir / "entities.json")
    return info


def _with_key(docs: Any, field: str) -> Any:
    """The documents, passed through; at the end, one ConfigError if any lacked the explicit data.key_field (a typo
    in the field's name must not silently report nothing)."""
    missing, first, n = 0, None, 0
    for d, s in docs:
        n += 1
        if field not in d:
            missing += 1
            first = first or d.get("source", f"document {n}")
        yield d, s
    if missing:
        raise ConfigError(
            f"data.key_field={field!r}: {missing:,} of {n:,} documents lack the field (first: {first}); give every "
            "document the field (null for background text) or unset data.key_field"
        )


def _split(root: Path) -> np.ndarray:
    return np.load(root / "corpus" / "split.npy")


def _stage_tokenizer(cfg: Any, root: Path, ctx: dict, engine: Any = None) -> dict:
    """engine: train in a worker of it (the tokenizer branch, data/branch.py) instead of in this process."""
    from hmem_lit.data import stream
    from hmem_lit.data.tokenizer import BPETokenizer, tokenizer_from_file, train_bpe

    if cfg.data.tokenizer:
        tok = tokenizer_from_file(cfg.data.tokenizer)
        sample = 0
    else:  # a bounded seeded sample of the training documents (all of them in a corpus up to that size)
        idx = stream.sample_train(_split(root), cfg.data.tokenizer_sample, cfg.data.seed, 47)
        if engine is not None:
            from tokenizers import Tokenizer

            from hmem_lit.data.branch import train_job

            job = (str(root), idx, cfg.data.chunk_docs, cfg.data.vocab_size)
            tok = BPETokenizer(Tokenizer.from_str(next(stream.ordered_map(train_job, [job], engine))))
        else:
            texts = stream.texts_at(root, idx, cfg.data.chunk_docs)
            tok = train_bpe(texts, cfg.data.vocab_size, length=len(idx), progress=ctx["progress"])
        sample = len(idx)
    tok.save(root / "tokenizer.json")
    return {
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "pad_id": tok.pad_id,
        "trained_on_docs": sample,
        "out": _file_hash(root / "tokenizer.json"),
    }


def _stage_embeddings(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.data import stream
    from hmem_lit.data.tree_stage import fit_sample
    from hmem_lit.retriever.embedders import make_embedder

    r, d = cfg.retriever, cfg.data
    rel = f"embeddings/{r.embedder}-{ctx['keys']['embeddings'][:12]}"
    edir = root / rel
    if r.device == "cuda" and d.engine == "local":  # fail before any work (dask: the workers check)
        from hmem_lit.retriever.embedders import require_cuda

        require_cuda()
    if not (edir / "emb.npy").exists() or not (edir / "embedder.json").exists():  # cache across configs
        split = _split(root)
        emb = make_embedder(r.embedder, dim=r.embed_dim, seed=r.seed, projection=r.tfidf_projection)
        emb.fit(list(stream.texts_at(root, fit_sample(cfg, split), d.chunk_docs)), progress=ctx["progress"])
        emb.save(edir)
        engine = stream.Engine.of(cfg)
        key = ctx["keys"]["embeddings"]
        chunks = stream.embed_corpus(
            edir, root, len(split), emb.dim, d.chunk_docs, engine, r.embed_dtype, emb, key, r.device
        )
        return {"dir": rel, "out": ctx["keys"]["embeddings"], **chunks}
    return {"dir": rel, "out": ctx["keys"]["embeddings"]}


def _stage_tree(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.data.tree_stage import stage_tree

    ctx["file_hash"] = _file_hash
    return stage_tree(cfg, root, ctx)


def entity_fact_paths(root: str | Path) -> dict[str, list[tuple[int, ...]]]:
    """entity name -> the tree paths of its training fact documents, from a prepared data directory (for routing
    diagnostics: an entity's main leaf is the most common of its paths)."""
    root = Path(root)
    docs = [json.loads(x) for x in open(root / "corpus" / "docs.jsonl", encoding="utf-8")]
    split, paths = np.load(root / "corpus" / "split.npy"), np.load(root / "tree" / "doc_paths.npy")
    out: dict[str, list[tuple[int, ...]]] = {}
    for d, s, p in zip(docs, split, paths):
        if s == 0 and d.get("entity"):
            out.setdefault(d["entity"], []).append(tuple(int(v) for v in p))
    return out


def _stage_packing(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.data import stream
    from hmem_lit.data.packing import pack_split
    from hmem_lit.data.tokenizer import load_tokenizer

    split = _split(root)
    tok = load_tokenizer(root)
    paths = np.load(root / "tree" / "doc_paths.npy", mmap_mode="r")
    pdir = root / "packed"
    pdir.mkdir(parents=True, exist_ok=True)
    flat_path = pdir / "doc_tokens.bin"  # every document's tokens + EOT, concatenated (deleted after packing)
    t0 = time.perf_counter()
    from hmem_lit.data.branch import tokens_key

    lengths, chunks = stream.tokenize_corpus(
        root / "tokenizer.json",
        root,
        flat_path,
        cfg.data.chunk_docs,
        len(split),
        stream.Engine.of(cfg),
        tokens_key(ctx["manifest"], cfg.data.chunk_docs),
    )
    info: dict[str, Any] = {"tokenize_s": round(time.perf_counter() - t0, 3), "tokenize_chunks": chunks}
    if "tokenized" in ctx:  # by the tokenizer branch, beside the tree stage
        info["tokenize_chunks"], info["tokenize_s"] = ctx.pop("tokenized")
    key = ctx["keys"]["packing"]
    # mapped block by block while packing
    flat: Any = stream.tokens_file(flat_path) if lengths.sum() else np.zeros(0, np.int32)
    doc_start = np.cumsum(lengths) - lengths
    for name, s in (("train", 0), ("val", 1)):
        idx = np.nonzero(split == s)[0]
        t1 = time.perf_counter()
        info[name] = pack_split(
            flat,
            doc_start,
            lengths[idx],
            idx,
            np.asarray(paths[idx]),
            cfg.data.seq_len + 1,
            tok.pad_id,
            cfg.data.seed + s,
            pdir,
            name,
            cfg.data.packing,
            cfg.data.pack_whole,
            key=key,
        )
        info[name]["pack_s"] = round(time.perf_counter() - t1, 3)
    del flat
    stream.discard_tokens(flat_path)  # only once packed: a killed or failed packing reuses the token chunks
    info["out"] = (
        _file_hash(*(pdir / f"{n}_paths.npy" for n in ("train", "val")), pdir / "train_docs.npz", pdir / "val_docs.npz")
        + f"-{info['train']['doc_tokens']}"
    )
    return info


def _stage_questions(cfg: Any, root: Path, ctx: dict) -> dict:
    from hmem_lit.data import mentions, questions, stream

    split = _split(root)
    entities = read_json(root / "corpus" / "entities.json")
    val_docs: list[dict] = []  # the held-out documents (a small share of the corpus)
    seen: set[bytes] = set()  # digests of the training texts (a fresh validation document must not be one)

    def train_texts():
        for i, d in enumerate(stream.iter_docs(root, cfg.data.chunk_docs)):
            if split[i] == 0:
                seen.add(hashlib.blake2b(d["text"].encode("utf-8"), digest_size=12).digest())
                yield d["text"]
            elif split[i] == 1:
                val_docs.append(d)

    counts = mentions.MentionCounter(entities).add_all(train_texts())
    summary: dict[str, Any] = {}
    for kind in sorted({e["kind"] for e in entities}):
        idx = [i for i, e in enumerate(entities) if e["kind"] == kind]
        b = mentions.buckets([counts[i] for i in idx], [entities[i]["name"] for i in idx])
        for i, bb in zip(idx, b):
            entities[i]["mention_count"], entities[i]["bucket"] = counts[i], bb
        if idx:
            summary[kind] = [
                [
                    min(counts[i] for i, bb in zip(idx, b) if bb == k),
                    max(counts[i] for i, bb in zip(idx, b) if bb == k),
                    sum(1 for bb in b if bb == k),
                ]
                for k in range(5)
                if k in b
            ]
    write_json(
        root / "entity_counts.json",
        {
            e["name"]: {
                "kind": e["kind"],
                "aliases": e["aliases"],
                "mention_count": e["mention_count"],
                "bucket": e["bucket"],
            }
            for e in entities
        },
    )
    leaves, route = _leaves(cfg, root, split)
    qsets = questions.build_questions(entities, cfg.data.seed, route, leaves)
    wiki_val = [{"title": d.get("title", ""), "text": d["text"]} for d in val_docs if d["kind"] == "wiki"]
    if wiki_val:
        qsets["wiki_cloze"] = questions.wiki_cloze(wiki_val)
        _write_jsonl(root / "heldout" / "wiki_val.jsonl", wiki_val)
    qdir = root / "questions"
    for old in qdir.glob("*.jsonl") if qdir.is_dir() else []:  # variants a previous version wrote and this one not
        if old.stem not in qsets:
            old.unlink()
    for name, items in qsets.items():
        _write_jsonl(qdir / f"{name}.jsonl", items)
    fresh = [  # built-in corpora: new draws of the fact documents, none equal to a training document
        d
        for d in questions.fresh_documents(entities, cfg.data.seed)
        if hashlib.blake2b(d["text"].encode("utf-8"), digest_size=12).digest() not in seen
    ]
    _write_jsonl(
        root / "heldout" / "val.jsonl",
        [{"title": d.get("title", d.get("source", "")), "kind": d.get("kind", ""), "text": d["text"]} for d in val_docs]
        + fresh,
    )
    return {
        "probes": {k: len(v) for k, v in qsets.items()},
        "buckets": summary,
        "val_docs": len(val_docs) + len(fresh),
        "out": _h(qsets),
    }


def _leaves(cfg: Any, root: Path, split: np.ndarray) -> tuple[Any, Any]:
    """-> (questions.Leaves of the training documents with a key, route(texts) -> leaf ids), or (None, None) when
    the data has no key field or no saved router (the probes then fall back to pool distractors, no prior)."""
    from hmem_lit.data import questions, stream
    from hmem_lit.retriever import load_router

    field = key_field(cfg)
    paths_file = root / "tree" / "doc_paths.npy"
    if field is None or not paths_file.is_file():
        return None, None
    router = load_router(root, cfg)
    leaf = np.load(paths_file)[:, -1]
    ents = [
        (None if split[i] != 0 or d.get(field) is None else str(d[field]))
        for i, d in enumerate(stream.iter_docs(root, cfg.data.chunk_docs))
    ]
    leaves = questions.Leaves(ents, leaf, router.branching, router.depth)
    return leaves, lambda texts: np.asarray(router.route(texts))[:, -1]


_RUN: dict[str, Callable[[Any, Path, dict], dict]] = {
    "corpus": _stage_corpus,
    "tokenizer": _stage_tokenizer,
    "embeddings": _stage_embeddings,
    "tree": _stage_tree,
    "packing": _stage_packing,
    "questions": _stage_questions,
}


# ------------------------------------------------------------------------------------------------ API


def prepare(cfg: Any, force: bool = False, progress: bool = True, verbose: bool = True) -> Path:
    """Run the stale stages (all with force=True) -> the data directory. Prints per-stage timing."""
    root = Path(cfg.data.dir)
    if cfg.data.source == "toy":
        raise ValueError("data.source=toy is generated in memory: nothing to prepare (use builtin or files)")
    from hmem_lit.console import progress as bars

    progress = progress and bars()  # `hmem -q`: no bars
    say = (lambda m: log.info(m)) if verbose else (lambda m: None)
    with _lock(root), _pools_closed():
        from hmem_lit.data.stream import remove_stale_temporaries

        for p in remove_stale_temporaries(root):  # left by a killed run: the stage that wrote it is redone
            say(f"[prepare] removed {p.relative_to(root)} (an interrupted write)")
        manifest = _read_manifest(root)
        manifest.setdefault("stages", {})
        ctx: dict[str, Any] = {"progress": progress, "manifest": manifest}
        if force:  # nothing of an interrupted run is reused either
            for p in [*root.rglob(".*.partial"), *root.rglob(".*.progress.json")]:
                p.unlink()
        dirty = force
        if force or stale_stages(cfg):
            warm_pool(cfg)
        branch: Any = None  # the tokenizer branch (data/branch.py), running beside embeddings and tree
        branch_key = ""

        _say_other_settings(cfg, root, manifest, say)
        fields: dict[str, dict] = {}
        _stage_keys(cfg, manifest, fields)

        def record(s: str, key: str, info: dict, dt: float) -> None:
            out = info.pop("out")
            manifest["stages"][s] = {"key": key, "out": out, "time_s": round(dt, 3), "info": info}
            manifest["stages"][s]["fields"] = fields[s]  # what other_settings compares a later config with
            # this process's peak RSS so far (Linux: KiB): which stage sets the memory high-water mark
            manifest["stages"][s]["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            write_json(root / "manifest.json", manifest)
            faults.point("prepare.stage")
            say(f"[prepare] {s:<10} done in {dt:.1f}s")

        for s in STAGES:
            if branch is not None and "tokenizer" in DEPS[s]:
                info, dt, chunks, tok_s = branch.result()
                branch = None
                record("tokenizer", branch_key, info, dt)
                ctx["tokenized"] = chunks, round(tok_s, 3)
            keys = _stage_keys(cfg, manifest)
            if s == "embeddings" and (dirty or _stale(cfg, "tree", keys, manifest)):
                ctx["prefit"] = start_prefit(cfg, root)  # beside the embedding stage (workers > 1)
            if not dirty and not _stale(cfg, s, keys, manifest):
                say(f"[prepare] {s:<10} cached")
                continue
            if s == "embeddings" and keys[s] == "none":
                manifest["stages"][s] = {"key": "none", "out": "none", "info": {}, "time_s": 0.0}
                continue
            ctx["keys"] = keys
            if s == "tokenizer" and can_branch(cfg):
                branch, branch_key = TokenizerBranch(_stage_tokenizer, cfg, root, ctx), keys[s]
                say("[prepare] tokenizer  started beside the embedding and tree stages")
                continue
            t0 = time.perf_counter()
            info = _RUN[s](cfg, root, ctx)
            record(s, keys[s], info, time.perf_counter() - t0)
        ctx.pop("tokenized", None)
        ctx.pop("prefit", None)
        write_json(root / "manifest.json", manifest)
        stats = corpus_stats(manifest, STAGES)
        write_json(root / "stats.json", stats)
    if verbose:
        print(format_stats(stats))
    return root


def prepare_main(cfg: Any, force: bool = False) -> int:
    """CLI verb `hmem data prepare <experiment.yaml> [key=value]` -> exit status."""
    if cfg.data.source == "toy":
        print(
            "data.source=toy is generated in memory: nothing to prepare (set data.source=builtin or data.source=files)",
            file=sys.stderr,
        )
        return 2
    try:
        prepare(cfg, force=force)
    except ConfigError as e:
        print(f"hmem data prepare: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hmem data prepare: {e}", file=sys.stderr)
        return 1
    return 0
