"""memory.storage.kind=disk (hmem_lit/storage/disk.py): a bank whose tables and Adam moments are memory-mapped scratch
files trains bit for bit like the in-RAM bank, resumes exactly after SIGKILL, and its weights stream in and out
of safetensors in row blocks."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from hmem_lit import runs
from hmem_lit.config import ConfigError
from hmem_lit.storage import disk as storage

from .conftest import DEBUG_YAML, ROOT, kill_after_checkpoint, tiny_overrides
from .memory_util import make_cfg, make_model, train_random

MEM = {"memory.type": "ffn", "memory.levels": "[4,2]", "retriever.depth": 2, "retriever.branching": 4}


def test_disk_store_tensors_are_zeroed_writable_and_leave_no_file(tmp_path):
    store = storage.DiskStore(tmp_path / "scratch")
    t = store.zeros((5, 7))
    assert t.dtype == torch.float32 and t.shape == (5, 7) and torch.equal(t, torch.zeros(5, 7))
    t[2, 3] = 1.5
    t2 = t.view(35)  # a view of the same mapping
    assert float(t2[2 * 7 + 3]) == 1.5
    assert list((tmp_path / "scratch").iterdir()) == []  # unnamed files: nothing to clean up, even after kill -9


def test_write_safetensors_reads_back_with_safetensors(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CHUNK_BYTES", 24)  # many chunks per tensor
    g = torch.Generator().manual_seed(0)
    tensors = {
        "b.weight": torch.randn(13, 5, generator=g),
        "a.half": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "c.ids": torch.arange(11, dtype=torch.int64),
        "d.scalar": torch.tensor(2.5),
        "e.empty": torch.zeros(0, 4),
        "f.flag": torch.tensor([True, False, True]),
        "g.strided": torch.randn(6, 4, generator=g).t(),  # non-contiguous
    }
    storage.write_safetensors(tensors, tmp_path / "ours.safetensors", {"format": "pt"})
    got = load_file(str(tmp_path / "ours.safetensors"))
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    # every tensor starts aligned to its element size, so the mappable ones map in place (bool is copied)
    mapped = storage.map_safetensors(tmp_path / "ours.safetensors", tensors)
    assert set(mapped) == {"a.half", "b.weight", "c.ids", "d.scalar", "g.strided"}  # e.empty: nothing to map
    assert mapped["a.half"].dtype == torch.bfloat16
    assert all(torch.equal(mapped[k], tensors[k]) for k in mapped)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "ref.safetensors"))
    ref = load_file(str(tmp_path / "ref.safetensors"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_disk_bank_model_equals_ram_bank_through_optimizer_steps(tmp_path, monkeypatch):
    """Same seed, same batches: tables, moments and losses of a disk-backed bank equal the RAM bank's exactly, and
    the tables and both moments are allocated in the store (3 tensors per level), nothing else."""
    made: list[tuple[int, ...]] = []
    zeros = storage.DiskStore.zeros

    def counting(self, shape, dtype=torch.float32):
        made.append(tuple(shape))
        return zeros(self, shape, dtype)

    monkeypatch.setattr(storage.DiskStore, "zeros", counting)
    runs_out = []
    for kind in ("ram", "disk"):
        cfg = make_cfg("ffn", f"memory.storage.kind={kind}", f"memory.storage.dir={tmp_path / 'scratch'}")
        model, opt, losses = train_random(cfg, 4)  # level-1 nodes 2 and 3 are never fetched
        tables = {n: p.detach().clone() for n, p in model.named_parameters() if "bank" in n}
        moments = [
            {k: v.clone() for k, v in opt.state[p].items()} for _, _, p in model.memory.bank.tables() if p in opt.state
        ]
        runs_out.append((losses, tables, moments, model))
    (l_ram, t_ram, m_ram, ram), (l_disk, t_disk, m_disk, disk) = runs_out
    assert l_ram == l_disk
    assert t_ram.keys() == t_disk.keys() and all(torch.equal(t_ram[k], t_disk[k]) for k in t_ram)
    assert len(m_ram) == len(m_disk) == 2
    for a, b in zip(m_ram, m_disk):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shapes = [tuple(t.shape) for _, _, t in disk.memory.bank.tables()]
    assert sorted(made) == sorted(shapes * 3)  # tables + exp_avg + exp_avg_sq, only for the disk model
    assert all(storage.store_of(t) is not None for _, _, t in disk.memory.bank.tables())
    assert all(storage.store_of(t) is None for _, _, t in ram.memory.bank.tables())
    # unfetched rows (level-1 nodes 2, 3) are still the init: bit-identical to a fresh model's
    fresh = make_model(make_cfg("ffn"))
    for (lvl, _, t), (_, _, t0) in zip(disk.memory.bank.tables(), fresh.memory.bank.tables()):
        if lvl == 1:
            assert torch.equal(t[2:4], t0[2:4])


def test_disk_bank_stays_on_host_and_loads_in_row_blocks(tmp_path, monkeypatch):
    cfg = make_cfg("ffn", "memory.storage.kind=disk", f"memory.storage.dir={tmp_path}")
    model = make_model(cfg).to(torch.float64)
    assert all(t.dtype == torch.float32 for _, _, t in model.memory.bank.tables())  # tables ignore .to()
    assert model.anchor.tok_emb.weight.dtype == torch.float64
    src = make_model(make_cfg("ffn"), seed=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    monkeypatch.setattr(storage, "CHUNK_BYTES", 1000)  # several row blocks per table
    dst = make_model(cfg, seed=5)
    storage.load_safetensors_into(dst, path)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    with pytest.raises(RuntimeError, match="keys differ"):
        storage.load_safetensors_into(torch.nn.Linear(2, 2), path)


@pytest.mark.parametrize(
    "extra,key",
    [
        (["memory.storage.kind=tape"], "memory.storage.kind"),
        (["memory.type=pkm", "memory.storage.kind=disk"], "memory.storage.kind"),
    ],
)
def test_bad_storage_config_is_one_line(extra, key):
    from hmem_lit.config import load_config

    with pytest.raises(ConfigError, match=key):
        load_config(DEBUG_YAML, extra)


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float32", marks=pytest.mark.slow)])
def test_disk_bank_run_killed_and_resumed_equals_ram_run(tmp_path, dtype):
    """hmem train with memory.storage.kind=disk, SIGKILLed after a checkpoint and rerun, ends with weights and
    metrics bit-identical to an uninterrupted in-RAM run; eval's loader reads the disk run's weights equal.
    bfloat16 (the default-suite case) also checks that the stochastic rounding's seeds resume, and its disk run
    writes the row updates on the worker thread (memory.storage.async_update): checkpoints hold finished updates."""
    from hmem_lit.model import load_model

    extra = {
        **MEM,
        "memory.storage.dtype": dtype,
        "train.max_tokens": 40_960,
        "train.ckpt_every": 5,
        "train.val_every": 10,
    }
    ram_out, disk_out = tmp_path / "ram", tmp_path / "disk"
    train = [sys.executable, "-m", "hmem_lit.cli", "train", str(DEBUG_YAML)]
    import subprocess

    r = subprocess.run([*train, *tiny_overrides(ram_out, **extra)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    disk = {"memory.storage.kind": "disk", "memory.storage.async_update": str(dtype == "bfloat16").lower()}
    disk_args = tiny_overrides(disk_out, **extra, **disk)
    run_dir = disk_out / "000_debug" / "debug"
    step = kill_after_checkpoint([*train, *disk_args], run_dir, min_step=12, timeout=300)
    assert 0 < step < 80
    r = subprocess.run([*train, *disk_args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from step {step}" in r.stderr  # a status line: logging, on stderr
    ram_dir = ram_out / "000_debug" / "debug"
    wa, wb = load_file(str(ram_dir / runs.WEIGHTS)), load_file(str(run_dir / runs.WEIGHTS))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [{k: v for k, v in m.items() if k not in runs.TIMING_KEYS} for m in runs.read_metrics(ram_dir)]
    assert strip == [{k: v for k, v in m.items() if k not in runs.TIMING_KEYS} for m in runs.read_metrics(run_dir)]
    assert all(wb[k].dtype == getattr(torch, dtype) for k in wb if k.startswith("memory.bank."))
    model, cfg = load_model(run_dir)
    assert cfg.memory.storage.kind == "disk"
    assert all(storage.store_of(t) is not None for _, _, t in model.memory.bank.tables())
    assert all(torch.equal(model.state_dict()[k], wa[k]) for k in wa)
    assert [p.name for p in (disk_out / "000_debug").iterdir() if p.name.startswith(".hmem-bank")] == []
