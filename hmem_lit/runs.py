"""Run directories: `runs/<experiment>/<name>/` with config.yaml, manifest.json, metrics.jsonl, checkpoints/,
model.safetensors, eval/ and final.json (written last and atomically: its presence means "complete").

Analysis, evaluation and sweeps read these files only, through the helpers here.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hmem_lit.config import ConfigError, RunConfig, from_dict, load_config
from hmem_lit.utils import read_json, write_json

CONFIG, MANIFEST, METRICS, FINAL, WEIGHTS = "config.yaml", "manifest.json", "metrics.jsonl", "final.json", "model.safetensors"
LAST_CKPT = "checkpoints/last.ckpt"

_PACKAGES = ("torch", "lightning", "torchmetrics", "lm_eval", "faiss-cpu", "omegaconf", "optuna", "numpy", "tokenizers")


def git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"git_sha": sha or None, "git_dirty": dirty}


def manifest(cfg: RunConfig, device: str) -> dict[str, Any]:
    versions = {}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {**git_state(), "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "device": device, "seed": cfg.train.seed, "packages": versions, "argv": sys.argv}


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / FINAL).is_file()


def read_final(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / FINAL)


def update_final(run_dir: str | Path, **sections: Any) -> None:
    """Merge sections into final.json (atomically); used by evaluation to add headline numbers."""
    path = Path(run_dir) / FINAL
    final = read_json(path)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(final.get(k), dict):
            final[k].update(v)
        else:
            final[k] = v
    write_json(path, final)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a killed run
    return out


def truncate_metrics(run_dir: str | Path, max_step: int) -> None:
    """Drop records logged at or after checkpoint step `max_step` (by a run killed after it) before resuming."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) < max_step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def throughput(run_dir: str | Path) -> float | None:
    """Steady-state training tokens/s from metrics.jsonl: the median rate over consecutive training records, so
    start-up, validation pauses and the gap of a resumed run do not count."""
    recs = [r for r in read_metrics(run_dir) if "train/loss" in r]
    rates = sorted((b["tokens"] - a["tokens"]) / (b["time"] - a["time"]) for a, b in zip(recs, recs[1:])
                   if b["time"] > a["time"] and b["tokens"] > a["tokens"])
    return rates[len(rates) // 2] if rates else None


def load_run_config(run_dir: str | Path) -> RunConfig:
    p = Path(run_dir) / CONFIG
    if not p.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG})")
    return load_config(p)


def load_model(run_dir: str | Path, map_location: str = "cpu"):
    """-> (MemoryLM with the run's final weights, RunConfig). Weights come from safetensors (no code runs)."""
    from safetensors.torch import load_file

    from hmem_lit.model import MemoryLM

    run_dir = Path(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no {WEIGHTS}; train it to completion first (hmem train ...)")
    final = read_json(run_dir / FINAL) if (run_dir / FINAL).is_file() else {}
    cfg = from_dict(final["config"]) if "config" in final else load_run_config(run_dir)
    state = load_file(str(weights), device=map_location)
    emb = state.get("anchor.tok_emb.weight", state.get("anchor.hf.model.embed_tokens.weight"))  # built-in | hf
    vocab = emb.shape[0] if emb is not None else cfg.anchor.vocab_size
    model = MemoryLM(cfg, vocab)
    model.load_state_dict(state, strict=True)
    return model.eval(), model.cfg


def list_runs(root: str | Path) -> list[Path]:
    """Every directory below `root` that looks like a run (has config.yaml), complete or not."""
    return sorted(p.parent for p in Path(root).rglob(CONFIG) if "checkpoints" not in p.parts)


def write_manifest(run_dir: Path, cfg: RunConfig, device: str) -> None:
    write_json(run_dir / MANIFEST, manifest(cfg, device))
