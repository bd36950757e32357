"""Data-parallel training with sparse memory tables: the row-wise gradient sync equals the dense mean; DDP / FSDP
keep the tables out of their reducers; 2 processes == 1 process on the same global batch (slow); unfetched bank
rows stay bit-identical under DDP (slow); kill-and-resume stays exact under DDP (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hmem_lit.sync import merge_rows, sync_sparse_grads

from .conftest import DEBUG_YAML, ROOT, kill_after_checkpoint, tiny_overrides

# three tables: 2-D rows and rows of shape (2, 4); the 5-row one is covered so densely by the ranks' rows that the
# sync all-reduces it densely, the other two go through the all_gather path
SHAPES = [(64, 3), (5, 2, 4), (40, 2, 4)]
DENSE = [False, True, False]


def _rank_grads(rank: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Deterministic per-rank sparse gradients: different counts, duplicate ids, rank 1 has none for table 2."""
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for t, shape in enumerate(SHAPES):
        if rank == 1 and t == 2:
            out.append(None)
            continue
        n = 4 + 3 * rank
        ids = torch.randint(shape[0] - 2, (n,), generator=g)  # the last two rows are fetched by nobody
        out.append((ids, torch.randn((n, *shape[1:]), generator=g)))
    return out


def _dense(shape, ids, vals) -> torch.Tensor:
    d = torch.zeros(shape)
    d.index_add_(0, ids, vals)
    return d


