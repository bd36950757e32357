"""What makes a prepared stage current: each stage's key (a hash of the config fields it reads, in a fixed order
and under the names directories were first prepared with, and of its upstream outputs), its outputs, and which
stages a config would redo (`stale_stages`). Reads the manifest and the config, never the data; data/prepare.py runs
the stages.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hmem_lit.config import RENAMED, RETRIEVER_FLAT_NAME
from hmem_lit.data.sources import signature
from hmem_lit.data.tree_stage import key_field
from hmem_lit.effects import field_value, fields_with
from hmem_lit.utils import read_json

STAGES = ("corpus", "tokenizer", "embeddings", "tree", "packing", "questions")
DEPS = {
    "corpus": (),
    "tokenizer": ("corpus",),
    "embeddings": ("corpus",),
    "tree": ("corpus", "embeddings"),
    "packing": ("tokenizer", "tree"),
    "questions": ("corpus", "tree"),
}  # an upstream re-run may change the output
_VERSION = {"corpus": 1, "tokenizer": 1, "embeddings": 1, "tree": 2, "packing": 1, "questions": 2}


def _h(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ stage keys


# fields added after directories were prepared, at the value that reproduces what those directories hold: left
# out of the stage keys at that value, so adding them did not invalidate existing preparations
_KEY_SINCE: dict[str, Any] = {"retriever.device": "cpu"}


# a field moved into a section (config.RENAMED: retriever.<key> -> retriever.tree.<key>) is hashed under its old
# name (config.RETRIEVER_FLAT_NAME), so moving it did not invalidate existing preparations (see _flat_layout)


def _flat_layout(kv: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A stage's (field, value) pairs under their flat names (retriever.tree.<key> -> retriever.<key>), in the order
    of effects.py's table before the effects moved onto the fields (d1e5f41, _KEY_ORDER): a key hashes the pairs in
    order, so directories prepared before stay cached; a field added later sorts after these, by name."""
    flat = [(RETRIEVER_FLAT_NAME.get(k, k), v) for k, v in kv]
    return sorted(flat, key=lambda p: (_KEY_ORDER.get(p[0], len(_KEY_ORDER)), p[0]))


_KEY_ORDER = {
    k: i
    for i, k in enumerate(
        """data.source data.files data.val_fraction data.corpus data.airports data.wiki_docs data.synthetic_entities
        data.fact_repeats_max data.fact_repeats_min data.zipf_a data.seed data.tokenizer data.vocab_size
        data.tokenizer_sample retriever.embedder retriever.embed_dim retriever.tfidf_projection retriever.seed
        retriever.fit_sample retriever.embed_dtype retriever.device retriever.route_unsampled retriever.type
        retriever.branching retriever.depth retriever.balance retriever.niter retriever.max_points_per_centroid
        retriever.recenter retriever.train_paths retriever.oracle_field retriever.router retriever.refine
        retriever.knn_k retriever.bm25_max_df retriever.refine_iters retriever.refine_cap retriever.graph_max_postings
        data.key_field data.seq_len data.packing data.pack_whole""".split()
    )
}


def _needs_embeddings(cfg: Any) -> bool:
    """Whether the configured retriever fits on document embeddings (its declared capability, retriever/base.py)."""
    from hmem_lit.registry import RETRIEVERS

    return bool(RETRIEVERS.capability(cfg.retriever.type, "needs_embeddings", False))


