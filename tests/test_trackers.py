"""Each tracker against the version the `tracking` extra installs, read back by its own tool: an MLflow run from
the default store (a SQLite database under the run; mlflow 3 refuses the old file store), TensorBoard's HParams
session with the final metrics in one event file, and the sweep objective's name as optuna-dashboard serves it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hmem_lit import runs
from hmem_lit.config import load_config

from .conftest import DEBUG_YAML, tiny_overrides


def _train(tmp_path: Path, loggers: str) -> Path:
    from hmem_lit.train import train

    cfg = load_config(
        DEBUG_YAML, [*tiny_overrides(tmp_path, **{"train.max_tokens": 6000}), f"train.loggers=[jsonl,{loggers}]"]
    )
    return train(cfg)


def test_mlflow_default_store_is_a_database_under_the_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert int(mlflow.__version__.split(".")[0]) >= 3  # what `pip install '.[tracking]'` resolves today
    run_dir = _train(tmp_path, "mlflow")
    db = run_dir / "logs" / "mlflow.db"
    assert db.is_file() and not (run_dir / "logs" / "mlruns").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("hmem_lit").experiment_id])
    final = runs.read_final(run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == f"{final['experiment']}/{final['name']}"
    assert run.data.metrics["final/val/loss"] == pytest.approx(final["metrics"]["val/loss"], rel=1e-6)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    jsonl = [json.loads(x) for x in (run_dir / runs.METRICS).read_text().splitlines()]
    assert losses == pytest.approx([r["train/loss"] for r in jsonl if "train/loss" in r], rel=1e-5)
    assert "manifest.device" in run.data.params  # the manifest at the end


def test_tensorboard_hparams_session_in_one_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = _train(tmp_path, "tensorboard")
    tb = run_dir / "logs" / "tensorboard"
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1  # was 3: Lightning closed the writer twice
    acc = EventAccumulator(str(tb))
    acc.Reload()
    content = {k: plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in acc.PluginTagToContent("hparams").items()}
    experiment = content["_hparams_/experiment"].experiment
    assert "final/val/loss" in {m.name.tag for m in experiment.metric_infos}  # the HParams tab's metric columns
    hparams = content["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["memory.type"].string_value == "none" and hparams["train.max_tokens"].number_value == 6000
    final = runs.read_final(run_dir)["metrics"]["val/loss"]
    assert acc.Scalars("final/val/loss")[-1].value == pytest.approx(final, rel=1e-6)


def test_sweep_objective_is_named_for_optuna_dashboard(tmp_path):
    pytest.importorskip("optuna_dashboard")
    import io
    from wsgiref.util import setup_testing_defaults

    import optuna
    from optuna_dashboard import wsgi

    from hmem_lit import sweeps

    from .test_sweeps import write_sweep

    path = write_sweep(tmp_path, mode="grid", space={"train.seed": [0, 1]}, objective={"metric": "val/loss"})
    spec = sweeps.load_sweep(path)
    study = sweeps.open_study(spec, create=True)
    loaded = optuna.load_study(study_name=spec.name, storage=sweeps.runner.make_storage(spec, create=False))
    assert loaded.metric_names == ["val/loss"]
    env: dict = {"PATH_INFO": f"/api/studies/{study._study_id}", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(env)
    status: list[str] = []
    body = b"".join(wsgi(loaded._storage)(env, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200"), body[:300]
    assert json.loads(body)["objective_names"] == ["val/loss"]  # the dashboard's label, not "Objective 0"
    assert os.path.basename(spec.storage_url) == "study.journal"
