"""Config merging (defaults < preset < YAML < overrides), validation errors, presets' exact parameter counts."""

from __future__ import annotations

import copy
import dataclasses
import logging
import subprocess
import sys

import pytest
import torch

from hmem_lit.anchor import Anchor, count_params
from hmem_lit.config import PRESETS, ConfigError, from_dict, load_config, to_dict

from .conftest import DEBUG_YAML


def test_merge_order(tmp_path):
    y = tmp_path / "e.yaml"
    y.write_text("anchor:\n  preset: small\n  d_ff: 100\ntrain:\n  max_tokens: 5000\n")
    cfg = load_config(y, ["train.max_tokens=7000", "optim.lr=0.01"])
    assert cfg.experiment == "e"  # from the file name
    assert cfg.anchor.n_layer == PRESETS["small"]["n_layer"]  # preset applies ...
    assert cfg.anchor.d_ff == 100  # ... before explicit YAML keys
    assert cfg.train.max_tokens == 7000  # CLI beats YAML
    assert cfg.optim.lr == 0.01
    assert cfg.train.batch_size == 16  # untouched default


def test_override_beats_preset_from_cli():
    cfg = load_config(None, ["anchor.preset=openlm-410m", "anchor.n_layer=12"])
    assert cfg.anchor.n_layer == 12 and cfg.anchor.d_model == 1024


def test_base_experiment(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  max_tokens: 1234\n  batch_size: 4\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  batch_size: 8\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.max_tokens, cfg.train.batch_size, cfg.experiment) == (1234, 8, "b")


@pytest.mark.parametrize(
    "override, expect",
    [
        ("train.max_tokn=5", "train.max_tokens"),  # misspelled key: name the nearest valid key
        ("anchor.d_modle=5", "anchor.d_model"),
        ("train.max_tokens=abc", "train.max_tokens"),  # wrong type
        ("train.max_tokens=-1", "train.max_tokens"),  # impossible value
        ("retriever.branching=1", "retriever.branching"),
        ("memory.type=fnn", "memory.type"),
        ("anchor.preset=huge", "anchor.preset"),
        ("memory.type=ffn", "memory.levels"),  # memory without a size
        ("memory.levels=[4,4,4]", "memory.levels"),  # more levels than the tree (depth 2)
        ("train.mode=frozen", "train.mode"),
        ("data.seq_len=4096", "data.seq_len"),  # longer than the anchor's context
    ],
)
def test_errors_name_the_key(override, expect):
    with pytest.raises(ConfigError) as e:
        load_config(DEBUG_YAML, [override])
    msg = str(e.value)
    assert expect in msg and "\n" not in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_roundtrip_dict():
    cfg = load_config(DEBUG_YAML, ["memory.type=ffn", "memory.levels=[8,16]"])
    assert from_dict(to_dict(cfg)) == cfg


def test_renamed_keys_still_work_with_a_notice(tmp_path, caplog):
    """memory.lora_target / memory.lora_alpha (before memory.lora.*) load from key=value, YAML and a stored run's
    config to the same config as the new keys, each with a one-line notice naming the new key; both is an error."""
    import logging

    from hmem_lit import config_text

    new = load_config(DEBUG_YAML, ["memory.type=lora", "memory.levels=[4]", "memory.lora.target=vo"])
    config_text._noticed.clear()
    with caplog.at_level(logging.WARNING, logger="hmem_lit"):
        old = load_config(DEBUG_YAML, ["memory.type=lora", "memory.levels=[4]", "memory.lora_target=vo"])
    assert old == new and old.memory.lora.target == "vo"
    assert [r.getMessage() for r in caplog.records] == [
        "memory.lora_target is now memory.lora.target (the old key still works)"
    ]
    y = tmp_path / "old.yaml"
    y.write_text(f"base: {DEBUG_YAML}\nmemory: {{type: lora, levels: [4], lora_alpha: 3.0}}\n")
    assert load_config(y).memory.lora.alpha == 3.0
    stored = to_dict(new)
    stored["memory"]["lora_target"] = stored["memory"].pop("lora").pop("target")
    assert from_dict(stored) == new
    with pytest.raises(ConfigError, match="memory.lora_target: renamed to memory.lora.target, and both are set"):
        load_config(DEBUG_YAML, ["memory.lora_target=vo", "memory.lora.target=qk"])
    # a sweep axis on the old key (the LoRA-target ablation's command) keeps its trial names and translates
    from hmem_lit import sweeps

    from .conftest import ROOT

    spec = sweeps.load_sweep(
        ROOT / "sweeps" / "memory_type.yaml",
        ["space.memory.type=[lora]", "space.memory.lora_target=[vo]", "space.train.seed=[0]"],
    )
    point = spec.grid()[0]
    cfg, _ = sweeps.translate(spec, point)
    assert point["memory.lora_target"] == "vo" and cfg.memory.lora.target == "vo"