def _stage_keys(cfg: Any, manifest: dict, fields_out: dict | None = None) -> dict[str, str]:
    """Keys of every stage from the config and the recorded upstream output hashes (cheap: reads no data).
    `fields_out`, if given, receives each stage's config fields and values (JSON), as recorded in the manifest."""
    d = cfg.data
    out = lambda s: manifest.get("stages", {}).get(s, {}).get("out", "missing")  # noqa: E731
    derived: dict[str, Any] = {  # fields whose cache value is not the value itself
        "data.files": [(str(p), *signature(p)) if os.path.exists(p) else (str(p), None) for p in d.files]
        if d.source == "files"
        else [],
        "data.tokenizer": (
            _file_hash(Path(d.tokenizer)) if d.tokenizer and os.path.exists(d.tokenizer) else d.tokenizer
        ),
        "data.key_field": key_field(cfg),
    }

    def named(stage: str) -> list[tuple[str, Any]]:  # the declaration: effects.FIELD_EFFECTS
        kv = [(k, derived[k] if k in derived else field_value(cfg, k)) for k in fields_with(stage)]
        return [(k, v) for k, v in kv if _KEY_SINCE.get(k, object()) != v]

    def fields_of(stage: str) -> list[tuple[str, Any]]:  # hashed in the layout the directories were prepared in
        return _flat_layout(named(stage))

    if fields_out is not None:
        fields_out.update({s: json.loads(json.dumps(dict(named(s)), default=str)) for s in STAGES})
    keys = {"corpus": _h("corpus", _VERSION["corpus"], fields_of("corpus"))}
    keys["tokenizer"] = _h("tokenizer", _VERSION["tokenizer"], out("corpus"), fields_of("tokenizer"))
    keys["embeddings"] = (
        _h("embeddings", _VERSION["embeddings"], out("corpus"), fields_of("embeddings"))
        if _needs_embeddings(cfg)
        else "none"
    )
    keys["tree"] = _h("tree", _VERSION["tree"], out("corpus"), keys["embeddings"], fields_of("tree"))
    keys["packing"] = _h("packing", _VERSION["packing"], out("tokenizer"), out("tree"), fields_of("packing"))
    keys["questions"] = _h("questions", _VERSION["questions"], out("corpus"), out("tree"), fields_of("questions"))
    return keys


def _outputs(cfg: Any, stage: str, manifest: dict) -> list[Path]:
    root = Path(cfg.data.dir)
    info = manifest.get("stages", {}).get(stage, {}).get("info", {})
    return {
        "corpus": [root / "corpus" / n for n in ("docs.jsonl", "split.npy", "entities.json", "info.json")],
        "tokenizer": [root / "tokenizer.json"],
        "embeddings": (
            []
            if not _needs_embeddings(cfg)
            else [root / info["dir"] / "emb.npy"]
            if "dir" in info
            else [root / "embeddings" / "missing"]
        ),
        "tree": [root / "tree" / n for n in ("router.json", "doc_paths.npy", "stats.json")],
        "packing": [
            root / "packed" / f"{s}_{n}" for s in ("train", "val") for n in ("tokens.npy", "paths.npy", "docs.npz")
        ],
        "questions": [root / "entity_counts.json", root / "heldout" / "val.jsonl"],
    }[stage]


def _stale(cfg: Any, s: str, keys: dict, manifest: dict) -> bool:
    rec = manifest.get("stages", {}).get(s, {})
    return rec.get("key") != keys[s] or not all(p.exists() for p in _outputs(cfg, s, manifest))


def stale_stages(cfg: Any) -> list[str]:
    """Stages that would run (their key changed or an output is missing); [] means fully prepared."""
    manifest = _read_manifest(Path(cfg.data.dir))
    keys = _stage_keys(cfg, manifest)
    stale: list[str] = []
    for s in STAGES:
        if any(u in stale for u in DEPS[s]) or _stale(cfg, s, keys, manifest):
            stale.append(s)
    return stale


def other_settings(cfg: Any, manifest: dict) -> dict[str, tuple[Any, Any]]:
    """Fields whose value differs from the one the directory's existing preparation recorded -> (recorded, now):
    what re-preparing a shared data.dir for this config changes (and what the other config's runs will change
    back when resumed or evaluated). Stages recorded before fields were kept (no "fields") contribute nothing."""
    now: dict[str, dict] = {}
    _stage_keys(cfg, manifest, now)
    diff: dict[str, tuple[Any, Any]] = {}
    for s, rec in manifest.get("stages", {}).items():
        for old, v in rec.get("fields", {}).items():
            k = RENAMED.get(old, old)  # recorded before a rename: the field's name now
            if s in now and k in now[s] and now[s][k] != v:
                diff[k] = (v, now[s][k])
    return diff


def _read_manifest(root: Path) -> dict:
    p = root / "manifest.json"
    try:
        return read_json(p) if p.is_file() else {"stages": {}}
    except (OSError, json.JSONDecodeError):
        return {"stages": {}}
