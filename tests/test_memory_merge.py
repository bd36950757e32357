"""Split memory training: per-subtree jobs on a frozen anchor merge into one bank equal to what each job trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hmem_lit.config import save_config
from hmem_lit.merge import merge, merge_banks
from hmem_lit.model import prepare_model_for_mode
from hmem_lit.utils import read_json, write_json
from tests.memory_util import batch, make_cfg, make_model, train

B = 4  # branching of the tiny tree


def _anchor_state():
    return {f"anchor.{k}": v.clone() for k, v in make_model(make_cfg("ffn"), seed=7).anchor.state_dict().items()}


def _job(tmp: Path, subtree: int | None, anchor_state, steps: int = 3, dtype: str = "float32") -> tuple[Path, dict]:
    """One split job: frozen anchor, batches from its subtree only; writes a run directory like train.py does."""
    extra = [
        "train.mode=frozen",
        "train.init_from=runs/a1",
        "optim.memory_weight_decay=0.1",
        f"memory.storage.dtype={dtype}",
    ]
    cfg = make_cfg("ffn", *extra, *([f"train.subtree={subtree}"] if subtree is not None else []), f"name=job{subtree}")
    model = prepare_model_for_mode(make_model(cfg, seed=0), cfg, lambda run_dir: anchor_state)
    train(model, cfg, [batch(n=3, seed=10 * (subtree or 0) + s, level1=[subtree or 0]) for s in range(steps)])
    run = tmp / f"job{subtree}"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run / "model.safetensors"))
    write_json(run / "final.json", {"status": "complete", "params": model.param_counts()})
    return run, state


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_subtree_jobs_merge_to_the_bank_each_trained(tmp_path, dtype):
    anchor = _anchor_state()
    init = {
        k: v.clone()
        for k, v in make_model(make_cfg("ffn", f"memory.storage.dtype={dtype}"), seed=0).state_dict().items()
    }
    jobs = {k: _job(tmp_path, k, anchor, dtype=dtype) for k in (0, 2, 3)}
    out = merge_banks([jobs[k][0] for k in (0, 2, 3)], tmp_path / "merged")
    merged = load_file(str(out / "model.safetensors"))
    for lvl in (1, 2):
        key, span = f"memory.bank.level{lvl}", B ** (lvl - 1)
        for k, (_, state) in jobs.items():
            rows = slice(k * span, (k + 1) * span)
            assert torch.equal(merged[key][rows], state[key][rows])
            assert not torch.equal(merged[key][rows], init[key][rows])  # the job did train its subtree
        rows = slice(1 * span, 2 * span)  # subtree 1: no job owned it
        assert torch.equal(merged[key][rows], init[key][rows])
    assert all(torch.equal(merged[k], v) for k, v in anchor.items())
    assert all(merged[k].dtype == getattr(torch, dtype) for k in merged if k.startswith("memory.bank."))
    assert (out / "config.yaml").is_file() and (out / "final.json").is_file()
    assert read_json(out / "final.json")["params"] == read_json(jobs[0][0] / "final.json")["params"]


def test_merge_rejects_differing_anchors_and_duplicate_subtrees(tmp_path):
    anchor = _anchor_state()
    a, _ = _job(tmp_path / "a", 0, anchor, steps=1)
    b, state = _job(tmp_path / "b", 1, anchor, steps=1)
    state["anchor.norm.weight"] = state["anchor.norm.weight"] + 1
    save_file(state, str(b / "model.safetensors"))
    with pytest.raises(ValueError, match="anchor.norm.weight differs"):
        merge_banks([a, b], tmp_path / "m")
    c, _ = _job(tmp_path / "c", 0, anchor, steps=1)
    with pytest.raises(ValueError, match="own train.subtree"):
        merge([str(a), str(c)], str(tmp_path / "m"))


def test_subtree_job_refuses_foreign_paths_and_needs_frozen_mode():
    cfg = make_cfg("ffn", "train.mode=frozen", "train.init_from=x", "train.subtree=1")
    model = prepare_model_for_mode(make_model(cfg), cfg, lambda run_dir: _anchor_state()).train()
    x, _, paths = batch(level1=[0, 1])
    with pytest.raises(ValueError, match="subtree"):
        model(x, paths=paths)
    with pytest.raises(ValueError, match="frozen"):
        bad = make_cfg("ffn", "train.subtree=1")
        prepare_model_for_mode(make_model(bad), bad)


def test_merge_in_row_blocks_equals_the_whole_table_merge(tmp_path, monkeypatch):
    """hmem merge assembles and checks bank tables a few rows at a time (banks larger than RAM): the result equals
    the one-block merge exactly, and a refused merge leaves no output directory behind."""
    from hmem_lit.storage import disk as storage

    anchor = _anchor_state()
    jobs = [_job(tmp_path, k, anchor)[0] for k in (0, 2)]
    whole = load_file(str(merge_banks(jobs, tmp_path / "whole") / "model.safetensors"))
    monkeypatch.setattr(storage, "CHUNK_BYTES", 700)  # a handful of rows per block
    blocks = load_file(str(merge_banks(jobs, tmp_path / "blocks") / "model.safetensors"))
    assert whole.keys() == blocks.keys() and all(torch.equal(whole[k], blocks[k]) for k in whole)
    state = load_file(str(jobs[1] / "model.safetensors"))
    state["memory.bank.level2"][B * 1] += 1.0  # job 2 touched a row of subtree 1, which it does not own
    save_file(state, str(jobs[1] / "model.safetensors"))
    with pytest.raises(ValueError, match="changed rows outside its subtree"):
        merge_banks(jobs, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
