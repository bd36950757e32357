"""Data pipeline invariants on a small built-in corpus (tfidf): caching, determinism, packing, question sets,
bad input lines, tokenizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from hmem_lit.anchor import doc_positions_and_mask
from hmem_lit.config import ConfigError, load_config
from hmem_lit.data.datamodule import PackedDataset, make_collate
from hmem_lit.data.mentions import MentionCounter, buckets
from hmem_lit.data.packing import pack
from hmem_lit.data.prepare import prepare, stale_stages
from hmem_lit.data.prepared import load_prepared
from hmem_lit.data.tokenizer import load_tokenizer
from tests.conftest import ROOT, SMALL, small_cfg  # noqa: F401 (SMALL: the small built-in corpus; the fixture `prepared`)


def _outputs(d: Path) -> dict[str, bytes]:
    skip = {"manifest.json", "stats.json", ".prepare.lock"}
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name not in skip}


def test_second_prepare_is_a_noop(prepared):
    cfg, d = prepared
    assert stale_stages(cfg) == []
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file() and p.name != "manifest.json"}
    prepare(cfg, progress=False, verbose=False)
    after = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file() and p.name != "manifest.json"}
    changed = [str(p) for p in before if before[p] != after.get(p) and p.name not in ("stats.json", ".prepare.lock")]
    assert changed == []


def test_config_change_reruns_only_downstream_stages(prepared, tmp_path):
    cfg, d = prepared
    assert stale_stages(small_cfg(d, "data.seq_len=32")) == ["packing"]
    assert stale_stages(small_cfg(d, "retriever.tree.balance=0.5")) == ["tree", "packing", "questions"]  # leaf priors
    assert stale_stages(small_cfg(d, "data.vocab_size=600")) == ["tokenizer", "packing"]
    assert stale_stages(small_cfg(d, "data.seed=3"))[0] == "corpus"


def test_a_shared_directory_names_the_settings_a_config_would_change(prepared):
    from hmem_lit.data.prepare import _read_manifest, _say_other_settings, other_settings

    cfg, d = prepared
    manifest = _read_manifest(d)
    assert other_settings(cfg, manifest) == {}
    other = small_cfg(d, "retriever.tree.balance=0.5", "data.seq_len=32")
    diff = other_settings(other, manifest)
    assert diff == {"retriever.tree.balance": (cfg.retriever.tree.balance, 0.5), "data.seq_len": (64, 32)}
    lines: list[str] = []
    _say_other_settings(other, d, manifest, lines.append)
    assert len(lines) == 1 and "data.seq_len 64 -> 32" in lines[0] and "own data.dir" in lines[0]


def test_preparation_is_deterministic(prepared, tmp_path):
    cfg, d = prepared
    cfg2 = small_cfg(tmp_path / "again")
    prepare(cfg2, progress=False, verbose=False)
    a, b = _outputs(d), _outputs(tmp_path / "again")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_load_prepared_contract(prepared):
    cfg, d = prepared
    train, val, tok = load_prepared(cfg)
    assert isinstance(train.tokens, np.memmap) and train.tokens.shape[1] == cfg.data.seq_len + 1
    assert train.paths.shape == (len(train), 2) and train.paths.dtype == np.int64
    assert len(val) > 0 and val.tokens.shape[1] == cfg.data.seq_len + 1
    k = cfg.retriever.branching
    assert (train.paths[:, 0] < k).all() and (train.paths[:, 1] // k == train.paths[:, 0]).all()
    assert tok.vocab_size <= 1024 + 2 and {tok.eot_id, tok.pad_id} < set(range(tok.vocab_size))
    assert int(np.asarray(train.tokens).max()) < tok.vocab_size
    s = "The atomic number of Carbon is 6."
    assert tok.decode(tok.encode(s)) == s and tok.decode(tok.encode(s) + [tok.eot_id]) == s
    assert load_tokenizer(d).encode(s) == tok.encode(s)


def test_packed_paths_match_document_routes(prepared):
    cfg, d = prepared
    doc_paths = np.load(d / "tree" / "doc_paths.npy")
    docs = [json.loads(x) for x in open(d / "corpus" / "docs.jsonl", encoding="utf-8")]
    tok = load_tokenizer(d)
    for name in ("train", "val"):
        paths = np.load(d / "packed" / f"{name}_paths.npy")
        tokens = np.load(d / "packed" / f"{name}_tokens.npy")
        z = np.load(d / "packed" / f"{name}_docs.npz")
        ptr, ids = z["doc_ptr"], z["doc_ids"]
        assert len(ptr) == len(paths) + 1
        for r in range(len(paths)):
            for doc in ids[ptr[r] : ptr[r + 1]]:
                np.testing.assert_array_equal(doc_paths[doc], paths[r])
        # every document of the split appears, whole documents are findable in their row
        split = np.load(d / "corpus" / "split.npy")
        assert set(ids.tolist()) == set(np.nonzero(split == (name == "val"))[0].tolist())
        # short documents are never split across rows: under ffd every one that fits a row (here: < 60 tokens),
        # under stream those of at most data.pack_whole tokens (EOT included)
        limit = cfg.data.pack_whole if cfg.data.packing == "stream" else 60
        for r in range(0, len(paths), max(1, len(paths) // 25)):
            text = tok.decode(tokens[r])
            short = [docs[i]["text"] for i in ids[ptr[r] : ptr[r + 1]] if len(tok.encode(docs[i]["text"])) < limit]
            assert all(t in text for t in short)
        rows_of = np.bincount(ids, minlength=len(docs))  # a document in several rows was cut
        cut = np.nonzero(rows_of > 1)[0]
        assert all(len(tok.encode(docs[i]["text"])) >= limit for i in cut)
    # training documents keep their balanced cluster assignment; held-out ones are routed like new text
    from hmem_lit.retriever import load_router

    router = load_router(d, cfg)
    val_idx = np.nonzero(np.load(d / "corpus" / "split.npy") == 1)[0]
    np.testing.assert_array_equal(router.route([docs[i]["text"] for i in val_idx]), doc_paths[val_idx])


def test_packed_sequences_never_attend_across_documents(prepared):
    cfg, d = prepared
    train, _, tok = load_prepared(cfg)
    ds = PackedDataset(train)
    rows = np.unique(np.linspace(0, len(ds) - 1, min(32, len(ds))).astype(int))  # rows of many leaves
    batch = make_collate(tok.eot_id, tok.pad_id)([ds[int(i)] for i in rows])
    _, mask = doc_positions_and_mask(batch["doc_ids"])
    inp, tgt = batch["input_ids"], batch["targets"]
    n_multi = 0
    for b in range(len(inp)):
        eot = (inp[b] == tok.eot_id).nonzero().flatten().tolist()
        n_multi += len(eot) > 1
        bounds = [-1] + eot  # document j spans (bounds[j], bounds[j+1]]
        m = mask[b, 0]
        for e in eot:  # no query after an EOT sees the EOT or anything before it
            assert not m[e + 1 :, : e + 1].any()
        for lo, hi in zip(bounds[:-1], bounds[1:]):  # within a document: causal attention over all of it
            blk = m[lo + 1 : hi + 1, lo + 1 : hi + 1]
            assert torch.equal(blk, torch.ones_like(blk).tril())
        assert (tgt[b][inp[b] == tok.eot_id] == -100).all()  # nothing predicted across a boundary
        assert (tgt[b][inp[b] == tok.pad_id] == -100).all()
    assert n_multi > 0  # the check is not vacuous: rows do hold several documents


def test_question_sets_format_and_buckets(prepared):
    cfg, d = prepared
    qdir = d / "questions"
    names = {p.stem for p in qdir.glob("*.jsonl")}
    assert {"atomic_number", "capital", "element_symbol", "country_region", "synthetic_city"} <= names
    an = [json.loads(x) for x in open(qdir / "atomic_number.jsonl")]
    assert len(an) == 118
    carbon = next(q for q in an if q["entity"] == "Carbon")
    assert carbon["prompt"] == "The atomic number of Carbon is" and carbon["answer"] == "6"
    assert sorted({q["bucket"] for q in an}) == [0, 1, 2, 3, 4]
    sizes = np.bincount([q["bucket"] for q in an])
    assert sizes.max() - sizes.min() <= 1
    by_bucket = {b: [q["mention_count"] for q in an if q["bucket"] == b] for b in range(5)}
    assert all(max(by_bucket[b]) <= min(by_bucket[b + 1]) for b in range(4))  # rarest first
    for name in names:
        for q in map(json.loads, open(qdir / f"{name}.jsonl")):
            assert {"entity", "prompt", "answer", "mention_count", "bucket", "route_text"} <= q.keys()
            if "choices" in q:
                assert q["choices"][q["label"]] == q["answer"] and len(set(q["choices"])) == len(q["choices"])
                assert len(q["choices"]) == 4 or name.endswith(".rank")
    # mention counts are measured on the finished training corpus
    docs = [json.loads(x) for x in open(d / "corpus" / "docs.jsonl", encoding="utf-8")]
    split = np.load(d / "corpus" / "split.npy")
    counts = json.loads((d / "entity_counts.json").read_text())
    mc = MentionCounter([{"name": "Carbon", "aliases": []}]).add_all(t["text"] for t, s in zip(docs, split) if s == 0)
    assert counts["Carbon"]["mention_count"] == mc[0] == carbon["mention_count"] > 0
    # held-out Wikipedia text never appears in training
    held = [json.loads(x)["text"] for x in open(d / "heldout" / "wiki_val.jsonl", encoding="utf-8")]
    train_texts = {t["text"] for t, s in zip(docs, split) if s == 0}
    assert held and not (set(held) & train_texts)
    assert (d / "ATTRIBUTION.txt").read_text().count("CC BY-SA") + (d / "ATTRIBUTION.txt").read_text().count(
        "Creative Commons Attribution-ShareAlike 4.0"
    ) >= 1


def test_bad_input_lines_are_skipped_and_counted(tmp_path, caplog):
    good = [
        {"text": f"Document number {i} talks about topic {i % 7} and more words here.", "kind": f"k{i % 2}"}
        for i in range(60)
    ]
    f1 = tmp_path / "a.jsonl"
    with open(f1, "wb") as f:
        for i, g in enumerate(good):
            f.write((json.dumps(g) + "\n").encode())
            if i == 3:
                f.write(b'{"text": "broken json\n')  # line 5
            if i == 7:
                f.write(b'{"text": "bad bytes \xff\xfe here"}\n')  # not UTF-8
            if i == 9:
                f.write(b'{"text": "   "}\n')  # empty document
            if i == 11:
                f.write(b'{"title": "no text field"}\n')
    f2 = tmp_path / "b.txt"
    f2.write_text("First paragraph of a text file.\nStill first.\n\nSecond paragraph.\n", encoding="utf-8")
    cfg = load_config(
        None,
        [
            "data.source=files",
            f"data.files=[{f1},{f2}]",
            f"data.dir={tmp_path / 'out'}",
            "data.vocab_size=300",
            "data.seq_len=32",
            "retriever.branching=2",
            "retriever.depth=2",
            "retriever.embed_dim=16",
            "anchor.max_seq_len=512",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="hmem_lit.data"):
        prepare(cfg, progress=False, verbose=False)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped_lines"] == 4 and stats["documents"] == 62
    by_prefix = {}
    for reason, n in stats["skipped_by_reason"].items():
        key = reason.split(" (")[0]
        by_prefix[key] = by_prefix.get(key, 0) + n
    assert by_prefix == {"invalid JSON": 1, "not UTF-8": 1, "empty document": 1, 'no "text" string field': 1}
    assert f"{f1}:5" in caplog.text  # the warning names file and line
    docs = [json.loads(x) for x in open(tmp_path / "out" / "corpus" / "docs.jsonl")]
    assert docs[0]["kind"] == "k0" and docs[0]["source"] == "a.jsonl:1"  # metadata kept
    assert docs[-1]["text"] == "Second paragraph." and docs[-2]["text"].endswith("Still first.")
    train, val, tok = load_prepared(cfg)
    assert len(train) > 0 and len(val) > 0


def test_oracle_retriever_groups_by_field(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": f"doc {i} " * 5, "entity": f"e{i % 4}"}) + "\n" for i in range(40)))
    cfg = load_config(
        None,
        [
            "data.source=files",
            f"data.files=[{f}]",
            f"data.dir={tmp_path / 'o'}",
            "data.vocab_size=300",
            "data.seq_len=32",
            "retriever.type=oracle",
            "retriever.oracle_field=entity",
            "retriever.branching=4",
            "anchor.max_seq_len=512",
        ],
    )
    prepare(cfg, progress=False, verbose=False)
    docs = [json.loads(x) for x in open(tmp_path / "o" / "corpus" / "docs.jsonl")]
    paths = np.load(tmp_path / "o" / "tree" / "doc_paths.npy")
    for i, dd in enumerate(docs):
        np.testing.assert_array_equal(paths[i], paths[int(dd["entity"][1:])])
    assert stale_stages(cfg) == []


def test_mention_counting_longest_match_and_aliases():
    ents = [
        {"name": "Guinea", "aliases": []},
        {"name": "Papua New Guinea", "aliases": ["PNG land"]},
        {"name": "Sulfur", "aliases": ["Sulphur"]},
    ]
    c = MentionCounter(ents).add_all(["Papua New Guinea and Guinea; guinea.", "sulphur, SULFUR, Sulfurous", "png land"])
    assert c == [2, 2, 2]
    assert buckets([5, 1, 3, 3, 9, 0, 2, 7, 4, 6], list("abcdefghij")) == [3, 0, 1, 2, 4, 0, 1, 4, 2, 3]


def test_packing_keeps_short_documents_whole_and_splits_long_ones():
    eot, pad, L = 1, 0, 9  # rows of 10 tokens
    docs = [np.arange(2, 2 + n) for n in (3, 4, 2, 25, 5)]
    p = pack(docs, np.arange(5), np.zeros((5, 2), np.int64), L, eot, pad, seed=0)
    assert p.tokens.shape[1] == 10 and p.n_tokens == sum(len(x) + 1 for x in docs)
    flat = [t for row in p.tokens for t in row if t != pad]
    assert len(flat) == p.n_tokens and flat.count(eot) == 5
    rows = [list(r) for r in p.tokens]
    for n, base in ((3, 2), (4, 2), (2, 2), (5, 2)):  # each short document sits whole in exactly one row
        seq = list(range(base, base + n)) + [eot]
        assert sum(any(r[i : i + n + 1] == seq for i in range(len(r))) for r in rows) >= 1
    assert sum(pad not in r and eot not in r for r in rows) == 2  # the 26-token document: 2 full rows + 6
    assert len(p.tokens) == 5  # 44 tokens in rows of 10: first-fit decreasing reaches the minimum here


def test_load_router_refuses_a_mismatched_config(prepared):
    from hmem_lit.retriever import load_router

    cfg, d = prepared
    with pytest.raises(ValueError, match="re-run `hmem data prepare`"):
        load_router(d, small_cfg(d, "retriever.branching=8"))
    r = load_router(d, cfg)
    q = [json.loads(x) for x in open(d / "questions" / "capital.jsonl", encoding="utf-8")][:20]
    paths = r.route_records(q)
    assert paths.shape == (20, 2) and (paths[:, 1] // 4 == paths[:, 0]).all()


def test_fact_repeats_follow_the_tail_law_between_min_and_max():
    from hmem_lit.data import facts

    ents = facts.synthetic_entities(3000, seed=0, max_repeats=32, a=1.1, reserved=set(), min_repeats=4)
    reps = np.array([e["repeats"] for e in ents])
    assert reps.min() == 4 and reps.max() <= 32
    # a long tail: the floor is the most common count, and counts fall off above it
    counts = np.bincount(reps)
    assert counts[4] == counts.max() and counts[4] > 2 * counts[8] > 0
    ranked = facts.repeats_by_rank(list(range(100)), [str(i) for i in range(100)], 32, 1.1, min_repeats=3)
    assert min(ranked) == 3 and ranked == sorted(ranked)  # more mentions -> at least as many documents
    with pytest.raises(ConfigError, match="data.fact_repeats_min"):
        load_config(None, ["data.fact_repeats_min=40"])


@pytest.mark.parametrize(
    "overrides,keys",
    [
        ([], {"corpus": "bba6ca8b990fa92a", "tree": "e48e0d9102166e9c", "packing": "08b2fd975340edb7"}),
        (
            ["data.source=builtin", "data.corpus=airports", "retriever.router=centroid", "retriever.refine=none"],
            {"corpus": "68848646086cad7e", "tree": "aca1c5657a05e10e", "packing": "08b2fd975340edb7"},
        ),
    ],
)
def test_stage_keys_are_stable_across_refactors(overrides, keys):
    """Stage keys decide whether a user's prepared directory (hours of work on a big corpus) is still valid: moving
    code or config declarations must not change them. These are the keys of d1e5f41; the effects move of 2026-12-07
    changed the order fields were hashed in and made every directory stale until data/prepare.py's _KEY_ORDER.
    Change them only with a deliberate version bump (_VERSION) and a CHANGELOG line."""
    from hmem_lit.data.prepare import _stage_keys

    got = _stage_keys(load_config(ROOT / "experiments" / "000_debug.yaml", overrides), {})
    assert {k: got[k] for k in keys} == keys