def test_cli_exit_status_and_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", "train", str(DEBUG_YAML), "train.max_tokn=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "train.max_tokens" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "preset, expected", [("openlm-160m", 163_510_016), ("openlm-410m", 411_665_408), ("openlm-1.4b", 1_439_893_504)]
)
def test_paper_presets_exact_param_counts(preset, expected):
    cfg = load_config(None, [f"anchor.preset={preset}"])
    assert cfg.anchor.vocab_size == 50_432
    with torch.device("meta"):
        model = Anchor(cfg.anchor)
    assert count_params(model) == expected


def test_table8_presets_shrink_with_layers():
    counts = []
    for L in (12, 17, 19, 21, 22, 24):
        with torch.device("meta"):
            counts.append(count_params(Anchor(load_config(None, [f"anchor.preset=openlm-d1024-l{L}"]).anchor)))
    assert counts == sorted(counts) and counts[-1] == 411_665_408


def test_anchor_preset_in_python_is_expanded_or_refused():
    """AnchorConfig(preset="small") used to keep the tiny sizes silently; from_preset expands like load_config."""
    from hmem_lit.config import PRESETS, AnchorConfig

    with pytest.raises(ConfigError, match="does not expand a preset.*from_preset"):
        AnchorConfig(preset="small")
    a = AnchorConfig.from_preset("small", n_layer=8)
    assert (a.n_layer, a.d_model, a.d_ff) == (8, PRESETS["small"]["d_model"], PRESETS["small"]["d_ff"])
    assert AnchorConfig().preset == "tiny"  # the default construction stays valid


def test_a_str_field_keeps_the_literal_text_yaml_would_retype():
    """`name=off` is the name "off" (YAML 1.1 reads false), `name=123` the name "123"; a list stays an error."""
    cfg = load_config(DEBUG_YAML, ["name=off", "experiment=123", "memory.storage.kind=ram"])
    assert (cfg.name, cfg.experiment) == ("off", "123")
    cfg = load_config(DEBUG_YAML, ["data.dir=data/x_${retriever.tree.router}"])  # interpolations still resolve
    assert cfg.data.dir == f"data/x_{cfg.retriever.tree.router}"
    with pytest.raises(ConfigError, match="out_dir"):
        load_config(DEBUG_YAML, ["out_dir=[1, 2]"])


# memory.storage's old flat keys -> the section (config.RENAMED): the same config, a one-line notice per old key, a
# stored run reads, resumes and keeps its config_id
OLD_STORAGE = {
    "memory.offload": ("offload", True),
    "memory.storage": ("kind", "disk"),  # once a string key, now the section's name
    "memory.storage_dir": ("dir", "/scratch/banks"),
    "memory.dtype": ("dtype", "bfloat16"),
    "memory.rounding": ("rounding", "nearest"),
    "memory.prefetch": ("prefetch", True),
    "memory.async_update": ("async_update", True),
}
MEM = ["memory.type=ffn", "memory.levels=[4]"]


def _ov(key_of):
    return [f"{key_of(k, n)}={str(v).lower() if isinstance(v, bool) else v}" for k, (n, v) in OLD_STORAGE.items()]


def test_old_storage_keys_are_aliases_of_the_section(tmp_path, caplog):
    from hmem_lit import config_text

    new = load_config(DEBUG_YAML, [*MEM, *_ov(lambda k, n: f"memory.storage.{n}")])
    assert (new.memory.storage.kind, new.memory.storage.dir, new.memory.storage.rounding) == (
        "disk",
        "/scratch/banks",
        "nearest",
    )
    config_text._noticed.clear()
    with caplog.at_level(logging.WARNING, logger="hmem_lit"):
        old = load_config(DEBUG_YAML, [*MEM, *_ov(lambda k, n: k)])
    assert to_dict(old) == to_dict(new)
    assert sorted(r.getMessage() for r in caplog.records) == sorted(
        f"{k} is now memory.storage.{n} (the old key still works)" for k, (n, _) in OLD_STORAGE.items()
    )
    # in an experiment file too, beside a key of the section
    y = tmp_path / "old.yaml"
    y.write_text(f"base: {DEBUG_YAML}\nmemory:\n  storage: disk\n  dtype: bfloat16\n")
    cfg = load_config(y, [*MEM, "memory.storage.prefetch=true"])
    assert (cfg.memory.storage.kind, cfg.memory.storage.dtype, cfg.memory.storage.prefetch) == (
        "disk",
        "bfloat16",
        True,
    )
    with pytest.raises(ConfigError, match="memory.storage: is a config section"):  # no kind: one line, the section
        load_config(DEBUG_YAML, [*MEM, "memory.storage=tape"])


def test_a_run_stored_with_the_old_storage_keys_reads_resumes_and_keeps_its_config_id():
    from hmem_lit.analysis.collect import _config_id
    from hmem_lit.config import renamed
    from hmem_lit.train import _diff

    new = to_dict(load_config(DEBUG_YAML, [*MEM, "memory.storage.offload=true", "memory.storage.dtype=bfloat16"]))
    flat = copy.deepcopy(new)
    section = flat["memory"].pop("storage")
    flat["memory"].update({"storage": section["kind"], "storage_dir": section["dir"]})
    flat["memory"].update({k: section[k] for k in ("offload", "dtype", "rounding", "prefetch", "async_update")})
    assert to_dict(from_dict(flat)) == new and "offload" in flat["memory"]  # from_dict leaves its argument alone
    assert _config_id(flat, {}) == _config_id(new, {})  # hashed in the flat layout: ids computed before stay
    assert not _diff(renamed(flat), new)  # the resume check sees the same config
    changed = copy.deepcopy(flat)
    changed["memory"]["dtype"] = "float32"
    assert _config_id(changed, {}) != _config_id(new, {})  # dtype is part of the identity
    assert _diff(renamed(changed), new) == ["memory.storage.dtype"]


