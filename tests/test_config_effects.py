"""effects.FIELD_EFFECTS is the one declaration of what each config field affects, and it is complete and true:
every field is declared; changing a field changes exactly the preparation stages it declares (and those
downstream); the resume check and the run collector ignore exactly the fields declared without "run" / "id"."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from hmem_lit.config import RunConfig, to_dict
from hmem_lit.data import prepare
from hmem_lit.effects import FIELD_EFFECTS, field_value, fields_with, leaf_fields

STAGES = prepare.STAGES
DOWNSTREAM = {
    "corpus": set(STAGES),
    "tokenizer": {"tokenizer", "packing"},
    "embeddings": {"embeddings", "tree", "packing"},
    "tree": {"tree", "packing"},
    "packing": {"packing"},
    "questions": {"questions"},
}


def test_every_field_is_declared_and_nothing_else():
    assert sorted(FIELD_EFFECTS) == sorted(leaf_fields()), (
        "declare the new field's effects in hmem_lit/effects.py FIELD_EFFECTS"
    )
    tokens = {t for eff in FIELD_EFFECTS.values() for t in eff}
    assert tokens <= {*STAGES, "run", "id"}
    assert all("run" in eff for eff in FIELD_EFFECTS.values() if set(eff) & set(STAGES) - {"tree"} or "id" in eff)


def _other(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 0.5 + 0.125
    if isinstance(v, str):
        return v + "_x"
    if isinstance(v, list):
        return [*v, 1]
    return "changed" if v is None else None


def _with(cfg, key, value):
    cfg = copy.deepcopy(cfg)
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = getattr(node, p)
    object.__setattr__(node, leaf, value)  # no validation: only the cache keys are computed
    return cfg


def _keys(cfg):
    # a manifest whose recorded stage outputs are fixed, so only this stage's own inputs move its key
    return prepare._stage_keys(cfg, {"stages": {s: {"out": f"out-{s}"} for s in STAGES}})


@pytest.mark.parametrize("key", leaf_fields())
def test_stage_keys_follow_the_declaration(key):
    base = RunConfig()
    base = _with(_with(base, "data.source", "builtin"), "retriever.type", "tree")
    if key in ("data.source", "retriever.type"):
        pytest.skip("switches what is prepared at all (toy / non-tree); covered by the data tests")
    if key == "data.files":  # read only for data.source=files (as (path, size, mtime) entries)
        base = _with(base, "data.source", "files")
    changed = _with(base, key, _other(field_value(base, key)))
    a, b = _keys(base), _keys(changed)
    moved = {s for s in STAGES if a[s] != b[s]}
    declared = {s for s in STAGES if s in FIELD_EFFECTS[key]}
    # with upstream outputs pinned, a field moves its own stages (and embeddings -> tree through the key chain)
    want = set(declared) | ({"tree"} if "embeddings" in declared else set())
    assert moved == want, f"{key}: declared {sorted(declared)}, changes the keys of {sorted(moved)}"


def test_resume_check_and_collector_read_the_declaration():
    from hmem_lit.analysis.collect import _config_id
    from hmem_lit.train import _diff

    base = to_dict(RunConfig())
    for key in leaf_fields():
        changed = copy.deepcopy(base)
        *parents, leaf = key.split(".")
        node = changed
        for p in parents:
            node = node[p]
        node[leaf] = _other(node[leaf])
        assert bool(_diff(base, changed)) == ("run" in FIELD_EFFECTS[key]), key
        assert (_config_id(base, {}) != _config_id(changed, {})) == ("id" in FIELD_EFFECTS[key]), key


def test_every_section_declares_its_default_effects():
    """A shipped section says what its fields affect by default (EFFECTS), so no field falls back silently."""

    def sections(cls):
        yield cls
        for f in dataclasses.fields(cls):
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                yield from sections(sub)

    missing = [c.__name__ for c in sections(RunConfig) if "EFFECTS" not in vars(c)]
    assert not missing, missing


def test_fields_with_lists_stage_inputs():
    assert "data.seq_len" in fields_with("packing") and "retriever.tree.router" in fields_with("tree")
    assert "train.seed" not in fields_with("id") and "train.seed" in fields_with("run")
    assert dataclasses.is_dataclass(RunConfig())


# the stage keys of these configs at d1e5f41, before effects moved onto the fields and before retriever.tree existed
# (the flat retriever.router, retriever.balance, ... layout, computed there with the flat key names): moving the keys
# into the section and their declarations onto the fields left every prepared directory cached
FLAT_LAYOUT_KEYS = {
    (): {
        "corpus": "bba6ca8b990fa92a",
        "tokenizer": "a3338591204cd88c",
        "embeddings": "9ea4d7277b6c156c",
        "tree": "be22622a4b8af0ae",
        "packing": "c80adccf8e58237c",
        "questions": "3ed83f47a908e454",
    },
    (
        "retriever.tree.router=centroid",
        "retriever.tree.refine=none",
        "retriever.tree.balance=0.5",
        "retriever.tree.knn_k=7",
        "retriever.tree.train_paths=routed",
        "retriever.tree.route_unsampled=router",
        "retriever.tree.bm25_max_df=0.2",
        "retriever.tree.niter=3",
        "retriever.tree.max_points_per_centroid=99",
        "retriever.tree.recenter=false",
        "retriever.tree.refine_iters=2",
        "retriever.tree.refine_cap=2.0",
        "retriever.tree.graph_max_postings=100",
        "retriever.fit_sample=123",
        "retriever.seed=5",
        "retriever.embed_dtype=float16",
    ): {"embeddings": "fafb302136937ec3", "tree": "f6d43e5d83ecae61"},
}


@pytest.mark.parametrize("overrides", list(FLAT_LAYOUT_KEYS))
def test_stage_keys_are_those_of_the_flat_retriever_layout(overrides):
    from hmem_lit.config import load_config

    keys = prepare._stage_keys(load_config(None, list(overrides)), {"stages": {s: {"out": "x" + s} for s in STAGES}})
    want = FLAT_LAYOUT_KEYS[overrides]
    assert {s: keys[s] for s in want} == want
