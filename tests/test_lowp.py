"""bfloat16 banks (hmem_lit/storage/lowp.py): stochastic rounding is unbiased and seeded; a bfloat16 bank is
initialised as the float32 bank rounded, trains row-wise (unfetched rows and their moments untouched), equals
itself on disk and in RAM, resumes exactly, tracks the float32 bank, and keeps small late updates that
round-to-nearest loses."""

from __future__ import annotations

import io

import pytest
import torch

from hmem_lit.config import ConfigError, StorageConfig, load_config
from hmem_lit.optim import RowwiseAdamW, build_optimizer
from hmem_lit.storage import Backend, lowp
from hmem_lit.storage import disk as storage

from .conftest import DEBUG_YAML
from .memory_util import VOCAB, make_cfg, make_model, random_paths, train_random

BF16 = "memory.storage.dtype=bfloat16"


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two bfloat16 values around each float32 x (toward and away from zero)."""
    low = (x.view(torch.int32) & -65536).view(torch.float32)  # truncated: toward zero
    high = (low.view(torch.int32) + 65536).view(torch.float32)  # next bf16 away from zero
    return low, high


def test_stochastic_rounding_picks_a_neighbour_is_unbiased_and_seeded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * torch.logspace(-6, 3, 4096)
    x[::7] = -x[::7]
    low, high = _neighbours(x)
    r = lowp.stochastic_round_bf16(x, lowp.generator(x.device, 0, 1, 0)).float()
    assert bool(((r == low) | (r == high)).all())  # always one of the two neighbours
    again = lowp.stochastic_round_bf16(x, lowp.generator(x.device, 0, 1, 0))
    other = lowp.stochastic_round_bf16(x, lowp.generator(x.device, 0, 2, 0))
    assert torch.equal(again.float(), r) and not torch.equal(other.float(), r)  # seeded by (seed, step, index)
    exact = x.to(torch.bfloat16).float()  # representable values stay as they are
    assert torch.equal(lowp.stochastic_round_bf16(exact, lowp.generator(x.device, 0, 1, 0)).float(), exact)
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0])
    s = lowp.stochastic_round_bf16(special, lowp.generator(x.device, 0, 1, 0)).float()
    assert s[0] == float("inf") and s[1] == float("-inf") and bool(s[2].isnan()) and bool((s[3:] == 0).all())
    # unbiased: over many draws the mean of one value's roundings is the value (the remainder's share rounds up)
    v = torch.full((200_000,), 1.0 + 0.3 * 2**-7)  # 30% of the way from 1 to the next bf16 (1 + 2**-7)
    mean = lowp.stochastic_round_bf16(v, lowp.generator(v.device, 3, 1, 0)).double().mean()
    assert abs(float(mean) - float(v[0])) < 3 * (0.3 * 0.7 / 200_000) ** 0.5 * 2**-7
    with pytest.raises(TypeError):
        lowp.stochastic_round_bf16(x.double(), lowp.generator(x.device, 0, 1, 0))


@pytest.mark.parametrize("mtype", ["ffn", "lora", "kv"])
def test_bf16_bank_init_is_the_float32_init_rounded(mtype, tmp_path):
    ref = make_model(make_cfg(mtype))
    for extra in ([BF16], [BF16, "memory.storage.kind=disk", f"memory.storage.dir={tmp_path}"]):
        low = make_model(make_cfg(mtype, *extra))
        for (_, _, a), (_, _, b) in zip(ref.memory.bank.tables(), low.memory.bank.tables()):
            assert b.dtype == torch.bfloat16 and torch.equal(b, a.detach().to(torch.bfloat16))
        # everything outside the bank is float32 and equal
        sa, sb = ref.state_dict(), low.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa if ".bank." not in k)


def _bank_state(model, opt) -> list[torch.Tensor]:
    out = []
    for _, _, t in model.memory.bank.tables():
        out += [t.detach().clone(), opt.state[t]["exp_avg"].clone(), opt.state[t]["exp_avg_sq"].clone()]
    return out


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_bf16_bank_trains_rowwise_equal_on_disk_and_resumes_exactly(rounding, tmp_path):
    cfg = make_cfg("ffn", BF16, f"memory.storage.rounding={rounding}")
    model, opt, losses = train_random(cfg, 4)
    fresh = make_model(cfg)
    for (lvl, _, t), (_, _, t0) in zip(model.memory.bank.tables(), fresh.memory.bank.tables()):
        st = opt.state[t]
        assert t.dtype == st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.bfloat16  # 6 bytes a parameter
        assert not torch.equal(t, t0)  # trained
        if lvl == 1:  # unfetched rows: bit-identical to the init, moments and counts zero
            assert torch.equal(t[2:4], t0[2:4])
            assert not st["exp_avg"][2:4].any() and not st["exp_avg_sq"][2:4].any() and not st["step"][2:4].any()
    # the same run with the bank on disk: bit for bit equal
    disk_cfg = make_cfg("ffn", BF16, f"memory.storage.rounding={rounding}", "memory.storage.kind=disk")
    with storage.scratch_dir(tmp_path):
        disk, dopt, dlosses = train_random(disk_cfg, 4)
    assert dlosses == losses and all(storage.store_of(t) is not None for _, _, t in disk.memory.bank.tables())
    assert all(torch.equal(a, b) for a, b in zip(_bank_state(model, opt), _bank_state(disk, dopt)))
    # resume: 2 steps, checkpoint through torch.save / torch.load(weights_only=True), 2 more == 4 straight
    half, hopt, first = train_random(cfg, 2)
    buf = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": hopt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = make_model(cfg, seed=7)
    resumed.load_state_dict(ckpt["model"])
    ropt = build_optimizer(resumed, cfg, total_steps=8)["optimizer"]
    ropt.load_state_dict(ckpt["opt"])
    resumed, ropt, second = train_random(cfg, 2, model=resumed, opt=ropt, start=2)
    assert first + second == losses
    assert all(torch.equal(a, b) for a, b in zip(_bank_state(model, opt), _bank_state(resumed, ropt)))


def test_bf16_bank_tracks_the_float32_bank():
    """20 steps on the same batches: the bfloat16 bank's losses stay within 0.1% of the float32 bank's and its
    tables' training updates (trained - init) within 5% of the float32 ones (measured: ~2%)."""
    m32, _, l32 = train_random(make_cfg("ffn"), 20)
    m16, _, l16 = train_random(make_cfg("ffn", BF16), 20)
    init = make_model(make_cfg("ffn"))
    assert max(abs(a - b) / a for a, b in zip(l32, l16)) < 1e-3
    for (_, _, a), (_, _, b), (_, _, z) in zip(
        m32.memory.bank.tables(), m16.memory.bank.tables(), init.memory.bank.tables()
    ):
        d32, d16 = (a - z).detach(), (b.float() - z).detach()
        assert float((d16 - d32).norm() / d32.norm()) < 0.05


