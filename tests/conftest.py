"""Shared fixtures: tiny configs on the toy corpus, run in temporary directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DEBUG_YAML = ROOT / "experiments" / "000_debug.yaml"


def tiny_overrides(out_dir: Path | str, **extra: object) -> list[str]:
    """Overrides for a seconds-long toy run writing under out_dir."""
    base = {"out_dir": str(out_dir), "train.progress": "false", "train.max_tokens": 20_000, "train.batch_size": 8,
            "data.seq_len": 64, "data.toy_docs": 300, "train.val_every": 10, "train.ckpt_every": 10,
            "train.log_every": 1, "train.threads": 1}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(tmp_path):
    from hmem_lit.config import load_config

    def make(**extra: object):
        return load_config(DEBUG_YAML, tiny_overrides(tmp_path / "runs", **extra))

    return make
