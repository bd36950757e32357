"""Checks of what a config names outside itself (data files, data.dir, a run to start from), run by `hmem train`
and `hmem data prepare` before anything is created. Each failure is one ConfigError line naming the key."""

from __future__ import annotations

from pathlib import Path

from hmem_lit.config import ConfigError, RunConfig


def preflight(cfg: RunConfig, training: bool = True) -> None:
    """Check what a config names outside itself (data files, data.dir; for training also init_from) before
    anything is created; every failure is one ConfigError line naming the key."""
    d = cfg.data
    if d.source != "toy":
        root = Path(d.dir)
        _check_path(not root.exists() or root.is_dir(), "data.dir", f"{root} is a file; point data.dir at a directory")
    if d.source == "files":
        for f in d.files:
            p = Path(f)
            _check_path(p.exists(), "data.files", f"{p} not found (fix the path or drop it from the list)")
            if not p.is_dir():
                import stat

                _check_path(
                    stat.S_ISREG(p.stat().st_mode),
                    "data.files",
                    f"{p} is not a regular file (a pipe or a device, read forever); give a file",
                )
            if p.is_dir():
                from hmem_lit.data.sources import FORMATS, is_hf_dataset

                _check_path(
                    is_hf_dataset(p),
                    "data.files",
                    f"{p} is a directory but not a saved `datasets` directory; list its files instead ({FORMATS})",
                )
    if training:
        run_dir = cfg.run_dir
        for parent in (Path(cfg.out_dir), run_dir.parent, run_dir):  # where the run directory goes
            _check_path(
                not parent.exists() or parent.is_dir(), "out_dir", f"{parent} is a file; point out_dir at a directory"
            )
    if training and cfg.train.init_from:
        w = Path(cfg.train.init_from) / "model.safetensors"
        _check_path(w.is_file(), "train.init_from", f"{w} not found; point it at a finished run directory")
        from hmem_lit.runs import check_weights

        try:
            check_weights(w)
        except ConfigError as e:
            raise ConfigError(f"train.init_from: {e}") from None


def _check_path(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")
