"""benchmarks/bench_gpu.py --smoke: every variant's code path runs on CPU and its numbers are self-consistent."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_gpu
from hmem_lit.config import load_config
from hmem_lit.model import MemoryLM
from hmem_lit.throughput import model_flops_per_token


def test_smoke_writes_consistent_json(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    names = "anchor-160m,memory-160m,memory-160m-offload,memory-160m-offload-prefetch,memory-160m-disk"
    args = ["--smoke", "--variants", names, "--out", str(out), "--peak-tflops", "1", "--storage-dir", str(tmp_path)]
    assert bench_gpu.main(args) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["peak_flops"] == 1e12 and set(res["variants"]) == set(names.split(","))
    for v in res["variants"].values():
        b, t = v["batch"]
        assert (b, t) == (4, 64) and v["attention"] == "sdpa" and not v["compiled"]
        assert v["tokens_per_s"] == pytest.approx(b * t / (v["step_ms"] / 1e3), rel=1e-3)
        assert v["mfu"] == pytest.approx(v["tokens_per_s"] * v["flops_per_token"] / 1e12, rel=1e-3, abs=1e-4)
    mem, off = res["variants"]["memory-160m"], res["variants"]["memory-160m-offload"]
    assert off["offload"] and not mem["offload"] and off["params"] == mem["params"]
    assert mem["params"]["fetched"] > 0 and res["variants"]["anchor-160m"]["params"]["fetched"] == 0
    cfg = load_config(None, [*bench_gpu.MEMORY, "anchor.preset=tiny", "retriever.branching=4"])
    assert mem["flops_per_token"] == model_flops_per_token(MemoryLM(cfg, 97), 64)
    for k in ("memory-160m-offload-prefetch", "memory-160m-disk"):  # warmup 1 + 2 steps: all but the first staged
        assert res["variants"][k]["prefetch"] == {"hits": 2 * 3, "misses": 0}  # 3 bank levels
    assert res["variants"]["memory-160m-disk"]["storage"] == "disk" and mem["prefetch"] is None
    assert set(res["ratios"]) == {
        "memory_over_anchor_160m",
        "offload_over_device_160m",
        "offload_prefetch_over_device_160m",
        "disk_over_device_160m",
    }


def test_unknown_variant_exits_2(tmp_path, capsys):
    assert bench_gpu.main(["--smoke", "--variants", "nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_a_failing_variant_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    """One device run in all: a compile or device error in one variant must not cost the rest."""
    real = bench_gpu.run_variant

    def flaky(name, *rest):
        if name == "anchor-160m":
            raise RuntimeError("inductor: NYI something\nlong traceback text")
        return real(name, *rest)

    monkeypatch.setattr(bench_gpu, "run_variant", flaky)
    out = tmp_path / "g.json"
    assert bench_gpu.main(["--smoke", "--variants", "anchor-160m,anchor-410m", "--out", str(out)]) == 0
    v = json.loads(out.read_text())["variants"]
    assert v["anchor-160m"] == {"error": "RuntimeError: inductor: NYI something"}
    assert v["anchor-410m"]["step_ms"] > 0 and v["anchor-410m"]["steps"] == 2
