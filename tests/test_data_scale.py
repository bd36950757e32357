"""Corpus-scale preparation (data/stream.py, data/tree_stage.py, data/packing.py): the O(n log n) packing plan
equals the reference first-fit scan exactly; outputs do not depend on the chunk size or the number of workers;
bounded samples for the tokenizer and the tree; packed rows are read memory-mapped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hmem_lit.config import load_config
from hmem_lit.data.packing import pack
from hmem_lit.data.prepare import prepare, stale_stages
from hmem_lit.data.prepared import load_prepared


def _reference_pack(doc_tokens, doc_index, paths, seq_len, eot_id, pad_id, seed=0):
    """The packing before the corpus-scale change (first fit by a scan over every open row), kept as the oracle."""
    width = seq_len + 1
    rng = np.random.default_rng(seed)
    paths = np.asarray(paths, np.int64)
    leaves = paths[:, -1]
    rows, row_paths, row_docs = [], [], []
    for leaf in np.unique(leaves):
        members = np.nonzero(leaves == leaf)[0]
        pieces = []
        for i in members:
            t = np.concatenate([np.asarray(doc_tokens[i], np.int32), np.array([eot_id], np.int32)])
            while len(t) > width:
                pieces.append((t[:width], int(doc_index[i])))
                t = t[width:]
            pieces.append((t, int(doc_index[i])))
        lengths = np.array([len(p[0]) for p in pieces])
        order = np.lexsort((rng.random(len(pieces)), -lengths))
        content: list[list[int]] = []
        free = np.zeros(0, np.int64)
        for j in order:
            fits = np.nonzero(free >= lengths[j])[0]
            if len(fits):
                r = int(fits[0])
            else:
                r = len(content)
                content.append([])
                free = np.append(free, width)
            content[r].append(int(j))
            free[r] -= lengths[j]
        for r in rng.permutation(len(content)):
            items = [content[r][k] for k in rng.permutation(len(content[r]))]
            row = np.full(width, pad_id, np.int32)
            pos = 0
            for j in items:
                row[pos : pos + len(pieces[j][0])] = pieces[j][0]
                pos += len(pieces[j][0])
            rows.append(row)
            row_paths.append(paths[members[0]])
            row_docs.append(list(dict.fromkeys(pieces[j][1] for j in items)))
    ptr = np.zeros(len(rows) + 1, np.int64)
    ptr[1:] = np.cumsum([len(d) for d in row_docs])
    return np.stack(rows), np.stack(row_paths), ptr, np.array([d for ds in row_docs for d in ds], np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_plan_equals_the_reference_first_fit(seed):
    rng = np.random.default_rng(seed)
    n, L = 400, 24
    lens = np.where(rng.random(n) < 0.1, rng.integers(20, 90, n), rng.integers(0, 20, n))  # some longer than a row
    docs = [rng.integers(2, 500, k).astype(np.int32) for k in lens]
    leaf = rng.integers(0, 7, n)
    paths = np.stack([leaf // 4, leaf], 1)
    index = rng.permutation(10 * n)[:n]
    got = pack(docs, index, paths, L, eot_id=0, pad_id=1, seed=seed)
    tokens, rpaths, ptr, ids = _reference_pack(docs, index, paths, L, 0, 1, seed=seed)
    np.testing.assert_array_equal(got.tokens, tokens)
    np.testing.assert_array_equal(got.paths, rpaths)
    np.testing.assert_array_equal(got.doc_ptr, ptr)
    np.testing.assert_array_equal(got.doc_ids, ids)
    assert got.n_tokens == int(lens.sum()) + n


def _corpus(path: Path, n: int = 600) -> Path:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)] + ["alpha", "beta", "gamma", "delta", "river", "mountain", "city"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = int(rng.integers(3, 60))
            f.write(json.dumps({"text": " ".join(rng.choice(words, k)) + f" doc{i % 50}."}) + "\n")
    return path


def _cfg(d: Path, corpus: Path, *extra: str):
    return load_config(
        None,
        [
            "data.source=files",
            f"data.files=[{corpus}]",
            f"data.dir={d}",
            "data.vocab_size=400",
            "data.seq_len=32",
            "data.val_fraction=0.05",
            "retriever.branching=4",
            "retriever.depth=2",
            "retriever.embed_dim=32",
            *extra,
        ],
    )


def _outputs(d: Path) -> dict[str, bytes]:
    skip = {"manifest.json", "stats.json", ".prepare.lock"}
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("scale") / "docs.jsonl")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    prepare(_cfg(d, corpus), progress=False, verbose=False)
    return _outputs(d)


def test_chunk_size_never_changes_the_outputs(corpus, reference, tmp_path):
    prepare(_cfg(tmp_path, corpus, "data.chunk_docs=7"), progress=False, verbose=False)
    got = _outputs(tmp_path)
    assert got.keys() == reference.keys()
    assert [k for k in got if got[k] != reference[k]] == []


def test_workers_never_change_the_outputs(corpus, reference, tmp_path):
    # on the workers: embedding, tokenization, BM25 kNN graph and held-out routing chunks
    prepare(_cfg(tmp_path, corpus, "data.chunk_docs=100", "data.workers=2"), progress=False, verbose=False)
    got = _outputs(tmp_path)
    assert [k for k in got if got.get(k) != reference.get(k)] == [] and got.keys() == reference.keys()
    assert _chunk_counts(tmp_path)["tokenize"] == (6, 0)


@pytest.mark.slow  # ~8 s; the default test above covers the graph on the workers with router=bm25
def test_workers_never_change_the_refinement_graph_without_the_bm25_router(corpus, tmp_path):
    # router=centroid: the index is saved for the graph's workers only, and removed again
    one, two = tmp_path / "one", tmp_path / "two"
    prepare(_cfg(one, corpus, "retriever.tree.router=centroid"), progress=False, verbose=False)
    prepare(_cfg(two, corpus, "retriever.tree.router=centroid", "data.workers=2"), progress=False, verbose=False)
    a, b = _outputs(one), _outputs(two)
    assert a.keys() == b.keys() and not any(k.startswith("tree/bm25") for k in a)
    assert [k for k in a if a[k] != b[k]] == []


def test_bounded_samples_fit_the_tokenizer_and_the_tree(corpus, tmp_path):
    cfg = _cfg(tmp_path, corpus, "data.tokenizer_sample=200", "retriever.fit_sample=300", "data.chunk_docs=64")
    prepare(cfg, progress=False, verbose=False)
    m = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert m["tokenizer"]["info"]["trained_on_docs"] == 200
    assert m["tree"]["info"]["stats"]["fit_docs"] == 300
    # the voters of the BM25 router are exactly the fitted sample
    assert len(np.load(tmp_path / "tree" / "index_paths.npy")) == 300
    paths = np.load(tmp_path / "tree" / "doc_paths.npy")
    split = np.load(tmp_path / "corpus" / "split.npy")
    assert paths.shape == (len(split), 2) and (paths[:, 0] == paths[:, 1] // 4).all() and (paths[:, 1] < 16).all()
    # every document is packed exactly once (as one or more pieces), with its routed path
    for name, s in (("train", 0), ("val", 1)):
        z = np.load(tmp_path / "packed" / f"{name}_docs.npz")
        assert set(z["doc_ids"].tolist()) == set(np.nonzero(split == s)[0].tolist())
        rows = np.load(tmp_path / "packed" / f"{name}_paths.npy")
        row_of = np.repeat(np.arange(len(rows)), np.diff(z["doc_ptr"]))
        np.testing.assert_array_equal(rows[row_of], paths[z["doc_ids"]])
    # a sample-size change redoes only what it feeds
    assert stale_stages(_cfg(tmp_path, corpus, "data.tokenizer_sample=100", "retriever.fit_sample=300")) == [
        "tokenizer",
        "packing",
    ]


def test_float16_embeddings_and_memory_mapped_rows(corpus, tmp_path):
    cfg = _cfg(tmp_path, corpus, "retriever.embed_dtype=float16")
    train, val, _ = load_prepared(cfg)
    emb = next(tmp_path.glob("embeddings/*/emb.npy"))
    x = np.load(emb, mmap_mode="r")
    assert x.dtype == np.float16 and x.shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert isinstance(train.tokens, np.memmap) and isinstance(val.tokens, np.memmap)


@pytest.mark.parametrize("whole", [0, 10])
def test_stream_packing_cuts_only_long_documents_and_pads_little(whole):
    rng = np.random.default_rng(3)
    n, L = 300, 24
    lens = rng.integers(0, 60, n)
    docs = [rng.integers(2, 500, k).astype(np.int32) for k in lens]
    leaf = rng.integers(0, 3, n)
    paths = np.stack([leaf, leaf], 1)
    p = pack(docs, np.arange(n), paths, L, eot_id=0, pad_id=1, seed=0, mode="stream", whole=whole)
    # each document's tokens, read back in row order, are the document + EOT; every row holds one leaf
    pieces: dict[int, list[np.ndarray]] = {}
    for r in range(len(p.tokens)):
        row, pos = p.tokens[r], 0
        for d in p.doc_ids[p.doc_ptr[r] : p.doc_ptr[r + 1]]:
            assert p.paths[r, -1] == leaf[d]
            need = len(docs[d]) + 1 - sum(len(x) for x in pieces.get(d, []))
            take = min(need, L + 1 - pos)
            pieces.setdefault(int(d), []).append(row[pos : pos + take])
            pos += take
        assert (row[pos:] == 1).all()
    for d in range(n):
        np.testing.assert_array_equal(np.concatenate(pieces[d]), np.append(docs[d], 0))
        if len(docs[d]) + 1 <= whole:
            assert len(pieces[d]) == 1  # short documents are never cut
    padding = 1 - p.n_tokens / p.tokens.size
    if whole == 0:  # only the last row of each leaf is padded
        assert (p.tokens == 1).sum() < 3 * (L + 1)
    assert padding < 0.05


@pytest.mark.slow
def test_dask_engine_on_a_two_worker_local_cluster_equals_the_single_process_engine(corpus, reference, tmp_path):
    pytest.importorskip("distributed")
    cfg = _cfg(tmp_path, corpus, "data.engine=dask", "data.workers=2", "data.chunk_docs=64")
    prepare(cfg, progress=False, verbose=False)
    got = _outputs(tmp_path)
    assert got.keys() == reference.keys()
    assert [k for k in got if got[k] != reference[k]] == []


def _prepare_cli(d: Path, corpus: Path, kill_at: str | None, *extra: str):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("HMEM_KILL_AT", None)
    if kill_at:
        env["HMEM_KILL_AT"] = kill_at
    args = [
        "data.source=files",
        f"data.files=[{corpus}]",
        f"data.dir={d}",
        "data.vocab_size=400",
        "data.seq_len=32",
        "data.val_fraction=0.05",
        "retriever.branching=4",
        "retriever.depth=2",
        "retriever.embed_dim=32",
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", "data", "prepare", str(root / "experiments" / "000_debug.yaml"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _chunk_counts(d: Path) -> dict[str, tuple[int, int]]:
    """(computed, reused) chunks of the chunked stages, as the last run recorded them in the manifest."""
    st = json.loads((d / "manifest.json").read_text())["stages"]
    e, p = st["embeddings"]["info"], st["packing"]["info"]
    return {
        "embed": (e.get("chunks", 0), e.get("reused", 0)),
        "tokenize": (p["tokenize_chunks"]["chunks"], p["tokenize_chunks"]["reused"]),
        "pack_train": (p["train"]["blocks"], p["train"]["blocks_reused"]),
    }


# 600 documents in chunks of 100: 6 embedding and 6 tokenization chunks; each split packs in 1 block. The rerun
# recomputes only the chunks the killed run had not recorded as complete.
@pytest.mark.parametrize(
    "kill_at, counts",
    [
        ("prepare.embed_chunk@2", {"embed": (4, 2)}),
        ("prepare.chunk_unrecorded@4", {"embed": (3, 3)}),  # chunk 4 written, not recorded: cut and redone
        ("prepare.tokenize_chunk@5", {"embed": (6, 0), "tokenize": (1, 5)}),
        ("prepare.pack_chunk@1", {"tokenize": (0, 6), "pack_train": (0, 1)}),
    ],
)
def test_killed_prepare_reruns_to_byte_identical_outputs_reusing_complete_chunks(
    corpus, reference, tmp_path, kill_at, counts
):
    first = _prepare_cli(tmp_path, corpus, kill_at, "data.chunk_docs=100")
    assert first.returncode == -9, first.stderr[-2000:]
    again = _prepare_cli(tmp_path, corpus, None, "data.chunk_docs=100")
    assert again.returncode == 0, again.stderr[-2000:]
    got = _outputs(tmp_path)
    assert got.keys() == reference.keys()  # no partial file or progress record is left
    assert [k for k in got if got[k] != reference[k]] == []
    done = _chunk_counts(tmp_path)
    assert {k: done[k] for k in counts} == counts


@pytest.mark.slow  # ~30 s: two prepares spawning workers
def test_killed_two_worker_prepare_reruns_to_byte_identical_outputs(corpus, reference, tmp_path):
    # killed inside the tokenizer branch (a driver thread) while the main thread embeds: the workers only compute,
    # so nothing is left writing; the rerun reuses the recorded token chunks
    first = _prepare_cli(tmp_path, corpus, "prepare.tokenize_chunk@3", "data.chunk_docs=100", "data.workers=2")
    assert first.returncode == -9, first.stderr[-2000:]
    again = _prepare_cli(tmp_path, corpus, None, "data.chunk_docs=100", "data.workers=2")
    assert again.returncode == 0, again.stderr[-2000:]
    got = _outputs(tmp_path)
    assert got.keys() == reference.keys()
    assert [k for k in got if got[k] != reference[k]] == []
    assert _chunk_counts(tmp_path)["tokenize"] == (3, 3)


def test_chunk_log_never_reuses_a_short_or_foreign_partial_file(tmp_path):
    from hmem_lit.data.resume import ChunkLog

    out = tmp_path / "x.bin"
    log = ChunkLog([out], "k1", [b"HEAD"])
    assert log.open() == 0
    log.append(b"aaaa")
    log.append(b"bbbb")
    log.close()
    with open(log.partials[0], "ab") as f:  # a third chunk was being written when the process died
        f.write(b"cc")
    log = ChunkLog([out], "k1", [b"HEAD"])
    assert log.open() == 2  # the unrecorded bytes are cut
    log.append(b"dddd")
    log.commit()
    assert out.read_bytes() == b"HEADaaaabbbbdddd" and not log.partials[0].exists() and not log.record.exists()
    log = ChunkLog([out], "k1", [b"HEAD"])
    log.open()
    log.append(b"eeee")
    log.close()
    assert ChunkLog([out], "k2", [b"HEAD"]).open() == 0  # another key (config): afresh
    log = ChunkLog([out], "k1", [b"HEAD"])
    log.open()
    log.append(b"ffff")
    log.close()
    with open(log.partials[0], "r+b") as f:  # shorter than recorded (lost writes): afresh
        f.truncate(6)
    assert ChunkLog([out], "k1", [b"HEAD"]).open() == 0


def test_a_changed_corpus_file_is_redone_and_a_damaged_document_names_itself(tmp_path):
    import os

    src = _corpus(tmp_path / "c.jsonl", n=120)
    d = tmp_path / "data"
    prepare(_cfg(d, src), progress=False, verbose=False)
    assert stale_stages(_cfg(d, src)) == []
    with open(src, "a", encoding="utf-8") as f:  # the file changes between runs: size and mtime
        f.write(json.dumps({"text": "one more document about the river"}) + "\n")
    os.utime(src, ns=(1, 1))
    assert stale_stages(_cfg(d, src))[0] == "corpus"
    prepare(_cfg(d, src), progress=False, verbose=False)
    assert json.loads((d / "manifest.json").read_text())["stages"]["corpus"]["info"]["documents"] == 121
    lines = (d / "corpus" / "docs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[7] = '{"text": "trunc\n'
    (d / "corpus" / "docs.jsonl").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs\.jsonl:8: unreadable document"):
        prepare(_cfg(d, src, "data.seq_len=16"), progress=False, verbose=False)
