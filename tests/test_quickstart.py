"""The main job end to end: `hmem quickstart --small` (slow: several minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_quickstart_small_end_to_end(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", "quickstart", "--small"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    root = tmp_path / "runs" / "quickstart_small"
    names = ("anchor", "memory", "dense_runtime", "dense_2x", "anchor_wallclock")
    for n in names:
        final = json.loads((root / n / "final.json").read_text())
        assert final["status"] == "complete"
        modes = set(final["eval"])
        assert modes == ({"fetched", "generic", "none", "random"} if n == "memory" else {"none"})
        assert 0.0 <= final["eval"]["none"]["hmem_sk"] <= 1.0
    runtime = {n: json.loads((root / n / "final.json").read_text())["params"]["runtime"] for n in names}
    assert runtime["dense_2x"] > 1.9 * runtime["anchor"]  # the baselines are what they claim to be
    assert abs(runtime["dense_runtime"] - runtime["memory"]) / runtime["memory"] < 0.05
    report = root / "report"
    assert (report / "report.html").is_file() and (report / "runs.csv").is_file()
    assert (report / "figures" / "fig1_buckets.png").is_file()
    assert "memory [fetched]" in r.stdout  # the summary table
    weights = {n: (root / n / "model.safetensors").stat().st_mtime_ns for n in names}
    # a second invocation resumes everything: every stage is cached, nothing is trained again
    r2 = subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", "quickstart", "--small"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r2.returncode == 0 and "memory [fetched]" in r2.stdout, r2.stderr[-2000:]
    assert {n: (root / n / "model.safetensors").stat().st_mtime_ns for n in names} == weights


def test_default_runs_are_the_baselines_they_claim():
    """The full quickstart's configs (meta-device counts, nothing trained): ~15% fetched, a same-runtime dense
    model with the memory run's runtime parameters, a dense model of about twice the anchor."""
    from hmem_lit.quickstart import RUNS, Plan
    from hmem_lit.sweeps.translate import counts

    plan = Plan(small=False, scale=1.0, overrides=[])
    c = {n: counts(plan.config(n)) for n in RUNS}
    assert 0.10 <= c["memory"]["fetched"] / c["memory"]["anchor"] <= 0.16
    assert c["memory"]["anchor"] == c["anchor"]["runtime"] and c["memory"]["bank"] > 100 * c["memory"]["fetched"]
    assert abs(c["dense_runtime"]["runtime"] - c["memory"]["runtime"]) / c["memory"]["runtime"] < 0.05
    assert 1.9 <= c["dense_2x"]["runtime"] / c["anchor"]["runtime"] <= 2.3