def test_a_run_stored_with_the_old_lora_keys_keeps_its_config_id():
    """Runs trained before memory.lora became a section (memory.lora_target, memory.lora_alpha) and after it fall in
    one arm of a report: the id is hashed in the flat layout, the new scaling key counts only off its default."""
    from hmem_lit.analysis.collect import _config_id

    new = to_dict(load_config(DEBUG_YAML, ["memory.type=lora", "memory.levels=[2,1]", "retriever.depth=2"]))
    old = copy.deepcopy(new)
    section = old["memory"].pop("lora")
    old["memory"].update({"lora_target": section["target"], "lora_alpha": section["alpha"]})
    assert _config_id(old, {}) == _config_id(new, {})
    rs = copy.deepcopy(new)
    rs["memory"]["lora"]["scaling"] = "alpha/sqrt(r)"
    assert _config_id(rs, {}) != _config_id(new, {})  # rsLoRA is another configuration
    other = copy.deepcopy(new)
    other["memory"]["lora"]["target"] = "vo"
    assert _config_id(other, {}) != _config_id(new, {})


# retriever.tree's old flat keys (retriever.router, retriever.balance, ...) -> the section (config.RENAMED)
OLD_TREE = {
    "train_paths": "routed",
    "balance": 0.5,
    "niter": 3,
    "max_points_per_centroid": 99,
    "recenter": False,
    "router": "centroid",
    "refine": "none",
    "knn_k": 7,
    "bm25_max_df": 0.2,
    "refine_iters": 2,
    "refine_cap": 2.0,
    "graph_max_postings": 100,
    "route_unsampled": "router",
}


def _tree_ov(prefix):
    return [f"{prefix}{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in OLD_TREE.items()]


def test_old_retriever_keys_are_aliases_of_the_tree_section(tmp_path, caplog):
    from hmem_lit import config_text

    new = load_config(DEBUG_YAML, _tree_ov("retriever.tree."))
    assert dataclasses.asdict(new.retriever.tree) == OLD_TREE
    config_text._noticed.clear()
    with caplog.at_level(logging.WARNING, logger="hmem_lit"):
        old = load_config(DEBUG_YAML, _tree_ov("retriever."))
    assert to_dict(old) == to_dict(new)
    assert sorted(r.getMessage() for r in caplog.records) == sorted(
        f"retriever.{k} is now retriever.tree.{k} (the old key still works)" for k in OLD_TREE
    )
    y = tmp_path / "old.yaml"  # in an experiment file too, beside a key of the section
    y.write_text(f"base: {DEBUG_YAML}\nretriever:\n  router: centroid\n  tree:\n    knn_k: 4\n")
    assert (load_config(y).retriever.tree.router, load_config(y).retriever.tree.knn_k) == ("centroid", 4)
    with pytest.raises(ConfigError, match="retriever.router: renamed to retriever.tree.router, and both are set"):
        load_config(DEBUG_YAML, ["retriever.router=bm25", "retriever.tree.router=centroid"])


def test_a_run_stored_with_the_old_retriever_keys_reads_resumes_and_keeps_its_config_id():
    from hmem_lit.analysis.collect import _config_id
    from hmem_lit.config import renamed
    from hmem_lit.train import _diff

    new = to_dict(load_config(DEBUG_YAML, [*MEM, *_tree_ov("retriever.tree.")]))
    flat = copy.deepcopy(new)
    flat["retriever"].update(flat["retriever"].pop("tree"))
    assert to_dict(from_dict(flat)) == new and "router" in flat["retriever"]
    assert _config_id(flat, {}) == _config_id(new, {})  # hashed in the flat layout: ids computed before stay
    assert not _diff(renamed(flat), new)
    changed = copy.deepcopy(flat)
    changed["retriever"]["balance"] = 0.25
    assert _config_id(changed, {}) != _config_id(new, {})
    assert _diff(renamed(changed), new) == ["retriever.tree.balance"]


def test_retriever_tree_keys_keep_sweep_trial_names_and_baseline_hashes():
    """Trial names and the sweeps' baseline hashes are computed in the flat layout (values from before the move)."""
    from hmem_lit.sweeps.protocol import config_hash
    from hmem_lit.sweeps.spec import trial_name

    name = "balance-1.0_router-bm25_seed-0_df12bb"
    assert trial_name({"retriever.router": "bm25", "retriever.balance": 1.0, "train.seed": 0}) == name
    assert trial_name({"retriever.tree.router": "bm25", "retriever.tree.balance": 1.0, "train.seed": 0}) == name
    assert config_hash(load_config(DEBUG_YAML, ["retriever.tree.router=centroid"])) == "644a8717"
