"""Write-back (hmem_lit/storage/writeback.py): row-wise updates written by a worker thread give the inline
update's numbers bit for bit (float32 in-place and gathered rows, bfloat16 with either rounding, with and without
the next batch's rows written first); a read waits exactly for the pending rows it needs; checkpoints and the next
step see finished updates; a worker failure reaches the training loop; a training run equals the inline run."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

from hmem_lit import runs, storage
from hmem_lit.anchor import lm_loss
from hmem_lit.config import ConfigError, load_config
from hmem_lit.optim import RowwiseAdamW, build_optimizer, clip_gradients
from hmem_lit.storage import writeback

from .conftest import DEBUG_YAML, assert_same_run, train_each
from .memory_util import VOCAB, cuda_offload_run, make_cfg, make_model, random_paths

ASYNC = "memory.storage.async_update=true"


def _train(cfg, steps: int, expect: bool = True, model_first: bool = True):
    """Hand loop on seeded batches; the bank is told the next batch's paths before each step (as the
    LightningModule does). -> (losses, state_dict copy, optimiser state_dict, model); the two state dicts are
    taken right after the last step, the model's first (or the optimiser's)."""
    model = make_model(cfg)
    o = build_optimizer(model, cfg, total_steps=20)
    opt, sched = o["optimizer"], o["lr_scheduler"]["scheduler"]
    g = torch.Generator().manual_seed(3)
    data = [(torch.randint(0, VOCAB, (6, 17), generator=g), random_paths(6, 4, gen=g)) for _ in range(steps + 1)]
    losses = []
    for i in range(steps):
        idx, paths = data[i]
        loss = lm_loss(model(idx[:, :-1], paths=paths), idx[:, 1:])
        loss.backward()
        losses.append(float(loss.detach()))
        clip_gradients(model, cfg)
        if expect:
            model.memory.bank.expect(data[i + 1][1], None)
        opt.step()
        sched.step()
        opt.zero_grad()
    if model_first:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        return losses, state, opt.state_dict(), model
    opt_state = opt.state_dict()
    return losses, {k: v.clone() for k, v in model.state_dict().items()}, opt_state, model


def _opt_equal(a: dict, b: dict) -> bool:
    sa, sb = a["state"], b["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k][n], sb[k][n]) for k in sa for n in sa[k] if isinstance(sa[k][n], torch.Tensor)
    )


@pytest.mark.parametrize(
    "levels,extra",
    [
        ("[4,8]", []),  # small rows: gathered, updated, scattered
        ("[16,32]", []),  # rows of >= 4096 numbers: updated in place through per-row views
        ("[4,8]", ["memory.storage.dtype=bfloat16"]),  # stochastic rounding: the same random bits for split rows
        ("[4,8]", ["memory.storage.dtype=bfloat16", "memory.storage.rounding=nearest"]),
        ("[4,8]", ["memory.type=lora"]),
    ],
)
@pytest.mark.parametrize("expect", [True, False])
def test_async_update_equals_the_inline_update_bit_for_bit(levels, extra, expect):
    mtype = next((e.split("=")[1] for e in extra if e.startswith("memory.type=")), "ffn")
    extra = [e for e in extra if not e.startswith("memory.type=")]
    ref = _train(make_cfg(mtype, *extra, levels=levels), 6)
    got = _train(make_cfg(mtype, *extra, ASYNC, levels=levels), 6, expect)
    assert got[0] == ref[0]
    assert ref[1].keys() == got[1].keys() and all(torch.equal(ref[1][k], got[1][k]) for k in ref[1])
    assert _opt_equal(ref[2], got[2])
    wb = got[3].memory.bank.backend.writeback
    assert wb is not None and wb.updates == 6 * 2 and ref[3].memory.bank.backend.writeback is None


class _Gate:
    """Stands in for an update: marks its `hot` rows, yields, then blocks until released and marks the rest."""

    def __init__(self, t: torch.Tensor, rows: torch.Tensor):
        self.t, self.rows, self.release, self.started = t, rows, threading.Event(), threading.Event()

    def __call__(self, hot):
        self.started.set()
        if hot is not None:
            self.t[self.rows[hot]] = 1.0
        yield
        assert self.release.wait(10)
        self.t[self.rows if hot is None else self.rows[~hot]] = 1.0


def _waits_within(fn, seconds: float) -> bool:
    """Whether fn() returns within `seconds` (run on a helper thread)."""
    th = threading.Thread(target=fn, daemon=True)
    th.start()
    th.join(seconds)
    return not th.is_alive()


def test_a_read_waits_only_for_the_pending_rows_it_needs():
    """Two tables updated in one job: both first phases (the expected rows) are written before either second
    phase, so a read of expected rows of the second table returns while the first table's rest still runs."""
    wb, t, u, other = writeback.WriteBack(), torch.zeros(8, 2), torch.zeros(8, 2), torch.zeros(8, 2)
    wb.expect(t, torch.tensor([1, 1, 2]))
    wb.expect(u, torch.tensor([3]))
    gt, gu = _Gate(t, torch.tensor([1, 2, 5, 6])), _Gate(u, torch.tensor([3, 4]))
    wb.submit(t, gt.rows, gt)
    wb.submit(u, gu.rows, gu)
    wb.launch()
    assert gt.started.wait(10)
    assert _waits_within(lambda: wb.wait_rows(t, torch.tensor([2, 1])), 5)  # the rows written first
    assert _waits_within(lambda: wb.wait_rows(u, torch.tensor([3])), 5)  # the other table's first phase too
    assert bool((t[[1, 2]] == 1).all()) and not bool(t[[5, 6]].any()) and u[3, 0] == 1 and u[4, 0] == 0
    assert _waits_within(lambda: wb.wait_rows(t, torch.tensor([0, 3, 7])), 5)  # rows no update writes
    assert _waits_within(lambda: wb.wait_rows(other, torch.tensor([5])), 5)  # a table without an update
    assert not _waits_within(lambda: wb.wait_rows(t, torch.tensor([1, 5])), 0.3)  # a row still being written
    gt.release.set()
    gu.release.set()
    wb.wait()
    assert bool((t[[1, 2, 5, 6]] == 1).all()) and bool((u[[3, 4]] == 1).all()) and wb.updates == 2


