"""Experiment trackers through Lightning's own loggers (`train.loggers`): metrics.jsonl is always written (the
source of truth every analysis reads); csv, tensorboard, wandb and mlflow are added on request, all offline-safe.

Where they write (inside the run directory unless the tracker is pointed elsewhere by its own environment):
  csv          <run>/logs/csv/metrics.csv                      (Lightning CSVLogger)
  tensorboard  <run>/logs/tensorboard/ (event files)           (needs `tensorboard`: pip install 'hmem_lit[tracking]')
  wandb        <run>/logs/wandb/, offline unless WANDB_MODE is set (sync later with `wandb sync`)
  mlflow       a local SQLite database <run>/logs/mlflow.db (artifacts <run>/logs/mlartifacts/) unless
               MLFLOW_TRACKING_URI is set: mlflow 3 refuses the old `file://` store without configuration, and a
               database needs no server (`mlflow ui --backend-store-uri sqlite:///<run>/logs/mlflow.db`)
Each gets the run's config as hyperparameters at the start and, at the end, the final metrics and parameter
counts (`final/...`) plus the manifest's device and versions as tags or hyperparameters. TensorBoard gets the
config with the final metrics as an HParams session (runs compare in its HParams tab), all in one event file.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from hmem_lit.config import TRACKERS  # noqa: F401 (the names train.loggers accepts)
from hmem_lit.errors import ConfigError

_NEEDS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_available(names: list[str]) -> None:
    """One line naming the missing package of a requested tracker (before any data is prepared)."""
    for n in names:
        mods = _NEEDS.get(n, ())
        if mods and not any(importlib.util.find_spec(m) for m in mods):
            raise ConfigError(
                f"train.loggers: {n} needs the `{mods[0]}` package; pip install "
                f"'hmem_lit[tracking]' (or {mods[0]}), or drop {n} from train.loggers"
            )


def build(names: list[str], run_dir: Path, run_name: str) -> list[Any]:
    """Lightning loggers for every requested tracker but jsonl (train.py adds that one first)."""
    from lightning.pytorch import loggers as pl

    logs = run_dir / "logs"
    out: list[Any] = []
    for n in names:
        if n == "csv":
            out.append(pl.CSVLogger(str(logs), name="csv", version=""))
        elif n == "tensorboard":
            out.append(_one_file_tensorboard()(str(logs), name="tensorboard", version="", default_hp_metric=False))
        elif n == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")  # never reaches a server unless the user says so
            (logs / "wandb").mkdir(parents=True, exist_ok=True)
            out.append(pl.WandbLogger(name=run_name, save_dir=str(logs), project="hmem_lit"))
        elif n == "mlflow":
            out.append(_mlflow(pl, logs, run_name))
    return out


def _mlflow(pl: Any, logs: Path, run_name: str) -> Any:
    """MLFlowLogger on $MLFLOW_TRACKING_URI, else on <run>/logs/mlflow.db; mlflow's database set-up is silent."""
    import logging

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):  # "Creating initial MLflow database..."
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    artifacts = None
    if not uri:
        logs.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{(logs / 'mlflow.db').resolve()}"
        artifacts = (logs / "mlartifacts").resolve().as_uri()
    return pl.MLFlowLogger(experiment_name="hmem_lit", run_name=run_name, tracking_uri=uri, artifact_location=artifacts)


def _one_file_tensorboard() -> Any:
    """Lightning's TensorBoardLogger, but one event file per training process: Lightning closes the writer after
    fit and after validate, and every later write opened a new file (3 per run). Here `finalize` only flushes;
    `finish` (below) closes it after the HParams session is written."""
    from lightning.pytorch import loggers as pl

    class OneFileTensorBoardLogger(pl.TensorBoardLogger):
        def finalize(self, status: str) -> None:
            if self._experiment is not None:
                self.experiment.flush()

        def close(self) -> None:
            super().finalize("success")

    return OneFileTensorBoardLogger


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists as strings (every tracker takes scalars and strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def finish(loggers: list[Any], final: dict[str, Any], manifest: dict[str, Any], step: int) -> None:
    """Final metrics and parameter counts as `final/...` at the last step, the manifest as hyperparameters."""
    metrics = {f"final/{k}": float(v) for k, v in final.get("metrics", {}).items()}
    metrics.update({f"final/params_{k}": float(v) for k, v in final.get("params", {}).items()})
    metrics["final/train_time_s"] = float(final.get("train_time_s", 0.0))
    info = {f"manifest.{k}": v for k, v in flat(manifest).items()}
    for lg in loggers:
        if hasattr(lg, "close"):  # TensorBoard: an HParams session (config + manifest) with the final metrics
            lg.log_hyperparams({**flat(final.get("config") or {}), **info}, metrics=metrics, step=step)
            lg.close()
            continue
        lg.log_metrics(metrics, step=step)
        lg.log_hyperparams(info)
        lg.finalize("success")