def test_stochastic_rounding_keeps_updates_that_nearest_loses():
    """Updates 1/20 of bf16's spacing: round-to-nearest leaves the rows where they were after 200 steps; stochastic
    rounding moves them by the float32 run's distance in expectation (each row draws its own bits)."""
    moved = {}
    for rounding, dtype in (("stochastic", torch.bfloat16), ("nearest", torch.bfloat16), ("none", torch.float32)):
        bf16 = dict(dtype="bfloat16", rounding=rounding) if rounding != "none" else {}
        table = Backend(StorageConfig(**bf16)).table("level1", (64, 8))  # rounds its rows by memory.storage.rounding
        table.data.fill_(1)
        lr = 2**-8 / 20  # bf16 spacing just above 1 is 2**-7; half of it is 2**-8: 1/20 of that per step
        opt = RowwiseAdamW([dict(params=[table], sparse=True, seed=0)], lr=lr)
        for _ in range(200):
            ids = torch.arange(64)
            ones = -torch.ones(64, 8, dtype=dtype)
            grad = torch.sparse_coo_tensor(ids[None], ones, table.shape, check_invariants=True)
            table.grad = grad  # a constant gradient: Adam steps of exactly lr, upward
            opt.step()
        moved[rounding] = (table.detach().float() - 1).mean().item()
    assert moved["none"] == pytest.approx(200 * 2**-8 / 20, rel=1e-3)
    assert moved["nearest"] == 0.0  # every update rounded away
    assert moved["stochastic"] == pytest.approx(moved["none"], rel=0.1)


