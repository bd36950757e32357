"""Memory telemetry: fetch counts per block equal the training sequences' paths (generic ones excluded), coverage
and top share follow from them, update RMS is positive for rows that learn, the file is written at the end, and a
killed + resumed run ends with the same counts as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from hmem_lit import runs
from hmem_lit.config import load_config
from hmem_lit.telemetry import FILE
from hmem_lit.train import train

from .conftest import DEBUG_YAML, tiny_overrides

MEM = ["memory.type=ffn", "memory.levels=[2,4]", "retriever.depth=2"]


def _cfg(tmp_path, name, *extra):
    return load_config(
        DEBUG_YAML, [*tiny_overrides(tmp_path, name=name, **{"train.max_tokens": 8 * 64 * 12}), *MEM, *extra]
    )


def test_counts_coverage_and_file(tmp_path):
    run_dir = train(_cfg(tmp_path, "t"))
    tel = json.loads((run_dir / FILE).read_text())
    final = runs.read_final(run_dir)
    n_seq = final["steps"] * 8  # batch_size 8, no generic block
    for lvl, n in (("1", 16), ("2", 256)):
        counts = tel["levels"][lvl]["fetch_counts"]
        assert len(counts) == n and sum(counts) == n_seq
        assert tel["levels"][lvl]["coverage"] == sum(c > 0 for c in counts) / n
    rows = [json.loads(x) for x in (run_dir / runs.METRICS).read_text().splitlines()]
    logged = [r for r in rows if "mem/l2_coverage" in r]
    assert logged and all(0 < r["mem/l2_coverage"] <= 1 and 0 < r["mem/l1_top_share"] <= 1 for r in logged)
    assert any(r["mem/l2_update_rms"] > 0 for r in logged[1:])  # rows learn (step 0's down-projection is 0)
    cov = [r["mem/l2_coverage"] for r in logged]
    assert cov == sorted(cov)  # "fetched at least once so far" never decreases


def test_generic_sequences_are_not_counted(tmp_path):
    run_dir = train(_cfg(tmp_path, "g", "memory.generic=true", "memory.generic_prob=0.5"))
    tel = json.loads((run_dir / FILE).read_text())
    n_seq = runs.read_final(run_dir)["steps"] * 8
    assert 0 < sum(tel["levels"]["1"]["fetch_counts"]) < n_seq


def test_anchor_runs_have_no_telemetry(tmp_path):
    run_dir = train(load_config(DEBUG_YAML, tiny_overrides(tmp_path, **{"train.max_tokens": 3000})))
    assert not (run_dir / FILE).exists()


@pytest.mark.slow  # a killed subprocess + two runs; test_faults covers kill-resume of the default path
def test_kill_and_resume_keeps_the_counts(tmp_path):
    """SIGKILL after a checkpoint, resume: the counts (checkpointed callback state) equal an uninterrupted run's."""
    import sys

    from tests.conftest import kill_after_checkpoint

    ov = [*tiny_overrides(tmp_path / "b", name="w", **{"train.max_tokens": 8 * 64 * 60, "train.ckpt_every": 4}), *MEM]
    cfg = load_config(DEBUG_YAML, ov)
    cmd = [sys.executable, "-m", "hmem_lit.cli", "train", str(DEBUG_YAML), *ov]
    step = kill_after_checkpoint(cmd, cfg.run_dir, min_step=8, timeout=300)
    assert 0 < step < 60
    resumed = json.loads((train(cfg) / FILE).read_text())
    ref = load_config(
        DEBUG_YAML,
        [*tiny_overrides(tmp_path / "a", name="w", **{"train.max_tokens": 8 * 64 * 60, "train.ckpt_every": 4}), *MEM],
    )
    whole = json.loads((train(ref) / FILE).read_text())
    assert resumed["levels"] == whole["levels"]
    assert torch.tensor(whole["levels"]["2"]["fetch_counts"]).sum() == 60 * 8


def test_report_draws_the_telemetry(tmp_path):
    from hmem_lit.analysis.report import build_report

    train(_cfg(tmp_path, "r"))
    out = build_report(str(tmp_path / "000_debug"), tmp_path / "rep")
    assert (out / "figures" / "memory_telemetry.png").stat().st_size > 2000
    assert "memory_telemetry" in (out / "report.md").read_text()


def test_pkm_rows_and_score_weights(tmp_path):
    """A token-level memory logs the value rows read (coverage never decreases) and the softmax weights of the
    best row and of a top-k row (best >= mean; the mean is exactly 1/k)."""
    cfg = load_config(
        DEBUG_YAML,
        [
            *tiny_overrides(tmp_path, name="p", **{"train.max_tokens": 8 * 64 * 8}),
            "memory.type=pkm",
            "memory.pkm.n_keys=8",
            "memory.pkm.topk=4",
            "memory.pkm.k_dim=16",
        ],
    )
    run_dir = train(cfg)
    rows = [json.loads(x) for x in (run_dir / runs.METRICS).read_text().splitlines()]
    logged = [r for r in rows if "mem/pkm_rows_coverage" in r]
    assert logged
    cov = [r["mem/pkm_rows_coverage"] for r in logged]
    assert cov == sorted(cov) and 0 < cov[-1] <= 1
    assert all(r["mem/pkm_top1_weight"] >= r["mem/pkm_topk_weight"] for r in logged)
    assert all(abs(r["mem/pkm_topk_weight"] - 1 / 4) < 1e-6 for r in logged)
    tel = json.loads((run_dir / FILE).read_text())
    assert len(tel["levels"]["0"]["fetch_counts"]) == 64


def test_counts_read_the_host_copy_of_the_paths_not_the_device_one():
    """On a GPU, batch["paths"].cpu() would be a host sync every step: the loader's copy is used instead (a
    device copy on the meta device here: reading it would raise)."""
    from types import SimpleNamespace

    from hmem_lit.telemetry import MemoryTelemetry

    cfg = load_config(DEBUG_YAML, MEM)
    host = {"paths": torch.tensor([[1, 5], [2, 9], [1, 6]]), "seq_idx": torch.arange(3)}
    device = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in host.items()}
    bank = SimpleNamespace(used=[(1, None), (2, None)])
    module = SimpleNamespace(
        cfg=cfg, host_batch=host, model=SimpleNamespace(memory=SimpleNamespace(bank=bank, routed=True))
    )
    ids = MemoryTelemetry("unused", 1)._level_ids(module, device)
    assert {k: v.tolist() for k, v in ids.items()} == {1: [1, 2, 1], 2: [5, 9, 6]}
    module.host_batch = {k: v[:2] for k, v in host.items()}  # not this batch's (another size): the batch itself
    with pytest.raises(NotImplementedError):
        MemoryTelemetry("unused", 1)._level_ids(module, device)
