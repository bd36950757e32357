"""train.loggers: csv and tensorboard through Lightning's loggers next to metrics.jsonl (the source of truth);
the config reaches the trackers at the start, the final metrics at the end; a missing tracker package or an
unknown name is one line."""

from __future__ import annotations

import csv
import json

import pytest

from hmem_lit import runs
from hmem_lit.config import ConfigError, load_config
from hmem_lit.train import train

from .conftest import DEBUG_YAML, tiny_overrides


def test_csv_and_tensorboard_hold_the_training_curve(tmp_path):
    cfg = load_config(
        DEBUG_YAML, [*tiny_overrides(tmp_path, **{"train.max_tokens": 8000}), "train.loggers=[jsonl,csv,tensorboard]"]
    )
    run_dir = train(cfg)
    jsonl = [json.loads(x) for x in (run_dir / runs.METRICS).read_text().splitlines()]
    train_losses = [r["train/loss"] for r in jsonl if "train/loss" in r]
    rows = list(csv.DictReader((run_dir / "logs" / "csv" / "metrics.csv").open()))
    got = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert got == pytest.approx(train_losses, rel=1e-6) and len(got) >= 5  # the same curve as metrics.jsonl
    final_rows = [r for r in rows if r.get("final/val/loss")]
    assert final_rows and float(final_rows[-1]["final/val/loss"]) == pytest.approx(
        runs.read_final(run_dir)["metrics"]["val/loss"]
    )
    hp = (run_dir / "logs" / "csv" / "hparams.yaml").read_text()
    assert "config" in hp and "manifest.device" in hp  # the config at the start, the manifest at the end

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "train/loss" in scalars and "val/loss" in scalars and "final/val/loss" in scalars
    tb = [e.value for e in acc.Scalars("train/loss")]
    assert tb == pytest.approx(train_losses, rel=1e-5)


def test_default_is_jsonl_only_and_bad_names_are_one_line(tmp_path, monkeypatch):
    run_dir = train(load_config(DEBUG_YAML, tiny_overrides(tmp_path, **{"train.max_tokens": 3000})))
    assert not (run_dir / "logs").exists()
    with pytest.raises(ConfigError, match="train.loggers: got 'tensorbord'"):
        load_config(DEBUG_YAML, ["train.loggers=[jsonl,tensorbord]"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(ConfigError, match="train.loggers: mlflow needs the `mlflow` package"):
        train(load_config(DEBUG_YAML, [*tiny_overrides(tmp_path, name="m"), "train.loggers=[jsonl,mlflow]"]))
    assert not (tmp_path / "000_debug" / "m").exists()