@pytest.mark.parametrize("model_first", [True, False])
def test_a_checkpoint_holds_the_update_still_running_when_it_was_asked_for(monkeypatch, model_first):
    """The model's or the optimiser's state_dict, asked for while the last step's update is still running,
    waits for it (what a checkpoint right after a step needs)."""
    ref = _train(make_cfg("ffn"), 1, expect=False)
    inner = RowwiseAdamW._rows_update
    release = threading.Event()

    def slow(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(10)
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(RowwiseAdamW, "_rows_update", slow)
    threading.Timer(0.3, release.set).start()  # the update finishes only after state_dict has been asked for
    losses, state, opt_state, _ = _train(make_cfg("ffn", ASYNC), 1, expect=False, model_first=model_first)
    assert losses == ref[0] and all(torch.equal(ref[1][k], state[k]) for k in ref[1])
    assert _opt_equal(ref[2], opt_state)


def test_a_failed_update_is_raised_in_the_training_loop():
    wb, t = writeback.WriteBack(), torch.zeros(4, 2)

    def broken(hot):
        raise RuntimeError("disk full")
        yield

    wb.expect(t, torch.tensor([1]))
    wb.submit(t, torch.tensor([1, 2]), broken)
    wb.submit(t, torch.tensor([3]), broken)
    with pytest.raises(RuntimeError, match="disk full"):
        wb.wait_rows(t, torch.tensor([1]))  # a waiter on the first part does not hang
    wb.wait()  # the failed job is reported once, with all its updates
    wb.submit(t, torch.tensor([3]), broken)
    with pytest.raises(RuntimeError, match="disk full"):
        wb.wait()
    wb.wait()  # reported once, then gone


def test_waits_count_only_the_times_the_loop_blocked():
    wb, t = writeback.WriteBack(), torch.zeros(8, 2)
    wb.expect(t, torch.tensor([1]))
    gate = _Gate(t, torch.tensor([1, 5]))
    wb.submit(t, gate.rows, gate)
    wb.launch()
    assert gate.started.wait(10)
    for _ in range(1000):  # until the first phase is done and marked so (at most 10 s): the worker writes the rows
        if bool(t[1, 0] == 1) and all(u.first.is_set() for u in wb._pending):  # before it sets `first`
            break
        threading.Event().wait(0.01)
    assert bool(t[1, 0] == 1)
    wb.wait_rows(t, torch.tensor([1]))  # already written: returns at once, not a wait
    assert wb.waits == 0
    threading.Timer(0.2, gate.release.set).start()
    wb.wait()  # blocks until the rest is written (the next step, a checkpoint)
    assert wb.waits == 1 and wb.wait_s >= 0.1


def test_async_update_with_the_bank_on_the_gpu_is_refused(monkeypatch):
    from hmem_lit import train

    monkeypatch.setattr(train, "_on_cuda", lambda cfg: True)
    with pytest.raises(ConfigError, match="memory.storage.async_update: .*memory.storage.offload=true"):
        train._check_cuda_settings(make_cfg("ffn", ASYNC))
    train._check_cuda_settings(make_cfg("ffn", ASYNC, "memory.storage.offload=true"))  # the bank on the host: fine
    train._check_cuda_settings(make_cfg("ffn", ASYNC, "memory.storage.kind=disk"))
    monkeypatch.setattr(train, "_on_cuda", lambda cfg: False)
    train._check_cuda_settings(make_cfg("ffn", ASYNC))  # a CPU run: the bank is on the host


def test_copied_and_pickled_models_get_their_own_idle_writeback():
    model = make_model(make_cfg("ffn", ASYNC))
    wb = model.memory.bank.backend.writeback
    dup = copy.deepcopy(model)
    new = dup.memory.bank.backend.writeback
    assert new is not None and new is not wb
    assert all(storage.of(t).writeback is new for _, _, t in dup.memory.bank.tables())  # the copy's tables: its own
    again = pickle.loads(pickle.dumps(wb))
    assert isinstance(again, writeback.WriteBack) and again.updates == 0


def test_async_update_config():
    with pytest.raises(ConfigError, match="memory.storage.async_update"):
        load_config(DEBUG_YAML, ["memory.type=pkm", "memory.pkm.mode=add", ASYNC])
    assert load_config(DEBUG_YAML, ["memory.type=none", ASYNC]).memory.storage.async_update is False  # no bank: no-op


def test_async_update_run_equals_the_inline_run(tmp_path):
    """hmem train with offload + prefetch + async_update (gradient accumulation 2, generic block on) gives the
    inline run's weights and metrics bit for bit; every table update of every step ran on the worker."""
    extra = {
        "memory.type": "ffn",
        "memory.levels": "[4,2]",
        "memory.generic": "true",
        "memory.storage.offload": "true",
        "memory.storage.prefetch": "true",
        "retriever.depth": 2,
        "retriever.branching": 4,
        "train.accumulate": 2,
        "train.max_tokens": 16_384,
        "train.log_every": 2,  # mem/l*_update_rms: read on the written steps only with async_update, the same
    }
    dirs = train_each(tmp_path, "memory.storage.async_update", ["false", "true"], **extra)
    assert_same_run(dirs["false"], dirs["true"])
    assert any("mem/l2_update_rms" in m for m in runs.read_metrics(dirs["true"]))
    final = runs.read_final(dirs["true"])
    assert final["throughput"]["async_updates"] == final["steps"] * 2  # two bank levels a step
    assert final["throughput"]["prefetch_hits"] == (final["steps"] * 2 - 1) * 2  # staging waited, then hit
    assert "async_updates" not in runs.read_final(dirs["false"])["throughput"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_offloaded_async_update_equals_the_inline_update(dtype):
    common = ["memory.storage.prefetch=true", f"memory.storage.dtype={dtype}"]
    inline, asyn = cuda_offload_run(*common), cuda_offload_run(*common, ASYNC)
    assert inline[0] == asyn[0] and all(torch.equal(a, b) for a, b in zip(inline[1], asyn[1]))


def test_flex_attention_with_narrow_heads_on_cuda_is_refused_before_work(monkeypatch):
    """Inductor's CUDA flex kernel needs head_dim >= 16: a config that asks for it anyway is one line up front."""
    from hmem_lit import train

    monkeypatch.setattr(train, "_on_cuda", lambda cfg: True)
    with pytest.raises(ConfigError, match=r"anchor.attention=flex: .*head_dim >= 16 \(got 8\)"):
        train._check_cuda_settings(make_cfg("ffn", "anchor.attention=flex"))
    train._check_cuda_settings(make_cfg("ffn", "anchor.attention=auto"))  # auto falls back to sdpa
    train._check_cuda_settings(make_cfg("ffn", "anchor.attention=flex", "anchor.head_dim=16"))
    monkeypatch.setattr(train, "_on_cuda", lambda cfg: False)
    train._check_cuda_settings(make_cfg("ffn", "anchor.attention=flex"))  # CPU flex has no such limit
