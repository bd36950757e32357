"""Fault injection: a child `hmem` process SIGKILLed at a named write point (hmem_lit/faults.py), then rerun,
ends with every output file equal to an uninterrupted run's (weights bit for bit, metrics.jsonl record for record).

Each case costs two or three short CLI processes; the default suite covers one kill point per writer, the slow
mark covers every point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hmem_lit import runs

from .conftest import DEBUG_YAML, ROOT, SMALL, tiny_overrides

# 20 steps of 8 x 64 tokens, validation and checkpoint every 5 steps, a record every 2 (odd on purpose: records
# and checkpoints fall on different steps)
TRAIN = {
    "train.max_tokens": 10_240,
    "train.val_every": 5,
    "train.ckpt_every": 5,
    "train.log_every": 2,
    "data.toy_docs": 120,
}


def hmem(*args: str, kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HMEM_KILL_AT", None)
    if kill_at:
        env["HMEM_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_args(out: Path, name: str) -> list[str]:
    return ["train", str(DEBUG_YAML), *tiny_overrides(out, **TRAIN), f"name={name}"]


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in runs.TIMING_KEYS} for r in runs.read_metrics(run_dir)]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / runs.WEIGHTS)), load_file(str(b / runs.WEIGHTS))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def final_without_times(run_dir: Path) -> dict:
    f = runs.read_final(run_dir)
    for k in runs.FINAL_TIMINGS:
        f.pop(k)
    f.pop("name")
    for k in ("name", "out_dir"):
        f["config"].pop(k)
    return f


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    r = hmem(*train_args(out, "ref"))
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "000_debug" / "ref"


def kill_and_rerun(tmp_path: Path, point: str, reference: Path) -> Path:
    args = train_args(tmp_path, "k")
    r = hmem(*args, kill_at=point)
    assert r.returncode == -signal.SIGKILL, f"{point} was never reached: {r.stderr[-1500:]}"
    run_dir = tmp_path / "000_debug" / "k"
    assert not runs.is_complete(run_dir)
    r = hmem(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert records(run_dir) == records(reference), point
    assert same_weights(run_dir, reference), point
    assert final_without_times(run_dir) == final_without_times(reference)
    return run_dir


# write points of `hmem train`, in the order one run passes them (n-th occurrence after @)
TRAIN_POINTS = [
    "metrics_record@1",
    "metrics_record@3",
    "ckpt_written@1",
    "metrics_record@4",
    "ckpt_committed@1",
    "ckpt_written@2",
    "metrics_record@7",
    "ckpt_committed@2",
    "ckpt_written@4",
    "ckpt_committed@4",
    "validated",
    "ckpt_committed@5",
    "weights_written",
]
FAST = {"metrics_record@1", "ckpt_written@2", "validated"}


@pytest.mark.parametrize("point", [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in TRAIN_POINTS])
def test_train_killed_at_each_write_point_ends_as_uninterrupted(tmp_path, reference, point):
    """Kill before the first checkpoint (a fresh start must not append to the old metrics.jsonl), between a
    checkpoint and its step's records (the records must not be lost), after training: all end identical."""
    kill_and_rerun(tmp_path, point, reference)


def test_corrupted_checkpoint_at_same_size_is_refused(tmp_path, reference):
    args = train_args(tmp_path, "c")
    assert hmem(*args, kill_at="ckpt_committed@2").returncode == -signal.SIGKILL
    ckpt = tmp_path / "000_debug" / "c" / runs.LAST_CKPT
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size, still a loadable zip more often than not
    ckpt.write_bytes(bytes(data))
    r = hmem(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert r.stderr.strip().count("\n") == 0 and "checksum" in r.stderr and "last.ckpt" in r.stderr


def test_second_trainer_on_the_same_run_stops_with_one_line(tmp_path):
    """Two `hmem train` with the same name: the second stops at once (exit 1, one line) while the first trains."""
    import time

    args = train_args(tmp_path, "l")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "hmem_lit.cli", *args[:-1], "train.max_tokens=400000", args[-1]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run_dir = tmp_path / "000_debug" / "l"
    try:
        deadline = time.time() + 120
        while not (run_dir / runs.METRICS).is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-1500:]
        second = hmem(*args[:-1], "train.max_tokens=400000", args[-1])
        assert second.returncode == 1, second.stderr[-1500:]
        assert second.stderr.strip().count("\n") == 0 and "being trained by pid" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    steps = [r["step"] for r in runs.read_metrics(run_dir) if "train/loss" in r]
    assert len(steps) == len(set(steps))  # nothing logged twice


def test_metrics_reader_skips_bad_lines_and_resume_keeps_valid_records(tmp_path, reference, caplog):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    lines = (reference / runs.METRICS).read_bytes().splitlines()
    bad = [*lines[:3], b'{"step": 5, "train/lo', b"\xff\xfe not utf-8", *lines[3:]]
    (run_dir / runs.METRICS).write_bytes(b"\n".join(bad) + b"\n")
    with caplog.at_level("WARNING"):
        recs = runs.read_metrics(run_dir)
    assert len(recs) == len(lines)
    assert f"{run_dir / runs.METRICS}:4" in caplog.text and f"{run_dir / runs.METRICS}:5" in caplog.text
    runs.truncate_metrics(run_dir, 10**9)  # what a resume does: keep every valid record before the checkpoint
    assert [json.loads(x) for x in lines] == runs.read_metrics(run_dir)


# `hmem data prepare` has no fault points of its own (its stages write atomically and record themselves in
# manifest.json): kill it once the manifest records n stages, and while stage n + 1 runs
PREP = SMALL


def _prep_outputs(d: Path) -> dict[str, bytes]:
    skip = {"manifest.json", "stats.json", ".prepare.lock"}
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.mark.slow
@pytest.mark.parametrize("stages_done", [1, 3, 5])
def test_data_prepare_killed_between_stages_ends_byte_identical(tmp_path, stages_done):
    import time

    ref = hmem("data", "prepare", *PREP, f"data.dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr[-1500:]
    d = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hmem_lit.cli", "data", "prepare", *PREP, f"data.dir={d}"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            if len(json.loads((d / "manifest.json").read_text())["stages"]) >= stages_done:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "prepare finished before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = hmem("data", "prepare", *PREP, f"data.dir={d}")
    assert again.returncode == 0, again.stderr[-1500:]
    a, b = _prep_outputs(tmp_path / "ref"), _prep_outputs(d)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
