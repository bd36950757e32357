"""Shared fixtures: tiny configs on the toy corpus, run in temporary directories."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # property tests and fuzzes: the same examples on every CI run (a red CI is a finding, not a coin toss);
    # HMEM_HYPOTHESIS=random draws fresh examples, as a fuzzing session would
    from hypothesis import settings as _hyp

    _hyp.register_profile("ci", derandomize=True, print_blob=True)
    _hyp.register_profile("random", print_blob=True)
    _hyp.load_profile(os.environ.get("HMEM_HYPOTHESIS", "ci"))
except ImportError:
    pass

ROOT = Path(__file__).resolve().parent.parent
DEBUG_YAML = ROOT / "experiments" / "000_debug.yaml"


def tiny_overrides(out_dir: Path | str, **extra: object) -> list[str]:
    """Overrides for a seconds-long toy run writing under out_dir."""
    base = {
        "out_dir": str(out_dir),
        "train.progress": "false",
        "train.max_tokens": 20_000,
        "train.batch_size": 8,
        "data.seq_len": 64,
        "data.toy_docs": 300,
        "train.val_every": 10,
        "train.ckpt_every": 10,
        "train.log_every": 1,
        "train.threads": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(tmp_path):
    from hmem_lit.config import load_config

    def make(**extra: object):
        return load_config(DEBUG_YAML, tiny_overrides(tmp_path / "runs", **extra))

    return make


def kill_after_checkpoint(cmd: list[str], run_dir: Path, min_step: int, timeout: float) -> int:
    """Launch `cmd` (a training run writing `run_dir`), SIGKILL its whole process group once a checkpoint exists
    and the log has reached `min_step`; -> the checkpoint's global step (the run is left incomplete)."""
    import torch

    from hmem_lit import runs

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        metrics = runs.read_metrics(run_dir)
        if (run_dir / runs.LAST_CKPT).is_file() and metrics and metrics[-1]["step"] >= min_step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and any rank children share the process group
    proc.wait()
    assert not runs.is_complete(run_dir)
    return int(torch.load(run_dir / runs.LAST_CKPT, weights_only=True)["global_step"])


def train_each(tmp_path: Path, key: str, values: list[str], **extra: object) -> dict[str, Path]:
    """`hmem train experiments/000_debug.yaml` (tiny_overrides + extra) once per value of config `key`, each under
    tmp_path/<value>; -> value -> run directory."""
    import sys

    train = [sys.executable, "-m", "hmem_lit.cli", "train", str(DEBUG_YAML)]
    dirs = {}
    for value in values:
        out = tmp_path / value
        args = tiny_overrides(out, **extra, **{key: value})
        r = subprocess.run([*train, *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        dirs[value] = out / "000_debug" / "debug"
    return dirs


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold bit-identical final weights and the same metrics records (timings aside)."""
    import torch
    from safetensors.torch import load_file

    from hmem_lit import runs

    wa, wb = load_file(str(a / runs.WEIGHTS)), load_file(str(b / runs.WEIGHTS))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    def strip(d: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in runs.TIMING_KEYS} for m in runs.read_metrics(d)]

    assert strip(a) == strip(b)


# the small built-in corpus (tfidf) shared by the data and probe tests; `prepared` prepares it once per module
SMALL = [
    "data.source=builtin",
    "data.wiki_docs=300",
    "data.synthetic_entities=100",
    "data.vocab_size=1024",
    "data.seq_len=64",
    "data.val_fraction=0.05",
    "retriever.branching=4",
    "retriever.depth=2",
    "retriever.embed_dim=64",
    "anchor.max_seq_len=512",
]


def small_cfg(d: Path, *extra: str):
    from hmem_lit.config import load_config

    return load_config(None, SMALL + [f"data.dir={d}", *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from hmem_lit.data.prepare import prepare

    d = tmp_path_factory.mktemp("builtin")
    cfg = small_cfg(d)
    prepare(cfg, progress=False, verbose=False)
    return cfg, d


@pytest.fixture(autouse=True)
def _console_state():
    """Each test starts at the default verbosity: a CLI call with -q inside one test sets HMEM_VERBOSITY in this
    process's environment (for the processes it spawns) and the hmem_lit logger's level, and both would otherwise
    reach later tests and their subprocesses (a relaunched `hmem train` then printed no "resuming" line)."""
    import logging

    env = os.environ.get("HMEM_VERBOSITY")
    log = logging.getLogger("hmem_lit")
    level = log.level
    yield
    if env is None:
        os.environ.pop("HMEM_VERBOSITY", None)
    else:
        os.environ["HMEM_VERBOSITY"] = env
    log.setLevel(level)