def _sync_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        params = []
        for shape, gr in zip(SHAPES, _rank_grads(rank)):
            p = torch.nn.Parameter(torch.zeros(shape))
            if gr is not None:
                p.grad = torch.sparse_coo_tensor(gr[0].unsqueeze(0), gr[1], shape)  # uncoalesced
            params.append(p)
        stats = sync_sparse_grads(params)
        torch.save(
            {"grads": [p.grad for p in params], "bytes": stats.bytes, "tables": stats.per_table},
            os.path.join(out_dir, f"{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_merge_rows_equals_dense_mean():
    world = 3
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(10, (n,), generator=g) for n in (5, 0, 8)]
    vals = [torch.randn(len(i), 4, generator=g) for i in ids]
    ids[2][-2:] = -1  # padding is dropped, whatever its values
    out = merge_rows(ids, vals, (10, 4), world)
    assert out.is_coalesced()
    ref = sum(_dense((10, 4), i[i >= 0], v[i >= 0]) for i, v in zip(ids, vals)) / world
    torch.testing.assert_close(out.to_dense(), ref, rtol=0, atol=1e-6)
    assert set(out._indices()[0].tolist()) == set(torch.cat([i[i >= 0] for i in ids]).tolist())


def test_sync_sparse_grads_two_gloo_processes_equals_dense_mean(tmp_path):
    """Two real processes (gloo): every rank ends with the mean of all ranks' gradients, sparse and coalesced."""
    world = 2
    mp.spawn(_sync_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    per_rank = [_rank_grads(r) for r in range(world)]
    for t, shape in enumerate(SHAPES):
        contrib = [x[t] for x in per_rank if x[t] is not None]
        ref = sum(_dense(shape, i, v) for i, v in contrib) / world
        for r in range(world):
            g = res[r]["grads"][t]
            assert g.is_sparse and g.is_coalesced()
            torch.testing.assert_close(g.to_dense(), ref, rtol=0, atol=1e-6)
            assert set(g._indices()[0].tolist()) == set(torch.cat([i for i, _ in contrib]).tolist())
            assert not bool(g.to_dense()[-2:].any())  # rows nobody fetched get no gradient at all
        assert torch.equal(res[0]["grads"][t].to_dense(), res[1]["grads"][t].to_dense())  # identical on all ranks
    # bytes: counts (world x tables x 8) + per gathered table world x max rows x (row bytes + 8 id bytes), not the
    # table size; per densely reduced table the ring all-reduce of table + row mask
    n_max = [
        max(len(per_rank[r][t][0].unique()) for r in range(world) if per_rank[r][t] is not None)
        for t in range(len(SHAPES))
    ]  # distinct rows: each rank coalesces before sending
    row = [3 * 4, 2 * 4 * 4, 2 * 4 * 4]
    expect = [
        int(2 * (world - 1) / world * (s[0] * b + s[0])) if d else world * n * (b + 8)
        for s, d, n, b in zip(SHAPES, DENSE, n_max, row)
    ]
    assert [t["dense"] for t in res[0]["tables"]] == [int(d) for d in DENSE]
    assert [t["bytes"] for t in res[0]["tables"]] == expect
    assert res[0]["bytes"] == world * len(SHAPES) * 8 + sum(expect)
    assert expect[0] < SHAPES[0][0] * row[0]  # the gathered tables cost less than the table itself


def test_resolve_strategy_maps_ddp_and_fsdp_flavours():
    from hmem_lit.config import ConfigError
    from hmem_lit.distributed import BankDDPStrategy, BankFSDPStrategy, resolve_strategy

    s = resolve_strategy("ddp_spawn_find_unused_parameters_true", 2, True)
    assert isinstance(s, BankDDPStrategy) and s._start_method == "spawn"
    assert s._ddp_kwargs.get("find_unused_parameters") is True
    assert isinstance(resolve_strategy("ddp", 2, True), BankDDPStrategy)
    assert not resolve_strategy("ddp", 2, True)._ddp_kwargs.get("find_unused_parameters")
    assert resolve_strategy("ddp", 2, True, unused_params=True)._ddp_kwargs["find_unused_parameters"] is True
    assert isinstance(resolve_strategy("auto", 2, False), BankDDPStrategy)  # what Lightning would pick
    assert resolve_strategy("auto", 1, True) == "auto"
    assert isinstance(resolve_strategy("fsdp", 2, True), BankFSDPStrategy)
    assert resolve_strategy("fsdp_cpu_offload", 2, True).cpu_offload.offload_params
    with pytest.raises(ConfigError, match="DeepSpeed"):
        resolve_strategy("deepspeed_stage_2", 2, True)


@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")
@pytest.mark.parametrize("mtype", ["ffn", "pkm"])
def test_wrappers_leave_sparse_tables_out(mtype):
    """DDP's reducer and FSDP's flat parameters hold every parameter except the sparse tables (world 1, gloo)."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from hmem_lit.distributed import BankDDPStrategy, BankFSDPStrategy, sparse_tables
    from hmem_lit.lit_module import HmemLitModule
    from tests.memory_util import make_cfg

    cfg = make_cfg(mtype)
    init = tempfile.NamedTemporaryFile(delete=False)
    dist.init_process_group("gloo", init_method=f"file://{init.name}", rank=0, world_size=1)
    try:
        module = HmemLitModule(cfg, 50, total_steps=4, tokens_per_step=1)
        tables = sparse_tables(module)
        names = {n for n, _ in tables}
        assert names == (
            {"model.memory.values"} if mtype == "pkm" else {f"model.memory.bank.level{lvl}" for lvl in (1, 2)}
        )
        ddp = BankDDPStrategy(parallel_devices=[torch.device("cpu")], accelerator=CPUAccelerator())
        wrapped = ddp._setup_model(module)
        assert names <= wrapped.parameters_to_ignore
        reduced = {id(p) for p in wrapped._module_parameters}
        assert not reduced & {id(p) for _, p in tables}
        assert len(reduced) == len(list(module.parameters())) - len(tables)
        module2 = HmemLitModule(cfg, 50, total_steps=4, tokens_per_step=1)
        tables2 = [p for _, p in sparse_tables(module2)]
        shapes = [tuple(p.shape) for p in tables2]
        fsdp = BankFSDPStrategy(parallel_devices=[torch.device("cpu")], accelerator=CPUAccelerator())
        wrapped2 = fsdp._setup_model(module2)
        assert [tuple(p.shape) for p in tables2] == shapes  # not flattened
        assert {id(p) for p in tables2} <= {id(p) for p in wrapped2._ignored_params}
        handles = [m._handle for m in FSDP.fsdp_modules(wrapped2) if m._handle is not None]
        flat = sum(h.flat_param._unpadded_unsharded_size.numel() for h in handles)
        assert flat == sum(p.numel() for p in module.parameters()) - sum(p.numel() for _, p in tables)
    finally:
        dist.destroy_process_group()
        os.unlink(init.name)


# ------------------------------------------------------------------------------------------------------------
# multi-process runs through `hmem train` (slow)

MEMORY_OV = {
    "ffn": ["memory.type=ffn", "memory.levels=[4,8]"],
    "lora": ["memory.type=lora", "memory.levels=[2,4]", "memory.lora.target=ffn"],
    "kv": ["memory.type=kv", "memory.levels=[4,8]"],
    "pkm": ["memory.type=pkm", "memory.pkm.n_keys=8", "memory.pkm.topk=4", "memory.pkm.k_dim=16"],
}
COMMON = ["retriever.depth=2", "retriever.branching=4", "train.mode=scratch", "train.accelerator=cpu", "optim.warmup=0"]


def _run(out, name, *extra, batch_size=8, check=True, **ov):
    args = [
        *tiny_overrides(out, **{"train.max_tokens": 4096, "train.batch_size": batch_size, "train.val_every": 0, **ov}),
        *COMMON,
        *extra,
        f"name={name}",
    ]
    cmd = [sys.executable, "-m", "hmem_lit.cli", "train", str(DEBUG_YAML), *args]
    if not check:
        return cmd
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "000_debug" / name


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("one"), {}

    def get(mtype):
        if mtype not in cache:
            cache[mtype] = _weights(_run(out, f"one_{mtype}", *MEMORY_OV[mtype], batch_size=8))
        return cache[mtype]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("mtype", ["ffn", "lora", "kv", "pkm"])
def test_two_processes_equal_one_process_same_global_batch(tmp_path, one_process_runs, mtype, strategy):
    """2 ranks x 4 sequences == 1 process x 8 sequences: anchor and memory (bank / PKM values) weights agree."""
    from hmem_lit import runs

    ref = one_process_runs(mtype)
    run_dir = _run(tmp_path, "dp", *MEMORY_OV[mtype], f"train.strategy={strategy}", "train.devices=2", batch_size=4)
    final = runs.read_final(run_dir)
    assert final["steps"] == 8 and final["tokens"] == 8 * 8 * 64
    got = _weights(run_dir)
    assert got.keys() == ref.keys()
    sparse = [k for k in got if k.startswith("memory.bank.") or k == "memory.values"]
    assert sparse and any(k.startswith("anchor.") for k in got)
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_with_disk_banks_equal_one_process(tmp_path, one_process_runs, strategy):
    """memory.storage.kind=disk under DDP / FSDP (each rank maps its own scratch tables; the sparse sync keeps them
    equal) gives the one-process RAM run's weights."""
    ref = one_process_runs("ffn")
    ov = [*MEMORY_OV["ffn"], "memory.storage.kind=disk", f"train.strategy={strategy}", "train.devices=2"]
    got = _weights(_run(tmp_path, "dp_disk", *ov, batch_size=4))
    assert got.keys() == ref.keys()
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_with_bf16_banks_equal_one_process(tmp_path, strategy):
    """memory.storage.dtype=bfloat16 under DDP / FSDP: the bfloat16 sparse gradients travel through the row sync (gloo)
    and both ranks round with the same seeded bits, so 2 ranks x 4 sequences give the 1 x 8 run's bank to within
    one bfloat16 step (the float32 sums differ in their last bits, which can flip a stochastic rounding)."""
    ov = [*MEMORY_OV["ffn"], "memory.storage.dtype=bfloat16"]
    ref = _weights(_run(tmp_path, "one_bf16", *ov, batch_size=8))
    got = _weights(_run(tmp_path, "dp_bf16", *ov, f"train.strategy={strategy}", "train.devices=2", batch_size=4))
    assert got.keys() == ref.keys()
    bank = [k for k in got if k.startswith("memory.bank.")]
    assert bank and all(got[k].dtype == ref[k].dtype == torch.bfloat16 for k in bank)
    for k in got:
        tol = dict(rtol=2**-7, atol=1e-4) if k in bank else dict(rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(got[k].float(), ref[k].float(), **tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_two_processes_with_prefetch_and_async_update_equal_without(tmp_path):
    """memory.storage.prefetch under DDP: each rank stages its own next micro-batch (the sampler's rank slice); the
    weights are bit-identical to the same 2-process run without prefetch, and every step after the first hit.
    Adding memory.storage.async_update (each rank's row updates on its own worker) keeps them bit-identical too."""
    from hmem_lit import runs

    ov = [*MEMORY_OV["ffn"], "memory.storage.offload=true", "train.strategy=ddp", "train.devices=2"]
    plain = _weights(_run(tmp_path, "dp_plain", *ov, batch_size=4))
    run_dir = _run(tmp_path, "dp_prefetch", *ov, "memory.storage.prefetch=true", batch_size=4)
    got = _weights(run_dir)
    assert got.keys() == plain.keys() and all(torch.equal(got[k], plain[k]) for k in got)
    final = runs.read_final(run_dir)
    assert final["throughput"]["prefetch_hits"] == (final["steps"] - 1) * 2  # rank 0's count, 2 bank levels
    run_dir = _run(
        tmp_path, "dp_async", *ov, "memory.storage.prefetch=true", "memory.storage.async_update=true", batch_size=4
    )
    got = _weights(run_dir)
    assert got.keys() == plain.keys() and all(torch.equal(got[k], plain[k]) for k in got)
    assert runs.read_final(run_dir)["throughput"]["async_updates"] == runs.read_final(run_dir)["steps"] * 2


def _init_and_fetched(cfg_args, world, batch_size):
    """The weights `hmem train` starts from, and per bank table the rows the global batches fetch."""
    from hmem_lit.config import load_config
    from hmem_lit.data.datamodule import HmemDataModule, StepBatchSampler
    from hmem_lit.lit_module import HmemLitModule
    from hmem_lit.utils import seed_everything

    cfg = load_config(DEBUG_YAML, cfg_args)
    tps = batch_size * world * cfg.data.seq_len
    total = -(-cfg.train.max_tokens // tps)
    seed_everything(cfg.train.seed)
    dm = HmemDataModule(cfg, total)
    model = HmemLitModule(cfg, dm.vocab_size, total, tps).model
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fetched = {}
    for rank in range(world):
        s = StepBatchSampler(len(dm.train_split), batch_size, 1, total, cfg.train.seed, rank=rank, world=world)
        for idx in s:
            paths = torch.as_tensor(dm.train_split.paths[idx])
            for lvl, _, _ in model.memory.bank.tables():
                fetched.setdefault(f"memory.bank.level{lvl}", set()).update(paths[:, lvl - 1].tolist())
    return init, fetched


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_unfetched_bank_rows_bit_identical_across_ranks(tmp_path, strategy):
    """Rows no rank fetched in any step are bit-identical to their init (weight decay on); fetched ones moved."""
    extra = [
        "memory.type=ffn",
        "memory.levels=[2,2,4]",
        "retriever.depth=3",
        "retriever.branching=4",
        "optim.memory_weight_decay=0.1",
        f"train.strategy={strategy}",
        "train.devices=2",
    ]
    cmd = _run(tmp_path, "rows", *extra, batch_size=2, check=False, **{"train.max_tokens": 1024})
    args = cmd[cmd.index(str(DEBUG_YAML)) + 1 :]
    init, fetched = _init_and_fetched([a for a in args if not a.startswith("name=")], world=2, batch_size=2)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _weights(tmp_path / "000_debug" / "rows")
    assert set(fetched) == {"memory.bank.level1", "memory.bank.level2", "memory.bank.level3"}
    for name, rows in fetched.items():
        mask = torch.zeros(got[name].shape[0], dtype=torch.bool)
        mask[list(rows)] = True
        if name == "memory.bank.level3":
            assert 0 < mask.sum() < len(mask) // 2  # 16 sequences in all, 64 leaves: most rows never fetched
        assert torch.equal(got[name][~mask], init[name][~mask]), name  # bit-identical
        assert (got[name][mask] != init[name][mask]).any(dim=1).all(), name  # every fetched row moved


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["ram", "disk"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_kill_and_resume_exact_with_two_processes(tmp_path, strategy, storage):
    """Both ranks SIGKILLed mid-run, relaunched: same weights and losses as an uninterrupted 2-process run (with
    memory.storage.kind=disk for the killed run: also equal to the RAM bank's)."""
    from hmem_lit import runs

    extra = [*MEMORY_OV["ffn"], f"train.strategy={strategy}", "train.devices=2"]
    ov = {"train.max_tokens": 24_576, "train.ckpt_every": 8}  # 48 steps
    ref = _run(tmp_path, "ref", *extra, batch_size=4, **ov)
    cmd = _run(tmp_path, "killed", *extra, f"memory.storage.kind={storage}", batch_size=4, check=False, **ov)
    run_dir = tmp_path / "000_debug" / "killed"
    step = kill_after_checkpoint(cmd, run_dir, min_step=20, timeout=300)
    assert 0 < step < 48
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {step}" in r.stderr  # a status line: logging, on stderr
    a, b = _weights(ref), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[(m["step"], m["train/loss"]) for m in runs.read_metrics(d) if "train/loss" in m] for d in (ref, run_dir)]
    assert losses[0] == losses[1]