def test_bf16_bank_keeps_its_dtype_under_casts_and_computes_in_the_activations_dtype():
    m = make_model(make_cfg("ffn", BF16)).to(torch.float64)
    assert m.anchor.tok_emb.weight.dtype == torch.float64
    assert all(p.dtype == torch.bfloat16 for p in m.memory.sparse_parameters())
    x = torch.randint(0, VOCAB, (3, 9))
    logits = m(x, paths=random_paths(3, 4))
    assert logits.dtype == torch.float64
    logits.sum().backward()
    assert all(p.grad.is_sparse and p.grad.dtype == torch.bfloat16 for p in m.memory.sparse_parameters())


def test_info_counts_the_bf16_training_state_at_half():
    from hmem_lit.model import info

    def state_line(*extra):
        line = next(x for x in info(make_cfg("ffn", *extra, levels="[4,25000]")).splitlines() if "training state" in x)
        return float(line.split("training state")[1].split("GiB")[0].replace(",", ""))

    assert state_line(BF16) == pytest.approx(state_line() / 2, abs=0.1)


@pytest.mark.parametrize(
    "extra,key",
    [
        (["memory.storage.dtype=float16"], "memory.storage.dtype"),
        (["memory.type=ffn", "memory.levels=[4]", "memory.storage.dtype="], "memory.storage.dtype: got ''; allowed"),
        (
            ["memory.type=ffn", "memory.levels=[4]", "memory.storage.rounding=nearest"],
            "memory.storage.rounding: rounds bfloat16",
        ),
        (
            ["memory.type=pkm", "memory.storage.prefetch=true"],
            "memory.storage.prefetch: .*set memory.storage.prefetch=false",
        ),
        (["memory.storage.rounding=up"], "memory.storage.rounding"),
        (["memory.type=pkm", "memory.storage.dtype=bfloat16"], "memory.storage.dtype"),
    ],
)
def test_bad_dtype_config_is_one_line(extra, key):
    with pytest.raises(ConfigError, match=key):
        load_config(DEBUG_YAML, extra)


def test_report_rows_name_the_bank_dtype(tmp_path):
    """hmem report's runs table: memory_dtype / rounding columns and a label that tells a bf16 bank apart."""
    from hmem_lit.analysis.collect import _base_row, classify
    from hmem_lit.config import to_dict

    rows = []
    for extra in ([], [BF16], [BF16, "memory.storage.rounding=nearest"]):
        cfg = to_dict(make_cfg("ffn", *extra))
        final = {"config": cfg, "params": {"anchor": 1000, "fetched": 100, "bank": 10_000}}
        rows.append(_base_row(tmp_path, tmp_path, final))
    classify(rows)
    assert [(r["memory_dtype"], r["rounding"]) for r in rows] == [
        ("float32", "-"),
        ("bfloat16", "stochastic"),
        ("bfloat16", "nearest"),
    ]
    labels = [r["label"] for r in rows]
    assert "bf16" not in labels[0] and " bf16 " in labels[1] and " bf16-nearest " in labels[2]
    assert len({r["config_id"] for r in rows}) == 3
    assert (make_cfg("none", BF16).memory.storage.dtype, make_cfg("none", BF16).memory.storage.prefetch) == (
        "float32",
        False,
    )


def test_only_bfloat16_tables_take_the_rounding_path():
    """A float32 bank cast to float64 (it follows casts) still trains in its own dtype, as before bfloat16."""
    cfg = make_cfg("ffn")
    model = make_model(cfg).to(torch.float64)
    before = [t.detach().clone() for _, _, t in model.memory.bank.tables()]
    model, _, losses = train_random(cfg, 2, model=model)
    after = [t.detach() for _, _, t in model.memory.bank.tables()]
    assert all(t.dtype == torch.float64 for t in after) and all(not torch.equal(a, b) for a, b in zip(before, after))
